r"""Poisson flow (PFGM, lesson 13): the electric field of a data set placed on the plane $z = 0$ of $\mathbb R^{d+1}$,
its field lines as a generative map, the prior on a far plane, and training a network on the unbiased target.

Charges $w_i$ at $(x_i, 0)$ make the field (lesson 13, eq. 13.3)

$$E(x, z) = \frac{1}{S_{d+1}}\sum_i w_i\,\frac{(x - x_i,\ z)}{R_i^{d+1}}, \qquad R_i^2 = \|x - x_i\|^2 + z^2 .$$

It is divergence-free for $z > 0$, $E_z > 0$, and its flux density through the plane at height $z$ is the kernel
mixture $2E_z = \sum_i w_i P_z(x - x_i)$ with the Poisson kernel $P_z$ (eq. 13.6). Field lines obey
$\mathrm dx/\mathrm dz = E_x/E_z = (x - \mathbb E[x_0\mid x, z])/z$ (eq. 13.8): the probability-flow ODE of the path
$x_z = x_0 + z\,c$ with $c$ multivariate Cauchy (eq. 13.10). So a :class:`PoissonField` is an exact model with the
interface of :class:`~diffmath.exact.mixtures.GaussianMixture`, and the lesson-6 solvers integrate it on any schedule with
$a = 1$ (:class:`~diffmath.heat.LinearVE`: $t = z$; :class:`~diffmath.core.schedules.VE`: $t \propto \ln z$).
Everything here works on batches of any shape (B, ...).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from diffmath.core._validate import (
    as_tensor,
    check_batch,
    check_dtype,
    check_finite,
    check_int,
    check_nonempty,
    check_output,
    check_positive,
    check_schedule,
    per_sample,
)
from diffmath.core.device import model_device, resolve_device, unwrap
from diffmath.core.models import check_model
from diffmath.core.notation import Pair, check_prediction, from_pair, to_pair
from diffmath.core.schedules import Schedule
from diffmath.train.training import as_draws

_CHUNK = 1 << 22  # elements of a (B, N, d) difference computed directly (more accurate than the matmul expansion)


def sphere_area(n: int) -> float:
    r"""Area $S_n = 2\pi^{n/2}/\Gamma(n/2)$ of the unit sphere in $\mathbb R^n$ (lesson 13, eq. 13.2).

    Parameters
    ----------
    n : int
        Dimension of the space, >= 1.

    Returns
    -------
    float
        $S_n$ ($S_2 = 2\pi$, $S_3 = 4\pi$).

    Raises
    ------
    ValueError
        If ``n`` is not a positive integer.
    """
    check_int(n, "n")
    return math.exp(math.log(2.0) + 0.5 * n * math.log(math.pi) - math.lgamma(0.5 * n))


def poisson_log_kernel(x: Tensor, z: Tensor | float) -> Tensor:
    r"""$\log P_z(x)$, the Poisson kernel of the half space $P_z(x) = C_d\,z/(\|x\|^2 + z^2)^{(d+1)/2}$,
    $C_d = \Gamma(\tfrac{d+1}2)/\pi^{(d+1)/2}$ (lesson 13, eq. 13.6); $d$ = the number of entries of one sample.

    $P_z$ is the density of $z\,c$ with $c$ multivariate Cauchy (eq. 13.10); $\int P_z = 1$ for every $z > 0$.

    Parameters
    ----------
    x : Tensor, shape (B, ...)
        Points.
    z : float or Tensor of shape (B,)
        Heights, > 0.

    Returns
    -------
    Tensor, shape (B,)
        $\log P_z(x)$.

    Raises
    ------
    TypeError
        If ``x`` is not a floating tensor or ``z`` not a real number or tensor.
    ValueError
        If ``x`` has fewer than 2 dimensions or holds NaN or infinity, or ``z`` is not positive or of a wrong shape.
    """
    x = check_batch(x, "x")
    zz = _coef(z, x, "z").reshape(-1)
    if (zz <= 0).any():
        raise ValueError("the Poisson kernel needs z > 0")
    d = math.prod(x.shape[1:])
    sq = (x.flatten(1) ** 2).sum(1)
    return _log_c(d) + torch.log(zz) - 0.5 * (d + 1) * torch.log(sq + zz**2)


def _log_c(d: int) -> float:
    return math.lgamma(0.5 * (d + 1)) - 0.5 * (d + 1) * math.log(math.pi)


def _coef(c: Tensor | float, x: Tensor, name: str) -> Tensor:
    """A scalar or per-sample coefficient as a (B, 1) tensor in x's dtype (lesson 13 helpers)."""
    c = as_tensor(c, name, x)
    check_finite(c, name)
    if c.dim() > 1 or (c.dim() == 1 and c.shape[0] not in (1, x.shape[0])):
        raise ValueError(f"{name} must be a scalar or have shape (B,) = ({x.shape[0]},), got {tuple(c.shape)}")
    return c.reshape(-1, 1).expand(x.shape[0], 1)


class PoissonField:
    r"""The empirical Poisson field of a weighted point set in any dimension, an exact model (lesson 13, eqs.
    13.3-13.8).

    The methods with ``(x, a, b)`` mirror :class:`~diffmath.exact.mixtures.GaussianMixture`: they describe
    $x_t = a x_0 + b\,c$ with $x_0 \sim \sum_i w_i\delta_{x_i}$ and $c$ multivariate Cauchy, whose density
    is the kernel mixture $\sum_i w_i b^{-d} P_1\big((x - a x_i)/b\big)$; at $a = 1, b = z$ it is the flux density
    $2E_z$ of the field (eq. 13.6). All computations run in ``x``'s dtype (float64 for identities to 1e-9).

    Parameters
    ----------
    points : Tensor, shape (N, *event_shape)
        The charges $x_i$ (the data).
    weights : Tensor, shape (N,), optional
        Non-negative charges summing to one; default uniform.

    Raises
    ------
    TypeError
        If ``points`` is not a floating tensor or ``weights`` not a real tensor.
    ValueError
        If ``points`` is empty, has fewer than 2 dimensions or holds NaN or infinity, or the weights are not of
        shape (N,), negative, or do not sum to one.

        The methods taking ``(x, a, b)`` check them in one place and raise a TypeError if ``x`` is not a floating
        tensor or ``a``, ``b`` are not real numbers or tensors; a ValueError if ``x`` is not of shape
        (B, *event_shape) or holds NaN or infinity, or ``a``, ``b`` are not finite, of shape () or (B,), or ``b`` is
        not positive.
    """

    def __init__(self, points: Tensor, weights: Tensor | None = None) -> None:
        points = check_nonempty(check_batch(points, "points"), "points")
        N = points.shape[0]
        w = torch.full((N,), 1.0 / N, dtype=torch.float64) if weights is None else as_tensor(weights, "weights")
        w = w.to(torch.float64)
        check_finite(w, "weights")
        if w.shape != (N,):
            raise ValueError(f"weights must have shape (N,) = ({N},), got {tuple(w.shape)}")
        if (w < 0).any() or abs(w.sum().item() - 1.0) > 1e-6:
            raise ValueError(f"weights must be non-negative and sum to 1, got sum {w.sum().item():.6g}")
        self.event_shape = tuple(points.shape[1:])
        self.N, self.d = N, math.prod(self.event_shape)
        self.points = points.detach().reshape(N, self.d).to(torch.float64)
        self.weights = w
        self._cache: dict[tuple, tuple[Tensor, Tensor]] = {}

    # ------------------------------------------------------------------ helpers
    def _params(self, like: Tensor) -> tuple[Tensor, Tensor]:
        key = (like.dtype, like.device)
        if key not in self._cache:
            self._cache[key] = (
                torch.log(self.weights).to(like.dtype).to(like.device),
                self.points.to(like.dtype).to(like.device),
            )
        return self._cache[key]

    def _flat(self, x: Tensor) -> Tensor:
        x = check_batch(x, "x")
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(f"x must have shape (B, {', '.join(map(str, self.event_shape))}), got {tuple(x.shape)}")
        return x.reshape(x.shape[0], self.d)

    def _sq(self, xf: Tensor, a: Tensor) -> Tensor:
        """Squared distances |x - a x_i|^2, shape (B, N)."""
        _, mu = self._params(xf)
        if xf.shape[0] * self.N * self.d <= _CHUNK:
            return ((xf[:, None, :] - a[:, :, None] * mu[None]) ** 2).sum(-1)
        sq = (xf * xf).sum(1, keepdim=True) - 2 * a * (xf @ mu.T) + a**2 * (mu * mu).sum(1)[None]
        return torch.clamp(sq, min=0.0)

    def _joint(self, x: Tensor, a: Tensor | float, b: Tensor | float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Flat x, a, b and log(w_i P_b(x - a x_i)), shape (B, N)."""
        xf = self._flat(x)
        a_, b_ = _coef(a, xf, "a"), _coef(b, xf, "b")
        if (b_ <= 0).any():
            raise ValueError("the Poisson kernel mixture needs b = z > 0")
        log_w, _ = self._params(xf)
        joint = log_w[None] + _log_c(self.d) + torch.log(b_) - 0.5 * (self.d + 1) * torch.log(self._sq(xf, a_) + b_**2)
        return xf, a_, b_, joint

    # ------------------------------------------------------------------ the exact-model interface
    def noised_log_prob(self, x: Tensor, a: Tensor | float, b: Tensor | float) -> Tensor:
        r"""$\log p(x_t)$ for $x_t = a x_0 + b\,c$: the log of the kernel mixture $\sum_i w_i P_b(x - a x_i)$, with
        $P$ the Poisson kernel (lesson 13, eq. 13.6; at $a = 1, b = z$ the log flux density $\log 2E_z$).

        Parameters
        ----------
        x : Tensor, shape (B, *event_shape)
            Points.
        a, b : float or Tensor of shape (B,)
            Coefficients; ``b`` > 0.

        Returns
        -------
        Tensor, shape (B,)

        Raises
        ------
        TypeError, ValueError
            On bad ``x``, ``a`` or ``b``: see the class docstring.
        """
        return torch.logsumexp(self._joint(x, a, b)[3], dim=1)

    def component_posterior(self, x: Tensor, a: Tensor | float, b: Tensor | float) -> Tensor:
        r"""$p(i \mid x_t) \propto w_i P_b(x - a x_i)$, shape (B, N) (lesson 13, eq. 13.8).

        Parameters
        ----------
        x : Tensor, shape (B, *event_shape)
            Points.
        a, b : float or Tensor of shape (B,)
            Coefficients; ``b`` > 0.

        Returns
        -------
        Tensor, shape (B, N)
            Rows sum to one.

        Raises
        ------
        TypeError, ValueError
            On bad ``x``, ``a`` or ``b``: see the class docstring.
        """
        return torch.softmax(self._joint(x, a, b)[3], dim=1)

    def posterior_mean(self, x: Tensor, a: Tensor | float, b: Tensor | float) -> Tensor:
        r"""$\mathbb E[x_0 \mid x_t] = \sum_i p(i\mid x_t)\,x_i$ under the Poisson kernel (lesson 13, eq. 13.8).

        Parameters
        ----------
        x : Tensor, shape (B, *event_shape)
            Points.
        a, b : float or Tensor of shape (B,)
            Coefficients; ``b`` > 0.

        Returns
        -------
        Tensor, shape (B, *event_shape)

        Raises
        ------
        TypeError, ValueError
            On bad ``x``, ``a`` or ``b``: see the class docstring.
        """
        resp = self.component_posterior(x, a, b)
        return (resp @ self._params(resp)[1]).reshape(x.shape)

    def eps_mean(self, x: Tensor, a: Tensor | float, b: Tensor | float) -> Tensor:
        r"""$\mathbb E[c \mid x_t] = (x_t - a\,\mathbb E[x_0\mid x_t])/b$, the noise of the path $x_t = a x_0 + b c$
        (lesson 13, eq. 13.8): at $a = 1, b = z$ it is the field direction $E_x/E_z$.

        Parameters
        ----------
        x : Tensor, shape (B, *event_shape)
            Points.
        a, b : float or Tensor of shape (B,)
            Coefficients; ``b`` > 0.

        Returns
        -------
        Tensor, shape (B, *event_shape)

        Raises
        ------
        TypeError, ValueError
            On bad ``x``, ``a`` or ``b``: see the class docstring.
        """
        x0 = self.posterior_mean(x, a, b)
        a_, b_ = (per_sample(as_tensor(c, n, x).reshape(-1), x, n) for c, n in ((a, "a"), (b, "b")))
        return (x - a_ * x0) / b_

    def score(self, x: Tensor, a: Tensor | float, b: Tensor | float) -> Tensor:
        r"""$\nabla_x\log p(x_t) = -(d+1)\sum_i p(i\mid x_t)\,(x - a x_i)/(\|x - a x_i\|^2 + b^2)$ (lesson 13, eq. 13.6
        differentiated). Not $-\mathbb E[c\mid x]/b$: that relation holds for Gaussian noise only.

        Parameters
        ----------
        x : Tensor, shape (B, *event_shape)
            Points.
        a, b : float or Tensor of shape (B,)
            Coefficients; ``b`` > 0.

        Returns
        -------
        Tensor, shape (B, *event_shape)

        Raises
        ------
        TypeError, ValueError
            On bad ``x``, ``a`` or ``b``: see the class docstring.
        """
        xf, a_, b_, joint = self._joint(x, a, b)
        resp = torch.softmax(joint, dim=1)
        _, mu = self._params(xf)
        q = resp / (self._sq(xf, a_) + b_**2)  # (B, N)
        return (-(self.d + 1) * (q.sum(1, keepdim=True) * xf - a_ * (q @ mu))).reshape(x.shape)

    def velocity(
        self, x: Tensor, a: Tensor | float, b: Tensor | float, da: Tensor | float, db: Tensor | float
    ) -> Tensor:
        r"""Exact velocity $\mathbb E[\dot a x_0 + \dot b c \mid x_t]$ of the path $x_t = a x_0 + b c$ (lesson 13, eq.
        13.8); at $a = 1, b = z$ it is $\mathrm dx/\mathrm dz = E_x/E_z$.

        Parameters
        ----------
        x : Tensor, shape (B, *event_shape)
            Points.
        a, b : float or Tensor of shape (B,)
            Coefficients; ``b`` > 0.
        da, db : float or Tensor of shape (B,)
            Their time derivatives.

        Returns
        -------
        Tensor, shape (B, *event_shape)

        Raises
        ------
        TypeError, ValueError
            On bad ``x``, ``a`` or ``b``: see the class docstring.
        """
        xf = self._flat(x)
        for c, n in ((da, "da"), (db, "db")):
            _coef(c, xf, n)
        x0 = self.posterior_mean(x, a, b)
        a_, b_, da_, db_ = (
            per_sample(as_tensor(c, n, x).reshape(-1), x, n) for c, n in ((a, "a"), (b, "b"), (da, "da"), (db, "db"))
        )
        return da_ * x0 + db_ * (x - a_ * x0) / b_

    def model(self, schedule: Schedule, prediction: str = "x0") -> PoissonModel:
        r"""The field as a model with the one interface on ``schedule`` (lesson 13, eq. 13.8).

        Parameters
        ----------
        schedule : Schedule
            A schedule whose $b_t$ plays $z$ (usually $a_t = 1$: :class:`~diffmath.heat.LinearVE` or
            :class:`~diffmath.core.schedules.VE`).
        prediction : {"x0", "eps", "v", "velocity"}
            What the model returns.

        Returns
        -------
        PoissonModel

        Raises
        ------
        TypeError
            If ``schedule`` is not a schedule or ``prediction`` not a string.
        ValueError
            If ``prediction`` is unknown or ``"score"``.
        """
        return PoissonModel(self, schedule, prediction)

    # ------------------------------------------------------------------ the field in R^{d+1}
    def field(self, x: Tensor, z: Tensor | float) -> tuple[Tensor, Tensor]:
        r"""The field $E = (E_x, E_z)$ at $(x, z)$ (lesson 13, eq. 13.3), computed in log space then rescaled.

        Parameters
        ----------
        x : Tensor, shape (B, *event_shape)
            Positions on the data axes.
        z : float or Tensor of shape (B,)
            Heights, >= 0 (at $z = 0$, away from the charges, $E_z = 0$).

        Returns
        -------
        (E_x, E_z) : (Tensor of shape (B, *event_shape), Tensor of shape (B,))

        Raises
        ------
        TypeError
            If ``x`` is not a floating tensor or ``z`` not a real number or tensor.
        ValueError
            If ``x`` is not of shape (B, *event_shape) or holds NaN or infinity, or ``z`` is negative, not finite
            or of a wrong shape.
        """
        xf = self._flat(x)
        z_ = _coef(z, xf, "z")
        if (z_ < 0).any():
            raise ValueError("z must be >= 0")
        log_w, mu = self._params(xf)
        ell = log_w[None] - 0.5 * (self.d + 1) * torch.log(self._sq(xf, torch.ones_like(z_)) + z_**2)
        m = ell.max(dim=1, keepdim=True).values
        s = torch.exp(ell - m)
        scale = torch.exp(m) / sphere_area(self.d + 1)
        ex = scale * (s.sum(1, keepdim=True) * xf - s @ mu)
        ez = scale * z_ * s.sum(1, keepdim=True)
        return ex.reshape(x.shape), ez.reshape(-1)

    def flux_density(self, x: Tensor, z: Tensor | float) -> Tensor:
        r"""Density $2E_z(x, z) = \sum_i w_i P_z(x - x_i)$ of field-line crossings through the plane at height $z$
        (lesson 13, eq. 13.6); it integrates to one over $x$.

        Parameters
        ----------
        x : Tensor, shape (B, *event_shape)
            Points.
        z : float or Tensor of shape (B,)
            Heights, > 0.

        Returns
        -------
        Tensor, shape (B,)

        Raises
        ------
        TypeError
            If ``x`` is not a floating tensor or ``z`` not a real number or tensor.
        ValueError
            If ``x`` is not of shape (B, *event_shape) or holds NaN or infinity, or ``z`` is not positive.
        """
        z_ = _coef(z, self._flat(x), "z")
        if (z_ <= 0).any():
            raise ValueError("z must be positive: the flux density lives on the planes z > 0")
        return torch.exp(self.noised_log_prob(x, 1.0, z))

    # ------------------------------------------------------------------ sampling
    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        return_components: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        r"""Draw ``n`` charges $x_i$ with probabilities $w_i$ (lesson 13, eq. 13.3: the data on $z = 0$).

        Parameters
        ----------
        n : int
            Number of samples.
        generator : torch.Generator, optional
            Source of randomness.
        dtype : torch.dtype, optional
            Dtype (default: torch's default dtype).
        return_components : bool
            Also return the index of each.

        Returns
        -------
        Tensor, shape (n, *event_shape), or (Tensor, Tensor of int of shape (n,))

        Raises
        ------
        ValueError
            If ``n`` is not a positive integer.
        TypeError
            If ``dtype`` is not a floating dtype.
        """
        check_int(n, "n")
        dtype = check_dtype(dtype)
        i = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        x = self.points[i].to(dtype or torch.get_default_dtype()).reshape(n, *self.event_shape)
        return (x, i) if return_components else x

    def sample_noised(
        self,
        n: int,
        z: float,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        max_radius: float | None = None,
        return_components: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        r"""Exact samples of the flux density at height ``z``: $x_z = x_i + z\,c$, $i \sim w$, $c$ multivariate Cauchy
        (lesson 13, eqs. 13.6 and 13.10).

        Parameters
        ----------
        n : int
            Number of samples.
        z : float
            Height, > 0.
        generator : torch.Generator, optional
            Source of randomness.
        dtype : torch.dtype, optional
            Dtype (default: torch's default dtype).
        max_radius : float, optional
            Clip $\|c\|$ to this radius (no clipping by default: exact samples).
        return_components : bool
            Also return the charge each sample comes from.

        Returns
        -------
        Tensor, shape (n, *event_shape), or (Tensor, Tensor of int of shape (n,))

        Raises
        ------
        ValueError
            If ``n`` is not a positive integer, ``z`` is not positive or ``max_radius`` is not positive (each finite).
        TypeError
            If ``dtype`` is not a floating dtype.
        """
        z, dtype = check_positive(z, "z"), check_dtype(dtype)
        if max_radius is not None:
            check_positive(max_radius, "max_radius")
        x0, i = self.sample(n, generator, torch.float64, return_components=True)
        c = multivariate_cauchy(n, self.event_shape, generator, torch.float64, max_radius)
        x = (x0 + z * c).to(dtype or torch.get_default_dtype())
        return (x, i) if return_components else x

    def __repr__(self) -> str:
        return f"PoissonField(N={self.N}, event_shape={self.event_shape})"


class PoissonModel:
    r"""A :class:`PoissonField` seen through a schedule: a model with the one interface (lesson 13, eq. 13.8).

    ``model(x, t)`` returns the exact prediction of kind ``prediction`` built from $\hat x_0 = \mathbb E[x_0\mid x_t]$
    and $\hat c = \mathbb E[c\mid x_t]$ for $x_t = a_t x_0 + b_t c$. The lesson-6 solvers integrate its velocity;
    ``"score"`` is refused, because $-\hat c/b$ is the score only for Gaussian noise (use :meth:`PoissonField.score`).

    Parameters
    ----------
    field : PoissonField
        The charges.
    schedule : Schedule
        Gives $a_t, b_t$ (and derivatives) at the model's times.
    prediction : {"x0", "eps", "v", "velocity"}
        What a call returns (``"eps"`` is $\hat c$).

    Raises
    ------
    TypeError
        If ``field`` is not a :class:`PoissonField`, ``schedule`` not a schedule, or ``prediction`` not a string.
    ValueError
        If ``prediction`` is unknown or ``"score"``.
    """

    def __init__(self, field: PoissonField, schedule: Schedule, prediction: str = "x0") -> None:
        if not isinstance(field, PoissonField):
            raise TypeError(f"field must be a PoissonField, got {type(field).__name__}")
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a diffmath Schedule, got {type(schedule).__name__}")
        self.prediction = _check_poisson_prediction(prediction)
        self.field, self.schedule = field, schedule

    def __call__(self, x: Tensor, t: Tensor | float, cond: Tensor | None = None) -> Tensor:
        x = check_batch(x, "x")
        t_ = as_tensor(t, "t", x)
        if t_.dim() > 1 or (t_.dim() == 1 and t_.shape[0] not in (1, x.shape[0])):
            raise ValueError(f"t must be a scalar or have shape (B,) = ({x.shape[0]},), got {tuple(t_.shape)}")
        c = self.schedule.coefficients(t_)
        x0 = self.field.posterior_mean(x, c.a, c.b)
        if self.prediction == "x0":
            return x0
        a, b = (per_sample(v.reshape(-1), x, n) for v, n in ((c.a, "a"), (c.b, "b")))
        return from_pair(Pair(x0, (x - a * x0) / b), self.prediction, c.a, c.b, c.da, c.db)

    def __repr__(self) -> str:
        return f"PoissonModel({self.field!r}, {self.schedule!r}, prediction={self.prediction!r})"


def _check_poisson_prediction(prediction: object) -> str:
    kind = check_prediction(prediction)
    if kind == "score":
        raise ValueError(
            "prediction 'score' is not available for a Poisson model (-E[c|x]/b is the score for Gaussian noise only)"
        )
    return kind


def _shape(event_shape: int | tuple[int, ...]) -> tuple[int, ...]:
    try:
        shape = (event_shape,) if isinstance(event_shape, int) else tuple(event_shape)
    except TypeError:  # not an int nor a sequence
        shape = ()
    if not shape or any(not isinstance(s, int) or isinstance(s, bool) or s < 1 for s in shape):
        raise ValueError(f"event_shape must be a positive int or a tuple of positive ints, got {event_shape!r}")
    return shape


def _clip(c: Tensor, max_radius: float | None) -> Tensor:
    if max_radius is None:
        return c
    max_radius = check_positive(max_radius, "max_radius")
    r = c.flatten(1).norm(dim=1).reshape(-1, *([1] * (c.dim() - 1)))
    return c * torch.clamp(max_radius / r.clamp_min(1e-300), max=1.0)


def multivariate_cauchy(
    n: int,
    event_shape: int | tuple[int, ...],
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    max_radius: float | None = None,
) -> Tensor:
    r"""Multivariate Cauchy draws $c = \varepsilon_x/|\varepsilon_z|$, $(\varepsilon_x, \varepsilon_z) \sim
    \mathcal N(0, I_{d+1})$, of density $P_1(c) = C_d/(1 + \|c\|^2)^{(d+1)/2}$ (lesson 13, eq. 13.10).

    Parameters
    ----------
    n : int
        Number of draws.
    event_shape : int or tuple of int
        Shape of one draw ($d$ = its number of entries).
    generator : torch.Generator, optional
        Source of randomness.
    dtype : torch.dtype, optional
        Dtype (default: torch's default dtype).
    max_radius : float, optional
        Clip $\|c\|$ to this radius (the tail: $P(\|c\| > r) \approx$ const$/r$).

    Returns
    -------
    Tensor, shape (n, *event_shape)

    Raises
    ------
    ValueError
        If ``n`` is not a positive integer, ``event_shape`` is invalid or ``max_radius`` is not positive.
    TypeError
        If ``dtype`` is not a floating dtype.
    """
    shape, dtype = _shape(event_shape), check_dtype(dtype)
    if max_radius is not None:
        check_positive(max_radius, "max_radius")
    eps = torch.randn(check_int(n, "n"), math.prod(shape) + 1, generator=generator, dtype=torch.float64)
    c = (eps[:, :-1] / eps[:, -1:].abs()).reshape(n, *shape)
    return _clip(c, max_radius).to(dtype or torch.get_default_dtype())


def beta_prime_radius(
    n: int,
    d: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    max_radius: float | None = None,
) -> Tensor:
    r"""Radii $r = \sqrt{B/(1-B)}$, $B \sim \mathrm{Beta}(d/2, 1/2)$, of multivariate Cauchy draws: density
    $\propto r^{d-1}/(1 + r^2)^{(d+1)/2}$ (lesson 13, eq. 13.11; $r^2$ is beta-prime distributed).

    Parameters
    ----------
    n : int
        Number of radii.
    d : int
        Dimension of the Cauchy vector.
    generator : torch.Generator, optional
        Seeds numpy's beta sampler.
    dtype : torch.dtype, optional
        Dtype (default: torch's default dtype).
    max_radius : float, optional
        Clip the radii to this value.

    Returns
    -------
    Tensor, shape (n,)

    Raises
    ------
    ValueError
        If ``n`` or ``d`` is not a positive integer, or ``max_radius`` is not positive.
    TypeError
        If ``dtype`` is not a floating dtype.
    """
    check_int(n, "n")
    check_int(d, "d")
    dtype = check_dtype(dtype)
    if max_radius is not None:
        max_radius = check_positive(max_radius, "max_radius")
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    beta = np.random.default_rng(seed).beta(0.5 * d, 0.5, size=n)
    r = torch.from_numpy(np.sqrt(beta / np.maximum(1.0 - beta, 1e-300)))
    if max_radius is not None:
        r = r.clamp(max=max_radius)
    return r.to(dtype or torch.get_default_dtype())


def clip_radius(d: int, keep: float = 0.95) -> float:
    r"""The radius clip that keeps a fraction ``keep`` of the $d$-dimensional Cauchy prior's radius mass (lesson 13,
    eq. 13.12): $R_d = \sqrt{b/(1-b)}$ with $b$ the ``keep``-quantile of $\mathrm{Beta}(d/2, 1/2)$.

    A fixed clip does not carry across dimensions: the radius grows like $\sqrt d$ (for large $d$,
    $1 - B \approx G/(d/2)$ with $G \sim \mathrm{Gamma}(1/2)$, so $R_d \approx \sqrt{d / \chi^2_{1}(1 - \text{keep})}$,
    the $\chi^2_1$ quantile at $1 - $ ``keep``). A clip of 5 keeps 80% of the draws at $d = 2$, 11% at $d = 64$ (an
    8 px grey image) and 0.6% at $d = 192$; keeping 95% takes $R = 20.0$, $127$ and $221$.

    Parameters
    ----------
    d : int
        Dimension of the data (e.g. C * H * W).
    keep : float
        Fraction of prior draws left unclipped, in (0, 1).

    Returns
    -------
    float
        $R_d$.

    Raises
    ------
    ValueError
        If ``d`` is not a positive integer or ``keep`` is not in (0, 1).
    """
    from scipy.stats import beta

    check_int(d, "d")
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0 < keep < 1:
        raise ValueError(f"keep must be a fraction in (0, 1), got {keep!r}")
    b = float(beta.ppf(keep, 0.5 * d, 0.5))
    return math.sqrt(b / (1.0 - b))


def sample_prior(
    n: int,
    event_shape: int | tuple[int, ...],
    z_max: float,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    max_radius: float | None = None,
) -> Tensor:
    r"""Draws of the far-field prior on the plane $z = z_{\max}$: $p(x) = P_{z_{\max}}(x)$, the flux density of one
    charge at the origin; radius $z_{\max}\sqrt{B/(1-B)}$, direction uniform (lesson 13, eq. 13.11).

    Parameters
    ----------
    n : int
        Number of draws.
    event_shape : int or tuple of int
        Shape of one sample, e.g. ``2`` or ``(3, 16, 16)``.
    z_max : float
        Height of the plane.
    generator : torch.Generator, optional
        Source of randomness.
    dtype : torch.dtype, optional
        Dtype (default: torch's default dtype).
    max_radius : float, optional
        Clip the dimensionless radius $\|x\|/z_{\max}$ to this value (the Cauchy tail).

    Returns
    -------
    Tensor, shape (n, *event_shape)

    Raises
    ------
    ValueError
        If ``n`` is not a positive integer, ``event_shape`` is invalid, or ``z_max`` or ``max_radius`` is not
        positive.
    TypeError
        If ``dtype`` is not a floating dtype.
    """
    shape, z_max, dtype = _shape(event_shape), check_positive(z_max, "z_max"), check_dtype(dtype)
    d = math.prod(shape)
    r = beta_prime_radius(n, d, generator, torch.float64, max_radius)
    u = torch.randn(n, d, generator=generator, dtype=torch.float64)
    u = u / u.norm(dim=1, keepdim=True)
    return (z_max * r[:, None] * u).reshape(n, *shape).to(dtype or torch.get_default_dtype())


def uniform_hemisphere(
    n: int, d: int, radius: float, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    r"""Uniform points on the upper hemisphere $\{\|(x, z)\| = R,\ z > 0\}$ of $\mathbb R^{d+1}$ (lesson 13, eq. 13.12).

    Parameters
    ----------
    n : int
        Number of points.
    d : int
        Dimension of the data axes.
    radius : float
        $R$.
    generator : torch.Generator, optional
        Source of randomness.

    Returns
    -------
    (x, z) : (Tensor of shape (n, d), Tensor of shape (n,)), float64

    Raises
    ------
    ValueError
        If ``n`` or ``d`` is not a positive integer or ``radius`` is not positive.
    """
    check_int(n, "n")
    check_int(d, "d")
    radius = check_positive(radius, "radius")
    y = torch.randn(n, d + 1, generator=generator, dtype=torch.float64)
    y = radius * y / y.norm(dim=1, keepdim=True)
    return y[:, :-1], y[:, -1].abs()


def hemisphere_tv(
    field: PoissonField, radius: float, n: int = 100_000, generator: torch.Generator | None = None
) -> tuple[float, float]:
    r"""Total variation between where the field lines cross the hemisphere of radius $R$ and the uniform law on it,
    $\tfrac12\mathbb E_U\big|S_{d+1}R^d\,E\cdot\hat n - 1\big|$ by Monte Carlo over uniform points (lesson 13,
    eq. 13.12). The flux density through the hemisphere is $2E\cdot\hat n$; the uniform density $2/(S_{d+1}R^d)$.

    Parameters
    ----------
    field : PoissonField
        The charges (centre them near the origin).
    radius : float
        $R$.
    n : int
        Monte Carlo points.
    generator : torch.Generator, optional
        Source of randomness.

    Returns
    -------
    (tv, standard_error) : (float, float)

    Raises
    ------
    TypeError
        If ``field`` is not a :class:`PoissonField`.
    ValueError
        If ``n`` is not a positive integer or ``radius`` is not positive.
    """
    if not isinstance(field, PoissonField):
        raise TypeError(f"field must be a PoissonField, got {type(field).__name__}")
    radius = check_positive(radius, "radius")
    x, z = uniform_hemisphere(n, field.d, radius, generator)
    ex, ez = field.field(x.reshape(n, *field.event_shape), z)
    flux = ((ex.reshape(n, field.d) * x).sum(1) + ez * z) / radius
    dev = 0.5 * (sphere_area(field.d + 1) * radius**field.d * flux - 1.0).abs()
    return dev.mean().item(), (dev.std() / math.sqrt(n)).item()


def prior_tv(
    field: PoissonField, z: float, n: int = 100_000, generator: torch.Generator | None = None
) -> tuple[float, float]:
    r"""Total variation between the flux density $2E_z$ at height $z$ and the prior $P_z$ of one charge at the
    origin, $\tfrac12\mathbb E_{x\sim P_z}|2E_z(x)/P_z(x) - 1|$ by Monte Carlo (lesson 13, eq. 13.11).

    Parameters
    ----------
    field : PoissonField
        The charges.
    z : float
        Height of the plane.
    n : int
        Monte Carlo points (exact, unclipped draws of $P_z$).
    generator : torch.Generator, optional
        Source of randomness.

    Returns
    -------
    (tv, standard_error) : (float, float)

    Raises
    ------
    TypeError
        If ``field`` is not a :class:`PoissonField`.
    ValueError
        If ``n`` is not a positive integer or ``z`` is not positive.
    """
    if not isinstance(field, PoissonField):
        raise TypeError(f"field must be a PoissonField, got {type(field).__name__}")
    z = check_positive(z, "z")
    x = sample_prior(n, field.event_shape, z, generator, torch.float64)
    dev = 0.5 * (torch.exp(field.noised_log_prob(x, 1.0, z) - poisson_log_kernel(x, z)) - 1.0).abs()
    return dev.mean().item(), (dev.std() / math.sqrt(n)).item()


class PoissonLoss:
    r"""PFGM's training objective for :func:`~diffmath.train.training.train` (lesson 13, eqs. 13.14-13.15).

    Draw $t$ uniform on $(0, t_{\max}]$ (on :class:`~diffmath.core.schedules.VE` that is $z = b_t$ log-uniform), or
    $z = b_t/a_t$ log-uniform on ``z_range`` (eq. 13.18: the heights the log-$z$ sampling grid visits), perturb
    $x = a_t x_0 + b_t c$ with $c$ multivariate Cauchy (radius clipped at ``max_radius``) and regress the model onto
    its own ``prediction`` kind of the target pair:

    - ``target="unbiased"``: $(x_0, c)$ itself. The minimiser is $\mathbb E[x_0\mid x_t]$, i.e. the velocity
      $E_x/E_z$ (eq. 13.14); the loss is bounded for an ``"x0"`` model, heavy-tailed for ``"eps"``/``"velocity"``.
    - ``target="batch"``: the self-normalised field of the whole minibatch as charges,
      $(\hat x_0, (x - a\hat x_0)/b)$ with $\hat x_0$ the batch's :meth:`PoissonField.posterior_mean`: the paper's
      large-batch target in our parameterisation (eq. 13.15; unbiased at every batch size, lesson 18, eq. 18.10,
      up to the radius clip). The batch holds the charge
      $x_0$ that $x$ came from, so $\hat c = c + a(x_0 - \hat x_0)/b$ stays finite as $b_t \to 0$. It averages
      the noisy target over the charges near $x$: a far smaller variance than ``"unbiased"``'s at small $z$.

    Parameters
    ----------
    schedule : Schedule
        A continuous schedule; $b_t$ plays $z$.
    target : {"unbiased", "batch"}
        Which target.
    max_radius : float, optional
        Clip $\|c\|$ (default 100: about 1% of draws in 2-D); sample with the same clip in :func:`pfgm_sample`.
        The clipped law is still a scale family, so its path has the same straight-line ODE (lesson 14); a smaller
        clip shortens the tail the network must fit (eq. 13.19).
    sigma_data : float, optional
        If given, measure the error on $x_0$ (the model's output converted by :func:`~diffmath.core.notation.to_pair`)
        weighted by $1 + \sigma_{\rm data}^2/b_t^2$ (eq. 13.16), so that small $z$, where the samples are decided,
        counts as much as large $z$. With ``prediction="v"`` and $a = 1$, $\hat x_0 = (x - z\hat v)/(1 + z^2)$
        carries a skip connection. Default: plain squared error of the model's own prediction kind.
    z_range : (float, float), optional
        $(z_{\min}, z_{\max})$: draw $z = b_t/a_t$ log-uniform on it (eq. 13.18) instead of $t$ uniform, $t$
        from a table of $b/a$ (relative error below $10^{-3}$). Match it to the sampling grid of
        :func:`pfgm_sample`: from below its last nonzero height up to its prior plane.

    Raises
    ------
    TypeError
        If ``schedule`` is not a continuous schedule.
    ValueError
        If ``target`` is unknown, ``max_radius`` or ``sigma_data`` is not positive, or ``z_range`` is not two
        increasing positive finite numbers. When called: if ``x0`` is not a non-empty finite floating batch, the
        model does not follow the one interface (or predicts ``"score"``), or it returns a tensor of another shape
        than its input (a (B, 1) or (1, d) output would broadcast against the target).
    """

    def __init__(
        self,
        schedule: Schedule,
        target: str = "unbiased",
        max_radius: float | None = 100.0,
        sigma_data: float | None = None,
        z_range: tuple[float, float] | None = None,
    ) -> None:
        if not isinstance(schedule, Schedule) or schedule.discrete:
            raise TypeError(f"schedule must be a continuous diffmath Schedule, got {schedule!r}")
        if target not in ("unbiased", "batch"):
            raise ValueError(f"target must be 'unbiased' or 'batch', got {target!r}")
        max_radius = None if max_radius is None else check_positive(max_radius, "max_radius")
        sigma_data = None if sigma_data is None else check_positive(sigma_data, "sigma_data")
        if z_range is not None:
            given = z_range
            try:
                z_range = tuple(check_positive(v, "z_range") for v in z_range)
            except (TypeError, ValueError):  # not a sequence of positive finite numbers
                z_range = ()
            if len(z_range) != 2 or not z_range[0] < z_range[1]:
                raise ValueError(f"z_range must be (z_min, z_max) with 0 < z_min < z_max < inf, got {given!r}")
        self.schedule, self.target, self.max_radius, self.sigma_data = schedule, target, max_radius, sigma_data
        self.z_range = z_range
        if z_range is not None:  # a table of ln(b/a) on a fine t grid, inverted by interpolation (no bisection)
            t_tab = float(schedule.t_max) * torch.linspace(0.0, 1.0, 8193, dtype=torch.float64) ** 4
            sig = schedule.sigma(t_tab)
            keep = torch.isfinite(sig) & (sig > 0)
            self._t_tab, self._log_sigma_tab = t_tab[keep], torch.log(sig[keep])
            if not (self._log_sigma_tab.diff() > 0).all() or not (
                self._log_sigma_tab[0] <= math.log(z_range[0]) and math.log(z_range[1]) <= self._log_sigma_tab[-1]
            ):
                raise ValueError(f"z_range {z_range} must lie inside the range of b/a on {schedule.name!r}")

    def __call__(self, model: nn.Module, x0: Tensor, generator: torch.Generator, cond: Tensor | None = None) -> Tensor:
        x0 = check_nonempty(check_batch(x0, "x0"), "x0")
        kind, draws = _check_poisson_prediction(check_model(unwrap(model)).prediction), as_draws(generator)
        B = x0.shape[0]
        u = draws.rand((B,), x0.dtype, x0.device)
        if self.z_range is None:
            t = self.schedule.t_max * (1.0 - u)
        else:  # z = b/a log-uniform on z_range: the times the log-z sampling grid visits (eq. 13.17)
            lo, hi = math.log(self.z_range[0]), math.log(self.z_range[1])
            log_z = lo + (hi - lo) * u.double()
            tab, t_tab = self._log_sigma_tab.to(u.device), self._t_tab.to(u.device)
            i = torch.searchsorted(tab, log_z).clamp(1, tab.shape[0] - 1)
            w = (log_z - tab[i - 1]) / (tab[i] - tab[i - 1])
            t = (t_tab[i - 1] + w * (t_tab[i] - t_tab[i - 1])).to(x0.dtype)
        c_t = self.schedule.coefficients(t)
        a, b = (per_sample(v, x0, n) for v, n in ((c_t.a, "a"), (c_t.b, "b")))

        def cauchy(shape, g, dtype):
            return multivariate_cauchy(shape[0], tuple(shape[1:]), g, dtype, self.max_radius)

        c = draws.draw(cauchy, x0.shape, x0.dtype, x0.device)
        x = a * x0 + b * c
        if self.target == "batch":
            with torch.no_grad():  # b_t may round to 0 near t = 0: the posterior is then the charge x0 itself
                x0_hat = PoissonField(x0).posterior_mean(x, c_t.a, c_t.b.clamp_min(1e-6))
            pair = Pair(x0_hat, c + a * (x0 - x0_hat) / b.clamp_min(1e-6))
        else:
            pair = Pair(x0, c)
        out = check_output(model(x, t, cond), x)
        if self.sigma_data is None:
            return ((out - from_pair(pair, kind, c_t.a, c_t.b, c_t.da, c_t.db)) ** 2).mean()
        x0_hat = to_pair(out, kind, x, c_t.a, c_t.b, c_t.da, c_t.db).x0
        weight = 1.0 + (self.sigma_data / b) ** 2  # eq. 13.16: the x0 error in units of the noise (Karras et al.)
        return (weight * (x0_hat - pair.x0) ** 2).mean()

    def __repr__(self) -> str:
        return (
            f"poisson_loss({self.schedule.name}, target={self.target}, max_radius={self.max_radius}, "
            f"sigma_data={self.sigma_data}, z_range={self.z_range})"
        )


def pfgm_grid(schedule: Schedule, num_steps: int, z_max: float | None = None, spacing: str = "log-snr") -> Tensor:
    r"""The time grid of Poisson-flow sampling from the prior plane $z = z_{\max}$ (lesson 13, eq. 13.17):
    ``schedule.grid(num_steps, spacing, t_start)`` with $t_{\rm start}$ the time where $b/a = z_{\max}$.

    On the default ``"log-snr"`` spacing the grid is log-uniform in $z = b/a$ (lesson 0, sec. 0.4), the spacing
    lesson 13's numbers use.

    Parameters
    ----------
    schedule : Schedule
        The schedule to sample on.
    num_steps : int
        Steps of the grid.
    z_max : float, optional
        Height of the prior plane; default $b/a$ at $t_{\max}$ (the grid then starts at $t_{\max}$).
    spacing : str
        Grid spacing of :meth:`~diffmath.core.schedules.Schedule.grid`.

    Returns
    -------
    Tensor, shape (num_steps + 1,), float64
        Decreasing times from the plane $z = z_{\max}$ to the data.

    Raises
    ------
    TypeError
        If ``schedule`` is not a :class:`~diffmath.core.schedules.Schedule`.
    ValueError
        If ``z_max`` is not a positive number or exceeds $b/a$ at $t_{\max}$, or as
        :meth:`~diffmath.core.schedules.Schedule.grid`.
    """
    check_schedule(schedule)
    if z_max is None:
        return schedule.grid(num_steps, spacing)
    z_max = check_positive(z_max, "z_max")
    t_max = float(schedule.t_max)
    top = schedule.sigma(torch.tensor(t_max, dtype=torch.float64)).item()
    if z_max > top:
        raise ValueError(f"z_max={z_max:g} exceeds b/a = {top:g} at t_max on {schedule.name!r}: no time reaches it")
    t_start = schedule.t_of_sigma(torch.tensor([z_max], dtype=torch.float64), 0.0, t_max).item()
    return schedule.grid(num_steps, spacing, t_start=t_start)


def pfgm_sample(
    model: object,
    n: int,
    event_shape: int | tuple[int, ...],
    grid: Tensor,
    schedule: Schedule,
    method: str = "dpm++2m",
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    max_radius: float | None = 100.0,
    device: str | torch.device | None = None,
) -> Tensor:
    r"""Generate with Poisson flow: prior draws on the plane $z = z_{\max}$ (eq. 13.11), then the backward ODE
    $\mathrm dy/\mathrm dz = E_y/E_z$ (lesson 13, eq. 13.8) with :func:`~diffmath.ode.ode_sample` along ``grid``.

    On any schedule the path $x_t = a_t x_0 + b_t c$ is PFGM in the coordinates $y = x/a_t$, $z = b_t/a_t$
    (eq. 13.17; as DDIM is VE in $x/a$, lesson 4): the prior plane is $z_{\max} = b/a$ at ``grid[0]``, and we start
    there with $x = a\,y$, $y$ drawn from the prior. :func:`pfgm_grid` makes the grid from a plane's height
    (``pfgm_grid(schedule, 20, z_max=40.0)``, log-uniform in $z$); Euler and Heun run in ``variable="sigma"``,
    i.e. in $(y, z)$ exactly.

    The arguments follow every sampler's order, (model, x, grid, schedule, ...) (lesson 0, sec. 0.4), with one
    difference: ``n`` and ``event_shape`` stand where the start ``x`` goes, because the prior's height is fixed by
    the grid's first time, so the draw is made here, where it cannot disagree with the grid. The default solver is
    DPM-Solver++(2M), not :func:`~diffmath.ode.ode_sample`'s Heun: it integrates the linear part exactly in
    $\ln z$, one network evaluation a step, which lesson 13's numbers (sec. 13.7) are measured with.

    Parameters
    ----------
    model : Model
        Any model with the one interface on ``schedule`` (a :class:`PoissonModel` or a trained network).
    n : int
        Number of samples.
    event_shape : int or tuple of int
        Shape of one sample.
    grid : Tensor, shape (K + 1,)
        Strictly decreasing times, from the prior plane (where $b/a$ must be finite) to the data, e.g.
        :func:`pfgm_grid`.
    schedule : Schedule
        A continuous schedule.
    method : {"euler", "heun", "dpm++2m"}
        The solver (DPM-Solver++ integrates the linear part exactly in $\ln z$).
    generator : torch.Generator, optional
        Source of the prior draws.
    dtype : torch.dtype, optional
        Dtype (default: torch's default dtype).
    max_radius : float, optional
        Clip of the prior's dimensionless radius (use the training clip).
    device : str or torch.device, optional
        Where to sample (default: the model's device, :func:`~diffmath.core.device.model_device`); the prior is
        drawn on the CPU from ``generator`` and moved, so every device starts from the same draws.

    Returns
    -------
    Tensor, shape (n, *event_shape)

    Raises
    ------
    TypeError
        If ``grid`` is a number of steps or a schedule (make one with :func:`pfgm_grid`), or as
        :func:`sample_prior` and :func:`~diffmath.ode.solve_ode`.
    ValueError
        If $b/a$ is infinite at ``grid[0]`` (no prior plane there: start lower, e.g. ``pfgm_grid(schedule, 20,
        z_max=40.0)``), or as :func:`sample_prior`, :func:`~diffmath.sampling.loop.check_grid` and
        :func:`~diffmath.ode.solve_ode`.
    """
    from diffmath.ode import _require_grid, ode_sample
    from diffmath.sampling.loop import check_grid

    _require_grid(grid, "pfgm_sample", "pfgm_grid(schedule, {n}, z_max=40.0)")
    check_schedule(schedule, discrete=False)
    shape, dtype = _shape(event_shape), check_dtype(dtype)
    g = check_grid(grid, schedule)
    z_max = schedule.sigma(g[0]).item()
    if not math.isfinite(z_max):
        raise ValueError(
            f"b/a is infinite at grid[0] = {g[0].item():g} on {schedule.name!r} (no prior plane z_max there): start "
            "the grid lower, e.g. pfgm_grid(schedule, 20, z_max=40.0)"
        )
    x = schedule.coefficients(g[0]).a.item() * sample_prior(n, shape, z_max, generator, torch.float64, max_radius)
    where = model_device(model) if device is None else resolve_device(device)
    x = x.to(where, dtype or torch.get_default_dtype())
    with torch.no_grad():
        return ode_sample(model, x, grid, schedule, method, variable="sigma")
