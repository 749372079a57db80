r"""Samplers on an explicit, decreasing time grid that ends at the data.

One step covers the whole DDIM family (lesson 4, eq. 4.8): from time $t$ to an earlier time $s < t$,

$$x_s = a_s\hat x_0 + \sqrt{\max(b_s^2 - \sigma^2, 0)}\;\hat\varepsilon + \sigma z,\qquad
\sigma = \eta\,\frac{b_s}{b_t}\sqrt{b_t^2 - \frac{a_t^2}{a_s^2} b_s^2},$$

where $\eta = 1$ is DDPM's ancestral step and $\eta = 0$ the deterministic DDIM step. Any subsequence of a discrete
schedule, and any continuous schedule, is just a different ``grid``.

Every sampler (here and in :mod:`diffmath.ode`, :mod:`diffmath.sde`, :mod:`diffmath.variance`) is an update rule run
by the one loop, :func:`diffmath.sampling.loop.run`. It runs without autograd unless asked (``grad=True``), so a trained
network's graph is not kept across steps; guidance that needs a gradient (lesson 9) turns it back on for its own
evaluation.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from diffmath.core._validate import as_tensor, check_batch, check_choice, check_like, check_schedule, check_time
from diffmath.core.models import Model, predict_pair
from diffmath.core.notation import Pair
from diffmath.core.schedules import Schedule
from diffmath.sampling.loop import Noise, Rule, SamplerStep, Step, check_grid, noise_source, run, scalars

__all__ = [
    "Noise",
    "SamplerStep",
    "check_grid",
    "ddim",
    "ddim_coefficients",
    "ddim_rule",
    "ddim_step",
    "noise_source",
    "sample",
]


def ddim_coefficients(
    schedule: Schedule, t: Tensor | float, s: Tensor | float, eta: float = 0.0, variance: str = "posterior"
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Coefficients of one DDIM-family step, $x_s = a_s\hat x_0 + c\,\hat\varepsilon + \sigma z$ (lesson 4, eqs. 4.8-4.9).

    Parameters
    ----------
    schedule : Schedule
        The forward process.
    t, s : float or Tensor
        Current and next time, $s < t$.
    eta : float
        Scale of the step noise, $\eta \ge 0$.
    variance : {"posterior", "upper"}
        ``"posterior"``: $\sigma = \eta\,(b_s/b_t)\sqrt{b_t^2 - (a_t/a_s)^2 b_s^2}$, the standard deviation of
        $q(x_s\mid x_t, x_0)$ times $\eta$ ($\eta = 1$: DDPM, $\eta = 0$: DDIM);
        ``"upper"``: $\sigma = \eta\sqrt{b_t^2 - (a_t/a_s)^2 b_s^2}$ (Ho's $\sigma_t = \beta_t$ for one step).

    Returns
    -------
    (a_s, c, sigma) : tuple of Tensor
        With $c = \sqrt{\max(b_s^2 - \sigma^2, 0)}$: the clamp is active where $\sigma > b_s$ (e.g. ``"upper"``
        at the first steps of Su's schedule, or $\eta > 1$). On a step into $b_s = 0$ (the data end) $\sigma = 0$:
        the last step adds no noise, as in Ho et al.'s algorithm.

    Raises
    ------
    TypeError
        If ``schedule`` is not a Schedule, or ``t`` or ``s`` is not a real number or tensor.
    ValueError
        If ``eta`` is not a finite real number >= 0, ``variance`` is unknown, ``t`` or ``s`` holds NaN or infinity,
        lies outside the schedule's range or is not an integer on a discrete schedule, or ``s >= t``.
    """
    _check_eta(eta, variance)
    t_, s_ = check_time(t, check_schedule(schedule), "t"), check_time(s, schedule, "s")
    if (s_ >= t_).any():
        raise ValueError(
            f"a step runs towards the data: s must be < t, got t={t_.max().item():g}, s={s_.max().item():g}"
        )
    ct, cs = schedule.coefficients(t_), schedule.coefficients(s_)
    return _ddim(ct.a, ct.b, cs.a, cs.b, eta, variance)


def _ddim(a_t, b_t, a_s, b_s, eta, variance):
    """(a_s, c, sigma) of eq. 4.8 for Python floats (the loop) or tensors (:func:`ddim_coefficients`) alike."""
    step_std = _nonneg(b_t**2 - (a_t / a_s) ** 2 * b_s**2) ** 0.5
    sigma = eta * step_std * (b_s / b_t if variance == "posterior" else 1.0) * (b_s > 0)  # none into the data
    return a_s, _nonneg(b_s**2 - sigma**2) ** 0.5, sigma


def _nonneg(v):
    return v.clamp(min=0.0) if isinstance(v, Tensor) else max(v, 0.0)


def ddim_rule(eta: float = 0.0, variance: str = "posterior") -> Rule:
    r"""The DDIM-family update (lesson 4, eq. 4.8) as a rule of the one loop: mean $a_s\hat x_0 + c\,\hat\varepsilon$,
    standard deviation $\sigma$ (:func:`ddim_coefficients`).

    Parameters
    ----------
    eta : float
        Scale of the step noise, $\eta \ge 0$ (0: DDIM, 1: DDPM).
    variance : {"posterior", "upper"}
        Which $\sigma$ family ``eta`` scales.

    Returns
    -------
    Rule
        ``rule(pair, x, step, state) -> (mean, std, state)``, with a ``prepare`` that computes every step's
        $(a_s, c, \sigma)$ once per grid, $a_s$ and $c$ as 0-dim tensors in the dtype of ``x``
        (:func:`~diffmath.sampling.loop.scalars`: the same numbers, bit-identical results).

    Raises
    ------
    ValueError
        If ``eta`` is not a finite number >= 0 or ``variance`` is unknown.
    """
    _check_eta(eta, variance)

    def coefficients(step: Step) -> tuple[float, float, float]:
        a_s, c, sigma = _ddim(step.a_t, step.b_t, step.a_s, step.b_s, eta, variance)
        return a_s, c, float(sigma)

    def prepare(steps: list[Step], x: Tensor) -> list:
        rows = []
        for step in steps:
            try:
                rows.append(coefficients(step))
            except ArithmeticError:  # e.g. b_t = 0: left to the step itself, which raises it in its turn
                rows.append(None)
        multipliers = scalars([v for row in rows if row is not None for v in row[:2]], x)
        if multipliers is None:
            return [None] * len(steps)
        it = iter(multipliers)
        return [None if row is None else (next(it), next(it), row[2]) for row in rows]

    def rule(pair: Pair, x: Tensor, step: Step, state: dict):
        got = step.prepared.get(rule)
        if got is None or pair.x0.dtype != got[0].dtype or pair.eps.dtype != got[0].dtype:
            got = coefficients(step)  # outside run, or a pair not in x's dtype: the floats themselves
        a_s, c, sigma = got
        return a_s * pair.x0 + c * pair.eps, sigma, state

    rule.prepare = prepare
    return rule


def _check_eta(eta: object, variance: object) -> None:
    if not isinstance(eta, (int, float)) or isinstance(eta, bool) or not 0 <= eta < float("inf"):
        raise ValueError(f"eta must be a finite real number >= 0, got {eta!r}")
    check_choice(variance, "variance", ("posterior", "upper"))


def ddim_step(
    model: Model,
    x: Tensor,
    t: float,
    s: float,
    schedule: Schedule,
    eta: float = 0.0,
    cond: Tensor | None = None,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    variance: str = "posterior",
) -> tuple[Tensor, Pair]:
    r"""One step of the DDIM family from time ``t`` to ``s < t`` (lesson 4, eq. 4.8).

    Parameters
    ----------
    model : Model
        Any model with the one interface.
    x : Tensor, shape (B, ...)
        State at time ``t``.
    t, s : float
        Current and next time, ``s < t``.
    schedule : Schedule
        The forward process the model was trained on.
    eta : float
        0 for DDIM, 1 for DDPM; see :func:`ddim_coefficients` for ``variance`` and the clamp.
    cond : Tensor, optional
        Passed to the model.
    generator : torch.Generator, optional
        Source of the fresh noise $z$ (ignored when ``noise`` is given).
    noise : Tensor, optional
        The noise $z$ itself, shape of ``x`` (to replay a trajectory with common random numbers).
    variance : {"posterior", "upper"}
        Which $\sigma$ family ``eta`` scales (:func:`ddim_coefficients`).

    Returns
    -------
    (Tensor, Pair)
        The new state $x_s$ and the model's $(\hat x_0, \hat\varepsilon)$ at $(x_t, t)$.

    Raises
    ------
    TypeError
        If ``model`` does not follow the one interface, ``x`` is not a floating tensor, or ``t``, ``s`` are not
        real numbers.
    ValueError
        If ``x`` has fewer than 2 dimensions or holds NaN or infinity, a time lies outside the schedule's range,
        ``s >= t``, the model's output has the wrong shape or is not finite, ``eta`` is negative or infinite,
        ``variance`` is unknown, or ``noise`` is not a finite tensor of the shape of ``x``.
    """
    x = check_batch(x, "x")
    c_x0, c_eps, sigma = ddim_coefficients(schedule, as_tensor(t, "t", x), as_tensor(s, "s", x), eta, variance)
    pair = predict_pair(model, x, t, schedule, cond)
    x_s = c_x0 * pair.x0 + c_eps * pair.eps
    if eta > 0:
        if noise is None:
            noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        else:
            noise = check_like(noise, x, "noise")
        x_s = x_s + sigma * noise
    return x_s, pair


def ddim(
    model: Model,
    x: Tensor,
    grid: Tensor,
    schedule: Schedule,
    eta: float = 0.0,
    cond: Tensor | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
    variance: str = "posterior",
    *,
    noise: Noise = None,
) -> Iterator[SamplerStep]:
    r"""Run the DDIM family along ``grid``, yielding each step's state (lesson 4, eq. 4.8).

    Parameters
    ----------
    model : Model
        Any model with the one interface.
    x : Tensor, shape (B, ...)
        Start state at ``grid[0]``: for VP schedules a draw of $\mathcal N(0, I)$, for VE $b_{t_{\max}} z$.
    grid : Tensor, shape (K + 1,)
        Strictly decreasing times; the last is where sampling ends (0 = the data).
    schedule : Schedule
        The forward process the model was trained on.
    eta : float
        0: deterministic DDIM; 1: DDPM ancestral sampling.
    cond, generator : optional
        Condition for the model; random generator for the step noise.
    progress : bool
        Show a tqdm bar.
    variance : {"posterior", "upper"}
        Which $\sigma$ family ``eta`` scales (:func:`ddim_coefficients`).
    noise : Noise, optional
        Injected step noise instead of ``generator``'s draws (:func:`noise_source`: a callable ``noise(i, x)`` or
        one tensor per step; step ``i`` starts at ``grid[i]``, which is diffusers' timestep ``grid[i] - 1`` on a
        discrete schedule).

    Yields
    ------
    SamplerStep
        After each step; the last one holds the sample.

    Raises
    ------
    TypeError
        If ``model`` does not follow the one interface, ``x`` is not a floating tensor, or ``grid`` is not a
        tensor.
    ValueError
        If ``x`` has fewer than 2 dimensions or holds NaN or infinity, ``grid`` is not 1-D with at least two
        strictly decreasing times inside the schedule's range, the model's output has the wrong
        shape or is not finite, ``eta`` is negative or infinite, ``variance`` is unknown, or the state becomes NaN
        or infinite (errors inside the loop name the step).
    """
    yield from run(
        model,
        x,
        grid,
        schedule,
        ddim_rule(eta, variance),
        cond=cond,
        noise=generator if noise is None else noise,
        progress=progress,
        desc=f"DDIM(eta={eta:g})",
    )


def sample(
    model: Model,
    x: Tensor,
    grid: Tensor,
    schedule: Schedule,
    eta: float = 0.0,
    cond: Tensor | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
    variance: str = "posterior",
    *,
    noise: Noise = None,
) -> Tensor:
    r"""Final state of :func:`ddim` (lesson 4, eq. 4.8): a batch of samples at ``grid[-1]``.

    Parameters
    ----------
    model, x, grid, schedule, eta, cond, generator, progress, variance, noise
        As in :func:`ddim`.

    Returns
    -------
    Tensor, shape (B, ...)
        The samples at ``grid[-1]``.

    Raises
    ------
    TypeError, ValueError
        As :func:`ddim`.
    """
    for step in ddim(model, x, grid, schedule, eta, cond, generator, progress, variance, noise=noise):
        x = step.x
    return x
