r"""Wasserstein distance is bounded by score matching (lesson 16), evaluated exactly for Gaussian data.

Two probability-flow ODEs start from one point at $t = T$ and run down to the data: the exact one,
$\dot x = v_t(x) = f_t x - \tfrac12 g_t^2\nabla\log p_t(x)$, and the model's,
$\dot y = h_t(y) = f_t y - \tfrac12 g_t^2 s(y, t)$ (lesson 16, eq. 16.8). Their coupled distance
$W_t^2 = \mathbb E\Vert x_t - y_t\Vert^2$ obeys $-\dot W_t \le \delta_t + L_t W_t$ (eq. 16.5), hence

$$\mathcal W_2[p_0, q_0] \le \int_0^T I_t\,\delta_t\,\mathrm dt + I_T\,\mathcal W_2[p_T, q_T],
\qquad I_t = e^{\int_0^t L_s\mathrm ds} \qquad\text{(eq. 16.7)}.$$

For data $\mathcal N(m_0, s_0^2 I_d)$ and a model score $s = (1 + \kappa_t)\nabla\log p_t + \beta_t$ (eq. 16.13) both
drifts are affine, $x_t$ and $y_t$ are affine in the common start, and every term is a 1-D integral: this module
solves them with ``scipy.integrate.solve_ivp`` in float64. Time runs as everywhere in diffmath: $t = 0$ data,
$t = T$ prior.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
from scipy.integrate import solve_ivp

from diffmath.core._validate import check_int, check_positive, check_real
from diffmath.core.schedules import Schedule
from diffmath.sde import sde_coefficients

Error = float | Callable[[float], float]


@dataclass(frozen=True)
class W2Bound:
    r"""The W2 bound of lesson 16 (eq. 16.7) and its parts, for Gaussian data and an affine score error.

    Curves are on the increasing grid ``t`` from 0 to $T$.

    Parameters
    ----------
    w2 : float
        The exact $\mathcal W_2[p_0, q_0]$ between the two Gaussians at $t = 0$ (eq. 16.2).
    coupled : float
        $W_0$ of the coupling by a common start (eq. 16.3), $\ge$ ``w2``.
    bound : float
        ``score_term + prior_term`` (eq. 16.7).
    score_term, prior_term : float
        $\int_0^T I_t\delta_t\,\mathrm dt$ and $I_T\,\mathcal W_2[p_T, q_T]$.
    t : ndarray
        The time grid.
    half_g2, sm_loss : ndarray
        $\tfrac12 g_t^2$ (eq. 16.9) and the score-matching loss $\mathbb E_{p_t}\Vert s - \nabla\log p_t\Vert^2$.
    delta, lipschitz, I : ndarray
        $\delta_t = \tfrac12 g_t^2\sqrt{\text{sm\_loss}}$ (eq. 16.8), $L_t$ (eq. 16.4) and $I_t$ (eq. 16.6).
    coupled_t, bound_t : ndarray
        $W_t$ and the bound (eq. 16.7) on it from the interval $[t, T]$.
    dcoupled_sq : ndarray
        $\mathrm d(W_t^2)/\mathrm dt$, for checking the rate inequality (eq. 16.5).
    """

    w2: float
    coupled: float
    bound: float
    score_term: float
    prior_term: float
    t: np.ndarray
    half_g2: np.ndarray
    sm_loss: np.ndarray
    delta: np.ndarray
    lipschitz: np.ndarray
    I: np.ndarray
    coupled_t: np.ndarray
    bound_t: np.ndarray
    dcoupled_sq: np.ndarray


@dataclass(frozen=True)
class SDEMarginals:
    r"""Means and standard deviations (per coordinate) of $p_t$ and of the model's reverse-SDE law $q_t$ (lesson 16,
    eq. 16.17), on the increasing grid ``t``.

    Parameters
    ----------
    t : ndarray
        The time grid from 0 to $T$.
    mean_p, sd_p, mean_q, sd_q : ndarray
        Moments of $p_t$ and $q_t$.
    """

    t: np.ndarray
    mean_p: np.ndarray
    sd_p: np.ndarray
    mean_q: np.ndarray
    sd_q: np.ndarray


def _as_error(e: object, name: str) -> Callable[[float], float]:
    if callable(e):
        return e
    if isinstance(e, bool) or not isinstance(e, (int, float)):
        raise TypeError(f"{name} must be a real number or a callable of t returning one, got {type(e).__name__}")
    c = check_real(e, name)
    return lambda t: c


@dataclass(frozen=True)
class _Problem:
    """Checked arguments shared by :func:`w2_bound` and :func:`sde_marginals`."""

    schedule: Schedule
    T: float
    m0: float
    s0: float
    kappa: Callable[[float], float]
    beta: Callable[[float], float]
    prior_q: tuple[float, float]

    def terms(self, t: np.ndarray | float) -> tuple[np.ndarray, ...]:
        r"""$f_t, \tfrac12 g_t^2$ (lesson 5, eq. 5.6), $\mu_t = a_t m_0$, $\bar s_t^2$, $\kappa_t, \beta_t$ at ``t``."""
        tt = torch.as_tensor(t, dtype=torch.float64)
        c, (f, g2) = self.schedule.coefficients(tt), sde_coefficients(self.schedule, tt)
        a, b = c.a.numpy(), c.b.numpy()
        k = np.array([self.kappa(u) for u in np.atleast_1d(t)], float).reshape(np.shape(t))
        be = np.array([self.beta(u) for u in np.atleast_1d(t)], float).reshape(np.shape(t))
        return f.numpy(), 0.5 * g2.numpy(), a * self.m0, a**2 * self.s0**2 + b**2, k, be


def _problem(schedule, mean, sd, kappa, beta, T, q_prior, num_points) -> tuple[_Problem, np.ndarray]:
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a diffmath Schedule (e.g. LinearVE(3.0), VPLinear()), got {schedule!r}")
    if schedule.discrete:
        raise ValueError(f"lesson 16 needs a continuous schedule (VPLinear, VE, LinearVE, ...), got {schedule.name!r}")
    T = schedule.t_max if T is None else check_positive(T, "T")
    if T > schedule.t_max:
        raise ValueError(f"T must lie in (0, {schedule.t_max:g}] for schedule {schedule.name!r}, got {T:g}")
    m0, s0 = check_real(mean, "mean"), check_positive(sd, "sd")
    grid = np.linspace(0.0, T, check_int(num_points, "num_points", low=2))
    p = _Problem(schedule, T, m0, s0, _as_error(kappa, "kappa"), _as_error(beta, "beta"), (0.0, 1.0))  # prior: below
    if not (schedule.coefficients(torch.as_tensor(grid)).a > 0).all():
        raise ValueError(
            f"L_t is undefined where a_t = 0 (f_t = da/a is infinite) on {schedule.name!r}: pass a smaller T"
        )
    f, hg, mu, V, k, be = p.terms(grid)
    if not all(np.isfinite(v).all() for v in (f, hg, k, be)):
        raise ValueError("f_t, g_t^2 and the errors kappa, beta must be finite on [0, T]")
    if q_prior is None:
        q_prior = (mu[-1], math.sqrt(V[-1]))
    if not (isinstance(q_prior, tuple) and len(q_prior) == 2):
        raise TypeError(f"q_prior must be None or a tuple (mean, sd) of the model's prior, got {q_prior!r}")
    prior_q = (check_real(q_prior[0], "q_prior mean"), check_positive(q_prior[1], "q_prior sd"))
    return replace(p, prior_q=prior_q), grid


def _solve(rhs: Callable, T: float, y0: list[float], grid: np.ndarray, rtol: float, atol: float) -> np.ndarray:
    check_positive(rtol, "rtol")
    check_positive(atol, "atol")
    sol = solve_ivp(rhs, (T, 0.0), y0, method="DOP853", t_eval=grid[::-1], rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"solve_ivp failed: {sol.message}")
    return sol.y[:, ::-1]


def w2_bound(
    schedule: Schedule,
    mean: float = 0.0,
    sd: float = 1.0,
    kappa: Error = 0.0,
    beta: Error = 0.0,
    T: float | None = None,
    q_prior: tuple[float, float] | None = None,
    dim: int = 1,
    num_points: int = 201,
    rtol: float = 1e-11,
    atol: float = 1e-13,
) -> W2Bound:
    r"""Evaluate $\mathcal W_2[p_0, q_0] \le \int_0^T I_t\delta_t\,\mathrm dt + I_T\mathcal W_2[p_T, q_T]$
    (lesson 16, eq. 16.7) for data $\mathcal N(m_0, s_0^2 I_d)$ and the model score
    $s = (1 + \kappa_t)\nabla\log p_t + \beta_t$ (eq. 16.13).

    The exact flow starts from $p_T = \mathcal N(\mu_T, \bar s_T^2)$, the model's from ``q_prior``
    $= \mathcal N(m_q, s_q^2)$, paired by the monotone (optimal) coupling $x_T = \mu_T + \bar s_T\xi$,
    $y_T = m_q + s_q\xi$. The moments of $x_t$, $y_t$ and the integrals $K_t = \int_t^T L_u\,\mathrm du$,
    $C_t = \int_t^T e^{-K_u}\delta_u\,\mathrm du$ are solved together from $T$ down to 0 (DOP853); then
    $I_t = e^{K_0 - K_t}$ and the bound on $W_t$ is $e^{K_t}(C_t + W_T)$ (eq. 16.6).

    Parameters
    ----------
    schedule : Schedule
        A continuous schedule; $f_t, g_t^2$ are lesson 5's (eq. 5.6).
    mean, sd : float
        $m_0$ and $s_0 > 0$ of the data, per coordinate.
    kappa, beta : float or callable
        Scale and bias errors of the score, constants or functions of $t$ (a float in, a float out).
    T : float, optional
        Where both flows start (default the schedule's $t_{\max}$).
    q_prior : tuple (mean, sd), optional
        The model's prior $q_T$ per coordinate (default the exact marginal $p_T$).
    dim : int
        Dimension $d$ of the isotropic data.
    num_points : int
        Points of the output grid.
    rtol, atol : float
        Tolerances of ``solve_ivp``.

    Returns
    -------
    W2Bound

    Raises
    ------
    TypeError
        If ``schedule`` is not a Schedule, ``kappa``/``beta`` are neither numbers nor callables, or ``q_prior`` is
        not a pair.
    ValueError
        If the schedule is discrete, $a_t = 0$ somewhere on $[0, T]$ (rectified flow and VP-cosine at $t = 1$),
        $f_t$, $g_t^2$ or the errors are not finite on the grid, a number is not finite, ``sd``, ``T``, the
        prior's sd or a tolerance is not positive, ``T`` exceeds $t_{\max}$, or ``dim`` (``num_points``) is not
        an integer >= 1 (>= 2).
    RuntimeError
        If ``solve_ivp`` fails.
    """
    p, grid = _problem(schedule, mean, sd, kappa, beta, T, q_prior, num_points)
    d = check_int(dim, "dim")

    def rates(t: float, y: np.ndarray) -> np.ndarray:
        f, hg, mu, V, k, be = (float(v) for v in p.terms(t))
        cx, ch = f + hg / V, f + hg * (1.0 + k) / V  # slopes of v_t and h_t; L_t = -ch (eq. 16.13)
        delta = hg * math.sqrt(d * (k * k / V + be * be))
        mx, sx, my, sy, K, _ = y
        dmx, dmy = cx * (mx - mu) + f * mu, ch * (my - mu) + f * mu - hg * be
        return np.array([dmx, cx * sx, dmy, ch * sy, ch, -math.exp(-K) * delta])

    f, hg, mu, V, k, be = p.terms(grid)
    (mq, sq), mu_T, sd_T = p.prior_q, mu[-1], math.sqrt(V[-1])
    w_T = math.sqrt(d * ((mu_T - mq) ** 2 + (sd_T - sq) ** 2))  # W2[p_T, q_T] (eq. 16.2)
    mx, sx, my, sy, K, C = Y = _solve(rates, p.T, [mu_T, sd_T, mq, sq, 0.0, 0.0], grid, rtol, atol)
    sm = d * (k**2 / V + be**2)  # E ||s - grad log p_t||^2: the Fisher information of p_t is d / sbar_t^2
    dY = np.stack([rates(t, y) for t, y in zip(grid, Y.T, strict=True)], axis=1)
    coupled_t = np.sqrt(d * ((mx - my) ** 2 + (sx - sy) ** 2))
    return W2Bound(
        w2=math.sqrt(d * ((mu[0] - my[0]) ** 2 + (math.sqrt(V[0]) - abs(sy[0])) ** 2)),
        coupled=float(coupled_t[0]),
        bound=float(math.exp(K[0]) * (C[0] + w_T)),
        score_term=float(math.exp(K[0]) * C[0]),
        prior_term=float(math.exp(K[0]) * w_T),
        t=grid,
        half_g2=hg,
        sm_loss=sm,
        delta=hg * np.sqrt(sm),
        lipschitz=-(f + hg * (1.0 + k) / V),
        I=np.exp(K[0] - K),
        coupled_t=coupled_t,
        bound_t=np.exp(K) * (C + w_T),
        dcoupled_sq=2 * d * ((mx - my) * (dY[0] - dY[2]) + (sx - sy) * (dY[1] - dY[3])),
    )


def sde_marginals(
    schedule: Schedule,
    mean: float = 0.0,
    sd: float = 1.0,
    kappa: Error = 0.0,
    beta: Error = 0.0,
    T: float | None = None,
    q_prior: tuple[float, float] | None = None,
    num_points: int = 201,
    rtol: float = 1e-11,
    atol: float = 1e-13,
) -> SDEMarginals:
    r"""Moments of the law $q_t$ of the model's reverse SDE $\mathrm dy = [f_t y - g_t^2 s(y, t)]\mathrm dt +
    g_t\mathrm d\bar w$ from $q_T$ (lesson 16, eq. 16.17), and of the data's $p_t$, for the score of eq. 16.13.

    Parameters
    ----------
    schedule : Schedule
        A continuous schedule.
    mean, sd : float
        $m_0$ and $s_0 > 0$ of the data, per coordinate.
    kappa, beta : float or callable
        Scale and bias errors of the score, constants or functions of $t$.
    T : float, optional
        Where the SDE starts (default $t_{\max}$).
    q_prior : tuple (mean, sd), optional
        $q_T$ per coordinate (default $p_T$).
    num_points : int
        Points of the output grid.
    rtol, atol : float
        Tolerances of ``solve_ivp``.

    Returns
    -------
    SDEMarginals

    Raises
    ------
    TypeError, ValueError
        On bad arguments, as :func:`w2_bound`.
    RuntimeError
        If ``solve_ivp`` fails.
    """
    p, grid = _problem(schedule, mean, sd, kappa, beta, T, q_prior, num_points)

    def rates(t: float, y: np.ndarray) -> np.ndarray:
        f, hg, mu, V, k, be = (float(v) for v in p.terms(t))
        c = f + 2 * hg * (1.0 + k) / V  # slope of the reverse-SDE drift f y - g^2 s(y)
        return np.array([c * (y[0] - mu) + f * mu - 2 * hg * be, 2 * c * y[1] - 2 * hg])

    mq, sq = p.prior_q
    m, P = _solve(rates, p.T, [mq, sq**2], grid, rtol, atol)
    _, _, mu, V, _, _ = p.terms(grid)
    return SDEMarginals(grid, mu, np.sqrt(V), m, np.sqrt(P))


def score_coupling_term(
    sd_p: np.ndarray | float, sd_q: np.ndarray | float, reflected: bool = False, dim: int = 1
) -> np.ndarray:
    r"""$\mathbb E[(x - y)\cdot(\nabla\log p(x) - \nabla\log q(y))]$ for $x = m_p + s_p\xi$, $y = m_q \pm s_q\xi$
    (lesson 16, eqs. 16.11-16.12): $d\,[\pm(r + 1/r) - 2]$ with $r = s_p/s_q$.

    The SDE adds $-g_t^2$ times this to $-\mathrm d(W_t^2)/\mathrm dt$ (eq. 16.11). The common start (``+``) makes it
    $d\,(s_p - s_q)^2/(s_p s_q) \ge 0$; a reflected start (``-``) makes it $-d\,(s_p + s_q)^2/(s_p s_q) < 0$.

    Parameters
    ----------
    sd_p, sd_q : float or ndarray
        Per-coordinate standard deviations of the two Gaussians (broadcast together); the means drop out.
    reflected : bool
        Pair $\xi$ with $-\xi$ instead of $\xi$.
    dim : int
        Dimension $d$ (isotropic Gaussians).

    Returns
    -------
    ndarray
        The expectation, broadcast shape of the inputs.

    Raises
    ------
    ValueError
        If an sd is not positive or ``dim`` is not a positive integer.
    """
    sp, sq = np.asarray(sd_p, float), np.asarray(sd_q, float)
    if not ((sp > 0).all() and (sq > 0).all()):
        raise ValueError("sd_p and sd_q must be positive")
    r = sp / sq
    return check_int(dim, "dim") * ((-1.0 if reflected else 1.0) * (r + 1 / r) - 2.0)
