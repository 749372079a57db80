r"""The one model interface (lesson 0, sec. 0.5).

A model is any callable ``model(x, t, cond=None)`` on a batch ``x`` of shape ``(B, ...)`` and times ``t`` (a scalar
or shape ``(B,)``), returning a tensor of the shape of ``x`` that is a prediction of the kind named by its attribute
``prediction`` (one of ``"eps", "x0", "score", "v", "velocity"``). Exact models (:class:`~diffmath.exact.mixtures.ExactModel`)
and trained networks implement it alike; samplers reach any parameterisation through :func:`predict`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from diffmath.core._validate import as_tensor, check_batch, check_finite, check_output, check_schedule, check_time
from diffmath.core.notation import Pair, check_prediction, from_pair, to_pair
from diffmath.core.schedules import Schedule


@runtime_checkable
class Model(Protocol):
    """Protocol of every diffmath model: ``model(x, t, cond=None) -> Tensor`` plus a ``prediction`` attribute."""

    prediction: str

    def __call__(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor: ...


def check_model(model: object) -> Model:
    """Return ``model`` if it follows the one interface (lesson 0, sec. 0.5), else raise ``TypeError`` saying what is
    missing.

    Parameters
    ----------
    model : object
        Candidate model: callable as ``model(x, t, cond=None)`` with a ``prediction`` attribute.

    Returns
    -------
    Model
        ``model`` itself.

    Raises
    ------
    TypeError
        If ``model`` is not callable, has no ``prediction`` attribute, or its ``prediction`` is not a string.
    ValueError
        If ``model.prediction`` is not one of the five parameterisations.
    """
    if not callable(model):
        raise TypeError(f"model must be callable as model(x, t, cond=None), got {type(model).__name__}")
    kind = getattr(model, "prediction", None)
    if kind is None:
        raise TypeError("model must have a 'prediction' attribute naming what it predicts ('eps', 'x0', ...)")
    check_prediction(kind, "model.prediction")
    return model  # type: ignore[return-value]


def predict(
    model: Model,
    x: Tensor,
    t: Tensor | float,
    schedule: Schedule,
    kind: str,
    cond: Tensor | None = None,
) -> Tensor:
    r"""Evaluate ``model`` at $(x_t, t)$ and return its prediction as ``kind`` (lesson 0, eqs. 0.2-0.7).

    Parameters
    ----------
    model : Model
        Any model with the one interface.
    x : Tensor, shape (B, ...)
        Noisy batch $x_t$.
    t : float or Tensor of shape () or (B,)
        Time(s) of ``x`` on ``schedule``; passed to the model as a tensor of shape (B,) in ``x``'s dtype.
    schedule : Schedule
        Gives $a_t, b_t$ (and derivatives) for the conversion.
    kind : {"eps", "x0", "score", "v", "velocity"}
        The parameterisation wanted.
    cond : Tensor, optional
        Condition passed through to the model.

    Returns
    -------
    Tensor, shape (B, ...)

    Raises
    ------
    TypeError
        If ``model`` does not follow the one interface, ``schedule`` is not a :class:`~diffmath.core.schedules.Schedule`,
        ``x`` is not a floating tensor (or, for a ``torch.nn.Module`` model, not in its parameters' dtype), or
        ``t`` is not a real number or tensor.
    ValueError
        If ``x`` has fewer than 2 dimensions or holds NaN or infinity, ``t`` is not a scalar or of shape (B,) or
        lies outside the schedule's range, the model returns a tensor of another shape, or NaN/inf (a diverged
        model is reported, never propagated silently), or the conversion divides by a zero coefficient, or
        ``kind`` is not a parameterisation (``TypeError`` if not a string).
    """
    check_prediction(kind, "kind")
    return _evaluate(model, x, t, schedule, cond, want=kind)


def predict_pair(model: Model, x: Tensor, t: Tensor | float, schedule: Schedule, cond: Tensor | None = None) -> Pair:
    r"""Evaluate ``model`` once and return $(\hat x_0, \hat\varepsilon)$ (lesson 0, eqs. 0.5-0.7).

    Parameters
    ----------
    model, x, t, schedule, cond
        As in :func:`predict`.

    Returns
    -------
    Pair
        $(\hat x_0, \hat\varepsilon)$, each of shape (B, ...).

    Raises
    ------
    TypeError, ValueError
        As :func:`predict`.
    """
    return _evaluate(model, x, t, schedule, cond, want=None)


_CASTS = {
    torch.float32: ".float()",
    torch.float64: ".double()",
    torch.float16: ".half()",
    torch.bfloat16: ".bfloat16()",
}


def dtype_mismatch(x_dtype: torch.dtype, param_dtype: torch.dtype, name: str = "x", owner: str = "model") -> str:
    """The message for a batch in another dtype than a network's parameters, with both remedies (lesson 0, sec. 0.5).

    Parameters
    ----------
    x_dtype, param_dtype : torch.dtype
        The batch's and the parameters' dtypes.
    name, owner : str
        What the batch and the network are called in the message.

    Returns
    -------
    str
    """
    to_x = _CASTS.get(param_dtype, f".to({param_dtype})")
    to_net = _CASTS.get(x_dtype, f".to({x_dtype})")
    return (
        f"{name} has dtype {x_dtype} but the {owner}'s parameters are {param_dtype}; expected {name} in {param_dtype}: "
        f"pass {name}{to_x}, or convert the {owner} with {owner}{to_net}"
    )


def check_input_dtype(model: Model, x: Tensor) -> None:
    """Refuse a batch whose dtype differs from a network's parameters (lesson 0, sec. 0.5), naming both.

    Parameters
    ----------
    model : Model
        Any model; only a ``torch.nn.Module`` with floating parameters is checked.
    x : Tensor
        The batch it will be called on.

    Raises
    ------
    TypeError
        If ``model`` is a ``torch.nn.Module`` whose first floating parameter is not in ``x``'s dtype.
    """
    if isinstance(model, nn.Module):
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), x.dtype)
        if dtype != x.dtype:
            raise TypeError(dtype_mismatch(x.dtype, dtype, "x", "model"))


def call_model(model: Model, x: Tensor, t: Tensor | float, cond: Tensor | None = None) -> Tensor:
    r"""Call ``model(x, t, cond)`` through the checks of the one interface (lesson 0, sec. 0.5).

    Parameters
    ----------
    model : Model
        Any model with the one interface.
    x : Tensor, shape (B, ...)
        Input batch.
    t : float or Tensor of shape () or (B,)
        Time(s); passed to the model as a tensor of shape (B,) in ``x``'s dtype.
    cond : Tensor, optional
        Condition passed through to the model.

    Returns
    -------
    Tensor, shape (B, ...)
        The model's raw output (of kind ``model.prediction``).

    Raises
    ------
    TypeError
        If ``model`` does not follow the one interface, ``x`` is not a floating tensor or not in the dtype of the
        model's parameters (for a ``torch.nn.Module``), or ``t`` is not a real number or tensor.
    ValueError
        If ``x`` has fewer than 2 dimensions or holds NaN or infinity, ``t`` is not a scalar or of shape (B,), or
        the model returns something other than a finite tensor of the shape of ``x``.
    """
    check_model(model)
    x = check_batch(x, "x")
    t_ = check_finite(as_tensor(t, "t", x), "t")
    if t_.dim() == 0:
        t_ = t_.expand(x.shape[0])
    elif t_.shape != (x.shape[0],):
        raise ValueError(f"t must be a scalar or have shape (B,) = ({x.shape[0]},), got {tuple(t_.shape)}")
    check_input_dtype(model, x)
    out = check_output(model(x, t_, cond), x, "model")
    if not torch.isfinite(out).all():
        raise ValueError(
            f"model returned NaN or inf at t in [{t_.min().item():g}, {t_.max().item():g}]; "
            "check the model, its inputs and the time grid"
        )
    return out


def _evaluate(model: Model, x: Tensor, t: Tensor | float, schedule: Schedule, cond: Tensor | None, want: str | None):
    check_model(model)
    check_schedule(schedule)
    x = check_batch(x, "x")
    t_ = check_time(t, schedule, "t").to(x.dtype)
    out = call_model(model, x, t_, cond)
    if want == model.prediction:
        return out
    c = schedule.coefficients(t_.expand(x.shape[0]) if t_.dim() == 0 else t_)
    pair = to_pair(out, model.prediction, x, c.a, c.b, c.da, c.db)
    return pair if want is None else from_pair(pair, want, c.a, c.b, c.da, c.db)
