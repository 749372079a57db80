"""Lesson 20, sec. 20.1-20.2: the six-attribute shapes for the multi-model methods, held-out test sets, the unbiased
kernel distance, and recipes conditioned on several attributes."""

import math

import pytest
import torch
from scipy.stats import chi2

import toydata as td
from diffmath import recipes
from diffmath.metrics import kernel_mmd2
from diffmath.train.training import fit

NAMES = td.ATTRIBUTES["attribute-shapes"]


def _draw(n=3000, seed=0, **kw):
    return td.attribute_shapes(n, 24, torch.Generator().manual_seed(seed), **kw)


def test_attributes_are_uniform_and_independent():
    """Each attribute's values are equally likely and pairs are independent: a chi-square test on every pair's
    contingency table at n = 3000 (seed 0), below its 99.9% point."""
    b = _draw()
    names = list(NAMES)
    for i, a in enumerate(names):
        counts = torch.bincount(b.labels[a], minlength=len(NAMES[a])).double()
        expect = 3000 / len(NAMES[a])
        assert ((counts - expect) ** 2 / expect).sum() < chi2.ppf(0.999, len(NAMES[a]) - 1), a
        for c in names[i + 1 :]:
            ka, kc = len(NAMES[a]), len(NAMES[c])
            table = torch.zeros(ka, kc, dtype=torch.float64)
            table.index_put_((b.labels[a], b.labels[c]), torch.ones(3000, dtype=torch.float64), accumulate=True)
            e = table.sum(1, keepdim=True) * table.sum(0, keepdim=True) / 3000
            assert ((table - e) ** 2 / e).sum() < chi2.ppf(0.999, (ka - 1) * (kc - 1)), (a, c)


def test_pixels_show_the_labels():
    """The labels are what the pixels show: the quadrant holds the shape's colour mass, the dominant channel is the
    colour, large shapes cover more than twice the area of small ones, and the background level is dark or light."""
    b = _draw(600, seed=1)
    img = (b.images.double() + 1) / 2  # back to [0, 1]
    corner = img[:, :, :1, :1].mean((1, 2, 3))  # a background pixel (no shape reaches the frame's corner pixel...)
    bright = img.amax(1) - img.amin(1)  # colour saturation: ~0 on the grey background, high on the shape
    mask = bright > 0.3
    area = mask.sum((1, 2)).double()
    rows, cols = torch.arange(24.0), torch.arange(24.0)
    big = -torch.ones(())  # the bounding box's centre is the drawn centre (for a triangle too, unlike its centroid)
    on_r, on_c = (bright > 0.1).any(2), (bright > 0.1).any(1)
    cy = (torch.where(on_r, rows, 1e9).amin(1) + torch.where(on_r, rows, big).amax(1)) / 2
    cx = (torch.where(on_c, cols, 1e9).amin(1) + torch.where(on_c, cols, big).amax(1)) / 2
    quadrant = (cx >= 11.5).long() + 2 * (cy >= 11.5).long()
    assert (quadrant == b.labels["quadrant"]).all()
    channel_mass = (img * mask[:, None]).sum((2, 3)) - (corner[:, None] * area[:, None])
    assert (channel_mass.argmax(1) == b.labels["colour"]).all()
    plain = b.labels["texture"] == 0
    cover = bright.sum((1, 2)) / bright.amax((1, 2))  # a plain shape's saturation is constant: the sum is its area
    small, large = cover[plain & (b.labels["size"] == 0)], cover[plain & (b.labels["size"] == 1)]
    assert large.min() > 1.9 * small.max()  # nominal areas differ by >= (0.17 / 0.12)^2 = 2.007
    light = b.labels["background"] == 1
    assert corner[light].min() > 0.45 and corner[~light].max() < 0.15


def test_correlate_makes_a_combination_rare_and_leaves_the_rest():
    """With 2% of triangles red, red triangles are 2% of triangles (within 4 standard errors) and the colour of other
    shapes stays uniform; several ties apply in order."""
    b = _draw(6000, seed=2, correlate=recipes.RARE)
    tri = b.labels["shape"] == 2
    n = int(tri.sum())
    red = (b.labels["colour"][tri] == 0).double().mean().item()
    assert abs(red - 0.02) < 4 * math.sqrt(0.02 * 0.98 / n)
    other = b.labels["colour"][~tri]
    assert abs((other == 0).double().mean().item() - 1 / 3) < 4 * math.sqrt(2 / 9 / other.numel())
    two = _draw(6000, seed=2, correlate=[recipes.RARE, {"size": "large", "quadrant": "top-left", "p": 0.0}])
    assert not ((two.labels["size"] == 1) & (two.labels["quadrant"] == 0)).any()
    with pytest.raises(ValueError, match="correlate"):
        _draw(10, correlate="red triangles")
    with pytest.raises(ValueError, match="unknown attribute"):
        _draw(10, correlate={"hue": "red", "shape": "circle", "p": 0.5})


def test_held_out_sets_are_reproducible_and_disjoint_from_training_seeds():
    a, b = td.held_out("attribute-shapes", 50, 24), td.held_out("attribute-shapes", 50, 24)
    assert torch.equal(a.images, b.images)
    c = td.held_out("attribute-shapes", 50, 24, index=1)
    assert not torch.equal(a.images, c.images)
    train = td.attribute_shapes(50, 24, torch.Generator().manual_seed(0))
    assert not torch.equal(a.images, train.images)
    with pytest.raises(ValueError, match="generated data set"):
        td.held_out("digits", 10, 8)
    with pytest.raises(ValueError, match="index"):
        td.held_out("shapes", 10, 16, index=-1)
    with pytest.raises(ValueError, match="size"):
        td.attribute_shapes(10, 12)


def test_kernel_mmd2_is_unbiased_and_matches_its_definition():
    """The estimator equals its double sums written out, is zero in expectation for one distribution (mean over 200
    seeds within 4 standard errors of 0) and positive for two; Frechet's plug-in estimate is biased upwards."""
    from diffmath.metrics import gaussian_frechet

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(7, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64)

    def k(a, b):
        return (a @ b / 3 + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(7) for j in range(7) if i != j) / 42
    yy = sum(k(y[i], y[j]) for i in range(5) for j in range(5) if i != j) / 20
    xy = sum(k(x[i], y[j]) for i in range(7) for j in range(5)) / 35
    assert kernel_mmd2(x, y) == pytest.approx((xx + yy - 2 * xy).item(), abs=1e-12)

    same, fre = [], []
    for s in range(200):
        g = torch.Generator().manual_seed(s)
        a, b = torch.randn(40, 4, generator=g), torch.randn(40, 4, generator=g)
        same.append(kernel_mmd2(a, b))
        fre.append(gaussian_frechet(a.mean(0), torch.cov(a.T), b.mean(0), torch.cov(b.T)))
    same, fre = torch.tensor(same), torch.tensor(fre)
    assert abs(same.mean()) < 4 * same.std() / math.sqrt(200)
    assert fre.mean() > 10 * fre.std() / math.sqrt(200)  # biased: positive on average though the laws are equal
    g = torch.Generator().manual_seed(1)
    assert kernel_mmd2(torch.randn(200, 4, generator=g), torch.randn(200, 4, generator=g) + 0.5) > 0.05
    with pytest.raises(ValueError, match="feature dimension"):
        kernel_mmd2(torch.randn(5, 3), torch.randn(5, 4))
    with pytest.raises(ValueError, match="degree"):
        kernel_mmd2(torch.randn(5, 3), torch.randn(5, 3), degree=0)


def test_recipes_condition_on_several_attributes():
    """A recipe conditioned on a list of attributes builds a network with one label table per attribute and
    passes the labels stacked (N, L); the old single-attribute recipes keep their hashes."""
    config = recipes.image_recipe("attr-shape-quadrant", n_data=64, steps=2, batch_size=8)
    model, _, _, labels = recipes.image_setup(config)
    assert model.label_sizes == (3, 4)
    cond = recipes._condition(config, labels)
    assert cond.shape == (64, 2) and torch.equal(cond[:, 1], labels["quadrant"])
    assert recipes.recipe_hash(recipes.image_recipe("shapes-ddpm")) == "7cdaf8fe10"  # the committed model's file
    with pytest.raises(ValueError, match="condition_on"):
        recipes.image_setup(recipes.image_recipe("attr-colour", n_data=8, condition_on=["hue"]))


def test_dropout_per_label_drops_each_label_on_its_own():
    """With dropout_per_label the null label appears per attribute at the asked rate (4 standard errors) and
    partial conditions occur; without it a sample's labels are dropped together."""
    seen = []

    def loss(model, x, generator, cond):
        seen.append(cond.clone())
        return model(x, torch.zeros(x.shape[0]), None).square().mean()

    from diffmath.nets.mlp import MLP

    data, labels = torch.randn(256, 2), torch.randint(0, 3, (256, 4))
    for per in (True, False):
        seen.clear()
        fit(MLP(2, hidden=8, depth=1), data, None, 50, batch_size=64, labels=labels, label_dropout=0.3,
            dropout_per_label=per, loss=loss, ema_decay=None, progress=False)  # fmt: skip
        null = torch.cat(seen) == -1
        rate = null.double().mean().item()
        assert abs(rate - 0.3) < 4 * math.sqrt(0.21 / null.numel() * (1 if per else 4))
        partial = (null.any(1) & ~null.all(1)).double().mean().item()
        assert (partial > 0.5) if per else (partial == 0.0)
    with pytest.raises(TypeError, match="dropout_per_label"):
        fit(MLP(2, hidden=8, depth=1), data, None, 2, labels=labels, dropout_per_label=1, loss=loss, progress=False)
