r"""The diffusion ODE from the heat equation (lesson 12): the continuity equation, the heat equation and the schedule
$a_t = 1, b_t = t$ on which the VE probability-flow ODE is heat flow.

An ODE $\mathrm dx/\mathrm dt = f_t(x)$ moves a density by the continuity equation
$\partial_t p_t = -\nabla\cdot(f_t p_t)$ (lesson 12, eq. 12.3). The choice $f_t = -D_t\nabla\log p_t$ turns it into the
heat equation $\partial_t p_t = D_t\Delta p_t$ (eq. 12.5), solved by $p_t = p_0 * \mathcal N(0, \sigma_t^2 I)$ with
$D_t = \sigma_t\dot\sigma_t$ (eq. 12.7): the VE forward process $x_t = x_0 + \sigma_t\varepsilon$. With
:class:`LinearVE` ($\sigma_t = t$) the same schedule carries PFGM's extra coordinate $z$ (lesson 13).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from diffmath.core._validate import check_batch, check_positive, check_real
from diffmath.core.schedules import Coefficients, Schedule
from diffmath.exact.mixtures import GaussianMixture


class LinearVE(Schedule):
    r"""The schedule $a_t = 1$, $b_t = t$ on $t \in [0, t_{\max}]$: heat flow with $\sigma_t = t$ (lesson 12, eq. 12.7).

    Its probability-flow ODE is $\mathrm dx/\mathrm dt = (x - \mathbb E[x_0\mid x_t])/t$ (eq. 12.9); with the Poisson
    kernel in place of the Gaussian it is PFGM's backward ODE in $z = t$ (lesson 13, eq. 13.9). A ``"log-snr"`` grid
    is log-uniform in $t$: integrating on it is integrating in $\ln t$.

    Parameters
    ----------
    t_max : float
        The largest time (PFGM's $z_{\max}$).

    Raises
    ------
    ValueError
        If ``t_max`` is not a positive finite number.
    """

    def __init__(self, t_max: float = 1.0) -> None:
        self.t_max = check_positive(t_max, "t_max")
        self.name = f"linear-ve({self.t_max:g})"

    def _coefficients(self, t: Tensor) -> Coefficients:
        return Coefficients(torch.ones_like(t), t.clone(), torch.zeros_like(t), torch.ones_like(t))


def log_grid(t_start: float, t_min: float, num_steps: int) -> Tensor:
    r"""A decreasing grid log-uniform from ``t_start`` to ``t_min``, then one last step to 0 (lesson 12, eq. 12.9):
    on :class:`LinearVE` this is integrating in $\ln t$ (PFGM's $\ln z$, lesson 13), down to a $z_{\min}$ chosen
    freely (``Schedule.grid(..., "log-snr")`` stops its log part at $10^{-3}\,t_{\rm start}$).

    Parameters
    ----------
    t_start, t_min : float
        End points of the log-uniform part, ``t_start > t_min > 0``.
    num_steps : int
        Number of intervals, >= 2 (``num_steps - 1`` log-uniform ones and the last one to 0).

    Returns
    -------
    Tensor, shape (num_steps + 1,), float64
        Strictly decreasing, last point 0.

    Raises
    ------
    ValueError
        If ``num_steps`` is not an integer >= 2 or ``t_start > t_min > 0`` fails (or either is not finite).
    """
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 2:
        raise ValueError(f"num_steps must be an integer >= 2, got {num_steps!r}")
    t_start, t_min = check_positive(t_start, "t_start"), check_positive(t_min, "t_min")
    if not t_start > t_min:
        raise ValueError(f"need t_start > t_min > 0, got t_start={t_start}, t_min={t_min}")
    logs = torch.linspace(math.log(t_start), math.log(t_min), num_steps, dtype=torch.float64)
    grid = torch.cat([torch.exp(logs), torch.zeros(1, dtype=torch.float64)])
    grid[0], grid[-2] = t_start, t_min  # exact end points (exp(log(t)) may round above t_max)
    return grid


def _check_a_is_one(schedule: Schedule, t: float) -> Coefficients:
    if not isinstance(schedule, Schedule) or schedule.discrete:
        raise TypeError(f"schedule must be a continuous diffmath Schedule, got {schedule!r}")
    c = schedule.coefficients(torch.tensor(float(t), dtype=torch.float64))
    if c.a.item() != 1.0 or c.da.item() != 0.0:
        raise ValueError(f"the heat equation needs a_t = 1 (a VE schedule); {schedule.name!r} has a_t = {c.a.item():g}")
    return c


def heat_residual(
    source: GaussianMixture, schedule: Schedule, x: Tensor, t: float, h: float = 1e-3, dt: float = 1e-5
) -> Tensor:
    r"""Residual $\partial_t p_t - \sigma_t\dot\sigma_t\,\Delta p_t$ of the heat equation (lesson 12, eqs. 12.5 and
    12.7) for the exact noised density of a mixture under a VE schedule, all derivatives by finite differences.

    $\partial_t p$ by a central difference of step ``dt`` in $t$, the Laplacian by the $2d+1$-point stencil of step
    ``h`` in $x$ (error $O(h^2)$). Compare the result with the size of $\partial_t p$.

    Parameters
    ----------
    source : GaussianMixture
        The data distribution $p_0$ (any exact mixture).
    schedule : Schedule
        A continuous schedule with $a_t = 1$ (e.g. :class:`LinearVE`, :class:`~diffmath.core.schedules.VE`);
        $\sigma_t = b_t$.
    x : Tensor, shape (B, d)
        Points.
    t : float
        Time, with ``t - dt`` and ``t + dt`` in the schedule's range.
    h, dt : float
        Steps of the differences in $x$ and $t$.

    Returns
    -------
    Tensor, shape (B,), float64
        The residual at each point.

    Raises
    ------
    TypeError
        If ``source`` is not a mixture, ``schedule`` is not a continuous schedule, or ``x`` is not a floating tensor.
    ValueError
        If $a_t \ne 1$, ``x`` is not of shape (B, d) or holds NaN or infinity, ``t`` is not a finite number or a
        time lies outside the schedule, or ``h`` or ``dt`` is not a positive finite number.
    """
    if not isinstance(source, GaussianMixture):
        raise TypeError(f"source must be a GaussianMixture (or EmpiricalData), got {type(source).__name__}")
    t, h, dt = check_real(t, "t"), check_positive(h, "h"), check_positive(dt, "dt")
    c = _check_a_is_one(schedule, t)
    x = check_batch(x, "x").to(torch.float64)
    if x.dim() != 2:
        raise ValueError(f"x must have shape (B, d), got {tuple(x.shape)}")

    def p(y: Tensor, s: float) -> Tensor:
        return torch.exp(source.noised_log_prob(y, 1.0, schedule.coefficients(float(s)).b.item()))

    dp_dt = (p(x, t + dt) - p(x, t - dt)) / (2 * dt)
    center = p(x, t)
    lap = torch.zeros_like(center)
    for i in range(x.shape[1]):
        e = torch.zeros_like(x)
        e[:, i] = h
        lap = lap + (p(x + e, t) - 2 * center + p(x - e, t)) / h**2
    return dp_dt - (c.b * c.db).item() * lap


def continuity_residual(
    log_prob: Callable[[Tensor, float], Tensor],
    velocity: Callable[[Tensor, float], Tensor],
    x: Tensor,
    t: float,
    dt: float = 1e-5,
) -> Tensor:
    r"""Residual $\partial_t p_t + \nabla\cdot(f_t\,p_t)$ of the continuity equation (lesson 12, eq. 12.3) at points
    ``x``, divided by $p_t$: $\partial_t\log p_t + \nabla\cdot f_t + f_t\cdot\nabla\log p_t$.

    $\partial_t \log p$ by a central difference of step ``dt``; $\nabla\log p$ and $\nabla\cdot f$ by autograd. It
    vanishes when the ODE $\mathrm dx/\mathrm dt = f_t(x)$ carries $p_t$: the PF-ODE of a Gaussian mixture (lesson 12),
    the Poisson flow with its kernel-mixture density (lesson 13).

    Parameters
    ----------
    log_prob : callable
        ``log_prob(x, t)``, shape (B,): $\log p_t$, differentiable in ``x``.
    velocity : callable
        ``velocity(x, t)``, shape of ``x``: $f_t$, differentiable in ``x``.
    x : Tensor, shape (B, ...)
        Points.
    t : float
        Time.
    dt : float
        Step of the central difference in $t$.

    Returns
    -------
    Tensor, shape (B,)
        The residual divided by $p_t(x)$ (a relative residual, in units of 1/time).

    Raises
    ------
    TypeError
        If ``log_prob`` or ``velocity`` is not callable, or ``x`` is not a floating tensor.
    ValueError
        If ``x`` has fewer than 2 dimensions or holds NaN or infinity, ``t`` is not a finite number or ``dt`` not
        a positive one.
    """
    from diffmath.ode import divergence

    for key, fn in (("log_prob", log_prob), ("velocity", velocity)):
        if not callable(fn):
            raise TypeError(f"{key} must be a function of (x, t), got {type(fn).__name__}")
    t, dt = check_real(t, "t"), check_positive(dt, "dt")
    x = check_batch(x, "x")
    dlogp_dt = (log_prob(x, t + dt) - log_prob(x, t - dt)) / (2 * dt)
    with torch.enable_grad():
        y = x.detach().requires_grad_(True)
        (grad_logp,) = torch.autograd.grad(log_prob(y, t).sum(), y)
    f = velocity(x, t).detach()
    div = divergence(lambda z: velocity(z, t), x, "exact")
    return dlogp_dt.detach() + div + (f * grad_logp).flatten(1).sum(1)
