"""The task both toy benchmarks share: smalldiffusion's swiss-roll example, and smalldiffusion imported without
torchvision (it imports torchvision for image transforms only, and torchvision has no CPU build here)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import math
import sys
import types

import torch


def swissroll_curve(n: int) -> torch.Tensor:
    """smalldiffusion's ``Swissroll(pi/2, 5 pi, n)``: n points along the curve t (cos t, sin t) / (5 pi)."""
    tmin, tmax = math.pi / 2, 5 * math.pi
    t = tmin + torch.linspace(0, 1, n) * tmax
    return torch.stack([t * torch.cos(t) / tmax, t * torch.sin(t) / tmax], 1)


def import_smalldiffusion() -> types.ModuleType:
    """Import smalldiffusion with a stand-in for torchvision's transforms (never used on 2-D data).

    Where torchvision is installed it is used as it is. Otherwise the stand-in is a real module with a spec, present in
    ``sys.modules`` only while smalldiffusion is imported: afterwards ``importlib.util.find_spec("torchvision")`` says
    "not installed" again, so a later ``import diffusers`` (which asks exactly that) works in either order.
    """
    if importlib.util.find_spec("torchvision") is not None:
        import smalldiffusion

        return smalldiffusion
    stubs = {}
    for name in ("torchvision", "torchvision.transforms"):
        stubs[name] = types.ModuleType(name)
        stubs[name].__spec__ = importlib.machinery.ModuleSpec(name, loader=None)
    for k in ("Compose", "RandomHorizontalFlip", "ToTensor", "Lambda"):
        setattr(stubs["torchvision.transforms"], k, lambda *a, **kw: None)
    stubs["torchvision"].transforms = stubs["torchvision.transforms"]
    sys.modules.update(stubs)
    try:
        import smalldiffusion
    finally:
        for name, module in stubs.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]
    return smalldiffusion
