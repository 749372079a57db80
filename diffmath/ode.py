r"""The probability-flow ODE (lesson 6): pluggable solvers, a scipy reference, exact likelihood, encode and decode.

For $x_t = a_t x_0 + b_t\varepsilon$ the probability-flow ODE is

$$\frac{\mathrm dx}{\mathrm dt} = f_t x - \tfrac12 g_t^2\nabla\log p_t(x)
= \dot a_t\,\mathbb E[x_0\mid x] + \dot b_t\,\mathbb E[\varepsilon\mid x] \qquad\text{(lesson 6, eq. 6.7)},$$

i.e. the model's ``"velocity"`` prediction (lesson 0, eq. 0.4). Solvers take an explicit time grid; they work on
exact models and trained networks alike, on batches of any shape.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import torch
from scipy.integrate import solve_ivp
from torch import Tensor

from diffmath.core._validate import (
    check_batch,
    check_choice,
    check_dtype,
    check_int,
    check_ivp,
    check_output,
    check_schedule,
    check_time,
)
from diffmath.core.integrate import dopri5
from diffmath.core.models import Model, predict
from diffmath.core.notation import Pair
from diffmath.core.schedules import Schedule
from diffmath.sampling.loop import SamplerStep, Step, check_grid, run
from diffmath.sampling.samplers import ddim_rule

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
        :class:`~diffmath.core.schedules.Schedule`, or ``x`` is not a floating tensor.
    ValueError
        If ``x`` or ``t`` is invalid, the model's output has the wrong shape or is not finite, the schedule is
        discrete (no derivatives for a ``"velocity"`` conversion), or the drift is not finite (e.g. $\dot b = \infty$
        at $t = 0$ on VP-linear with $\beta_{\min} > 0$).
    """
    t_ = check_time(t, check_schedule(schedule), "t")
    c = schedule.coefficients(t_)
    finite = c.db is None or (torch.isfinite(c.da).all() and torch.isfinite(c.db).all())
    v = predict(model, x, t, schedule, "velocity", cond) if finite else None
    if v is None or not torch.isfinite(v).all():
        raise ValueError(
            f"the probability-flow drift is not finite at t in [{t_.min().item():g}, {t_.max().item():g}] (e.g. "
            "db/dt = inf at t = 0 on VP-linear "
            "with beta_min > 0); start or end the integration (the grid, or t_start/t_end) at t > 0"
        )
    return v


def _require_grid(grid: object, caller: str, example: str = "schedule.grid({n})") -> None:
    """Refuse a number of steps, or a schedule, where ``caller`` takes its explicit time grid (lesson 0, sec. 0.4);
    ``example`` shows how to make one, with ``{n}`` for the number of steps."""
    if isinstance(grid, int) and not isinstance(grid, bool):
        raise TypeError(
            f"{caller} takes a time grid since every sampler does (lesson 0, sec. 0.4), not a number of steps: "
            f"pass {example.format(n=grid)}"
        )
    if isinstance(grid, Schedule):
        raise TypeError(
            f"{caller} takes its time grid before the schedule (the grid comes before the schedule in every "
            f"sampler, lesson 0, sec. 0.4): pass {example.format(n=4)}, then the schedule"
        )


def _monotone_grid(grid: object, schedule: Schedule, method: str) -> Tensor:
    _require_grid(grid, "solve_ode")
    check_schedule(schedule)
    if not isinstance(grid, Tensor):
        raise TypeError(f"grid must be a 1-D torch.Tensor of monotone times, got {type(grid).__name__}")
    if grid.dim() != 1 or grid.numel() < 2:
        raise ValueError(f"grid must be 1-D with at least 2 times, got shape {tuple(grid.shape)}")
    if method == "dpm++2m" or grid[0] > grid[-1]:
        return check_grid(grid, schedule)
    g = check_time(grid.to(torch.float64), schedule, "grid")
    if (g[1:] <= g[:-1]).any():
        raise ValueError("grid must be strictly monotone")
    return g


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
    - ``"dpm++2m"`` (eq. 6.17): DPM-Solver++(2M), exact in the linear part, a second-order multistep in the
      half log-SNR $\lambda = \log(a/b)$ for $\hat x_0$; one evaluation per step; its first step and its step into
      $b_s = 0$ are first order (the first is DDIM). Needs a decreasing grid; works on discrete schedules too.

    Euler and Heun also accept an increasing grid (encoding data into noise). With ``variable="sigma"`` they
    integrate the same ODE in lesson 4's variables, $\mathrm dy/\mathrm d\sigma = \hat\varepsilon$ with
    $y = x/a$, $\sigma = b/a$ (eq. 6.15, Karras et al.'s form): Euler is then exactly DDIM, the drift has no
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
        The solver. The default, Heun, is second order and runs either way on any continuous schedule (encoding
        too); the library's other ODE samplers default to it, except where a reason is stated:
        :func:`~diffmath.flows.sample_flow` (Euler, for straight flows) and :func:`~diffmath.pfgm.pfgm_sample`
        (DPM-Solver++(2M), exact in $\ln z$).
    cond : Tensor, optional
        Condition for the model.
    progress : bool
        Show a tqdm bar.
    variable : {"t", "sigma"}
        Integration variable of Euler and Heun.

    Yields
    ------
    SamplerStep
        ``x0`` is the model's $\hat x_0$ at the step's start.

    Raises
    ------
    TypeError
        If ``model`` does not follow the one interface, ``x`` is not a floating tensor, or ``"euler"``/``"heun"``
        in ``variable="t"`` get a discrete schedule.
    ValueError
        If ``method`` or ``variable`` is unknown, ``x`` has fewer than 2 dimensions or holds NaN or infinity,
        ``grid`` is not a 1-D strictly monotone tensor inside the schedule's range (decreasing for ``"dpm++2m"``),
        ``variable="sigma"`` meets $a = 0$, the model's output has the wrong shape or is not finite, or the state
        becomes NaN or infinite (the message names the step).
    """
    check_choice(method, "method", SOLVERS)
    check_choice(variable, "variable", ("t", "sigma"))
    x = check_batch(x, "x")
    g = _monotone_grid(grid, schedule, method)
    if variable == "t" and method != "dpm++2m" and schedule.discrete:
        raise TypeError(
            f"{method!r} integrates in t and needs a continuous schedule; use 'dpm++2m' on {schedule.name!r}"
        )
    if variable == "t" and method != "dpm++2m":
        c = schedule.coefficients(g)
        used = torch.ones_like(g, dtype=torch.bool)
        used[-1] = method == "heun" and bool(c.b[-1] > 0)  # the last point is evaluated only by Heun, where b > 0
        if not (torch.isfinite(c.da[used]).all() and torch.isfinite(c.db[used]).all()):
            raise ValueError(
                "the probability-flow drift is not finite on the grid (e.g. db/dt = inf at t = 0 on VP-linear with "
                "beta_min > 0); start or end the integration (the grid) at t > 0"
            )
    if method == "dpm++2m":
        rule = dpm_rule
    elif variable == "sigma":
        rule = ddim_rule(0.0) if method == "euler" else sigma_heun_rule  # Euler in sigma is exactly DDIM (eq. 6.15)
    else:
        rule = euler_rule if method == "euler" else heun_rule
    yield from run(
        model, x, grid, schedule, rule, cond=cond, progress=progress, desc=f"ODE ({method}, {variable})", checked_grid=g
    )


def _velocity(pair: Pair, da: float, db: float) -> Tensor:
    return da * pair.x0 + db * pair.eps  # eq. 0.4: the probability-flow drift (eq. 6.7)


def euler_rule(pair: Pair, x: Tensor, step: Step, state: dict) -> tuple[Tensor, float, dict]:
    r"""Euler's step of the probability-flow ODE, $x_s = x_t + (s - t)\,v(x_t, t)$ (lesson 6, eq. 6.13).

    Parameters
    ----------
    pair : Pair
        The model's $(\hat x_0, \hat\varepsilon)$ at $(x_t, t)$.
    x : Tensor, shape (B, ...)
        The state $x_t$.
    step : Step
        The step (its coefficients).
    state : dict
        Carried across steps (unused).

    Returns
    -------
    (Tensor, float, dict)
        The new state, standard deviation 0, the state.
    """
    return x + step.h * _velocity(pair, step.da_t, step.db_t), 0.0, state


def heun_rule(pair: Pair, x: Tensor, step: Step, state: dict) -> tuple[Tensor, float, dict]:
    r"""Heun's step (lesson 6, eq. 6.14): Euler predictor, trapezoidal corrector with a second model call at $s$; on a
    step into $b_s = 0$ it stays Euler (the drift is singular there), as in Karras et al.

    Parameters
    ----------
    pair, x, step, state
        As in :func:`euler_rule`.

    Returns
    -------
    (Tensor, float, dict)
        The new state, standard deviation 0, the state.
    """
    v1 = _velocity(pair, step.da_t, step.db_t)
    x_e = x + step.h * v1
    if step.b_s == 0:
        return x_e, 0.0, state
    v2 = _velocity(step.denoise_at(x_e, "s"), step.da_s, step.db_s)
    return x + 0.5 * step.h * (v1 + v2), 0.0, state


def sigma_heun_rule(pair: Pair, x: Tensor, step: Step, state: dict) -> tuple[Tensor, float, dict]:
    r"""Heun's step in lesson 4's variables, $\mathrm dy/\mathrm d\sigma = \hat\varepsilon$ with $y = x/a$,
    $\sigma = b/a$ (lesson 6, eq. 6.15): the DDIM step with $\hat\varepsilon$ averaged over both ends.

    Parameters
    ----------
    pair, x, step, state
        As in :func:`euler_rule`.

    Returns
    -------
    (Tensor, float, dict)
        The new state, standard deviation 0, the state.

    Raises
    ------
    ValueError
        Where $a = 0$ at either end ($b/a$ is infinite).
    """
    if step.a_t == 0 or step.a_s == 0:
        raise ValueError("variable='sigma' needs a > 0 on the whole grid (b/a is infinite where a = 0); use 't'")
    st, ss = step.b_t / step.a_t, step.b_s / step.a_s
    eps = pair.eps
    if ss > 0:
        eps = 0.5 * (eps + step.denoise_at(step.a_s * (x / step.a_t + (ss - st) * eps), "s").eps)
    return step.a_s * (x / step.a_t + (ss - st) * eps), 0.0, state


def _half_log_snr(a: float, b: float) -> float:
    return -math.inf if a == 0 else math.log(a) - math.log(b)


def dpm_rule(pair: Pair, x: Tensor, step: Step, state: dict) -> tuple[Tensor, float, dict]:
    r"""DPM-Solver++(2M) (lesson 6, eq. 6.17): exact in the linear part, second-order multistep in
    $\lambda = \log(a/b)$ for $\hat x_0$, using the previous step's $\hat x_0$ (kept in ``state``); its first step
    and its step into $b_s = 0$ are first order (the first is DDIM).

    Parameters
    ----------
    pair, x, step, state
        As in :func:`euler_rule`; ``state["dpm++2m"]`` holds the previous $(\hat x_0, h)$.

    Returns
    -------
    (Tensor, float, dict)
        The new state, standard deviation 0, the state.
    """
    x0 = pair.x0
    prev, h_prev = state.get("dpm++2m", (None, None)) if step.index > 0 else (None, None)
    if step.b_s == 0:  # into the data end: x_s = a_s x0_hat
        state["dpm++2m"] = (x0, None)
        return step.a_s * x0, 0.0, state
    h = _half_log_snr(step.a_s, step.b_s) - _half_log_snr(step.a_t, step.b_t)
    d = x0
    if prev is not None and h_prev is not None and math.isfinite(h_prev):
        r = h_prev / h
        d = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * prev
    state["dpm++2m"] = (x0, h)
    ratio = step.b_s / step.b_t  # x_s = (b_s/b_t) x_t + (a_s - a_t b_s/b_t) D  (= a_s (1 - e^{-h}) D + (b_s/b_t) x_t)
    return ratio * x + (step.a_s - step.a_t * ratio) * d, 0.0, state


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
    """Final state of :func:`solve_ode` (lesson 6, eqs. 6.13-6.17).

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
    """Network evaluations of :func:`solve_ode` on a grid of ``num_steps`` steps ending at $b = 0$ (lesson 6, sec. 6.6).

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
        If ``method`` is unknown or ``num_steps`` is not an integer >= 1.
    """
    check_choice(method, "method", SOLVERS)
    check_int(num_steps, "num_steps")
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
        If ``model`` does not follow the one interface, ``schedule`` is not a Schedule, or ``x`` is not a floating
        tensor.
    ValueError
        If ``x`` has fewer than 2 dimensions or holds NaN or infinity, ``t_start`` or ``t_end`` is not a single time
        in the schedule's range, ``rtol`` or ``atol`` is not a finite number > 0, ``method`` is not one of
        ``solve_ivp``'s, the model's output has the wrong shape or is not finite, or the drift is not finite.
    RuntimeError
        If ``solve_ivp`` fails.
    """
    x = check_batch(x, "x")
    t_start, t_end = check_ivp(t_start, t_end, check_schedule(schedule), rtol, atol, method)
    shape, dtype, device = x.shape, x.dtype, x.device  # scipy works on the host; the model runs on x's device

    def rhs(t: float, y: np.ndarray) -> np.ndarray:
        xt = torch.from_numpy(y).reshape(shape).to(device, dtype)
        with torch.no_grad():
            v = pf_ode_drift(model, xt, t, schedule, cond)
        return v.double().reshape(-1).cpu().numpy()

    sol = solve_ivp(
        rhs, (float(t_start), float(t_end)), x.double().reshape(-1).cpu().numpy(), method=method, rtol=rtol, atol=atol
    )
    if not sol.success:
        raise RuntimeError(f"reference solve failed: {sol.message}")
    return torch.from_numpy(sol.y[:, -1]).reshape(shape).to(device, dtype)


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
    TypeError, ValueError, RuntimeError
        As :func:`solve_ode_reference` (for ``x0``).
    """
    x0, schedule = check_batch(x0, "x0"), check_schedule(schedule)
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
    TypeError, ValueError, RuntimeError
        As :func:`solve_ode_reference` (for ``x_T``).
    """
    x_T, schedule = check_batch(x_T, "x_T"), check_schedule(schedule)
    return solve_ode_reference(model, x_T, schedule.t_max if t_start is None else t_start, t_end, schedule, **kwargs)


def divergence(
    fn: Callable[[Tensor], Tensor],
    x: Tensor,
    method: str = "exact",
    probes: Tensor | None = None,
) -> Tensor:
    r"""Divergence $\nabla\cdot v(x) = \operatorname{tr} \partial v/\partial x$ of a batched field, shape (B,)
    (lesson 6, eq. 6.20).

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
        If ``fn`` is not callable or ``x`` is not a floating tensor.
    ValueError
        If ``x`` has fewer than 2 dimensions or holds NaN or infinity, ``method`` is unknown, ``"hutchinson"``
        gets no probes or probes of the wrong shape, or ``fn`` returns something other than a tensor of the shape
        of ``x``.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable as fn(x) -> Tensor of the shape of x, got {type(fn).__name__}")
    check_choice(method, "method", ("exact", "hutchinson"))
    x = check_batch(x, "x").detach().requires_grad_(True)
    if method == "hutchinson" and (not isinstance(probes, Tensor) or probes.dim() < 1 or probes.shape[1:] != x.shape):
        raise ValueError(f"hutchinson needs probes of shape (P, *x.shape) = (P, {', '.join(map(str, x.shape))})")
    if x.shape[0] == 0:
        return torch.zeros(0, dtype=x.dtype, device=x.device)
    with torch.enable_grad():
        v = check_output(fn(x), x, "fn")
        flat = v.flatten(1)
        if method == "exact":
            div = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
            for i in range(flat.shape[1]):
                (gi,) = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=True)
                div = div + gi.flatten(1)[:, i]
            return div.detach()
        est = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for z in probes:
            (vjp,) = torch.autograd.grad(v, x, grad_outputs=z, retain_graph=True)
            est = est + (vjp * z).flatten(1).sum(1)
        return (est / probes.shape[0]).detach()


def rademacher(
    shape: tuple[int, ...], generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64
) -> Tensor:
    r"""Random signs of the given shape: the probes of Hutchinson's estimator (lesson 6, eq. 6.20).

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

    Raises
    ------
    TypeError
        If ``shape`` is not a tuple of integers or ``dtype`` is not a floating ``torch.dtype``.
    ValueError
        If a size in ``shape`` is negative.
    """
    if not isinstance(shape, (tuple, list)) or not all(isinstance(n, int) and not isinstance(n, bool) for n in shape):
        raise TypeError(f"shape must be a tuple of integers, got {shape!r}")
    if any(n < 0 for n in shape):
        raise ValueError(f"shape must hold sizes >= 0, got {tuple(shape)}")
    return torch.randint(0, 2, tuple(shape), generator=generator).to(check_dtype(dtype)) * 2 - 1


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
    r"""Log-likelihood of data under the probability-flow ODE (lesson 6, eq. 6.21):

    $$\log p_{t_0}(x_{t_0}) = \log p_{t_1}(x_{t_1}) + \int_{t_0}^{t_1}\nabla\cdot v(x_t, t)\,\mathrm dt,$$

    integrating $x$ and the divergence together from ``t_start`` to ``t_end`` (default $t_{\max}$) with adaptive
    Dormand-Prince 5(4) in torch (:func:`~diffmath.core.integrate.dopri5`, scipy's ``RK45`` step for step), in
    float64 on ``x0``'s device: nothing leaves it.

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
        Tolerances of the solve.

    Returns
    -------
    (log_prob, x_end) : (Tensor of shape (B,), Tensor of shape of x0)
        In nats; divide by $d$ for nats per dimension.

    Raises
    ------
    TypeError
        If ``model`` does not follow the one interface, ``schedule`` is not a Schedule, ``x0`` is not a floating
        tensor, or ``prior_log_prob`` is not callable.
    ValueError
        If ``x0`` has fewer than 2 dimensions or holds NaN or infinity, ``t_start`` or ``t_end`` is not a single time
        in the schedule's range, ``rtol`` or ``atol`` is not a finite number > 0, ``divergence_method`` is unknown,
        ``num_probes`` is not an integer >= 1, the schedule is discrete, the model's output has the wrong shape or is
        not finite, or the drift is not finite.
    RuntimeError
        If the solve does not reach ``t_end``.
    """
    x0, schedule = check_batch(x0, "x0"), check_schedule(schedule)
    if schedule.discrete:
        raise ValueError(
            f"ode_log_likelihood integrates the ODE (6.21) in continuous time, and schedule {schedule.name!r} is "
            "discrete (it has no time derivatives): use a continuous schedule such as VPLinear(), VPCosine() or "
            "LinearPath(), with a model trained on it"
        )
    t0, t1 = check_ivp(t_start, schedule.t_max if t_end is None else t_end, schedule, rtol, atol, "RK45")
    check_choice(divergence_method, "divergence_method", ("exact", "hutchinson"))
    check_int(num_probes, "num_probes")
    if prior_log_prob is not None and not callable(prior_log_prob):
        raise TypeError(
            f"prior_log_prob must be None or callable as prior_log_prob(x), got {type(prior_log_prob).__name__}"
        )
    shape, B, dtype = x0.shape, x0.shape[0], x0.dtype
    n = x0.numel()
    probes = None  # drawn on the host (the same draws on every device), used on x0's
    if divergence_method == "hutchinson":
        probes = rademacher((num_probes, *shape), generator, dtype).to(x0.device)

    def rhs(t: float, y: Tensor) -> Tensor:  # y = (x, running integral), in float64 on x0's device
        xt = y[:n].reshape(shape).to(dtype)
        drift = lambda z: pf_ode_drift(model, z, t, schedule, cond)  # noqa: E731
        with torch.no_grad():
            v = drift(xt)
        div = divergence(drift, xt, divergence_method, probes)
        return torch.cat([v.double().reshape(-1), div.double()])

    y0 = torch.cat([x0.double().reshape(-1), x0.new_zeros(B, dtype=torch.float64)])
    y = dopri5(rhs, t0, t1, y0, rtol, atol).y  # scipy's RK45, in torch: the solve stays on x0's device
    x_end, integral = y[:n].reshape(shape), y[n:]
    if prior_log_prob is None:
        c = schedule.coefficients(t1)
        var = (c.a**2 + c.b**2).item()
        d = n // B
        prior = -0.5 * (x_end.reshape(B, -1) ** 2).sum(1) / var - 0.5 * d * math.log(2 * math.pi * var)
    else:
        prior = prior_log_prob(x_end.to(dtype)).double()
    return prior + integral, x_end.to(dtype)
