"""Lesson 23, sec. 23.5: the image fusion tasks hold their ground truth, their oracle weights are ideal, and each
degradation does what the lesson says it does."""

import pytest
import torch
import torch.nn.functional as F

import toydata as td
from diffmath.metrics import psnr

TASKS = td.FUSION_TASKS


def _seed(k):
    return torch.Generator().manual_seed(k)


def _fused(task):
    return (task.oracle * task.sources).sum(0)


def _mean_psnr(x, target):
    return psnr(x, target).mean().item()


@pytest.mark.parametrize("data", ["scenes", "attribute-shapes"])
@pytest.mark.parametrize("name", TASKS)
def test_fusion_tasks_are_seedable_and_well_formed(name, data):
    a = td.fusion_task(name, 4, 24, _seed(0), data=data)
    b = td.fusion_task(name, 4, 24, _seed(0), data=data)
    c = td.fusion_task(name, 4, 24, _seed(1), data=data)
    k, channels = 2, 1 if data == "scenes" else 3
    assert isinstance(a, td.FusionTask) and a.name == name
    assert a.sources.shape == (k, 4, channels, 24, 24)
    assert a.target.shape == (4, channels, 24, 24) and a.oracle.shape == (k, 4, 1, 24, 24)
    for t in (a.sources, a.target, a.oracle):
        assert t.dtype == torch.get_default_dtype() and torch.isfinite(t).all()
    assert a.sources.abs().max() <= 1 and a.target.abs().max() <= 1
    assert all(torch.equal(s, t) for s, t in zip(a[:3], b[:3], strict=True))
    assert not torch.equal(a.sources, c.sources) and not torch.equal(a.target, c.target)
    d = td.fusion_task(name, 4, 24, _seed(0), data=data, dtype=torch.float64)
    assert d.sources.dtype == d.target.dtype == d.oracle.dtype == torch.float64


def test_scenes_have_flat_regions_sharp_edges_and_a_spread_of_grey_levels():
    x = td.scenes(16, 32, _seed(0))
    assert x.shape == (16, 1, 32, 32) and x.dtype == torch.get_default_dtype()
    assert torch.equal(x, td.scenes(16, 32, _seed(0))) and not torch.equal(x, td.scenes(16, 32, _seed(1)))
    assert x.abs().max() <= 1
    step = (x[..., 1:] - x[..., :-1]).abs()
    assert (step < 0.02).double().mean() > 0.2, "flat regions"
    assert (step > 0.3).double().mean() > 0.03, "sharp edges and fine texture"
    low, high = x.quantile(torch.tensor([0.05, 0.95], dtype=x.dtype))
    assert low < -0.5 and high > 0.5, "darks and brights for the exposures to crush and clip"


@pytest.mark.parametrize(
    ("name", "k"),
    [("multi-focus", 2), ("multi-focus", 3), ("multi-exposure", 2), ("multi-exposure", 3), ("infrared-visible", 2)],
)
def test_oracle_weights_are_nonnegative_and_sum_to_one(name, k):
    kwargs = {} if name == "infrared-visible" else {"num_sources": k}
    task = td.fusion_task(name, 8, 24, _seed(2), **kwargs)
    assert task.sources.shape[0] == task.oracle.shape[0] == k
    assert (task.oracle >= 0).all()
    torch.testing.assert_close(task.oracle.sum(0), torch.ones_like(task.oracle[0]))
    assert (task.oracle.amax((1, 2, 3, 4)) > 0).all(), "every source holds the truth somewhere"


@pytest.mark.parametrize("name", ["multi-focus", "infrared-visible"])
def test_oracle_fusion_beats_the_average_by_3db(name):
    task = td.fusion_task(name, 16, 32, _seed(3))
    oracle, average = _mean_psnr(_fused(task), task.target), _mean_psnr(task.sources.mean(0), task.target)
    assert oracle > average + 3
    assert all(oracle > _mean_psnr(s, task.target) + 3 for s in task.sources)


def test_multi_exposure_oracle_fusion_beats_each_source():
    x = td.scenes(16, 32, _seed(4))
    task = td.multi_exposure(x, _seed(5), noise=0.0)
    oracle = _mean_psnr(_fused(task), x)
    assert all(oracle > _mean_psnr(s, x) for s in task.sources)
    assert oracle > _mean_psnr(task.sources.mean(0), x) + 3


def test_multi_focus_sources_are_sharp_in_their_region_and_blurred_elsewhere():
    x = td.scenes(8, 32, _seed(6))
    task = td.multi_focus(x, _seed(7), num_sources=3, blur=1.5)
    assert torch.equal(task.target, x)
    torch.testing.assert_close(_fused(task), x)  # hard masks: the oracle recovers x exactly
    # the blur, recomputed as one 2-D convolution with the outer product of the sampled Gaussian (3 sd, reflect)
    t = torch.arange(-5, 6, dtype=x.dtype)
    g = torch.exp(-0.5 * (t / 1.5) ** 2)
    kernel = torch.outer(g, g) / g.sum() ** 2
    blurred = F.conv2d(F.pad(x, (5, 5, 5, 5), mode="reflect"), kernel[None, None])
    for c, m in zip(task.sources, task.oracle, strict=True):
        sharp = m.expand_as(x) == 1
        assert sharp.any() and (~sharp).any()
        assert torch.equal(c[sharp], x[sharp])
        torch.testing.assert_close(c[~sharp], blurred[~sharp])
        assert (c - x).abs()[~sharp].mean() > 0.03, "the blurred parts differ"


def test_multi_exposure_bright_capture_saturates_and_dark_capture_is_coarse_in_the_shadows():
    x = td.scenes(16, 32, _seed(8))
    under, over = td.multi_exposure(x, _seed(9), stops=(-1.0, 1.0)).sources
    bright = x > 0.5  # radiance u > 3/4, above the saturation point 1/e = 1/2 of the +1 EV capture
    assert bright.double().mean() > 0.02
    assert over[bright].max() <= 0.0 + 1e-6, "clipped at radiance 1/2, i.e. 0 on the [-1, 1] scale"
    assert (x - over)[bright].min() > 0.45 and (under - x).abs()[bright].mean() < 0.06
    dark = x <= x.quantile(0.1)
    assert (under - x).abs()[dark].mean() > 1.3 * (over - x).abs()[dark].mean()


def test_infrared_shows_the_targets_and_visible_the_scene():
    task = td.infrared_visible(td.scenes(16, 32, _seed(10)), _seed(11), num_targets=2)
    infrared, visible = task.sources
    inside, outside = task.oracle[0].expand_as(visible) == 1, task.oracle[1].expand_as(visible) == 1
    assert inside.double().mean() > 0.02
    assert (infrared - visible)[inside].mean() > 0.3, "targets stand out in the infrared source"
    assert (infrared - task.target).abs()[inside].mean() < 0.5 * (visible - task.target).abs()[inside].mean()
    assert (visible - task.target).abs()[outside].mean() < 0.1 * (infrared - task.target).abs()[outside].mean()


def test_add_noise_adds_noise_of_the_given_sd_to_the_sources_only():
    task = td.fusion_task("multi-focus", 16, 32, _seed(12))
    noisy = td.add_noise(task, 0.1, _seed(13))
    assert torch.equal(noisy.target, task.target) and torch.equal(noisy.oracle, task.oracle)
    assert noisy.name == task.name
    inner = task.sources.abs() < 0.5  # 5 sd from the clipping at +-1
    diff = (noisy.sources - task.sources)[inner].double()
    m = diff.numel()
    assert abs(diff.std().item() - 0.1) < 5 * 0.1 / (2 * m) ** 0.5
    assert abs(diff.mean().item()) < 5 * 0.1 / m**0.5
    assert noisy.sources.abs().max() <= 1
    assert torch.equal(td.add_noise(task, 0.0, _seed(13)).sources, task.sources)
    # fusion_task draws the images, the degradation, then the noise, all from one generator
    g = _seed(14)
    again = td.add_noise(td.fusion_task("multi-focus", 16, 32, g), 0.1, g)
    assert torch.equal(td.fusion_task("multi-focus", 16, 32, _seed(14), noise=0.1).sources, again.sources)


@pytest.mark.parametrize(("data", "size", "channels"), [("digits", 16, 1), ("shapes", 16, 3)])
def test_fusion_tasks_take_any_image_data_set(data, size, channels):
    task = td.fusion_task("multi-exposure", 4, size, _seed(15), data=data, num_sources=3)
    assert task.sources.shape == (3, 4, channels, size, size) and task.oracle.shape == (3, 4, 1, size, size)


X = td.scenes(2, 16, _seed(0))
TASK = td.multi_focus(X, _seed(0))


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: td.scenes(0), ValueError, "n must be a positive integer"),
        (lambda: td.scenes(2, 4), ValueError, "size must be an integer >= 8"),
        (lambda: td.scenes(2, dtype=torch.int64), TypeError, "floating torch.dtype"),
        (lambda: td.multi_focus(X.numpy()), TypeError, "torch.Tensor of images"),
        (lambda: td.multi_focus(X.long()), TypeError, "floating-point"),
        (lambda: td.multi_focus(X[0]), ValueError, r"shape \(N, C, H, W\)"),
        (lambda: td.multi_focus(2 * X), ValueError, r"in \[-1, 1\]"),
        (lambda: td.multi_focus(X * float("nan")), ValueError, "NaN"),
        (lambda: td.multi_focus(X, num_sources=1), ValueError, "num_sources must be an integer >= 2"),
        (lambda: td.multi_focus(X, blur=0), ValueError, "blur must be positive"),
        (lambda: td.multi_exposure(X, bits=0), ValueError, r"bits must be an integer in 1\.\.16"),
        (lambda: td.multi_exposure(X, bits=17), ValueError, r"bits must be an integer in 1\.\.16"),
        (lambda: td.multi_exposure(X, gamma=-1), ValueError, "gamma must be positive"),
        (lambda: td.multi_exposure(X, noise=-0.1), ValueError, "noise must be non-negative"),
        (lambda: td.multi_exposure(X, stops=(-1, 0, 1)), ValueError, "num_sources = 2"),
        (lambda: td.multi_exposure(X, stops=(-1, float("inf"))), ValueError, "finite numbers"),
        (lambda: td.infrared_visible(X[..., :10, :10]), ValueError, "at least 12 x 12"),
        (lambda: td.infrared_visible(X, num_targets=0), ValueError, "num_targets must be a positive integer"),
        (lambda: td.infrared_visible(X, contrast=1.5), ValueError, r"contrast must lie in \[0, 1\]"),
        (lambda: td.add_noise(TASK, -1.0), ValueError, "sd must be non-negative"),
        (lambda: td.add_noise(TASK.sources, 0.1), TypeError, "task must be a FusionTask"),
        (lambda: td.fusion_task("focus", 2), ValueError, "name must be one of"),
        (lambda: td.fusion_task("multi-focus", 2, data="mnist"), ValueError, "data must be 'scenes' or"),
        (lambda: td.fusion_task("multi-focus", 2, noise=-1.0), ValueError, "noise must be non-negative"),
        (lambda: td.fusion_task("multi-focus", 2, gamma=2.2), TypeError, "gamma"),
    ],
)
def test_fusion_bad_input_raises_with_what_was_expected(call, error, match):
    with pytest.raises(error, match=match):
        call()
