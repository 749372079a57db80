r"""Score matching and conditional score matching (lesson 18): the objectives, their theta-free gap, and the targets.

At one time $t$, with $x_t = a x_0 + b\varepsilon$, a score model $s$ can be regressed onto four targets:

- ``"exact"``: the marginal score $\nabla\log p_t(x_t)$ of a known source: explicit score matching (eq. 18.1);
- ``"conditional"``: $\nabla\log p(x_t\mid x_0) = -\varepsilon/b$: conditional (denoising) score matching (eq. 18.2),
  the loss of lesson 5 (:func:`diffmath.sde.dsm_loss`);
- ``"plugin"``: the self-normalised estimate of eq. 18.3 from an independent reference batch (eq. 18.9): biased;
- ``"batch"``: the same estimate from the batch that made $x_t$, its own $x_0$ included (eq. 18.10): an unbiased
  target with less variance than the conditional one (PFGM's batch target, lesson 13, eq. 13.15).

:func:`score_gap` is the constant by which the conditional objective exceeds the explicit one (eqs. 18.6-18.7), and
:func:`batch_target_error` measures the bias and the spread of the two batch estimates (sec. 18.5).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from diffmath.core._validate import check_batch, check_choice, check_int, check_like, check_output
from diffmath.exact.mixtures import EmpiricalData, GaussianMixture
from diffmath.sde import dsm_loss

TARGETS: tuple[str, ...] = ("exact", "conditional", "plugin", "batch")


def _coefficients(a: object, b: object) -> tuple[float, float]:
    for v, name in ((a, "a"), (b, "b")):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise TypeError(f"{name} must be a finite real number, got {v!r}")
    if a < 0 or b <= 0:
        raise ValueError(f"need a >= 0 and b > 0 (x_t = a x0 + b eps with noise), got a={a}, b={b}")
    return float(a), float(b)


def score_target(
    x0: Tensor,
    eps: Tensor,
    a: float,
    b: float,
    target: str = "conditional",
    source: GaussianMixture | None = None,
    reference: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    r"""The noisy point $x_t = a x_0 + b\varepsilon$ and a score-matching target there (lesson 18, eqs. 18.1-18.10).

    Parameters
    ----------
    x0 : Tensor, shape (B, ...)
        Data. For ``"batch"`` it is also the reference set: every $x_t$ is weighed against the whole batch.
    eps : Tensor, shape (B, ...)
        The noise $\varepsilon$.
    a, b : float
        Coefficients, $a \ge 0$, $b > 0$.
    target : {"exact", "conditional", "plugin", "batch"}
        ``"exact"``: $\nabla\log p_t(x_t)$ of ``source`` (eq. 18.1); ``"conditional"``: $-\varepsilon/b$ (eq. 18.2);
        ``"plugin"``: $\sum_j w_j\nabla\log p(x_t\mid x^{(j)})$ with $w_j\propto p(x_t\mid x^{(j)})$ over the
        independent ``reference`` (eq. 18.9); ``"batch"``: the same weights over ``x0`` itself (eq. 18.10).
    source : GaussianMixture, optional
        The data law, needed for ``"exact"``.
    reference : Tensor, shape (n, ...), optional
        An independent batch of data, needed for ``"plugin"``.

    Returns
    -------
    x_t, target : Tensor, shape (B, ...)

    Raises
    ------
    TypeError
        If ``x0``/``eps``/``reference`` are not floating tensors, ``source`` is not a :class:`GaussianMixture` or
        ``a``, ``b`` are not real numbers.
    ValueError
        On an unknown ``target``, a missing ``source``/``reference``, shapes that do not match, or ``a < 0``,
        ``b <= 0``.
    """
    target = check_choice(target, "target", TARGETS)
    x0 = check_batch(x0, "x0")
    eps = check_like(eps, x0, "eps", "x0")
    a, b = _coefficients(a, b)
    x_t = a * x0 + b * eps
    if target == "conditional":
        return x_t, -eps / b
    if target == "exact":
        if not isinstance(source, GaussianMixture):
            raise TypeError(f"target='exact' needs source=GaussianMixture (the data law), got {type(source).__name__}")
        return x_t, source.score(x_t, a, b)
    if target == "plugin":
        if reference is None:
            raise ValueError("target='plugin' needs reference=<an independent batch of data, shape (n, ...)>")
        reference = check_batch(reference, "reference")
        if reference.shape[1:] != x0.shape[1:]:
            raise ValueError(f"reference must hold points of shape {tuple(x0.shape[1:])}, got {tuple(reference.shape)}")
        return x_t, EmpiricalData(reference).score(x_t, a, b)
    return x_t, EmpiricalData(x0).score(x_t, a, b)


def sm_loss(
    score: Callable[[Tensor], Tensor],
    x0: Tensor,
    eps: Tensor,
    a: float,
    b: float,
    target: str = "exact",
    source: GaussianMixture | None = None,
    reference: Tensor | None = None,
) -> Tensor:
    r"""Per-sample squared error $\|s(x_t) - \text{target}\|^2$ of a score model at $x_t = a x_0 + b\varepsilon$
    (lesson 18: eq. 18.1 with ``target="exact"``, eq. 18.2 with ``"conditional"``, eqs. 18.9-18.10 with the batch
    estimates).

    ``"conditional"`` is lesson 5's :func:`diffmath.sde.dsm_loss` (eq. 5.12) and is computed by it.

    Parameters
    ----------
    score : callable
        The score model at this time, mapping (B, ...) to (B, ...).
    x0, eps : Tensor, shape (B, ...)
        Data and noise.
    a, b : float
        Coefficients, $a \ge 0$, $b > 0$.
    target, source, reference
        As in :func:`score_target`.

    Returns
    -------
    Tensor, shape (B,)
        The loss of each sample; its mean estimates the objective.

    Raises
    ------
    TypeError, ValueError
        As :func:`score_target`, and if ``score`` is not callable or returns a tensor of another shape.
    """
    if not callable(score):
        raise TypeError(f"score must be callable as score(x_t) -> Tensor, got {type(score).__name__}")
    if target == "conditional":
        _coefficients(a, b)
        return dsm_loss(score, x0, eps, a, b)
    x_t, tgt = score_target(x0, eps, a, b, target, source, reference)
    diff = check_output(score(x_t), x_t, "score") - tgt
    return (diff**2).reshape(x_t.shape[0], -1).sum(1)


def score_gap(source: GaussianMixture, x_t: Tensor, a: float, b: float) -> Tensor:
    r"""$\operatorname{tr}\operatorname{Cov}[\nabla\log p(x_t\mid x_0)\mid x_t] = (a^2/b^4)\operatorname{tr}
    \operatorname{Cov}[x_0\mid x_t]$ at each point (lesson 18, eq. 18.7): its mean over $p_t$ is the theta-free gap
    between the conditional and the explicit objectives (eq. 18.6).

    Parameters
    ----------
    source : GaussianMixture
        The data law (an :class:`~diffmath.exact.mixtures.EmpiricalData` for a finite data set).
    x_t : Tensor, shape (B, ...)
        Noisy points.
    a, b : float
        Coefficients, $a \ge 0$, $b > 0$.

    Returns
    -------
    Tensor, shape (B,)
        Non-negative: conditional score matching bounds explicit score matching from above (eq. 18.5).

    Raises
    ------
    TypeError
        If ``source`` is not a :class:`GaussianMixture` or ``a``, ``b`` are not real numbers.
    ValueError
        If ``a < 0`` or ``b <= 0``, or ``x_t`` is not a finite batch of the source's shape.
    """
    if not isinstance(source, GaussianMixture):
        raise TypeError(f"source must be a GaussianMixture (the data law), got {type(source).__name__}")
    a, b = _coefficients(a, b)
    cov = source.posterior_cov(x_t, a, b)
    return torch.diagonal(cov, dim1=-2, dim2=-1).sum(-1) * (a / b / b) ** 2


@dataclass(frozen=True)
class TargetError:
    r"""How far a batch estimate of the score is from the score, at fixed noisy points (lesson 18, sec. 18.5).

    Parameters
    ----------
    bias_sq, bias_sq_se : float
        $\mathbb E_{x_t}\|\mathbb E[\hat s\mid x_t] - \nabla\log p_t(x_t)\|^2$ (eq. 18.11), the error of the regression
        minimiser, debiased for the finite number of repeats, and its standard error.
    mse, mse_se : float
        $\mathbb E\|\hat s - \nabla\log p_t(x_t)\|^2$, the error of one target (bias$^2$ + variance), and its
        standard error. With ``own=False`` it is also the excess of the plug-in loss over the explicit one at the
        exact score.
    n : int
        Reference batch size.
    own : bool
        Whether the batch held the $x_0$ that made $x_t$ (eq. 18.10) or was independent (eq. 18.9).
    """

    bias_sq: float
    bias_sq_se: float
    mse: float
    mse_se: float
    n: int
    own: bool


def batch_target_error(
    data: EmpiricalData,
    x_t: Tensor,
    a: float,
    b: float,
    n: int,
    repeats: int = 200,
    own: bool = True,
    generator: torch.Generator | None = None,
) -> TargetError:
    r"""Bias and mean squared error of the self-normalised batch score (lesson 18, eqs. 18.9-18.11), measured at
    fixed noisy points $x_t$ by drawing ``repeats`` reference batches of size ``n`` from a finite data set.

    With ``own=True`` one member of each batch is the point that made $x_t$, drawn from its posterior
    $p(i\mid x_t)$, and the others are independent draws: the target of eq. 18.10, whose conditional mean is the score
    for every $n$. With ``own=False`` all $n$ are independent: the plug-in of eq. 18.3, biased by $O(1/n)$.

    Parameters
    ----------
    data : EmpiricalData
        The data set; $p_0$ puts its weights on its points, so $\nabla\log p_t$ is exact.
    x_t : Tensor, shape (M, ...)
        Noisy points at which to measure.
    a, b : float
        Coefficients, $a \ge 0$, $b > 0$.
    n : int
        Reference batch size, >= 1.
    repeats : int
        Batches per point, >= 2.
    own : bool
        See above.
    generator : torch.Generator, optional
        Source of the draws.

    Returns
    -------
    TargetError

    Raises
    ------
    TypeError
        If ``data`` is not an :class:`~diffmath.exact.mixtures.EmpiricalData` or ``a``, ``b`` are not numbers.
    ValueError
        If ``n < 1``, ``repeats < 2``, ``a < 0``, ``b <= 0``, or ``x_t`` is not a batch of the data's shape.
    """
    if not isinstance(data, EmpiricalData):
        raise TypeError(f"data must be an EmpiricalData (a finite data set), got {type(data).__name__}")
    a, b = _coefficients(a, b)
    n, repeats = check_int(n, "n"), check_int(repeats, "repeats", low=2)
    x_t = check_batch(x_t, "x_t")
    points = data.means.to(x_t.dtype).reshape(data.K, -1)
    x = x_t.reshape(x_t.shape[0], -1)
    if x.shape[1] != points.shape[1]:
        raise ValueError(f"x_t must hold points of the data's shape {tuple(data.event_shape)}, got {tuple(x_t.shape)}")
    weights = data.weights.to(x.dtype)
    exact = data.score(x_t, a, b).reshape(x.shape)
    post = data.component_posterior(x_t, a, b)  # (M, N): p(i | x_t)
    bias, err = [], []
    for i in range(x.shape[0]):
        idx = torch.multinomial(weights, repeats * n, replacement=True, generator=generator).reshape(repeats, n)
        if own:
            idx[:, 0] = torch.multinomial(post[i], repeats, replacement=True, generator=generator)
        ref = points[idx]  # (R, n, d)
        cond = (a * ref - x[i]) / b / b  # grad log p(x_t | x^(j)), eq. 5.11
        w = torch.softmax(-0.5 * ((x[i] - a * ref) ** 2).sum(-1) / b / b, dim=1)  # eq. 18.9 weights
        s_hat = (w[..., None] * cond).sum(1) - exact[i]  # (R, d): error of each target
        mean = s_hat.mean(0)
        bias.append((mean**2).sum() - s_hat.var(0).sum() / repeats)  # unbiased for ||E[s_hat | x_t] - score||^2
        err.append((s_hat**2).sum(1).mean())
    bias_t, err_t = torch.stack(bias), torch.stack(err)
    M = x.shape[0]
    return TargetError(
        bias_sq=bias_t.mean().item(),
        bias_sq_se=(bias_t.std() / math.sqrt(M)).item() if M > 1 else float("nan"),
        mse=err_t.mean().item(),
        mse_se=(err_t.std() / math.sqrt(M)).item() if M > 1 else float("nan"),
        n=n,
        own=bool(own),
    )
