r"""The SDE view (lessons 5-6): forward and reverse SDEs of any continuous schedule, a family of samplers that share
the marginals, predictor-corrector sampling, denoising score matching and the Fokker-Planck residual.

For $x_t = a_t x_0 + b_t\varepsilon$ the linear SDE $\mathrm dx = f_t x\,\mathrm dt + g_t\,\mathrm dw$ with

$$f_t = \frac{\dot a_t}{a_t},\qquad g_t^2 = 2 a_t b_t \frac{\mathrm d}{\mathrm dt}\Big(\frac{b_t}{a_t}\Big)
= 2 b_t\dot b_t - 2 f_t b_t^2 \qquad\text{(lesson 5, eq. 5.6)}$$

has exactly these marginals. Time runs from the data ($t = 0$) to the noise; every reverse-time sampler here takes a
decreasing grid and steps with $h = t_i - t_{i+1} > 0$ backwards in time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from diffmath.core._validate import (
    at_step,
    check_batch,
    check_coefficient,
    check_finite,
    check_int,
    check_like,
    check_output,
    check_positive,
    check_schedule,
    check_time,
    per_sample,
)
from diffmath.core.models import Model, predict
from diffmath.core.notation import Pair
from diffmath.core.schedules import Schedule
from diffmath.exact.mixtures import GaussianMixture
from diffmath.sampling.loop import Noise, Rule, SamplerStep, Step, run


def _continuous(schedule: object) -> Schedule:
    if check_schedule(schedule).discrete:
        raise TypeError(
            f"the SDE view needs a continuous schedule (vp-linear, vp-cosine, ve, ...), got {schedule.name!r}"
        )
    return schedule


def sde_coefficients(schedule: Schedule, t: Tensor | float) -> tuple[Tensor, Tensor]:
    r"""Drift and diffusion coefficients $(f_t, g_t^2)$ of the forward SDE with the schedule's marginals
    (lesson 5, eq. 5.6): $f_t = \dot a_t/a_t$, $g_t^2 = 2b_t\dot b_t - 2f_t b_t^2$.

    VP-linear gives $f = -\beta(t)/2$, $g^2 = \beta(t)$ (Song et al.); VE gives $f = 0$, $g^2 = \mathrm d b^2/\mathrm dt$.

    Parameters
    ----------
    schedule : Schedule
        A continuous schedule (it gives $\dot a_t, \dot b_t$).
    t : float or Tensor
        Time(s) in $[0, 1]$.

    Returns
    -------
    (f, g2) : tuple of Tensor
        $f_t$ and $g_t^2$, of the shape of ``t``.

    Raises
    ------
    TypeError
        If ``schedule`` is not a continuous :class:`~diffmath.core.schedules.Schedule` (e.g. a discrete one), or ``t`` is not a real
        number or tensor.
    ValueError
        If ``t`` holds NaN or infinity or lies outside $[0, 1]$.
    """
    return _continuous(schedule).drift_diffusion(t)  # g^2 = -2 f exactly on VP schedules: finite at t = 0


def forward_sde(
    x0: Tensor, grid: Tensor, schedule: Schedule, generator: torch.Generator | None = None
) -> Iterator[SamplerStep]:
    r"""Euler-Maruyama for the forward SDE $\mathrm dx = f_t x\,\mathrm dt + g_t\,\mathrm dw$ on an increasing grid
    (lesson 5, eq. 5.1). Yields the state after each step (``x0`` of the yielded step is the start point).

    Parameters
    ----------
    x0 : Tensor, shape (B, ...)
        Start state (data) at ``grid[0]``.
    grid : Tensor, shape (K + 1,)
        Strictly increasing times.
    schedule : Schedule
        A continuous schedule.
    generator : torch.Generator, optional
        Source of the Brownian increments.

    Yields
    ------
    SamplerStep
        The state at ``grid[i + 1]`` after step ``i``.

    Raises
    ------
    TypeError
        If ``x0`` is not a floating tensor, or ``schedule`` is not a continuous :class:`~diffmath.core.schedules.Schedule`.
    ValueError
        If ``x0`` has fewer than 2 dimensions or holds NaN or infinity, or ``grid`` is not a 1-D strictly increasing
        tensor of at least two times inside $[0, 1]$.
    """
    x = check_batch(x0, "x0")
    if not isinstance(grid, Tensor) or grid.dim() != 1 or grid.numel() < 2 or (grid[1:] <= grid[:-1]).any():
        raise ValueError("the forward SDE needs a 1-D strictly increasing time grid")
    g = _continuous(schedule).check_t(grid.to(torch.float64))
    for i in range(len(g) - 1):
        t, dt = g[i].item(), (g[i + 1] - g[i]).item()
        f, g2 = (v.to(x.dtype) for v in schedule.drift_diffusion(t))  # finite at t = 0 on VP (g^2 = -2 f)
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        x = x + f * x * dt + torch.sqrt(g2 * dt) * z
        yield SamplerStep(i, g[i + 1].item(), x, x0)


def reverse_sde(
    model: Model,
    x: Tensor,
    grid: Tensor,
    schedule: Schedule,
    noise_scale: float = 1.0,
    cond: Tensor | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
    *,
    noise: Noise = None,
) -> Iterator[SamplerStep]:
    r"""Euler-Maruyama for the family of reverse SDEs with the same marginals (lesson 6, eq. 6.9).

    $$\mathrm dx = \big[f_t x - \tfrac12(g_t^2 + \sigma_t^2)\nabla\log p_t(x)\big]\mathrm dt + \sigma_t\,\mathrm d\bar w,
    \qquad \sigma_t^2 = \lambda g_t^2,$$

    run backwards in time: each step goes from $t$ to $s < t$ with $h = t - s$,
    $x_s = x_t - h\,[f_t x_t - \tfrac12(1+\lambda)g_t^2 s_\theta] + \sqrt{\lambda g_t^2 h}\,z$.
    ``noise_scale`` $\lambda = 1$ is Anderson's reverse SDE, $\lambda = 0$ the probability-flow ODE (Euler), and any
    $\lambda \ge 0$ (also above 1) keeps the marginals in the limit of small steps.

    The last step into $t = 0$ adds no noise and returns the model's $\hat x_0$ when $b_0 = 0$ (the score is
    singular there).

    Parameters
    ----------
    model : Model
        Any model with the one interface.
    x : Tensor, shape (B, ...)
        State at ``grid[0]``.
    grid : Tensor, shape (K + 1,)
        Strictly decreasing times.
    schedule : Schedule
        A continuous schedule.
    noise_scale : float
        $\lambda = \sigma_t^2 / g_t^2 \ge 0$.
    cond : Tensor, optional
        Condition for the model.
    generator : torch.Generator, optional
        Source of the noise $z$.
    progress : bool
        Show a tqdm bar.
    noise : Noise, optional
        Injected $z$ instead of ``generator``'s draws (:func:`~diffmath.sampling.samplers.noise_source`): step ``i`` (from
        ``grid[i]``) uses draw ``i``; the last step into $b_0 = 0$ uses none.

    Yields
    ------
    SamplerStep
        After each step; ``x0`` is the model's $\hat x_0$ at the step's start.

    Raises
    ------
    TypeError
        If ``model`` does not follow the one interface, ``schedule`` is not a continuous
        :class:`~diffmath.core.schedules.Schedule`, ``x`` is not a floating tensor, or ``grid`` is not a tensor.
    ValueError
        If ``noise_scale`` is not a finite number >= 0, ``x`` has fewer than 2 dimensions or holds NaN or infinity,
        the grid is not strictly decreasing inside $[0, 1]$, the model's output has the wrong shape or is not
        finite, or the state becomes NaN or infinite (errors inside the loop name the step).
    """
    rule = sde_rule(_continuous(schedule), noise_scale)
    yield from run(
        model,
        x,
        grid,
        schedule,
        rule,
        cond=cond,
        noise=generator if noise is None else noise,
        progress=progress,
        desc="reverse SDE",
    )


def sde_rule(schedule: Schedule, noise_scale: float = 1.0) -> Rule:
    r"""The Euler-Maruyama step of the reverse SDE family (lesson 6, eq. 6.9) as a rule of the one loop: mean
    $x_t - h\,[f_t x_t - \tfrac12(1+\lambda)g_t^2 s_\theta]$, standard deviation $\sqrt{\lambda g_t^2 h}$, with
    $h = t - s$; the step into $b_s = 0$ returns $a_s\hat x_0$ without noise.

    Parameters
    ----------
    schedule : Schedule
        A continuous schedule (it gives $f_t, g_t^2$, eq. 5.6; $g^2 = -2f$ exactly on VP schedules).
    noise_scale : float
        $\lambda = \sigma_t^2 / g_t^2 \ge 0$.

    Returns
    -------
    Rule
        ``rule(pair, x, step, state) -> (mean, std, state)``.

    Raises
    ------
    TypeError
        If ``schedule`` is not continuous.
    ValueError
        If ``noise_scale`` is not a finite number >= 0.
    """
    check_positive(noise_scale, "noise_scale (sigma^2 / g^2)", allow_zero=True)
    vp = _continuous(schedule).variance_preserving

    def rule(pair: Pair, x: Tensor, step: Step, state: dict):
        if step.b_s == 0:
            return step.a_s * pair.x0, 0.0, state
        f = step.da_t / step.a_t
        g2 = -2.0 * f if vp else 2.0 * step.b_t * (step.db_t - f * step.b_t)
        h = step.t - step.s
        mean = x - h * (f * x + 0.5 * (1 + noise_scale) * g2 * pair.eps / step.b_t)  # score = -eps / b
        return mean, math.sqrt(noise_scale * g2 * h) if noise_scale > 0 else 0.0, state

    return rule


@torch.no_grad()
def langevin_correct(
    model: Model,
    x: Tensor,
    t: float,
    schedule: Schedule,
    snr: float = 0.16,
    steps: int = 1,
    cond: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Langevin corrector at fixed $t$: $x \leftarrow x + \epsilon\, s_\theta(x) + \sqrt{2\epsilon}\,z$ with the step
    $\epsilon = 2(r\,\|z\|/\|s_\theta\|)^2$ set by the signal-to-noise ratio $r$ = ``snr`` (lesson 6, eq. 6.12).

    Parameters
    ----------
    model : Model
        Any model with the one interface.
    x : Tensor, shape (B, ...)
        State at time ``t``.
    t : float
        The fixed time.
    schedule : Schedule
        The forward process.
    snr : float
        Signal-to-noise ratio $r > 0$ that sets the step size.
    steps : int
        Number of Langevin steps, >= 1.
    cond : Tensor, optional
        Condition for the model.
    generator : torch.Generator, optional
        Source of the noise $z$.

    Returns
    -------
    Tensor, shape (B, ...)
        The corrected state.

    Raises
    ------
    TypeError
        If ``model`` does not follow the one interface, ``schedule`` is not a
        :class:`~diffmath.core.schedules.Schedule`, or ``x`` is not a floating tensor.
    ValueError
        If ``snr`` is not a finite number > 0 or ``steps`` is not an integer >= 1, ``x`` or ``t`` is invalid, or
        the model's output has the wrong shape or is not finite.
    """
    check_positive(snr, "snr")
    check_int(steps, "steps")
    x = check_batch(x, "x")
    for _ in range(steps):
        score = predict(model, x, t, schedule, "score", cond)
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        norm = lambda v: v.flatten(1).norm(dim=1)  # noqa: E731
        step = 2 * (snr * norm(z) / norm(score).clamp_min(1e-12)) ** 2
        x = x + per_sample(step, x, "step") * score + per_sample(torch.sqrt(2 * step), x, "step") * z
    return x


@torch.no_grad()
def predictor_corrector(
    model: Model,
    x: Tensor,
    grid: Tensor,
    schedule: Schedule,
    snr: float = 0.16,
    corrector_steps: int = 1,
    noise_scale: float = 1.0,
    cond: Tensor | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
    *,
    noise: Noise = None,
) -> Iterator[SamplerStep]:
    r"""Predictor-corrector sampling (lesson 6, sec. 6.5): a reverse-SDE step (eq. 6.9) followed by Langevin correction
    (eq. 6.12) at the new time, except at $t = 0$.

    Parameters
    ----------
    model : Model
        Any model with the one interface.
    x : Tensor, shape (B, ...)
        State at ``grid[0]``.
    grid : Tensor, shape (K + 1,)
        Strictly decreasing times.
    schedule : Schedule
        A continuous schedule.
    snr : float
        Signal-to-noise ratio of the corrector (:func:`langevin_correct`).
    corrector_steps : int
        Langevin steps after each predictor step.
    noise_scale : float
        $\lambda$ of the predictor (:func:`reverse_sde`).
    cond : Tensor, optional
        Condition for the model.
    generator : torch.Generator, optional
        Source of the noise.
    progress : bool
        Show a tqdm bar.
    noise : Noise, optional
        Injected noise of the predictor steps (as in :func:`reverse_sde`); the corrector draws from ``generator``.

    Yields
    ------
    SamplerStep
        After each predictor-corrector step.

    Raises
    ------
    TypeError
        If ``model`` does not follow the one interface, ``schedule`` is not a continuous
        :class:`~diffmath.core.schedules.Schedule`, ``x`` is not a floating tensor, or ``grid`` is not a tensor.
    ValueError
        As :func:`reverse_sde` and :func:`langevin_correct` (invalid ``noise_scale``, ``snr`` or
        ``corrector_steps``, invalid ``x`` or grid, a model output of the wrong shape or not finite), or if the
        corrected state becomes NaN or infinite.
    """
    check_positive(snr, "snr")
    check_int(corrector_steps, "corrector_steps")
    for step in reverse_sde(model, x, grid, schedule, noise_scale, cond, generator, progress, noise=noise):
        x = step.x
        if step.t > 0:
            with at_step(step.index, step.t, step.t):
                x = langevin_correct(model, x, step.t, schedule, snr, corrector_steps, cond, generator)
                check_finite(x, "corrected state")
        yield SamplerStep(step.index, step.t, x, step.x0)


def dsm_loss(score: Callable[[Tensor], Tensor], x0: Tensor, eps: Tensor, a: float, b: float) -> Tensor:
    r"""Denoising score matching, per sample: $\|s(x_t) - \nabla_{x_t}\log p(x_t\mid x_0)\|^2$ with
    $\nabla\log p(x_t\mid x_0) = -\varepsilon/b$ and $x_t = a x_0 + b\varepsilon$ (lesson 5, eq. 5.12).

    Its mean differs from $\mathbb E\|s - \nabla\log p_t\|^2$ by a constant (eq. 5.13), so both have the same minimiser.

    Parameters
    ----------
    score : callable
        The score model $s(x_t)$ at the time of $a, b$, mapping (B, ...) to (B, ...).
    x0 : Tensor, shape (B, ...)
        Clean data.
    eps : Tensor, shape (B, ...)
        The noise $\varepsilon$.
    a, b : float
        Coefficients of $x_t = a x_0 + b\varepsilon$, $b > 0$.

    Returns
    -------
    Tensor, shape (B,)
        The loss of each sample.

    Raises
    ------
    TypeError
        If ``score`` is not callable, or ``x0``, ``eps`` are not floating tensors.
    ValueError
        If ``x0`` has fewer than 2 dimensions or holds NaN or infinity, ``eps`` is not finite or not of its shape,
        ``a`` or ``b`` is not a single finite number >= 0, ``b = 0``, or ``score`` returns something other than a
        tensor of the shape of ``x0``.
    """
    if not callable(score):
        raise TypeError(
            f"score must be callable as score(x_t) -> Tensor of the shape of x_t, got {type(score).__name__}"
        )
    x0 = check_batch(x0, "x0")
    eps = check_like(eps, x0, "eps", "x0")
    a_, b_ = check_coefficient(a, "a", x0), check_coefficient(b, "b", x0)
    if a_.numel() != 1 or b_.numel() != 1 or b_.item() == 0:
        raise ValueError(f"a and b must be single numbers with b > 0 (the score divides by b), got a={a!r}, b={b!r}")
    x_t = a_ * x0 + b_ * eps
    diff = check_output(score(x_t), x_t, "score") + eps / b_
    return (diff**2).reshape(x0.shape[0], -1).sum(1)


def fokker_planck_residual(
    source: GaussianMixture, schedule: Schedule, x: Tensor, t: float, dt: float = 1e-5
) -> Tensor:
    r"""Residual of the Fokker-Planck equation $\partial_t p = -\nabla\cdot(f_t x\,p) + \tfrac12 g_t^2\Delta p$
    (lesson 6, eq. 6.2) for an exact model's noised density, at points ``x`` of shape (B, d) and time ``t``.

    $\partial_t p$ by central differences in $t$ (error $O(\mathrm{dt}^2)$); $\nabla p$ and $\Delta p$ by autograd.
    Returns the residual, shape (B,), to be compared with the size of $\partial_t p$.

    Parameters
    ----------
    source : GaussianMixture
        The exact data distribution.
    schedule : Schedule
        A continuous schedule.
    x : Tensor, shape (B, d)
        Points.
    t : float
        Time, with ``t - dt`` and ``t + dt`` inside $[0, 1]$.
    dt : float
        Step of the central difference in $t$.

    Returns
    -------
    Tensor, shape (B,), float64
        $\partial_t p + \nabla\cdot(f_t x\,p) - \tfrac12 g_t^2\Delta p$.

    Raises
    ------
    TypeError
        If ``source`` is not a mixture, ``x`` is not a floating tensor, or ``schedule`` is not a continuous
        :class:`~diffmath.core.schedules.Schedule`.
    ValueError
        If ``x`` is not of shape (B, d) or holds NaN or infinity, ``t`` is not a single time in the schedule's
        range, ``dt`` is not a finite number > 0, or ``t +- dt`` lies outside $[0, 1]$.
    """
    if not isinstance(source, GaussianMixture):
        raise TypeError(f"source must be a GaussianMixture or EmpiricalData, got {type(source).__name__}")
    x = check_batch(x, "x").detach().double()
    t_ = check_time(t, _continuous(schedule), "t")
    if t_.numel() != 1:
        raise ValueError(f"t must be a single time, got shape {tuple(t_.shape)}")
    t_, dt = t_.item(), check_positive(dt, "dt")
    if not (0 <= t_ - dt and t_ + dt <= schedule.t_max):
        raise ValueError(f"dt must keep t - dt and t + dt in [0, {schedule.t_max:g}], got t={t_:g}, dt={dt:g}")
    lo, hi = schedule.coefficients(t_ - dt), schedule.coefficients(t_ + dt)
    dp_dt = (torch.exp(source.noised_log_prob(x, hi.a, hi.b)) - torch.exp(source.noised_log_prob(x, lo.a, lo.b))) / (
        2 * dt
    )
    c = schedule.coefficients(torch.tensor(t_, dtype=torch.float64))
    f, g2 = sde_coefficients(schedule, torch.tensor(t_, dtype=torch.float64))
    xr = x.clone().requires_grad_(True)
    p = torch.exp(source.noised_log_prob(xr, c.a, c.b))
    (grad,) = torch.autograd.grad(p.sum(), xr, create_graph=True)
    lap = torch.zeros_like(p)
    for i in range(x.shape[1]):
        lap = lap + torch.autograd.grad(grad[:, i].sum(), xr, retain_graph=True)[0][:, i]
    d = x.shape[1]
    div_fxp = f * (d * p + (x * grad).sum(1))  # div(f x p) = f (d p + x . grad p)
    return (dp_dt + div_fxp - 0.5 * g2 * lap).detach()
