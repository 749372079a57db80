r"""Flow matching and rectified flow (lessons 15 and 17).

A **conditional path** moves one data point $x_0$ to a prior sample $x_1$,

$$x_t = \mu_t(x_0) + \sigma_t\,x_1, \qquad \mu_0(x_0) = x_0,\ \sigma_0 = 0 \qquad\text{(lesson 15, eq. 15.4)},$$

with velocity $\dot\mu_t(x_0) + \dot\sigma_t x_1$. With $\mu_t(x_0) = a_t x_0$, $\sigma_t = b_t$ and a Gaussian prior it
is a diffusion :class:`~diffmath.core.schedules.Schedule`; :class:`ConditionalPath` adds any prior and any $\mu_t$. The
marginal velocity is the posterior mean of the conditional one (eq. 15.9); a network learns it by regression (the
flow-matching loss, eq. 15.10). Rectified flow is the straight path $\mu_t = (1-t)x_0$, $\sigma_t = t$; reflow
retrains it on its own ODE pairs, which straightens the paths (lesson 17, eq. 17.9) and makes one Euler step a
good sampler.

Time runs as everywhere in diffmath: $t = 0$ data, $t = 1$ prior. Liu et al. and Lipman et al. put the prior at
their $t = 0$: their time is our $1 - t$, their velocity minus ours.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from diffmath.core._validate import (
    as_tensor,
    check_batch,
    check_dtype,
    check_finite,
    check_int,
    check_nonempty,
    check_output,
    check_real,
    check_schedule,
)
from diffmath.core.device import unwrap
from diffmath.core.models import Model, check_model, predict
from diffmath.core.schedules import Coefficients, LinearPath, Schedule, get_schedule
from diffmath.exact.mixtures import GaussianMixture
from diffmath.ode import _require_grid, ode_sample, solve_ode
from diffmath.sampling.loop import check_grid
from diffmath.train.training import _check_trainable, as_draws, fit

COUPLINGS: tuple[str, ...] = ("independent", "ot")
"""Couplings of data and prior samples in :class:`FlowMatchingLoss`: independent draws, or minibatch optimal transport."""


# ---------------------------------------------------------------------------------------------------------- priors
class GaussianPrior:
    r"""The standard normal prior $p_1 = \mathcal N(0, I)$ of a conditional path (lesson 15, eq. 15.5).

    It takes no parameters.
    """

    name = "gaussian"

    def sample(self, shape: tuple[int, ...], generator: torch.Generator | None = None, dtype=torch.float64) -> Tensor:
        r"""Draw standard normal samples (lesson 15, eq. 15.5).

        Parameters
        ----------
        shape : tuple of int
            ``(B, ...)``.
        generator : torch.Generator, optional
            Source of randomness.
        dtype : torch.dtype
            Dtype of the samples.

        Returns
        -------
        Tensor
            Samples of the given shape.

        Raises
        ------
        ValueError
            If ``shape`` is not a non-empty tuple of non-negative integers.
        TypeError
            If ``dtype`` is not a floating dtype.
        """
        return torch.randn(_check_shape(shape), generator=generator, dtype=_prior_dtype(dtype))

    def log_prob(self, x: Tensor) -> Tensor:
        r"""$\log p_1(x) = -\tfrac12\|x\|^2 - \tfrac d2\log 2\pi$ (lesson 15, eq. 15.5).

        Parameters
        ----------
        x : Tensor, shape (B, ...)
            Points.

        Returns
        -------
        Tensor, shape (B,)
            The log density.
        """
        flat = check_batch(x, "x").flatten(1)
        return -0.5 * (flat**2).sum(1) - 0.5 * flat.shape[1] * math.log(2 * math.pi)

    def __repr__(self) -> str:
        return "GaussianPrior()"


class UniformPrior:
    r"""The uniform prior on the box $[\text{low}, \text{high}]^d$ (lesson 15, eq. 15.6).

    Parameters
    ----------
    low, high : float
        Edges of the box, ``low < high``.

    Raises
    ------
    ValueError
        Unless ``low < high`` (both finite).
    """

    def __init__(self, low: float = -1.0, high: float = 1.0) -> None:
        low, high = check_real(low, "low"), check_real(high, "high")
        if not low < high:
            raise ValueError(f"need low < high, got low={low}, high={high}")
        self.low, self.high = float(low), float(high)
        self.name = f"uniform({low:g},{high:g})"

    def sample(self, shape: tuple[int, ...], generator: torch.Generator | None = None, dtype=torch.float64) -> Tensor:
        r"""Draw uniform samples on the box (lesson 15, eq. 15.6).

        Parameters
        ----------
        shape : tuple of int
            ``(B, ...)``.
        generator : torch.Generator, optional
            Source of randomness.
        dtype : torch.dtype
            Dtype of the samples.

        Returns
        -------
        Tensor
            Samples of the given shape.

        Raises
        ------
        ValueError
            If ``shape`` is not a non-empty tuple of non-negative integers.
        TypeError
            If ``dtype`` is not a floating dtype.
        """
        shape, dtype = _check_shape(shape), _prior_dtype(dtype)
        return self.low + (self.high - self.low) * torch.rand(shape, generator=generator, dtype=dtype)

    def log_prob(self, x: Tensor) -> Tensor:
        r"""$\log p_1(x) = -d\log(\text{high} - \text{low})$ inside the box, $-\infty$ outside (lesson 15, eq. 15.6).

        Parameters
        ----------
        x : Tensor, shape (B, ...)
            Points.

        Returns
        -------
        Tensor, shape (B,)
            The log density.
        """
        flat = check_batch(x, "x").flatten(1)
        inside = ((flat >= self.low) & (flat <= self.high)).all(1)
        value = -flat.shape[1] * math.log(self.high - self.low)
        return torch.where(inside, torch.full_like(flat[:, 0], value), torch.full_like(flat[:, 0], -math.inf))

    def distance(self, x: Tensor) -> Tensor:
        r"""Euclidean distance from each point to the box, 0 inside (lesson 15, eq. 15.6).

        Parameters
        ----------
        x : Tensor, shape (B, ...)
            Points.

        Returns
        -------
        Tensor, shape (B,)
            The distances.
        """
        flat = check_batch(x, "x").flatten(1)
        return (flat - flat.clamp(self.low, self.high)).norm(dim=1)

    def __repr__(self) -> str:
        return f"UniformPrior({self.low:g}, {self.high:g})"


class SamplerPrior:
    r"""Any prior given by a sampling function ``fn(shape, generator, dtype) -> Tensor`` (lesson 15, eq. 15.4).

    Training (:class:`FlowMatchingLoss`) needs only samples; the exact velocity (:class:`EmpiricalFlow`) needs a
    density, which this prior does not have.

    Parameters
    ----------
    fn : callable
        ``fn(shape, generator, dtype)`` returning prior samples of the given shape.
    name : str
        Label used in ``repr`` (and so in checkpoint fingerprints).

    Raises
    ------
    TypeError
        If ``fn`` is not callable.
    """

    def __init__(self, fn: Callable[..., Tensor], name: str = "custom") -> None:
        if not callable(fn):
            raise TypeError(f"a prior must be 'gaussian', 'uniform', a prior object or a callable, got {fn!r}")
        self.fn, self.name = fn, name

    def sample(self, shape: tuple[int, ...], generator: torch.Generator | None = None, dtype=torch.float64) -> Tensor:
        r"""Samples from ``fn`` (lesson 15, eq. 15.4).

        Parameters
        ----------
        shape : tuple of int
            ``(B, ...)``.
        generator : torch.Generator, optional
            Source of randomness.
        dtype : torch.dtype
            Dtype of the samples.

        Returns
        -------
        Tensor
            Samples of the given shape.

        Raises
        ------
        ValueError
            If ``shape`` is not a non-empty tuple of non-negative integers, or ``fn`` returns a tensor of another
            shape.
        TypeError
            If ``dtype`` is not a floating dtype.
        """
        shape, dtype = _check_shape(shape), _prior_dtype(dtype)
        out = self.fn(shape, generator, dtype)
        if not isinstance(out, Tensor) or tuple(out.shape) != shape:
            raise ValueError(f"the prior's sampler must return a tensor of shape {tuple(shape)}")
        return out.to(dtype)

    def log_prob(self, x: Tensor) -> Tensor:
        r"""Not available: a sampler-only prior has no density (lesson 15, eq. 15.8 needs one).

        Parameters
        ----------
        x : Tensor
            Ignored.

        Returns
        -------
        Tensor
            Never returns.

        Raises
        ------
        ValueError
            Always.
        """
        raise ValueError(f"prior {self.name!r} is given by samples only: it has no log density")

    def __repr__(self) -> str:
        return f"SamplerPrior({self.name!r})"


def _check_shape(shape: object) -> tuple[int, ...]:
    """A sample shape (B, ...) of non-negative integer sizes, as a tuple."""
    ok = isinstance(shape, (tuple, list, torch.Size)) and len(shape) > 0
    if not ok or any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in shape):
        raise ValueError(f"shape must be a tuple (B, ...) of non-negative integers, got {shape!r}")
    return tuple(shape)


def _prior_dtype(dtype: object) -> torch.dtype:
    return check_dtype(dtype) or torch.get_default_dtype()


def _as_prior(prior: object):
    if prior is None or prior == "gaussian":
        return GaussianPrior()
    if prior == "uniform":
        return UniformPrior()
    if isinstance(prior, (GaussianPrior, UniformPrior, SamplerPrior)):
        return prior
    if isinstance(prior, str):
        raise ValueError(f"prior must be 'gaussian', 'uniform', a prior object or a callable, got {prior!r}")
    return SamplerPrior(prior)


# ---------------------------------------------------------------------------------------------------------- paths
class OTPath(Schedule):
    r"""Lipman et al.'s optimal-transport path in our time: $a_t = 1 - t$, $b_t = \sigma_{\min} + (1 - \sigma_{\min})t$
    (lesson 15, eq. 15.12).

    With $\sigma_{\min} = 0$ it is :class:`~diffmath.core.schedules.LinearPath` (rectified flow); with $\sigma_{\min} > 0$
    the data end keeps a little noise, as in Lipman's eq. 20 after $t \to 1 - t$.

    Parameters
    ----------
    sigma_min : float
        $b_0$, in $[0, 1)$.

    Raises
    ------
    ValueError
        Unless ``0 <= sigma_min < 1``.
    """

    def __init__(self, sigma_min: float = 0.0) -> None:
        if not 0 <= check_real(sigma_min, "sigma_min") < 1:
            raise ValueError(f"sigma_min must lie in [0, 1), got {sigma_min}")
        self.sigma_min = float(sigma_min)
        self.name = f"ot-path(sigma_min={sigma_min:g})"

    def _coefficients(self, t: Tensor) -> Coefficients:
        s = self.sigma_min
        return Coefficients(1.0 - t, s + (1.0 - s) * t, -torch.ones_like(t), torch.full_like(t, 1.0 - s))


class FunctionSchedule(Schedule):
    r"""A continuous schedule from four functions of $t$: $a_t, b_t, \dot a_t, \dot b_t$ (lesson 15, eq. 15.4), e.g. any
    $\sigma_t$ of a conditional path.

    Parameters
    ----------
    a, b, da, db : callable
        Functions of a float64 tensor of times returning tensors of its shape; ``da``, ``db`` are the derivatives of
        ``a``, ``b``.
    name : str
        Label used in messages, ``repr`` and checkpoint fingerprints.

    Raises
    ------
    TypeError
        If one of the four is not callable.
    """

    def __init__(
        self,
        a: Callable[[Tensor], Tensor],
        b: Callable[[Tensor], Tensor],
        da: Callable[[Tensor], Tensor],
        db: Callable[[Tensor], Tensor],
        name: str = "custom",
    ) -> None:
        for key, fn in (("a", a), ("b", b), ("da", da), ("db", db)):
            if not callable(fn):
                raise TypeError(f"{key} must be a function of t, got {type(fn).__name__}")
        self._fns, self.name = (a, b, da, db), name

    def _coefficients(self, t: Tensor) -> Coefficients:
        return Coefficients(*(torch.as_tensor(fn(t), dtype=t.dtype).expand(t.shape) for fn in self._fns))


class ConditionalPath(Schedule):
    r"""A conditional path $x_t = \mu_t(x_0) + \sigma_t x_1$, $x_1 \sim p_1$ (lesson 15, eq. 15.4).

    $\sigma_t$ is the base schedule's $b_t$; $\mu_t(x_0)$ is $a_t x_0$ unless ``mu`` is given. It is itself a
    :class:`~diffmath.core.schedules.Schedule` (the base's coefficients), so grids and the ODE solvers of lesson 6 take it
    as they are; a model predicting ``"velocity"`` is integrated without conversion.

    Parameters
    ----------
    schedule : Schedule or str
        Continuous base schedule (or its name, e.g. ``"rectified-flow"``, ``"vp-cosine"``).
    prior : {"gaussian", "uniform"}, prior object or callable
        $p_1$: :class:`GaussianPrior`, :class:`UniformPrior` on $[-1, 1]^d$, a prior object, or a sampler
        ``fn(shape, generator, dtype)``.
    mu, dmu : callable, optional
        $\mu_t(x_0)$ and $\partial_t\mu_t(x_0)$ as ``fn(x0, t)`` with ``t`` of shape (B,); give both or neither.

    Raises
    ------
    TypeError
        If ``schedule`` is not a Schedule or a name, or ``prior`` is not a prior or a callable.
    ValueError
        If the schedule is discrete or unknown, the prior name is unknown, or only one of ``mu``, ``dmu`` is given.
    """

    def __init__(
        self,
        schedule: Schedule | str = "rectified-flow",
        prior: object = "gaussian",
        mu: Callable[[Tensor, Tensor], Tensor] | None = None,
        dmu: Callable[[Tensor, Tensor], Tensor] | None = None,
    ) -> None:
        base = get_schedule(schedule) if isinstance(schedule, str) else schedule
        if not isinstance(base, Schedule):
            raise TypeError(f"schedule must be a Schedule or a schedule name, got {type(schedule).__name__}")
        if isinstance(base, ConditionalPath):
            base = base.base
        if base.discrete:
            raise ValueError(f"a conditional path needs a continuous schedule (derivatives); got {base.name!r}")
        if (mu is None) != (dmu is None):
            raise ValueError("give both mu and dmu (the path's mean and its time derivative), or neither")
        for key, fn in (("mu", mu), ("dmu", dmu)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{key} must be a function fn(x0, t), got {type(fn).__name__}")
        self.base, self.prior, self._mu, self._dmu = base, _as_prior(prior), mu, dmu
        self.t_max = base.t_max
        self.name = f"{base.name}|{self.prior.name}" + ("|custom-mu" if mu is not None else "")

    def _coefficients(self, t: Tensor) -> Coefficients:
        return self.base._coefficients(t)

    def _view(self, c: Tensor, x: Tensor) -> Tensor:
        return c.reshape(-1, *([1] * (x.dim() - 1)))

    def _times(self, t: Tensor | float, x: Tensor) -> Tensor:
        t_ = self.check_t(as_tensor(t, "t", x))
        if t_.dim() == 0:
            return t_.expand(x.shape[0])
        if t_.shape != (x.shape[0],):
            raise ValueError(f"t must be a scalar or have shape (B,) = ({x.shape[0]},), got {tuple(t_.shape)}")
        return t_

    def _point_and_target(self, x0: Tensor, x1: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """x_t and its target for checked inputs and t of shape (B,): one coefficient evaluation, no validation."""
        c = self.base._coefficients(t)
        b, db = self._view(c.b, x0), self._view(c.db, x0)
        if self._mu is None:
            mu, dmu = self._view(c.a, x0) * x0, self._view(c.da, x0) * x0
        else:
            mu, dmu = self._mu(x0, t), self._dmu(x0, t)
        return mu + b * x1, dmu + db * x1

    def mean(self, x0: Tensor, t: Tensor | float) -> Tensor:
        r"""$\mu_t(x_0)$ (lesson 15, eq. 15.4): $a_t x_0$ unless the path was given its own ``mu``.

        Parameters
        ----------
        x0 : Tensor, shape (B, ...)
            Data points.
        t : float or Tensor of shape (B,)
            Times.

        Returns
        -------
        Tensor, shape (B, ...)

        Raises
        ------
        TypeError, ValueError
            If ``x0`` is not a finite floating batch, or ``t`` lies outside the time range or has the wrong shape.
        """
        x0 = check_batch(x0, "x0")
        t_ = self._times(t, x0)
        if self._mu is not None:
            return self._mu(x0, t_)
        return self._view(self.coefficients(t_).a, x0) * x0

    def mean_velocity(self, x0: Tensor, t: Tensor | float) -> Tensor:
        r"""$\partial_t\mu_t(x_0)$ (lesson 15, eq. 15.7): $\dot a_t x_0$ unless the path was given its own ``dmu``.

        Parameters
        ----------
        x0 : Tensor, shape (B, ...)
            Data points.
        t : float or Tensor of shape (B,)
            Times.

        Returns
        -------
        Tensor, shape (B, ...)

        Raises
        ------
        TypeError, ValueError
            As :meth:`mean`.
        """
        x0 = check_batch(x0, "x0")
        t_ = self._times(t, x0)
        if self._dmu is not None:
            return self._dmu(x0, t_)
        return self._view(self.coefficients(t_).da, x0) * x0

    def sample(self, x0: Tensor, t: Tensor | float, x1: Tensor) -> Tensor:
        r"""The point $x_t = \mu_t(x_0) + \sigma_t x_1$ of the conditional path (lesson 15, eq. 15.4).

        Parameters
        ----------
        x0, x1 : Tensor, shape (B, ...)
            Data points and prior samples (coupled row by row).
        t : float or Tensor of shape (B,)
            Times.

        Returns
        -------
        Tensor, shape (B, ...)

        Raises
        ------
        TypeError, ValueError
            As :meth:`mean`, or if ``x1`` does not have the shape of ``x0``.
        """
        _same(x0, x1)
        t_ = self._times(t, x0)
        return self.mean(x0, t_) + self._view(self.coefficients(t_).b, x0) * x1

    def target(self, x0: Tensor, x1: Tensor, t: Tensor | float) -> Tensor:
        r"""The conditional velocity along the path, $\dot\mu_t(x_0) + \dot\sigma_t x_1$ (lesson 15, eq. 15.7):
        the regression target of flow matching (eq. 15.10).

        Parameters
        ----------
        x0, x1 : Tensor, shape (B, ...)
            Data points and prior samples (coupled row by row).
        t : float or Tensor of shape (B,)
            Times.

        Returns
        -------
        Tensor, shape (B, ...)

        Raises
        ------
        TypeError, ValueError
            As :meth:`sample`.
        """
        _same(x0, x1)
        t_ = self._times(t, x0)
        return self.mean_velocity(x0, t_) + self._view(self.coefficients(t_).db, x0) * x1

    def conditional_velocity(self, x: Tensor, x0: Tensor, t: Tensor | float) -> Tensor:
        r"""The field $f_t(x\mid x_0) = \dot\mu_t(x_0) + \frac{\dot\sigma_t}{\sigma_t}\big(x - \mu_t(x_0)\big)$ whose
        characteristics are the paths from $x_0$ (lesson 15, eq. 15.7).

        Parameters
        ----------
        x, x0 : Tensor, shape (B, ...)
            Points and the data points they are conditioned on.
        t : float or Tensor of shape (B,)
            Times, with $\sigma_t > 0$.

        Returns
        -------
        Tensor, shape (B, ...)

        Raises
        ------
        TypeError, ValueError
            As :meth:`sample`, or if $\sigma_t = 0$.
        """
        _same(x0, x, "x")
        t_ = self._times(t, x0)
        c = self.coefficients(t_)
        if (c.b <= 0).any():
            raise ValueError("the conditional velocity needs sigma_t > 0 (t > 0 on a path that starts at the data)")
        return self.mean_velocity(x0, t_) + self._view(c.db / c.b, x0) * (x - self.mean(x0, t_))

    def conditional_log_prob(self, x: Tensor, x0: Tensor, t: Tensor | float) -> Tensor:
        r"""$\log p_t(x\mid x_0) = \log p_1\big((x - \mu_t(x_0))/\sigma_t\big) - d\log\sigma_t$ (lesson 15, eq. 15.8).

        Parameters
        ----------
        x, x0 : Tensor, shape (B, ...)
            Points and the data points they are conditioned on.
        t : float or Tensor of shape (B,)
            Times, with $\sigma_t > 0$.

        Returns
        -------
        Tensor, shape (B,)

        Raises
        ------
        TypeError, ValueError
            As :meth:`conditional_velocity`, or if the prior has no density.
        """
        _same(x0, x, "x")
        t_ = self._times(t, x0)
        b = self.coefficients(t_).b
        if (b <= 0).any():
            raise ValueError("the conditional density needs sigma_t > 0 (t > 0 on a path that starts at the data)")
        u = (x - self.mean(x0, t_)) / self._view(b, x0)
        d = math.prod(x0.shape[1:])
        return self.prior.log_prob(u) - d * torch.log(b)

    def sample_prior(self, shape: tuple[int, ...], generator: torch.Generator | None = None, dtype=torch.float64):
        r"""Draw $x_1 \sim p_1$ (lesson 15, eq. 15.4): the starting points of sampling.

        Parameters
        ----------
        shape : tuple of int
            ``(B, ...)``.
        generator : torch.Generator, optional
            Source of randomness.
        dtype : torch.dtype
            Dtype of the samples.

        Returns
        -------
        Tensor
            Samples of the given shape.

        Raises
        ------
        ValueError
            If ``shape`` is not a non-empty tuple of non-negative integers.
        TypeError
            If ``dtype`` is not a floating dtype.
        """
        return self.prior.sample(shape, generator, dtype)

    def __repr__(self) -> str:
        return f"ConditionalPath({self.name!r})"


def as_path(schedule: Schedule | str) -> ConditionalPath:
    r"""A schedule as a conditional path with the Gaussian prior, $\mu_t = a_t x_0$, $\sigma_t = b_t$ (lesson 15,
    eq. 15.4); a :class:`ConditionalPath` is returned as it is.

    Parameters
    ----------
    schedule : Schedule or str
        A continuous schedule, its name, or a path.

    Returns
    -------
    ConditionalPath

    Raises
    ------
    TypeError, ValueError
        As :class:`ConditionalPath`.
    """
    return schedule if isinstance(schedule, ConditionalPath) else ConditionalPath(schedule)


def _same(x0: Tensor, x1: Tensor, name: str = "x1") -> None:
    check_batch(x0, "x0")
    check_batch(x1, name)
    if x1.shape != x0.shape:
        raise ValueError(f"{name} must have the shape of x0 {tuple(x0.shape)}, got {tuple(x1.shape)}")


# ---------------------------------------------------------------------------------------------------------- exact fields
def gmm_velocity(gmm: GaussianMixture, x: Tensor, t: Tensor | float, cond: Tensor | None = None) -> Tensor:
    r"""Closed-form rectified-flow velocity of a Gaussian mixture on the straight path (lesson 17, eq. 17.6).

    For $x_t = (1-t)x_0 + t\varepsilon$, component $k$ gives $x_t \mid k \sim \mathcal N((1-t)\mu_k, C_k)$ with
    $C_k = (1-t)^2\Sigma_k + t^2 I$ and

    $$v_k(x) = \big(tI - (1-t)\Sigma_k\big)C_k^{-1}x - t\,C_k^{-1}\mu_k, \qquad v = \sum_k r_k(x)\,v_k(x),$$

    $r_k \propto w_k\,\mathcal N(x; (1-t)\mu_k, C_k)$: regular on all of $[0, 1]$ (at $t = 0$, $v = -x$).

    Parameters
    ----------
    gmm : GaussianMixture
        The target (an :class:`~diffmath.exact.mixtures.EmpiricalData` needs $t > 0$).
    x : Tensor, shape (B, *event_shape)
        Points $x_t$.
    t : float or Tensor of shape (B,)
        Times in $[0, 1]$.
    cond : Tensor of int, shape (B,), optional
        Class labels, as in :meth:`~diffmath.exact.mixtures.GaussianMixture.score`.

    Returns
    -------
    Tensor, shape (B, *event_shape)
        $v(x, t) = \mathbb E[\varepsilon - x_0 \mid x_t = x]$.

    Raises
    ------
    TypeError
        If ``gmm`` is not a :class:`~diffmath.exact.mixtures.GaussianMixture` or ``x`` not a floating tensor.
    ValueError
        If ``x`` has the wrong shape or is not finite, ``t`` lies outside $[0, 1]$ or has the wrong shape, or
        $C_k$ is singular (point masses at $t = 0$).
    """
    if not isinstance(gmm, GaussianMixture):
        raise TypeError(f"gmm must be a GaussianMixture, got {type(gmm).__name__}")
    x = check_batch(x, "x")
    t_ = LinearPath().check_t(as_tensor(t, "t", x))
    B = x.shape[0]
    if t_.dim() == 0:
        t_ = t_.expand(B)
    elif t_.shape != (B,):
        raise ValueError(f"t must be a scalar or have shape (B,) = ({B},), got {tuple(t_.shape)}")
    resp = gmm.component_posterior(x, 1.0 - t_, t_, cond)  # (B, K)
    xf = x.flatten(1)
    conv = {"dtype": x.dtype, "device": x.device}
    mu, lam = gmm.means.to(**conv), gmm.lam.to(**conv)
    U = None if gmm.U is None else gmm.U.to(**conv)
    t3 = t_[:, None, None]
    var = (1 - t3) ** 2 * lam[None] + t3**2  # eigenvalues of C_k, (B, K, d)
    if (var <= 0).any():
        raise ValueError("C_k is singular (a point mass at t = 0): use t > 0")
    xr = xf[:, None, :] if U is None else torch.einsum("kde,bd->bke", U, xf)
    mur = mu[None] if U is None else torch.einsum("kde,kd->ke", U, mu)[None]
    vr = (t3 - (1 - t3) * lam[None]) / var * xr - t3 / var * mur
    vk = vr if U is None else torch.einsum("kde,bke->bkd", U, vr)
    return torch.einsum("bk,bkd->bd", resp, vk).reshape(x.shape)


class GMMFlow:
    r"""The exact rectified flow of a Gaussian mixture, :func:`gmm_velocity`, as a model with the one interface
    (lesson 17, eq. 17.6); its ``prediction`` is ``"velocity"`` on :class:`~diffmath.core.schedules.LinearPath`.

    Parameters
    ----------
    gmm : GaussianMixture
        The target distribution.

    Raises
    ------
    TypeError
        If ``gmm`` is not a :class:`~diffmath.exact.mixtures.GaussianMixture`.
    """

    prediction = "velocity"

    def __init__(self, gmm: GaussianMixture) -> None:
        if not isinstance(gmm, GaussianMixture):
            raise TypeError(f"gmm must be a GaussianMixture, got {type(gmm).__name__}")
        self.gmm = gmm

    def __call__(self, x: Tensor, t: Tensor | float, cond: Tensor | None = None) -> Tensor:
        return gmm_velocity(self.gmm, x, t, cond)

    def __repr__(self) -> str:
        return f"GMMFlow({self.gmm!r})"


class EmpiricalFlow:
    r"""The exact marginal velocity of a finite point set under any conditional path and prior (lesson 15, eq. 15.9):

    $$v(x, t) = \sum_i r_i(x, t)\, f_t(x \mid x^{(i)}), \qquad
    r_i \propto w_i\, p_1\!\Big(\frac{x - \mu_t(x^{(i)})}{\sigma_t}\Big),$$

    a model with the one interface (``prediction = "velocity"``). With a uniform prior the weights $r_i$ are
    indicators of the boxes $\mu_t(x^{(i)}) + \sigma_t[-1, 1]^d$. Where no $r_i$ is positive (outside the support,
    which a discrete step may leave) the nearest support $\mu_t(x^{(i)}) + \sigma_t\,\mathrm{supp}\,p_1$ takes all the weight (the nearest $\mu_t(x^{(i)})$ for a prior without a
    ``distance`` method).

    Parameters
    ----------
    points : Tensor, shape (N, ...)
        The data points $x^{(i)}$.
    path : ConditionalPath or Schedule
        The conditional path (a schedule means its Gaussian path, :func:`as_path`); its prior needs a density.
    weights : Tensor, shape (N,), optional
        Point weights summing to one (default uniform).

    Raises
    ------
    TypeError
        If ``points`` is not a floating tensor or ``path`` not a schedule.
    ValueError
        If ``points`` is empty or not a finite batch, or ``weights`` is not of shape (N,), negative, or does not sum
        to one.
    """

    prediction = "velocity"

    def __init__(self, points: Tensor, path: ConditionalPath | Schedule, weights: Tensor | None = None) -> None:
        self.points = check_nonempty(check_batch(points, "points"), "points")
        self.path = as_path(path)
        N = points.shape[0]
        w = torch.full((N,), 1.0 / N, dtype=torch.float64) if weights is None else as_tensor(weights, "weights")
        check_finite(w, "weights")
        if w.shape != (N,) or (w < 0).any() or abs(w.sum().item() - 1) > 1e-6:
            raise ValueError(f"weights must be non-negative, of shape (N,) = ({N},), and sum to one")
        self.weights = w.to(torch.float64)

    def responsibilities(self, x: Tensor, t: Tensor | float) -> Tensor:
        r"""$r_i(x, t) = p(x_0 = x^{(i)} \mid x_t = x)$ (lesson 15, eq. 15.9); shape (B, N).

        Parameters
        ----------
        x : Tensor, shape (B, ...)
            Points $x_t$.
        t : float or Tensor of shape (B,)
            Times with $\sigma_t > 0$.

        Returns
        -------
        Tensor, shape (B, N)
            Rows summing to one.

        Raises
        ------
        TypeError, ValueError
            If ``x`` is not a finite floating batch of the points' event shape, ``t`` is invalid or
            $\sigma_t = 0$, or the prior has no density.
        """
        x = check_batch(x, "x")
        if x.shape[1:] != self.points.shape[1:]:
            raise ValueError(f"x must have event shape {tuple(self.points.shape[1:])}, got {tuple(x.shape)}")
        xr, x0r, tr = self._repeat(x, t)
        B, N = x.shape[0], self.points.shape[0]
        logp = self.path.conditional_log_prob(xr, x0r, tr).reshape(B, N)
        logits = torch.log(self.weights.to(x)) + logp
        none = ~torch.isfinite(logits).any(1)
        if none.any():  # outside the support: the nearest conditional mean
            gap = getattr(self.path.prior, "distance", None)
            if gap is not None:  # the nearest box of the prior's support
                sigma = self.path.coefficients(tr).b.reshape(-1, *([1] * (x.dim() - 1)))
                dist = (sigma.reshape(-1) * gap((xr - self.path.mean(x0r, tr)) / sigma)).reshape(B, N)
            else:
                dist = ((xr - self.path.mean(x0r, tr)).reshape(B, N, -1) ** 2).sum(-1)
            nearest = torch.where(dist == dist.min(1, keepdim=True).values, 0.0, -math.inf).to(logits)
            logits = torch.where(none[:, None], nearest, logits)
        return torch.softmax(logits, dim=1)

    def _repeat(self, x: Tensor, t: Tensor | float) -> tuple[Tensor, Tensor, Tensor]:
        B, N = x.shape[0], self.points.shape[0]
        t_ = self.path._times(t, x)
        xr = x.repeat_interleave(N, 0)
        x0r = self.points.to(x).repeat(B, *([1] * (x.dim() - 1)))
        return xr, x0r, t_.repeat_interleave(N)

    def __call__(self, x: Tensor, t: Tensor | float, cond: Tensor | None = None) -> Tensor:
        r = self.responsibilities(x, t)
        xr, x0r, tr = self._repeat(x, t)
        f = self.path.conditional_velocity(xr, x0r, tr).reshape(
            x.shape[0], self.points.shape[0], self.points[0].numel()
        )
        return torch.einsum("bn,bnd->bd", r, f).reshape(x.shape)

    def __repr__(self) -> str:
        return f"EmpiricalFlow(N={self.points.shape[0]}, path={self.path.name!r})"


class AffineCouplingFlow:
    r"""The exact rectified flow of a deterministic affine coupling $x_0 = A x_1 + m$ (lesson 17, eq. 17.14).

    On the straight path $x_t = (1-t)(A x_1 + m) + t x_1$ each $x_t$ has one $x_1 = M_t^{-1}(x_t - (1-t)m)$ with
    $M_t = (1-t)A + tI$, so the velocity is $v(x, t) = x_1 - (A x_1 + m)$ and one Euler step from $t = 1$ returns
    $A x_1 + m$ exactly. For a Gaussian target the 1-RF coupling is affine with $A = \Sigma^{1/2}$, so this is its
    2-RF in closed form. A model with the one interface (``prediction = "velocity"``, on
    :class:`~diffmath.core.schedules.LinearPath`); events are flattened, so any shape works.

    Parameters
    ----------
    A : Tensor, shape (d, d)
        The linear part; $M_t$ must stay invertible on $[0, 1]$ (e.g. $A$ symmetric positive definite).
    m : Tensor, shape (d,)
        The offset.
    residual : float
        RMS residual of the fit when built by :meth:`from_pairs` (0 otherwise).

    Raises
    ------
    TypeError
        If ``A`` or ``m`` is not a real tensor.
    ValueError
        If ``A`` is not square, ``m`` does not match it, or either holds NaN or infinity.
    """

    prediction = "velocity"

    def __init__(self, A: Tensor, m: Tensor, residual: float = 0.0) -> None:
        A, m = check_finite(as_tensor(A, "A"), "A"), check_finite(as_tensor(m, "m"), "m")
        if A.dim() != 2 or A.shape[0] != A.shape[1] or m.shape != (A.shape[0],):
            raise ValueError(f"A must be (d, d) and m (d,), got {tuple(A.shape)} and {tuple(m.shape)}")
        self.A, self.m, self.residual = A, m, float(residual)

    @classmethod
    def from_pairs(cls, pairs: Tensor) -> AffineCouplingFlow:
        r"""Least-squares fit of $x_0 \approx A x_1 + m$ to coupled pairs (lesson 17, eq. 17.14).

        Parameters
        ----------
        pairs : Tensor, shape (N, 2, ...)
            Rows ``(x0, x1)`` as made by :func:`reflow_pairs`.

        Returns
        -------
        AffineCouplingFlow
            With ``residual`` the RMS error of the fit (zero when the coupling is exactly affine).

        Raises
        ------
        ValueError
            If ``pairs`` is not of shape (N, 2, ...) or has too few rows to fit $A$.
        """
        x0, x1 = _split_pairs(pairs)
        X0, X1 = x0.reshape(x0.shape[0], -1).double(), x1.reshape(x1.shape[0], -1).double()
        if X0.shape[0] <= X0.shape[1] + 1:
            raise ValueError(f"need more than d + 1 = {X0.shape[1] + 1} pairs to fit an affine map")
        design = torch.cat([X1, torch.ones(X1.shape[0], 1, dtype=X1.dtype)], 1)
        coef = torch.linalg.lstsq(design, X0).solution  # (d + 1, d)
        res = (design @ coef - X0).pow(2).sum(1).mean().sqrt().item()
        return cls(coef[:-1].T.contiguous(), coef[-1].contiguous(), res)

    def __call__(self, x: Tensor, t: Tensor | float, cond: Tensor | None = None) -> Tensor:
        x = check_batch(x, "x")
        B, d = x.shape[0], self.A.shape[0]
        if math.prod(x.shape[1:]) != d:
            raise ValueError(f"x must have d = {d} entries per sample, got shape {tuple(x.shape)}")
        work = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32  # no half-precision solve
        t_ = LinearPath().check_t(as_tensor(t, "t", x)).to(work)
        if t_.dim() == 0:
            t_ = t_.expand(B)
        elif t_.shape != (B,):
            raise ValueError(f"t must be a scalar or have shape (B,) = ({B},), got {tuple(t_.shape)}")
        xf = x.flatten(1).to(work)
        A, m = self.A.to(xf), self.m.to(xf)
        eye = torch.eye(d, dtype=work)
        M = (1 - t_)[:, None, None] * A[None] + t_[:, None, None] * eye[None]
        x1 = torch.linalg.solve(M, (xf - (1 - t_)[:, None] * m)[..., None])[..., 0]
        return (x1 - x1 @ A.T - m).reshape(x.shape).to(x.dtype)

    def __repr__(self) -> str:
        return f"AffineCouplingFlow(d={self.A.shape[0]}, residual={self.residual:.3g})"


# ---------------------------------------------------------------------------------------------------------- training
def minibatch_ot(x0: Tensor, x1: Tensor) -> Tensor:
    r"""Reorder ``x1`` so that row $i$ is paired with ``x0[i]`` by the exact optimal transport plan of the minibatch
    for the cost $\|x_0 - x_1\|^2$ (lesson 17, eq. 17.13), solved with ``scipy.optimize.linear_sum_assignment``.

    Parameters
    ----------
    x0, x1 : Tensor, shape (B, ...)
        Data and prior samples.

    Returns
    -------
    Tensor, shape (B, ...)
        ``x1`` permuted.

    Raises
    ------
    TypeError
        If ``x0`` or ``x1`` is not a floating tensor.
    ValueError
        If ``x0``, ``x1`` are not finite batches of the same shape (B, ...).
    """
    _same(x0, x1)
    B = x0.shape[0]
    cost = torch.cdist(x0.flatten(1).double(), x1.flatten(1).double()) ** 2
    rows, cols = linear_sum_assignment(cost.cpu().numpy())  # scipy's exact assignment runs on the host
    perm = torch.empty(B, dtype=torch.long)
    perm[torch.from_numpy(rows)] = torch.from_numpy(cols)
    return x1[perm.to(x1.device)]


def _split_pairs(pairs: Tensor) -> tuple[Tensor, Tensor]:
    pairs = check_nonempty(check_batch(pairs, "pairs", min_dim=3), "pairs")
    if pairs.shape[1] != 2:
        raise ValueError(f"pairs must have shape (N, 2, ...) with rows (x0, x1), got {tuple(pairs.shape)}")
    return pairs[:, 0], pairs[:, 1]


class FlowMatchingLoss:
    r"""The (conditional) flow-matching loss $\mathbb E_{t, x_0, x_1}\|v_\theta(x_t, t) - \dot\mu_t(x_0) -
    \dot\sigma_t x_1\|^2 / d$ (lesson 15, eq. 15.10; rectified flow's loss, lesson 17, eq. 17.3), an objective
    for :func:`~diffmath.train.training.train`.

    ``t`` is uniform on $(0, t_{\max}]$. Unpaired, each minibatch of data is coupled with fresh prior samples,
    independently or by :func:`minibatch_ot`; paired (reflow, lesson 17, eq. 17.9), the rows of the training data are
    ``(x0, x1)`` pairs of shape (2, ...).

    Parameters
    ----------
    schedule : Schedule or str
        The path (a :class:`ConditionalPath`, or a continuous schedule taken with a Gaussian prior).
    coupling : {"independent", "ot"}
        How unpaired data meet prior samples.
    paired : bool
        Training rows are ``(x0, x1)`` pairs.
    prior : {"gaussian", "uniform"}, optional
        Prior for a plain schedule (ignored when ``schedule`` is already a path).

    Raises
    ------
    TypeError, ValueError
        If the schedule is not a continuous schedule, the coupling is unknown, or ``paired`` is combined with
        ``coupling="ot"``. When called: if the model does not predict ``"velocity"``, the batch is not a non-empty
        finite floating batch (of pairs (N, 2, ...) when paired), or the model returns a tensor of another shape
        than its input (a (B, 1) or (1, d) output would broadcast against the target).
    """

    def __init__(
        self, schedule: Schedule | str, coupling: str = "independent", paired: bool = False, prior: str | None = None
    ) -> None:
        if coupling not in COUPLINGS:
            raise ValueError(f"coupling must be one of {COUPLINGS}, got {coupling!r}")
        if paired and coupling != "independent":
            raise ValueError("paired rows already carry their coupling: use coupling='independent' with paired=True")
        if isinstance(schedule, ConditionalPath) or prior is None:
            self.path = as_path(schedule)
        else:
            self.path = ConditionalPath(schedule, prior)
        self.coupling, self.paired = coupling, bool(paired)

    def __call__(self, model: nn.Module, batch: Tensor, generator: torch.Generator, cond: Tensor | None = None):
        kind, draws = getattr(unwrap(model), "prediction", None), as_draws(generator)
        if kind != "velocity":
            raise ValueError(f"flow matching trains a 'velocity' model, got {kind!r}")
        if self.paired:
            x0, x1 = _split_pairs(batch)
        else:
            x0 = check_nonempty(check_batch(batch, "batch"), "batch")
            x1 = draws.draw(self.path.sample_prior, x0.shape, x0.dtype, x0.device)
            if self.coupling == "ot":
                x1 = minibatch_ot(x0, x1)
        B = x0.shape[0]
        t = self.path.t_max * (1.0 - draws.rand((B,), x0.dtype, x0.device))
        xt, target = self.path._point_and_target(x0, x1, t)
        return ((check_output(model(xt, t, cond), xt) - target) ** 2).mean()

    def __repr__(self) -> str:
        return f"flow_matching({self.path.name}, coupling={self.coupling}{', paired' if self.paired else ''})"


class DistillationLoss:
    r"""One-step distillation (lesson 17, eq. 17.15): on pairs ``(x0, x1)`` of a teacher flow, fit
    $v_\theta(x_1, t_{\max})$ to $(x_1 - x_0)/t_{\max}$, so that one Euler step from the prior lands on $x_0$.

    Parameters
    ----------
    schedule : Schedule or str
        The path the student is sampled on (only its $t_{\max}$ matters).

    Raises
    ------
    TypeError, ValueError
        As :func:`as_path`. When called: if the model does not predict ``"velocity"``, the batch is not a
        non-empty finite batch of pairs (N, 2, ...), or the model returns a tensor of another shape than its input.
    """

    def __init__(self, schedule: Schedule | str = "rectified-flow") -> None:
        self.path = as_path(schedule)

    def __call__(self, model: nn.Module, batch: Tensor, generator: torch.Generator, cond: Tensor | None = None):
        kind = getattr(unwrap(model), "prediction", None)
        if kind != "velocity":
            raise ValueError(f"distillation trains a 'velocity' model, got {kind!r}")
        x0, x1 = _split_pairs(batch)
        T = self.path.t_max
        t = torch.full((x0.shape[0],), T, dtype=x0.dtype, device=x0.device)
        return ((check_output(model(x1, t, cond), x1) - (x1 - x0) / T) ** 2).mean()

    def __repr__(self) -> str:
        return f"distillation({self.path.name})"


# ---------------------------------------------------------------------------------------------------------- sampling
def sample_flow(
    model: Model,
    x1: Tensor,
    grid: Tensor,
    schedule: Schedule,
    method: str = "euler",
    cond: Tensor | None = None,
) -> Tensor:
    r"""Few-step (or one-step) sampling of a flow: integrate $\mathrm dx/\mathrm dt = v(x, t)$ along ``grid`` from the
    prior towards the data with the lesson 6 solvers (lesson 17, eq. 17.10); on ``schedule.grid(1)`` one Euler step is
    $x_0 = x_1 - t_{\max}\,v(x_1, t_{\max})$ (eq. 17.5).

    It is :func:`~diffmath.ode.ode_sample` without gradients and with Euler as the default solver: a straight
    (reflowed) flow is integrated exactly by Euler, and lesson 17 counts cost in Euler steps (one network
    evaluation each), where :func:`~diffmath.ode.ode_sample` defaults to Heun for curved probability-flow paths.

    Parameters
    ----------
    model : Model
        A velocity model (any model: others are converted through the schedule).
    x1 : Tensor, shape (B, ...)
        Prior samples at ``grid[0]``.
    grid : Tensor, shape (K + 1,)
        Strictly decreasing times, e.g. ``schedule.grid(4)`` or ``schedule.grid(4, spacing="karras")``; network
        evaluations are ``nfe(method, K)``.
    schedule : Schedule
        The path (its coefficients).
    method : {"euler", "heun", "dpm++2m"}
        The solver of :func:`~diffmath.ode.solve_ode`.
    cond : Tensor, optional
        Condition for the model.

    Returns
    -------
    Tensor, shape (B, ...)
        The samples at ``grid[-1]``.

    Raises
    ------
    TypeError
        If ``grid`` is a number of steps or a schedule (the grid comes before the schedule: pass
        ``schedule.grid(num_steps)``), or as :func:`~diffmath.ode.solve_ode`.
    ValueError
        If ``grid`` is not strictly decreasing inside the schedule's range, or as :func:`~diffmath.ode.solve_ode`.
    """
    _require_grid(grid, "sample_flow")
    check_grid(grid, schedule)
    with torch.no_grad():
        return ode_sample(model, x1, grid, schedule, method, cond)


def reflow_pairs(
    model: Model,
    x1: Tensor,
    schedule: Schedule,
    num_steps: int = 50,
    method: str = "heun",
    cond: Tensor | None = None,
) -> Tensor:
    r"""Couple prior samples with their images under the flow, $(Z_0, Z_1) = (\Phi_{1\to0}(x_1), x_1)$: the training
    data of the next rectified flow (lesson 17, eq. 17.9).

    Parameters
    ----------
    model : Model
        The current flow.
    x1 : Tensor, shape (N, ...)
        Prior samples $Z_1$.
    schedule : Schedule
        The path.
    num_steps : int
        Solver steps for $\Phi_{1\to0}$.
    method : {"euler", "heun", "dpm++2m"}
        The solver (Heun by default, as :func:`~diffmath.ode.ode_sample`: the coupling needs the flow's endpoints,
        solved accurately, where :func:`sample_flow` defaults to the few-step Euler sampler).
    cond : Tensor, optional
        Condition for the model.

    Returns
    -------
    Tensor, shape (N, 2, ...)
        Rows ``(Z0, Z1)``, for :class:`FlowMatchingLoss` with ``paired=True``.

    Raises
    ------
    TypeError, ValueError
        As :func:`sample_flow`.
    """
    check_schedule(schedule)
    z0 = sample_flow(model, x1, schedule.grid(num_steps), schedule, method, cond)
    return torch.stack([z0, x1.to(z0)], 1)


class FlowStats(NamedTuple):
    r"""Straightness and transport cost of a flow along its ODE trajectories (lesson 17, eqs. 17.11-17.12).

    Attributes
    ----------
    straightness : float
        $S = \int_0^1 \mathbb E\|(Z_1 - Z_0) - v(Z_t, t)\|^2\,\mathrm dt$ (0 for straight paths).
    straightness_se : float
        Its Monte Carlo standard error over the batch.
    cost : float
        $\mathbb E\|Z_1 - Z_0\|^2$.
    x0 : Tensor, shape (B, ...)
        The endpoints $Z_0$.
    per_sample : Tensor, shape (B, 2)
        Each trajectory's straightness and squared displacement.
    """

    straightness: float
    straightness_se: float
    cost: float
    x0: Tensor
    per_sample: Tensor


def straightness(
    model: Model,
    x1: Tensor,
    schedule: Schedule,
    num_steps: int = 100,
    method: str = "heun",
    cond: Tensor | None = None,
) -> FlowStats:
    r"""Straightness $S(Z) = \int_0^1 \mathbb E\|(Z_1 - Z_0) - v(Z_t, t)\|^2\,\mathrm dt$ of the flow's trajectories from
    ``x1`` (lesson 17, eq. 17.11), with the transport cost $\mathbb E\|Z_1 - Z_0\|^2$.

    The trajectory comes from :func:`~diffmath.ode.solve_ode` on a uniform grid; the time integral is the left
    Riemann sum over the grid's steps (towards the data), which needs no evaluation at $t = 0$. For Euler it is exact
    for the discrete path: $S = 0$ exactly when every step has the same velocity.

    Parameters
    ----------
    model : Model
        A velocity model.
    x1 : Tensor, shape (B, ...)
        Prior samples $Z_1$.
    schedule : Schedule
        The path.
    num_steps : int
        Solver steps.
    method : {"euler", "heun", "dpm++2m"}
        The solver.
    cond : Tensor, optional
        Condition for the model.

    Returns
    -------
    FlowStats
        Straightness (with its standard error), cost, endpoints and per-trajectory values.

    Raises
    ------
    TypeError
        If ``schedule`` is not a :class:`~diffmath.core.schedules.Schedule`, or as :func:`sample_flow`.
    ValueError
        If ``x1`` holds fewer than two samples (the standard error needs two), or the model returns NaN or
        infinity or a tensor of another shape at a step, or as :func:`sample_flow`.
    """
    x1 = check_nonempty(check_batch(x1, "x1"), "x1", 2)
    check_schedule(schedule)
    grid = schedule.grid(num_steps)
    xs, ts = [x1], [grid[0].item()]
    with torch.no_grad():
        for step in solve_ode(model, x1, grid, schedule, method, cond):
            xs.append(step.x)
            ts.append(step.t)
        B = x1.shape[0]
        disp = (x1 - xs[-1]).flatten(1)
        s = torch.zeros(B, dtype=torch.float64)
        for i in range(num_steps):  # predict checks the output's shape and finiteness at each step
            v = predict(model, xs[i], ts[i], schedule, "velocity", cond).flatten(1)
            s = s + (ts[i] - ts[i + 1]) * ((disp - v) ** 2).sum(1).double()
    cost = (disp**2).sum(1).double()
    return FlowStats(
        s.mean().item(), (s.std() / math.sqrt(B)).item(), cost.mean().item(), xs[-1], torch.stack([s, cost], 1)
    )


class CostIdentity(NamedTuple):
    r"""The terms of $\mathbb E\|Z_1 - Z_0\|^2 = \mathbb E\|X_1 - X_0\|^2 - V(X) - S(Z)$ (lesson 17, eq. 17.12).

    Attributes
    ----------
    coupling_cost : float
        $\mathbb E\|X_1 - X_0\|^2$ of the coupling the flow was built from.
    V : float
        $V(X) = \int_0^1\mathbb E\|X_1 - X_0 - v(X_t, t)\|^2\,\mathrm dt$, by Monte Carlo in $t$.
    S : float
        The flow's straightness $S(Z)$.
    flow_cost : float
        $\mathbb E\|Z_1 - Z_0\|^2$.
    residual : float
        ``coupling_cost - V - S - flow_cost`` (zero in expectation).
    residual_se : float
        Its standard error (the four terms are computed on the same samples).
    """

    coupling_cost: float
    V: float
    S: float
    flow_cost: float
    residual: float
    residual_se: float


def cost_identity(
    model: Model,
    x0: Tensor,
    x1: Tensor,
    schedule: Schedule | None = None,
    generator: torch.Generator | None = None,
    num_steps: int = 200,
    method: str = "heun",
    num_times: int = 4,
) -> CostIdentity:
    r"""Evaluate the cost identity $\mathbb E\|Z_1 - Z_0\|^2 = \mathbb E\|X_1 - X_0\|^2 - V(X) - S(Z)$ of the
    rectified flow ``model`` of the coupling $(X_0, X_1)$ (lesson 17, eq. 17.12).

    $V$ averages ``num_times`` uniform times per pair; $S$ and $\mathbb E\|Z_1 - Z_0\|^2$ the flow's trajectories from $Z_1 = X_1$
    (:func:`straightness`). The identity holds for the exact velocity of the coupling; for a trained one, the
    residual measures how far it is from that velocity.

    Parameters
    ----------
    model : Model
        The velocity $v$ of the coupling (exact or trained).
    x0, x1 : Tensor, shape (B, ...)
        Coupled samples $(X_0, X_1)$.
    schedule : Schedule, optional
        The straight path (default :class:`~diffmath.core.schedules.LinearPath`).
    generator : torch.Generator, optional
        Source of the times for $V$.
    num_steps : int
        Solver steps for the trajectories.
    method : {"euler", "heun", "dpm++2m"}
        The solver.
    num_times : int
        Times per pair in the Monte Carlo estimate of $V$.

    Returns
    -------
    CostIdentity

    Raises
    ------
    TypeError, ValueError
        If ``x0``, ``x1`` are not finite floating batches of the same shape with at least two samples,
        ``num_times`` is not a positive integer, the model returns NaN or infinity or a tensor of another shape
        (in $V$ or along a trajectory), or as :func:`straightness`.
    """
    _same(x0, x1)
    check_nonempty(x0, "x0", 2)
    check_model(model)
    path = as_path(schedule if schedule is not None else LinearPath())
    B = x0.shape[0]
    check_int(num_times, "num_times")
    V = torch.zeros(B, dtype=torch.float64, device=x0.device)
    for _ in range(num_times):
        t = 1.0 - torch.rand(B, generator=generator, dtype=x0.dtype).to(x0.device)  # CPU draws, on x0's device
        with torch.no_grad():
            v = predict(model, path.sample(x0, t, x1), t, path, "velocity")
        V = V + ((path.target(x0, x1, t) - v) ** 2).flatten(1).sum(1).double() / num_times
    coupling = ((x1 - x0) ** 2).flatten(1).sum(1).double()
    stats = straightness(model, x1, path, num_steps, method)
    S, flow = stats.per_sample[:, 0], stats.per_sample[:, 1]
    r = coupling - V - S - flow
    return CostIdentity(
        coupling.mean().item(),
        V.mean().item(),
        S.mean().item(),
        flow.mean().item(),
        r.mean().item(),
        (r.std() / math.sqrt(B)).item(),
    )


# ---------------------------------------------------------------------------------------------------------- reflow
def reflow(
    model: nn.Module,
    x1: Tensor,
    schedule: Schedule,
    rounds: int = 1,
    steps: int = 2000,
    num_steps: int = 50,
    method: str = "heun",
    return_all: bool = False,
    **train_kwargs: object,
) -> nn.Module | list[nn.Module]:
    r"""Reflow (lesson 17, eq. 17.9): ``rounds`` times, couple ``x1`` with its image under the current flow
    (:func:`reflow_pairs`) and retrain a copy of the flow on those pairs (:class:`FlowMatchingLoss`, ``paired=True``)
    with lesson 3's :func:`~diffmath.train.training.fit`.

    Each round starts from the previous round's weights (Liu et al. do the same), so few steps suffice.

    Parameters
    ----------
    model : nn.Module
        The 1-rectified flow (a trainable velocity model).
    x1 : Tensor, shape (N, ...)
        Prior samples to couple (the same ones every round).
    schedule : Schedule
        The path.
    rounds : int
        Number of reflows $k$; the last model is the $(k+1)$-rectified flow.
    steps : int
        Optimiser steps per round.
    num_steps : int
        Solver steps for the pairs.
    method : {"euler", "heun", "dpm++2m"}
        Solver for the pairs (Heun by default, as :func:`~diffmath.ode.ode_sample`: the pairs are the flow's
        endpoints, so they are solved accurately, not in the few steps the reflowed model is sampled in).
    return_all : bool
        Return every round's model, not only the last.
    **train_kwargs
        Further arguments of :func:`~diffmath.train.training.fit` (``batch_size``, ``lr``, ``ema_decay``, ``seed``,
        ``progress``, ...).

    Returns
    -------
    nn.Module or list of nn.Module
        The last round's model, the $(k+1)$-rectified flow (EMA weights where kept), in eval mode, for any
        ``rounds``; with ``return_all=True`` the list of the models of rounds 1..``rounds``, the last one last.

    Raises
    ------
    TypeError
        If ``model`` does not follow the one interface or is not a torch module with parameters (an exact model
        cannot be retrained), ``return_all`` is not a bool, or as :func:`~diffmath.train.training.fit`.
    ValueError
        If ``rounds`` is not a positive integer, or as :func:`~diffmath.train.training.fit`.
    """
    check_int(rounds, "rounds")
    if not isinstance(return_all, bool):
        raise TypeError(f"return_all must be True or False, got {return_all!r}")
    check_model(model)
    _check_trainable(model, frozen_ok=True)  # each round trains an unfrozen copy
    out, current = [], model
    for _ in range(rounds):
        pairs = reflow_pairs(current, x1, schedule, num_steps, method)
        student = copy.deepcopy(current).requires_grad_(True)  # an EMA copy comes frozen
        state = fit(student, pairs, None, steps, loss=FlowMatchingLoss(schedule, paired=True), **train_kwargs)
        current = state.model.eval()  # the EMA weights where kept
        out.append(current)
    return out if return_all else current


def distill(
    teacher: nn.Module,
    x1: Tensor,
    schedule: Schedule,
    steps: int = 2000,
    num_steps: int = 50,
    method: str = "heun",
    student: nn.Module | None = None,
    **train_kwargs: object,
) -> nn.Module:
    r"""Distil a flow into a one-step sampler (lesson 17, eq. 17.15): pair ``x1`` with the teacher's ODE endpoints and
    train a copy of the teacher with :class:`DistillationLoss`; sample it with
    ``sample_flow(student, z, schedule.grid(1), schedule)``.

    Parameters
    ----------
    teacher : nn.Module
        The flow to distil (ideally a reflowed, nearly straight one).
    x1 : Tensor, shape (N, ...)
        Prior samples.
    schedule : Schedule
        The path.
    steps : int
        Optimiser steps.
    num_steps : int
        Teacher solver steps for the pairs.
    method : {"euler", "heun", "dpm++2m"}
        Teacher solver.
    student : nn.Module, optional
        The network to train (default: a copy of the teacher, which must then be trainable).
    **train_kwargs
        Further arguments of :func:`~diffmath.train.training.fit`.

    Returns
    -------
    nn.Module
        The student (EMA weights where kept), in eval mode.

    Raises
    ------
    TypeError
        If ``student`` (or, without one, ``teacher``) is not a torch module with parameters, or as
        :func:`reflow_pairs` and :func:`~diffmath.train.training.fit`.
    ValueError
        As :func:`reflow_pairs` and :func:`~diffmath.train.training.fit`.
    """
    if student is None:
        _check_trainable(teacher, "teacher", frozen_ok=True)  # the student is its unfrozen copy
    else:
        _check_trainable(student, "student")
    pairs = reflow_pairs(teacher, x1, schedule, num_steps, method)
    student = copy.deepcopy(teacher).requires_grad_(True) if student is None else student
    state = fit(student, pairs, None, steps, loss=DistillationLoss(schedule), **train_kwargs)
    return state.model.eval()  # the EMA weights where kept
