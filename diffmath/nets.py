r"""Small networks with the one model interface (lesson 3, sec. 3.5; lesson 0, sec. 0.5)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from diffmath.notation import check_prediction


class TimeEmbedding(nn.Module):
    r"""Sinusoidal features of the normalised time $s = t/t_{\max}\in[0,1]$ (lesson 3, eq. 3.15).

    $\big(\sin(\omega_k s), \cos(\omega_k s)\big)_k$ with $\omega_k$ log-spaced from 1 to 1000.

    Parameters
    ----------
    dim : int
        Number of features, even, >= 2.
    t_max : float
        The schedule's $t_{\max}$, to normalise time.

    Raises
    ------
    ValueError
        If ``dim`` is not an even integer >= 2 or ``t_max`` is not positive.
    """

    def __init__(self, dim: int = 32, t_max: float = 1.0) -> None:
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"time embedding dim must be an even integer >= 2, got {dim}")
        if not t_max > 0:
            raise ValueError(f"t_max must be positive, got {t_max}")
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
        """
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
        If ``dim``, ``hidden`` or ``depth`` is not a positive integer, ``prediction`` is unknown, ``time_dim`` is not
        an even integer >= 2, or ``t_max`` is not positive.
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
        for name, v in (("dim", dim), ("hidden", hidden), ("depth", depth)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        self.prediction = check_prediction(prediction)
        self.dim, self.num_classes = dim, num_classes
        self.time = TimeEmbedding(time_dim, t_max)
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
            Class labels (``-1`` or ``None``: the null condition); ignored when ``num_classes == 0``.

        Returns
        -------
        Tensor, shape (B, d), or (B, out_dim)

        Raises
        ------
        ValueError
            If ``x`` is not of shape (B, d).
        """
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"MLP expects x of shape (B, {self.dim}), got {tuple(x.shape)}")
        t = t.to(x.dtype).expand(x.shape[0]) if t.dim() == 0 else t.to(x.dtype)
        h = self.inp(torch.cat([x, self.time(t)], 1))
        if self.label is not None:
            y = torch.full((x.shape[0],), -1, device=x.device, dtype=torch.long) if cond is None else cond.long()
            h = h + self.label(torch.where(y < 0, self.num_classes, y))
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)
