r"""The two figures every notebook draws: a grid of images, and samples over the data (matplotlib).

Images follow the library's convention, (B, C, H, W) with values in $[-1, 1]$ (lesson 20, sec. 20.1); 2-D samples
are (B, 2) (lesson 3, sec. 3.4). Both functions draw into given axes or make their own figure, and return the axes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def _axes(ax, figsize):
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def image_grid(
    images: Tensor,
    nrow: int | None = None,
    ax=None,
    title: str | None = None,
    labels: Sequence[str] | None = None,
    pad: int = 1,
):
    r"""Draw a batch of images in $[-1, 1]$ as one grid (lesson 20, sec. 20.1): rows of ``nrow`` images.

    Parameters
    ----------
    images : Tensor, shape (B, C, H, W) or (B, H, W)
        One or three channels, values in $[-1, 1]$ (clipped).
    nrow : int, optional
        Images per row (default: $\lceil\sqrt B\,\rceil$).
    ax : matplotlib Axes, optional
        Where to draw (default: a new figure).
    title : str, optional
        The axes' title.
    labels : sequence of str, optional
        One label per row, written at the left.
    pad : int
        Pixels of white between images.

    Returns
    -------
    matplotlib Axes

    Raises
    ------
    TypeError
        If ``images`` is not a floating tensor.
    ValueError
        If ``images`` is not (B, C, H, W) with C in {1, 3} (or (B, H, W)), or ``nrow`` is not a positive integer.
    """
    if not isinstance(images, Tensor) or not images.is_floating_point():
        raise TypeError(f"images must be a floating tensor (B, C, H, W) in [-1, 1], got {type(images).__name__}")
    x = images.detach().cpu().float()
    if x.dim() == 3:
        x = x[:, None]
    if x.dim() != 4 or x.shape[1] not in (1, 3) or x.shape[0] == 0:
        raise ValueError(f"images must have shape (B, C, H, W) with C = 1 or 3, got {tuple(images.shape)}")
    B, C, H, W = x.shape
    nrow = nrow if nrow is not None else int(torch.ceil(torch.tensor(B**0.5)).item())
    if not isinstance(nrow, int) or isinstance(nrow, bool) or nrow < 1:
        raise ValueError(f"nrow must be a positive integer, got {nrow!r}")
    rows = -(-B // nrow)
    canvas = torch.ones(C, rows * (H + pad) + pad, nrow * (W + pad) + pad)
    for k in range(B):
        i, j = divmod(k, nrow)
        top, left = pad + i * (H + pad), pad + j * (W + pad)
        canvas[:, top : top + H, left : left + W] = ((x[k] + 1) / 2).clamp(0, 1)
    ax = _axes(ax, (1.2 * nrow, 1.2 * rows))
    if C == 1:
        ax.imshow(canvas[0].numpy(), cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(canvas.permute(1, 2, 0).numpy())
    ax.set_xticks([])
    if labels is not None:
        ax.set_yticks([pad + i * (H + pad) + H / 2 for i in range(min(rows, len(labels)))])
        ax.set_yticklabels(list(labels)[:rows], fontsize=8)
    else:
        ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def samples_over_data(
    samples: Tensor,
    data: Tensor | None = None,
    ax=None,
    title: str | None = None,
    limit: float | None = None,
    max_points: int = 2000,
):
    r"""Scatter 2-D samples over the data in grey (lesson 3, sec. 3.4), with equal axes.

    Parameters
    ----------
    samples : Tensor, shape (B, 2)
        The samples.
    data : Tensor, shape (N, 2), optional
        Reference points, drawn first, in grey.
    ax : matplotlib Axes, optional
        Where to draw (default: a new figure).
    title : str, optional
        The axes' title.
    limit : float, optional
        Show $[-\text{limit}, \text{limit}]^2$ (default: fit the data, or the samples).
    max_points : int
        At most this many points of each set are drawn.

    Returns
    -------
    matplotlib Axes

    Raises
    ------
    ValueError
        If ``samples`` or ``data`` is not of shape (B, 2).
    """
    for v, name in ((samples, "samples"), (data, "data")):
        if v is not None and (not isinstance(v, Tensor) or v.dim() != 2 or v.shape[1] != 2):
            raise ValueError(f"{name} must be a (B, 2) tensor of 2-D points, got {getattr(v, 'shape', type(v))}")
    ax = _axes(ax, (4, 4))
    if data is not None:
        ax.scatter(*data[:max_points].detach().cpu().double().T.numpy(), s=2, c="0.75", label="data")
    ax.scatter(*samples[:max_points].detach().cpu().double().T.numpy(), s=2, label="samples")
    if limit is None:
        ref = data if data is not None else samples
        limit = 1.1 * float(ref.detach().abs().max())
    ax.set(xlim=(-limit, limit), ylim=(-limit, limit), aspect="equal")
    if title:
        ax.set_title(title, fontsize=9)
    return ax
