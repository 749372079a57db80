"""Lesson 20, eqs. 20.1-20.3: the attribute classifier reads real data, the Frechet distance in its feature space
separates real from corrupted images well above its real-vs-real floor, and PSNR/SSIM have their textbook values."""

import math

import pytest
import torch

import toydata as td
from diffmath.metrics import (
    AttributeClassifier,
    attribute_accuracy,
    frechet_distance,
    gaussian_frechet,
    psnr,
    ssim,
)
from diffmath.recipes import train_attribute_classifier


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def shapes_clf():
    return train_attribute_classifier("shapes", 16, progress=False)


@pytest.fixture(scope="module")
def digits_clf():
    return train_attribute_classifier("digits", 16, progress=False)


def test_shapes_classifier_reads_held_out_shapes(shapes_clf):
    held_out = td.shapes(2000, 16, gen(1))  # the recipe trains on seed 1000
    acc = attribute_accuracy(shapes_clf, held_out.images, held_out.labels)
    assert set(acc) == set(td.ATTRIBUTES["shapes"])
    assert min(acc.values()) > 0.95, acc


def test_digits_classifier_reads_held_out_digits(digits_clf):
    test = td.digits(size=16, split="test")  # the recipe trains on split="train" only
    acc = attribute_accuracy(digits_clf, test.images, test.labels)
    assert acc["digit"] > 0.95, acc


def test_classifier_is_cached_by_its_recipe(shapes_clf):
    again = train_attribute_classifier("shapes", 16, progress=False)
    assert all(
        torch.equal(a, b) for a, b in zip(again.state_dict().values(), shapes_clf.state_dict().values(), strict=True)
    )
    assert not again.training


def test_frechet_floor_is_far_below_corrupted_shapes(shapes_clf):
    a, b = td.shapes(2000, 16, gen(2)).images, td.shapes(2000, 16, gen(3)).images
    floor = frechet_distance(shapes_clf, a, b)
    assert floor == pytest.approx(frechet_distance(shapes_clf, b, a), rel=1e-6), "symmetric"
    noisy = (b + 0.2 * torch.randn(b.shape, generator=gen(4))).clamp(-1, 1)
    skewed = td.shapes(2000, 16, gen(3), correlate={"shape": "triangle", "colour": "red", "p": 1.0}).images
    assert 5 * floor < frechet_distance(shapes_clf, a, noisy)
    assert 5 * floor < frechet_distance(shapes_clf, a, skewed), "a changed joint law of attributes is seen"


def test_frechet_floor_is_far_below_corrupted_digits(digits_clf):
    real = td.digits(size=16).images[torch.randperm(1797, generator=gen(0))]
    a, b = real[:898], real[898:]
    floor = frechet_distance(digits_clf, a, b)
    assert floor == pytest.approx(frechet_distance(digits_clf, b, a), rel=1e-6), "symmetric"
    noisy = (b + 0.3 * torch.randn(b.shape, generator=gen(4))).clamp(-1, 1)
    assert 3 * floor < frechet_distance(digits_clf, a, noisy)


def test_gaussian_frechet_identical_is_zero_and_matches_the_diagonal_formula():
    g = gen(0)
    m = torch.randn(6, 6, generator=g, dtype=torch.float64)
    cov, mu = m @ m.T + 0.1 * torch.eye(6, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    assert abs(gaussian_frechet(mu, cov, mu, cov)) < 1e-9
    # commuting (diagonal) covariances: d^2 = |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2
    a, b = torch.rand(6, generator=g, dtype=torch.float64) + 0.1, torch.rand(6, generator=g, dtype=torch.float64) + 0.1
    want = (mu - 1).square().sum() + (a.sqrt() - b.sqrt()).square().sum()
    assert gaussian_frechet(mu, torch.diag(a), torch.ones(6, dtype=torch.float64), torch.diag(b)) == pytest.approx(
        want.item(), abs=1e-9
    )
    # symmetric for non-commuting covariances
    m2 = torch.randn(6, 6, generator=g, dtype=torch.float64)
    cov2 = m2 @ m2.T
    assert gaussian_frechet(mu, cov, 0 * mu, cov2) == pytest.approx(gaussian_frechet(0 * mu, cov2, mu, cov), abs=1e-9)


def test_psnr_of_identical_is_inf_and_of_a_constant_offset_is_known():
    x = td.shapes(4, 16, gen(0), dtype=torch.float64).images
    assert torch.isinf(psnr(x, x)).all()
    # an offset c everywhere: MSE = c^2, PSNR = 10 log10(L^2 / c^2) = 20 log10(2 / 0.1) = 26.02 dB
    assert torch.allclose(psnr(x + 0.1, x), torch.full((4,), 20 * math.log10(20.0), dtype=torch.float64))
    assert psnr(x + 0.1, x, data_range=1.0)[0].item() == pytest.approx(20.0)


def test_ssim_is_one_for_identical_and_falls_with_noise():
    x = td.shapes(8, 16, gen(0), dtype=torch.float64).images
    assert torch.allclose(ssim(x, x), torch.ones(8, dtype=torch.float64))
    values = [
        ssim(x + s * torch.randn(x.shape, generator=gen(1), dtype=torch.float64), x).mean() for s in (0.05, 0.2, 0.5)
    ]
    assert 1 > values[0] > values[1] > values[2]


def test_ssim_matches_a_hand_computation_on_one_window():
    g = gen(3)
    x, y = (
        torch.rand(1, 1, 3, 3, generator=g, dtype=torch.float64),
        torch.rand(1, 1, 3, 3, generator=g, dtype=torch.float64),
    )
    u, v = x.flatten(), y.flatten()
    mu, mv = u.mean(), v.mean()
    su, sv, suv = ((u - mu) ** 2).mean(), ((v - mv) ** 2).mean(), ((u - mu) * (v - mv)).mean()
    c1, c2 = 0.01**2, 0.03**2
    want = (2 * mu * mv + c1) * (2 * suv + c2) / ((mu**2 + mv**2 + c1) * (su + sv + c2))
    assert ssim(x, y, data_range=1.0, window=3).item() == pytest.approx(want.item(), abs=1e-12)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda c: psnr(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 5)), ValueError, "same shape"),
        (lambda c: psnr(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4), data_range=0), ValueError, "data_range"),
        (lambda c: ssim(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4), window=4), ValueError, "odd integer"),
        (lambda c: ssim(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4), window=7), ValueError, "larger than"),
        (lambda c: ssim(torch.zeros(2, 4, 4), torch.zeros(2, 4, 4)), ValueError, "at least 4 dimensions"),
        (lambda c: psnr(torch.zeros(2, 1, 4, 4, dtype=torch.int64), torch.zeros(2, 1, 4, 4)), TypeError, "floating"),
        (lambda c: frechet_distance(c, torch.zeros(1, 1, 16, 16), torch.zeros(5, 1, 16, 16)), ValueError, "two"),
        (lambda c: frechet_distance(c, torch.zeros(4, 3, 16, 16), torch.zeros(4, 3, 16, 16)), ValueError, "shape"),
        (lambda c: frechet_distance("clf", torch.zeros(4, 1, 16, 16), torch.zeros(4, 1, 16, 16)), TypeError, "Attr"),
        (
            lambda c: attribute_accuracy(c, torch.zeros(4, 1, 16, 16), {"colour": torch.zeros(4).long()}),
            ValueError,
            "unknown attribute",
        ),
        (
            lambda c: attribute_accuracy(c, torch.zeros(4, 1, 16, 16), {"digit": torch.zeros(3).long()}),
            ValueError,
            "shape",
        ),
        (
            lambda c: attribute_accuracy(c, torch.zeros(4, 1, 16, 16), {"digit": torch.full((4,), 10)}),
            ValueError,
            "lie in",
        ),
        (lambda c: attribute_accuracy(c, torch.zeros(4, 1, 16, 16), {}), ValueError, "non-empty"),
        (lambda c: gaussian_frechet(torch.zeros(3), torch.eye(3), torch.zeros(2), torch.eye(2)), ValueError, "shape"),
        (lambda c: train_attribute_classifier("cifar"), ValueError, "unknown image data set"),
        (lambda c: AttributeClassifier(1, 16, {"digit": 1}), ValueError, "class counts"),
    ],
)
def test_bad_input_is_rejected(call, error, match):
    clf = AttributeClassifier(1, 16, {"digit": 10}).eval()
    with pytest.raises(error, match=match):
        call(clf)
