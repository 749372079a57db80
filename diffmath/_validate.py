"""Input checks shared by the public API: fail at the boundary, say what was expected."""

from __future__ import annotations

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


def check_batch(x: object, name: str = "x", min_dim: int = 2) -> Tensor:
    """Check that ``x`` is a finite floating tensor of shape ``(B, ...)``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, ...), got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() < min_dim:
        raise ValueError(
            f"{name} must have shape (B, ...) with at least {min_dim} dimensions, got shape {tuple(x.shape)}"
        )
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
