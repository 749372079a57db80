r"""The probability-flow ODE (lesson 6): pluggable solvers, a scipy reference, exact likelihood, encode and decode.

For $x_t = a_t x_0 + b_t\varepsilon$ the probability-flow ODE is

$$\frac{\mathrm dx}{\mathrm dt} = f_t x - \tfrac12 g_t^2\nabla\log p_t(x)
= \dot a_t\,\mathbb E[x_0\mid x] + \dot b_t\,\mathbb E[\varepsilon\mid x] \qquad\text{(lesson 6, eq. 6.7)},$$

i.e. the model's ``"velocity"`` prediction (lesson 0, eq. 0.4). Solvers take an explicit time grid; they work on
exact models and trained networks alike, on batches of any shape.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from scipy.integrate import solve_ivp
from torch import Tensor
from tqdm import tqdm

from diffmath._validate import check_batch, check_finite
from diffmath.models import Model, predict, predict_pair
from diffmath.samplers import SamplerStep, check_grid
from diffmath.schedules import Schedule

SOLVERS: tuple[str, ...] = ("euler", "heun", "dpm++2m")


def pf_ode_drift(model: Model, x: Tensor, t: float | Tensor, schedule: Schedule, cond: Tensor | None = None) -> Tensor:
    r"""Right-hand side of the probability-flow ODE, $\dot a_t\hat x_0 + \dot b_t\hat\varepsilon$ (lesson 6, eq. 6.7).

    Parameters
    ----------
    model : Model
        Any model with the one interface.
    x : Tensor, shape (B, ...)
        State $x_t$.
    t : float or Tensor of shape () or (B,)
        Time(s).
    schedule : Schedule
        A continuous schedule (the drift needs $\dot a_t, \dot b_t$).
    cond : Tensor, optional
        Condition for the model.

    Returns
    -------
    Tensor, shape (B, ...)
        The velocity $v(x_t, t)$.

    Raises
    ------
    TypeError
        If ``model`` does not follow the one interface, ``schedule`` is not a
        :class:`~diffmath.schedules.Schedule`, or ``x`` is not a floating tensor.
    ValueError
        If ``x`` or ``t`` is invalid, the model's output has the wrong shape or is not finite, the schedule is
        discrete (no derivatives for a ``"velocity"`` conversion), or the drift is not finite (e.g. $\dot b = \infty$
        at $t = 0$ on VP-linear with $\beta_{\min} > 0$).
    """
    v = predict(model, x, t, schedule, "velocity", cond)
    if not torch.isfinite(v).all():
        raise ValueError(
            f"the probability-flow drift is not finite at t={float(t):g} (e.g. db/dt = inf at t = 0 on VP-linear "
            "with beta_min > 0); start or end the integration at t > 0"
        )
    return v


def _monotone_grid(grid: object, schedule: Schedule, method: str) -> Tensor:
    if not isinstance(grid, Tensor) or grid.dim() != 1 or grid.numel() < 2:
        raise ValueError("grid must be a 1-D tensor of at least 2 times")
    if method == "dpm++2m" or grid[0] > grid[-1]:
        return check_grid(grid, schedule)
    g = schedule.check_t(grid.to(torch.float64))
    if (g[1:] <= g[:-1]).any():
        raise ValueError("grid must be strictly monotone")
    return g


@torch.no_grad()
def solve_ode(
    model: Model,
    x: Tensor,
    grid: Tensor,
    schedule: Schedule,
    method: str = "heun",
    cond: Tensor | None = None,
    progress: bool = False,
    variable: str = "t",
) -> Iterator[SamplerStep]:
    r"""Integrate the probability-flow ODE along ``grid`` with one of :data:`SOLVERS`, yielding every step.

    - ``"euler"`` (lesson 6, eq. 6.13): $x_s = x_t + (s - t)\,v(x_t, t)$; order 1, one evaluation per step.
    - ``"heun"`` (eq. 6.14): Euler predictor, trapezoidal corrector; order 2, two evaluations per step (one on a
      last step into $b_s = 0$, where it falls back to Euler, as in Karras et al.).
    - ``"dpm++2m"`` (eq. 6.16): DPM-Solver++(2M), exact in the linear part, a second-order multistep in the
      half log-SNR $\lambda = \log(a/b)$ for $\hat x_0$; one evaluation per step; its first step and its step into
      $b_s = 0$ are first order (the first is DDIM). Needs a decreasing grid; works on discrete schedules too.

    Euler and Heun also accept an increasing grid (encoding data into noise). With ``variable="sigma"`` they
    integrate the same ODE in lesson 4's variables, $\mathrm dy/\mathrm d\sigma = \hat\varepsilon$ with
    $y = x/a$, $\sigma = b/a$ (eq. 6.17, Karras et al.'s form): Euler is then exactly DDIM, the drift has no
    singularity at $t = 0$, and only $a, b$ at the grid's times are needed (any schedule, discrete too).

    Parameters
    ----------
    model : Model
        Any model with the one interface.
    x : Tensor, shape (B, ...)
        State at ``grid[0]``.
    grid : Tensor, shape (K + 1,)
        Strictly monotone times.
    schedule : Schedule
        Continuous for Euler and Heun (they need $\dot a, \dot b$).
    method : {"euler", "heun", "dpm++2m"}
        The solver.
    cond : Tensor, optional
        Condition for the model.
    progress : bool
        Show a tqdm bar.
    variable : {"t", "sigma"}
        Integration variable of Euler and Heun.

    Yields
    ------
    SamplerStep
        ``x0`` is the model's $\hat x_0$ at the step's start (Euler, DPM-Solver++) or ``x`` itself (Heun).

    Raises
    ------
    TypeError
        If ``model`` does not follow the one interface, ``x`` is not a floating tensor, or ``"euler"``/``"heun"``
        in ``variable="t"`` get a discrete schedule.
    ValueError
        If ``method`` or ``variable`` is unknown, ``x`` has fewer than 2 dimensions or holds NaN or infinity,
        ``grid`` is not a 1-D strictly monotone tensor inside the schedule's range (decreasing for ``"dpm++2m"``),
        ``variable="sigma"`` meets $a = 0$, the model's output has the wrong shape or is not finite, or the state
        becomes NaN or infinite.
    """
    if method not in SOLVERS:
        raise ValueError(f"method must be one of {SOLVERS}, got {method!r}")
    if variable not in ("t", "sigma"):
        raise ValueError(f"variable must be 't' or 'sigma', got {variable!r}")
    x = check_batch(x, "x")
    g = _monotone_grid(grid, schedule, method)
    if variable == "sigma" and method != "dpm++2m":
        yield from _solve_sigma(model, x, g, schedule, method, cond, progress)
        return
    if method != "dpm++2m" and schedule.discrete:
        raise TypeError(
            f"{method!r} integrates in t and needs a continuous schedule; use 'dpm++2m' on {schedule.name!r}"
        )
    x0_prev, h_prev = None, None
    for i in tqdm(range(len(g) - 1), disable=not progress, desc=f"ODE ({method})", leave=False):
        t, s = g[i].item(), g[i + 1].item()
        if method == "euler":
            v = pf_ode_drift(model, x, t, schedule, cond)
            x, x0 = x + (s - t) * v, x
        elif method == "heun":
            v1 = pf_ode_drift(model, x, t, schedule, cond)
            x_e = x + (s - t) * v1
            if schedule.coefficients(s).b.item() == 0:
                x = x_e
            else:
                x = x + 0.5 * (s - t) * (v1 + pf_ode_drift(model, x_e, s, schedule, cond))
            x0 = x
        else:
            x, x0, h_prev = _dpm_step(model, x, t, s, schedule, cond, x0_prev, h_prev)
            x0_prev = x0
        check_finite(x, f"ODE state at t={s:g}")
        yield SamplerStep(i, s, x, x0)


def _solve_sigma(model, x, g, schedule, method, cond, progress):
    """Euler or Heun for dy/dsigma = eps_hat(a y), y = x/a, sigma = b/a (lesson 6, eq. 6.17)."""
    for i in tqdm(range(len(g) - 1), disable=not progress, desc=f"ODE ({method}, sigma)", leave=False):
        t, s = g[i].item(), g[i + 1].item()
        ct, cs = schedule.coefficients(t), schedule.coefficients(s)
        at, as_ = ct.a.item(), cs.a.item()
        if at == 0 or as_ == 0:
            raise ValueError("variable='sigma' needs a > 0 on the whole grid (b/a is infinite where a = 0); use 't'")
        st, ss = ct.b.item() / at, cs.b.item() / as_
        d1 = predict_pair(model, x, t, schedule, cond).eps
        y = x / at + (ss - st) * d1
        if method == "heun" and ss > 0:
            d2 = predict_pair(model, as_ * y, s, schedule, cond).eps
            y = x / at + 0.5 * (ss - st) * (d1 + d2)
        x = as_ * y
        check_finite(x, f"ODE state at t={s:g}")
        yield SamplerStep(i, s, x, x)


def _dpm_step(model, x, t, s, schedule, cond, x0_prev, h_prev):
    """One DPM-Solver++(2M) step (lesson 6, eq. 6.16); returns the new state, this step's x0_hat and h."""
    x0 = predict_pair(model, x, t, schedule, cond).x0
    ct, cs = schedule.coefficients(t), schedule.coefficients(s)
    at, bt, as_, bs = (v.item() for v in (ct.a, ct.b, cs.a, cs.b))
    if bs == 0:  # into the data end: x_s = a_s x0_hat
        return as_ * x0, x0, None
    lam = lambda a, b: float("-inf") if a == 0 else float(np.log(a) - np.log(b))  # noqa: E731
    h = lam(as_, bs) - lam(at, bt)
    d = x0
    if x0_prev is not None and h_prev is not None and np.isfinite(h_prev):
        r = h_prev / h
        d = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * x0_prev
    # exact linear part: x_s = (b_s/b_t) x_t + (a_s - a_t b_s/b_t) D  (= a_s (1 - e^{-h}) D + (b_s/b_t) x_t)
    return (bs / bt) * x + (as_ - at * bs / bt) * d, x0, h


def ode_sample(
    model: Model,
    x: Tensor,
    grid: Tensor,
    schedule: Schedule,
    method: str = "heun",
    cond: Tensor | None = None,
    progress: bool = False,
    variable: str = "t",
) -> Tensor:
    """Final state of :func:`solve_ode` (lesson 6, eqs. 6.13-6.16).

    Parameters
    ----------
    model, x, grid, schedule, method, cond, progress, variable
        As in :func:`solve_ode`.

    Returns
    -------
    Tensor, shape (B, ...)
        The state at ``grid[-1]``.

    Raises
    ------
    TypeError, ValueError
        As :func:`solve_ode`.
    """
    for step in solve_ode(model, x, grid, schedule, method, cond, progress, variable):
        x = step.x
    return x


def nfe(method: str, num_steps: int) -> int:
    """Network evaluations of :func:`solve_ode` on a grid of ``num_steps`` steps ending at $b = 0$ (lesson 6, sec. 6.4).

    Parameters
    ----------
    method : {"euler", "heun", "dpm++2m"}
        The solver.
    num_steps : int
        Steps of the grid.

    Returns
    -------
    int
        ``2 * num_steps - 1`` for Heun, ``num_steps`` otherwise.

    Raises
    ------
    ValueError
        If ``method`` is unknown.
    """
    if method not in SOLVERS:
        raise ValueError(f"method must be one of {SOLVERS}, got {method!r}")
    return 2 * num_steps - 1 if method == "heun" else num_steps


def solve_ode_reference(
    model: Model,
    x: Tensor,
    t_start: float,
    t_end: float,
    schedule: Schedule,
    cond: Tensor | None = None,
    rtol: float = 1e-9,
    atol: float = 1e-9,
    method: str = "RK45",
) -> Tensor:
    r"""Reference solution of the probability-flow ODE (eq. 6.7) from ``t_start`` to ``t_end`` with
    ``scipy.integrate.solve_ivp`` (adaptive, in float64), for any model and either direction (lesson 6, sec. 6.6).

    Parameters
    ----------
    model : Model
        Any model with the one interface.
    x : Tensor, shape (B, ...)
        State at ``t_start``.
    t_start, t_end : float
        Start and end of the integration (either order).
    schedule : Schedule
        A continuous schedule.
    cond : Tensor, optional
        Condition for the model.
    rtol, atol : float
        Tolerances of ``solve_ivp``.
    method : str
        ``solve_ivp``'s method (``"RK45"``, ``"DOP853"``, ``"Radau"``, ...).

    Returns
    -------
    Tensor, shape (B, ...)
        The state at ``t_end``, in ``x``'s dtype.

    Raises
    ------
    TypeError
        If ``model`` does not follow the one interface, or ``x`` is not a floating tensor.
    ValueError
        If ``x`` has fewer than 2 dimensions or holds NaN or infinity, a time lies outside the schedule's range, the
        model's output has the wrong shape or is not finite, or the drift is not finite.
    RuntimeError
        If ``solve_ivp`` fails.
    """
    x = check_batch(x, "x")
    shape, dtype = x.shape, x.dtype

    def rhs(t: float, y: np.ndarray) -> np.ndarray:
        xt = torch.from_numpy(y).reshape(shape).to(dtype)
        with torch.no_grad():
            v = pf_ode_drift(model, xt, t, schedule, cond)
        return v.double().reshape(-1).numpy()

    sol = solve_ivp(
        rhs, (float(t_start), float(t_end)), x.double().reshape(-1).numpy(), method=method, rtol=rtol, atol=atol
    )
    if not sol.success:
        raise RuntimeError(f"reference solve failed: {sol.message}")
    return torch.from_numpy(sol.y[:, -1]).reshape(shape).to(dtype)


def encode(
    model: Model, x0: Tensor, schedule: Schedule, t_start: float = 0.0, t_end: float | None = None, **kwargs: object
) -> Tensor:
    r"""Map data to noise along the probability-flow ODE (lesson 6, sec. 6.7): $x_{t_{\max}} = \Phi_{0\to T}(x_0)$.

    Parameters
    ----------
    model : Model
        Any model with the one interface.
    x0 : Tensor, shape (B, ...)
        Data.
    schedule : Schedule
        A continuous schedule.
    t_start : float
        Start time.
    t_end : float, optional
        End time, default $t_{\max}$.
    **kwargs
        ``cond``, ``rtol``, ``atol``, ``method`` of :func:`solve_ode_reference`.

    Returns
    -------
    Tensor, shape (B, ...)
        The encoding at ``t_end``.

    Raises
    ------
    TypeError
        If ``model`` does not follow the one interface, or ``x`` is not a floating tensor.
    ValueError
        If ``x`` has fewer than 2 dimensions or holds NaN or infinity, a time lies outside the schedule's range, the
        model's output has the wrong shape or is not finite, or the drift is not finite.
    RuntimeError
        If ``solve_ivp`` fails.
    """
    return solve_ode_reference(model, x0, t_start, schedule.t_max if t_end is None else t_end, schedule, **kwargs)


def decode(
    model: Model, x_T: Tensor, schedule: Schedule, t_start: float | None = None, t_end: float = 0.0, **kwargs: object
) -> Tensor:
    r"""Map noise to data along the probability-flow ODE (lesson 6, sec. 6.7), the inverse of :func:`encode`.

    Parameters
    ----------
    model : Model
        Any model with the one interface.
    x_T : Tensor, shape (B, ...)
        Noise (an encoding).
    schedule : Schedule
        A continuous schedule.
    t_start : float, optional
        Start time, default $t_{\max}$.
    t_end : float
        End time.
    **kwargs
        ``cond``, ``rtol``, ``atol``, ``method`` of :func:`solve_ode_reference`.

    Returns
    -------
    Tensor, shape (B, ...)
        The decoded data at ``t_end``.

    Raises
    ------
    TypeError
        If ``model`` does not follow the one interface, or ``x`` is not a floating tensor.
    ValueError
        If ``x`` has fewer than 2 dimensions or holds NaN or infinity, a time lies outside the schedule's range, the
        model's output has the wrong shape or is not finite, or the drift is not finite.
    RuntimeError
        If ``solve_ivp`` fails.
    """
    return solve_ode_reference(model, x_T, schedule.t_max if t_start is None else t_start, t_end, schedule, **kwargs)


def divergence(
    fn: Callable[[Tensor], Tensor],
    x: Tensor,
    method: str = "exact",
    probes: Tensor | None = None,
) -> Tensor:
    r"""Divergence $\nabla\cdot v(x) = \operatorname{tr} \partial v/\partial x$ of a batched field, shape (B,)
    (lesson 6, eq. 6.19).

    ``"exact"``: one backward pass per dimension (small $d$). ``"hutchinson"``: $\mathbb E_z[z^\top (\partial v/\partial x)
    z]$ with the given ``probes`` (shape (P, B, ...), e.g. Rademacher), one backward pass per probe, averaged;
    unbiased for any $d$.

    Parameters
    ----------
    fn : callable
        The field $v$, mapping (B, ...) to (B, ...), differentiable.
    x : Tensor, shape (B, ...)
        Points.
    method : {"exact", "hutchinson"}
        Exact trace or Hutchinson's estimate.
    probes : Tensor, shape (P, B, ...), optional
        Probes $z$ for ``"hutchinson"`` (see :func:`rademacher`).

    Returns
    -------
    Tensor, shape (B,)
        The divergence at each point.

    Raises
    ------
    TypeError
        If ``x`` is not a floating tensor.
    ValueError
        If ``x`` has fewer than 2 dimensions or holds NaN or infinity, ``method`` is unknown, or ``"hutchinson"``
        gets no probes or probes of the wrong shape.
    """
    x = check_batch(x, "x").detach().requires_grad_(True)
    with torch.enable_grad():
        v = fn(x)
        flat = v.reshape(x.shape[0], -1)
        if method == "exact":
            div = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
            for i in range(flat.shape[1]):
                (gi,) = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=True)
                div = div + gi.reshape(x.shape[0], -1)[:, i]
            return div.detach()
        if method != "hutchinson":
            raise ValueError(f"method must be 'exact' or 'hutchinson', got {method!r}")
        if probes is None or probes.shape[1:] != x.shape:
            raise ValueError(f"hutchinson needs probes of shape (P, *x.shape) = (P, {', '.join(map(str, x.shape))})")
        est = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for z in probes:
            (vjp,) = torch.autograd.grad(v, x, grad_outputs=z, retain_graph=True)
            est = est + (vjp * z).reshape(x.shape[0], -1).sum(1)
        return (est / probes.shape[0]).detach()


def rademacher(
    shape: tuple[int, ...], generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64
) -> Tensor:
    r"""Random signs of the given shape: the probes of Hutchinson's estimator (lesson 6, eq. 6.19).

    Parameters
    ----------
    shape : tuple of int
        Shape of the result, e.g. ``(P, *x.shape)``.
    generator : torch.Generator, optional
        Source of randomness.
    dtype : torch.dtype
        Dtype of the result.

    Returns
    -------
    Tensor
        Entries $\pm 1$ with probability 1/2 each.
    """
    return torch.randint(0, 2, shape, generator=generator).to(dtype) * 2 - 1


def ode_log_likelihood(
    model: Model,
    x0: Tensor,
    schedule: Schedule,
    t_start: float = 0.0,
    t_end: float | None = None,
    prior_log_prob: Callable[[Tensor], Tensor] | None = None,
    divergence_method: str = "exact",
    num_probes: int = 1,
    generator: torch.Generator | None = None,
    cond: Tensor | None = None,
    rtol: float = 1e-8,
    atol: float = 1e-8,
) -> tuple[Tensor, Tensor]:
    r"""Log-likelihood of data under the probability-flow ODE (lesson 6, eq. 6.20):

    $$\log p_{t_0}(x_{t_0}) = \log p_{t_1}(x_{t_1}) + \int_{t_0}^{t_1}\nabla\cdot v(x_t, t)\,\mathrm dt,$$

    integrating $x$ and the divergence together with scipy from ``t_start`` to ``t_end`` (default $t_{\max}$).

    Parameters
    ----------
    model : Model
        Must be differentiable in ``x`` (exact models and networks are).
    x0 : Tensor, shape (B, ...)
        Data points.
    schedule : Schedule
        A continuous schedule.
    t_start, t_end : float
        Start $t_0$ and end $t_1$ of the integration (``t_end`` defaults to $t_{\max}$).
    prior_log_prob : callable, optional
        $\log p_{t_1}$; default $\mathcal N(0, (a_{t_1}^2 + b_{t_1}^2) I)$ (a good approximation at the noise end).
    divergence_method : {"exact", "hutchinson"}
        How :func:`divergence` computes $\nabla\cdot v$.
    num_probes : int
        Rademacher probes for Hutchinson, drawn once from ``generator`` and kept along the trajectory.
    generator : torch.Generator, optional
        Source of the probes.
    cond : Tensor, optional
        Condition for the model.
    rtol, atol : float
        Tolerances of ``solve_ivp``.

    Returns
    -------
    (log_prob, x_end) : (Tensor of shape (B,), Tensor of shape of x0)
        In nats; divide by $d$ for nats per dimension.

    Raises
    ------
    TypeError
        If ``model`` does not follow the one interface, or ``x`` is not a floating tensor.
    ValueError
        If ``x`` has fewer than 2 dimensions or holds NaN or infinity, a time lies outside the schedule's range, the
        model's output has the wrong shape or is not finite, or the drift is not finite, or
        ``divergence_method`` is unknown.
    RuntimeError
        If ``solve_ivp`` fails.
    """
    x0 = check_batch(x0, "x0")
    t1 = schedule.t_max if t_end is None else float(t_end)
    shape, B, dtype = x0.shape, x0.shape[0], x0.dtype
    n = x0.numel()
    probes = rademacher((num_probes, *shape), generator, dtype) if divergence_method == "hutchinson" else None

    def rhs(t: float, y: np.ndarray) -> np.ndarray:
        xt = torch.from_numpy(y[:n]).reshape(shape).to(dtype)
        drift = lambda z: pf_ode_drift(model, z, t, schedule, cond)  # noqa: E731
        with torch.no_grad():
            v = drift(xt)
        div = divergence(drift, xt, divergence_method, probes)
        return np.concatenate([v.double().reshape(-1).numpy(), div.double().numpy()])

    y0 = np.concatenate([x0.double().reshape(-1).numpy(), np.zeros(B)])
    sol = solve_ivp(rhs, (float(t_start), t1), y0, method="RK45", rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"likelihood solve failed: {sol.message}")
    x_end = torch.from_numpy(sol.y[:n, -1]).reshape(shape)
    integral = torch.from_numpy(sol.y[n:, -1])
    if prior_log_prob is None:
        c = schedule.coefficients(t1)
        var = (c.a**2 + c.b**2).item()
        d = n // B
        prior = -0.5 * (x_end.reshape(B, -1) ** 2).sum(1) / var - 0.5 * d * np.log(2 * np.pi * var)
    else:
        prior = prior_log_prob(x_end.to(dtype)).double()
    return prior + integral, x_end.to(dtype)
