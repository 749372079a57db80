r"""One device and precision seam (lesson 3, sec. 3.6): where a run's tensors live, in which precision its model
runs, and the module under the wrappers that distributed training and compilation put around it.

Every tensor a function creates follows its input (``device``, ``dtype``); these three helpers are the only place
that decides anything else: :func:`resolve_device` turns ``"auto"``, a string or a ``torch.device`` into a device,
:func:`autocast` is the precision context of a training step, and :func:`unwrap` reaches the model through
``DistributedDataParallel``, ``DataParallel`` and ``torch.compile``, so that its ``prediction``, its EMA copy and its
checkpointed ``state_dict`` are the bare model's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

PRECISIONS = ("float32", "bf16")
"""Training precisions: full float32, or bfloat16 autocast of the model's matrix products."""


def unwrap(model: object) -> object:
    """The module under any wrappers: ``.module`` of ``DistributedDataParallel`` / ``DataParallel`` and
    ``._orig_mod`` of a ``torch.compile`` module, taken repeatedly (lesson 3, sec. 3.6).

    Parameters
    ----------
    model : object
        A model, possibly wrapped (several times, in any order).

    Returns
    -------
    object
        The innermost model; ``model`` itself when it is not wrapped (an exact model, a plain module).
    """
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(model, Autocast):
            model = model.model
        elif isinstance(model, nn.Module) and isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod  # torch.compile's OptimizedModule
        else:
            return model


def resolve_device(device: object = "auto") -> torch.device:
    """Turn ``device`` into a ``torch.device`` (lesson 3, sec. 3.6): ``"auto"`` is CUDA when available, else the CPU.

    Parameters
    ----------
    device : {"auto"} or str or torch.device
        ``"auto"``, a device string (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...) or a ``torch.device``.

    Returns
    -------
    torch.device
        The device.

    Raises
    ------
    ValueError
        If ``device`` is neither a string nor a ``torch.device``, names no device, or asks for CUDA on a machine
        without it.
    """
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, (str, torch.device)):
        raise ValueError(f"device must be 'auto', a device string or a torch.device, got {type(device).__name__}")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or another torch device, got {device!r}") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asks for CUDA, but torch.cuda.is_available() is False on this machine")
    return dev


def check_precision(precision: object) -> str:
    """Return ``precision`` if it is one of :data:`PRECISIONS`, else raise ``ValueError`` (lesson 3, sec. 3.6).

    Parameters
    ----------
    precision : object
        Candidate precision.

    Returns
    -------
    str
        ``"float32"`` or ``"bf16"``.

    Raises
    ------
    ValueError
        If ``precision`` is not one of :data:`PRECISIONS`.
    """
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


@contextlib.contextmanager
def autocast(device: object, precision: str = "float32") -> Iterator[None]:
    """The precision context of one training step (lesson 3, sec. 3.6).

    ``"float32"`` changes nothing; ``"bf16"`` runs the model under ``torch.autocast(device.type, torch.bfloat16)``:
    matrix products in bfloat16, reductions and the loss in float32, the weights and the optimiser in float32. It
    is meant for CUDA (Ampere and later); on the CPU PyTorch supports it too (slowly), so tests can exercise it.

    Parameters
    ----------
    device : {"auto"} or str or torch.device
        Where the step runs (as :func:`resolve_device`).
    precision : {"float32", "bf16"}
        The precision.

    Returns
    -------
    contextlib.AbstractContextManager
        A ``with`` context inside which the model's forward pass runs in ``precision``.

    Raises
    ------
    ValueError
        If ``precision`` is unknown, or ``device`` as :func:`resolve_device`; if ``"bf16"`` is asked on a device
        type autocast does not handle in bfloat16 (only ``"cuda"`` and ``"cpu"`` are).
    """
    dev = resolve_device(device)
    if check_precision(precision) == "float32":
        yield
        return
    if dev.type not in ("cuda", "cpu"):
        raise ValueError(f"precision 'bf16' needs a CUDA or CPU device, got {dev}")
    with torch.autocast(dev.type, dtype=torch.bfloat16):
        yield


class Autocast(nn.Module):
    r"""A model evaluated in another precision, with the one interface (lesson 3, sec. 3.6): the precision seam of
    every sampler.

    Samplers run where their state ``x`` lives (its device and dtype); precision is a property of the model's
    evaluation, so it enters as a wrapper: ``sample(Autocast(model), x.cuda(), grid, schedule)`` evaluates the
    network under bfloat16 :func:`autocast` and hands its output back in ``x``'s dtype, while the sampler's
    arithmetic, the state and the times stay in float32. The weights are not converted.

    Parameters
    ----------
    model : torch.nn.Module
        A network with the one interface (``model(x, t, cond)`` and ``prediction``).
    precision : {"bf16", "float32"}
        The precision of the evaluation (``"float32"``: the model unchanged, for a switch in a script).

    Raises
    ------
    TypeError
        If ``model`` is not a ``torch.nn.Module`` with a ``prediction``.
    ValueError
        If ``precision`` is unknown.
    """

    def __init__(self, model: nn.Module, precision: str = "bf16") -> None:
        super().__init__()
        if not isinstance(model, nn.Module) or not isinstance(getattr(model, "prediction", None), str):
            raise TypeError(
                f"Autocast wraps a torch.nn.Module with the one interface (a prediction), got {type(model).__name__}"
            )
        self.model, self.precision, self.prediction = model, check_precision(precision), model.prediction
        if hasattr(model, "t_max"):
            self.t_max = model.t_max

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """``model(x, t, cond)`` under :func:`autocast` in ``precision`` (lesson 3, sec. 3.6).

        Parameters
        ----------
        x : Tensor, shape (B, ...)
            The state.
        t : Tensor, shape (B,)
            Times.
        cond : Tensor, optional
            The condition, passed on.

        Returns
        -------
        Tensor, shape (B, ...)
            The model's output in ``x``'s dtype.
        """
        with autocast(x.device, self.precision):
            out = self.model(x, t, cond)
        return out.to(x.dtype)


def model_device(model: object) -> torch.device:
    """Where ``model`` computes (lesson 3, sec. 3.6): the device of its first parameter or buffer, through any
    wrappers (:func:`unwrap`); the CPU for a model without tensors (an exact model) or a plain function.

    Parameters
    ----------
    model : object
        A model with the one interface, possibly wrapped.

    Returns
    -------
    torch.device
        The device a function that draws its own start (a prior sample) should draw onto.
    """
    bare = unwrap(model)
    if isinstance(bare, nn.Module):
        for t in (*bare.parameters(), *bare.buffers()):
            return t.device
    return torch.device("cpu")
