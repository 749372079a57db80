r"""Small networks with the one model interface (lesson 3, sec. 3.5; lesson 0, sec. 0.5)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from diffmath.core._validate import as_tensor, check_batch, check_finite, check_int
from diffmath.core.models import dtype_mismatch
from diffmath.core.notation import check_prediction


class TimeEmbedding(nn.Module):
    r"""Sinusoidal features of the normalised time $s = t/t_{\max}\in[0,1]$ (lesson 3, eq. 3.15).

    $\big(\sin(\omega_k s), \cos(\omega_k s)\big)_k$ with $\omega_k$ log-spaced from 1 to 1000.

    Parameters
    ----------
    dim : int
        Number of features, even, >= 2.
    t_max : float
        The schedule's $t_{\max}$, to normalise time.
    name : str
        How errors call ``dim`` (a network passes ``"time_dim"``).

    Raises
    ------
    ValueError
        If ``dim`` is not an even integer >= 2 or ``t_max`` is not a positive finite number.
    """

    def __init__(self, dim: int = 32, t_max: float = 1.0, name: str = "dim") -> None:
        super().__init__()
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 2 or dim % 2:
            raise ValueError(f"{name} (of the time embedding) must be an even integer >= 2, got {dim!r}")
        if isinstance(t_max, bool) or not isinstance(t_max, (int, float)) or not 0 < t_max < math.inf:
            raise ValueError(f"t_max must be a positive finite number, got {t_max!r}")
        self.t_max = float(t_max)
        self.register_buffer("freqs", torch.exp(torch.linspace(0.0, math.log(1000.0), dim // 2)))

    def forward(self, t: Tensor) -> Tensor:
        r"""The features $\big(\sin(\omega_k s), \cos(\omega_k s)\big)_k$ of $s = t/t_{\max}$ (lesson 3, eq. 3.15).

        Parameters
        ----------
        t : Tensor, shape (B,)
            Times.

        Returns
        -------
        Tensor, shape (B, dim)
            Sines then cosines.

        Raises
        ------
        TypeError
            If ``t`` is not a floating tensor.
        ValueError
            If ``t`` is not of shape (B,) or holds NaN or infinity.
        """
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise TypeError(f"t must be a floating tensor of shape (B,), got {_kind(t)}")
        if t.dim() != 1:
            raise ValueError(f"t must have shape (B,), got {tuple(t.shape)}")
        if t.device.type == "cpu":  # elsewhere a look at the values is a host sync per call: the samplers check
            check_finite(t, "t")  # their grids once instead
        s = (t / self.t_max)[:, None] * self.freqs[None]
        return torch.cat([torch.sin(s), torch.cos(s)], 1)


class MLP(nn.Module):
    r"""A residual MLP predictor $f_\theta(x_t, t, y)$ for vector data (lesson 3, eq. 3.15).

    Parameters
    ----------
    dim : int
        Data dimension $d$ (inputs of shape (B, d)).
    hidden : int
        Width of the hidden layers.
    depth : int
        Number of residual blocks.
    prediction : {"eps", "x0", "score", "v", "velocity"}
        What the network is trained to output (declares its parameterisation to the samplers).
    t_max : float
        The schedule's $t_{\max}$ (T for discrete schedules), to normalise time.
    num_classes : int
        If > 0, the network takes ``cond`` (class labels, shape (B,)); label ``-1`` or ``None`` is the null
        condition used by classifier-free guidance.
    time_dim : int
        Size of the sinusoidal time features.
    out_dim : int, optional
        Size of the output (default ``dim``); e.g. the number of classes for a noisy classifier (lesson 9, eq. 9.10).

    Raises
    ------
    TypeError
        If ``prediction`` is not a string.
    ValueError
        If ``dim``, ``hidden`` or ``depth`` (or ``out_dim``, when given) is not a positive integer, ``num_classes``
        is not an integer >= 0, ``prediction`` is unknown, ``time_dim`` is not an even integer >= 2, or ``t_max``
        is not positive.
    """

    def __init__(
        self,
        dim: int,
        hidden: int = 128,
        depth: int = 3,
        prediction: str = "eps",
        t_max: float = 1.0,
        num_classes: int = 0,
        time_dim: int = 32,
        out_dim: int | None = None,
    ) -> None:
        super().__init__()
        for name, v in (
            ("dim", dim),
            ("hidden", hidden),
            ("depth", depth),
            ("out_dim", 1 if out_dim is None else out_dim),
        ):
            check_int(v, name)
        check_int(num_classes, "num_classes", 0)
        self.prediction = check_prediction(prediction)
        self.dim, self.num_classes = dim, num_classes
        self.time = TimeEmbedding(time_dim, t_max, "time_dim")
        self.inp = nn.Linear(dim + time_dim, hidden)
        self.label = nn.Embedding(num_classes + 1, hidden) if num_classes > 0 else None
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
            for _ in range(depth)
        )
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, dim if out_dim is None else out_dim))

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        r"""The prediction $f_\theta(x_t, t, y)$ of kind ``self.prediction`` (lesson 3, eq. 3.15).

        Parameters
        ----------
        x : Tensor, shape (B, d)
            Noisy input $x_t$.
        t : Tensor, shape () or (B,)
            Time(s), on the schedule's scale $[0, t_{\max}]$.
        cond : Tensor of int, shape (B,), optional
            Class labels (``-1`` or ``None``: the null condition); an unconditional network (``num_classes == 0``)
            accepts only these.

        Returns
        -------
        Tensor, shape (B, d), or (B, out_dim)

        Raises
        ------
        TypeError
            If ``x`` is not a floating tensor in the network's dtype, or ``t`` is not a real number or tensor.
        ValueError
            If ``x`` is not of shape (B, d) or holds NaN or infinity, ``t`` is not finite or not a scalar or of
            shape (B,), ``cond`` is not an integer tensor of shape (B,) with labels in [-1, num_classes), or the
            network is unconditional and ``cond`` holds a label other than -1.
        """
        x = _check_input(x, self.inp.weight.dtype)
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"MLP expects x of shape (B, {self.dim}), got {tuple(x.shape)}")
        h = self.inp(torch.cat([x, self.time(_check_times(t, x)).to(x.dtype)], 1))
        if self.label is not None:
            y = _check_labels(cond, x.shape[0], (self.num_classes,), x.device, flat=True)[:, 0]
            h = h + self.label(torch.where(y < 0, self.num_classes, y))
        else:
            _refuse_labels(cond, "MLP")
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)


def _kind(v: object) -> str:
    return f"dtype {v.dtype}" if isinstance(v, Tensor) else type(v).__name__


def _check_input(x: object, dtype: torch.dtype, name: str = "x") -> Tensor:
    """A network's input: a floating batch (B, ...) in the dtype of the network's parameters, finite where that
    costs no host sync (on the CPU; a sampler checks its state itself)."""
    x = check_batch(x, name, finite=not isinstance(x, Tensor) or x.device.type == "cpu")
    if x.dtype != dtype:
        raise TypeError(dtype_mismatch(x.dtype, dtype, name, "network"))
    return x


def _check_times(t: object, x: Tensor) -> Tensor:
    """A network's times: a finite scalar or a tensor of shape (1,) or (B,), returned as (B,) on ``x``'s device in
    ``x``'s dtype, or float32 for a half-precision ``x`` (bfloat16 would round t = 999 to 1000). Finiteness is checked
    for CPU tensors only: on a GPU it would cost a host sync per call."""
    t_ = as_tensor(t, "t").to(device=x.device, dtype=torch.promote_types(x.dtype, torch.float32))
    if t_.device.type == "cpu":
        check_finite(t_, "t")
    B = x.shape[0]
    if t_.dim() == 0 or t_.shape == (1,):
        return t_.reshape(()).expand(B)
    if t_.shape != (B,):
        raise ValueError(f"t must be a scalar or have shape (B,) = ({B},), got {tuple(t_.shape)}")
    return t_


def _refuse_labels(cond: object, name: str) -> None:
    """An unconditional network given real labels says so instead of ignoring them (``None`` or all ``-1``, the null
    label, are accepted: classifier-free guidance asks every part for the unconditional prediction)."""
    if cond is None:
        return
    if isinstance(cond, Tensor) and not cond.is_floating_point() and bool((cond == -1).all()):
        return
    raise ValueError(
        f"this {name} is unconditional (built without num_classes) but was given cond; pass cond=None, bind it away "
        "with Conditioned(model, None) inside a combination, or build a conditional network (num_classes=...)"
    )


def _check_labels(
    cond: object, batch: int, sizes: tuple[int, ...], device: torch.device | None = None, flat: bool = False
) -> Tensor:
    """Labels of a conditional network as int64 of shape (B, L): ``None`` (all null), or an integer tensor of shape
    (B,) (one attribute) or (B, L) (not with ``flat``), each label in [-1, n) for its attribute's n classes (-1: the
    null label)."""
    L = len(sizes)
    if cond is None:
        return torch.full((batch, L), -1, dtype=torch.long, device=device)
    if not isinstance(cond, Tensor) or cond.is_floating_point() or cond.is_complex() or cond.dtype == torch.bool:
        raise ValueError(f"cond must hold integer labels (an integer tensor), got {_kind(cond)}")
    y = cond.reshape(batch, 1) if cond.shape == (batch,) and L == 1 else cond
    if y.shape != (batch, L) or (flat and cond.dim() != 1):
        want = f"({batch},)" if L == 1 else f"({batch}, {L})"
        raise ValueError(f"cond must have shape {want} (one label per attribute), got {tuple(cond.shape)}")
    # the range is looked at on the CPU only: on a GPU it would cost a host sync per call (an out-of-range label
    # there fails in the embedding's lookup instead)
    if y.device.type == "cpu" and y.numel() and ((y < -1).any() or (y >= torch.tensor(sizes)).any()):
        span = f"[-1, {sizes[0]})" if L == 1 else f"[-1, n) with n = {sizes} per attribute"
        raise ValueError(
            f"cond labels must lie in {span} (-1: the null label), got values in [{y.min().item()}, {y.max().item()}]"
        )
    return y.long()
