r"""Small labelled image data sets, generated or bundled (lesson 20, sec. 20.1); nothing is downloaded.

Three sources, each returned as an :class:`ImageBatch` of images in $[-1, 1]$, shape (N, C, H, W), with integer
labels for every attribute listed in :data:`ATTRIBUTES`:

- ``"shapes"``: coloured circles, squares and triangles on a dark background, drawn from signed distances with one
  pixel of anti-aliasing; shape, colour, size and stripes are labels, the position is jittered. An option correlates
  two attributes in the training set (e.g. 90% of triangles red), so that rare combinations can be asked for later.
- ``"digits"``: scikit-learn's bundled 8x8 handwritten digits (1797 images), optionally upsampled.
- ``"glyphs"``: letters rendered from the fonts that matplotlib ships, at random size, rotation and offset.
"""

from __future__ import annotations

import functools
import math
import os
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from diffmath.core._validate import check_dtype

Generator = torch.Generator | None


class ImageBatch(NamedTuple):
    """A batch of labelled images (lesson 20, sec. 20.1).

    Attributes
    ----------
    images : Tensor, shape (N, C, H, W)
        Floating images with values in [-1, 1] (-1 is black).
    labels : dict of str to Tensor
        Attribute name -> int64 tensor of shape (N,), indexing the class names in :data:`ATTRIBUTES`.
    """

    images: Tensor
    labels: dict[str, Tensor]


GLYPH_FONTS: dict[str, str] = {
    "DejaVu Sans": "DejaVuSans.ttf",
    "DejaVu Serif": "DejaVuSerif.ttf",
    "DejaVu Sans Mono": "DejaVuSansMono.ttf",
    "STIXGeneral Italic": "STIXGeneralItalic.ttf",
}
"""Fonts of :func:`glyphs`: display name -> file in matplotlib's ``mpl-data/fonts/ttf`` folder."""

ATTRIBUTES: dict[str, dict[str, tuple[str, ...]]] = {
    "shapes": {
        "shape": ("circle", "square", "triangle"),
        "colour": ("red", "green", "blue"),
        "size": ("small", "large"),
        "stripes": ("plain", "striped"),
    },
    "attribute-shapes": {
        "shape": ("circle", "square", "triangle"),
        "colour": ("red", "green", "blue"),
        "size": ("small", "large"),
        "quadrant": ("top-left", "top-right", "bottom-left", "bottom-right"),
        "texture": ("plain", "striped"),
        "background": ("dark", "light"),
    },
    "digits": {"digit": tuple("0123456789")},
    "glyphs": {"char": tuple("ABCDEFGHIJ"), "font": tuple(GLYPH_FONTS)},
}
"""Each data set's attributes and their class names; label ``k`` of an attribute means its ``k``-th name. For
:func:`glyphs` called with other ``chars``, the ``"char"`` label indexes those ``chars`` instead."""

TEST_SEED = 1_000_000_007
"""Generated data sets hold out their test sets by seed: :func:`held_out` draws from seeds ``TEST_SEED + k``; training
and any other draw use seeds below ``TEST_SEED``."""

DIGITS_TEST_START = 1438
"""Split of :func:`digits`: after a fixed shuffle (seed 0), images ``[0, 1438)`` train and ``[1438, 1797)`` test."""


def _check_int(value: object, name: str, low: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def _out(x: Tensor, dtype: torch.dtype | None) -> Tensor:
    return x.to(check_dtype(dtype) or torch.get_default_dtype())


def _uniform(shape: int | tuple[int, ...], generator: Generator, low: float = 0.0, high: float = 1.0) -> Tensor:
    """Uniform draws in float64 on the CPU, so that a seed gives the same data in every dtype and on every device."""
    return low + (high - low) * torch.rand(shape, generator=generator, dtype=torch.float64)


def _correlated(labels: dict[str, Tensor], correlate: dict, names: dict[str, tuple[str, ...]], generator) -> None:
    """Redraw ``correlate``'s second attribute where the first takes its value (in place)."""
    if not isinstance(correlate, dict):
        raise ValueError("correlate must be a dict like {'shape': 'triangle', 'colour': 'red', 'p': 0.9}")
    keys = [k for k in correlate if k != "p"]
    if "p" not in correlate or len(keys) != 2:
        raise ValueError(f"correlate must name two attributes and 'p', got keys {sorted(correlate)}")
    p = correlate["p"]
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
        raise ValueError(f"correlate['p'] must be a probability in [0, 1], got {p!r}")
    idx = {}
    for key in keys:
        if key not in names:
            raise ValueError(f"correlate names unknown attribute {key!r}; expected some of {tuple(names)}")
        if correlate[key] not in names[key]:
            raise ValueError(f"correlate[{key!r}] must be one of {names[key]}, got {correlate[key]!r}")
        idx[key] = names[key].index(correlate[key])
    (a, va), (b, vb) = idx.items()
    k = len(names[b])
    if k < 2:
        raise ValueError(f"attribute {b!r} has a single value here; nothing to correlate")
    n = labels[a].shape[0]
    hit = torch.rand(n, generator=generator, dtype=torch.float64) < p
    other = torch.randint(0, k - 1, (n,), generator=generator)
    other = other + (other >= vb).long()  # uniform over the k - 1 values other than vb
    labels[b] = torch.where(labels[a] == va, torch.where(hit, vb, other), labels[b])


def _extent(shape: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
    """Half width and half height of equal-area shapes: a circle of radius r, a square of half side s, a triangle
    (pointing up) of inradius h."""
    s, h = r * math.sqrt(math.pi) / 2, r * math.sqrt(math.pi / (3 * math.sqrt(3)))
    half_w = torch.stack([r, s, math.sqrt(3) * h], 1).gather(1, shape[:, None])[:, 0]
    half_h = torch.stack([r, s, 1.5 * h], 1).gather(1, shape[:, None])[:, 0]
    return half_w, half_h


def _coverage(shape: Tensor, r: Tensor, cx: Tensor, cy: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Anti-aliased coverage clip(1/2 - d, 0, 1) of each shape (signed distance d in pixels), shape (n, size, size),
    and the pixel offsets x (n, 1, W), y (n, H, 1) from the centre."""
    s, h = r * math.sqrt(math.pi) / 2, r * math.sqrt(math.pi / (3 * math.sqrt(3)))
    pix = torch.arange(size, dtype=torch.float64) + 0.5
    x = pix[None, None, :] - cx[:, None, None]  # (n, 1, W)
    y = pix[None, :, None] - cy[:, None, None]  # (n, H, 1), pointing down
    rr, ss, hh = r[:, None, None], s[:, None, None], h[:, None, None]
    d_circle = torch.sqrt(x**2 + y**2) - rr
    d_square = torch.maximum(x.abs(), y.abs()) - ss
    yc = y - hh / 2  # the triangle's centroid sits h/2 below the centre of its bounding box
    c30 = math.sqrt(3) / 2
    d_tri = torch.maximum(torch.maximum(yc - hh, c30 * x - 0.5 * yc - hh), -c30 * x - 0.5 * yc - hh)
    d = torch.where(shape[:, None, None] == 0, d_circle, torch.where(shape[:, None, None] == 1, d_square, d_tri))
    return (0.5 - d).clamp(0, 1), x, y


def _stripes(cover: Tensor, striped: Tensor, x: Tensor, y: Tensor, size: int, generator: Generator) -> Tensor:
    """Dim striped shapes by diagonal sinusoidal stripes of period size/5 (down to 30% of their colour)."""
    phase = 2 * math.pi * _uniform(cover.shape[0], generator)[:, None, None]
    wave = torch.cos(2 * math.pi * (x + y) / (size / 5) + phase)
    return cover * torch.where(striped[:, None, None] == 1, 0.65 + 0.35 * wave, torch.ones_like(wave))


def shapes(
    n: int,
    size: int = 16,
    generator: Generator = None,
    correlate: dict | None = None,
    stripes: bool = True,
    dtype: torch.dtype | None = None,
) -> ImageBatch:
    r"""``n`` coloured shapes on a black background, with their attributes as labels (lesson 20, sec. 20.1).

    Each image holds one circle, square or triangle (pointing up) of area close to $\pi r^2$, with $r$ uniform in
    $[0.15, 0.2]\,$``size`` (small) or $[0.28, 0.33]\,$``size`` (large), so every large shape covers at least twice the
    area of every small one. Its colour has one dominant channel (red, green or blue) in $[0.75, 1]$ and the other two
    in $[0, 0.2]$ (on the $[0, 1]$ scale); a striped shape is dimmed by diagonal sinusoidal stripes of period
    ``size``/5 (down to 30% of its colour). The centre is uniform over the positions that keep the shape inside
    the frame. Edges are anti-aliased: coverage is $\mathrm{clip}(1/2 - d, 0, 1)$ for the signed distance $d$ in
    pixels. Attributes are drawn uniformly and independently, unless ``correlate`` ties two of them.

    Parameters
    ----------
    n : int
        Number of images.
    size : int
        Height and width in pixels, at least 12 (designed for 16, 24 or 32).
    generator : torch.Generator, optional
        Source of randomness; the same seed gives the same images.
    correlate : dict, optional
        Two attributes and a probability, e.g. ``{"shape": "triangle", "colour": "red", "p": 0.9}``: a fraction
        ``p`` of the triangles is red, the rest spread evenly over the other colours (other shapes keep uniform
        colours).
    stripes : bool
        Allow striped shapes (half of them); if ``False`` every label ``"stripes"`` is 0 (plain).
    dtype : torch.dtype, optional
        Dtype of the images (default: torch's default dtype).

    Returns
    -------
    ImageBatch
        ``images`` of shape (n, 3, size, size) in [-1, 1]; ``labels`` ``"shape"``, ``"colour"``, ``"size"``,
        ``"stripes"`` (indices into ``ATTRIBUTES["shapes"]``).

    Raises
    ------
    ValueError
        If ``n`` is not a positive integer, ``size`` is not an integer >= 12, or ``correlate`` is malformed (not two
        known attributes with known values and a ``p`` in [0, 1], or stripes asked for with ``stripes=False``).
    TypeError
        If ``dtype`` is not a floating dtype.
    """
    n, size = _check_int(n, "n", 1), _check_int(size, "size", 12)
    check_dtype(dtype)
    names = dict(ATTRIBUTES["shapes"])
    if not stripes:
        names["stripes"] = ("plain",)
    labels = {a: torch.randint(0, len(v), (n,), generator=generator) for a, v in names.items()}
    if correlate is not None:
        _correlated(labels, correlate, names, generator)
    shape, colour, large, striped = (labels[a] for a in ("shape", "colour", "size", "stripes"))

    r = torch.where(large == 1, _uniform(n, generator, 0.28, 0.33), _uniform(n, generator, 0.15, 0.2)) * size
    half_w, half_h = _extent(shape, r)
    cx = half_w + 0.5 + (size - 1 - 2 * half_w) * _uniform(n, generator)
    cy = half_h + 0.5 + (size - 1 - 2 * half_h) * _uniform(n, generator)
    cover, x, y = _coverage(shape, r, cx, cy, size)

    if stripes:
        cover = _stripes(cover, striped, x, y, size, generator)
    rgb = _uniform(3 * n, generator, 0.0, 0.2).reshape(n, 3)
    rgb[torch.arange(n), colour] = _uniform(n, generator, 0.75, 1.0)
    images = rgb[:, :, None, None] * cover[:, None]
    return ImageBatch(_out(2 * images - 1, dtype), labels)


@functools.cache
def _digits_all() -> tuple[Tensor, Tensor, Tensor]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - a dependency of the package
        raise ImportError("digits() needs scikit-learn (pip install scikit-learn)") from err
    d = load_digits()
    images, target = torch.as_tensor(d.images, dtype=torch.float64) / 16.0, torch.as_tensor(d.target)
    order = torch.randperm(target.shape[0], generator=torch.Generator().manual_seed(0))
    return images, target.long(), order


def digits(
    n: int | None = None,
    size: int = 8,
    generator: Generator = None,
    dtype: torch.dtype | None = None,
    split: str = "all",
) -> ImageBatch:
    """scikit-learn's bundled 8x8 handwritten digits as images in [-1, 1] (lesson 20, sec. 20.1).

    The 1797 images (grey levels 0..16, mapped linearly to [-1, 1], ink bright) come from the copy installed with
    scikit-learn; nothing is downloaded. ``split`` keeps a fixed held-out fifth for judging classifiers (a shuffle
    with seed 0, cut at :data:`DIGITS_TEST_START`).

    Parameters
    ----------
    n : int, optional
        ``None``: every image of the split, in the stored order. Otherwise a random subset of ``n`` distinct images
        drawn with ``generator``.
    size : int
        8 (native) or larger (bilinear upsampling, e.g. 16).
    generator : torch.Generator, optional
        Source of the random subset.
    dtype : torch.dtype, optional
        Dtype of the images (default: torch's default dtype).
    split : {"all", "train", "test"}
        All 1797 images (stored order), or the 1438 training or 359 test images of the fixed shuffle.

    Returns
    -------
    ImageBatch
        ``images`` of shape (N, 1, size, size); ``labels`` ``{"digit": int64 (N,)}``.

    Raises
    ------
    ValueError
        If ``n`` is not ``None`` or an integer in [1, size of the split], ``size`` is not an integer >= 8, or
        ``split`` is unknown.
    TypeError
        If ``dtype`` is not a floating dtype.
    ImportError
        If scikit-learn is not installed.
    """
    size = _check_int(size, "size", 8)
    check_dtype(dtype)
    splits = {"all": slice(None), "train": slice(0, DIGITS_TEST_START), "test": slice(DIGITS_TEST_START, None)}
    if not isinstance(split, str) or split not in splits:
        raise ValueError(f"split must be one of {tuple(splits)}, got {split!r}")
    images, target, order = _digits_all()
    if split != "all":
        images, target = images[order[splits[split]]], target[order[splits[split]]]
    if n is not None:
        _check_int(n, "n", 1)
        if n > images.shape[0]:
            raise ValueError(f"n must be at most {images.shape[0]} (the images of split {split!r}), got {n}")
        idx = torch.randperm(images.shape[0], generator=generator)[:n]
        images, target = images[idx], target[idx]
    images = images[:, None]
    if size != 8:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    return ImageBatch(_out(2 * images - 1, dtype), {"digit": target.clone()})


_GLYPH_CANVAS, _GLYPH_EM = 128, 64  # cached masks: the glyph's ink box centred on a 128-pixel canvas, 64-pixel em


@functools.cache
def _glyph_mask(char: str, font: str) -> Tensor:
    """The anti-aliased mask of ``char`` in ``font`` (canvas 128 x 128, em 64 pixels), rendered once by FreeType."""
    import matplotlib
    import numpy as np
    from matplotlib.ft2font import FT2Font

    face = FT2Font(os.path.join(matplotlib.get_data_path(), "fonts", "ttf", GLYPH_FONTS[font]))
    if face.get_char_index(ord(char)) == 0:
        raise ValueError(f"chars holds {char!r}: font {font!r} has no glyph for it")
    face.set_size(_GLYPH_EM, 72)
    face.set_text(char, 0.0)
    face.draw_glyphs_to_bitmap(antialiased=True)
    ink = torch.as_tensor(np.asarray(face.get_image(), dtype=np.float64) / 255.0)
    canvas = torch.zeros(_GLYPH_CANVAS, _GLYPH_CANVAS, dtype=torch.float64)
    h, w = ink.shape
    top, left = (_GLYPH_CANVAS - h) // 2, (_GLYPH_CANVAS - w) // 2
    canvas[top : top + h, left : left + w] = ink
    return canvas


def glyphs(
    n: int,
    size: int = 16,
    generator: Generator = None,
    chars: str = "ABCDEFGHIJ",
    dtype: torch.dtype | None = None,
) -> ImageBatch:
    r"""``n`` characters rendered from matplotlib's bundled fonts, randomly scaled, rotated and shifted (lesson 20,
    sec. 20.1).

    Character and font are uniform over ``chars`` and :data:`GLYPH_FONTS`. Each (character, font) pair is rendered
    once by FreeType into a cached high-resolution mask; each image then warps its mask (em size uniform in
    $[0.7, 0.95]\,$``size``, rotation uniform in $\pm 20°$, shift uniform in $\pm 0.1\,$``size``) by bilinear
    resampling at twice the resolution, averaged down to ``size`` (anti-aliasing). Ink is bright on black.

    Parameters
    ----------
    n : int
        Number of images.
    size : int
        Height and width in pixels, at least 8.
    generator : torch.Generator, optional
        Source of randomness; the same seed gives the same images.
    chars : str
        The characters to draw, distinct (default the ten letters ``A``..``J``).
    dtype : torch.dtype, optional
        Dtype of the images (default: torch's default dtype).

    Returns
    -------
    ImageBatch
        ``images`` of shape (n, 1, size, size) in [-1, 1]; ``labels`` ``"char"`` (index into ``chars``) and
        ``"font"`` (index into ``ATTRIBUTES["glyphs"]["font"]``).

    Raises
    ------
    ValueError
        If ``n`` is not a positive integer, ``size`` is not an integer >= 8, or ``chars`` is not a non-empty string
        of distinct characters that every font can draw.
    TypeError
        If ``dtype`` is not a floating dtype.
    """
    n, size = _check_int(n, "n", 1), _check_int(size, "size", 8)
    check_dtype(dtype)
    if not isinstance(chars, str) or not chars or len(set(chars)) != len(chars) or chars.isspace():
        raise ValueError(f"chars must be a non-empty string of distinct characters, got {chars!r}")
    fonts = tuple(GLYPH_FONTS)
    masks = torch.stack(
        [torch.stack([_glyph_mask(c, f) for f in fonts]) for c in chars]
    ).float()  # (chars, fonts, 128, 128)
    char = torch.randint(0, len(chars), (n,), generator=generator)
    font = torch.randint(0, len(fonts), (n,), generator=generator)
    em = _uniform(n, generator, 0.7, 0.95) * size
    angle = _uniform(n, generator, -math.pi / 9, math.pi / 9)
    shift = _uniform(2 * n, generator, -0.1, 0.1).reshape(n, 2) * 2  # in normalised [-1, 1] units
    # output coords (normalised) -> canvas coords: rotate, then zoom by canvas/em * em/size
    zoom = (_GLYPH_EM / _GLYPH_CANVAS) * size / em
    cos, sin = torch.cos(angle) * zoom, torch.sin(angle) * zoom
    theta = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)  # (n, 2, 2)
    theta = torch.cat([theta, -(theta @ shift[:, :, None])], 2)
    masks = F.interpolate(masks, size=(4 * size, 4 * size), mode="area")  # em = 2 size: close to the sampling rate
    images = torch.empty(n, 1, size, size, dtype=torch.float32)
    for i in range(0, n, 1024):  # in chunks: the gathered masks are large
        j = slice(i, i + 1024)
        grid = F.affine_grid(theta[j].float(), [theta[j].shape[0], 1, 2 * size, 2 * size], align_corners=False)
        warped = F.grid_sample(masks[char[j], font[j]][:, None], grid, padding_mode="zeros", align_corners=False)
        images[j] = F.avg_pool2d(warped, 2).clamp(0, 1)
    return ImageBatch(_out(2 * images - 1, dtype), {"char": char, "font": font})


def attribute_shapes(
    n: int,
    size: int = 32,
    generator: Generator = None,
    correlate: dict | list[dict] | None = None,
    dtype: torch.dtype | None = None,
) -> ImageBatch:
    r"""``n`` shapes with six independent, known attributes, for multi-attribute guidance (lesson 20, sec. 20.1).

    The attributes and their values are in ``ATTRIBUTES["attribute-shapes"]``: the shape (circle, square, triangle of
    equal area, drawn as in :func:`shapes`), its colour (one dominant channel in $[0.75, 1]$, the others in
    $[0, 0.2]$), its size ($r$ uniform in $[0.09, 0.12]\,$``size`` or $[0.17, 0.21]\,$``size``: every large shape
    covers at least twice the area of every small one), the quadrant its centre lies in (the centre is uniform over
    the positions that keep the shape in the frame and at least ``size``/16 pixels from the quadrant's inner edges),
    its texture (plain, or diagonal stripes as in :func:`shapes`) and the background (a grey level in $[0, 0.1]$,
    dark, or in $[0.5, 0.6]$, light). The shape is composited over the background with its anti-aliased coverage.
    All six are drawn uniformly and independently unless ``correlate`` ties some pairs.

    Parameters
    ----------
    n : int
        Number of images.
    size : int
        Height and width in pixels, at least 16 (designed for 24 or 32).
    generator : torch.Generator, optional
        Source of randomness; the same seed gives the same images. Seeds from :data:`TEST_SEED` up are held out for
        :func:`held_out`.
    correlate : dict or list of dict, optional
        One or several ties of two attributes, each as in :func:`shapes`, e.g.
        ``{"shape": "triangle", "colour": "red", "p": 0.02}`` makes red triangles rare (2% of triangles red, the
        rest spread evenly over the other colours), applied in order.
    dtype : torch.dtype, optional
        Dtype of the images (default: torch's default dtype).

    Returns
    -------
    ImageBatch
        ``images`` of shape (n, 3, size, size) in [-1, 1]; ``labels`` for the six attributes (indices into
        ``ATTRIBUTES["attribute-shapes"]``).

    Raises
    ------
    ValueError
        If ``n`` is not a positive integer, ``size`` is not an integer >= 16, or a ``correlate`` entry is malformed.
    """
    n, size = _check_int(n, "n", 1), _check_int(size, "size", 16)
    check_dtype(dtype)
    names = ATTRIBUTES["attribute-shapes"]
    labels = {a: torch.randint(0, len(v), (n,), generator=generator) for a, v in names.items()}
    ties = [] if correlate is None else [correlate] if isinstance(correlate, dict) else correlate
    if not isinstance(ties, (list, tuple)):
        raise ValueError(f"correlate must be a dict or a list of dicts, got {type(correlate).__name__}")
    for tie in ties:
        _correlated(labels, tie, names, generator)
    shape, colour, large, quadrant, striped, light = (labels[a] for a in names)

    r = torch.where(large == 1, _uniform(n, generator, 0.17, 0.21), _uniform(n, generator, 0.09, 0.12)) * size
    half_w, half_h = _extent(shape, r)
    gap, mid = size / 16, size / 2
    centre = []
    for half, upper in ((half_w, quadrant % 2 == 1), (half_h, quadrant >= 2)):  # right half / bottom half
        lo = torch.where(upper, mid + gap, half + 0.5)
        hi = torch.where(upper, size - 0.5 - half, mid - gap)
        centre.append(lo + (hi - lo) * _uniform(n, generator))
    cover, x, y = _coverage(shape, r, *centre, size)
    cover = _stripes(cover, striped, x, y, size, generator)
    rgb = _uniform(3 * n, generator, 0.0, 0.2).reshape(n, 3)
    rgb[torch.arange(n), colour] = _uniform(n, generator, 0.75, 1.0)
    grey = torch.where(light == 1, _uniform(n, generator, 0.5, 0.6), _uniform(n, generator, 0.0, 0.1))
    images = grey[:, None, None, None] * (1 - cover[:, None]) + rgb[:, :, None, None] * cover[:, None]
    return ImageBatch(_out(2 * images - 1, dtype), labels)


def held_out(name: str, n: int, size: int, index: int = 0, **kwargs: object) -> ImageBatch:
    """The ``index``-th held-out test set of a generated data set: ``n`` images from seed ``TEST_SEED + index``
    (lesson 20, sec. 20.1), independent of every training draw (those use seeds below :data:`TEST_SEED`).

    Parameters
    ----------
    name : str
        A generated data set of :data:`IMAGE_DATASETS` (for ``"digits"`` use ``digits(split="test")``).
    n : int
        Number of images.
    size : int
        Height and width in pixels.
    index : int
        Which test set (0, 1, ...): independent draws, e.g. for the spread of a statistic over five test sets.
    **kwargs : object
        Further arguments of the data set (a test set is normally uncorrelated: the distribution asked for).

    Returns
    -------
    ImageBatch
        The images and labels.

    Raises
    ------
    ValueError
        If ``name`` is not a generated data set or ``index`` is not an integer >= 0.
    """
    if name == "digits" or name not in IMAGE_DATASETS:
        generated = tuple(k for k in IMAGE_DATASETS if k != "digits")
        raise ValueError(f"held_out draws a generated data set: name must be one of {generated}, got {name!r}")
    index = _check_int(index, "index", 0)
    return image_dataset(name, n, size, torch.Generator().manual_seed(TEST_SEED + index), **kwargs)


IMAGE_DATASETS = {"shapes": shapes, "attribute-shapes": attribute_shapes, "digits": digits, "glyphs": glyphs}
"""The image data sets by name (lesson 20, sec. 20.1); their attributes are in :data:`ATTRIBUTES`."""


def image_dataset(name: str, n: int | None, size: int, generator: Generator = None, **kwargs: object) -> ImageBatch:
    """The named image data set (a key of :data:`IMAGE_DATASETS`) with ``n`` images of ``size`` pixels (lesson 20,
    sec. 20.1).

    Parameters
    ----------
    name : {"shapes", "attribute-shapes", "digits", "glyphs"}
        The data set.
    n : int or None
        Number of images (``None`` only for ``"digits"``: all of them).
    size : int
        Height and width in pixels.
    generator : torch.Generator, optional
        Source of randomness.
    **kwargs : object
        Further arguments of :func:`shapes`, :func:`digits` or :func:`glyphs` (``correlate``, ``dtype``, ...).

    Returns
    -------
    ImageBatch
        Images in [-1, 1] and their labels.

    Raises
    ------
    ValueError
        If ``name`` is unknown, ``n`` is ``None`` for a generated set, or the data set rejects its arguments.
    """
    if not isinstance(name, str) or name not in IMAGE_DATASETS:
        raise ValueError(f"unknown image data set {name!r}: name must be one of {tuple(IMAGE_DATASETS)}")
    if n is None and name != "digits":
        raise ValueError(f"{name!r} images are generated: n must be a positive integer, got None")
    return IMAGE_DATASETS[name](n, size=size, generator=generator, **kwargs)
