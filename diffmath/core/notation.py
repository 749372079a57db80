r"""Converters between the five parameterisations of a diffusion model's output.

Every forward process in diffmath is written (lesson 0, eq. 0.1)

$$x_t = a_t x_0 + b_t \varepsilon, \qquad \varepsilon \sim \mathcal N(0, I),$$

with $t = 0$ the data and $t = 1$ (or $T$) the noise. A network, or an exact model, predicts one of

| name | quantity | lesson 0 |
|---|---|---|
| ``"eps"`` | $\hat\varepsilon = \mathbb E[\varepsilon \mid x_t]$ | eq. 0.1 |
| ``"x0"`` | $\hat x_0 = \mathbb E[x_0 \mid x_t]$ | eq. 0.5 |
| ``"score"`` | $\nabla \log p_t(x_t) = -\hat\varepsilon / b_t$ | eq. 0.2 |
| ``"v"`` | $v = a_t \hat\varepsilon - b_t \hat x_0$ | eq. 0.3 |
| ``"velocity"`` | $u = \dot a_t \hat x_0 + \dot b_t \hat\varepsilon$ | eq. 0.4 |

Given $x_t$ and any one of them, the pair $(\hat x_0, \hat\varepsilon)$ is fixed by a 2x2 linear solve
(eqs. 0.5-0.7), and every other one follows.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import Tensor

from diffmath.core._validate import as_tensor, check_batch, check_coefficient, check_like, per_sample

Prediction = Literal["eps", "x0", "score", "v", "velocity"]
PREDICTIONS: tuple[str, ...] = ("eps", "x0", "score", "v", "velocity")


class Pair(NamedTuple):
    r"""The pair $(\hat x_0, \hat\varepsilon)$ that every parameterisation determines (lesson 0, eqs. 0.5-0.7).

    Attributes
    ----------
    x0 : Tensor, shape (B, ...)
        The denoised estimate $\hat x_0$.
    eps : Tensor, shape (B, ...)
        The noise estimate $\hat\varepsilon$.
    """

    x0: Tensor
    eps: Tensor


def check_prediction(kind: object, name: str = "prediction") -> str:
    """Return ``kind`` if it names one of the five parameterisations of lesson 0 (sec. 0.2), else raise ``ValueError``.

    Parameters
    ----------
    kind : object
        Candidate name.
    name : str
        How to call ``kind`` in the error message.

    Returns
    -------
    str
        ``kind`` itself.

    Raises
    ------
    TypeError
        If ``kind`` is not a string.
    ValueError
        If ``kind`` is not one of ``"eps", "x0", "score", "v", "velocity"``.
    """
    if not isinstance(kind, str):
        raise TypeError(f"{name} must name a prediction, one of {PREDICTIONS}, got {type(kind).__name__}")
    if kind not in PREDICTIONS:
        raise ValueError(f"{name} must name a prediction, one of {PREDICTIONS}, got {kind!r}")
    return kind


def _nonzero(c: Tensor, what: str, kind: str) -> Tensor:
    if (c == 0).any():
        raise ValueError(
            f"cannot convert a prediction of kind {kind!r} where {what} is 0: the conversion divides by {what} "
            "(e.g. at an endpoint of time)"
        )
    return c


def _coefficients(x: Tensor, a: object, b: object) -> tuple[Tensor, Tensor]:
    a_ = per_sample(check_coefficient(a, "a", x), x, "a")
    b_ = per_sample(check_coefficient(b, "b", x), x, "b")
    if ((a_ == 0) & (b_ == 0)).any():
        raise ValueError("a and b are both 0: x_t = a x0 + b eps is then 0 whatever x0; expected a > 0 or b > 0")
    return a_, b_


def _derivatives(x: Tensor, da: object, db: object) -> tuple[Tensor, Tensor]:
    if da is None or db is None:
        raise ValueError("kind='velocity' needs the time derivatives da and db of the schedule")
    out = []
    for c, name in ((da, "da"), (db, "db")):
        c_ = as_tensor(c, name, x)
        if torch.isinf(c_).any():
            raise ValueError(
                f"{name} is infinite here: converting a 'velocity' prediction needs finite da and db (db is "
                "infinite at t = 0 on VP-linear with beta_min > 0); use t > 0"
            )
        out.append(per_sample(check_coefficient(c_, name, x, nonneg=False), x, name))
    return out[0], out[1]


def _inputs(pred: object, x: object, a: object, b: object) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    x = check_batch(x, "x", min_dim=1)
    return check_like(pred, x, "pred"), x, *_coefficients(x, a, b)


def to_pair(
    pred: Tensor,
    kind: str,
    x: Tensor,
    a: Tensor | float,
    b: Tensor | float,
    da: Tensor | float | None = None,
    db: Tensor | float | None = None,
) -> Pair:
    r"""Recover $(\hat x_0, \hat\varepsilon)$ from a prediction of any kind (lesson 0, eqs. 0.5-0.7).

    Parameters
    ----------
    pred : Tensor, shape (B, ...)
        The model output.
    kind : {"eps", "x0", "score", "v", "velocity"}
        What ``pred`` is.
    x : Tensor, shape (B, ...)
        The noisy input $x_t$.
    a, b : float or Tensor of shape () or (B,)
        The coefficients $a_t, b_t$ of eq. 0.1 at the time of ``x``.
    da, db : float or Tensor, optional
        $\dot a_t, \dot b_t$; needed only for ``kind="velocity"``.

    Returns
    -------
    Pair
        ``(x0, eps)`` with $x = a\,x_0 + b\,\varepsilon$ exactly (up to rounding).

    Raises
    ------
    TypeError
        If ``kind`` is not a string, ``x`` or ``pred`` is not a floating tensor, or a coefficient is not a real
        number or tensor.
    ValueError
        If ``kind`` is unknown, ``x`` or ``pred`` holds NaN or infinity, their shapes differ, a coefficient is not
        finite or not a scalar or of shape (B,) or the shape of ``x``, ``a`` or ``b`` is negative or both are 0,
        the inversion divides by a zero coefficient (e.g. ``a = 0`` for ``"eps"``), or ``kind="velocity"`` without
        ``da`` and ``db`` or with one of them infinite (``db = inf`` at $t = 0$ on VP-linear).

    Notes
    -----
    eq. 0.5: $\hat x_0 = (x - b\hat\varepsilon)/a$, $\hat\varepsilon = (x - a \hat x_0)/b$, $\hat\varepsilon = -b\,s$;
    eq. 0.6: $\hat x_0 = (a x - b v)/(a^2+b^2)$, $\hat\varepsilon = (b x + a v)/(a^2+b^2)$;
    eq. 0.7: $\hat x_0 = (\dot b x - b u)/(a\dot b - b\dot a)$, $\hat\varepsilon = (a u - \dot a x)/(a\dot b - b\dot a)$.
    """
    kind = check_prediction(kind, "kind")
    pred, x, a_, b_ = _inputs(pred, x, a, b)
    if kind == "eps":
        return Pair((x - b_ * pred) / _nonzero(a_, "a", kind), pred)
    if kind == "x0":
        return Pair(pred, (x - a_ * pred) / _nonzero(b_, "b", kind))
    if kind == "score":
        eps = -b_ * pred
        return Pair((x - b_ * eps) / _nonzero(a_, "a", kind), eps)
    if kind == "v":
        det = a_ * a_ + b_ * b_
        _nonzero(det, "a^2 + b^2", kind)
        return Pair((a_ * x - b_ * pred) / det, (b_ * x + a_ * pred) / det)
    da_, db_ = _derivatives(x, da, db)
    det = _nonzero(a_ * db_ - b_ * da_, "a db - b da", kind)
    return Pair((db_ * x - b_ * pred) / det, (a_ * pred - da_ * x) / det)


def from_pair(
    pair: Pair,
    kind: str,
    a: Tensor | float,
    b: Tensor | float,
    da: Tensor | float | None = None,
    db: Tensor | float | None = None,
) -> Tensor:
    r"""Express $(\hat x_0, \hat\varepsilon)$ as a prediction of ``kind`` (lesson 0, eqs. 0.2-0.4).

    Parameters
    ----------
    pair : Pair
        ``(x0, eps)``, each of shape (B, ...).
    kind : {"eps", "x0", "score", "v", "velocity"}
        The parameterisation wanted.
    a, b, da, db : float or Tensor of shape () or (B,)
        Schedule coefficients at the batch's time; ``da, db`` only for ``"velocity"``.

    Returns
    -------
    Tensor, shape (B, ...)
        eq. 0.2: $s = -\hat\varepsilon/b$; eq. 0.3: $v = a\hat\varepsilon - b\hat x_0$;
        eq. 0.4: $u = \dot a \hat x_0 + \dot b \hat\varepsilon$.

    Raises
    ------
    TypeError
        If ``kind`` is not a string, ``pair`` is not a pair of floating tensors, or a coefficient is not a real
        number or tensor.
    ValueError
        If ``kind`` is unknown, ``pair``'s tensors differ in shape or hold NaN or infinity, a coefficient is not
        finite or not a scalar or of shape (B,) or the shape of ``x0``, ``a`` or ``b`` is negative or both are 0,
        ``b = 0`` for ``"score"``, or ``kind="velocity"`` without finite ``da`` and ``db``.
    """
    kind = check_prediction(kind, "kind")
    if not isinstance(pair, tuple) or len(pair) != 2:
        raise TypeError(f"pair must be a Pair (x0, eps) of two tensors, got {type(pair).__name__}")
    x0 = check_batch(pair[0], "pair.x0", min_dim=1)
    eps = check_like(pair[1], x0, "pair.eps", "pair.x0")
    a_, b_ = _coefficients(x0, a, b)
    if kind == "eps":
        return eps
    if kind == "x0":
        return x0
    if kind == "score":
        return -eps / _nonzero(b_, "b", kind)
    if kind == "v":
        return a_ * eps - b_ * x0
    da_, db_ = _derivatives(x0, da, db)
    return da_ * x0 + db_ * eps


def convert(
    pred: Tensor,
    source: str,
    target: str,
    x: Tensor,
    a: Tensor | float,
    b: Tensor | float,
    da: Tensor | float | None = None,
    db: Tensor | float | None = None,
) -> Tensor:
    r"""Convert a prediction from one parameterisation to another (lesson 0, eqs. 0.2-0.7).

    Parameters
    ----------
    pred : Tensor, shape (B, ...)
        Model output, of kind ``source``.
    source, target : {"eps", "x0", "score", "v", "velocity"}
        Parameterisation of ``pred`` and of the result.
    x : Tensor, shape (B, ...)
        The noisy input $x_t = a x_0 + b\varepsilon$.
    a, b, da, db : float or Tensor of shape () or (B,)
        Schedule coefficients (``da, db`` needed when either kind is ``"velocity"``).

    Returns
    -------
    Tensor, shape (B, ...)
        ``pred`` expressed as a prediction of kind ``target``.

    Raises
    ------
    TypeError
        If ``source`` or ``target`` is not a string, ``x`` or ``pred`` is not a floating tensor, or a coefficient
        is not a real number or tensor.
    ValueError
        If ``source`` or ``target`` is unknown, or :func:`to_pair` / :func:`from_pair` reject the inputs (NaN or
        infinity, mismatched shapes, a negative or zero coefficient, ``"velocity"`` without ``da`` and ``db``);
        ``pred``, ``x``, ``a`` and ``b`` are checked even when ``source == target``.

    Examples
    --------
    >>> import torch
    >>> x, eps = torch.randn(4, 2), torch.randn(4, 2)
    >>> s = convert(eps, "eps", "score", x, a=0.8, b=0.6)
    >>> torch.allclose(s, -eps / 0.6)
    True
    """
    check_prediction(source, "source")
    check_prediction(target, "target")
    if source == target:
        return _inputs(pred, x, a, b)[0]
    return from_pair(to_pair(pred, source, x, a, b, da, db), target, a, b, da, db)
