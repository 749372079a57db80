"""Input checks shared by the public API: fail at the boundary, say what was expected."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor


def as_tensor(value: object, name: str, like: Tensor | None = None) -> Tensor:
    """Return ``value`` as a floating tensor (on ``like``'s device and dtype when given)."""
    if isinstance(value, bool) or not isinstance(value, (Tensor, float, int)):
        raise TypeError(f"{name} must be a torch.Tensor or a real number, got {type(value).__name__}")
    if isinstance(value, Tensor):
        if value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"{name} must be a real tensor, got dtype {value.dtype}")
        out = value if value.is_floating_point() else value.to(torch.float64)
    else:
        dtype = like.dtype if like is not None else torch.float64
        out = torch.tensor(float(value), dtype=dtype)
    if like is not None:
        out = out.to(device=like.device, dtype=like.dtype)
    return out


def check_batch(x: object, name: str = "x", min_dim: int = 2, finite: bool = True) -> Tensor:
    """Check that ``x`` is a floating tensor of shape ``(B, ...)``, and finite (a host sync on a GPU) if ``finite``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, ...), got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() < min_dim:
        raise ValueError(
            f"{name} must have shape (B, ...) with at least {min_dim} dimensions, got shape {tuple(x.shape)}"
        )
    if finite:
        check_finite(x, name)
    return x


def check_finite(x: Tensor, name: str) -> Tensor:
    """Raise ``ValueError`` if ``x`` holds NaN or infinity."""
    if not torch.isfinite(x).all():
        bad = "NaN" if torch.isnan(x).any() else "infinite values"
        raise ValueError(f"{name} contains {bad}; expected finite numbers")
    return x


def per_sample(c: Tensor, x: Tensor, name: str) -> Tensor:
    """Broadcast a scalar or per-sample coefficient of shape ``(B,)`` against ``x`` of shape ``(B, ...)``."""
    if c.dim() == 0:
        return c
    if c.dim() == 1 and c.shape[0] in (1, x.shape[0]):
        return c.reshape(-1, *([1] * (x.dim() - 1)))
    if c.shape == x.shape:
        return c
    raise ValueError(
        f"{name} must be a scalar, a tensor of shape (B,) = ({x.shape[0]},) or the shape of x "
        f"{tuple(x.shape)}; got shape {tuple(c.shape)}"
    )


def check_output(out: object, x: Tensor, name: str = "model") -> Tensor:
    """Check that a model's output ``out`` has the shape of its input ``x``: a training objective would otherwise
    broadcast a (B, 1) or (1, d) output against its target and train on nonsense."""
    if not isinstance(out, Tensor) or out.shape != x.shape:
        got = f"shape {tuple(out.shape)}" if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"{name} returned {got}; expected a tensor of the input's shape {tuple(x.shape)}")
    return out


def check_nonempty(x: Tensor, name: str, at_least: int = 1) -> Tensor:
    """Raise ``ValueError`` unless the batch ``x`` of shape (B, ...) holds at least ``at_least`` samples."""
    if x.shape[0] < at_least:
        raise ValueError(f"{name} needs at least {at_least} sample{'s' * (at_least > 1)}, got {x.shape[0]}")
    return x


def check_positive(value: object, name: str, allow_zero: bool = False) -> float:
    """Return ``value`` as a float after checking it is a finite real number > 0 (>= 0 with ``allow_zero``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not abs(value) < float("inf"):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'non-negative' if allow_zero else 'positive'}, got {value!r}")
    return float(value)


def check_int(value: object, name: str, low: int = 1) -> int:
    """Return ``value`` after checking it is an integer (not a bool) >= ``low``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        wanted = "a positive integer" if low == 1 else f"an integer >= {low}"
        raise ValueError(f"{name} must be {wanted}, got {value!r}")
    return value


def check_dtype(dtype: object, name: str = "dtype") -> torch.dtype | None:
    """Return ``dtype`` after checking it is ``None`` or a floating ``torch.dtype`` (random draws in an integer dtype
    would be truncated silently)."""
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise TypeError(f"{name} must be a floating torch.dtype (e.g. torch.float32) or None, got {dtype!r}")
    return dtype


def check_time(t: object, schedule: object, name: str = "t") -> Tensor:
    """Return ``t`` as a floating tensor after checking it is finite, in ``[0, schedule.t_max]`` and an integer on a
    discrete schedule; errors name the argument (``t``, ``s``, ``grid``, ``t_start``, ...)."""
    t_ = check_finite(as_tensor(t, name), name)
    if (t_ < 0).any() or (t_ > schedule.t_max).any():
        raise ValueError(
            f"{name} must lie in [0, {schedule.t_max:g}] for schedule {schedule.name!r}; got values in "
            f"[{t_.min().item():g}, {t_.max().item():g}]"
        )
    if schedule.discrete and (t_ != torch.round(t_)).any():
        raise ValueError(
            f"schedule {schedule.name!r} is discrete: {name} must be an integer in 0..{int(schedule.t_max)}"
        )
    return t_


def check_schedule(schedule: object, name: str = "schedule", discrete: bool | None = None) -> object:
    """Return ``schedule`` after checking it is a diffmath ``Schedule`` (discrete or continuous if asked)."""
    from diffmath.core.schedules import Schedule  # schedules imports this module

    if not isinstance(schedule, Schedule):
        raise TypeError(
            f"{name} must be a diffmath Schedule (e.g. VPLinear() or su_linear()), got {type(schedule).__name__}"
        )
    if discrete is not None and schedule.discrete != discrete:
        kind = "a discrete schedule (su_linear, ho_linear, cosine, ...)" if discrete else "a continuous schedule"
        raise TypeError(f"{name} must be {kind}, got {schedule.name!r}")
    return schedule


def check_coefficient(c: object, name: str, like: Tensor, nonneg: bool = True) -> Tensor:
    r"""Return a coefficient of $x_t = a x_0 + b\varepsilon$ (or a derivative, ``nonneg=False``) as a finite tensor in
    ``like``'s dtype and device, refusing negative values when ``nonneg``."""
    c_ = check_finite(as_tensor(c, name, like), name)
    if nonneg and (c_ < 0).any():
        raise ValueError(f"{name} must be >= 0 (a coefficient of x_t = a x0 + b eps), got {c_.min().item():g}")
    return c_


def check_like(v: object, like: Tensor, name: str, like_name: str = "x") -> Tensor:
    """Check that ``v`` is a finite floating tensor of the shape of ``like``."""
    v = check_batch(v, name, min_dim=1)
    if v.shape != like.shape:
        raise ValueError(f"{name} must have shape {tuple(like.shape)} (that of {like_name}), got {tuple(v.shape)}")
    return v


def check_choice(value: object, name: str, choices: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of the strings ``choices``, else raise ``ValueError`` listing them."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


@contextmanager
def at_step(i: int, t: float, s: float) -> Iterator[None]:
    """Prefix a ``ValueError`` raised inside (a model's NaN, a diverged state) with the sampler step it happened at."""
    try:
        yield
    except ValueError as err:
        raise ValueError(f"at step {i} (t={t:g} -> {s:g}): {err}") from err


IVP_METHODS: tuple[str, ...] = ("RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA")


def check_ivp(
    t_start: object, t_end: object, schedule: object, rtol: object, atol: object, method: object
) -> tuple[float, float]:
    """Check the arguments of a ``scipy.integrate.solve_ivp`` reference solve and return ``(t_start, t_end)``: single
    times on ``schedule``, tolerances > 0, one of scipy's methods."""
    times = []
    for value, name in ((t_start, "t_start"), (t_end, "t_end")):
        t_ = check_time(value, schedule, name)
        if t_.numel() != 1:
            raise ValueError(f"{name} must be a single time, got shape {tuple(t_.shape)}")
        times.append(t_.item())
    check_positive(rtol, "rtol")
    check_positive(atol, "atol")
    check_choice(method, "method", IVP_METHODS)
    return times[0], times[1]


def check_real(value: object, name: str) -> float:
    """Return ``value`` as a float after checking it is a finite real number (not a bool, a string or a tensor)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not abs(value) < float("inf"):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    return float(value)
