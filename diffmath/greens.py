r"""Building ODEs from Green's functions (lesson 14).

An ODE $\mathrm dx/\mathrm dt = f_t(x)$ carries $p_t$ iff $u = (p_t, f_t p_t)$ has zero divergence in $(t, x)$
(lesson 14, eq. 14.2). A Green's function $G(t, x; x_0) = (G_1, G_{>1})$ with zero divergence, $G_1 \ge 0$,
$\int G_1\,\mathrm dx = 1$ and $G_1 \to \delta(x - x_0)$ as $t \to 0$ gives $u = \mathbb E_{x_0}G$ and the ODE
$f = \mathbb E[G_{>1}]/\mathbb E[G_1]$ (eqs. 14.3-14.4). Here: the isotropic kernel (PFGM), scale families
$G_1 = \sigma_t^{-d}h(\|x - x_0\|/\sigma_t)$ (Gaussian: lesson 12; Cauchy: lesson 13) and the construction from a radial
CDF $\psi_t(r)$ (eq. 14.11). All take points of shape (B, ...) and one centre ``x0`` of the event shape.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from diffmath.core._validate import check_batch, check_finite, check_int, check_positive, check_real
from diffmath.pfgm import sphere_area

PROFILES: tuple[str, ...] = ("gaussian", "cauchy")


def _radius(x: Tensor, x0: Tensor) -> tuple[Tensor, Tensor, int]:
    x = check_batch(x, "x")
    if not isinstance(x0, Tensor) or tuple(x0.shape) != tuple(x.shape[1:]):
        raise ValueError(f"x0 must be a tensor of one sample's shape {tuple(x.shape[1:])}")
    check_finite(x0, "x0")
    diff = x - x0.to(x.dtype)[None]
    return diff, diff.flatten(1).norm(dim=1), math.prod(x.shape[1:])


def _view(v: Tensor, x: Tensor) -> Tensor:
    return v.reshape(-1, *([1] * (x.dim() - 1)))


def radial_profile(kind: str, d: int) -> Callable[[Tensor], Tensor]:
    r"""The unit-scale density $h(s)$, $s = \|x\|$, of a scale family in $\mathbb R^d$ (lesson 14, eq. 14.8):
    ``"gaussian"`` $(2\pi)^{-d/2}e^{-s^2/2}$ or ``"cauchy"`` $C_d/(1+s^2)^{(d+1)/2}$, $C_d = \Gamma(\frac{d+1}2)/
    \pi^{(d+1)/2}$.

    Parameters
    ----------
    kind : {"gaussian", "cauchy"}
        The family.
    d : int
        Dimension.

    Returns
    -------
    callable
        ``h(s)`` on a tensor of radii.

    Raises
    ------
    ValueError
        If ``kind`` is unknown or ``d`` is not a positive integer.
    """
    check_int(d, "d")
    if kind == "gaussian":
        return lambda s: torch.exp(-0.5 * s**2) / (2 * math.pi) ** (0.5 * d)
    if kind == "cauchy":
        log_c = math.lgamma(0.5 * (d + 1)) - 0.5 * (d + 1) * math.log(math.pi)
        return lambda s: math.exp(log_c) * (1 + s**2) ** (-0.5 * (d + 1))
    raise ValueError(f"kind must be one of {PROFILES}, got {kind!r}")


def scale_kernel(kind: str, x: Tensor, x0: Tensor, sigma: float, dsigma: float) -> tuple[Tensor, Tensor]:
    r"""Green's function of a scale family, $G_1 = \sigma^{-d}h(\|x - x_0\|/\sigma)$ and
    $G_{>1} = (\dot\sigma/\sigma)(x - x_0)\,G_1$ (lesson 14, eqs. 14.8-14.9): the path $x_t = x_0 + \sigma_t c$.

    Parameters
    ----------
    kind : {"gaussian", "cauchy"}
        The family (Gaussian: heat flow, lesson 12; Cauchy with $\sigma_t = t$: PFGM, lesson 13).
    x : Tensor, shape (B, ...)
        Points.
    x0 : Tensor, shape of one sample
        The source point.
    sigma, dsigma : float
        $\sigma_t > 0$ and $\dot\sigma_t$.

    Returns
    -------
    (G1, G_rest) : (Tensor of shape (B,), Tensor of shape (B, ...))

    Raises
    ------
    ValueError
        If ``kind`` is unknown, ``sigma`` is not a positive finite number, ``dsigma`` is not finite, or ``x``/``x0``
        have the wrong shapes or hold NaN or infinity.
    """
    sigma, dsigma = check_positive(sigma, "sigma"), check_real(dsigma, "dsigma")
    diff, r, d = _radius(x, x0)
    g1 = radial_profile(kind, d)(r / sigma) / sigma**d
    return g1, (dsigma / sigma) * diff * _view(g1, x)


def isotropic_kernel(x: Tensor, x0: Tensor, t: float) -> tuple[Tensor, Tensor]:
    r"""The isotropic Green's function $G = C_d\,(t, x - x_0)/R^{d+1}$, $R^2 = t^2 + \|x - x_0\|^2$ (lesson 14,
    eq. 14.5): the field of a unit charge in $\mathbb R^{d+1}$ times $2$, i.e. PFGM's kernel.

    Parameters
    ----------
    x : Tensor, shape (B, ...)
        Points.
    x0 : Tensor, shape of one sample
        The charge.
    t : float
        Time (PFGM's $z$), > 0.

    Returns
    -------
    (G1, G_rest) : (Tensor of shape (B,), Tensor of shape (B, ...))
        $G_1$ is the Poisson kernel $P_t(x - x_0)$.

    Raises
    ------
    ValueError
        If ``t`` is not positive or ``x``/``x0`` have the wrong shapes.
    """
    t = check_positive(t, "t")
    diff, r, d = _radius(x, x0)
    scale = 2.0 / sphere_area(d + 1) * (r**2 + t**2) ** (-0.5 * (d + 1))
    return scale * t, diff * _view(scale, x)


def tanh_cdf(r: Tensor, t: Tensor | float) -> Tensor:
    r"""The radial CDF $\psi_t(r) = \tanh(r/t)$ (lesson 14, eq. 14.12).

    Parameters
    ----------
    r : Tensor
        Radii.
    t : float or Tensor
        Time, > 0.

    Returns
    -------
    Tensor
        $\psi_t(r)$, of the shape of ``r``.

    Raises
    ------
    TypeError, ValueError
        As :func:`exp_cdf`.
    """
    return torch.tanh(_check_cdf_args(r, t))


def exp_cdf(r: Tensor, t: Tensor | float) -> Tensor:
    r"""The radial CDF $\psi_t(r) = 1 - e^{-r/t}$ (lesson 14, eq. 14.12).

    Parameters
    ----------
    r : Tensor
        Radii.
    t : float or Tensor
        Time, > 0.

    Returns
    -------
    Tensor
        $\psi_t(r)$, of the shape of ``r``.

    Raises
    ------
    TypeError
        If ``r`` is not a floating tensor or ``t`` not a real number or tensor.
    ValueError
        If ``r`` is negative or not finite, or ``t`` is not positive and finite.
    """
    return -torch.expm1(-_check_cdf_args(r, t))


def _check_cdf_args(r: object, t: object) -> Tensor:
    """``r / t`` for radii ``r >= 0`` (a floating tensor) and times ``t > 0`` (a number or a tensor)."""
    if not isinstance(r, Tensor) or not r.is_floating_point():
        raise TypeError(f"r must be a floating tensor of radii, got {type(r).__name__}")
    if not torch.isfinite(r).all() or (r < 0).any():
        raise ValueError("r must hold finite radii >= 0")
    if isinstance(t, Tensor):
        if not t.is_floating_point() or not torch.isfinite(t).all() or (t <= 0).any():
            raise ValueError("t must be positive and finite")
        if t.dim() and t.shape != r.shape:
            raise ValueError(f"t must be a scalar or have the shape of r {tuple(r.shape)}, got {tuple(t.shape)}")
    else:
        t = check_positive(t, "t")
    return r / t


def cdf_kernel(psi: Callable[[Tensor, Tensor], Tensor], x: Tensor, x0: Tensor, t: float) -> tuple[Tensor, Tensor]:
    r"""Green's function from a radial CDF $\psi_t(r)$ (lesson 14, eq. 14.11):
    $G_1 = \partial_r\psi_t(r)/(S_d r^{d-1})$, $G_{>1} = -\partial_t\psi_t(r)\,(x - x_0)/(S_d r^d)$, derivatives by
    autograd. Zero divergence holds by construction; $\psi_t(0) = 0$, $\psi_t(\infty) = 1$ give $\int G_1 = 1$.

    Parameters
    ----------
    psi : callable
        ``psi(r, t)``, differentiable, increasing in ``r`` from 0 to 1, with $\psi_t(r) \to 1$ as $t \to 0$.
    x : Tensor, shape (B, ...)
        Points (not at ``x0``).
    x0 : Tensor, shape of one sample
        The source point.
    t : float
        Time, > 0.

    Returns
    -------
    (G1, G_rest) : (Tensor of shape (B,), Tensor of shape (B, ...))

    Raises
    ------
    TypeError
        If ``psi`` is not callable.
    ValueError
        If ``t`` is not a positive finite number, ``x``/``x0`` have the wrong shapes or are not finite, or a point
        sits at ``x0``.
    """
    if not callable(psi):
        raise TypeError(f"psi must be a function psi(r, t), got {type(psi).__name__}")
    t = check_positive(t, "t")
    diff, r, d = _radius(x, x0)
    if (r == 0).any():
        raise ValueError("cdf_kernel is singular at x = x0; evaluate it at r > 0")
    with torch.enable_grad():
        rr = r.detach().clone().requires_grad_(True)
        tb = torch.full_like(rr, float(t)).requires_grad_(True)
        dr, dt = torch.autograd.grad(psi(rr, tb).sum(), (rr, tb))
    s_d = sphere_area(d)
    g1 = dr.detach() / (s_d * r ** (d - 1))
    return g1, -_view(dt.detach() / (s_d * r**d), x) * diff


def flux_from_density(phi: Callable[[Tensor, float], Tensor], r: Tensor, t: float, d: int, dt: float = 1e-5) -> Tensor:
    r"""The radial flux coefficient $\varphi_t(r) = -r^{-d}\,\partial_t\int_0^r\phi_t(s)\,s^{d-1}\,\mathrm ds$ of a
    radial density $\phi_t$ (lesson 14, eq. 14.10), by adaptive quadrature (scipy) and a central difference in $t$;
    $G_{>1} = \varphi_t(r)\,(x - x_0)$.

    Parameters
    ----------
    phi : callable
        ``phi(s, t)``: $G_1$ as a function of the radius.
    r : Tensor, shape (M,)
        Radii, > 0.
    t : float
        Time, with ``t - dt > 0``.
    d : int
        Dimension.
    dt : float
        Step of the difference in $t$.

    Returns
    -------
    Tensor, shape (M,), float64

    Raises
    ------
    TypeError
        If ``phi`` is not callable.
    ValueError
        If ``r`` is not a 1-D tensor of finite radii > 0, ``t`` or ``dt`` is not a positive finite number,
        ``t - dt`` is not positive, or ``d`` is not a positive integer.
    """
    from scipy.integrate import quad

    if not callable(phi):
        raise TypeError(f"phi must be a function phi(s, t), got {type(phi).__name__}")
    t, dt, d = check_positive(t, "t"), check_positive(dt, "dt"), check_int(d, "d")
    if not t - dt > 0:
        raise ValueError(f"need t - dt > 0, got t={t}, dt={dt}")
    if not isinstance(r, Tensor) or r.dim() != 1 or not torch.isfinite(r).all() or (r <= 0).any():
        raise ValueError("r must be a 1-D tensor of finite radii > 0")

    def mass(rad: float, s: float) -> float:
        f = lambda u: float(phi(torch.tensor(u, dtype=torch.float64), s)) * u ** (d - 1)  # noqa: E731
        return quad(f, 0.0, rad, epsabs=1e-13, epsrel=1e-12, limit=200)[0]

    out = [-(mass(v, t + dt) - mass(v, t - dt)) / (2 * dt) / v**d for v in r.double().tolist()]
    return torch.tensor(out, dtype=torch.float64)
