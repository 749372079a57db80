r"""Sample-quality metrics for comparing a batch of samples with data (lesson 0, sec. 0.7)."""

from __future__ import annotations

import torch
from torch import Tensor

from diffmath._validate import check_batch
from diffmath.exact import GaussianMixture


def _pair(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    x, y = check_batch(x, "x"), check_batch(y, "y")
    if x.shape[1:] != y.shape[1:]:
        raise ValueError(f"x and y must have the same event shape, got {tuple(x.shape[1:])} and {tuple(y.shape[1:])}")
    return x.reshape(x.shape[0], -1).double(), y.reshape(y.shape[0], -1).double()


def sliced_w1(x: Tensor, y: Tensor, num_projections: int = 256, generator: torch.Generator | None = None) -> float:
    r"""Sliced Wasserstein-1 distance between two samples (lesson 0, eq. 0.21).

    $\mathrm{SW}_1(p, q) = \mathbb E_{\theta\sim U(S^{d-1})}\, W_1(\theta^\top_\# p, \theta^\top_\# q)$, each 1-D
    $W_1$ computed exactly from quantiles (both samples are interpolated onto a common set of quantile levels).

    Parameters
    ----------
    x, y : Tensor, shape (N, ...) and (M, ...)
        The two samples, of the same event shape.
    num_projections : int
        Random directions, drawn from ``generator``.
    generator : torch.Generator, optional
        Source of the random directions.

    Returns
    -------
    float
        The Monte Carlo estimate of $\mathrm{SW}_1$.

    Raises
    ------
    TypeError
        If ``x`` or ``y`` is not a floating tensor.
    ValueError
        If ``x`` or ``y`` has fewer than 2 dimensions or holds NaN or infinity, or their event shapes differ.
    """
    x, y = _pair(x, y)
    theta = torch.randn(x.shape[1], num_projections, generator=generator, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    px, _ = torch.sort(x @ theta, dim=0)
    py, _ = torch.sort(y @ theta, dim=0)
    n = max(x.shape[0], y.shape[0])
    q = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    return (_quantile(px, q) - _quantile(py, q)).abs().mean().item()


def _quantile(sorted_proj: Tensor, q: Tensor) -> Tensor:
    n = sorted_proj.shape[0]
    pos = q * n - 0.5
    lo = pos.floor().clamp(0, n - 1).long()
    hi = (lo + 1).clamp(max=n - 1)
    frac = (pos - lo.double()).clamp(0, 1)[:, None]
    return sorted_proj[lo] * (1 - frac) + sorted_proj[hi] * frac


def mmd_rbf(x: Tensor, y: Tensor, bandwidth: float = 0.3) -> float:
    r"""Unbiased squared maximum mean discrepancy with the kernel $k(u,v) = e^{-\|u-v\|^2/(2h^2)}$ (lesson 0, eq. 0.22).

    Parameters
    ----------
    x, y : Tensor, shape (N, ...) and (M, ...), N, M >= 2
        The two samples, of the same event shape.
    bandwidth : float
        Kernel width $h$.

    Returns
    -------
    float
        $\widehat{\mathrm{MMD}}^2_u$ (can be slightly negative when the distributions agree).

    Raises
    ------
    TypeError
        If ``x`` or ``y`` is not a floating tensor.
    ValueError
        If ``x`` or ``y`` has fewer than 2 dimensions or holds NaN or infinity, or their event shapes differ,
        either has fewer than two samples, or ``bandwidth`` is not positive.
    """
    x, y = _pair(x, y)
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError("mmd_rbf needs at least two samples on each side")
    if not bandwidth > 0:
        raise ValueError(f"bandwidth must be positive, got {bandwidth}")

    def k(u: Tensor, v: Tensor) -> Tensor:
        return torch.exp(-(torch.cdist(u, v) ** 2) / (2 * bandwidth**2))

    n, m = x.shape[0], y.shape[0]
    kxx = (k(x, x).sum() - n) / (n * (n - 1))
    kyy = (k(y, y).sum() - m) / (m * (m - 1))
    return (kxx + kyy - 2 * k(x, y).mean()).item()


def mode_weights(gmm: GaussianMixture, x: torch.Tensor) -> torch.Tensor:
    r"""Fraction of the samples ``x`` (shape (N, ...)) whose most probable component $\arg\max_k p(k\mid x_0)$ is each
    component $k$ of the mixture (lesson 0, eq. 0.19 at $a = 1, b = 0$); shape (K,).

    Parameters
    ----------
    gmm : GaussianMixture
        The mixture whose components are the modes.
    x : Tensor, shape (N, *event_shape)
        Samples.

    Returns
    -------
    Tensor, shape (K,), float64
        Fractions summing to one.

    Raises
    ------
    TypeError
        If ``x`` is not a floating tensor.
    ValueError
        If ``x`` does not have the mixture's event shape or holds NaN or infinity.
    """
    k = gmm.component_posterior(x, 1.0, 0.0).argmax(1)
    return torch.bincount(k, minlength=gmm.K).double() / x.shape[0]
