r"""The optimal reverse variance (lessons 7 and 8): how wide each reverse step should be.

The true reverse step $p(x_s\mid x_t)$ is the forward posterior $q(x_s\mid x_t, x_0)$ averaged over
$p(x_0\mid x_t)$ (lesson 7, eq. 7.2). Matching its mean and its isotropic variance gives

$$p(x_s\mid x_t) \approx \mathcal N\big(c_t x_t + c_0\,\mu(x_t),\ (\sigma^2 + c_0^2\,\bar s_t^2)\,I\big),
\qquad \bar s_t^2 = \tfrac1d\,\mathbb E\operatorname{tr}\operatorname{Cov}[x_0\mid x_t],$$

where $c_t, c_0, \sigma$ are the posterior's coefficients (lesson 3, eq. 3.8) and $\mu = \mathbb E[x_0\mid x_t]$; for
any member of the DDIM family (fresh noise $\sigma \le b_s$, lesson 4) $c_0$ becomes $\lambda_\sigma$ and the correction
$\lambda_\sigma^2\bar s_t^2$ stays even at $\sigma = 0$ (lesson 7, eqs. 7.11-7.12). This
module estimates $\bar s_t^2$ three ways (eqs. 7.5-7.7), learns a per-point version (NPR, lesson 8, eq. 8.4), scores
a (mean, variance) choice by its negative ELBO in nats per dimension (eq. 7.9) and samples with it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch
from torch import Tensor, nn

from diffmath.core._validate import (
    as_tensor,
    check_batch,
    check_choice,
    check_coefficient,
    check_int,
    check_nonempty,
    check_output,
    check_positive,
    check_schedule,
    check_time,
    per_sample,
)
from diffmath.core.device import unwrap
from diffmath.core.models import Model, check_model, predict
from diffmath.core.schedules import Schedule
from diffmath.ddpm import gaussian_kl, posterior
from diffmath.exact.mixtures import GaussianMixture
from diffmath.sampling.loop import Noise, Rule, SamplerStep, check_grid, run
from diffmath.sampling.samplers import ddim_rule
from diffmath.train.training import noise_batch

ESTIMATORS: tuple[str, ...] = ("variance", "eps-norm", "residual")
"""Estimators of $\\bar s_t^2$: eq. 7.5 (total variance), eq. 7.6 (noise norm), eq. 7.7 (residual, = eq. 8.1)."""

VARIANCES: tuple[str, ...] = ("posterior", "upper", "analytic")
r"""Reverse-variance choices: $\tilde\beta$ (the posterior's $\sigma^2$), $\hat\beta$ (the forward step's $\beta^2$),
and the analytic $\sigma^2 + c_0^2\bar s_t^2$ (lesson 7, eqs. 7.3-7.4)."""

SBar2 = Tensor | Callable[[Tensor, Tensor], Tensor]


class Estimate(NamedTuple):
    r"""A Monte Carlo estimate with its standard error (lesson 7, sec. 7.3).

    Attributes
    ----------
    value : Tensor
        The estimate (shape () or (K,) for K times).
    se : Tensor
        Its standard error, same shape.
    """

    value: Tensor
    se: Tensor


def _noised(x0: Tensor, t: Tensor, schedule: Schedule, generator: torch.Generator | None):
    c = schedule.coefficients(t)
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)  # the CPU draws, moved
    return c, c.a * x0 + c.b * eps


def _mean_se(per: Tensor) -> Estimate:
    return Estimate(per.mean(0), per.std(0) / math.sqrt(per.shape[0]))


def sbar2_bounds(schedule: Schedule, t: Tensor | float, data_var: float) -> Tensor:
    r"""Upper bound of $\bar s_t^2$: $\min(\operatorname{Var}[x_0],\ b_t^2/a_t^2)$ (lesson 7, eq. 7.8).

    The posterior cannot be wider than the prior ($\operatorname{tr}\operatorname{Cov}[x_0\mid x_t] \le
    \operatorname{tr}\operatorname{Cov}[x_0]$ on average) nor than the noise seen through $x_0 = (x_t - b\varepsilon)/a$.

    Parameters
    ----------
    schedule : Schedule
        The forward process.
    t : float or Tensor
        Time(s).
    data_var : float
        $\operatorname{Var}[x_0] = \tfrac1d\mathbb E\|x_0 - \mathbb E x_0\|^2$, per dimension.

    Returns
    -------
    Tensor
        The bound, of the shape of ``t``.

    Raises
    ------
    TypeError
        If ``schedule`` is not a Schedule.
    ValueError
        If ``data_var`` is not a finite number >= 0, or ``t`` lies outside the schedule's range.
    """
    check_positive(data_var, "data_var", allow_zero=True)
    c = schedule.coefficients(check_time(t, check_schedule(schedule), "t"))
    return torch.clamp((c.b / c.a) ** 2, max=data_var)


def sbar2_estimate(
    model: Model,
    x0: Tensor,
    t: Tensor | float,
    schedule: Schedule,
    method: str = "variance",
    generator: torch.Generator | None = None,
    cond: Tensor | None = None,
    clip: bool = True,
    diagonal: bool = False,
) -> Estimate:
    r"""Estimate $\bar s_t^2 = \tfrac1d\mathbb E\operatorname{tr}\operatorname{Cov}[x_0\mid x_t]$ from data and a model
    (lesson 7, eqs. 7.5-7.7; lesson 8, eqs. 8.1-8.2).

    With $x_t = a x_0 + b\varepsilon$ drawn for each data point and the model's $\hat x_0$, $\hat\varepsilon$:

    - ``"variance"`` (eq. 7.5): $\operatorname{Var}[x_0] - \tfrac1d\mathbb E\|\hat x_0(x_t) - \mathbb E x_0\|^2$, the law of
      total variance; precise at large $t$, a small difference of large numbers at small $t$.
    - ``"eps-norm"`` (eq. 7.6): $\frac{b^2}{a^2}\big(1 - \tfrac1d\mathbb E\|\hat\varepsilon(x_t)\|^2\big)$; precise at
      small $t$, useless at large $t$, where $b^2/a^2$ multiplies every error.
    - ``"residual"`` (eq. 7.7 = eq. 8.1): $\tfrac1d\mathbb E\|x_0 - \hat x_0(x_t)\|^2 =
      \frac{b^2}{a^2 d}\mathbb E\|\varepsilon - \hat\varepsilon\|^2$, the maximum-likelihood variance for the model's
      mean: exact for the exact mean, and biased upwards by the mean's error otherwise (eq. 8.3).

    Parameters
    ----------
    model : Model
        Any model with the one interface (exact or trained).
    x0 : Tensor, shape (N, ...)
        Data points (one noised copy each).
    t : float or Tensor of shape (K,)
        Time(s); each gets its own noise.
    schedule : Schedule
        The forward process.
    method : {"variance", "eps-norm", "residual"}
        The estimator (see :data:`ESTIMATORS`).
    generator : torch.Generator, optional
        Source of the noise.
    cond : Tensor, optional
        Condition passed to the model.
    clip : bool
        Clip the value to $[0, \min(\operatorname{Var}[x_0], b^2/a^2)]$ (eq. 7.8; the standard error is left as is).
    diagonal : bool
        Keep the event dimensions instead of averaging them (the diagonal version, eq. 8.2).

    Returns
    -------
    Estimate
        ``value`` and ``se`` of shape ``t.shape`` (times ``x0.shape[1:]`` when ``diagonal``).

    Raises
    ------
    TypeError
        If ``model`` does not follow the one interface or ``x0`` is not a floating tensor.
    ValueError
        If ``method`` is unknown, ``x0`` has fewer than 2 dimensions or fewer than 2 points, holds NaN or infinity,
        or ``t`` lies outside the schedule's range.
    """
    check_choice(method, "method", ESTIMATORS)
    check_model(model)
    x0 = check_nonempty(check_batch(x0, "x0"), "x0 (for a standard error)", 2)
    times = check_time(t, check_schedule(schedule), "t").to(x0.dtype)
    flat = times.reshape(-1)
    center = x0.mean(0, keepdim=True)
    data_var = ((x0 - center) ** 2).mean(0) if diagonal else ((x0 - center) ** 2).mean()
    values, ses = [], []
    for tk in flat:
        c, xt = _noised(x0, tk, schedule, generator)
        with torch.no_grad():
            if method == "eps-norm":
                per = (c.b / c.a) ** 2 * (1 - predict(model, xt, tk, schedule, "eps", cond) ** 2)
            elif method == "variance":
                x0_hat = predict(model, xt, tk, schedule, "x0", cond)
                per = (x0 - center) ** 2 - (x0_hat - center) ** 2
            else:
                per = (x0 - predict(model, xt, tk, schedule, "x0", cond)) ** 2
        if not diagonal:
            per = per.reshape(per.shape[0], -1).mean(1)
        est = _mean_se(per)
        value = est.value
        if clip:
            value = torch.minimum(value.clamp(min=0), torch.minimum(data_var, (c.b / c.a) ** 2))
        values.append(value)
        ses.append(est.se)
    shape = times.shape + (x0.shape[1:] if diagonal else ())
    return Estimate(torch.stack(values).reshape(shape), torch.stack(ses).reshape(shape))


def exact_sbar2(
    source: GaussianMixture,
    t: Tensor | float,
    schedule: Schedule,
    n: int = 4096,
    generator: torch.Generator | None = None,
    diagonal: bool = False,
) -> Estimate:
    r"""$\bar s_t^2 = \tfrac1d\mathbb E_{x_t}\operatorname{tr}\operatorname{Cov}[x_0\mid x_t]$ for a Gaussian mixture,
    averaging the exact posterior covariance (lesson 0, eq. 0.20) over $x_t \sim p_t$ (lesson 7, eq. 7.3).

    Parameters
    ----------
    source : GaussianMixture
        The data distribution.
    t : float or Tensor of shape (K,)
        Time(s).
    schedule : Schedule
        The forward process.
    n : int
        Monte Carlo points per time.
    generator : torch.Generator, optional
        Source of the samples.
    diagonal : bool
        Return the diagonal $\mathbb E\operatorname{diag}\operatorname{Cov}[x_0\mid x_t]$ (event-shaped) instead.

    Returns
    -------
    Estimate
        Shape ``t.shape`` (times the event shape when ``diagonal``).

    Raises
    ------
    TypeError
        If ``source`` is not a mixture or ``schedule`` is not a Schedule.
    ValueError
        If ``n`` is not an integer >= 2 or ``t`` lies outside the schedule's range.
    """
    if not isinstance(source, GaussianMixture):
        raise TypeError(f"source must be a GaussianMixture or EmpiricalData, got {type(source).__name__}")
    check_int(n, "n", 2)
    times = check_time(t, check_schedule(schedule), "t")
    values, ses = [], []
    for tk in times.reshape(-1):
        x0 = source.sample(n, generator, dtype=torch.float64)
        c, xt = _noised(x0, tk.to(torch.float64), schedule, generator)
        diag = torch.diagonal(source.posterior_cov(xt, c.a, c.b), dim1=-2, dim2=-1)
        per = diag.reshape(xt.shape) if diagonal else diag.mean(-1)
        est = _mean_se(per)
        values.append(est.value)
        ses.append(est.se)
    shape = times.shape + (tuple(source.event_shape) if diagonal else ())
    return Estimate(torch.stack(values).reshape(shape), torch.stack(ses).reshape(shape))


def reverse_step_variance(
    schedule: Schedule,
    t: Tensor | float,
    s: Tensor | float,
    kind: str = "analytic",
    sbar2: Tensor | float | None = None,
    eta: float = 1.0,
) -> Tensor:
    r"""Variance of the reverse step $t \to s$ for any subsequence (lesson 7, eqs. 7.3-7.4 and 7.11-7.12).

    With the transition $s\to t$ ($\alpha = a_t/a_s$, $\beta^2 = b_t^2 - \alpha^2 b_s^2$) and the posterior
    coefficients $c_0 = a_s\beta^2/b_t^2$, $\tilde\sigma^2 = b_s^2\beta^2/b_t^2$:

    - ``"posterior"`` ($\tilde\beta$): $\tilde\sigma^2$, right when the data is a single point;
    - ``"upper"`` ($\hat\beta$): $\beta^2$, right when the data is standard normal;
    - ``"analytic"``: the best isotropic variance for the DDIM-family kernel with fresh noise $\sigma = \eta\tilde\sigma$
      (lesson 4, eqs. 4.5 and 4.9), $v = \sigma^2 + \lambda_\sigma^2\bar s_t^2$ with
      $\lambda_\sigma = a_s - a_t\sqrt{b_s^2 - \sigma^2}/b_t$ (eq. 7.12). At $\eta = 1$, $\lambda_\sigma = c_0$ and
      this is Bao et al.'s Analytic-DPM, $\tilde\sigma^2 + c_0^2\bar s_t^2$ (eq. 7.4); at $\eta = 0$ (DDIM) it is
      $\lambda_0^2\bar s_t^2 > 0$, Analytic-DDIM.

    On a step into $b_s = 0$ (the data end) $\tilde\sigma^2 = 0$ makes the Gaussian decoder degenerate; ``"posterior"``
    then takes $\beta^2$ there, as Ho et al.'s decoder does, while ``"analytic"`` gives $\bar s_t^2$ (here
    $\lambda_\sigma = 1$).

    Parameters
    ----------
    schedule : Schedule
        The forward process.
    t, s : float or Tensor
        The step's start and end, $s < t$.
    kind : {"posterior", "upper", "analytic"}
        The choice (see :data:`VARIANCES`).
    sbar2 : float or Tensor, optional
        $\bar s_t^2$ (scalar, per step, or per point and dimension); needed for ``"analytic"``.
    eta : float
        For ``"analytic"``: the DDIM-family member, $\sigma = \eta\tilde\sigma$ with $0 \le \eta \le 1$ (1: the
        posterior, DDPM; 0: deterministic DDIM). The other kinds take only ``eta = 1``.

    Returns
    -------
    Tensor
        The variance, of the broadcast shape of ``t``, ``s`` and ``sbar2``.

    Raises
    ------
    ValueError
        If ``kind`` is unknown, ``"analytic"`` gets no ``sbar2`` or one that is negative or not finite, ``eta`` lies
        outside $[0, 1]$ (or is not 1 for another kind), ``s >= t``, or a time lies outside the schedule's range.
    """
    check_choice(kind, "kind", VARIANCES)
    eta = _check_eta(eta, kind)
    post = posterior(schedule, t, s)
    ct, cs = schedule.coefficients(as_tensor(t, "t")), schedule.coefficients(as_tensor(s, "s"))
    beta2 = (post.coef_x0 / cs.a) * ct.b**2
    if kind == "upper":
        return beta2
    if kind == "posterior":
        return torch.where(post.std > 0, post.std**2, beta2)
    if sbar2 is None:
        raise ValueError('the "analytic" variance needs sbar2 (see sbar2_estimate or exact_sbar2)')
    lam = _ddim_family(ct.a, ct.b, cs.a, cs.b, beta2, eta)[1]
    return eta**2 * post.std**2 + lam**2 * check_coefficient(sbar2, "sbar2", beta2)


def _ddim_family(a_t: Tensor, b_t: Tensor, a_s: Tensor, b_s: Tensor, beta2: Tensor, eta: float):
    r"""The DDIM-family kernel $q_\sigma(x_s\mid x_t, x_0) = \mathcal N(\kappa x_t + \lambda x_0, \sigma^2 I)$ with
    $\sigma = \eta\tilde\sigma$ (lesson 4, eqs. 4.5 and 4.9; lesson 7, eq. 7.11), as $(\kappa, \lambda, \sigma^2)$.

    $\kappa = b_s\sqrt{b_t^2 - \eta^2\beta^2}/b_t^2$ and, free of the cancellation in $a_s - a_t\kappa$,
    $\lambda = \beta^2(a_s^2b_t^2 + \eta^2a_t^2b_s^2)\,/\,\big(b_t^2(a_sb_t^2 + a_tb_s\sqrt{b_t^2 - \eta^2\beta^2})\big)$
    (at $\eta = 1$: $\lambda = a_s\beta^2/b_t^2 = c_0$ of eq. 3.8).

    Parameters
    ----------
    a_t, b_t, a_s, b_s : Tensor
        The schedule at the step's two times.
    beta2 : Tensor
        $\beta^2 = b_t^2 - (a_t/a_s)^2b_s^2$, the transition's variance.
    eta : float
        In $[0, 1]$.

    Returns
    -------
    (kappa, lam, sigma2) : tuple of Tensor
    """
    root = torch.sqrt(torch.clamp(b_t**2 - eta**2 * beta2, min=0))
    kappa = b_s * root / b_t**2
    lam = beta2 * (a_s**2 * b_t**2 + eta**2 * a_t**2 * b_s**2) / (b_t**2 * (a_s * b_t**2 + a_t * b_s * root))
    return kappa, lam, eta**2 * b_s**2 * beta2 / b_t**2


def _check_eta(eta: object, kind: str) -> float:
    eta = check_positive(eta, "eta", allow_zero=True)
    if kind != "analytic" and eta != 1:
        raise ValueError(
            f'eta selects a DDIM-family member for the "analytic" variance only; got eta={eta} for "{kind}"'
        )
    if eta > 1:
        raise ValueError(f"eta must lie in [0, 1] (the fresh noise may not exceed the posterior's), got {eta}")
    return eta


def _step_variance(schedule, t, s, kind, sbar2, k, xt) -> Tensor:
    if kind != "analytic":
        return reverse_step_variance(schedule, t, s, kind)
    sb = sbar2(xt, t) if callable(sbar2) else sbar2[k]
    return reverse_step_variance(schedule, t, s, kind, sb)


def _check_chain(grid: object, schedule: Schedule, kind: str, sbar2: object) -> Tensor:
    """A reverse chain's grid (strictly decreasing to the data) and its variance choice, checked together."""
    grid = check_grid(grid, schedule)
    if not (grid[1:] < grid[:-1]).all() or grid[-1] != 0:
        raise ValueError("grid must decrease strictly and end at t = 0 (the data)")
    check_choice(kind, "variance", VARIANCES)
    steps = grid.shape[0] - 1
    if kind == "analytic" and not callable(sbar2):
        if not isinstance(sbar2, Tensor) or sbar2.shape != (steps,):
            raise ValueError(f"the analytic variance needs sbar2 as a tensor of shape (K,) = ({steps},) or a callable")
        check_coefficient(sbar2, "sbar2", grid)
    return grid


def neg_elbo(
    model: Model,
    x0: Tensor,
    grid: Tensor,
    schedule: Schedule,
    variance: str = "analytic",
    sbar2: SBar2 | None = None,
    generator: torch.Generator | None = None,
    cond: Tensor | None = None,
) -> Estimate:
    r"""Negative ELBO of the K-step reverse chain along ``grid``, in nats per dimension (lesson 7, eq. 7.9).

    $$-\mathrm{ELBO} = \mathrm{KL}(q(x_{t_K}\mid x_0)\,\|\,\mathcal N(0, I))
    + \sum_{k\ge2}\mathrm{KL}\big(q(x_{t_{k-1}}\mid x_{t_k}, x_0)\,\|\,p(x_{t_{k-1}}\mid x_{t_k})\big)
    - \log p(x_0\mid x_{t_1}),$$

    averaged over $x_0$ and, for each term, $x_t \sim q(x_t\mid x_0)$, divided by $d$. Every reverse step has the
    posterior mean with the model's $\hat x_0$ and the variance of :func:`reverse_step_variance`; the last one is the
    Gaussian decoder $\mathcal N(\hat x_0(x_{t_1}), v I)$. It bounds the data's cross-entropy from above, hence its
    entropy per dimension (eq. 7.10).

    Parameters
    ----------
    model : Model
        Gives $\hat x_0$ (exact or trained).
    x0 : Tensor, shape (N, ...)
        Data points.
    grid : Tensor, shape (K + 1,)
        Decreasing times from $t_K$ to 0 (e.g. ``schedule.grid(K)``).
    schedule : Schedule
        The forward process.
    variance : {"posterior", "upper", "analytic"}
        The reverse variance (see :func:`reverse_step_variance`).
    sbar2 : Tensor of shape (K,) or callable, optional
        For ``"analytic"``: $\bar s^2$ at ``grid[:-1]``, or ``sbar2(x_t, t)`` giving it per point (e.g.
        :class:`NPRVariance`).
    generator : torch.Generator, optional
        Source of the noise.
    cond : Tensor, optional
        Condition passed to the model.

    Returns
    -------
    Estimate
        Nats per dimension and its standard error over the data points.

    Raises
    ------
    TypeError
        If ``model`` does not follow the one interface or ``x0`` is not a floating tensor.
    ValueError
        If ``variance`` is unknown, ``"analytic"`` lacks ``sbar2`` of shape (K,) (finite, >= 0), ``grid`` is not
        strictly decreasing to 0 inside the schedule's range, or ``x0`` has fewer than 2 points.
    """
    check_model(model)
    x0 = check_nonempty(check_batch(x0, "x0"), "x0 (for a standard error)", 2)
    grid = _check_chain(grid, schedule, variance, sbar2)
    K = grid.shape[0] - 1
    d = x0[0].numel()
    cT = schedule.coefficients(grid[0])
    total = gaussian_kl(cT.a * x0, cT.b**2, torch.zeros_like(x0), 1.0)
    for k in range(K):
        t, s = grid[k], grid[k + 1]
        _, xt = _noised(x0, t, schedule, generator)
        with torch.no_grad():
            x0_hat = predict(model, xt, t, schedule, "x0", cond)
        v = per_sample(_step_variance(schedule, t, s, variance, sbar2, k, xt).to(x0.dtype), x0, "variance")
        if k < K - 1:
            post = posterior(schedule, t, s)
            mean_q = post.coef_xt * xt + post.coef_x0 * x0
            mean_p = post.coef_xt * xt + post.coef_x0 * x0_hat
            total = total + gaussian_kl(mean_q, post.std**2, mean_p, v)
        else:
            nll = 0.5 * (torch.log(2 * math.pi * v) + (x0 - x0_hat) ** 2 / v)
            total = total + nll.expand_as(x0).reshape(x0.shape[0], -1).sum(1)
    return _mean_se(total / d)


def analytic_ddpm(
    model: Model,
    x: Tensor,
    grid: Tensor,
    schedule: Schedule,
    variance: str = "analytic",
    sbar2: SBar2 | None = None,
    generator: torch.Generator | None = None,
    cond: Tensor | None = None,
    *,
    noise: Noise = None,
    eta: float = 1.0,
) -> Iterator[SamplerStep]:
    r"""Ancestral sampling with the posterior mean and a chosen reverse variance (lesson 7, eq. 7.2):
    $x_s = c_t x_t + c_0\hat x_0(x_t) + \sqrt v\,z$ with $v$ from :func:`reverse_step_variance`.

    ``variance="posterior"`` is DDPM (lesson 3) on any subsequence; ``"analytic"`` with $\bar s^2$ is Analytic-DPM,
    and with an :class:`NPRVariance` as ``sbar2`` it is NPR-DPM (lesson 8). With ``eta < 1`` the mean is the DDIM
    family's $\kappa x_t + \lambda\hat x_0$ instead (lesson 7, eq. 7.12). The last step returns $\hat x_0$
    (no noise is added at the data end).

    Parameters
    ----------
    model : Model
        Any model with the one interface.
    x : Tensor, shape (B, ...)
        State at ``grid[0]``.
    grid : Tensor, shape (K + 1,)
        Decreasing times ending at 0.
    schedule : Schedule
        The forward process.
    variance : {"posterior", "upper", "analytic"}
        The reverse variance.
    sbar2 : Tensor of shape (K,) or callable, optional
        For ``"analytic"`` (as in :func:`neg_elbo`).
    generator : torch.Generator, optional
        Source of the noise.
    cond : Tensor, optional
        Condition passed to the model.
    noise : Noise, optional
        Injected $z$ instead of ``generator``'s draws (:func:`~diffmath.sampling.samplers.noise_source`): one per step, step
        ``k`` uses draw ``k`` and the last step (into the data) none.
    eta : float
        For ``"analytic"``: the DDIM-family member whose kernel is averaged, $\sigma = \eta\tilde\sigma$ in
        $[0, 1]$; ``eta=0`` is Analytic-DDIM, the deterministic DDIM mean with variance $\lambda_0^2\bar s_t^2$
        (eq. 7.12).

    Yields
    ------
    SamplerStep
        After each step.

    Raises
    ------
    TypeError
        If ``model`` does not follow the one interface or ``x`` is not a floating tensor.
    ValueError
        As :func:`neg_elbo` for ``variance``, ``sbar2`` and ``grid``; if ``x`` holds NaN or infinity (errors inside the
        loop name the step).
    """
    grid = _check_chain(grid, schedule, variance, sbar2)
    eta = _check_eta(eta, variance)
    rule = ddim_rule(1.0) if variance == "posterior" else ancestral_rule(variance, sbar2, eta)  # posterior: eq. 4.9
    yield from run(model, x, grid, schedule, rule, cond=cond, noise=generator if noise is None else noise)


def ancestral_rule(variance: str = "analytic", sbar2: SBar2 | None = None, eta: float = 1.0) -> Rule:
    r"""The ancestral step with the mean of the true reverse step and a chosen variance (lesson 7, eqs. 7.2 and 7.12)
    as a rule of the one loop: mean $\kappa x_t + \lambda\hat x_0$ of the DDIM-family kernel with $\sigma =
    \eta\tilde\sigma$ (the posterior's $c_t x_t + c_0\hat x_0$ at $\eta = 1$), variance $v$ of
    :func:`reverse_step_variance`; the last step returns $\hat x_0$.

    Parameters
    ----------
    variance : {"upper", "analytic"}
        The reverse variance (``"posterior"``, DDPM, is the DDIM-family rule with $\eta = 1$:
        :func:`~diffmath.sampling.samplers.ddim_rule`).
    sbar2 : Tensor of shape (K,) or callable, optional
        For ``"analytic"``: $\bar s^2$ per step, or ``sbar2(x, t)`` (e.g. an :class:`NPRVariance`).
    eta : float
        For ``"analytic"``: the DDIM-family member, in $[0, 1]$ (0: Analytic-DDIM, eq. 7.12).

    Returns
    -------
    Rule
        ``rule(pair, x, step, state) -> (mean, std, state)``.

    Raises
    ------
    ValueError
        If ``variance`` is unknown, ``"analytic"`` gets no ``sbar2``, or ``eta`` is outside $[0, 1]$ (or not 1 for
        ``"upper"``); a step raises it when $\bar s^2$ is negative or not finite.
    """
    check_choice(variance, "variance", ("upper", "analytic"))
    eta = _check_eta(eta, variance)
    if variance == "analytic" and sbar2 is None:
        raise ValueError('the "analytic" variance needs sbar2 (see sbar2_estimate or exact_sbar2)')

    def rule(pair, x, step, state):
        if step.last:
            return pair.x0, 0.0, state
        ratio = step.a_t / step.a_s
        beta2 = max(step.b_t**2 - ratio**2 * step.b_s**2, 0.0)  # the one-step variance ("upper")
        if variance == "upper":
            mean = ratio * step.b_s**2 / step.b_t**2 * x + step.a_s * beta2 / step.b_t**2 * pair.x0
            return mean, math.sqrt(beta2), state
        coefs = (torch.tensor(v, dtype=torch.float64) for v in (step.a_t, step.b_t, step.a_s, step.b_s, beta2))
        kappa, lam, sigma2 = (v.item() for v in _ddim_family(*coefs, eta))
        mean = kappa * x + lam * pair.x0
        if callable(sbar2):
            sb = sbar2(x, torch.full((x.shape[0],), step.t, dtype=x.dtype, device=x.device))
        else:
            sb = sbar2[step.index]
        sb = check_coefficient(sb, "sbar2", x)
        return mean, per_sample(sigma2 + lam**2 * sb, x, "variance").sqrt(), state

    return rule


class NPRLoss:
    r"""Second stage of NPR-DPM (lesson 8, eqs. 8.4-8.5): regress a network $g(x_t, t)$, elementwise, onto the
    squared residual of a frozen mean model, measured in units of the bound $m_t = \min(\operatorname{Var}[x_0],
    b_t^2/a_t^2)$ of eq. 7.8:

    $$g^* = \arg\min_g \mathbb E\,\big\|g(x_t, t) - (x_0 - \hat x_0(x_t))^2/m_t\big\|^2,\qquad
    (x_0 - \hat x_0)^2 = \tfrac{b_t^2}{a_t^2}(\varepsilon - \hat\varepsilon)^2 .$$

    The minimiser $m_t\,g^*(x_t) = \mathbb E[(x_0 - \hat x_0)^2\mid x_t]$ is the same as that of Bao et al.'s
    noise-unit loss (eq. 8.4): the diagonal of $\operatorname{Cov}[x_0\mid x_t]$ when the mean is exact, plus the
    mean's squared error otherwise. Only the weighting over $t$ differs: targets of order one at every $t$, so that
    errors in $g$ are not multiplied by $b_t^2/a_t^2$ near the noise end. Use with
    :func:`~diffmath.train.training.train` as ``loss=NPRLoss(mean, schedule, data_var)``.

    Parameters
    ----------
    mean_model : Model
        The trained (or exact) mean model; it is not updated.
    schedule : Schedule
        Its forward process.
    data_var : float
        $\operatorname{Var}[x_0]$ per dimension, for the bound $m_t$.

    Raises
    ------
    TypeError
        If ``mean_model`` does not follow the one interface or ``schedule`` is not a Schedule.
    ValueError
        If ``data_var`` is not a finite number > 0.
    """

    def __init__(self, mean_model: Model, schedule: Schedule, data_var: float) -> None:
        self.mean_model = check_model(unwrap(mean_model))
        self.schedule, self.data_var = check_schedule(schedule), check_positive(data_var, "data_var")

    def __call__(self, net: nn.Module, x0: Tensor, generator: torch.Generator, cond: Tensor | None = None) -> Tensor:
        t, _, xt = noise_batch(x0, self.schedule, generator)
        bound = per_sample(sbar2_bounds(self.schedule, t, self.data_var), x0, "t")
        with torch.no_grad():
            target = (x0 - predict(self.mean_model, xt, t, self.schedule, "x0", cond)) ** 2 / bound
        return ((check_output(net(xt, t, cond), xt) - target) ** 2).mean()

    def __repr__(self) -> str:
        return f"NPRLoss({type(self.mean_model).__name__}, {self.schedule.name}, data_var={self.data_var:.6g})"


class NPRVariance:
    r"""The learned per-point $\bar s^2(x_t) = m_t\,\max(g(x_t, t), 0)$ of NPR-DPM (lesson 8, eq. 8.6), with $m_t$
    the scale of eq. 7.8; pass it as ``sbar2`` to :func:`neg_elbo` or :func:`analytic_ddpm`.

    Only negative outputs are clipped: eq. 7.8 bounds the posterior width on average over $x_t$, not at every point
    (between two modes the posterior is bimodal and wider than $m_t$; on the ring up to $3.6\,m_t$ at $t = 150$).

    Parameters
    ----------
    net : nn.Module
        $g$, trained with :class:`NPRLoss`; called as ``net(x, t)``.
    schedule : Schedule
        The forward process.
    data_var : float
        $\operatorname{Var}[x_0]$ per dimension (as given to :class:`NPRLoss`).

    Raises
    ------
    TypeError
        If ``net`` is not callable or ``schedule`` is not a Schedule.
    ValueError
        If ``data_var`` is not a finite number > 0.
    """

    def __init__(self, net: nn.Module, schedule: Schedule, data_var: float) -> None:
        if not callable(net):
            raise TypeError(f"net must be callable as net(x, t), got {type(net).__name__}")
        self.net, self.schedule, self.data_var = net, check_schedule(schedule), check_positive(data_var, "data_var")

    def __call__(self, x: Tensor, t: Tensor | float) -> Tensor:
        t_ = as_tensor(t, "t", x)
        bound = per_sample(sbar2_bounds(self.schedule, t_, self.data_var).to(x.dtype), x, "t")
        dtype = next(iter(self.net.parameters())).dtype if isinstance(self.net, nn.Module) else x.dtype
        with torch.no_grad():
            g = self.net(x.to(dtype), (t_.expand(x.shape[0]) if t_.dim() == 0 else t_).to(dtype))
        return bound * g.to(x.dtype).clamp(min=0)
