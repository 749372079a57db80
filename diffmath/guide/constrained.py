r"""Constrained alignment and composition (lesson 24): Lagrange multipliers in place of hand-tuned weights.

Three problems over a distribution $p$, each with a closed-form optimum for a fixed multiplier and a concave dual:

- **alignment**: the closest $p$ (reverse KL) to a pretrained $q$ whose expected rewards reach thresholds,
  $\mathbb E_p r_i \ge b_i$; optimum the tilt $q_\lambda \propto q\,e^{\lambda\cdot r}$, $\lambda \ge 0$ (eqs. 24.1-24.2);
- **AND** (product): the $p$ whose largest reverse KL to $m$ models is smallest; optimum the weighted geometric product
  $q_\lambda \propto \prod_i q_i^{\lambda_i}$, $\lambda$ on the simplex (eqs. 24.3-24.5);
- **OR** (mixture): the $p$ whose largest cross-entropy from $m$ models is smallest; optimum the mixture
  $\sum_i \lambda_i q_i$ (eq. 24.6).

The duals are solved by projected ascent (:func:`dual_ascent`), with the exact sort-based projection onto the simplex
(:func:`project_simplex`) and averaged iterates. In 2-D every quantity is exact on a grid (:class:`Grid2D`) and for
Gaussians in closed form; for score models the KLs come from the point-wise identity along the forward process
(:func:`pointwise_kl`, eq. 24.7), and the training-free AND of the paper weights the models' scores by the dual
(:func:`dual_only_and`, eq. 24.8), which for two models can only return equal weights.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from diffmath.core._validate import check_batch, check_int, check_positive
from diffmath.core.models import Model, check_model, predict
from diffmath.core.schedules import Schedule
from diffmath.guide.compose import Combine, Conditioned
from diffmath.sampling.loop import Noise, check_grid, denoise, final, noise_source, run
from diffmath.sampling.samplers import ddim_rule, sample
from diffmath.sde import predictor_corrector, sde_coefficients
from diffmath.train.training import as_draws, fit


# ------------------------------------------------------------------------------------------------ projections
def project_simplex(v: Tensor) -> Tensor:
    r"""Euclidean projection onto the probability simplex $\{\lambda \ge 0, \sum_i\lambda_i = 1\}$, exact, by sorting
    (lesson 24, eq. 24.9): $\lambda_i = \max(v_i - \theta, 0)$ with $\theta$ the threshold that makes the sum 1.

    Parameters
    ----------
    v : Tensor, shape (..., m)
        Points, projected along the last axis.

    Returns
    -------
    Tensor, shape (..., m)

    Raises
    ------
    TypeError, ValueError
        If ``v`` is not a finite floating tensor with a non-empty last axis.
    """
    v = check_batch(v, "v", min_dim=1)
    if v.shape[-1] == 0:
        raise ValueError("v must have at least one entry along its last axis")
    u = v.sort(dim=-1, descending=True).values
    css = u.cumsum(-1) - 1
    k = torch.arange(1, v.shape[-1] + 1, dtype=v.dtype, device=v.device)
    rho = (u - css / k > 0).to(v.dtype).cumsum(-1).argmax(-1, keepdim=True)  # last index where the test holds
    theta = css.gather(-1, rho) / (rho + 1).to(v.dtype)
    return (v - theta).clamp_min(0)


def project_orthant(v: Tensor) -> Tensor:
    r"""Projection onto the non-negative orthant, $\max(v, 0)$: the multipliers of inequality constraints
    (lesson 24, eq. 24.2).

    Parameters
    ----------
    v : Tensor, shape (m,)

    Returns
    -------
    Tensor, shape (m,)
    """
    return check_batch(v, "v", min_dim=1).clamp_min(0)


class Ascent(NamedTuple):
    r"""The result of :func:`dual_ascent` (lesson 24, sec. 24.2).

    Attributes
    ----------
    lam : Tensor, shape (m,)
        The last iterate.
    averaged : Tensor, shape (m,)
        The mean of the second half of the iterates (the averaged iterate).
    history : Tensor, shape (iters + 1, m)
        Every iterate, from the start.
    gradients : Tensor, shape (iters, m)
        The ascent direction at each iterate (the constraint values).
    """

    lam: Tensor
    averaged: Tensor
    history: Tensor
    gradients: Tensor


def dual_ascent(
    direction: Callable[[Tensor], Tensor],
    lam0: Tensor,
    project: Callable[[Tensor], Tensor],
    step: float,
    iters: int,
    normalise: bool = False,
) -> Ascent:
    r"""Projected dual ascent $\lambda \leftarrow \Pi(\lambda + \eta\,d(\lambda))$ (lesson 24, eqs. 24.2 and 24.3).

    Parameters
    ----------
    direction : callable
        ``direction(lam) -> Tensor (m,)``: the dual's ascent direction at ``lam`` (e.g. the KLs of AND, the slacks
        $b - \mathbb E r$ of alignment).
    lam0 : Tensor, shape (m,)
        The start.
    project : callable
        :func:`project_simplex` or :func:`project_orthant`.
    step : float
        $\eta > 0$.
    iters : int
        Iterations.
    normalise : bool
        Divide each direction by its largest absolute entry (a scale-free step, for KLs of any size).

    Returns
    -------
    Ascent

    Raises
    ------
    ValueError
        If ``step`` is not positive, ``iters`` not a positive integer, or ``direction`` returns a tensor of the wrong
        shape or a non-finite value.
    """
    eta, n = check_positive(step, "step"), check_int(iters, "iters")
    lam = project(check_batch(lam0, "lam0", min_dim=1).clone())
    history, grads = [lam], []
    for _ in range(n):
        d = direction(lam)
        if not isinstance(d, Tensor) or d.shape != lam.shape or not bool(torch.isfinite(d).all()):
            raise ValueError(f"direction must return a finite tensor of shape {tuple(lam.shape)}")
        grads.append(d)
        if normalise:
            d = d / d.abs().max().clamp_min(1e-300)
        lam = project(lam + eta * d)
        history.append(lam)
    h = torch.stack(history)
    return Ascent(lam, h[(n + 1) // 2 :].mean(0), h, torch.stack(grads))


# ------------------------------------------------------------------------------------------------ Gaussians
def _gaussians(means: Tensor, covs: Tensor) -> tuple[Tensor, Tensor]:
    means = check_batch(means, "means", min_dim=2).double()
    covs = check_batch(covs, "covs", min_dim=3).double()
    if means.dim() != 2 or covs.shape != (*means.shape, means.shape[1]):
        raise ValueError(f"means must be (m, d) and covs (m, d, d), got {tuple(means.shape)} and {tuple(covs.shape)}")
    return means, covs


def gaussian_kl(m1: Tensor, S1: Tensor, m2: Tensor, S2: Tensor) -> Tensor:
    r"""$\mathrm{KL}(\mathcal N(m_1, S_1)\,\|\,\mathcal N(m_2, S_2))$ in nats (lesson 24, eq. 24.5).

    Parameters
    ----------
    m1, m2 : Tensor, shape (d,)
    S1, S2 : Tensor, shape (d, d)

    Returns
    -------
    Tensor, shape ()
    """
    d = m1.shape[-1]
    P2 = torch.linalg.inv(S2)
    diff = m2 - m1
    return 0.5 * (
        torch.trace(P2 @ S1) + diff @ P2 @ diff - d + torch.logdet(S2) - torch.logdet(S1)
    )  # fmt: skip


def gaussian_product(means: Tensor, covs: Tensor, lam: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r"""The weighted geometric product $\prod_i \mathcal N(m_i, S_i)^{\lambda_i}$, normalised, and its $\log Z$
    (lesson 24, eq. 24.5): precision $P = \sum_i\lambda_i S_i^{-1}$, mean $P^{-1}\sum_i\lambda_i S_i^{-1}m_i$.

    Parameters
    ----------
    means : Tensor, shape (m, d)
    covs : Tensor, shape (m, d, d)
    lam : Tensor, shape (m,)
        Non-negative weights, not all 0.

    Returns
    -------
    (mean, cov, log_z) : Tensor (d,), Tensor (d, d), Tensor ()
        $\log Z = \log\int\prod_i \mathcal N(x; m_i, S_i)^{\lambda_i}\,\mathrm dx$.
    """
    means, covs = _gaussians(means, covs)
    lam = lam.double()
    P_i = torch.linalg.inv(covs)
    P = (lam[:, None, None] * P_i).sum(0)
    h = (lam[:, None] * (P_i @ means[..., None])[..., 0]).sum(0)
    cov = torch.linalg.inv(P)
    mu = cov @ h
    d = means.shape[1]
    quad = (lam * (means[:, None, :] @ P_i @ means[..., None])[:, 0, 0]).sum()
    norm = (lam * (torch.logdet(covs) + d * math.log(2 * math.pi))).sum()
    log_z = 0.5 * (mu @ P @ mu - quad - norm) + 0.5 * (d * math.log(2 * math.pi) - torch.logdet(P))
    return mu, cov, log_z


# ------------------------------------------------------------------------------------------------ 2-D grids
class Grid2D:
    r"""Densities on a regular 2-D grid: normalisation, KL, expectations and exact draws, all by quadrature
    (lesson 24, sec. 24.5). Cell-centred, ``n`` x ``n`` cells over ``[low, high]^2``.

    Parameters
    ----------
    low, high : float
        The square's sides.
    n : int
        Cells per side.

    Raises
    ------
    ValueError
        If ``high <= low`` or ``n < 2``.
    """

    def __init__(self, low: float, high: float, n: int = 400) -> None:
        if not high > low:
            raise ValueError(f"high must exceed low, got low={low}, high={high}")
        self.n = check_int(n, "n", 2)
        self.low, self.high = float(low), float(high)
        self.h = (self.high - self.low) / self.n
        c = self.low + self.h * (torch.arange(self.n, dtype=torch.float64) + 0.5)
        gx, gy = torch.meshgrid(c, c, indexing="ij")
        self.points = torch.stack([gx.flatten(), gy.flatten()], 1)
        self.area = self.h * self.h

    def normalise(self, log_density: Tensor) -> tuple[Tensor, float]:
        r"""$\log p = \log\tilde p - \log Z$ with $Z = \sum \tilde p\,\Delta A$ (sec. 24.5).

        Parameters
        ----------
        log_density : Tensor, shape (n * n,)
            An unnormalised log density at :attr:`points`.

        Returns
        -------
        (Tensor, float)
            The normalised log density and $\log Z$.

        Raises
        ------
        ValueError
            If ``log_density`` does not hold one value per grid point.
        """
        if log_density.shape != (self.points.shape[0],):
            raise ValueError(f"log_density must have shape ({self.points.shape[0]},), got {tuple(log_density.shape)}")
        log_z = torch.logsumexp(log_density.double(), 0) + math.log(self.area)
        return log_density.double() - log_z, float(log_z)

    def kl(self, log_p: Tensor, log_q: Tensor) -> float:
        r"""$\mathrm{KL}(p\,\|\,q) = \sum p\,(\log p - \log q)\,\Delta A$ (lesson 24, sec. 24.5).

        Parameters
        ----------
        log_p, log_q : Tensor, shape (n * n,)
            Normalised log densities at the points.

        Returns
        -------
        float
            In nats.
        """
        p = log_p.exp()
        return float((torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))).sum() * self.area)

    def expect(self, log_p: Tensor, values: Tensor) -> Tensor:
        r"""$\mathbb E_p f = \sum p\,f\,\Delta A$ (lesson 24, sec. 24.5).

        Parameters
        ----------
        log_p : Tensor, shape (n * n,)
            A normalised log density.
        values : Tensor, shape (n * n,) or (k, n * n)
            One or ``k`` functions at the points.

        Returns
        -------
        Tensor, shape () or (k,)
        """
        return (values * log_p.exp()).sum(-1) * self.area

    def sample(self, log_p: Tensor, num: int, generator: torch.Generator | None = None) -> Tensor:
        r"""Exact draws from the piecewise-constant density: a cell by its mass, then uniform within it (sec. 24.5).

        Parameters
        ----------
        log_p : Tensor, shape (n * n,)
            A normalised log density.
        num : int
            Draws.
        generator : torch.Generator, optional

        Returns
        -------
        Tensor, shape (num, 2), float64
        """
        cells = torch.multinomial(log_p.exp(), check_int(num, "num"), replacement=True, generator=generator)
        jitter = torch.rand(num, 2, generator=generator, dtype=torch.float64) - 0.5
        return self.points[cells] + self.h * jitter


# ------------------------------------------------------------------------------------------------ the duals
class Solution(NamedTuple):
    r"""A constrained problem solved on a grid (lesson 24, sec. 24.5).

    Attributes
    ----------
    lam : Tensor, shape (m,)
        The multipliers (the averaged iterate).
    log_density : Tensor, shape (n * n,)
        The optimum's normalised log density at the multipliers.
    values : Tensor, shape (m,)
        The constraint values there: KLs (AND), cross-entropies (OR) or expected rewards (alignment).
    dual : float
        The dual objective there.
    ascent : Ascent
        The iterates.
    """

    lam: Tensor
    log_density: Tensor
    values: Tensor
    dual: float
    ascent: Ascent


def _log_densities(log_densities: Tensor, grid: Grid2D) -> Tensor:
    lq = check_batch(log_densities, "log_densities", min_dim=2).double()
    if lq.dim() != 2 or lq.shape[1] != grid.points.shape[0] or lq.shape[0] < 2:
        raise ValueError(f"log_densities must have shape (m >= 2, {grid.points.shape[0]}), got {tuple(lq.shape)}")
    return lq - torch.logsumexp(lq, 1, keepdim=True) - math.log(grid.area)


def _and_product(lq: Tensor, grid: Grid2D, lam: Tensor) -> tuple[Tensor, Tensor, float]:
    """:func:`and_product` on log densities that :func:`_log_densities` has checked and normalised."""
    log_q, log_z = grid.normalise((lam.double()[:, None] * lq).sum(0))
    kls = torch.tensor([grid.kl(log_q, row) for row in lq], dtype=torch.float64)
    return log_q, kls, -log_z


def and_product(log_densities: Tensor, grid: Grid2D, lam: Tensor) -> tuple[Tensor, Tensor, float]:
    r"""The AND target $q_\lambda \propto \prod_i q_i^{\lambda_i}$ on a grid, the reverse KLs
    $\mathrm{KL}(q_\lambda\,\|\,q_i)$ and the dual $-\log Z(\lambda)$ (lesson 24, eq. 24.3).

    Parameters
    ----------
    log_densities : Tensor, shape (m, n * n)
        The models' log densities at ``grid.points`` (normalised or not).
    grid : Grid2D
    lam : Tensor, shape (m,)
        A point of the simplex.

    Returns
    -------
    (log_q, kls, dual) : Tensor (n * n,), Tensor (m,), float
    """
    return _and_product(_log_densities(log_densities, grid), grid, lam)


def solve_and(log_densities: Tensor, grid: Grid2D, step: float = 0.2, iters: int = 400) -> Solution:
    r"""AND by dual ascent on the simplex: $\lambda \leftarrow \Pi_\Delta(\lambda + \eta\,\mathrm{KL}(q_\lambda\|q_i)
    / \max_j \mathrm{KL}_j)$ from $1/m$ (lesson 24, eqs. 24.3-24.4).

    Parameters
    ----------
    log_densities : Tensor, shape (m, n * n)
        The models' log densities on the grid.
    grid : Grid2D
    step : float
        $\eta$ (on the normalised direction).
    iters : int
        Iterations.

    Returns
    -------
    Solution
        ``values`` are the KLs at the averaged multipliers, ``dual`` is $-\log Z$ there.
    """
    lq = _log_densities(log_densities, grid)  # checked and normalised once, not at every iterate
    m = lq.shape[0]
    ascent = dual_ascent(
        lambda lam: _and_product(lq, grid, lam)[1],
        torch.full((m,), 1.0 / m, dtype=torch.float64),
        project_simplex,
        step,
        iters,
        normalise=True,
    )
    log_q, kls, dual = _and_product(lq, grid, ascent.averaged)
    return Solution(ascent.averaged, log_q, kls, dual, ascent)


def solve_or(log_densities: Tensor, grid: Grid2D, step: float = 0.1, iters: int = 400) -> Solution:
    r"""OR by dual ascent on the simplex with cross-entropy constraints $\mathrm{CE}(q_i, p) = -\mathbb E_{q_i}\log p$
    at the mixture $p = \sum_i\lambda_i q_i$ (lesson 24, eq. 24.6).

    Parameters
    ----------
    log_densities : Tensor, shape (m, n * n)
        The models' log densities on the grid.
    grid : Grid2D
    step : float
        $\eta$, in inverse nats (the cross-entropies enter unnormalised).
    iters : int
        Iterations.

    Returns
    -------
    Solution
        ``values`` are the cross-entropies, ``dual`` is the mixture's entropy $H(p)$ at the averaged multipliers.
    """
    lq = _log_densities(log_densities, grid)

    def mixture(lam: Tensor) -> Tensor:
        return torch.logsumexp(lq + lam.clamp_min(1e-300).log()[:, None], 0)

    def ces(lam: Tensor) -> Tensor:
        lp = mixture(lam)
        return torch.stack([-grid.expect(row, lp) for row in lq])

    m = lq.shape[0]
    start = torch.full((m,), 1.0 / m, dtype=torch.float64)
    ascent = dual_ascent(ces, start, project_simplex, step, iters, normalise=False)
    lp = mixture(ascent.averaged)
    return Solution(ascent.averaged, lp, ces(ascent.averaged), float(-grid.expect(lp, lp)), ascent)


def solve_alignment(
    log_q: Tensor, rewards: Tensor, thresholds: Tensor, grid: Grid2D, step: float = 0.5, iters: int = 2000
) -> Solution:
    r"""Reward alignment by dual ascent on the orthant: $\lambda \leftarrow [\lambda + \eta(b - \mathbb E_{q_\lambda}r)]_+$
    with the tilt $q_\lambda \propto q\,e^{\lambda\cdot r}$ (lesson 24, eqs. 24.1-24.2; the poster's sign is
    flipped).

    Parameters
    ----------
    log_q : Tensor, shape (n * n,)
        The pretrained log density on the grid.
    rewards : Tensor, shape (m, n * n)
        Each reward at the grid points.
    thresholds : Tensor, shape (m,)
        $b$.
    grid : Grid2D
    step : float
        $\eta$.
    iters : int
        Iterations.

    Returns
    -------
    Solution
        ``values`` are the expected rewards under the tilt, ``dual`` is $\lambda\cdot b - \log Z(\lambda)$ (which
        equals $\mathrm{KL}(q_\lambda\|q)$ where every active constraint is tight).

    Raises
    ------
    ValueError
        If ``rewards`` is not (m, n * n) or ``thresholds`` not (m,).
    """
    lq = grid.normalise(log_q.double())[0]
    r, b = rewards.double(), thresholds.double()
    if r.dim() != 2 or r.shape[1] != lq.shape[0] or b.shape != (r.shape[0],):
        raise ValueError(
            f"rewards must be (m, {lq.shape[0]}) and thresholds (m,), got {tuple(r.shape)}, {tuple(b.shape)}"
        )

    def tilt(lam: Tensor) -> tuple[Tensor, float]:
        return grid.normalise(lq + (lam[:, None] * r).sum(0))

    ascent = dual_ascent(
        lambda lam: b - grid.expect(tilt(lam)[0], r), torch.zeros_like(b), project_orthant, step, iters
    )
    log_t, log_z = tilt(ascent.averaged)
    return Solution(ascent.averaged, log_t, grid.expect(log_t, r), float(ascent.averaged @ b - log_z), ascent)


# ------------------------------------------------------------------------------------------------ score models
class PointwiseKL(NamedTuple):
    r"""What :func:`pointwise_kl` returns (lesson 24, eq. 24.7).

    Attributes
    ----------
    value : float
        The integral (plus ``terminal``), in nats.
    se : float
        Its Monte Carlo standard error over the samples (each sample's own integral; not the quadrature error).
    times : Tensor, shape (k,)
        The quadrature times.
    integrand : Tensor, shape (k,)
        $\tfrac{g_t^2}{2b_t^2}\,\mathbb E\lVert\Delta\hat\varepsilon\rVert^2$ at each.
    """

    value: float
    se: float
    times: Tensor
    integrand: Tensor


def pointwise_kl(
    p: Model,
    q: Model,
    schedule: Schedule,
    x0: Tensor,
    num_times: int = 50,
    t_min: float = 1e-3,
    t_max: float | None = None,
    terminal: float = 0.0,
    generator: torch.Generator | None = None,
) -> PointwiseKL:
    r"""$\mathrm{KL}(p_0\,\|\,q_0) = \int_0^T \tfrac12 g_t^2\,\mathbb E_{p_t}\lVert\nabla\log p_t - \nabla\log q_t\rVert^2
    \mathrm dt + \mathrm{KL}(p_T\|q_T)$ for two score models of one forward process (lesson 24, eq. 24.7).

    In noise units $\nabla\log p_t = -\hat\varepsilon_p/b_t$, so the weight on $\lVert\hat\varepsilon_p -
    \hat\varepsilon_q\rVert^2$ is $g_t^2/(2b_t^2)$ ($g_t^2$ of lesson 5, eq. 5.6). The expectation is over forward-noised
    samples $x_t = a_t x_0 + b_t\varepsilon$, $x_0 \sim p_0$ (one draw of $\varepsilon$ per sample and time), the
    integral a trapezoid on ``num_times`` log-spaced times. Exact only when both models are the true scores of their
    noised marginals. On a discrete schedule (a diffusers model's, say) it is the sum over the reverse steps of the
    KL between the two chains' Gaussian kernels with the shared variance $\beta_t^2$ (eq. 24.11), evaluated at
    log-spaced integer times and summed by the same trapezoid over unit steps.

    Parameters
    ----------
    p, q : Model
        The two models.
    schedule : Schedule
        The schedule both were trained on, continuous (eq. 24.7) or discrete (eq. 24.11).
    x0 : Tensor, shape (B, ...)
        Samples of $p_0$.
    num_times : int
        Quadrature points.
    t_min, t_max : float
        The range (default ``t_max``: the schedule's end, less 1e-3 of it, where $g_t$ may be infinite; on a
        discrete schedule the integers from ``max(1, ceil(t_min))`` to ``t_max`` or $T$).
    terminal : float
        $\mathrm{KL}(p_T\|q_T)$, added (0 when both end at the same prior).
    generator : torch.Generator, optional

    Returns
    -------
    PointwiseKL

    Raises
    ------
    TypeError, ValueError
        On invalid models, samples or times.
    """
    check_model(p)
    check_model(q)
    return _likelihood_weighted(
        lambda xt, t, eps: predict(p, xt, t, schedule, "eps") - predict(q, xt, t, schedule, "eps"),
        schedule, x0, num_times, t_min, t_max, terminal, generator,
    )  # fmt: skip


def _likelihood_weighted(diff, schedule, x0, num_times, t_min, t_max, terminal, generator) -> PointwiseKL:
    r"""$\int g_t^2/(2b_t^2)\,\mathbb E\lVert \mathrm{diff}(x_t, t, \varepsilon)\rVert^2\,\mathrm dt$ on log-spaced
    times over forward-noised ``x0``: the integral of eqs. 24.7 and 24.10, with its Monte Carlo s.e."""
    x0 = check_batch(x0, "x0")
    k = check_int(num_times, "num_times", 2)
    if schedule.discrete:  # integer times 1..T, log-spaced; the trapezoid over unit steps is the sum (24.11)
        t_lo, t_hi = max(1.0, math.ceil(t_min)), float(schedule.t_max if t_max is None else round(t_max))
    else:
        t_lo, t_hi = float(t_min), schedule.t_max * (1 - 1e-3) if t_max is None else float(t_max)
    if not 0 < t_lo < t_hi:
        raise ValueError(f"need 0 < t_min < t_max, got t_min={t_min}, t_max={t_hi}")
    times = torch.logspace(math.log10(t_lo), math.log10(t_hi), k, dtype=torch.float64)
    if schedule.discrete:
        times = torch.unique(torch.round(times))
    values = []
    with torch.no_grad():
        for t in times.tolist():
            if schedule.discrete:  # one reverse step t -> t-1 with the shared variance beta_t^2 (eq. 24.11)
                c = schedule.coefficients(torch.tensor([t - 1, t], dtype=torch.float64))
                (a0, a), (b0, b) = c.a.tolist(), c.b.tolist()
                alpha = a / a0
                weight = (b * b - alpha * alpha * b0 * b0) / (2 * alpha * alpha * b * b)
            else:
                c = schedule.coefficients(torch.tensor([t], dtype=torch.float64))
                a, b = float(c.a[0]), float(c.b[0])
                _, g2 = sde_coefficients(schedule, torch.tensor(t, dtype=torch.float64))
                weight = float(g2) / (2 * b * b)
            eps = torch.randn(x0.shape, generator=generator, dtype=torch.float64).to(x0.device, x0.dtype)
            d = diff(a * x0 + b * eps, t, eps)
            values.append(weight * d.double().square().flatten(1).sum(1))
    f = torch.stack(values)  # (k, B): every sample's integrand
    per_sample = torch.trapezoid(f, times, dim=0)
    se = float(per_sample.std() / math.sqrt(per_sample.numel())) if per_sample.numel() > 1 else math.nan
    return PointwiseKL(float(per_sample.mean()) + float(terminal), se, times, f.mean(1))


def dual_only_and(
    models: Sequence[Model],
    schedule: Schedule,
    start: Callable[[int], Tensor],
    grid: Tensor,
    step: float = 0.5,
    iters: int = 20,
    num_times: int = 30,
    generator: torch.Generator | None = None,
    lam0: Tensor | None = None,
) -> Ascent:
    r"""The paper's training-free AND (lesson 24, eq. 24.8): sample the weighted score sum
    $\sum_j\lambda_j\hat\varepsilon_j$ (:class:`~diffmath.guide.compose.Combine`), estimate each
    $\mathrm{KL}(p_\lambda\|q_i)$ by :func:`pointwise_kl` between the *sum* and model $i$ on its samples, and ascend
    on the simplex. For two models the estimates have the ratio $\lambda_2^2/\lambda_1^2$, so equal weights are the
    only fixed point whatever the models (sec. 24.6).

    Parameters
    ----------
    models : sequence of Model
        $m \ge 2$ models of one schedule.
    schedule : Schedule
        Their schedule.
    start : callable
        ``start(i) -> Tensor (B, ...)``: the sampler's start at iteration ``i``.
    grid : Tensor
        The sampling grid (DDIM).
    step : float
        $\eta$ on the normalised direction.
    iters : int
        Dual steps.
    num_times : int
        Quadrature points of each KL.
    generator : torch.Generator, optional
        For the KLs' noise.
    lam0 : Tensor, shape (m,), optional
        The start (default $1/m$).

    Returns
    -------
    Ascent

    Raises
    ------
    ValueError
        If fewer than two models are given (and as :func:`dual_ascent`, :func:`pointwise_kl`).
    """
    if len(models) < 2:
        raise ValueError(f"dual_only_and needs at least 2 models, got {len(models)}")
    calls = itertools.count()  # the iteration, for the sampler's start (dual_ascent checks iters)

    def direction(lam: Tensor) -> Tensor:
        i = next(calls)
        combined = Combine(list(models), lam.tolist(), "eps", schedule)
        x0 = sample(combined, start(i), grid, schedule)
        return torch.tensor(
            [pointwise_kl(combined, m, schedule, x0, num_times, generator=generator).value for m in models],
            dtype=torch.float64,
        )

    m = len(models)
    start_lam = torch.full((m,), 1.0 / m, dtype=torch.float64) if lam0 is None else lam0.double()
    return dual_ascent(direction, start_lam, project_simplex, step, iters, True)


class PrimalDual(NamedTuple):
    r"""What :func:`and_primal_dual` returns (lesson 24, sec. 24.6).

    Attributes
    ----------
    ascent : Ascent
        The multipliers at every round (``ascent.gradients``: the KLs of the trained model to each model).
    model : nn.Module
        The trained score model of the product, after the last round.
    """

    ascent: Ascent
    model: torch.nn.Module


def product_sampler(
    parts: Sequence[Model],
    schedule: Schedule,
    shape: Sequence[int],
    grid: Tensor,
    snr: float = 0.16,
    corrector_steps: int = 1,
    clip: float | None = None,
    dtype: torch.dtype | None = None,
) -> Callable[[Tensor, int, torch.Generator], Tensor]:
    r"""Draws of the weighted product $q_\lambda \propto \prod_i q_i^{\lambda_i}$ of score models by annealed Langevin
    (lesson 24, sec. 24.10): predictor-corrector sampling (lesson 6, sec. 6.5) of the score sum
    $\sum_i \lambda_i \nabla\log q_{i,t}$ (:class:`~diffmath.guide.compose.Combine` in noise units).

    The sum is the score of $\prod_i q_{i,t}^{\lambda_i}$, which is the noised product only at $t = 0$ (or when the
    parts differ by a shift alone, e.g. Gaussians of one covariance); the Langevin corrector pulls each state towards
    the sum's own law at its time, so at the last, small, time the draws approach $q_\lambda$ itself.

    Parameters
    ----------
    parts : sequence of Model
        The $m$ models, in one prediction-convertible family (their conditions bound by
        :class:`~diffmath.guide.compose.Conditioned`, for a batch of the ``num`` that will be asked).
    schedule : Schedule
        A continuous schedule shared by the parts.
    shape : sequence of int
        The shape of one sample, e.g. ``(2,)`` or ``(3, 24, 24)``.
    grid : Tensor, shape (K + 1,)
        Strictly decreasing times of the predictor (start where the sum is finite, e.g. ``t_start = 0.98``).
    snr, corrector_steps : float, int
        Of the Langevin corrector (:func:`~diffmath.sde.langevin_correct`, eq. 6.12).
    clip : float, optional
        Clamp the draws to ``[-clip, clip]`` (images live in $[-1, 1]$).
    dtype : torch.dtype, optional
        Of the draws (default: torch's default dtype).

    Returns
    -------
    callable
        ``draw(lam, num, generator)``: a tensor of shape ``(num, *shape)``.

    Raises
    ------
    TypeError, ValueError
        As :class:`~diffmath.guide.compose.Combine` and :func:`~diffmath.sde.predictor_corrector` (checked at once
        for ``snr``, ``corrector_steps``, ``grid`` and ``clip``).
    """
    check_positive(snr, "snr")
    check_int(corrector_steps, "corrector_steps")
    grid = check_grid(grid, schedule)
    if clip is not None:
        check_positive(clip, "clip")
    shape = tuple(int(v) for v in shape)

    def draw(lam: Tensor, num: int, generator: torch.Generator) -> Tensor:
        model = Combine(list(parts), [float(v) for v in lam], "eps", schedule)
        x = torch.randn(num, *shape, generator=generator, dtype=dtype or torch.get_default_dtype())
        steps = predictor_corrector(model, x, grid, schedule, snr, corrector_steps, generator=generator)
        x = final(steps)
        return x if clip is None else x.clamp(-clip, clip)

    return draw


def and_primal_dual(
    parts: Sequence,
    schedule: Schedule,
    net: torch.nn.Module,
    product: Grid2D | Callable[[Tensor, int, torch.Generator], Tensor],
    rounds: int = 8,
    steps: int = 400,
    num: int = 4096,
    step: float = 0.2,
    num_times: int = 30,
    batch_size: int = 256,
    lr: float = 2e-3,
    seed: int = 0,
    labels: Tensor | None = None,
) -> PrimalDual:
    r"""AND with its primal (lesson 24, Algorithm 24.1): alternate training a score model on draws of the product
    $q_\lambda$ and a dual step on its KLs to the models.

    Each round draws ``num`` samples of $q_\lambda \propto \prod_i q_i^{\lambda_i}$, trains ``net`` on them for
    ``steps`` DSM steps (warm-started from the previous round), estimates $\mathrm{KL}(p_\theta\|q_i)$ by
    :func:`pointwise_kl` between the trained model and each part on fresh draws of $q_\lambda$ (standing in for draws
    of $p_\theta$: close in 2-D, where the network fits the exact draws, an approximation on images), and ascends on
    the simplex (eq. 24.3). The primal is DSM on samples of $q_\lambda$ because on the simplex
    $\sum_i\lambda_i\mathrm{KL}(p\|q_i) = \mathrm{KL}(p\|q_\lambda) - \log Z$. In 2-D the draws are exact, from a grid;
    for any other models they come from a sampler of the product such as :func:`product_sampler`.

    Parameters
    ----------
    parts : sequence of GaussianMixture or Model
        The $m \ge 2$ models: exact 2-D mixtures when ``product`` is a grid (their densities on the grid, their
        scores for the KLs), else any models with the one interface (conditions bound for ``num`` samples).
    schedule : Schedule
        A continuous schedule for training and the KLs.
    net : nn.Module
        The score model to train (e.g. a :class:`~diffmath.nets.mlp.MLP` of 2-D data, or a copy of a part's UNet).
    product : Grid2D or callable
        Where the product is evaluated and sampled exactly, or ``draw(lam, num, generator)`` returning ``num``
        draws of $q_\lambda$ (sample ``k`` asked with row ``k`` of the parts' conditions and of ``labels``).
    rounds, steps, num : int
        Dual rounds, DSM steps per round, draws per round.
    step : float
        $\eta$ on the normalised KLs.
    num_times : int
        Quadrature points of each KL.
    batch_size, lr : int, float
        Of the DSM training.
    seed : int
        Seeds the draws, the training and the KLs.
    labels : Tensor of int, shape (num,) or (num, L), optional
        The condition of ``net`` for each draw: it is trained with them (no dropout) and its KLs are taken as
        ``Conditioned(net, labels)``.

    Returns
    -------
    PrimalDual

    Raises
    ------
    TypeError
        If ``product`` is neither a :class:`Grid2D` nor callable.
    ValueError
        If fewer than two parts are given, ``labels`` do not have ``num`` rows (and as :func:`dual_ascent`,
        :func:`~diffmath.train.training.train`).
    """
    if len(parts) < 2:
        raise ValueError(f"and_primal_dual needs at least 2 models, got {len(parts)}")
    check_int(num, "num")
    if labels is not None and (not isinstance(labels, Tensor) or labels.shape[:1] != (num,)):
        raise ValueError(f"labels must be a tensor with num = {num} rows, one per draw")
    g = torch.Generator().manual_seed(seed)
    if isinstance(product, Grid2D):
        log_q = _log_densities(torch.stack([mix.log_prob(product.points) for mix in parts]), product)
        models = [mix.model(schedule, "eps") for mix in parts]

        def draw(lam: Tensor, n: int, gen: torch.Generator) -> Tensor:
            return product.sample(_and_product(log_q, product, lam)[0], n, gen)

    elif callable(product):
        models, draw = [check_model(p) for p in parts], product
    else:
        raise TypeError(
            f"product must be a Grid2D or a callable draw(lam, num, generator), got {type(product).__name__}"
        )
    trained = net if labels is None else Conditioned(net, labels)
    rnd = itertools.count()  # the round, for the training seed (dual_ascent checks rounds)

    def direction(lam: Tensor) -> Tensor:
        r = next(rnd)
        data = draw(lam, num, g).detach()
        fit(net, data, schedule, steps, batch_size=batch_size, lr=lr, ema_decay=None, seed=seed + r, labels=labels,
            progress=False)  # fmt: skip
        x0 = draw(lam, num, g).detach()
        with torch.no_grad():
            kls = [pointwise_kl(trained, e, schedule, x0, num_times, generator=g).value for e in models]
        return torch.tensor(kls, dtype=torch.float64)

    m = len(parts)
    ascent = dual_ascent(direction, torch.full((m,), 1.0 / m, dtype=torch.float64), project_simplex, step, rounds, True)
    return PrimalDual(ascent, net)


def align_primal_dual(
    data: Tensor,
    rewards: Callable[[Tensor], Tensor],
    thresholds: Tensor,
    schedule: Schedule,
    net: torch.nn.Module,
    rounds: int = 10,
    steps: int = 300,
    num: int = 4096,
    step: float = 0.5,
    num_samples: int = 4000,
    sample_steps: int = 40,
    batch_size: int = 256,
    lr: float = 2e-3,
    seed: int = 0,
) -> PrimalDual:
    r"""Reward alignment with its primal (lesson 24, Algorithm 24.3): importance-weighted DSM towards the tilt
    $q_\lambda \propto q\,e^{\lambda\cdot r}$, and the dual step on the trained model's expected rewards.

    Each round resamples ``num`` training points from ``data`` (draws of the pretrained $q$) with weights
    $\propto e^{\lambda\cdot r(x)}$, an unbiased estimate of the weighted DSM loss whose minimiser is the score of
    $q_\lambda$; trains ``net`` on them (warm-started); draws ``num_samples`` from the trained model by DDIM on a
    ``sample_steps`` grid; and takes $\lambda \leftarrow [\lambda + \eta\,(b - \widehat{\mathbb E}_{p_\theta} r)]_+$
    (eq. 24.2, with the model's own samples in place of the exact tilt).

    Parameters
    ----------
    data : Tensor, shape (N, ...)
        Draws of the pretrained distribution $q$.
    rewards : callable
        ``rewards(x) -> Tensor (B, m)``: the $m$ rewards of a batch.
    thresholds : Tensor, shape (m,)
        $b$.
    schedule : Schedule
        The forward process of the DSM training and of the sampler.
    net : nn.Module
        The model to train.
    rounds, steps, num : int
        Dual rounds, DSM steps per round, resampled training points per round.
    step : float
        $\eta$, in units of the rewards.
    num_samples, sample_steps : int
        Model samples per round for the expected rewards, and their DDIM steps.
    batch_size, lr : int, float
        Of the DSM training.
    seed : int
        Seeds the resampling, the training and the samples.

    Returns
    -------
    PrimalDual
        ``ascent.gradients`` are the slacks $b - \widehat{\mathbb E}\,r$ at each round.

    Raises
    ------
    TypeError
        If ``rewards`` is not callable.
    ValueError
        If ``data`` is not a batch, ``thresholds`` is not 1-D, or ``rewards`` returns something other than (B, m).
    """
    b = _thresholds(thresholds)
    reward = _reward_fn(rewards, b.numel())
    data = check_batch(data, "data")
    r_data = reward(data)
    g = torch.Generator().manual_seed(seed)
    rnd = itertools.count()  # the round, for the training seed (dual_ascent checks rounds)
    grid = schedule.grid(sample_steps)
    dtype = next(net.parameters()).dtype
    c = schedule.coefficients(grid[:1])
    scale = float(torch.sqrt(c.a**2 + c.b**2))  # the prior's spread at grid[0]

    def direction(lam: Tensor) -> Tensor:
        r = next(rnd)
        w = torch.softmax(r_data @ lam, 0)  # importance weights of the tilt, self-normalised
        idx = torch.multinomial(w, num, replacement=True, generator=g)
        fit(net, data[idx], schedule, steps, batch_size=batch_size, lr=lr, ema_decay=None, seed=seed + r,
            progress=False)  # fmt: skip
        x_T = scale * torch.randn((num_samples, *data.shape[1:]), generator=g, dtype=dtype)
        with torch.no_grad():
            x0 = sample(net, x_T, grid, schedule)
        return b - reward(x0).mean(0)

    ascent = dual_ascent(direction, torch.zeros_like(b), project_orthant, step, rounds)
    return PrimalDual(ascent, net)


def denoising_bound(
    model: Model,
    schedule: Schedule,
    x0: Tensor,
    num_times: int = 50,
    t_min: float = 1e-3,
    t_max: float | None = None,
    generator: torch.Generator | None = None,
) -> PointwiseKL:
    r"""The likelihood-weighted denoising loss, a bound on the cross-entropy $-\mathbb E_{q}\log p_\theta$ up to a
    constant that is the same for every data set (lesson 24, eq. 24.10):
    $\int \tfrac{g_t^2}{2b_t^2}\,\mathbb E\lVert\varepsilon - \hat\varepsilon_\theta(x_t, t)\rVert^2\,\mathrm dt$
    over forward-noised samples of $q$. Differences between data sets estimate differences of cross-entropies, which is
    all the OR dual needs (the simplex projection removes a common constant).

    Parameters
    ----------
    model : Model
        The trained model.
    schedule : Schedule
        A continuous schedule.
    x0 : Tensor, shape (B, ...)
        Samples of one data set.
    num_times, t_min, t_max, generator
        As :func:`pointwise_kl` (use the same for every data set: common random numbers).

    Returns
    -------
    PointwiseKL
        The integral and its Monte Carlo s.e.

    Raises
    ------
    TypeError, ValueError
        On an invalid model, samples or times.
    """
    check_model(model)
    return _likelihood_weighted(
        lambda xt, t, eps: eps - predict(model, xt, t, schedule, "eps"),
        schedule, x0, num_times, t_min, t_max, 0.0, generator,
    )  # fmt: skip


def or_primal_dual(
    datasets: Sequence[Tensor],
    schedule: Schedule,
    net: torch.nn.Module,
    rounds: int = 10,
    steps: int = 300,
    num: int = 4096,
    step: float = 0.2,
    num_times: int = 30,
    batch_size: int = 256,
    lr: float = 2e-3,
    seed: int = 0,
) -> PrimalDual:
    r"""OR with its primal (lesson 24, Algorithm 24.2): train one model on the $\lambda$-mixture of the data sets and
    ascend on their cross-entropy bounds.

    Each round trains ``net`` (warm-started) on ``num`` points drawn from data set $i$ with probability $\lambda_i$,
    which is DSM on $\sum_i\lambda_i q_i$; estimates each data set's :func:`denoising_bound` on a held-out half with one
    shared noise; and takes the step $\lambda \leftarrow \Pi_\Delta(\lambda + \eta\,\widehat{\mathrm{CE}})$
    (eq. 24.6).

    Parameters
    ----------
    datasets : sequence of Tensor, each (N_i, ...)
        $m \ge 2$ data sets; the first half of each trains, the second half measures.
    schedule : Schedule
        A continuous schedule.
    net : nn.Module
        The model to train.
    rounds, steps, num : int
        Dual rounds, DSM steps per round, training points per round.
    step : float
        $\eta$ (in nats: the bounds' differences are cross-entropy differences).
    num_times : int
        Quadrature points of each bound.
    batch_size, lr : int, float
        Of the DSM training.
    seed : int
        Seeds the draws, the training and the bounds.

    Returns
    -------
    PrimalDual
        ``ascent.gradients`` are the bounds at each round.

    Raises
    ------
    ValueError
        If fewer than two data sets are given or one has fewer than 4 points.
    """
    if len(datasets) < 2:
        raise ValueError(f"or_primal_dual needs at least 2 data sets, got {len(datasets)}")
    sets = [check_batch(x, f"datasets[{i}]") for i, x in enumerate(datasets)]
    if min(x.shape[0] for x in sets) < 4:
        raise ValueError("every data set needs at least 4 points (half to train, half to measure)")
    train_sets = [x[: x.shape[0] // 2] for x in sets]
    test_sets = [x[x.shape[0] // 2 :] for x in sets]
    g = torch.Generator().manual_seed(seed)
    rnd = itertools.count()  # the round, for the training seed (dual_ascent checks rounds)

    def direction(lam: Tensor) -> Tensor:
        r = next(rnd)
        which = torch.multinomial(lam, num, replacement=True, generator=g)
        parts = []
        for i, xs in enumerate(train_sets):
            k = int((which == i).sum())
            parts.append(xs[torch.randint(xs.shape[0], (k,), generator=g)])
        fit(net, torch.cat(parts), schedule, steps, batch_size=batch_size, lr=lr, ema_decay=None, seed=seed + r,
            progress=False)  # fmt: skip
        bounds = []
        for xs in test_sets:
            common = torch.Generator().manual_seed(seed + 7919 * (r + 1))  # one noise for every data set
            bounds.append(denoising_bound(net, schedule, xs, num_times, generator=common).value)
        return torch.tensor(bounds, dtype=torch.float64)

    m = len(sets)
    ascent = dual_ascent(direction, torch.full((m,), 1.0 / m, dtype=torch.float64), project_simplex, step, rounds)
    return PrimalDual(ascent, net)


# ------------------------------------------------------------------------------------ fine-tuning through the sampler
class PathKL(NamedTuple):
    r"""What :func:`sampler_path_kl` returns (lesson 24, eq. 24.12).

    Attributes
    ----------
    x : Tensor, shape (B, ...)
        The ancestral sampler's output at the grid's last time.
    kl : Tensor, shape (B,)
        Each sample's path KL to the reference chain over the counted steps, in nats (differentiable with ``grad``).
    """

    x: Tensor
    kl: Tensor


_ANCESTRAL = ddim_rule(1.0)  # the DDPM step (eta = 1, posterior variance): the chain whose path KL is eq. 24.12


def sampler_path_kl(
    model: Model,
    reference: Model,
    x: Tensor,
    grid: Tensor,
    schedule: Schedule,
    *,
    last: int | None = None,
    noise: Noise = None,
    grad: bool = False,
    cond: Tensor | None = None,
    early: Model | None = None,
) -> PathKL:
    r"""Sample ``model`` by the ancestral (DDPM) sampler and add up, along its own path, the KL of each of its steps to
    the step the ``reference`` would take from the same state (lesson 24, eq. 24.12):
    $\sum_i \lVert\mu_\theta(x_{t_i}) - \mu_{\rm ref}(x_{t_i})\rVert^2 / 2\sigma_i^2$.

    Both chains share the step's standard deviation $\sigma_i$ (:func:`~diffmath.sampling.samplers.ddim_rule` at
    $\eta = 1$), so by the chain rule of KL the sum's mean is the KL of the two samplers' paths, which bounds the KL
    of their states at the grid's last noisy time. The step into the data ($b_s = 0$) adds no noise and counts
    nothing. With ``last = K`` only the last $K$ steps are counted and, with ``grad``, differentiated (the others run
    without autograd): the truncated gradient of fine-tuning through the last sampler steps. With ``early =
    reference`` the uncounted steps are the reference's: the sampler hands over to ``model`` for its last $K$ steps,
    its path KL is the counted sum, and the truncated gradient is its exact gradient.

    Parameters
    ----------
    model : Model
        The model sampled (e.g. a network being fine-tuned).
    reference : Model
        The model whose chain the KL is taken to (the pretrained $q$), evaluated at ``model``'s states.
    x : Tensor, shape (B, ...)
        The state at ``grid[0]``.
    grid : Tensor
        The sampler's decreasing times (:func:`~diffmath.sampling.loop.check_grid`).
    schedule : Schedule
        The forward process both models were trained on.
    last : int, optional
        Count (and differentiate) only the last ``last`` steps, ``1 <= last <= K``; ``None``: all.
    noise : Noise, optional
        The steps' fresh noise (:func:`~diffmath.sampling.loop.noise_source`).
    grad : bool
        Keep autograd on through the counted steps.
    cond : Tensor, optional
        Passed to both models.
    early : Model, optional
        The model of the uncounted steps (default ``model``; ``reference`` for the hand-over sampler).

    Returns
    -------
    PathKL

    Raises
    ------
    TypeError
        If either model does not follow the one interface, or ``last`` is not an integer.
    ValueError
        If ``last`` is outside ``1..K`` or counts no step that adds noise (``last = 1`` on a grid that ends at the
        data), and as :func:`~diffmath.sampling.loop.run`.
    """
    check_model(reference)
    early = model if early is None else check_model(early)
    g = check_grid(grid, schedule)
    k = len(g) - 1
    counted = k if last is None else check_int(last, "last", 1)
    if counted > k:
        raise ValueError(f"last must be at most the grid's {k} steps, got {last}")
    draw = noise_source(noise, k)
    x = check_batch(x, "x")
    if counted < k:  # the uncounted steps, without autograd
        x = final(run(early, x, g[: k - counted + 1], schedule, _ANCESTRAL, cond=cond, noise=lambda i, y: draw(i, y)))
        x = x.detach()
    offset = k - counted
    noisy = 0  # counted steps that add noise
    kl = torch.zeros(x.shape[0], dtype=torch.float64 if x.dtype == torch.float64 else torch.float32, device=x.device)

    def on_mean(mean: Tensor, y: Tensor, step, state: dict):
        nonlocal kl, noisy
        time = torch.full((y.shape[0],), step.t, device=y.device,
                          dtype=y.dtype if y.dtype in (torch.float32, torch.float64) else torch.float32)  # fmt: skip
        ref = denoise(reference, y, time, (step.a_t, step.b_t, step.da_t, step.db_t), cond)
        ref_mean, std, _ = _ANCESTRAL(ref, y, step, {})
        if std > 0:  # the deterministic step into the data counts nothing
            kl = kl + (mean - ref_mean).flatten(1).pow(2).sum(1).to(kl.dtype) / (2 * std**2)
            noisy += 1
        return mean, state

    steps = run(model, x, g[offset:], schedule, _ANCESTRAL, cond=cond, noise=lambda i, y: draw(i + offset, y),
                on_mean=on_mean, grad=grad)  # fmt: skip
    x = final(steps)
    if noisy == 0:
        raise ValueError(
            f"last = {counted} counts only steps that add no noise (the step into the data): their KL is not "
            "defined and nothing would hold the model to the reference; count at least one noisy step (last >= 2)"
        )
    return PathKL(x, kl)


def _reward_fn(rewards: object, m: int) -> Callable[[Tensor], Tensor]:
    """``rewards`` checked to return (B, m), the values in float64 (shared by the two alignment primals)."""
    if not callable(rewards):
        raise TypeError(f"rewards must be callable as rewards(x) -> (B, m), got {type(rewards).__name__}")

    def reward(x: Tensor) -> Tensor:
        r = rewards(x)
        if not isinstance(r, Tensor) or r.shape != (x.shape[0], m):
            raise ValueError(f"rewards(x) must return a ({x.shape[0]}, {m}) tensor, got {getattr(r, 'shape', r)}")
        return r.double()

    return reward


def _thresholds(thresholds: object) -> Tensor:
    b = torch.as_tensor(thresholds, dtype=torch.float64)
    if b.dim() != 1 or b.numel() < 1:
        raise ValueError(f"thresholds must be a 1-D tensor of m >= 1 reward levels, got shape {tuple(b.shape)}")
    return b


class RewardLoss:
    r"""The fine-tuning primal of reward alignment at a fixed multiplier (lesson 24, eq. 24.13): on a batch of prior
    draws, $\mathbb E[\mathrm{KL}_{\rm path} - \lambda\cdot r(x_0)]$ of the model's ancestral samples, with the path KL
    to the frozen reference by :func:`sampler_path_kl`, differentiated through the last ``last`` steps.

    An objective for :func:`~diffmath.train.training.train` (``loss=``), whose "data" is a bank of prior draws.

    Parameters
    ----------
    reference : Model
        The pretrained model $q$ (frozen: its parameters are not trained).
    schedule : Schedule
        The forward process.
    rewards : callable
        ``rewards(x) -> Tensor (B, m)``, differentiable in ``x``.
    lam : Tensor, shape (m,)
        The multipliers $\lambda \ge 0$.
    grid : Tensor
        The ancestral sampler's times.
    last : int, optional
        Differentiate through the last ``last`` steps only (``None``: all).
    handover : bool
        The uncounted steps are the reference's (``early = reference`` of :func:`sampler_path_kl`): the model
        fine-tuned is the one of the last ``last`` steps alone, and the truncated gradient is exact.

    Raises
    ------
    TypeError
        If ``reference`` does not follow the one interface or ``rewards`` is not callable.
    ValueError
        If ``lam`` is not a 1-D tensor of finite values >= 0.
    """

    def __init__(self, reference: Model, schedule: Schedule, rewards: Callable, lam: Tensor, grid: Tensor,
                 last: int | None = None, handover: bool = False) -> None:  # fmt: skip
        self.reference, self.schedule, self.grid, self.last = check_model(reference), schedule, grid, last
        self.early = reference if handover else None
        lam = torch.as_tensor(lam, dtype=torch.float64)
        if lam.dim() != 1 or not torch.isfinite(lam).all() or (lam < 0).any():
            raise ValueError(f"lam must be a 1-D tensor of finite multipliers >= 0, got {lam.tolist()}")
        self.lam, self.reward = lam, _reward_fn(rewards, lam.numel())

    def __call__(self, model: torch.nn.Module, x: Tensor, generator, cond: Tensor | None = None) -> Tensor:
        draws = as_draws(generator)
        out = sampler_path_kl(model, self.reference, x, self.grid, self.schedule, last=self.last, grad=True,
                              cond=cond, noise=lambda i, y: draws.randn(y.shape, y.dtype, y.device),
                              early=self.early)  # fmt: skip
        r = self.reward(out.x) @ self.lam.to(out.x.device)
        return (out.kl.double() - r).mean().to(out.x.dtype)

    def __repr__(self) -> str:
        lam = ", ".join(f"{v:.6g}" for v in self.lam.tolist())
        hand = ", handover" if self.early is not None else ""
        return f"RewardLoss(lam=[{lam}], steps={len(self.grid) - 1}, last={self.last}{hand})"


class Alignment(NamedTuple):
    r"""What :func:`align_finetune` returns (lesson 24, Algorithm 24.4).

    Attributes
    ----------
    ascent : Ascent
        The multipliers at every round; ``ascent.gradients`` are the slacks $b - \widehat{\mathbb E}\,r$.
    model : nn.Module
        The fine-tuned model after the last round.
    rewards : Tensor, shape (rounds, m)
        The model's mean rewards after each round's primal.
    kl : Tensor, shape (rounds,)
        Its mean path KL to the reference after each round, in nats (eq. 24.12, all steps of the sampler; with
        ``handover`` the sampler is the reference's until the last ``last`` steps, as :func:`sampler_path_kl` with
        ``early = reference`` draws it).
    """

    ascent: Ascent
    model: torch.nn.Module
    rewards: Tensor
    kl: Tensor


def align_finetune(
    reference: Model,
    net: torch.nn.Module,
    rewards: Callable[[Tensor], Tensor],
    thresholds: Tensor,
    schedule: Schedule,
    prior: Tensor,
    grid: Tensor,
    rounds: int = 8,
    steps: int = 100,
    step: float = 0.5,
    last: int | None = None,
    num_samples: int = 1024,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    handover: bool = False,
) -> Alignment:
    r"""Reward alignment with the fine-tuning primal (lesson 24, Algorithm 24.4): gradient steps on
    $\mathrm{KL}_{\rm path} - \lambda\cdot r$ through the ancestral sampler (:class:`RewardLoss`), and the dual step on
    the fine-tuned model's expected rewards.

    Each round trains ``net`` (warm-started; start it as a copy of ``reference``) for ``steps`` Adam steps of
    :class:`RewardLoss` on batches of ``prior`` draws, samples ``num_samples`` of them by the same sampler, reads
    their mean rewards and path KL, and takes $\lambda \leftarrow [\lambda + \eta\,(b - \widehat{\mathbb E}\,r)]_+$
    (eq. 24.2). Unlike the importance-weighted primal (:func:`align_primal_dual`) it needs no draws of $q$ and can
    reach rewards the pretrained samples rarely show; with ``last`` < ``num_steps`` it is the truncated
    backpropagation of the paper's image primal.

    Parameters
    ----------
    reference : Model
        The pretrained model $q$.
    net : nn.Module
        The model to fine-tune, a trainable copy of ``reference``.
    rewards : callable
        ``rewards(x) -> Tensor (B, m)``, differentiable in ``x``.
    thresholds : Tensor, shape (m,)
        $b$.
    schedule : Schedule
        The forward process.
    prior : Tensor, shape (N, ...)
        Draws of the sampler's start at ``grid[0]``, at least ``num_samples`` (the first ``num_samples`` score each
        round; every row trains).
    grid : Tensor
        The ancestral sampler's decreasing times (e.g. ``schedule.grid(20, t_start=0.98)`` for an eps-model on
        VP-cosine, whose $a$ is 0 at $t = 1$).
    rounds, steps : int
        Dual rounds and Adam steps per round.
    step : float
        $\eta$, in units of the rewards.
    last : int, optional
        How many of the sampler's last steps are differentiated (``None``: all).
    num_samples, batch_size, lr : int, int, float
        Samples per round for the dual step; the primal's batch and learning rate (cosine decay in each round).
    seed : int
        Seeds the primal's draws and the scoring noise.
    handover : bool
        Sample by the reference until the last ``last`` steps and by ``net`` in them (:func:`sampler_path_kl` with
        ``early = reference``): the truncated gradient is then the exact one, and the earlier steps cannot drift.

    Returns
    -------
    Alignment

    Raises
    ------
    TypeError
        If ``rewards`` is not callable or a model does not follow the one interface.
    ValueError
        If ``thresholds`` is not 1-D, ``prior`` holds fewer than ``num_samples`` draws, ``rewards`` returns
        something other than (B, m), ``handover`` is asked without ``last``, and as
        :func:`~diffmath.train.training.train`.
    """
    b = _thresholds(thresholds)
    reward = _reward_fn(rewards, b.numel())
    check_model(reference)
    if net is reference:
        raise ValueError("net must be a trainable copy of reference, not the reference itself (its chain is the KL's)")
    prior = check_batch(prior, "prior")
    num_samples = check_int(num_samples, "num_samples", 1)
    if prior.shape[0] < num_samples:
        raise ValueError(f"prior must hold at least num_samples = {num_samples} draws, got {prior.shape[0]}")
    grid = check_grid(grid, schedule)
    if handover and last is None:
        raise ValueError("handover needs last: the number of final steps taken by net")
    scored = {"last": last, "early": reference} if handover else {}
    rnd = itertools.count()
    means, kls = [], []

    def direction(lam: Tensor) -> Tensor:
        r = next(rnd)
        loss = RewardLoss(reference, schedule, rewards, lam, grid, last, handover)
        fit(net, prior, None, steps, batch_size=batch_size, lr=lr, ema_decay=None, seed=seed + r, loss=loss,
            progress=False)  # fmt: skip
        g = torch.Generator().manual_seed(seed + 7919 * (r + 1))
        with torch.no_grad():
            out = sampler_path_kl(net, reference, prior[:num_samples], grid, schedule, noise=g, **scored)
        means.append(reward(out.x).mean(0))
        kls.append(out.kl.double().mean())
        return b - means[-1]

    ascent = dual_ascent(direction, torch.zeros_like(b), project_orthant, step, rounds)
    return Alignment(ascent, net, torch.stack(means), torch.stack(kls))
