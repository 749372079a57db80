r"""Exact models: data distributions whose noised score, denoiser and posterior are known in closed form.

A :class:`GaussianMixture` $p(x_0) = \sum_k w_k \mathcal N(\mu_k, \Sigma_k)$ in any dimension stays a Gaussian
mixture under $x_t = a x_0 + b\varepsilon$ (lesson 0, eq. 0.16):

$$p_t(x_t) = \sum_k w_k\, \mathcal N\!\big(x_t;\ a\mu_k,\ C_k\big), \qquad C_k = a^2\Sigma_k + b^2 I.$$

Writing $\Sigma_k = U_k \operatorname{diag}(\lambda_k) U_k^\top$, every quantity below is a sum over components of
closed forms in the rotated coordinates $U_k^\top(x_t - a\mu_k)$ (eqs. 0.17-0.20). :class:`EmpiricalData` is the
mixture of point masses ($\Sigma_k = 0$): its denoiser is the "memorising" optimal denoiser of a finite data set.
Both become models with the one interface through :meth:`GaussianMixture.model`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffmath.core._validate import as_tensor, check_batch, check_coefficient, check_finite, check_nonempty, per_sample
from diffmath.core.notation import Pair, check_prediction, from_pair
from diffmath.core.schedules import Schedule

_CHUNK = 1 << 22  # elements of a (B, K, d) intermediate processed at once


def check_components(components: object, K: int) -> Tensor:
    """A set of component indices of a K-component mixture as a 1-D int64 tensor (lesson 0, eq. 0.19).

    Parameters
    ----------
    components : sequence of int or Tensor of int
        The indices.
    K : int
        The number of components.

    Returns
    -------
    Tensor, shape (m,), int64

    Raises
    ------
    ValueError
        Unless ``components`` is a non-empty 1-D set of distinct integer indices in 0..K-1.
    """
    try:
        c = components if isinstance(components, Tensor) else torch.as_tensor(list(components))
    except (TypeError, ValueError, RuntimeError):
        c = None
    if (
        c is None
        or c.is_floating_point()
        or c.dtype == torch.bool
        or c.dim() != 1
        or c.numel() == 0
        or (c < 0).any()
        or (c >= K).any()
        or c.unique().numel() != c.numel()
    ):
        raise ValueError(f"components must be a non-empty 1-D set of distinct integer indices in 0..{K - 1}")
    return c.long()


class GaussianMixture:
    r"""A Gaussian mixture in any dimension with exact noised quantities (lesson 0, eqs. 0.16-0.20).

    Parameters
    ----------
    weights : Tensor, shape (K,)
        Non-negative mixture weights summing to one.
    means : Tensor, shape (K, *event_shape)
        Component means; ``event_shape`` (e.g. ``(2,)`` or ``(3, 8, 8)``) is the shape of one sample.
    covs : Tensor, shape (K,), (K, *event_shape) or (K, d, d)
        Isotropic variances, diagonal variances, or full covariance matrices (symmetric positive definite),
        with $d = \prod$ ``event_shape``.
    labels : Tensor of int, shape (K,), optional
        Class of each component (default: component ``k`` is class ``k``); used by ``cond`` and
        :meth:`class_posterior`.

    Raises
    ------
    TypeError
        If ``weights``, ``means`` or ``covs`` is not a real tensor (or number).
    ValueError
        If the weights are not of shape (K,), negative or do not sum to one, any input holds NaN or infinity,
        ``means`` is not of shape (K, *event_shape), ``covs`` has none of the accepted shapes or is not symmetric
        positive definite, or ``labels`` is not a non-negative integer tensor of shape (K,).

        The methods taking ``(x, a, b, cond)`` check them in one place and raise a TypeError if ``x`` is not a
        floating tensor or ``a``, ``b`` are not real numbers or tensors; a ValueError if ``x`` is not of shape
        (B, *event_shape) or holds NaN or infinity, ``a`` or ``b`` is not finite, negative or not of shape () or (B,),
        ``cond`` is not a tensor of labels in -1..num_classes-1 of shape (B,) or names a class no component has, or
        the noised density is singular (``b = 0`` with a degenerate component).

    Notes
    -----
    All computations run in the dtype and device of the input ``x``; use float64 for identities to 1e-9.
    ``cond`` (where accepted) is a tensor of class labels of shape (B,); the label ``-1`` means unconditional.
    """

    _allow_singular = False

    def __init__(self, weights: Tensor, means: Tensor, covs: Tensor, labels: Tensor | None = None) -> None:
        weights = as_tensor(weights, "weights").to(torch.float64)
        means = as_tensor(means, "means").to(torch.float64)
        covs = as_tensor(covs, "covs").to(torch.float64)
        if weights.dim() != 1 or weights.numel() < 1:
            raise ValueError(f"weights must have shape (K,) with K >= 1, got {tuple(weights.shape)}")
        K = weights.numel()
        for name, v in (("weights", weights), ("means", means), ("covs", covs)):
            check_finite(v, name)
        if (weights < 0).any():
            raise ValueError("weights must be non-negative")
        if abs(weights.sum().item() - 1.0) > 1e-6:
            raise ValueError(f"weights must sum to 1, got sum {weights.sum().item():.6g}")
        if means.dim() < 2 or means.shape[0] != K:
            raise ValueError(f"means must have shape (K, *event_shape) with K = {K}, got {tuple(means.shape)}")
        self.event_shape = tuple(means.shape[1:])
        d = math.prod(self.event_shape)
        self.weights, self.means, self.K, self.d = weights, means.reshape(K, d), K, d
        self.U: Tensor | None = None
        if covs.shape == (K,):
            self.cov_kind, lam = "isotropic", covs[:, None].expand(K, d).clone()
        elif covs.shape == (K, *self.event_shape):
            self.cov_kind, lam = "diag", covs.reshape(K, d)
        elif covs.shape == (K, d, d):
            if not torch.allclose(covs, covs.transpose(1, 2), rtol=1e-10, atol=1e-12):
                raise ValueError("covs must be symmetric (full covariance matrices)")
            self.cov_kind = "full"
            lam, self.U = torch.linalg.eigh(covs)
        else:
            raise ValueError(
                f"covs must have shape (K,)=({K},), (K, *event_shape)=({K}, {', '.join(map(str, self.event_shape))}) "
                f"or (K, d, d)=({K}, {d}, {d}); got {tuple(covs.shape)}"
            )
        if self._allow_singular:
            if (lam < 0).any():
                raise ValueError("covs must be positive semi-definite (all eigenvalues >= 0)")
        elif (lam <= 0).any():
            raise ValueError("covs must be positive definite (all eigenvalues > 0)")
        self.lam = lam
        if labels is None:
            labels = torch.arange(K)
        if not isinstance(labels, Tensor) or labels.shape != (K,) or labels.is_floating_point():
            raise ValueError(f"labels must be an integer tensor of shape (K,) = ({K},)")
        if (labels < 0).any():
            raise ValueError("labels must be non-negative integers")
        self.labels = labels.long()
        self.num_classes = int(self.labels.max().item()) + 1
        self._cache: dict[tuple, tuple[Tensor, ...]] = {}

    # ------------------------------------------------------------------ helpers
    def _params(self, like: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor]:
        key = (like.dtype, like.device)
        if key not in self._cache:
            conv = {"dtype": like.dtype, "device": like.device}
            U = None if self.U is None else self.U.to(**conv)
            self._cache[key] = (
                torch.log(self.weights).to(**conv),
                self.means.to(**conv),
                self.lam.to(**conv),
                U,
                self.labels.to(like.device),
            )
        return self._cache[key]

    def _flat(self, x: Tensor) -> Tensor:
        x = check_batch(x, "x")
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(f"x must have shape (B, {', '.join(map(str, self.event_shape))}), got {tuple(x.shape)}")
        return x.reshape(x.shape[0], self.d)

    def _coef(self, c: Tensor | float, x: Tensor, name: str) -> Tensor:
        c = check_coefficient(c, name, x)
        if c.dim() > 1:
            raise ValueError(f"{name} must be a scalar or have shape (B,), got {tuple(c.shape)}")
        return per_sample(c, x, name).reshape(-1, 1) if c.dim() == 1 else c.reshape(1, 1)

    def _log_weights(self, log_w: Tensor, labels: Tensor, cond: Tensor | None, B: int) -> Tensor:
        if cond is None:
            return log_w.expand(B, -1)
        if not isinstance(cond, Tensor) or cond.is_floating_point() or cond.dtype == torch.bool or cond.shape != (B,):
            raise ValueError(f"cond must be an integer tensor of class labels of shape (B,) = ({B},)")
        if (cond >= self.num_classes).any() or (cond < -1).any():
            raise ValueError(f"cond labels must lie in -1..{self.num_classes - 1} (-1 = unconditional)")
        cond = cond.to(labels.device)
        empty = (cond >= 0) & ~(labels[None, :] == cond[:, None]).any(1)
        if empty.any():
            raise ValueError(
                f"cond holds class {cond[empty][0].item()}, which no component has (labels {labels.tolist()})"
            )
        keep = (labels[None, :] == cond[:, None]) | (cond[:, None] < 0)
        masked = torch.where(keep, log_w, torch.full_like(log_w, -math.inf))
        return masked - torch.logsumexp(masked, dim=1, keepdim=True)  # p(k | y) = w_k / sum_{label_j = y} w_j

    def _stats(self, x: Tensor, a: Tensor | float, b: Tensor | float, cond: Tensor | None, need: str) -> dict:
        """Log density, responsibilities and the requested posterior quantities, chunked over the batch."""
        xf = self._flat(x)
        a_, b_ = self._coef(a, xf, "a"), self._coef(b, xf, "b")
        log_w, *_, labels = self._params(xf)
        B = xf.shape[0]
        a_, b_ = a_.expand(B, 1), b_.expand(B, 1)
        log_w = self._log_weights(log_w, labels, cond, B)
        step = max(1, _CHUNK // max(1, self.K * self.d))
        parts = [
            self._stats_chunk(xf[i : i + step], a_[i : i + step], b_[i : i + step], log_w[i : i + step], need)
            for i in range(0, max(B, 1), step)  # one empty chunk for an empty batch
        ]
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def _stats_chunk(self, x: Tensor, a: Tensor, b: Tensor, log_w: Tensor, need: str) -> dict:
        _, mu, lam, U, _ = self._params(x)
        a3, b3 = a[:, :, None], b[:, :, None]  # (B, 1, 1)
        var = a3**2 * lam[None] + b3**2  # (B, K, d): eigenvalues of C_k
        if (var <= 0).any():
            raise ValueError("the noised density is singular here (b = 0 with a degenerate component); use b > 0")
        r = x[:, None, :] - a3 * mu[None]  # (B, K, d)
        p = r if U is None else torch.einsum("kde,bkd->bke", U, r)  # rotated residuals U_k^T r
        log_comp = -0.5 * ((p * p / var).sum(-1) + torch.log(2 * math.pi * var).sum(-1))  # eq. 0.16
        joint = log_w + log_comp
        log_p = torch.logsumexp(joint, dim=1)
        resp = torch.exp(joint - log_p[:, None])  # eq. 0.19: p(k | x_t)
        out = {"log_prob": log_p, "resp": resp, "log_resp": joint - log_p[:, None]}
        if need in ("score", "moments"):
            z = p / var  # C_k^{-1} r in rotated coordinates
            zk = z if U is None else torch.einsum("kde,bke->bkd", U, z)
            out["score"] = -(resp[:, :, None] * zk).sum(1)  # eq. 0.17
        if need == "moments":
            gain = a3 * lam[None] / var  # a Sigma_k C_k^{-1} in rotated coordinates
            shift = gain * p
            shift = shift if U is None else torch.einsum("kde,bke->bkd", U, shift)
            m_k = mu[None] + shift  # E[x0 | x_t, k], eq. 0.18
            out["mean_k"] = m_k
            out["var_k"] = lam[None] * b3**2 / var  # eigenvalues of Cov[x0 | x_t, k], eq. 0.20
        return out

    # ------------------------------------------------------------------ data distribution
    def log_prob(self, x: Tensor) -> Tensor:
        r"""Data log density $\log p(x_0)$ (lesson 0, eq. 0.16 at $a = 1, b = 0$). Shape (B,).

        Parameters
        ----------
        x : Tensor, shape (B, *event_shape)
            Data points $x_0$.

        Returns
        -------
        Tensor, shape (B,)
            $\log p(x_0)$.

        Raises
        ------
        TypeError, ValueError
            On bad ``x``, ``a``, ``b`` or ``cond``: see the class docstring.
        """
        return self.noised_log_prob(x, 1.0, 0.0)

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        return_components: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        r"""Draw ``n`` samples $x_0 \sim p$; shape (n, *event_shape). Optionally also the component of each.

        Sampling the mixture of lesson 0, eq. 0.16 at $a = 1, b = 0$: pick a component $k \sim w$, then
        $x_0 = \mu_k + \Sigma_k^{1/2} z$.

        Parameters
        ----------
        n : int
            Number of samples.
        generator : torch.Generator, optional
            Source of randomness, for reproducible draws.
        dtype : torch.dtype, optional
            Dtype of the samples (default: torch's default dtype).
        return_components : bool
            Also return the component index of each sample.

        Returns
        -------
        Tensor, shape (n, *event_shape), or (Tensor, Tensor of int of shape (n,))
            The samples, and their components when ``return_components``.

        Raises
        ------
        ValueError
            If ``n`` is not a positive integer.
        """
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        dtype = dtype or torch.get_default_dtype()
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.d, generator=generator, dtype=torch.float64)
        scaled = torch.sqrt(self.lam[k]) * z
        if self.U is not None:
            scaled = torch.einsum("nde,ne->nd", self.U[k], scaled)
        x = (self.means[k] + scaled).to(dtype).reshape(n, *self.event_shape)
        return (x, k) if return_components else x

    def mean(self) -> Tensor:
        r"""$\mathbb E[x_0] = \sum_k w_k \mu_k$, shape event_shape (lesson 0, eq. 0.16).

        Returns
        -------
        Tensor, shape event_shape, float64
        """
        return (self.weights[:, None] * self.means).sum(0).reshape(self.event_shape)

    def covariance(self) -> Tensor:
        r"""$\operatorname{Cov}[x_0]$, shape (d, d) (law of total covariance; lesson 0, eq. 0.20 at $a = 1, b = 0$).

        Returns
        -------
        Tensor, shape (d, d), float64
            $\sum_k w_k \Sigma_k + \sum_k w_k \mu_k\mu_k^\top - \mathbb E[x_0]\mathbb E[x_0]^\top$.
        """
        return self._mix_cov(self.weights[None], self.means[None], self.lam[None])[0]

    def _mix_cov(self, resp: Tensor, m_k: Tensor, var_k: Tensor) -> Tensor:
        _, _, _, U, _ = self._params(m_k)
        if U is None:
            within = torch.einsum("bk,bkd->bd", resp, var_k).diag_embed()
        else:
            within = torch.einsum("bk,kde,bke,kfe->bdf", resp, U, var_k, U)
        m = torch.einsum("bk,bkd->bd", resp, m_k)
        between = torch.einsum("bk,bkd,bkf->bdf", resp, m_k, m_k) - m[:, :, None] * m[:, None, :]
        return within + between

    # ------------------------------------------------------------------ noised quantities
    def noised_log_prob(self, x: Tensor, a: Tensor | float, b: Tensor | float, cond: Tensor | None = None) -> Tensor:
        r"""$\log p_t(x_t)$ for $x_t = a x_0 + b\varepsilon$ (lesson 0, eq. 0.16). Shape (B,).

        Parameters
        ----------
        x : Tensor, shape (B, *event_shape)
            Noisy points $x_t$.
        a, b : float or Tensor of shape (B,)
            Coefficients of eq. 0.1 (any schedule, any time).
        cond : Tensor of int, shape (B,), optional
            Class labels; restricts the mixture to that class's components (``-1``: all).

        Returns
        -------
        Tensor, shape (B,)
            $\log p_t(x)$ (of the class's mixture when ``cond`` is given).

        Raises
        ------
        TypeError, ValueError
            On bad ``x``, ``a``, ``b`` or ``cond``: see the class docstring.
        """
        return self._stats(x, a, b, cond, "log_prob")["log_prob"]

    def score(self, x: Tensor, a: Tensor | float, b: Tensor | float, cond: Tensor | None = None) -> Tensor:
        r"""Exact noised score $\nabla_x \log p_t(x) = -\sum_k p(k\mid x)\, C_k^{-1}(x - a\mu_k)$ (lesson 0, eq. 0.17).

        Parameters
        ----------
        x : Tensor, shape (B, *event_shape)
            Noisy points $x_t$.
        a, b : float or Tensor of shape (B,)
            Coefficients of eq. 0.1 (any schedule, any time).
        cond : Tensor of int, shape (B,), optional
            Class labels; restricts the mixture to that class's components (``-1``: all).

        Returns
        -------
        Tensor, shape (B, *event_shape)
            The score at ``x``.

        Raises
        ------
        TypeError, ValueError
            On bad ``x``, ``a``, ``b`` or ``cond``: see the class docstring.
        """
        return self._stats(x, a, b, cond, "score")["score"].reshape(x.shape)

    def posterior_mean(self, x: Tensor, a: Tensor | float, b: Tensor | float, cond: Tensor | None = None) -> Tensor:
        r"""Tweedie's denoiser $\mathbb E[x_0\mid x_t] = \sum_k p(k\mid x_t)\,\big(\mu_k + a\Sigma_k C_k^{-1}(x_t - a\mu_k)\big)$
        (lesson 0, eq. 0.18).

        Parameters
        ----------
        x : Tensor, shape (B, *event_shape)
            Noisy points $x_t$.
        a, b : float or Tensor of shape (B,)
            Coefficients of eq. 0.1 (any schedule, any time).
        cond : Tensor of int, shape (B,), optional
            Class labels; restricts the mixture to that class's components (``-1``: all).

        Returns
        -------
        Tensor, shape (B, *event_shape)
            $\hat x_0 = \mathbb E[x_0 \mid x_t = x]$.

        Raises
        ------
        TypeError, ValueError
            On bad ``x``, ``a``, ``b`` or ``cond``: see the class docstring.
        """
        s = self._stats(x, a, b, cond, "moments")
        return torch.einsum("bk,bkd->bd", s["resp"], s["mean_k"]).reshape(x.shape)

    def eps_mean(self, x: Tensor, a: Tensor | float, b: Tensor | float, cond: Tensor | None = None) -> Tensor:
        r"""$\mathbb E[\varepsilon \mid x_t] = -b\,\nabla\log p_t(x_t)$ (lesson 0, eq. 0.2).

        Parameters
        ----------
        x : Tensor, shape (B, *event_shape)
            Noisy points $x_t$.
        a, b : float or Tensor of shape (B,)
            Coefficients of eq. 0.1 (any schedule, any time).
        cond : Tensor of int, shape (B,), optional
            Class labels; restricts the mixture to that class's components (``-1``: all).

        Returns
        -------
        Tensor, shape (B, *event_shape)
            $\hat\varepsilon = \mathbb E[\varepsilon \mid x_t = x]$.

        Raises
        ------
        TypeError, ValueError
            On bad ``x``, ``a``, ``b`` or ``cond``: see the class docstring.
        """
        score = self.score(x, a, b, cond)
        return -per_sample(as_tensor(b, "b", x), x, "b") * score

    def posterior_cov(self, x: Tensor, a: Tensor | float, b: Tensor | float, cond: Tensor | None = None) -> Tensor:
        r"""$\operatorname{Cov}[x_0\mid x_t]$, shape (B, d, d) (lesson 0, eq. 0.20): law of total covariance over
        components, each with $\operatorname{Cov}[x_0\mid x_t,k] = \Sigma_k - a^2\Sigma_k C_k^{-1}\Sigma_k$.

        Parameters
        ----------
        x : Tensor, shape (B, *event_shape)
            Noisy points $x_t$.
        a, b : float or Tensor of shape (B,)
            Coefficients of eq. 0.1 (any schedule, any time).
        cond : Tensor of int, shape (B,), optional
            Class labels; restricts the mixture to that class's components (``-1``: all).

        Returns
        -------
        Tensor, shape (B, d, d)
            The posterior covariance at each point.

        Raises
        ------
        TypeError, ValueError
            On bad ``x``, ``a``, ``b`` or ``cond``: see the class docstring.
        """
        s = self._stats(x, a, b, cond, "moments")
        return self._mix_cov(s["resp"], s["mean_k"], s["var_k"])

    def component_posterior(
        self, x: Tensor, a: Tensor | float, b: Tensor | float, cond: Tensor | None = None
    ) -> Tensor:
        r"""Responsibilities $p(k \mid x_t)$, shape (B, K) (lesson 0, eq. 0.19).

        Parameters
        ----------
        x : Tensor, shape (B, *event_shape)
            Noisy points $x_t$.
        a, b : float or Tensor of shape (B,)
            Coefficients of eq. 0.1 (any schedule, any time).
        cond : Tensor of int, shape (B,), optional
            Class labels; restricts the mixture to that class's components (``-1``: all).

        Returns
        -------
        Tensor, shape (B, K)
            Rows sum to one.

        Raises
        ------
        TypeError, ValueError
            On bad ``x``, ``a``, ``b`` or ``cond``: see the class docstring.
        """
        return self._stats(x, a, b, cond, "log_prob")["resp"]

    def log_prob_of_components(self, x: Tensor, a: Tensor | float, b: Tensor | float, components: Tensor) -> Tensor:
        r"""$\log p(k \in C \mid x_t) = \operatorname{logsumexp}_{k \in C} \log p(k \mid x_t)$, shape (B,) (lesson 0,
        eq. 0.19): the exact, time-dependent likelihood of the attribute "drawn from one of the components $C$",
        computed from the log responsibilities (no underflow far from $C$) and differentiable in ``x``.

        Parameters
        ----------
        x : Tensor, shape (B, *event_shape)
            Noisy points $x_t$.
        a, b : float or Tensor of shape (B,)
            Coefficients of eq. 0.1 (any schedule, any time).
        components : Tensor of int, shape (m,)
            The component indices $C$ (distinct, in 0..K-1, at least one).

        Returns
        -------
        Tensor, shape (B,)

        Raises
        ------
        TypeError, ValueError
            On bad ``x``, ``a``, ``b``: see the class docstring; a ValueError if ``components`` is not a non-empty
            1-D integer tensor of distinct indices in 0..K-1.
        """
        components = check_components(components, self.K)
        log_resp = self._stats(x, a, b, None, "log_prob")["log_resp"]
        return torch.logsumexp(log_resp[:, components.to(log_resp.device)], dim=1)

    def class_posterior(self, x: Tensor, a: Tensor | float, b: Tensor | float) -> Tensor:
        r"""$p(y \mid x_t) = \sum_{k:\,\mathrm{label}_k = y} p(k\mid x_t)$, shape (B, num_classes) (lesson 0, eq. 0.19).

        Parameters
        ----------
        x : Tensor, shape (B, *event_shape)
            Noisy points $x_t$.
        a, b : float or Tensor of shape (B,)
            Coefficients of eq. 0.1 (any schedule, any time).

        Returns
        -------
        Tensor, shape (B, num_classes)
            Rows sum to one.

        Raises
        ------
        TypeError, ValueError
            On bad ``x``, ``a``, ``b`` or ``cond``: see the class docstring.
        """
        resp = self.component_posterior(x, a, b)
        out = torch.zeros(resp.shape[0], self.num_classes, dtype=resp.dtype, device=resp.device)
        return out.index_add_(1, self.labels.to(resp.device), resp)

    def velocity(
        self,
        x: Tensor,
        a: Tensor | float,
        b: Tensor | float,
        da: Tensor | float,
        db: Tensor | float,
        cond: Tensor | None = None,
    ) -> Tensor:
        r"""Exact velocity $\mathbb E[\dot a x_0 + \dot b\varepsilon \mid x_t]$ of the path $a x_0 + b\varepsilon$
        (lesson 0, eq. 0.4); for the linear path $a = 1-t, b = t$ it is rectified flow's $\mathbb E[\varepsilon - x_0\mid x_t]$.

        Parameters
        ----------
        x : Tensor, shape (B, *event_shape)
            Noisy points $x_t$.
        a, b : float or Tensor of shape (B,)
            Coefficients of eq. 0.1 (any schedule, any time).
        da, db : float or Tensor of shape (B,)
            Time derivatives $\dot a, \dot b$ of the coefficients.
        cond : Tensor of int, shape (B,), optional
            Class labels; restricts the mixture to that class's components (``-1``: all).

        Returns
        -------
        Tensor, shape (B, *event_shape)
            $u = \dot a \hat x_0 + \dot b \hat\varepsilon$.

        Raises
        ------
        TypeError, ValueError
            On bad ``x``, ``a``, ``b`` or ``cond``: see the class docstring.
        """
        pair = Pair(self.posterior_mean(x, a, b, cond), self.eps_mean(x, a, b, cond))
        return from_pair(pair, "velocity", a, b, da, db)

    def model(self, schedule: Schedule, prediction: str = "eps") -> ExactModel:
        """This mixture's exact denoiser as a model with the one interface (lesson 0, sec. 0.5).

        Parameters
        ----------
        schedule : Schedule
            Forward process through which the model sees the data.
        prediction : {"eps", "x0", "score", "v", "velocity"}
            What the model returns.

        Returns
        -------
        ExactModel

        Raises
        ------
        TypeError
            If ``schedule`` is not a :class:`~diffmath.core.schedules.Schedule` or ``prediction`` is not a string.
        ValueError
            If ``prediction`` is not one of the five parameterisations.
        """
        return ExactModel(self, schedule, prediction)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(K={self.K}, event_shape={self.event_shape}, covs={self.cov_kind})"


class EmpiricalData(GaussianMixture):
    r"""The empirical distribution of a finite point set: the exact score of the "memorising" optimal denoiser.

    $p(x_0) = \sum_i w_i \delta(x_0 - x^{(i)})$, so $p_t = \sum_i w_i \mathcal N(a x^{(i)}, b^2 I)$
    (lesson 0, eq. 0.16 with $\Sigma_i = 0$) and $\mathbb E[x_0\mid x_t]$ is a softmax-weighted average of the data.

    Parameters
    ----------
    points : Tensor, shape (N, *event_shape)
        The data points $x^{(i)}$.
    weights : Tensor, shape (N,), optional
        Defaults to uniform.
    labels : Tensor of int, shape (N,), optional
        Class of each point (default: point ``i`` is class ``i``).

    Raises
    ------
    TypeError
        If ``points`` is not a floating tensor, or ``weights`` is not a real tensor.
    ValueError
        If ``points`` has fewer than 2 dimensions or holds NaN or infinity, the weights are not of shape (N,),
        negative or do not sum to one, ``points`` is empty, or ``labels`` is not a non-negative integer tensor of
        shape (N,).

        Its methods check ``(x, a, b, cond)`` as :class:`GaussianMixture`'s do, and need ``b > 0`` (point masses have
        no density at ``b = 0``).
    """

    _allow_singular = True

    def __init__(self, points: Tensor, weights: Tensor | None = None, labels: Tensor | None = None) -> None:
        points = check_nonempty(check_batch(as_tensor(points, "points"), "points"), "points")
        N = points.shape[0]
        if weights is None:
            weights = torch.full((N,), 1.0 / N, dtype=torch.float64)
        super().__init__(weights, points, torch.zeros(N, dtype=torch.float64), labels)

    def _stats_chunk(self, x: Tensor, a: Tensor, b: Tensor, log_w: Tensor, need: str) -> dict:
        # isotropic zero covariances: everything is a (B, N) matmul, no (B, N, d) intermediate
        _, mu, _, _, _ = self._params(x)
        if (b <= 0).any():
            raise ValueError("point masses have no density at b = 0; use b > 0")
        sq = (x * x).sum(1, keepdim=True) - 2 * a * (x @ mu.T) + a**2 * (mu * mu).sum(1)[None]
        sq = torch.clamp(sq, min=0.0)  # |x - a x_i|^2, (B, N)
        # divide by b twice, never by b^2 (it underflows to 0 for b < 1e-154), and relative to the nearest point, so
        # that the responsibilities tend to one-hot, not NaN, as b -> 0
        near = sq.min(1, keepdim=True).values
        joint = log_w - 0.5 * (sq - near) / b / b
        log_z = torch.logsumexp(joint, dim=1)
        resp = torch.exp(joint - log_z[:, None])
        log_norm = (0.5 * near / b / b)[:, 0] + self.d * (0.5 * math.log(2 * math.pi) + torch.log(b[:, 0]))
        out = {"log_prob": log_z - log_norm, "resp": resp}
        if need in ("score", "moments"):
            out["score"] = (a * (resp @ mu) - x) / b / b
        if need == "moments":
            out["mean_k"] = mu[None].expand(x.shape[0], -1, -1)
            out["var_k"] = torch.zeros_like(out["mean_k"])
        return out

    def log_prob(self, x: Tensor) -> Tensor:
        r"""Point masses have no density: raises ``ValueError`` (use :meth:`noised_log_prob` with ``b > 0``).

        Lesson 0, eq. 0.16 with $\Sigma_i = 0$ at $b = 0$ is a sum of Dirac masses.

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
        raise ValueError("EmpiricalData is a set of point masses: it has no density at t = 0")

    def posterior_mean(self, x: Tensor, a: Tensor | float, b: Tensor | float, cond: Tensor | None = None) -> Tensor:
        r"""$\mathbb E[x_0\mid x_t] = \sum_i p(i\mid x_t)\, x^{(i)}$ (lesson 0, eq. 0.18 with $\Sigma_i = 0$).

        Parameters
        ----------
        x : Tensor, shape (B, *event_shape)
            Noisy points $x_t$.
        a, b : float or Tensor of shape (B,)
            Coefficients of eq. 0.1 (any schedule, any time).
        cond : Tensor of int, shape (B,), optional
            Class labels; restricts the mixture to that class's components (``-1``: all).

        Returns
        -------
        Tensor, shape (B, *event_shape)
            The softmax-weighted average of the data points.

        Raises
        ------
        TypeError, ValueError
            On bad ``x``, ``a``, ``b`` or ``cond``: see the class docstring.
        """
        resp = self.component_posterior(x, a, b, cond)
        return (resp @ self._params(resp)[1]).reshape(x.shape)


class ExactModel:
    r"""An exact data distribution seen through a schedule: a model with the one interface (lesson 0, sec. 0.5).

    ``model(x, t, cond=None)`` returns the exact prediction of kind ``prediction`` at $x_t$, computed from
    $\hat x_0 = \mathbb E[x_0\mid x_t]$ and $\hat\varepsilon = -b_t \nabla\log p_t(x_t)$ (eqs. 0.2-0.4).

    Parameters
    ----------
    source : GaussianMixture or EmpiricalData
        The data distribution.
    schedule : Schedule
        The forward process; gives $a_t, b_t$ (and $\dot a_t, \dot b_t$) at the model's times.
    prediction : {"eps", "x0", "score", "v", "velocity"}
        What a call returns.

    Raises
    ------
    TypeError
        If ``source`` is not a :class:`GaussianMixture`, ``schedule`` not a
        :class:`~diffmath.core.schedules.Schedule`, or ``prediction`` not a string; a call raises it if ``x`` is not a
        floating tensor or ``t`` not a real number or tensor.
    ValueError
        If ``prediction`` is not one of the five parameterisations; a call raises it if ``x`` or ``t`` holds NaN
        or infinity, ``t`` is not a scalar or of shape (B,) or lies outside the schedule's range, or ``cond`` is
        invalid.
    """

    def __init__(self, source: GaussianMixture, schedule: Schedule, prediction: str = "eps") -> None:
        if not isinstance(source, GaussianMixture):
            raise TypeError(f"source must be a GaussianMixture or EmpiricalData, got {type(source).__name__}")
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a diffmath Schedule, got {type(schedule).__name__}")
        self.source, self.schedule = source, schedule
        self.prediction = check_prediction(prediction)

    def __call__(self, x: Tensor, t: Tensor | float, cond: Tensor | None = None) -> Tensor:
        x = check_batch(x, "x")
        t_ = as_tensor(t, "t", x)
        if t_.dim() > 1 or (t_.dim() == 1 and t_.shape[0] not in (1, x.shape[0])):
            raise ValueError(f"t must be a scalar or have shape (B,) = ({x.shape[0]},), got {tuple(t_.shape)}")
        c = self.schedule.coefficients(t_)
        if self.prediction == "x0":
            return self.source.posterior_mean(x, c.a, c.b, cond)
        eps = self.source.eps_mean(x, c.a, c.b, cond)
        if self.prediction == "eps":
            return eps
        x0 = self.source.posterior_mean(x, c.a, c.b, cond)
        return from_pair(Pair(x0, eps), self.prediction, c.a, c.b, c.da, c.db)

    def __repr__(self) -> str:
        return f"ExactModel({self.source!r}, {self.schedule!r}, prediction={self.prediction!r})"
