"""Lesson 23, eqs. 23.10-23.12: the fusion metrics have their hand-computed values on tiny images, and the classical
baselines (local-variance selection, Mertens exposure fusion, the average) do what they promise on inline examples."""

import math

import pytest
import torch

from diffmath.fusion import (
    average_fusion,
    average_gradient,
    correlation,
    edge_intensity,
    entropy,
    fusion_scores,
    local_variance_fusion,
    local_variance_weights,
    mertens_fusion,
    mutual_information,
    qabf,
    spatial_frequency,
    std_dev,
)
from diffmath.metrics import psnr


def gen(seed):
    return torch.Generator().manual_seed(seed)


def from_8bit(rows):
    """A (1, 1, H, W) image in [-1, 1] whose 8-bit luminance 127.5 (x + 1) is ``rows``."""
    return (torch.tensor(rows, dtype=torch.float64) / 127.5 - 1)[None, None]


def texture(size, seed, channels=1):
    """Smooth-ish random texture in [-1, 1]: uniform noise averaged over 2x2 neighbourhoods."""
    x = torch.rand(1, channels, size + 1, size + 1, generator=gen(seed), dtype=torch.float64) * 2 - 1
    return torch.nn.functional.avg_pool2d(x, 2, stride=1)


# ---------------------------------------------------------------------------------------------------------------------
# No-reference metrics


def test_entropy_of_two_equal_levels_is_one_bit_constant_zero_uniform_eight():
    two = from_8bit([[0, 255, 0, 255], [255, 0, 255, 0]])
    constant = from_8bit([[77] * 4] * 4)
    uniform = from_8bit([list(range(16 * r, 16 * r + 16)) for r in range(16)])  # every level 0..255 once
    assert entropy(two).item() == pytest.approx(1.0, abs=1e-12)
    assert entropy(constant).item() == pytest.approx(0.0, abs=1e-12)
    assert entropy(uniform).item() == pytest.approx(8.0, abs=1e-12)


def test_entropy_is_per_image_and_reads_the_luminance_of_colour_images():
    two, constant = from_8bit([[0, 255], [255, 0]]), from_8bit([[10, 10], [10, 10]])
    batch = torch.cat([two, constant])
    assert entropy(batch).tolist() == pytest.approx([1.0, 0.0], abs=1e-12)
    grey_rgb = two.expand(1, 3, 2, 2)  # three equal channels: the luminance is the image itself
    assert entropy(grey_rgb).item() == pytest.approx(1.0, abs=1e-12)
    assert entropy(grey_rgb).dtype == torch.float64 and entropy(batch).shape == (2,)


def test_std_dev_of_two_level_images():
    half = from_8bit([[0, 255], [255, 0]])
    assert std_dev(half).item() == pytest.approx(127.5, rel=1e-12)
    quarter = from_8bit([[100, 140], [140, 140]])  # mean 130, deviations -30 (1/4) and +10 (3/4): variance 300
    assert std_dev(quarter).item() == pytest.approx(math.sqrt(0.25 * 30**2 + 0.75 * 10**2), rel=1e-12)


V = [[0, 10, 20], [10, 30, 50], [0, 0, 40]]  # a 3x3 image on the 8-bit scale, worked by hand below


def test_spatial_frequency_on_a_hand_worked_3x3():
    horizontal = [10, 10, 20, 20, 0, 40]  # v[i][j] - v[i][j-1], row by row
    vertical = [10, 20, 30, -10, -30, -10]  # v[i][j] - v[i-1][j], row by row
    rf2 = sum(d * d for d in horizontal) / 6
    cf2 = sum(d * d for d in vertical) / 6
    assert spatial_frequency(from_8bit(V)).item() == pytest.approx(math.sqrt(rf2 + cf2), rel=1e-12)
    assert math.sqrt(rf2 + cf2) == pytest.approx(math.sqrt(850))


def test_average_gradient_on_a_hand_worked_3x3():
    # forward differences (Gx, Gy) at the four positions of the 2x2 grid
    pairs = [(10, 10), (10, 20), (20, -10), (20, -30)]
    expected = sum(math.sqrt((gx * gx + gy * gy) / 2) for gx, gy in pairs) / 4
    assert average_gradient(from_8bit(V)).item() == pytest.approx(expected, rel=1e-12)


def test_edge_intensity_of_a_vertical_step_is_the_hand_sobel_value():
    step = from_8bit([[0] * 4 + [255] * 4] * 5)  # 5 x 8, black to white between columns 3 and 4
    # valid Sobel columns 1..6; the two beside the step see (1 + 2 + 1) * 255, the others 0; no vertical response
    assert edge_intensity(step).item() == pytest.approx(2 * 4 * 255 / 6, rel=1e-12)
    assert edge_intensity(step.transpose(2, 3)).item() == pytest.approx(2 * 4 * 255 / 6, rel=1e-12)


# ---------------------------------------------------------------------------------------------------------------------
# Metrics against the sources


def test_mutual_information_of_an_image_with_itself_is_its_entropy():
    F = texture(32, 0)
    assert mutual_information(F, [F]).item() == pytest.approx(entropy(F).item(), rel=1e-12)
    assert mutual_information(F, [-F]).item() == pytest.approx(entropy(F).item(), rel=1e-12), "a bijection of F"


def test_mutual_information_of_independent_images_is_near_zero():
    # 4 levels each, 128 x 128 pixels: the plug-in bias is about 3 * 3 / (2 * 16384 * ln 2) = 4e-4 bits
    levels = torch.tensor([-1.0, -1 / 3, 1 / 3, 1.0], dtype=torch.float64)
    a = levels[torch.randint(0, 4, (1, 1, 128, 128), generator=gen(1))]
    b = levels[torch.randint(0, 4, (1, 1, 128, 128), generator=gen(2))]
    assert entropy(a).item() == pytest.approx(2.0, abs=0.01)
    assert 0 <= mutual_information(a, [b]).item() < 0.01


def test_mutual_information_sums_over_sources():
    F, a, b = texture(16, 3), texture(16, 4), texture(16, 5)
    both = mutual_information(F, torch.stack([a, b]))
    assert both.item() == pytest.approx((mutual_information(F, [a]) + mutual_information(F, [b])).item(), rel=1e-12)


def test_correlation_is_one_minus_one_and_affine_invariant():
    F, a = texture(16, 6), texture(16, 7)
    assert correlation(F, [F]).item() == pytest.approx(1.0, abs=1e-12)
    assert correlation(F, [-F]).item() == pytest.approx(-1.0, abs=1e-12)
    assert correlation(F, [F, -F]).item() == pytest.approx(0.0, abs=1e-12), "the mean over sources"
    r = correlation(F, [a]).item()
    assert abs(r) < 0.5
    assert correlation(0.5 * F + 0.2, [0.3 * a - 0.1]).item() == pytest.approx(r, rel=1e-9)


def test_correlation_with_a_constant_image_is_nan():
    assert math.isnan(correlation(texture(8, 8), [torch.zeros(1, 1, 8, 8)]).item())


def _q_best():
    """Q_g(1) Q_a(1) with the Petrovic-Xydeas constants: the score of a fusion that keeps every edge."""
    return 0.9994 / (1 + math.exp(-15 * (1 - 0.5))) * 0.9879 / (1 + math.exp(-22 * (1 - 0.8)))


def test_qabf_of_a_perfect_fusion_is_its_documented_maximum():
    a = texture(16, 9)
    assert _q_best() == pytest.approx(0.9748, abs=1e-4)
    assert qabf(a, a, a).item() == pytest.approx(_q_best(), rel=1e-12)


def test_qabf_drops_when_the_fusion_loses_a_sources_edges():
    cols = torch.arange(24)
    left, top = (cols < 12)[None, :], (cols < 12)[:, None]
    a = torch.where(left & (cols[None, :] % 4 < 2), 0.8, -0.2).expand(24, 24)  # vertical stripes on the left
    b = torch.where(~left & (cols[:, None] % 4 < 2) & ~top, 0.6, -0.2)  # horizontal stripes in the bottom right
    a, b = a[None, None].double(), b[None, None].double()
    keep = torch.where(left, a, b)
    q_keep, q_lose = qabf(keep, a, b).item(), qabf(b, a, b).item()
    assert q_keep > q_lose + 0.3, (q_keep, q_lose)
    assert qabf(keep, b, a).item() == pytest.approx(q_keep, rel=1e-12), "symmetric in the sources"


def test_qabf_of_flat_sources_is_nan():
    flat = torch.zeros(1, 1, 8, 8)
    assert math.isnan(qabf(texture(8, 10), flat, flat).item())


def test_fusion_scores_holds_every_metric_and_qabf_only_for_two_sources():
    a, b = texture(16, 11, channels=3), texture(16, 12)  # a colour and a grey source
    F = average_fusion([a, b.expand(1, 3, 16, 16)])
    two = fusion_scores(F, [a, b], target=a)
    assert list(two) == ["EN", "SD", "SF", "AG", "EI", "MI", "CC", "Qabf", "PSNR", "SSIM"]
    assert all(v.shape == (1,) and v.dtype == torch.float64 for v in two.values())
    assert two["Qabf"].item() == pytest.approx(qabf(F, a, b).item())
    assert two["PSNR"].item() == pytest.approx(psnr(F, a).item())
    three = fusion_scores(F, [a, b, a])
    assert "Qabf" not in three and "PSNR" not in three
    assert three["MI"].item() == pytest.approx((2 * mutual_information(F, [a]) + mutual_information(F, [b])).item())


# ---------------------------------------------------------------------------------------------------------------------
# Baselines


def _multi_focus(size=32, seed=13):
    """A texture, blurred (5x5 box) on its left half in source 0 and on its right half in source 1."""
    sharp = texture(size, seed)
    blurred = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(sharp, (2, 2, 2, 2), mode="replicate"), 5, 1)
    left = (torch.arange(size) < size // 2).expand(size, size)
    return sharp, torch.stack([torch.where(left, blurred, sharp), torch.where(left, sharp, blurred)]), left


def test_local_variance_weights_pick_the_sharp_source():
    sharp, sources, left = _multi_focus()
    w = local_variance_weights(sources, window=7)
    assert w.shape == (2, 1, 1, 32, 32)
    away = ((torch.arange(32) - 15.5).abs() > 4).expand(32, 32)  # more than 4 columns from the focus boundary
    agree = (w[1, 0, 0] == 1) == left
    assert agree[away].double().mean() > 0.9
    err_selected = (local_variance_fusion(sources, window=7) - sharp)[:, :, away].square().mean()
    err_average = (average_fusion(sources) - sharp)[:, :, away].square().mean()
    assert err_selected < 0.2 * err_average, (err_selected, err_average)


def test_local_variance_weights_sum_to_one_and_swap_with_the_sources():
    _, sources, _ = _multi_focus(16, 14)
    w = local_variance_weights(sources, window=5, smooth=3)
    torch.testing.assert_close(w.sum(0), torch.ones(1, 1, 16, 16, dtype=w.dtype))
    torch.testing.assert_close(local_variance_weights(sources.flip(0), window=5, smooth=3), w.flip(0))


def test_identical_sources_share_the_weight_equally():
    a = texture(12, 15, channels=3)
    w = local_variance_weights([a, a, a], window=3)
    torch.testing.assert_close(w, torch.full_like(w, 1 / 3))
    torch.testing.assert_close(local_variance_fusion([a, a, a], window=3), a)


@pytest.mark.parametrize("size", [24, 32])
def test_mertens_fusion_of_identical_sources_is_the_source(size):
    a = texture(size, 16, channels=3) * 0.9
    torch.testing.assert_close(mertens_fusion([a, a]), a)
    torch.testing.assert_close(mertens_fusion(torch.stack([a, a, a]).float(), levels=2), a.float())


def test_mertens_fusion_stays_in_range_on_odd_sizes():
    x = torch.rand(3, 2, 3, 21, 19, generator=gen(17)) * 2 - 1
    out = mertens_fusion(x, levels=5)
    assert out.shape == (2, 3, 21, 19) and out.dtype == torch.float32
    assert out.min() >= -1 and out.max() <= 1


def test_mertens_fusion_prefers_the_well_exposed_source():
    bright = (torch.arange(32) >= 16).expand(32, 32)
    truth = torch.where(bright, 0.4, -0.4) + 0.3 * texture(32, 18, channels=3)
    under = torch.where(bright, truth, -1.0)  # the dark half crushed to black
    over = torch.where(bright, 1.0, truth)  # the bright half burnt to white
    per_pixel = mertens_fusion([under, over], levels=1)  # no pyramid: the normalised weights themselves
    assert psnr(per_pixel, truth).item() > 60, "the weights pick the well-exposed source at every pixel"
    fused, mean = psnr(mertens_fusion([under, over]), truth).item(), psnr(average_fusion([under, over]), truth).item()
    assert fused > mean + 4, (fused, mean)


# ---------------------------------------------------------------------------------------------------------------------
# Bad input


def test_bad_input_is_refused_with_what_was_expected():
    img = torch.zeros(1, 1, 8, 8)
    with pytest.raises(ValueError, match="at least 4 dimensions"):
        entropy(torch.zeros(8, 8))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        entropy(torch.zeros(1, 1, 1, 8, 8))
    with pytest.raises(TypeError, match="floating"):
        std_dev(torch.zeros(1, 1, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="at least 3 x 3"):
        edge_intensity(torch.zeros(1, 1, 2, 8))
    with pytest.raises(ValueError, match=r"sources\[1\] has shape"):
        mutual_information(img, [img, torch.zeros(1, 1, 8, 7)])
    with pytest.raises(TypeError, match="sequence"):
        correlation(img, "img")
    with pytest.raises(ValueError, match=r"\(K, B, C, H, W\)"):
        correlation(img, img)
    with pytest.raises(ValueError, match=r"B has shape \(2, 1, 8, 8\); expected the batch size"):
        qabf(img, img, torch.zeros(2, 1, 8, 8))
    with pytest.raises(TypeError, match=r"A must be a torch\.Tensor"):
        qabf(img, img.numpy(), img)
    with pytest.raises(ValueError, match="at least 2 images"):
        local_variance_weights([img])
    with pytest.raises(ValueError, match="at least 2 images"):
        mertens_fusion(img[None])
    with pytest.raises(ValueError, match="shape"):
        average_fusion([img, torch.zeros(1, 3, 8, 8)])
    with pytest.raises(ValueError, match="odd integer"):
        local_variance_weights([img, img], window=4)
    with pytest.raises(ValueError, match="larger than the images"):
        local_variance_fusion([img, img], window=9)
    with pytest.raises(ValueError, match="levels must be at most 4"):
        mertens_fusion([img, img], levels=5)
    with pytest.raises(ValueError, match="sigma"):
        mertens_fusion([img, img], sigma=0)
    with pytest.raises(ValueError, match="NaN"):
        fusion_scores(img, [img, torch.full((1, 1, 8, 8), float("nan"))])


def test_region_psnr_is_psnr_over_the_region_only():
    from diffmath.fusion import region_psnr
    from diffmath.metrics import psnr

    g = torch.Generator().manual_seed(0)
    target = torch.rand(2, 1, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    F = target.clone()
    F[..., :4] += 0.1  # error 0.1 on the left half, exact on the right
    left = torch.zeros(2, 1, 8, 8, dtype=torch.float64)
    left[..., :4] = 1
    assert torch.allclose(
        region_psnr(F, target, left), torch.full((2,), 10 * math.log10(4 / 0.01), dtype=torch.float64)
    )
    assert torch.isinf(region_psnr(F, target, 1 - left)).all()
    assert torch.allclose(region_psnr(F, target, torch.ones_like(left)), psnr(F, target))
    empty = torch.zeros_like(left)
    empty[0, ..., 0] = 1
    assert torch.isnan(region_psnr(F, target, empty)[1]) and torch.isfinite(region_psnr(F, target, empty)[0])
    with pytest.raises(ValueError, match="mask must have shape"):
        region_psnr(F, target, left[:1])
