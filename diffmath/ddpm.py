r"""DDPM three ways (lessons 1-3): the forward process, the chapter-1 loss, per-step KL terms, the posterior.

Discrete schedules only where a single step is involved (``t`` an integer in 1..T); the one-shot marginal and the
posterior between any two times work on every schedule.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from diffmath.core._validate import (
    as_tensor,
    check_batch,
    check_coefficient,
    check_int,
    check_like,
    check_schedule,
    check_time,
    per_sample,
)
from diffmath.core.schedules import DiscreteSchedule, Schedule
from diffmath.exact.mixtures import GaussianMixture


def _discrete(schedule: object) -> DiscreteSchedule:
    if not isinstance(schedule, DiscreteSchedule):
        raise TypeError(f"schedule must be a DiscreteSchedule for a single forward step, got {type(schedule).__name__}")
    return schedule


def forward_step(x_prev: Tensor, t: Tensor | float, schedule: DiscreteSchedule, eps: Tensor) -> Tensor:
    r"""One demolition step $x_t = \alpha_t x_{t-1} + \beta_t\varepsilon_t$ (lesson 1, eq. 1.1).

    Parameters
    ----------
    x_prev : Tensor, shape (B, ...)
        $x_{t-1}$.
    t : int or Tensor of shape (B,)
        The step, in 1..T.
    schedule : DiscreteSchedule
        The discrete schedule giving $\alpha_t, \beta_t$.
    eps : Tensor, shape (B, ...)
        The step's fresh noise $\varepsilon_t$.

    Returns
    -------
    Tensor, shape (B, ...)
        $x_t$.

    Raises
    ------
    TypeError
        If ``schedule`` is not a :class:`~diffmath.core.schedules.DiscreteSchedule`, or ``t`` is not a real number or
        tensor.
        Also if ``x_prev`` or ``eps`` is not a floating tensor.
    ValueError
        If ``x_prev`` or ``eps`` has fewer than 2 dimensions or holds NaN or infinity, their shapes differ, or ``t``
        is not a scalar or of shape (B,) or lies outside 1..T.
    """
    x_prev = check_batch(x_prev, "x_prev")
    check_like(eps, x_prev, "eps", "x_prev")
    alpha, beta = _discrete(schedule).step(as_tensor(t, "t", x_prev))
    return per_sample(alpha, x_prev, "t") * x_prev + per_sample(beta, x_prev, "t") * eps


def forward_marginal(x0: Tensor, t: Tensor | float, schedule: Schedule, eps: Tensor) -> Tensor:
    r"""One-shot noising $x_t = a_t x_0 + b_t\varepsilon$ (lesson 1, eq. 1.3; lesson 0, eq. 0.1), any schedule.

    Parameters
    ----------
    x0 : Tensor, shape (B, ...)
        Clean data $x_0$.
    t : float or Tensor of shape () or (B,)
        Time(s) on ``schedule``.
    schedule : Schedule
        The forward process.
    eps : Tensor, shape (B, ...)
        The noise $\varepsilon$.

    Returns
    -------
    Tensor, shape (B, ...)
        $x_t$.

    Raises
    ------
    TypeError
        If ``x0`` or ``eps`` is not a floating tensor, or ``t`` is not a real number or tensor.
    ValueError
        If ``x0`` or ``eps`` has fewer than 2 dimensions or holds NaN or infinity, their shapes differ, or ``t`` is
        not a scalar or of shape (B,) or lies outside the schedule's range.
    """
    x0 = check_batch(x0, "x0")
    check_like(eps, x0, "eps", "x0")
    c = check_schedule(schedule).coefficients(as_tensor(t, "t", x0))
    return per_sample(c.a, x0, "t") * x0 + per_sample(c.b, x0, "t") * eps


def merge_noises(
    eps_prev: Tensor, eps_t: Tensor, t: Tensor | float, schedule: DiscreteSchedule
) -> tuple[Tensor, Tensor]:
    r"""Merge the noise of $x_{t-1}$ and of step $t$ into two independent standard normals (lesson 1, eq. 1.7).

    With $x_{t-1} = \bar\alpha_{t-1}x_0 + \bar\beta_{t-1}\varepsilon_{t-1}$,

    $$\varepsilon = \frac{\alpha_t\bar\beta_{t-1}\varepsilon_{t-1} + \beta_t\varepsilon_t}{\bar\beta_t},\qquad
    \omega = \frac{\beta_t\varepsilon_{t-1} - \alpha_t\bar\beta_{t-1}\varepsilon_t}{\bar\beta_t},$$

    so that $x_t = \bar\alpha_t x_0 + \bar\beta_t\varepsilon$ and $\omega$ is independent of $\varepsilon$.

    Parameters
    ----------
    eps_prev : Tensor, shape (B, ...)
        $\varepsilon_{t-1}$, the total noise of $x_{t-1}$.
    eps_t : Tensor, shape (B, ...)
        $\varepsilon_t$, the fresh noise of step $t$.
    t : int or Tensor of shape (B,)
        The step, in 1..T.
    schedule : DiscreteSchedule
        The discrete schedule.

    Returns
    -------
    (eps, omega) : tuple of Tensor
        Each of shape (B, ...).

    Raises
    ------
    TypeError
        If ``schedule`` is not a :class:`~diffmath.core.schedules.DiscreteSchedule`, or ``t`` is not a real number or
        tensor.
        Also if ``eps_prev`` or ``eps_t`` is not a floating tensor.
    ValueError
        If ``eps_prev`` or ``eps_t`` has fewer than 2 dimensions or holds NaN or infinity, their shapes differ, or
        ``t`` is not a scalar or of shape (B,) or lies outside 1..T.
    """
    check_like(eps_t, check_batch(eps_prev, "eps_prev"), "eps_t", "eps_prev")
    t_ = as_tensor(t, "t", eps_prev)
    alpha, beta = (per_sample(v, eps_prev, "t") for v in _discrete(schedule).step(t_))
    bbar_prev = per_sample(schedule.b(t_ - 1), eps_prev, "t")
    bbar = per_sample(schedule.b(t_), eps_prev, "t")
    eps = (alpha * bbar_prev * eps_prev + beta * eps_t) / bbar
    omega = (beta * eps_prev - alpha * bbar_prev * eps_t) / bbar
    return eps, omega


def ch1_constant(schedule: DiscreteSchedule, t: Tensor | float, dim: int) -> Tensor:
    r"""The constant of the chapter-1 loss, $C_t = d\,\alpha_t^2\bar\beta_{t-1}^2/\bar\beta_t^2$ (lesson 1, eq. 1.10).

    $\mathbb E\|\varepsilon_t - \epsilon_\theta\|^2 = \frac{\beta_t^2}{\bar\beta_t^2}
    \mathbb E\big\|\varepsilon - \tfrac{\bar\beta_t}{\beta_t}\epsilon_\theta\big\|^2 + C_t$ for any $\epsilon_\theta(x_t, t)$.

    Parameters
    ----------
    schedule : DiscreteSchedule
        The discrete schedule.
    t : int or Tensor
        The step(s), in 1..T.
    dim : int
        The data dimension $d$.

    Returns
    -------
    Tensor
        $C_t$, of the shape of ``t``.

    Raises
    ------
    TypeError
        If ``schedule`` is not a :class:`~diffmath.core.schedules.DiscreteSchedule`, or ``t`` is not a real number or
        tensor.
    ValueError
        If ``t`` holds NaN or infinity, is not an integer, or lies outside 1..T, or ``dim`` is not an integer >= 1.
    """
    t_ = as_tensor(t, "t")
    alpha, _ = _discrete(schedule).step(t_)
    check_int(dim, "dim")
    return dim * alpha**2 * schedule.b(t_ - 1) ** 2 / schedule.b(t_) ** 2


def gaussian_kl(mean_q: Tensor, var_q: Tensor | float, mean_p: Tensor, var_p: Tensor | float) -> Tensor:
    r"""$\mathrm{KL}\big(\mathcal N(m_q, v_q I)\,\|\,\mathcal N(m_p, v_p I)\big)$ per sample, in nats (lesson 2, eq. 2.5).

    $\tfrac12\sum_i\big[\log(v_p/v_q) + (v_q + (m_{q,i} - m_{p,i})^2)/v_p - 1\big]$ over the event dimensions.

    Parameters
    ----------
    mean_q, mean_p : Tensor, shape (B, ...)
        The two means $m_q, m_p$.
    var_q, var_p : float or Tensor of shape () or (B,)
        The two (isotropic) variances $v_q, v_p$.

    Returns
    -------
    Tensor, shape (B,)
        The KL divergence of each sample, in nats.

    Raises
    ------
    TypeError
        If a mean is not a floating tensor, or a variance is not a real number or tensor.
    ValueError
        If a mean has fewer than 2 dimensions or holds NaN or infinity, the means' shapes differ, a variance is not
        a finite scalar or of shape (B,), or a variance is not positive.
    """
    mean_q, mean_p = check_batch(mean_q, "mean_q"), check_batch(mean_p, "mean_p")
    check_like(mean_p, mean_q, "mean_p", "mean_q")
    vq = per_sample(check_coefficient(var_q, "var_q", mean_q), mean_q, "var_q")
    vp = per_sample(check_coefficient(var_p, "var_p", mean_q), mean_q, "var_p")
    for v, name in ((vq, "var_q"), (vp, "var_p")):
        if (v == 0).any():
            raise ValueError(f"{name} must be positive (a variance of the Gaussian KL), got 0")
    per = 0.5 * (torch.log(vp / vq) + (vq + (mean_q - mean_p) ** 2) / vp - 1.0)
    return per.reshape(per.shape[0], -1).sum(1)


class Posterior(NamedTuple):
    r"""$q(x_s\mid x_t, x_0) = \mathcal N(c_t x_t + c_0 x_0,\ \sigma^2 I)$ (lesson 3, eq. 3.8).

    Attributes
    ----------
    coef_xt : Tensor
        $c_t$, the coefficient of $x_t$ in the mean.
    coef_x0 : Tensor
        $c_0$, the coefficient of $x_0$ in the mean.
    std : Tensor
        $\sigma$, the standard deviation.
    """

    coef_xt: Tensor
    coef_x0: Tensor
    std: Tensor


def posterior(schedule: Schedule, t: Tensor | float, s: Tensor | float | None = None) -> Posterior:
    r"""Coefficients of the forward posterior $q(x_s\mid x_t, x_0)$, $s < t$ (lesson 3, eq. 3.8).

    With $\alpha = a_t/a_s$ and $\beta^2 = b_t^2 - \alpha^2 b_s^2$ (the transition $s\to t$),

    $$q(x_s\mid x_t, x_0) = \mathcal N\Big(\frac{\alpha b_s^2}{b_t^2}x_t + \frac{a_s\beta^2}{b_t^2}x_0,
    \frac{b_s^2\beta^2}{b_t^2}I\Big);$$

    for $s = t-1$ on a discrete schedule: $\frac{\alpha_t\bar\beta_{t-1}^2}{\bar\beta_t^2}x_t +
    \frac{\bar\alpha_{t-1}\beta_t^2}{\bar\beta_t^2}x_0$ and $\sigma = \bar\beta_{t-1}\beta_t/\bar\beta_t$.

    Parameters
    ----------
    schedule : Schedule
        The forward process.
    t : float or Tensor
        Later time ($t > 0$).
    s : float or Tensor, optional
        Earlier time, default ``t - 1`` (discrete schedules).

    Returns
    -------
    Posterior
        ``(coef_xt, coef_x0, std)``, tensors of the broadcast shape of ``t`` and ``s``.

    Raises
    ------
    TypeError
        If ``schedule`` is not a Schedule, or ``t`` or ``s`` is not a real number or tensor.
    ValueError
        If ``s >= t`` anywhere, or ``t`` or ``s`` holds NaN or infinity, lies outside the schedule's range or is not
        an integer on a discrete schedule.
    """
    t_ = check_time(t, check_schedule(schedule), "t")
    s_ = t_ - 1 if s is None else check_time(s, schedule, "s").to(t_.dtype)
    if (s_ >= t_).any():
        raise ValueError("the posterior q(x_s | x_t, x0) needs s < t (s defaults to t - 1)")
    ct, cs = schedule.coefficients(t_), schedule.coefficients(s_)
    ratio = ct.a / cs.a
    beta2 = torch.clamp(ct.b**2 - ratio**2 * cs.b**2, min=0.0)
    return Posterior(ratio * cs.b**2 / ct.b**2, cs.a * beta2 / ct.b**2, cs.b * torch.sqrt(beta2) / ct.b)


def ddpm_mean(x: Tensor, eps: Tensor, t: Tensor | float, schedule: DiscreteSchedule) -> Tensor:
    r"""Mean of the DDPM reverse step, $\mu = \big(x_t - \frac{\beta_t^2}{\bar\beta_t}\hat\varepsilon\big)/\alpha_t$
    (lesson 3, eq. 3.13), with $\hat\varepsilon$ Ho's total-noise prediction.

    Parameters
    ----------
    x : Tensor, shape (B, ...)
        $x_t$.
    eps : Tensor, shape (B, ...)
        The noise prediction $\hat\varepsilon$.
    t : int or Tensor of shape (B,)
        The step, in 1..T.
    schedule : DiscreteSchedule
        The discrete schedule.

    Returns
    -------
    Tensor, shape (B, ...)
        The mean $\mu$ of $p(x_{t-1}\mid x_t)$.

    Raises
    ------
    TypeError
        If ``schedule`` is not a :class:`~diffmath.core.schedules.DiscreteSchedule`, or ``t`` is not a real number or
        tensor.
        Also if ``x`` or ``eps`` is not a floating tensor.
    ValueError
        If ``x`` or ``eps`` has fewer than 2 dimensions or holds NaN or infinity, their shapes differ, or ``t`` is
        not a scalar or of shape (B,) or lies outside 1..T.
    """
    x = check_batch(x, "x")
    check_like(eps, x, "eps")
    t_ = as_tensor(t, "t", x)
    alpha, beta = (per_sample(v, x, "t") for v in _discrete(schedule).step(t_))
    return (x - beta**2 / per_sample(schedule.b(t_), x, "t") * eps) / alpha


def reverse_std(schedule: DiscreteSchedule, t: Tensor | float, kind: str = "posterior") -> Tensor:
    r"""The two classical reverse-step standard deviations (lesson 2, eqs. 2.11-2.12).

    ``"posterior"``: $\sigma_t = \bar\beta_{t-1}\beta_t/\bar\beta_t$, exact when the data is one point;
    ``"beta"``: $\sigma_t = \beta_t$, exact when the data is $\mathcal N(0, I)$.

    Parameters
    ----------
    schedule : DiscreteSchedule
        The discrete schedule.
    t : int or Tensor
        The step(s), in 1..T.
    kind : {"posterior", "beta"}
        Which of the two.

    Returns
    -------
    Tensor
        $\sigma_t$, of the shape of ``t``.

    Raises
    ------
    TypeError
        If ``t`` is not a real number or tensor, or ``kind="beta"`` and ``schedule`` is not a
        :class:`~diffmath.core.schedules.DiscreteSchedule`.
    ValueError
        If ``kind`` is unknown, or ``t`` holds NaN or infinity, is not an integer, or lies outside 1..T.
    """
    t_ = as_tensor(t, "t")
    if kind == "posterior":
        return posterior(schedule, t_).std
    if kind == "beta":
        return _discrete(schedule).step(t_)[1]
    raise ValueError(f"kind must be 'posterior' or 'beta', got {kind!r}")


def reverse_variance(
    source: GaussianMixture, x: Tensor, t: Tensor | float, schedule: Schedule, s: Tensor | float | None = None
) -> Tensor:
    r"""Exact covariance of the true reverse step, $\operatorname{Cov}[x_s\mid x_t] = c_0^2\operatorname{Cov}[x_0\mid x_t]
    + \sigma^2 I$ (lesson 2, eq. 2.13), with $c_0$ and $\sigma$ of the posterior $q(x_s\mid x_t, x_0)$ (eq. 3.8).

    Parameters
    ----------
    source : GaussianMixture
        The exact data distribution.
    x : Tensor, shape (B, ...)
        Points $x_t$.
    t, s : float or Tensor
        Times, $s < t$ (default $s = t - 1$).
    schedule : Schedule
        The forward process.

    Returns
    -------
    Tensor, shape (B, d, d)

    Raises
    ------
    TypeError
        If ``source`` is not a mixture, ``x`` is not a floating tensor, or ``t`` or ``s`` is not a real number or
        tensor.
    ValueError
        If ``x`` has fewer than 2 dimensions, holds NaN or infinity or does not match the mixture's event shape,
        ``s >= t``, or a time lies outside the schedule's range.
    """
    if not isinstance(source, GaussianMixture):
        raise TypeError(f"source must be a GaussianMixture or EmpiricalData, got {type(source).__name__}")
    t_ = as_tensor(t, "t", check_batch(x, "x"))
    post = posterior(schedule, t_, s)
    c = schedule.coefficients(t_)
    cov = source.posterior_cov(x, c.a, c.b)
    eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
    return post.coef_x0**2 * cov + post.std**2 * eye


def kl_weight(schedule: DiscreteSchedule, t: Tensor | float, sigma: Tensor | float) -> Tensor:
    r"""Weight of $\|\varepsilon - \hat\varepsilon\|^2$ in the per-step KL, $\frac{\beta_t^4}{2\bar\beta_t^2\alpha_t^2\sigma_t^2}$
    (lesson 2, eq. 2.9; the text prints $\beta_t^4/(\alpha_t^2\sigma_t^4)$).

    When $p(x_{t-1}\mid x_t) = \mathcal N(\mu_\theta, \sigma_t^2 I)$ shares the posterior's variance,
    $\mathrm{KL}(q(x_{t-1}\mid x_t,x_0)\,\|\,p) = \text{weight}\cdot\|\varepsilon - \hat\varepsilon\|^2$.

    Parameters
    ----------
    schedule : DiscreteSchedule
        The discrete schedule.
    t : int or Tensor
        The step(s), in 1..T.
    sigma : float or Tensor
        The reverse step's standard deviation $\sigma_t$.

    Returns
    -------
    Tensor
        The weight, of the broadcast shape of ``t`` and ``sigma``.

    Raises
    ------
    TypeError
        If ``schedule`` is not a :class:`~diffmath.core.schedules.DiscreteSchedule`, or ``t`` is not a real number or
        tensor.
    ValueError
        If ``sigma`` is not finite and positive, or ``t`` holds NaN or infinity, is not an integer, or lies outside
        1..T.
    """
    t_ = as_tensor(t, "t")
    alpha, beta = _discrete(schedule).step(t_)
    sigma_ = check_coefficient(sigma, "sigma", alpha)
    if (sigma_ <= 0).any():
        raise ValueError("sigma must be positive (the posterior sd is 0 at t = 1: the KL is infinite there)")
    return beta**4 / (2 * schedule.b(t_) ** 2 * alpha**2 * sigma_**2)
