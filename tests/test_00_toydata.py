"""Lesson 0: toy data sets are seedable, of the right shape, and the ring's exact model matches its sampler."""

import pytest
import torch

import toydata as td
from diffmath.metrics import mmd_rbf, sliced_w1


@pytest.mark.parametrize("name", list(td.TOYS))
def test_toys_are_seedable_and_well_formed(name):
    a = td.sample(name, 500, torch.Generator().manual_seed(3))
    b = td.sample(name, 500, torch.Generator().manual_seed(3))
    c = td.sample(name, 500, torch.Generator().manual_seed(4))
    assert a.shape == (500, 2) and a.dtype == torch.get_default_dtype()
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.isfinite(a).all()
    assert 0.3 < a.std(0).min() and a.abs().max() < 6, "toys live on the scale of a unit Gaussian"


def test_eight_gaussians_sampler_matches_its_mixture():
    gmm = td.eight_gaussians_mixture()
    x, k = gmm.sample(4000, torch.Generator().manual_seed(0), return_components=True)
    counts = torch.bincount(k, minlength=8).double() / 4000
    assert (counts - 1 / 8).abs().max() < 0.02
    y = td.eight_gaussians(4000, torch.Generator().manual_seed(1))
    assert sliced_w1(x, y, generator=torch.Generator().manual_seed(0)) < 0.06
    assert mmd_rbf(x[:2000], y[:2000]) < 2e-3


def test_checkerboard_lives_on_black_squares():
    x = td.checkerboard(5000, torch.Generator().manual_seed(0))
    parity = (torch.floor(x[:, 0]) + torch.floor(x[:, 1])) % 2
    assert (parity == 0).all() or (parity == 1).all()


def test_toydata_bad_input():
    with pytest.raises(ValueError, match="unknown toy"):
        td.sample("spiral", 10)
    with pytest.raises(ValueError, match="positive integer"):
        td.sample("moons", 0)
    with pytest.raises(ValueError, match="cov must be"):
        td.random_mixture(3, 2, cov="banded")
    with pytest.raises(ValueError, match="positive"):
        td.eight_gaussians_mixture(std=-1)
    with pytest.raises(ValueError, match="radii"):
        td.rings(10, radii=(1.0, -1.0))


def test_metrics_detect_a_shift():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(2000, 2, generator=g), torch.randn(2000, 2, generator=g)
    same = sliced_w1(x, y, generator=torch.Generator().manual_seed(1))
    shifted = sliced_w1(x, y + 0.5, generator=torch.Generator().manual_seed(1))
    assert same < 0.06 and 0.25 < shifted < 0.5  # E|theta . shift| = 0.5 * 2/pi = 0.318 in 2-D
    assert abs(mmd_rbf(x, y)) < 2e-3 < mmd_rbf(x, y + 0.5)
    with pytest.raises(ValueError, match="event shape"):
        sliced_w1(x, torch.randn(10, 3))
