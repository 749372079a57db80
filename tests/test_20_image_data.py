"""Lesson 20, sec. 20.1: procedural and bundled image data are seedable, in range, and labelled by what they show."""

import math

import pytest
import torch

import toydata as td
from toydata.images import DIGITS_TEST_START


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(
    ("name", "size", "channels"), [("shapes", 16, 3), ("shapes", 24, 3), ("shapes", 32, 3), ("glyphs", 16, 1)]
)
def test_generated_images_are_seedable_and_in_range(name, size, channels):
    a = td.image_dataset(name, 200, size, gen(1))
    b = td.image_dataset(name, 200, size, gen(1))
    c = td.image_dataset(name, 200, size, gen(2))
    assert a.images.shape == (200, channels, size, size) and a.images.dtype == torch.get_default_dtype()
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    assert all(torch.equal(a.labels[k], b.labels[k]) for k in a.labels)
    assert a.images.min() >= -1 and a.images.max() <= 1
    assert set(a.labels) == set(td.ATTRIBUTES[name])
    for attr, names in td.ATTRIBUTES[name].items():
        lab = a.labels[attr]
        assert lab.dtype == torch.int64 and lab.shape == (200,)
        assert lab.min() >= 0 and lab.max() < len(names)
        assert len(lab.unique()) == len(names), f"every {attr} value appears in 200 draws"
    assert td.image_dataset(name, 4, size, gen(1), dtype=torch.float64).images.dtype == torch.float64


def test_shapes_colour_is_the_dominant_channel():
    b = td.shapes(600, 16, gen(0))
    rgb = (b.images + 1) / 2
    ink = rgb.amax(1, keepdim=True) > 0.3  # the shape's pixels
    mean = (rgb * ink).sum((2, 3)) / ink.sum((2, 3))
    assert torch.equal(mean.argmax(1), b.labels["colour"])
    assert (background := rgb[~ink.expand_as(rgb)]).max() < 0.3 and background.mean() < 0.05


def test_shapes_large_cover_more_area_than_small():
    b = td.shapes(600, 16, gen(0), stripes=False)
    area = ((b.images + 1) / 2).amax(1).gt(0.2).sum((1, 2)).double()  # pixels above the dim colour channels
    for k in range(3):  # per shape, since their areas are only nearly equal
        same = b.labels["shape"] == k
        small, large = area[same & (b.labels["size"] == 0)], area[same & (b.labels["size"] == 1)]
        assert small.max() < large.min(), f"{td.ATTRIBUTES['shapes']['shape'][k]}: {small.max()} vs {large.min()}"
        ratio = large.mean() / small.mean()
        assert 2.0 < ratio < 4.0, "radius ranges [0.15, 0.2] and [0.28, 0.33] give an area ratio near 3"


def test_shapes_geometry_circle_square_triangle():
    """The filled fraction of a shape's bounding box tells the shapes apart: pi/4, 1 and 1/2."""
    b = td.shapes(300, 32, gen(5), stripes=False)
    cover = ((b.images + 1) / 2).amax(1) > 0.3
    rows, cols = cover.any(2), cover.any(1)
    box = rows.sum(1) * cols.sum(1)
    fill = cover.sum((1, 2)) / box
    for k, want in enumerate([math.pi / 4, 1.0, 0.5]):
        got = fill[b.labels["shape"] == k]
        assert (got - want).abs().max() < 0.15, (k, got.min(), got.max())


def test_stripes_make_texture_plain_shapes_are_flat():
    b = td.shapes(400, 32, gen(3))
    rgb = (b.images + 1) / 2
    dom = rgb.gather(1, b.labels["colour"][:, None, None, None].expand(-1, 1, 32, 32))[:, 0]
    inner = dom > 0.15 * dom.amax((1, 2), keepdim=True)  # dark stripes keep 30% of the colour
    eroded = inner & inner.roll(1, 1) & inner.roll(-1, 1) & inner.roll(1, 2) & inner.roll(-1, 2)
    spread = torch.stack(
        [dom[i][eroded[i]].std() if eroded[i].sum() > 3 else dom[i].new_tensor(0.0) for i in range(400)]
    )
    striped = b.labels["stripes"] == 1
    assert spread[~striped].max() < 0.02 and spread[striped].median() > 0.1


def test_correlate_ties_the_attributes_within_4_se():
    p, n = 0.9, 6000
    b = td.shapes(n, 16, gen(7), correlate={"shape": "triangle", "colour": "red", "p": p})
    tri = b.labels["shape"] == 2
    m = int(tri.sum())
    red = (b.labels["colour"][tri] == 0).double().mean().item()
    assert abs(red - p) < 4 * math.sqrt(p * (1 - p) / m)
    others = torch.bincount(b.labels["colour"][tri & (b.labels["colour"] != 0)], minlength=3)[1:].double()
    q = 0.5
    assert abs(others[0] / others.sum() - q) < 4 * math.sqrt(q * (1 - q) / others.sum())
    rest = (b.labels["colour"][~tri] == 0).double().mean().item()  # other shapes keep uniform colours
    assert abs(rest - 1 / 3) < 4 * math.sqrt(2 / 9 / (n - m))
    # a rare combination is rare but present; ask for it by correlating the other way
    rare = td.shapes(2000, 16, gen(8), correlate={"shape": "triangle", "colour": "blue", "p": 1.0})
    assert (rare.labels["colour"][rare.labels["shape"] == 2] == 2).all()


def test_digits_are_sklearn_digits_with_labels():
    from sklearn.datasets import load_digits

    d = td.digits()
    ref = load_digits()
    assert d.images.shape == (1797, 1, 8, 8) and d.labels["digit"].shape == (1797,)
    assert torch.equal(d.labels["digit"], torch.as_tensor(ref.target))
    assert torch.allclose(d.images[:, 0].double(), torch.as_tensor(ref.images) / 8 - 1, atol=1e-6)
    assert d.images.min() == -1 and d.images.max() == 1
    up = td.digits(size=16)
    assert up.images.shape == (1797, 1, 16, 16)
    assert torch.allclose(torch.nn.functional.avg_pool2d(up.images, 2).mean(), d.images.mean(), atol=1e-3)
    tr, te = td.digits(split="train"), td.digits(split="test")
    assert tr.images.shape[0] == DIGITS_TEST_START and tr.images.shape[0] + te.images.shape[0] == 1797
    assert set(te.labels["digit"].tolist()) == set(range(10))
    s1, s2 = td.digits(100, generator=gen(0)), td.digits(100, generator=gen(0))
    assert torch.equal(s1.images, s2.images) and len({tuple(x.flatten().tolist()) for x in s1.images}) == 100


def test_glyphs_differ_by_char_and_font():
    b = td.glyphs(2000, 16, gen(0))
    assert set(b.labels) == {"char", "font"}
    # mean image per char: distinct characters give distinct means
    means = torch.stack([b.images[b.labels["char"] == k].mean(0).flatten() for k in range(10)])
    dist = torch.cdist(means, means) + 1e9 * torch.eye(10)
    same_char = [
        (b.images[(b.labels["char"] == k) & (b.labels["font"] == f)].mean(0).flatten() - means[k]).norm()
        for k in range(10)
        for f in range(len(td.GLYPH_FONTS))
    ]
    assert dist.min() > 1.0 and dist.min() > max(same_char) * 0.5
    # ink (at least half a pixel's coverage) is present in every image and the frame is mostly dark
    assert (b.images.amax((1, 2, 3)) > 0).all() and (b.images > 0).double().mean() < 0.4
    digits_glyphs = td.glyphs(10, 16, gen(0), chars="0123456789")
    assert digits_glyphs.labels["char"].max() < 10


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: td.shapes(0), "n must be"),
        (lambda: td.shapes(4, size=8), "size must be"),
        (lambda: td.shapes(4, size=16.0), "size must be"),
        (lambda: td.shapes(4, correlate={"shape": "hexagon", "colour": "red", "p": 0.9}), "one of"),
        (lambda: td.shapes(4, correlate={"shape": "triangle", "hue": "red", "p": 0.9}), "unknown attribute"),
        (lambda: td.shapes(4, correlate={"shape": "triangle", "colour": "red"}), "two attributes and 'p'"),
        (lambda: td.shapes(4, correlate={"shape": "triangle", "colour": "red", "p": 1.5}), r"\[0, 1\]"),
        (lambda: td.shapes(4, stripes=False, correlate={"shape": "circle", "stripes": "striped", "p": 1}), "one of"),
        (lambda: td.digits(2000), "at most 1797"),
        (lambda: td.digits(size=4), "size must be"),
        (lambda: td.digits(split="val"), "split must be"),
        (lambda: td.glyphs(4, chars=""), "chars must be"),
        (lambda: td.glyphs(4, chars="AA"), "chars must be"),
        (lambda: td.glyphs(4, chars="A\u4e00"), "no glyph"),
        (lambda: td.image_dataset("cifar", 4, 16), "unknown image data set"),
        (lambda: td.image_dataset("shapes", None, 16), "n must be"),
    ],
)
def test_bad_input_is_rejected(call, match):
    with pytest.raises(ValueError, match=match):
        call()
