r"""An adaptive ODE solver in torch (lesson 6, sec. 6.6): Dormand-Prince 5(4), the method of scipy's ``RK45``, on
tensors of any device, so that a likelihood on a GPU never leaves it.

The state is one tensor; its steps are the embedded pair of Dormand and Prince (1980): seven stages (the last one
the first of the next step, "first same as last"), a fifth-order update and a fourth-order one whose difference
estimates the local error. A step is accepted when the root-mean-square of the error, each entry scaled by
$\mathrm{atol} + \mathrm{rtol}\,\max(|y|, |y_{\mathrm{new}}|)$, is at most 1; the next step size is the current one
times $0.9\,\mathrm{err}^{-1/5}$, kept in $[0.2, 10]$ (and at most 1 after a rejection). The first step size follows
Hairer, Norsett and Wanner's rule (the one scipy uses). Deciding to accept a step reads one number on the host: an
adaptive solver synchronises once per step on a GPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

# the Dormand-Prince tableau (Dormand & Prince 1980, Table 2): nodes, stage weights, 5th-order weights, and the
# difference of the 5th- and 4th-order weights (the error estimate)
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
)
_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)
_E = (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40)


class Solution(NamedTuple):
    """The result of :func:`dopri5` (lesson 6, sec. 6.6).

    Attributes
    ----------
    y : Tensor
        The state at ``t1``.
    evaluations : int
        Calls of the right-hand side.
    steps : int
        Accepted steps.
    """

    y: Tensor
    evaluations: int
    steps: int


def _rms(x: Tensor) -> float:
    return math.sqrt(float(x.pow(2).mean()))


def dopri5(
    f: Callable[[float, Tensor], Tensor],
    t0: float,
    t1: float,
    y0: Tensor,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    max_steps: int = 100_000,
) -> Solution:
    r"""Solve $y' = f(t, y)$ from $t_0$ to $t_1$ (either direction) by adaptive Dormand-Prince 5(4) (lesson 6,
    sec. 6.6), on ``y0``'s device and in its dtype.

    Parameters
    ----------
    f : callable
        ``f(t, y) -> Tensor`` of ``y``'s shape, with ``t`` a Python float.
    t0, t1 : float
        The interval; $t_1 < t_0$ integrates backwards.
    y0 : Tensor
        The initial state (any shape, floating point).
    rtol, atol : float
        Relative and absolute tolerances of the local error, entry by entry.
    max_steps : int
        Attempted steps (accepted or not) after which the solve gives up.

    Returns
    -------
    Solution
        ``y`` at ``t1``, the number of evaluations of ``f`` and of accepted steps.

    Raises
    ------
    TypeError
        If ``y0`` is not a floating tensor or ``f`` is not callable.
    ValueError
        If a tolerance is not positive, ``f`` returns another shape or a non-finite value, or the step size
        underflows.
    RuntimeError
        If ``max_steps`` steps do not reach ``t1``.
    """
    if not isinstance(y0, Tensor) or not y0.is_floating_point():
        raise TypeError(f"y0 must be a floating-point tensor, got {type(y0).__name__}")
    if not callable(f):
        raise TypeError(f"f must be callable as f(t, y), got {type(f).__name__}")
    for name, v in (("rtol", rtol), ("atol", atol)):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 < v < math.inf:
            raise ValueError(f"{name} must be a positive number, got {v!r}")
    t0, t1 = float(t0), float(t1)
    evaluations = 0

    def rhs(t: float, y: Tensor) -> Tensor:
        nonlocal evaluations
        evaluations += 1
        out = f(t, y)
        if not isinstance(out, Tensor) or out.shape != y.shape:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"f returned {got}; expected a tensor of the state's shape {tuple(y.shape)}")
        return out

    y = y0
    if t0 == t1:
        return Solution(y, 0, 0)
    direction = 1.0 if t1 > t0 else -1.0
    k0 = rhs(t0, y)
    # the first step (Hairer, Norsett & Wanner, Solving ODEs I, sec. II.4)
    scale = atol + rtol * y.abs()
    d0, d1 = _rms(y / scale), _rms(k0 / scale)
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    h0 = min(h0, abs(t1 - t0))
    k1 = rhs(t0 + direction * h0, y + direction * h0 * k0)
    d2 = _rms((k1 - k0) / scale) / h0
    h1 = max(1e-6, h0 * 1e-3) if max(d1, d2) <= 1e-15 else (0.01 / max(d1, d2)) ** (1 / 5)
    h = min(100 * h0, h1)
    t, steps, rejected = t0, 0, False
    for _ in range(max_steps):
        if direction * (t - t1) >= 0:
            return Solution(y, evaluations, steps)
        h = min(h, abs(t1 - t))
        if h < 10 * abs(math.nextafter(t, t + direction) - t):
            raise ValueError(f"the step size underflowed at t = {t:g}: the problem is too stiff for dopri5")
        dt = direction * h
        ks = [k0]
        for c, a in zip(_C[1:], _A[1:], strict=True):
            ks.append(rhs(t + c * dt, y + dt * sum(ai * ki for ai, ki in zip(a, ks, strict=False))))
        y_new = y + dt * sum(b * k for b, k in zip(_B, ks, strict=True) if b != 0.0)
        t_new = t1 if h == abs(t1 - t) else t + dt
        k_new = rhs(t_new, y_new)
        ks.append(k_new)
        err = dt * sum(e * k for e, k in zip(_E, ks, strict=True) if e != 0.0)
        norm = _rms(err / (atol + rtol * torch.maximum(y.abs(), y_new.abs())))
        if not math.isfinite(norm):
            raise ValueError(f"f returned NaN or inf near t = {t:g}; check the model and the interval")
        if norm <= 1:
            factor = 10.0 if norm == 0 else min(10.0, 0.9 * norm**-0.2)
            h *= min(1.0, factor) if rejected else factor
            t, y, k0, steps, rejected = t_new, y_new, k_new, steps + 1, False
        else:
            h *= max(0.2, 0.9 * norm**-0.2)
            rejected = True
    raise RuntimeError(f"dopri5 did not reach t = {t1:g} in {max_steps} steps (at t = {t:g})")
