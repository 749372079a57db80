r"""A GAN as a gradient flow (lesson 19): particles that climb the log density ratio, and MonoFlow.

The Wasserstein gradient flow of $\mathrm{KL}(q\,\|\,p)$ moves each sample of $q_t$ by
$\mathrm dx/\mathrm dt = \nabla\log r_t(x)$, $r_t = p/q_t$ (lesson 19, eq. 19.2). The ratio is either exact
(:func:`gaussian_ratio`: Gaussian $p$, and $q_t$ the particles' own Gaussian fit) or learned, a logistic discriminator
refitted at every step (:func:`logistic_ratio`, :class:`QuadraticDiscriminator`, eqs. 19.3-19.4). :func:`particle_flow`
integrates the particles (eq. 19.6); :func:`monoflow` moves a generator's samples one step and refits the generator
to them (eqs. 19.8, 19.11-19.12).

Time runs as in Su's ch. 19: from the generator's start ($t = 0$) towards the data ($t \to \infty$), the opposite of
diffmath's diffusion time. These loops are optimisation in "training time", not samplers: the velocity of every particle
comes from a ratio refitted on the whole ensemble, there is no model of $(x, t)$ on a schedule, no pair
$(\hat x_0, \hat\varepsilon)$ and no grid that ends at the data, so they are not update rules of
:func:`diffmath.sampling.loop.run`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffmath.core._validate import check_batch, check_choice, check_int, check_nonempty, check_positive

LogRatio = Callable[[Tensor], Tensor]
r"""A discriminator $D$: ``D(x)`` of shape ``(B,)`` for ``x`` of shape ``(B, d)``, an estimate of $\log p/q$."""

MONOTONE: dict[str, Callable[[Tensor], Tensor]] = {
    "identity": lambda d: d,  # generator loss -D: the KL flow (eq. 19.11)
    "logsigmoid": F.logsigmoid,  # -log sigma(D): the non-saturating GAN loss
    "softplus": F.softplus,  # log(1 - sigma(D)) = -softplus(D): the minimax GAN loss
}
"""Named increasing functions $h$ of MonoFlow (lesson 19, eq. 19.12)."""


def _check_h(h: object) -> Callable[[Tensor], Tensor]:
    if isinstance(h, str):
        return MONOTONE[check_choice(h, "h", tuple(MONOTONE))]
    if not callable(h):
        raise TypeError(f"h must be one of {tuple(MONOTONE)} or an increasing callable, got {type(h).__name__}")
    return h


def _check_points(x: object, name: str, dim: int | None = None) -> Tensor:
    x = check_nonempty(check_batch(x, name), name, at_least=2)
    if x.dim() != 2 or (dim is not None and x.shape[1] != dim):
        want = f"(B, {dim})" if dim is not None else "(B, d)"
        raise ValueError(f"{name} must have shape {want}, got {tuple(x.shape)}")
    return x


def _check_gaussian(mean: object, cov: object, name: str) -> tuple[Tensor, Tensor]:
    if not isinstance(mean, Tensor) or not isinstance(cov, Tensor):
        raise TypeError(f"{name}: the mean and covariance must be torch.Tensors of shapes (d,) and (d, d)")
    d = mean.shape[-1] if mean.dim() == 1 else -1
    if mean.dim() != 1 or cov.shape != (d, d):
        raise ValueError(f"{name}: expected shapes (d,) and (d, d), got {tuple(mean.shape)} and {tuple(cov.shape)}")
    if torch.linalg.cholesky_ex(cov)[1] != 0 or not torch.allclose(cov, cov.T):
        raise ValueError(f"{name}: the covariance must be symmetric positive definite")
    return mean, cov


def gaussian_fit(x: Tensor) -> tuple[Tensor, Tensor]:
    r"""The maximum-likelihood Gaussian fit of particles: their mean and (biased, $1/B$) covariance (lesson 19,
    eq. 19.14, where the particles of a Gaussian start stay Gaussian).

    Parameters
    ----------
    x : Tensor, shape (B, d)
        At least two points.

    Returns
    -------
    tuple of Tensor, shapes (d,) and (d, d)

    Raises
    ------
    ValueError
        For a shape other than (B, d) with B >= 2, or non-finite values.
    """
    x = _check_points(x, "x")
    mean = x.mean(0)
    xc = x - mean
    return mean, xc.T @ xc / x.shape[0]


def ou_marginals(mean0: Tensor, cov0: Tensor, mean: Tensor, cov: Tensor, t: float) -> tuple[Tensor, Tensor]:
    r"""Mean and covariance at time $t$ of Langevin dynamics for $p = \mathcal N(m, \Sigma)$ (an Ornstein-Uhlenbeck
    process) started from $\mathcal N(m_0, S_0)$: $m + E(m_0 - m)$, $\Sigma + E(S_0 - \Sigma)E$, $E = e^{-\Sigma^{-1}t}$
    (lesson 19, eq. 19.14), the marginals of the exact flow (eq. 19.2).

    Parameters
    ----------
    mean0, cov0 : Tensor, shapes (d,) and (d, d)
        The start $\mathcal N(m_0, S_0)$.
    mean, cov : Tensor, shapes (d,) and (d, d)
        The target $p = \mathcal N(m, \Sigma)$.
    t : float
        Flow time, $\ge 0$.

    Returns
    -------
    tuple of Tensor, shapes (d,) and (d, d)

    Raises
    ------
    ValueError
        For mismatched shapes, a covariance that is not positive definite, or $t < 0$.
    """
    mean0, cov0 = _check_gaussian(mean0, cov0, "start")
    mean, cov = _check_gaussian(mean, cov, "target")
    if mean0.shape != mean.shape:
        raise ValueError(f"start and target dimensions differ: {mean0.shape[0]} and {mean.shape[0]}")
    E = torch.linalg.matrix_exp(-torch.linalg.inv(cov) * check_positive(t, "t", allow_zero=True))
    return mean + E @ (mean0 - mean), cov + E @ (cov0 - cov) @ E.T


@dataclass(frozen=True)
class QuadraticDiscriminator:
    r"""A discriminator $D(x) = c + b\cdot x + x^\top Wx$, the logit of a logistic regression on the features
    $(1, x_i, x_ix_j)$ (lesson 19, eqs. 19.3-19.4); for two Gaussians $\log p/q$ has exactly this form.

    Parameters
    ----------
    c : Tensor, shape ()
    b : Tensor, shape (d,)
    W : Tensor, shape (d, d)
        Symmetric.
    """

    c: Tensor
    b: Tensor
    W: Tensor

    def __call__(self, x: Tensor) -> Tensor:
        return self.c + x @ self.b + ((x @ self.W) * x).sum(-1)

    def grad(self, x: Tensor) -> Tensor:
        r"""$\nabla D(x) = b + 2Wx$ in closed form (lesson 19, eq. 19.6).

        Parameters
        ----------
        x : Tensor, shape (B, d)

        Returns
        -------
        Tensor, shape (B, d)
        """
        return self.b + 2 * x @ self.W

    @classmethod
    def from_gaussians(cls, mean_p: Tensor, cov_p: Tensor, mean_q: Tensor, cov_q: Tensor) -> QuadraticDiscriminator:
        r"""The exact $\log\mathcal N(x; m_p, \Sigma_p) - \log\mathcal N(x; m_q, \Sigma_q)$, the optimum (lesson 19,
        eq. 19.4) of (eq. 19.3) for Gaussian $p$ and $q$.

        Parameters
        ----------
        mean_p, cov_p : Tensor, shapes (d,) and (d, d)
            The real distribution $p$.
        mean_q, cov_q : Tensor, shapes (d,) and (d, d)
            The fake distribution $q$.

        Returns
        -------
        QuadraticDiscriminator

        Raises
        ------
        ValueError
            For mismatched shapes or a covariance that is not positive definite.
        """
        mp, Sp = _check_gaussian(mean_p, cov_p, "p")
        mq, Sq = _check_gaussian(mean_q, cov_q, "q")
        if mp.shape != mq.shape:
            raise ValueError(f"p and q dimensions differ: {mp.shape[0]} and {mq.shape[0]}")
        Pp, Pq = torch.linalg.inv(Sp), torch.linalg.inv(Sq)
        c = 0.5 * (mq @ Pq @ mq - mp @ Pp @ mp + torch.logdet(Sq) - torch.logdet(Sp))
        return cls(c, Pp @ mp - Pq @ mq, 0.5 * (Pq - Pp))

    @classmethod
    def fit(
        cls, real: Tensor, fake: Tensor, ridge: float = 1e-8, max_iter: int = 100, tol: float = 1e-12
    ) -> QuadraticDiscriminator:
        r"""Maximise (lesson 19, eq. 19.3) over quadratic $D$ by damped Newton's method (IRLS), each class averaged
        on its own so the optimum is $\log p/q$ (eq. 19.4) for any sample sizes; a small ridge keeps it well posed.

        Parameters
        ----------
        real : Tensor, shape (N, d)
            Samples of $p$.
        fake : Tensor, shape (M, d)
            Samples of $q$.
        ridge : float
            $\lambda \ge 0$ of the penalty $\tfrac\lambda2\|\theta\|^2$ on the coefficients.
        max_iter : int
            Newton iterations at most.
        tol : float
            Stop when the Newton decrement $g^\top H^{-1}g$ falls below it.

        Returns
        -------
        QuadraticDiscriminator

        Raises
        ------
        ValueError
            For shapes other than (N, d) and (M, d), or when Newton's method does not converge (separable classes:
            raise ``ridge``).
        """
        real = _check_points(real, "real")
        fake = _check_points(fake, "fake", real.shape[1])
        ridge = check_positive(ridge, "ridge", allow_zero=True)
        check_int(max_iter, "max_iter")
        d = real.shape[1]
        i, j = torch.triu_indices(d, d)
        phi = torch.cat([real, fake])
        phi = torch.cat([torch.ones_like(phi[:, :1]), phi, phi[:, i] * phi[:, j]], 1)
        y = torch.cat([torch.ones_like(real[:, 0]), torch.zeros_like(fake[:, 0])])
        w = torch.cat([torch.full_like(real[:, 0], 1 / len(real)), torch.full_like(fake[:, 0], 1 / len(fake))])
        sign = 2 * y - 1

        def objective(theta: Tensor) -> Tensor:
            return (w * F.logsigmoid(sign * (phi @ theta))).sum() - 0.5 * ridge * theta @ theta

        theta = torch.zeros(phi.shape[1], dtype=phi.dtype, device=phi.device)
        for _ in range(max_iter):
            s = torch.sigmoid(phi @ theta)
            grad = phi.T @ (w * (y - s)) - ridge * theta
            hess = (phi * (w * s * (1 - s))[:, None]).T @ phi + ridge * torch.eye(
                len(theta), dtype=phi.dtype, device=phi.device
            )
            step = torch.linalg.solve(hess, grad)
            if grad @ step < tol:
                break
            lr, f0 = 1.0, objective(theta)
            while objective(theta + lr * step) < f0 and lr > 1e-8:  # backtrack: the objective never falls
                lr /= 2
            theta = theta + lr * step
        else:
            raise ValueError(f"Newton's method did not converge in {max_iter} iterations; raise ridge")
        W = torch.zeros(d, d, dtype=phi.dtype, device=phi.device)
        W[i, j] = theta[1 + d :] / torch.where(i == j, 1.0, 2.0).to(phi.dtype)
        return cls(theta[0], theta[1 : 1 + d], W + W.T - torch.diag(W.diagonal()))


def gaussian_ratio(mean: Tensor, cov: Tensor) -> Callable[[Tensor], QuadraticDiscriminator]:
    r"""The exact ratio for a Gaussian target: particles $\mapsto \log p/q$ with $q$ their Gaussian fit (lesson 19,
    eqs. 19.4 and 19.14).

    Parameters
    ----------
    mean, cov : Tensor, shapes (d,) and (d, d)
        The target $p = \mathcal N(m, \Sigma)$.

    Returns
    -------
    callable
        ``ratio(x) -> QuadraticDiscriminator`` for particles ``x`` of shape (B, d).

    Raises
    ------
    ValueError
        For mismatched shapes or a covariance that is not positive definite.
    """
    mean, cov = _check_gaussian(mean, cov, "target")
    return lambda x: QuadraticDiscriminator.from_gaussians(mean, cov, *gaussian_fit(x))


def logistic_ratio(real: Tensor, ridge: float = 1e-8) -> Callable[[Tensor], QuadraticDiscriminator]:
    r"""The learned ratio: particles $\mapsto$ the quadratic logistic discriminator of ``real`` against them (lesson
    19, eq. 19.3).

    Parameters
    ----------
    real : Tensor, shape (N, d)
        Samples of the target $p$.
    ridge : float
        Passed to :meth:`QuadraticDiscriminator.fit`.

    Returns
    -------
    callable
        ``ratio(x) -> QuadraticDiscriminator`` for particles ``x`` of shape (M, d).

    Raises
    ------
    ValueError
        If ``real`` does not have shape (N, d) with N >= 2 or holds non-finite values.
    """
    real = _check_points(real, "real")
    return lambda x: QuadraticDiscriminator.fit(real, x, ridge)


def velocity(D: LogRatio, x: Tensor, h: str | Callable[[Tensor], Tensor] = "identity") -> Tensor:
    r"""The particle velocity $\nabla_x h(D(x)) = h'(D)\nabla D$ by autograd (lesson 19, eq. 19.2; MonoFlow's
    eq. 19.12); with $D = \log p/q$ and $h$ the identity it is the gradient flow of $\mathrm{KL}(q\,\|\,p)$.

    Parameters
    ----------
    D : callable
        ``D(x)`` of shape (B,), differentiable in torch.
    x : Tensor, shape (B, d)
    h : str or callable
        A name in :data:`MONOTONE` or an increasing function.

    Returns
    -------
    Tensor, shape (B, d), detached

    Raises
    ------
    ValueError, TypeError
        If ``h`` is neither a name in :data:`MONOTONE` nor callable.
    """
    h = _check_h(h)
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(h(D(x)).sum(), x)
    return g


class FlowState(NamedTuple):
    r"""One state of :func:`particle_flow` (lesson 19, eq. 19.6).

    Attributes
    ----------
    step : int
        $k$, from 0.
    t : float
        Flow time $k\varepsilon$.
    x : Tensor, shape (B, d)
        The particles at that time.
    discriminator : callable
        The log ratio fitted on these particles, which moves them on the next step.
    """

    step: int
    t: float
    x: Tensor
    discriminator: LogRatio


def particle_flow(
    x: Tensor,
    ratio: Callable[[Tensor], LogRatio],
    eps: float,
    num_steps: int,
    h: str | Callable[[Tensor], Tensor] = "identity",
) -> Iterator[FlowState]:
    r"""Euler steps $x \leftarrow x + \varepsilon\nabla h(D_t(x))$ of the particle ODE (lesson 19, eqs. 19.2 and
    19.6), the ratio $D_t \approx \log p/q_t$ refitted on the particles at every step.

    Parameters
    ----------
    x : Tensor, shape (B, d)
        Samples of the start $q_0$.
    ratio : callable
        ``ratio(x) -> D``: :func:`gaussian_ratio` (exact) or :func:`logistic_ratio` (learned).
    eps : float
        Step $\varepsilon > 0$ in flow time.
    num_steps : int
    h : str or callable
        MonoFlow's increasing $h$ (eq. 19.12): a name in :data:`MONOTONE` or a callable.

    Yields
    ------
    FlowState
        ``num_steps + 1`` states, at $t = 0, \varepsilon, \dots$

    Raises
    ------
    TypeError
        If ``ratio`` or ``h`` is not callable.
    ValueError
        For ``x`` not of shape (B, d) and finite, ``eps <= 0``, ``num_steps < 1`` or an unknown name ``h``.
    """
    x = _check_points(x, "x").detach()
    if not callable(ratio):
        raise TypeError(f"ratio must be callable (gaussian_ratio or logistic_ratio), got {type(ratio).__name__}")
    eps = check_positive(eps, "eps")
    check_int(num_steps, "num_steps")
    h = _check_h(h)
    for k in range(num_steps + 1):
        D = ratio(x)
        yield FlowState(k, k * eps, x, D)
        if k < num_steps:
            x = x + eps * velocity(D, x, h)


class AffineGenerator(nn.Module):
    r"""The generator $g_\theta(z) = \mu + Az$, $\theta = (\mu, A)$ (lesson 19, eq. 19.5): it pushes
    $\mathcal N(0, I)$ to $\mathcal N(\mu, AA^\top)$, enough for Gaussian targets.

    Parameters
    ----------
    dim : int
        $d$, for both $z$ and $x$.
    mean : Tensor or None
        Initial $\mu$, shape (d,) (default 0).
    scale : Tensor or None
        Initial $A$, shape (d, d) (default $I$).
    dtype : torch.dtype
        Of the parameters (default float64).

    Raises
    ------
    ValueError
        If ``mean`` or ``scale`` do not have shapes (d,) and (d, d).
    """

    def __init__(
        self, dim: int, mean: Tensor | None = None, scale: Tensor | None = None, dtype: torch.dtype = torch.float64
    ) -> None:
        super().__init__()
        d = check_int(dim, "dim")
        mean = torch.zeros(d, dtype=dtype) if mean is None else torch.as_tensor(mean, dtype=dtype)
        scale = torch.eye(d, dtype=dtype) if scale is None else torch.as_tensor(scale, dtype=dtype)
        if mean.shape != (d,) or scale.shape != (d, d):
            raise ValueError(f"mean and scale must have shapes ({d},) and ({d}, {d})")
        self.mu = nn.Parameter(mean.clone())
        self.A = nn.Parameter(scale.clone())

    def forward(self, z: Tensor) -> Tensor:
        r"""$g_\theta(z) = \mu + Az$ (lesson 19, eq. 19.5).

        Parameters
        ----------
        z : Tensor, shape (B, d)

        Returns
        -------
        Tensor, shape (B, d)
        """
        return self.mu + z @ self.A.T

    def moments(self) -> tuple[Tensor, Tensor]:
        r"""Mean $\mu$ and covariance $AA^\top$ of $g_\theta(z)$, $z \sim \mathcal N(0, I)$ (lesson 19, eq. 19.5).

        Returns
        -------
        tuple of Tensor, shapes (d,) and (d, d), detached
        """
        return self.mu.detach().clone(), (self.A @ self.A.T).detach()

    @torch.no_grad()
    def refit_(self, z: Tensor, target: Tensor) -> None:
        r"""Solve (lesson 19, eq. 19.8) exactly: least squares of ``target`` on $(1, z)$, written into $(\mu, A)$.

        Parameters
        ----------
        z : Tensor, shape (B, d)
        target : Tensor, shape (B, d)
            The moved points $x + \varepsilon\nabla D(x)$ (eq. 19.6).
        """
        coef = torch.linalg.lstsq(torch.cat([torch.ones_like(z[:, :1]), z], 1), target).solution
        self.mu.copy_(coef[0])
        self.A.copy_(coef[1:].T)


def matching_loss(g: nn.Module, z: Tensor, target: Tensor) -> Tensor:
    r"""$\frac1B\sum_i\|g_\theta(z_i) - y_i\|^2$ with the moved points $y_i$ held fixed (lesson 19, eq. 19.8).

    Parameters
    ----------
    g : nn.Module
        The generator.
    z : Tensor, shape (B, d_z)
    target : Tensor, shape (B, d)

    Returns
    -------
    Tensor, shape ()
    """
    return (g(z) - target.detach()).pow(2).sum(-1).mean()


def generator_loss(g: nn.Module, z: Tensor, D: LogRatio, h: str | Callable[[Tensor], Tensor] = "identity") -> Tensor:
    r"""$-\frac1B\sum_i h(D(g_\theta(z_i)))$, the usual generator loss (lesson 19, eq. 19.11; MonoFlow's eq. 19.12).

    Parameters
    ----------
    g : nn.Module
    z : Tensor, shape (B, d_z)
    D : callable
        The discriminator, held fixed.
    h : str or callable
        A name in :data:`MONOTONE` or an increasing function.

    Returns
    -------
    Tensor, shape ()
    """
    return -_check_h(h)(D(g(z))).mean()


REFITS: tuple[str, ...] = ("lstsq", "match", "loss")
"""How :func:`monoflow` refits the generator: (19.8) exactly (affine), by gradient steps, or steps of (19.11)."""


def monoflow(
    g: nn.Module,
    real: Tensor,
    eps: float,
    num_steps: int,
    batch_size: int = 1000,
    refit: str = "lstsq",
    gen_steps: int = 1,
    lr: float | None = None,
    h: str | Callable[[Tensor], Tensor] = "identity",
    ridge: float = 1e-8,
    latent_dim: int | None = None,
    generator: torch.Generator | None = None,
) -> Iterator[FlowState]:
    r"""The GAN of lesson 19 (eq. 19.13): fit $D$ on ``real`` against $g_\theta(z)$ (eq. 19.3), move the samples by
    $\varepsilon\nabla h(D)$ (eq. 19.6) and refit $\theta$ to the moved points (eq. 19.8), or take steps of the
    generator loss (eqs. 19.11-19.12). With ``lr=None`` one ``"match"`` step (learning rate 1/2) and one ``"loss"``
    step (learning rate $\varepsilon$) are the same update (eq. 19.10).

    Parameters
    ----------
    g : nn.Module
        The generator, updated in place (:class:`AffineGenerator` for ``refit="lstsq"``).
    real : Tensor, shape (N, d)
        Samples of $p$.
    eps : float
        Step $\varepsilon > 0$ of flow time.
    num_steps : int
    batch_size : int
        Latent draws per step.
    refit : str
        ``"lstsq"`` (eq. 19.8 solved exactly), ``"match"`` (``gen_steps`` SGD steps on eq. 19.8) or ``"loss"``
        (``gen_steps`` SGD steps on eq. 19.12).
    gen_steps : int
        Generator steps per discriminator fit.
    lr : float or None
        SGD learning rate (default 1/2 for ``"match"``, ``eps`` for ``"loss"``).
    h : str or callable
        MonoFlow's increasing $h$: a name in :data:`MONOTONE` or a callable.
    ridge : float
        Of the discriminator fit.
    latent_dim : int or None
        $d_z$ (default $d$).
    generator : torch.Generator or None
        For the latent draws.

    Yields
    ------
    FlowState
        ``num_steps + 1`` states: the step, $t = k\varepsilon$, the batch $g_{\theta_k}(z)$ and the discriminator fitted
        on it; ``g`` holds $\theta_k$ when a state is yielded.

    Raises
    ------
    TypeError
        If ``g`` is not an ``nn.Module``, or ``refit="lstsq"`` without an :class:`AffineGenerator`.
    ValueError
        For ``real`` not of shape (N, d) and finite, a non-positive ``eps`` or ``lr``, counts below 1 (``batch_size``
        below 2), or an unknown ``refit`` or ``h``.
    """
    if not isinstance(g, nn.Module):
        raise TypeError(f"g must be a torch nn.Module (the generator), got {type(g).__name__}")
    real = _check_points(real, "real")
    eps = check_positive(eps, "eps")
    check_int(num_steps, "num_steps")
    check_int(batch_size, "batch_size", low=2)
    check_choice(refit, "refit", REFITS)
    check_int(gen_steps, "gen_steps")
    h = _check_h(h)
    if refit == "lstsq" and not isinstance(g, AffineGenerator):
        raise TypeError(f"refit='lstsq' solves (19.8) for an AffineGenerator only, got {type(g).__name__}")
    if refit != "lstsq":
        lr = check_positive(0.5 if refit == "match" else eps, "lr") if lr is None else check_positive(lr, "lr")
        opt = torch.optim.SGD(g.parameters(), lr=lr)
    dz = real.shape[1] if latent_dim is None else check_int(latent_dim, "latent_dim")
    for k in range(num_steps + 1):
        z = torch.randn(batch_size, dz, generator=generator, dtype=real.dtype)
        with torch.no_grad():
            x = g(z)
        D = QuadraticDiscriminator.fit(real, x, ridge)
        yield FlowState(k, k * eps, x, D)
        if k == num_steps:
            break
        target = x + eps * velocity(D, x, h)
        if refit == "lstsq":
            g.refit_(z, target)
            continue
        for _ in range(gen_steps):
            opt.zero_grad()
            loss = matching_loss(g, z, target) if refit == "match" else generator_loss(g, z, D, h)
            loss.backward()
            opt.step()
