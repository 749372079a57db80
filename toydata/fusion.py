r"""Image fusion tasks with ground truth (lesson 23, sec. 23.5): K degraded views of one scene, the clean scene, and the
ideal per-pixel weights.

A fusion task hands a fusion method ``K`` sources $c_1, \dots, c_K$ of one image and keeps back what it needs to be
scored: the clean image $x^*$ and an *oracle*, per-pixel weights $w_k \ge 0$ with $\sum_k w_k = 1$ saying which source
holds the truth where, so that $\sum_k w_k c_k$ is the ideal weighted fusion. Three tasks:

- ``"multi-focus"`` (:func:`multi_focus`): each source is in focus in one region of a random partition and
  Gaussian-blurred elsewhere.
- ``"multi-exposure"`` (:func:`multi_exposure`): low-dynamic-range captures at several exposures (gamma encoding,
  sensor noise, quantisation), mapped back to radiance; the bright capture saturates, the dark one is coarse in the
  shadows.
- ``"infrared-visible"`` (:func:`infrared_visible`): a textured visible image in which warm targets barely show, and a
  blurred, flat infrared image in which they stand out.

The scenes are :func:`scenes` (procedural grayscale, with flat regions, sharp edges and fine texture, so that blur and
exposure matter) or any image data set of :mod:`toydata.images`; :func:`fusion_task` builds a task by name, and
:func:`add_noise` makes every source noisy (the noisy-source experiment). Images are in $[-1, 1]$, shape
(N, C, H, W); sources are stacked to (K, N, C, H, W) and oracles to (K, N, 1, H, W) (one weight per pixel, shared by
the channels).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from diffmath.core._validate import check_dtype, check_int, check_positive
from diffmath.fusion import gaussian_blur
from toydata.images import IMAGE_DATASETS, _uniform, image_dataset

Generator = torch.Generator | None

FUSION_TASKS = ("multi-focus", "multi-exposure", "infrared-visible")
"""The fusion tasks of :func:`fusion_task` (lesson 23, sec. 23.5)."""

SCENE_OBJECTS = 5
"""Objects drawn per scene by :func:`scenes`: the first two always, each of the others with probability 0.6."""


class FusionTask(NamedTuple):
    """An image fusion problem with its ground truth (lesson 23, sec. 23.5).

    Attributes
    ----------
    sources : Tensor, shape (K, N, C, H, W)
        The ``K`` degraded views of each of the ``N`` images, values in [-1, 1].
    target : Tensor, shape (N, C, H, W)
        The clean image $x^*$ a fusion is scored against.
    oracle : Tensor, shape (K, N, 1, H, W)
        The ideal per-pixel weights: non-negative, summing to 1 over ``K`` at every pixel, 1 on the source that holds
        the truth there (split equally between tied sources); the oracle fusion is ``(oracle * sources).sum(0)``.
    name : str
        The task, one of :data:`FUSION_TASKS`.
    """

    sources: Tensor
    target: Tensor
    oracle: Tensor
    name: str


def _check_images(x: object, min_size: int = 8) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor of images of shape (N, C, H, W), got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor of images, got dtype {x.dtype}")
    if x.dim() != 4 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"x must have shape (N, C, H, W) with N, C >= 1, got shape {tuple(x.shape)}")
    if min(x.shape[-2:]) < min_size:
        raise ValueError(f"x must be at least {min_size} x {min_size} pixels, got {tuple(x.shape[-2:])}")
    if not torch.isfinite(x).all():
        raise ValueError("x contains NaN or infinite values; expected images in [-1, 1]")
    lo, hi = x.min().item(), x.max().item()
    if lo < -1 or hi > 1:
        raise ValueError(f"x must hold images in [-1, 1], got values in [{lo:g}, {hi:g}]")
    return x


def _grid(h: int, w: int) -> tuple[Tensor, Tensor]:
    """Pixel centres, x of shape (1, 1, W) and y of shape (1, H, 1) (y pointing down), in float64."""
    return (
        (torch.arange(w, dtype=torch.float64) + 0.5)[None, None, :],
        (torch.arange(h, dtype=torch.float64) + 0.5)[None, :, None],
    )


def _ties(score: Tensor) -> Tensor:
    """Weights 1 on the smallest entry of ``score`` along axis 0, split equally between ties (within rounding)."""
    tol = 16 * torch.finfo(score.dtype).eps
    best = (score <= score.min(0, keepdim=True).values + tol).to(score.dtype)
    return best / best.sum(0, keepdim=True)


def scenes(n: int, size: int = 32, generator: Generator = None, dtype: torch.dtype | None = None) -> Tensor:
    r"""``n`` procedural grayscale scenes with flat regions, sharp edges and fine texture, for fusion tasks (lesson 23,
    sec. 23.5).

    On the $[0, 1]$ scale, the background is a smooth random field: a 3 x 3 grid of grey levels uniform in
    $[0.1, 0.9]$, interpolated bicubically to ``size`` (clipped to $[0, 1]$). Over it lie up to :data:`SCENE_OBJECTS`
    objects (two always, each further one with probability 0.6), composited in order: rotated rectangles (half sides
    $r s$ and $r / s$, $s$ uniform in $[0.6, 1.5]$), discs (radius $r$) and equilateral triangles (inradius
    $0.7 r$), with $r$ uniform in $[0.08, 0.25]\,$``size``, centre uniform in the middle 70% of the frame, grey level
    uniform in $[0, 1]$. A third of the objects are flat, a third carry a sinusoidal grating and a third a soft
    checkerboard, of period uniform in $[2.5, 6]$ pixels, random orientation and phase, and amplitude uniform in
    $[0.15, 0.35]$ (the level is clipped to $[0, 1]$). Edges are anti-aliased: coverage is
    $\mathrm{clip}(1/2 - d, 0, 1)$ for the signed distance $d$ in pixels. Fine texture is what a blur of 1.5 pixels
    destroys, and the spread of grey levels is what an exposure clips or crushes.

    Parameters
    ----------
    n : int
        Number of images.
    size : int
        Height and width in pixels, at least 8 (designed for 24 or 32).
    generator : torch.Generator, optional
        Source of randomness (a CPU generator); the same seed gives the same scenes.
    dtype : torch.dtype, optional
        Dtype of the images (default: torch's default dtype).

    Returns
    -------
    Tensor, shape (n, 1, size, size)
        The scenes, values in [-1, 1] (-1 is black).

    Raises
    ------
    ValueError
        If ``n`` is not a positive integer or ``size`` is not an integer >= 8.
    TypeError
        If ``dtype`` is not a floating dtype.
    """
    n, size = check_int(n, "n"), check_int(size, "size", 8)
    dtype = check_dtype(dtype) or torch.get_default_dtype()
    m = SCENE_OBJECTS
    coarse = _uniform((n, 1, 3, 3), generator, 0.1, 0.9)
    img = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=True).clamp(0, 1)[:, 0]

    present = torch.cat([torch.ones(n, 2, dtype=torch.float64), (_uniform((n, m - 2), generator) < 0.6).double()], 1)
    kind = torch.randint(0, 3, (n, m), generator=generator)  # rectangle, disc, triangle
    r = _uniform((n, m), generator, 0.08, 0.25) * size
    stretch = _uniform((n, m), generator, 0.6, 1.5)
    cx, cy = (_uniform((n, m), generator, 0.15, 0.85) * size for _ in range(2))
    angle = _uniform((n, m), generator, 0, 2 * math.pi)
    level = _uniform((n, m), generator)
    texture = torch.randint(0, 3, (n, m), generator=generator)  # flat, grating, checkerboard
    period = _uniform((n, m), generator, 2.5, 6.0)
    orient = _uniform((n, m), generator, 0, math.pi)
    phase = _uniform((n, m, 2), generator, 0, 2 * math.pi)
    amp = _uniform((n, m), generator, 0.15, 0.35)

    px, py = _grid(size, size)
    c30 = math.sqrt(3) / 2
    for j in range(m):  # over the few objects, each vectorised over images and pixels
        col = (slice(None), j, None, None)
        dx, dy = px - cx[col], py - cy[col]
        cos, sin = torch.cos(angle[col]), torch.sin(angle[col])
        u, v = cos * dx + sin * dy, -sin * dx + cos * dy
        rr, s, h = r[col], stretch[col], 0.7 * r[col]
        d_rect = torch.maximum(u.abs() - rr * s, v.abs() - rr / s)
        d_disc = torch.sqrt(u**2 + v**2) - rr
        d_tri = torch.maximum(torch.maximum(v - h, c30 * u - 0.5 * v - h), -c30 * u - 0.5 * v - h)
        k = kind[col]
        d = torch.where(k == 0, d_rect, torch.where(k == 1, d_disc, d_tri))
        cover = (0.5 - d).clamp(0, 1) * present[col]

        co, so = torch.cos(orient[col]), torch.sin(orient[col])
        a, b = 2 * math.pi * (co * dx + so * dy) / period[col], 2 * math.pi * (-so * dx + co * dy) / period[col]
        grating = torch.cos(a + phase[:, j, 0, None, None])
        checker = (4 * torch.sin(a + phase[:, j, 0, None, None]) * torch.sin(b + phase[:, j, 1, None, None])).clamp(
            -1, 1
        )
        t = texture[col]
        wave = torch.where(t == 1, grating, torch.where(t == 2, checker, torch.zeros_like(grating)))
        value = (level[col] + amp[col] * wave).clamp(0, 1)
        img = img * (1 - cover) + value * cover
    return (2 * img - 1).clamp(-1, 1)[:, None].to(dtype)


def _strips(n: int, k: int, h: int, w: int, generator: Generator) -> Tensor:
    """Hard masks (k, n, 1, h, w) of ``k`` parallel strips across each image, at a random orientation."""
    angle = _uniform((n, 1, 1), generator, 0, 2 * math.pi)
    px, py = _grid(h, w)
    p = torch.cos(angle) * (px - w / 2) + torch.sin(angle) * (py - h / 2)  # (n, h, w)
    lo, hi = p.amin((1, 2), keepdim=True), p.amax((1, 2), keepdim=True)
    t = (p - lo) / (hi - lo)
    cuts = (torch.arange(1, k, dtype=torch.float64) + 0.6 * (_uniform((n, k - 1), generator) - 0.5)) / k
    region = (t[None] >= cuts.T[:, :, None, None]).sum(0)  # (n, h, w), in 0..k-1
    return F.one_hot(region, k).permute(3, 0, 1, 2)[:, :, None].double()


def multi_focus(x: Tensor, generator: Generator = None, num_sources: int = 2, blur: float = 1.5) -> FusionTask:
    r"""Multi-focus fusion: ``K`` shots of each image, each in focus in one region and blurred elsewhere (lesson 23,
    sec. 23.5).

    Each image is cut into ``K`` parallel strips at a random orientation (uniform in $[0, 2\pi)$): along that
    direction, with $t \in [0, 1]$ the position across the image, strip $k$ holds $b_k \le t < b_{k+1}$, where
    $b_0 = 0$, $b_K = 1$ and $b_j = (j + 0.6 (U_j - 1/2)) / K$ for $U_j$ uniform in $[0, 1]$; for $K = 2$ this is a
    random straight boundary through the middle 30% of the image. With $M_k$ the hard mask of strip $k$, source $k$ is

    $$c_k = M_k\, x + (1 - M_k)\, \mathrm{blur}(x),$$

    the Gaussian blur of standard deviation ``blur`` pixels (reflect padding, kernel truncated at 3 sd), applied per
    channel, with masks shared across channels. The oracle is $w_k = M_k$, so the oracle fusion $\sum_k M_k c_k$
    recovers $x$ exactly; the target is $x$.

    Parameters
    ----------
    x : Tensor, shape (N, C, H, W)
        Clean images in [-1, 1], at least 8 x 8 pixels.
    generator : torch.Generator, optional
        Source of the partitions (a CPU generator).
    num_sources : int
        ``K``, at least 2.
    blur : float
        Standard deviation of the defocus blur, in pixels (> 0).

    Returns
    -------
    FusionTask
        Sources (K, N, C, H, W), target ``x``, oracle ``M_k`` (K, N, 1, H, W), name ``"multi-focus"``.

    Raises
    ------
    TypeError
        If ``x`` is not a floating tensor.
    ValueError
        If ``x`` is not (N, C, H, W) images in [-1, 1] of at least 8 x 8 pixels, ``num_sources`` is not an integer
        >= 2, or ``blur`` is not positive.
    """
    x = _check_images(x)
    k, blur = check_int(num_sources, "num_sources", 2), check_positive(blur, "blur")
    n, _, h, w = x.shape
    masks = _strips(n, k, h, w, generator).to(x)
    sources = masks * x + (1 - masks) * gaussian_blur(x, blur)
    return FusionTask(sources, x.clone(), masks, "multi-focus")


def multi_exposure(
    x: Tensor,
    generator: Generator = None,
    num_sources: int = 2,
    gamma: float = 2.2,
    bits: int = 8,
    noise: float = 0.01,
    stops: Sequence[float] | None = None,
) -> FusionTask:
    r"""Multi-exposure fusion: ``K`` low-dynamic-range captures of each scene, mapped back to radiance (lesson 23,
    sec. 23.5).

    With $u = (x + 1) / 2 \in [0, 1]$ the radiance and $e_k = 2^{s_k}$ the exposure of stop $s_k$ (default: ``K``
    stops spread evenly over $[-1, 1]$ EV, i.e. $\pm 1$ for $K = 2$), the camera records the gamma-encoded, noisy,
    quantised value

    $$v_k = Q_b\big(\mathrm{clip}(\mathrm{clip}(e_k u, 0, 1)^{1/\gamma} + \sigma \varepsilon_k, 0, 1)\big),
    \qquad Q_b(v) = \mathrm{round}\big((2^b - 1) v\big) / (2^b - 1),$$

    with $\varepsilon_k$ standard Gaussian noise (``noise`` $= \sigma$, added before quantisation), and the source is
    the exposure-compensated radiance $u_k = v_k^\gamma / e_k$, returned as $\mathrm{clip}(2 u_k - 1, -1, 1)$, so that
    the truth is reachable. An under-exposed capture ($e_k < 1$) is accurate in the brights and coarse and noisy in
    the darks: the compensation $1/e_k$ amplifies its noise and quantisation steps, by a factor
    $(e_j / e_k)^{1/\gamma}$ over a capture of exposure $e_j > e_k$ at the same radiance (where neither saturates).
    An over-exposed capture ($e_k > 1$) saturates wherever $u > 1/e_k$ (its radiance is stuck at $1/e_k$) and is
    fine in the darks. Colour images are captured per channel.

    The oracle puts weight 1, per pixel, on the source of smallest absolute error $|c_k - x|$ (averaged over the
    channels, then smoothed by a Gaussian of 1 pixel so that the choice follows regions rather than single noisy
    pixels), split equally between ties; the target is $x$.

    Parameters
    ----------
    x : Tensor, shape (N, C, H, W)
        Clean images (the radiance) in [-1, 1], at least 8 x 8 pixels.
    generator : torch.Generator, optional
        Source of the sensor noise (a CPU generator).
    num_sources : int
        ``K``, at least 2.
    gamma : float
        The encoding gamma (> 0).
    bits : int
        Bit depth $b$ of the capture, 1..16.
    noise : float
        Standard deviation $\sigma$ of the sensor noise in the encoded values $v$ (>= 0).
    stops : sequence of float, optional
        The ``K`` exposures in stops (EV); default ``K`` values evenly spaced in $[-1, 1]$.

    Returns
    -------
    FusionTask
        Sources (K, N, C, H, W), target ``x``, oracle (K, N, 1, H, W), name ``"multi-exposure"``.

    Raises
    ------
    TypeError
        If ``x`` is not a floating tensor.
    ValueError
        If ``x`` is not (N, C, H, W) images in [-1, 1] of at least 8 x 8 pixels, ``num_sources`` is not an integer
        >= 2, ``gamma`` is not positive, ``bits`` is not an integer in 1..16, ``noise`` is negative, or ``stops`` is
        not ``num_sources`` finite numbers.
    """
    x = _check_images(x)
    k = check_int(num_sources, "num_sources", 2)
    gamma, noise = check_positive(gamma, "gamma"), check_positive(noise, "noise", allow_zero=True)
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16:
        raise ValueError(f"bits must be an integer in 1..16, got {bits!r}")
    if stops is None:
        stops = torch.linspace(-1, 1, k, dtype=torch.float64)
    else:
        wanted = f"stops must be a sequence of num_sources = {k} finite numbers (EV), got {stops!r}"
        if isinstance(stops, (str, bytes)) or not isinstance(stops, (Sequence, Tensor)):
            raise ValueError(wanted)
        try:
            stops = torch.as_tensor(stops, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(wanted) from err
        if stops.shape != (k,) or not torch.isfinite(stops).all():
            raise ValueError(wanted)
    e = (2.0 ** stops.double()).to(x).view(k, 1, 1, 1, 1)
    u = (x + 1) / 2
    s = (e * u).clamp(0, 1) ** (1 / gamma)
    if noise > 0:
        s = s + noise * torch.randn((k, *x.shape), generator=generator, dtype=torch.float64).to(x)
    levels = 2**bits - 1
    v = torch.round(s.clamp(0, 1) * levels) / levels
    sources = (2 * v**gamma / e - 1).clamp(-1, 1)
    err = gaussian_blur((sources - x).abs().mean(2, keepdim=True), 1.0)
    return FusionTask(sources, x.clone(), _ties(err), "multi-exposure")


def infrared_visible(
    x: Tensor, generator: Generator = None, num_targets: int = 2, blur: float = 2.0, contrast: float = 0.3
) -> FusionTask:
    r"""Infrared-visible fusion: warm targets that the visible image hides and the infrared image shows (lesson 23,
    sec. 23.5).

    ``num_targets`` warm targets are drawn per image: discs of radius uniform in $[2, 5]$ pixels, centred uniformly
    where they fit in the frame, with anti-aliased coverage $a_j = \mathrm{clip}(1/2 - d_j, 0, 1)$ and brightness
    $t_j$ uniform in $[0.8, 1]$ (on the $[-1, 1]$ scale), composited in order over a base image $y$:
    $T(y) = (\cdots(y (1 - a_1) + t_1 a_1) \cdots)(1 - a_J) + t_J a_J$. With total coverage
    $A = 1 - \prod_j (1 - a_j)$:

    - the ground truth is the scene with its targets, $x^* = T(x)$;
    - the visible source $c_{vis} = x + \kappa (x^* - x)$ keeps the full texture but shows the targets at a fraction
      $\kappa$ = ``contrast`` of their true difference from the scene (nearly invisible);
    - the infrared source $c_{ir} = T(b)$ lays the targets, sharp and bright, over a flat background
      $b = \bar x + \tfrac12 (\mathrm{blur}(x) - \bar x)$: the scene blurred (Gaussian of ``blur`` pixels, reflect
      padding) at half its contrast about its mean $\bar x$ (per image and channel).

    Sources are ``(infrared, visible)``, in that order. The oracle is 1 on the infrared source inside the targets
    ($A > 1/2$), 1 on the visible one outside ($A < 1/2$), one half each where $A = 1/2$; the target is $x^*$.

    Parameters
    ----------
    x : Tensor, shape (N, C, H, W)
        Scenes in [-1, 1], at least 12 x 12 pixels.
    generator : torch.Generator, optional
        Source of the targets (a CPU generator).
    num_targets : int
        Targets per image, at least 1.
    blur : float
        Standard deviation of the infrared blur, in pixels (> 0).
    contrast : float
        $\kappa \in [0, 1]$: the targets' contrast in the visible source, relative to the truth.

    Returns
    -------
    FusionTask
        Sources (2, N, C, H, W), target $x^*$, oracle (2, N, 1, H, W), name ``"infrared-visible"``.

    Raises
    ------
    TypeError
        If ``x`` is not a floating tensor.
    ValueError
        If ``x`` is not (N, C, H, W) images in [-1, 1] of at least 12 x 12 pixels, ``num_targets`` is not a positive
        integer, ``blur`` is not positive or ``contrast`` is not in [0, 1].
    """
    x = _check_images(x, min_size=12)
    m, blur = check_int(num_targets, "num_targets"), check_positive(blur, "blur")
    contrast = check_positive(contrast, "contrast", allow_zero=True)
    if contrast > 1:
        raise ValueError(f"contrast must lie in [0, 1], got {contrast!r}")
    n, _, h, w = x.shape
    r = _uniform((n, m), generator, 2.0, 5.0)
    cx = r + (w - 2 * r) * _uniform((n, m), generator)
    cy = r + (h - 2 * r) * _uniform((n, m), generator)
    level = _uniform((n, m), generator, 0.8, 1.0)
    px, py = _grid(h, w)
    paint = torch.zeros(n, h, w, dtype=torch.float64)  # T(y) = y * keep + paint
    keep = torch.ones(n, h, w, dtype=torch.float64)
    for j in range(m):  # over the few targets, each vectorised over images and pixels
        col = (slice(None), j, None, None)
        a = (0.5 - (torch.sqrt((px - cx[col]) ** 2 + (py - cy[col]) ** 2) - r[col])).clamp(0, 1)
        paint, keep = paint * (1 - a) + level[col] * a, keep * (1 - a)
    paint, keep = paint[:, None].to(x), keep[:, None].to(x)
    truth = x * keep + paint
    visible = x + contrast * (truth - x)
    mean = x.mean((2, 3), keepdim=True)
    infrared = (mean + 0.5 * (gaussian_blur(x, blur) - mean)) * keep + paint
    cover = 1 - keep
    w_ir = (cover > 0.5).to(x) + 0.5 * (cover == 0.5).to(x)
    oracle = torch.stack([w_ir, 1 - w_ir])
    return FusionTask(torch.stack([infrared, visible]).clamp(-1, 1), truth, oracle, "infrared-visible")


def add_noise(task: FusionTask, sd: float, generator: Generator = None) -> FusionTask:
    """The same fusion task with Gaussian noise on every source, for the noisy-source experiment (lesson 23,
    sec. 23.5).

    Each source pixel gets independent noise of standard deviation ``sd`` and is clipped to [-1, 1]; the target and
    the oracle are unchanged. ``sd = 0`` returns ``task`` itself (and draws nothing).

    Parameters
    ----------
    task : FusionTask
        The task whose sources to corrupt.
    sd : float
        Standard deviation of the noise, on the [-1, 1] scale (>= 0).
    generator : torch.Generator, optional
        Source of the noise (a CPU generator).

    Returns
    -------
    FusionTask
        ``task`` with noisy sources.

    Raises
    ------
    TypeError
        If ``task`` is not a :class:`FusionTask`.
    ValueError
        If ``sd`` is negative or not finite.
    """
    if not isinstance(task, FusionTask):
        raise TypeError(
            f"task must be a FusionTask (from fusion_task() or multi_focus(), ...), got {type(task).__name__}"
        )
    sd = check_positive(sd, "sd", allow_zero=True)
    if sd == 0:
        return task
    src = task.sources
    eps = torch.randn(src.shape, generator=generator, dtype=torch.float64).to(src)
    return task._replace(sources=(src + sd * eps).clamp(-1, 1))


_TASKS = {"multi-focus": multi_focus, "multi-exposure": multi_exposure, "infrared-visible": infrared_visible}


def fusion_task(
    name: str,
    n: int,
    size: int = 32,
    generator: Generator = None,
    data: str = "scenes",
    noise: float = 0.0,
    dtype: torch.dtype | None = None,
    **kwargs: object,
) -> FusionTask:
    """The named fusion task on ``n`` images of ``size`` pixels (lesson 23, sec. 23.5).

    Draws the images (``data``), then the task's degradations, then the source noise (:func:`add_noise`), all from
    ``generator`` in that order, so the same seed gives the same task. Colour data sets keep their three channels:
    the degradations apply per channel and the oracle is shared by the channels.

    Parameters
    ----------
    name : {"multi-focus", "multi-exposure", "infrared-visible"}
        The task (:data:`FUSION_TASKS`).
    n : int
        Number of images.
    size : int
        Height and width in pixels (at least 12 for ``"infrared-visible"``, and what the data set allows).
    generator : torch.Generator, optional
        Source of randomness (a CPU generator).
    data : str
        ``"scenes"`` (:func:`scenes`) or an image data set of :data:`toydata.images.IMAGE_DATASETS`, e.g.
        ``"attribute-shapes"``, ``"shapes"``, ``"digits"``.
    noise : float
        Standard deviation of the Gaussian noise added to every source by :func:`add_noise` (>= 0). Multi-exposure's
        own sensor noise keeps its default here; call :func:`multi_exposure` to change it.
    dtype : torch.dtype, optional
        Dtype of the images (default: torch's default dtype).
    **kwargs : object
        Further arguments of the task: ``num_sources`` and ``blur`` of :func:`multi_focus`; ``num_sources``,
        ``gamma``, ``bits`` and ``stops`` of :func:`multi_exposure`; ``num_targets``, ``blur`` and ``contrast`` of
        :func:`infrared_visible`.

    Returns
    -------
    FusionTask
        The sources, target, oracle and name.

    Raises
    ------
    ValueError
        If ``name`` or ``data`` is unknown, ``noise`` is negative, or the data set or task rejects its arguments.
    TypeError
        If ``dtype`` is not a floating dtype, or ``kwargs`` holds an argument the task does not take.
    """
    if not isinstance(name, str) or name not in FUSION_TASKS:
        raise ValueError(f"unknown fusion task {name!r}: name must be one of {FUSION_TASKS}")
    noise = check_positive(noise, "noise", allow_zero=True)
    if data == "scenes":
        x = scenes(n, size, generator, dtype)
    elif isinstance(data, str) and data in IMAGE_DATASETS:
        x = image_dataset(data, n, size, generator, dtype=dtype).images
    else:
        raise ValueError(f"data must be 'scenes' or an image data set of {tuple(IMAGE_DATASETS)}, got {data!r}")
    return add_noise(_TASKS[name](x, generator, **kwargs), noise, generator)
