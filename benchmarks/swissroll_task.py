"""The task both toy benchmarks share: smalldiffusion's swiss-roll example, and smalldiffusion imported without
torchvision (it imports torchvision for image transforms only, and torchvision has no CPU build here)."""

from __future__ import annotations

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
    """Import smalldiffusion with a stub in place of torchvision's transforms (never used on 2-D data)."""
    stub = types.SimpleNamespace(
        **{k: (lambda *a, **kw: None) for k in ("Compose", "RandomHorizontalFlip", "ToTensor", "Lambda")}
    )
    sys.modules.setdefault("torchvision", types.SimpleNamespace(transforms=stub))
    import smalldiffusion

    return smalldiffusion
