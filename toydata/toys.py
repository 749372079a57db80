r"""Two-dimensional toy data sets, generated from a seedable ``torch.Generator`` (nothing is downloaded).

Each sampler returns a tensor of shape ``(n, 2)``. The Gaussian-mixture toys also come as exact models
(:class:`diffmath.GaussianMixture`), whose noised score is known in closed form (lesson 0, sec. 0.6).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from diffmath.core._validate import check_dtype, check_int, check_positive
from diffmath.exact.mixtures import GaussianMixture
from diffmath.masking import TokenLaw

Generator = torch.Generator | None


def _check_n(n: object, name: str = "n") -> int:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"{name} must be a positive integer, got {n!r}")
    return n


def _uniform(n: int, generator: Generator, *shape: int) -> Tensor:
    """Uniform draws of shape (n, *shape), default (n, 1)."""
    return torch.rand(n, *(shape or (1,)), generator=generator, dtype=torch.float64)


def _normal(n: int, generator: Generator, *shape: int) -> Tensor:
    """Standard normal draws of shape (n, *shape), default (n, 1)."""
    return torch.randn(n, *(shape or (1,)), generator=generator, dtype=torch.float64)


def _out(x: Tensor, dtype: torch.dtype | None) -> Tensor:
    return x.to(check_dtype(dtype) or torch.get_default_dtype())


def eight_gaussians_mixture(radius: float = 2.0, std: float = 0.15, num_modes: int = 8) -> GaussianMixture:
    r"""Equal-weight Gaussians of standard deviation ``std`` on a circle of ``radius`` (lesson 0, sec. 0.6).

    Parameters
    ----------
    radius : float
        Radius of the circle of means.
    std : float
        Standard deviation of each component.
    num_modes : int
        Number of components, evenly spaced in angle.

    Returns
    -------
    GaussianMixture
        In 2-D, isotropic covariances.

    Raises
    ------
    ValueError
        If ``radius`` or ``std`` is not a positive finite number, or ``num_modes`` is not a positive integer.
    """
    radius, std = check_positive(radius, "radius"), check_positive(std, "std")
    num_modes = _check_n(num_modes, "num_modes")
    ang = 2 * math.pi * torch.arange(num_modes, dtype=torch.float64) / num_modes
    means = radius * torch.stack([torch.cos(ang), torch.sin(ang)], 1)
    w = torch.full((num_modes,), 1.0 / num_modes, dtype=torch.float64)
    return GaussianMixture(w, means, torch.full((num_modes,), std**2, dtype=torch.float64))


def random_mixture(
    num_components: int, dim: int, generator: Generator = None, cov: str = "full", scale: float = 2.0
) -> GaussianMixture:
    r"""A random Gaussian mixture in ``dim`` dimensions with ``cov`` in {"full", "diag", "isotropic"} (lesson 0, sec. 0.6).

    Means are $\mathcal N(0, \text{scale}^2 I)$, weights Dirichlet(2), and covariances well conditioned
    (eigenvalues in $[0.05, 0.5]$), so tests in float64 stay far from singular.

    Parameters
    ----------
    num_components : int
        Number of components $K$.
    dim : int
        Dimension $d$.
    generator : torch.Generator, optional
        Source of randomness.
    cov : {"full", "diag", "isotropic"}
        Covariance structure.
    scale : float
        Standard deviation of the means.

    Returns
    -------
    GaussianMixture

    Raises
    ------
    ValueError
        If ``num_components`` or ``dim`` is not a positive integer, ``cov`` is unknown, or ``scale`` is not a
        positive finite number.
    """
    K, d = _check_n(num_components, "num_components"), _check_n(dim, "dim")
    scale = check_positive(scale, "scale")
    if cov not in ("full", "diag", "isotropic"):
        raise ValueError(f"cov must be 'full', 'diag' or 'isotropic', got {cov!r}")
    means = scale * _normal(K, generator, d)
    w = -torch.log(_uniform(K, generator, 2)).sum(1)  # Gamma(2, 1) draws
    w = w / w.sum()
    lam = 0.05 + 0.45 * _uniform(K, generator, d)
    if cov == "isotropic":
        covs = lam[:, 0]
    elif cov == "diag":
        covs = lam
    elif cov == "full":
        q, _ = torch.linalg.qr(_normal(K, generator, d, d))
        covs = q @ torch.diag_embed(lam) @ q.transpose(1, 2)
        covs = 0.5 * (covs + covs.transpose(1, 2))
    else:
        raise ValueError(f"cov must be 'full', 'diag' or 'isotropic', got {cov!r}")
    return GaussianMixture(w, means, covs)


def eight_gaussians(
    n: int,
    generator: Generator = None,
    radius: float = 2.0,
    std: float = 0.15,
    dtype: torch.dtype | None = None,
    labels: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """``n`` samples of the 8-Gaussian ring (radius 2, std 0.15 by default; lesson 0, sec. 0.6).

    Parameters
    ----------
    n : int
        Number of points.
    generator : torch.Generator, optional
        Source of randomness.
    radius, std : float
        Radius of the ring and standard deviation of each mode.
    dtype : torch.dtype, optional
        Dtype of the result.
    labels : bool
        Also return each point's mode, 0..7 (counter-clockwise from the positive x axis).

    Returns
    -------
    Tensor, shape (n, 2), or (Tensor, Tensor of int64 of shape (n,))
        In ``dtype`` (default: torch's default dtype); with ``labels``, also the modes.

    Raises
    ------
    ValueError
        If ``n`` is not a positive integer, or ``radius`` or ``std`` is not positive.
    TypeError
        If ``dtype`` is not a floating dtype.
    """
    check_dtype(dtype)
    x, k = eight_gaussians_mixture(radius, std).sample(
        _check_n(n), generator, dtype=torch.float64, return_components=True
    )
    return (_out(x, dtype), k) if labels else _out(x, dtype)


def swiss_roll(n: int, generator: Generator = None, noise: float = 0.25, dtype: torch.dtype | None = None) -> Tensor:
    r"""The 2-D swiss roll $r(\cos r, \sin r)/5$ with $r \sim U[1.5\pi, 4.5\pi]$, plus Gaussian noise ``noise/5`` (lesson 0, sec. 0.6).

    Parameters
    ----------
    n : int
        Number of points.
    generator : torch.Generator, optional
        Source of randomness.
    noise : float
        Standard deviation of the noise before the division by 5.
    dtype : torch.dtype, optional
        Dtype of the result.

    Returns
    -------
    Tensor, shape (n, 2)
        In ``dtype`` (default: torch's default dtype).

    Raises
    ------
    ValueError
        If ``n`` is not a positive integer or ``noise`` is not a non-negative finite number.
    TypeError
        If ``dtype`` is not a floating dtype.
    """
    noise = check_positive(noise, "noise", allow_zero=True)
    r = 1.5 * math.pi * (1 + 2 * _uniform(_check_n(n), generator))
    x = torch.cat([r * torch.cos(r), r * torch.sin(r)], 1) + noise * _normal(n, generator, 2)
    return _out(x / 5.0, dtype)


def moons(
    n: int, generator: Generator = None, noise: float = 0.05, dtype: torch.dtype | None = None, labels: bool = False
) -> Tensor | tuple[Tensor, Tensor]:
    """Two interleaving half circles (centred, unit radius), plus Gaussian noise of sd ``noise`` (lesson 0, sec. 0.6).

    Parameters
    ----------
    n : int
        Number of points.
    generator : torch.Generator, optional
        Source of randomness.
    noise : float
        Standard deviation of the noise.
    dtype : torch.dtype, optional
        Dtype of the result.
    labels : bool
        Also return which moon each point is on (0 upper, 1 lower).

    Returns
    -------
    Tensor, shape (n, 2), or (Tensor, Tensor of int64 of shape (n,))
        In ``dtype`` (default: torch's default dtype); with ``labels``, also the moons.

    Raises
    ------
    ValueError
        If ``n`` is not a positive integer or ``noise`` is not a non-negative finite number.
    TypeError
        If ``dtype`` is not a floating dtype.
    """
    n, noise = _check_n(n), check_positive(noise, "noise", allow_zero=True)
    upper = _uniform(n, generator) < 0.5
    ang = math.pi * _uniform(n, generator)
    x_up = torch.cat([torch.cos(ang), torch.sin(ang)], 1)
    x_lo = torch.cat([1 - torch.cos(ang), 0.5 - torch.sin(ang)], 1)
    x = torch.where(upper, x_up, x_lo) - torch.tensor([0.5, 0.25], dtype=torch.float64)
    x = _out(x + noise * _normal(n, generator, 2), dtype)
    return (x, (~upper[:, 0]).long()) if labels else x


def rings(
    n: int,
    generator: Generator = None,
    radii: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0),
    noise: float = 0.04,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Concentric circles of the given ``radii``, points spread in proportion to circumference (lesson 0, sec. 0.6).

    Parameters
    ----------
    n : int
        Number of points.
    generator : torch.Generator, optional
        Source of randomness.
    radii : tuple of float
        Radii of the circles, positive.
    noise : float
        Standard deviation of the noise.
    dtype : torch.dtype, optional
        Dtype of the result.

    Returns
    -------
    Tensor, shape (n, 2)
        In ``dtype`` (default: torch's default dtype).

    Raises
    ------
    ValueError
        If ``n`` is not a positive integer, ``radii`` is not a non-empty sequence of positive finite numbers, or
        ``noise`` is not a non-negative finite number.
    TypeError
        If ``dtype`` is not a floating dtype.
    """
    n, noise = _check_n(n), check_positive(noise, "noise", allow_zero=True)
    if isinstance(radii, (str, Tensor)) or not hasattr(radii, "__len__") or len(radii) == 0:
        raise ValueError(f"radii must be a non-empty sequence of positive numbers, got {radii!r}")
    r = torch.tensor([check_positive(v, "radii") for v in radii], dtype=torch.float64)
    idx = torch.multinomial(r / r.sum(), n, replacement=True, generator=generator)
    ang = 2 * math.pi * _uniform(n, generator)
    x = r[idx, None] * torch.cat([torch.cos(ang), torch.sin(ang)], 1)
    return _out(x + noise * _normal(n, generator, 2), dtype)


def checkerboard(n: int, generator: Generator = None, dtype: torch.dtype | None = None) -> Tensor:
    """Uniform on the black squares of a 4x4 checkerboard covering [-2, 2]^2 (lesson 0, sec. 0.6).

    Parameters
    ----------
    n : int
        Number of points.
    generator : torch.Generator, optional
        Source of randomness.
    dtype : torch.dtype, optional
        Dtype of the result.

    Returns
    -------
    Tensor, shape (n, 2)
        In ``dtype`` (default: torch's default dtype).

    Raises
    ------
    ValueError
        If ``n`` is not a positive integer.
    TypeError
        If ``dtype`` is not a floating dtype.
    """
    n = _check_n(n)
    x1 = 4 * _uniform(n, generator) - 2
    x2 = _uniform(n, generator) - 2 * torch.randint(0, 2, (n, 1), generator=generator).double()
    x2 = x2 + torch.remainder(torch.floor(x1), 2)
    return _out(torch.cat([x1, x2], 1), dtype)


def pinwheel(n: int, generator: Generator = None, num_arms: int = 5, dtype: torch.dtype | None = None) -> Tensor:
    """A pinwheel of ``num_arms`` curved arms (radial sd 0.3, tangential sd 0.05, twist 0.25; lesson 0, sec. 0.6).

    Parameters
    ----------
    n : int
        Number of points.
    generator : torch.Generator, optional
        Source of randomness.
    num_arms : int
        Number of arms.
    dtype : torch.dtype, optional
        Dtype of the result.

    Returns
    -------
    Tensor, shape (n, 2)
        In ``dtype`` (default: torch's default dtype).

    Raises
    ------
    ValueError
        If ``n`` or ``num_arms`` is not a positive integer.
    TypeError
        If ``dtype`` is not a floating dtype.
    """
    n, num_arms = _check_n(n), _check_n(num_arms, "num_arms")
    arm = torch.randint(0, num_arms, (n,), generator=generator).double()
    feats = _normal(n, generator, 2) * torch.tensor([0.3, 0.05], dtype=torch.float64)
    feats[:, 0] += 1.0
    ang = 2 * math.pi * arm / num_arms + 0.25 * torch.exp(feats[:, 0])
    rot = torch.stack([torch.cos(ang), -torch.sin(ang), torch.sin(ang), torch.cos(ang)], 1).reshape(n, 2, 2)
    return _out(2 * torch.einsum("nij,nj->ni", rot, feats), dtype)


TOYS: dict[str, Callable[..., Tensor]] = {
    "swiss-roll": swiss_roll,
    "moons": moons,
    "eight-gaussians": eight_gaussians,
    "rings": rings,
    "checkerboard": checkerboard,
    "pinwheel": pinwheel,
}


LABELLED: dict[str, int] = {"eight-gaussians": 8, "moons": 2}
"""Toys with natural class labels, and their number of classes: the modes of the ring, the two moons."""


def sample(
    name: str, n: int, generator: Generator = None, dtype: torch.dtype | None = None, labels: bool = False
) -> Tensor | tuple[Tensor, Tensor]:
    """Draw ``n`` points of the named toy (one of :data:`TOYS`), shape (n, 2) (lesson 0, sec. 0.6).

    Parameters
    ----------
    name : str
        A key of :data:`TOYS`.
    n : int
        Number of points.
    generator : torch.Generator, optional
        Source of randomness.
    dtype : torch.dtype, optional
        Dtype of the result.
    labels : bool
        Also return class labels (only for the toys in :data:`LABELLED`).

    Returns
    -------
    Tensor, shape (n, 2), or (Tensor, Tensor of int64 of shape (n,))
        In ``dtype`` (default: torch's default dtype); with ``labels``, also the labels.

    Raises
    ------
    ValueError
        If ``name`` is not a key of :data:`TOYS`, ``n`` is not a positive integer, or ``labels`` is asked of a toy
        without labels.
    """
    if not isinstance(name, str) or name not in TOYS:
        raise ValueError(f"unknown toy {name!r}: name must be one of {tuple(TOYS)}")
    if labels:
        if name not in LABELLED:
            raise ValueError(f"toy {name!r} has no labels; labelled toys: {tuple(LABELLED)}")
        return TOYS[name](n, generator=generator, dtype=dtype, labels=True)
    return TOYS[name](n, generator=generator, dtype=dtype)


@dataclass(frozen=True)
class TwoAttributes:
    r"""Two binary attributes in the first two coordinates, "texture" in the rest (lesson 21, sec. 21.6).

    Four Gaussian modes at $(\pm m, \pm m)$ with standard deviation ``sd`` in coordinates 0-1 (attribute $a$ is the
    sign of coordinate 0, $b$ the sign of coordinate 1), times $\mathcal N(0, I)$ in the other $d - 2$ coordinates,
    so that norms concentrate as they do for image latents. The combination $a = b = +$ is rare. Every conditional is
    again a Gaussian mixture, so every model of it is exact. Built by :func:`two_attributes`.

    Parameters
    ----------
    joint : GaussianMixture
        The data law, all four modes.
    a, b : GaussianMixture
        The laws given $a = +$ and given $b = +$ (the two models to merge).
    target : GaussianMixture
        The law given $a = b = +$ (the oracle).
    separation, sd : float
        $m$ and the modes' standard deviation.
    """

    joint: GaussianMixture
    a: GaussianMixture
    b: GaussianMixture
    target: GaussianMixture
    separation: float
    sd: float

    def judge(self, x: Tensor) -> dict[str, float]:
        r"""Score samples (lesson 21, sec. 21.6): joint success, off-mode rate and texture variance.

        Parameters
        ----------
        x : Tensor, shape (B, d)
            Samples.

        Returns
        -------
        dict
            ``"joint"``: fraction with $a = b = +$ that lie on a mode; ``"a"``, ``"b"``: fraction with each
            attribute; ``"off_mode"``: fraction farther than 4 sd from every mode in coordinates 0-1;
            ``"texture_var"``: mean variance of the texture coordinates (1 for the data).

        Raises
        ------
        ValueError
            If ``x`` is not of shape (B, d).
        """
        d = self.joint.means.shape[1]
        if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[1] != d or x.shape[0] < 2:
            raise ValueError(f"x must be a tensor of shape (B, {d}) with B >= 2")
        x = x.to(torch.float64)
        xy = x[:, :2]
        dist = (xy[:, None, :] - self.joint.means[None, :, :2]).norm(dim=2).min(1).values
        on = dist <= 4 * self.sd
        a, b = xy[:, 0] > 0, xy[:, 1] > 0
        return {
            "joint": float((a & b & on).double().mean()),
            "a": float(a.double().mean()),
            "b": float(b.double().mean()),
            "off_mode": float((~on).double().mean()),
            "texture_var": float(x[:, 2:].var(0).mean()) if d > 2 else float("nan"),
        }


def two_attributes(d: int = 1024, rare: float = 0.05, separation: float = 1.0, sd: float = 0.3) -> TwoAttributes:
    r"""The two-attribute mixture with texture (lesson 21, sec. 21.6): modes $(+,+)$ and $(-,-)$ of weight ``rare``,
    $(+,-)$ and $(-,+)$ of weight $1/2 - $ ``rare``.

    Parameters
    ----------
    d : int
        Dimension, >= 2 (coordinates 2..d-1 are texture).
    rare : float
        Weight of the rare modes, in $(0, 1/2)$; $P(a = b = + \mid a = +) = 2\,$``rare``.
    separation : float
        $m$, the modes' distance from each axis.
    sd : float
        The modes' standard deviation in coordinates 0-1.

    Returns
    -------
    TwoAttributes

    Raises
    ------
    ValueError
        If ``d`` is not an integer >= 2, ``rare`` is not in $(0, 1/2)$, or ``separation`` or ``sd`` is not positive.
    """
    d = check_int(d, "d", 2)
    if isinstance(rare, bool) or not isinstance(rare, (int, float)) or not 0 < rare < 0.5:
        raise ValueError(f"rare must be a number in (0, 1/2), got {rare!r}")
    m, sd = check_positive(separation, "separation"), check_positive(sd, "sd")
    signs = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)
    means = torch.zeros(4, d, dtype=torch.float64)
    means[:, :2] = m * signs
    var = torch.ones(4, d, dtype=torch.float64)
    var[:, :2] = sd**2
    w = torch.tensor([rare, 0.5 - rare, 0.5 - rare, rare], dtype=torch.float64)

    def part(keep: Tensor) -> GaussianMixture:
        return GaussianMixture(w[keep] / w[keep].sum(), means[keep], var[keep])

    return TwoAttributes(
        joint=GaussianMixture(w, means, var),
        a=part(signs[:, 0] > 0),
        b=part(signs[:, 1] > 0),
        target=part((signs[:, 0] > 0) & (signs[:, 1] > 0)),
        separation=m,
        sd=sd,
    )


def potts_chain(L: int = 4, V: int = 3, coupling: float = 1.6, field: tuple[float, ...] | None = None) -> TokenLaw:
    r"""A Potts chain $p(x) \propto \exp(J\sum_i \mathbf 1[x_i = x_{i+1}] + \sum_i h_{x_i})$ (lesson 11, sec. 11.3), the enumerable token toy:
    neighbouring tokens agree more often than chance, so the marginals miss the joint law.

    Parameters
    ----------
    L, V : int
        Length and vocabulary size.
    coupling : float
        $J$.
    field : tuple of float, optional
        $h_v$ for each token (default: $0, 0.3, 0.6, \dots$).

    Returns
    -------
    TokenLaw

    Raises
    ------
    ValueError
        If ``field`` does not have ``V`` entries.
    """
    h = torch.tensor(field if field is not None else [0.3 * v for v in range(V)], dtype=torch.float64)
    if h.shape != (V,):
        raise ValueError(f"field must have one entry per token ({V}), got {tuple(h.shape)}")
    states = torch.tensor(list(itertools.product(range(V), repeat=L)), dtype=torch.long)
    energy = coupling * (states[:, 1:] == states[:, :-1]).sum(1) + h[states].sum(1)
    p = torch.exp(energy - energy.max())
    return TokenLaw(p / p.sum(), L, V)
