r"""Reference solutions with scipy, for measuring the discretisation error of samplers (lessons 4 and 6)."""

from __future__ import annotations

import numpy as np
import torch
from scipy.integrate import solve_ivp
from torch import Tensor

from diffmath.core._validate import check_batch, check_ivp, check_schedule
from diffmath.core.schedules import Schedule
from diffmath.exact.mixtures import GaussianMixture


def exact_pf_ode(
    source: GaussianMixture,
    x: Tensor,
    t_start: float,
    t_end: float,
    schedule: Schedule,
    rtol: float = 1e-9,
    atol: float = 1e-9,
    method: str = "RK45",
) -> Tensor:
    r"""Solve the probability-flow ODE of an exact model from ``t_start`` to ``t_end`` with scipy (lesson 4, eq. 4.14).

    In the variables $y = x/a$ and $\sigma = b/a$ the ODE is $\mathrm dy/\mathrm d\sigma = \mathbb E[\varepsilon\mid
    y]$ with $y = x_0 + \sigma\varepsilon$, whatever the schedule; DDIM ($\eta = 0$) is its Euler method on the
    grid's $\sigma$'s, which is why DDIM converges to this solution at first order.

    Parameters
    ----------
    source : GaussianMixture
        The exact data distribution (its ``eps_mean`` at $a = 1, b = \sigma$ is the ODE's right-hand side).
    x : Tensor, shape (B, ...)
        State at ``t_start``.
    t_start, t_end : float
        Times on ``schedule``.
    schedule : Schedule
        The forward process, any (discrete too): only $a, b$ at ``t_start`` and ``t_end`` are used.
    rtol, atol : float
        Tolerances of ``scipy.integrate.solve_ivp``.
    method : str
        Any ``solve_ivp`` method ("RK45", "DOP853", ...).

    Returns
    -------
    Tensor, shape of ``x``, float64
        The state at ``t_end``.

    Raises
    ------
    TypeError
        If ``source`` is not a mixture, ``schedule`` is not a Schedule, ``x`` is not a floating tensor, or a time is
        not a real number.
    ValueError
        If ``x`` has fewer than 2 dimensions, holds NaN or infinity or does not have the mixture's event shape, a
        time is not a single time in the schedule's range or has $a = 0$, ``rtol`` or ``atol`` is not a finite
        number > 0, or ``method`` is not one of ``solve_ivp``'s.
    RuntimeError
        If ``solve_ivp`` fails.
    """
    if not isinstance(source, GaussianMixture):
        raise TypeError(f"source must be a GaussianMixture or EmpiricalData, got {type(source).__name__}")
    x = check_batch(x, "x")
    device, x = x.device, x.double().cpu()  # the exact eps-mean and scipy both run on the host
    t_start, t_end = check_ivp(t_start, t_end, check_schedule(schedule), rtol, atol, method)
    c0, c1 = schedule.coefficients(t_start), schedule.coefficients(t_end)
    if c0.a.item() == 0 or c1.a.item() == 0:
        raise ValueError("t_start and t_end need a > 0 there (the ODE runs in sigma = b/a, infinite where a = 0)")
    s0, s1 = (c0.b / c0.a).item(), (c1.b / c1.a).item()
    shape = x.shape

    def rhs(sigma: float, y: np.ndarray) -> np.ndarray:
        yt = torch.from_numpy(y).reshape(shape)
        return source.eps_mean(yt, 1.0, sigma).reshape(-1).numpy()

    sol = solve_ivp(rhs, (s0, s1), (x / c0.a.item()).reshape(-1).numpy(), method=method, rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"reference solve failed: {sol.message}")
    return (torch.from_numpy(sol.y[:, -1]).reshape(shape) * c1.a.item()).to(device)
