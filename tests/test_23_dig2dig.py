"""Lesson 23: the stationary Gaussian prior is exact (eqs. 23.8-23.9), the diffusion information gains and their
weights behave as eqs. 23.2-23.4 say, and the fusion runs unchanged on exact, toy and image models."""

import itertools
import math

import pytest
import torch

import diffmath as dm
from diffmath.exact.mixtures import ExactModel, GaussianMixture
from diffmath.exact.stationary import StationaryGaussian
from diffmath.guide import dig
from diffmath.metrics import psnr
from diffmath.nets.mlp import MLP
from diffmath.nets.unet import UNet

D = torch.float64
SCH = dm.get_schedule("vp-cosine")


def gen(seed):
    return torch.Generator().manual_seed(seed)


def fields(n, size=16, seed=0, sd=1.0):
    """Smooth random fields in [-1, 1]: a textured image prior to fit."""
    z = torch.randn(n, 1, size, size, generator=gen(seed), dtype=D)
    return (3 * dig.gaussian_blur(z, sd)).clamp(-1, 1)


@pytest.fixture(scope="module")
def prior():
    return StationaryGaussian.fit(fields(512, seed=0), SCH, prediction="x0")


def multi_focus(x, blur=1.5):
    m = torch.zeros_like(x[:, :1])
    m[..., : x.shape[-1] // 2] = 1
    b = dig.gaussian_blur(x, blur)
    return torch.stack([m * x + (1 - m) * b, (1 - m) * x + m * b]), torch.stack([m, 1 - m])


# ------------------------------------------------------------------------------------------------ the exact prior
def test_stationary_posterior_mean_is_gaussian_conditioning():
    imgs = fields(64, size=4, seed=1, sd=0.7)
    model = StationaryGaussian.fit(imgs, SCH, prediction="x0")
    n = 16
    basis = torch.eye(n, dtype=D).reshape(n, 1, 4, 4)
    # the covariance, column by column: Sigma e_j = F^-1 P F e_j
    cov = torch.fft.ifft2(model.power * torch.fft.fft2(basis, norm="ortho"), norm="ortho").real.reshape(n, n).T
    assert torch.allclose(cov, cov.T, atol=1e-12)
    xt = torch.randn(3, 1, 4, 4, generator=gen(2), dtype=D)
    m = model.mean.item()
    for t in (0.2, 0.5, 0.9):
        c = SCH.coefficients(torch.tensor(t, dtype=D))
        a, b = float(c.a), float(c.b)
        want = (
            m
            + (
                a * cov @ torch.linalg.solve(a * a * cov + b * b * torch.eye(n, dtype=D), (xt - a * m).reshape(3, n).T)
            ).T
        )
        got = model.posterior_mean(xt, t)
        assert torch.allclose(got.reshape(3, n), want, atol=1e-9, rtol=0)


def test_stationary_model_has_the_one_interface_and_consistent_predictions(prior):
    dm.check_model(prior)
    eps_model = StationaryGaussian(prior.power, prior.mean, SCH, prediction="eps")
    xt = torch.randn(4, 1, 16, 16, generator=gen(3), dtype=D)
    t = torch.full((4,), 0.4, dtype=D)
    c = SCH.coefficients(t)
    x0 = prior(xt, t)
    eps = eps_model(xt, t)
    assert torch.allclose(c.a.reshape(-1, 1, 1, 1) * x0 + c.b.reshape(-1, 1, 1, 1) * eps, xt, atol=1e-12)


def test_fit_recovers_the_power_of_exact_draws(prior):
    n = 4000
    refit = StationaryGaussian.fit(prior.sample(n, gen(4)), SCH)
    ratio = refit.power / prior.power
    # each periodogram value is exponential (chi^2_1 at the real frequencies): sd <= sqrt(2) P per draw
    assert (ratio - 1).abs().max() < 5 * math.sqrt(2) / math.sqrt(n), (ratio - 1).abs().max()
    assert abs(refit.mean.item() - prior.mean.item()) < 5 * prior.power[0, 0, 0].sqrt().item() / math.sqrt(n * 256)


def test_monte_carlo_gain_matches_the_closed_form(prior):
    c = fields(2, seed=5)
    M = 3000
    reps = c.repeat(M, 1, 1, 1)
    src = torch.stack([reps, reps.flip(0)])  # two sources: the images and their order reversed
    t, s = 0.7, 0.4
    noise = torch.randn(reps.shape, generator=gen(6), dtype=D)
    hi = dig.reconstruction_errors(prior, SCH, src, t, noise).sum((2, 3, 4))
    lo = dig.reconstruction_errors(prior, SCH, src, s, noise).sum((2, 3, 4))
    gain = (hi - lo)[0].reshape(M, 2)  # source 0, image j at index j of each repeat
    want = prior.expected_error(c, t) - prior.expected_error(c, s)
    se = gain.std(0) / math.sqrt(M)
    assert ((gain.mean(0) - want).abs() < 4 * se).all(), (gain.mean(0), want, se)
    # the errors alone, too (the level's expectation, eq. 23.9)
    e_hi = hi[0].reshape(M, 2)
    assert ((e_hi.mean(0) - prior.expected_error(c, t)).abs() < 4 * e_hi.std(0) / math.sqrt(M)).all()


def test_coarse_sources_gain_at_higher_noise_than_textured_ones(prior):
    """The spatio-temporal imbalance: a smooth image's gain peaks earlier in sampling than a textured one's."""
    smooth, textured = fields(1, seed=7, sd=3.0), fields(1, seed=7, sd=0.5)
    ts = torch.linspace(0.98, 0.02, 49, dtype=D).tolist()

    def peak(c):
        errs = [prior.expected_error(c, t).item() for t in ts]
        gains = [e1 - e2 for e1, e2 in itertools.pairwise(errs)]
        return ts[max(range(len(gains)), key=gains.__getitem__)]

    assert peak(smooth) > peak(textured) + 0.1


# ------------------------------------------------------------------------------------------------ the weights
def test_weights_sum_to_one_per_pixel_and_sharpen_as_tau_falls(prior):
    x = fields(4, seed=8)
    src, _ = multi_focus(x)
    grid = SCH.grid(20, "quadratic")
    spreads = []
    for tau in (1.0, 0.1, 0.01):
        for spatial in (True, False):
            plan = dig.dig_weights(
                prior, SCH, src, grid, interval=5, temperature=tau, spatial=spatial, generator=gen(0)
            )
            assert len(plan.steps) == 20 and plan.refreshes == [0, 5, 10, 15]
            for w in plan.steps:
                assert w.shape == ((2, 4, 1, 16, 16) if spatial else (2, 4, 1, 1, 1))
                assert torch.allclose(w.sum(0), torch.ones((), dtype=D), atol=1e-12) and (w >= 0).all()
        spreads.append((plan.steps[0] - 0.5).abs().mean().item())
    assert spreads[0] < spreads[1] < spreads[2]


def test_identical_sources_give_exactly_one_over_k_and_the_fixed_trajectory(prior):
    x = fields(3, seed=9)
    src = torch.stack([x, x, x])
    grid = SCH.grid(12, "quadratic")
    plan = dig.dig_weights(prior, SCH, src, grid, interval=3, temperature=0.01, generator=gen(0))
    for w in plan.steps:
        assert (w == 1.0 / 3).all()
    for eta in (0.0, 1.0):
        for guidance in ("x0", "em", "dps"):
            kw = dict(guidance=guidance, eta=eta, interval=3, temperature=0.01, scale=0.5)
            a = dig.fuse(prior, src, grid, SCH, weights="dig", generator=gen(1), **kw).image
            b = dig.fuse(prior, src, grid, SCH, weights="fixed", generator=gen(1), **kw).image
            assert torch.equal(a, b), (eta, guidance)


def test_swapping_sources_swaps_the_weights(prior):
    src, _ = multi_focus(fields(2, seed=10))
    grid = SCH.grid(10, "quadratic")
    w = dig.dig_weights(prior, SCH, src, grid, interval=2, temperature=0.1, generator=gen(3))
    w_swapped = dig.dig_weights(prior, SCH, src.flip(0), grid, interval=2, temperature=0.1, generator=gen(3))
    for u, v in zip(w.steps, w_swapped.steps, strict=True):
        assert torch.equal(u, v.flip(0))
    # three sources in a cyclic order: the same up to the order of the softmax's sum (the last bit)
    three = torch.cat([src, src[:1] * 0.5])
    perm = [2, 0, 1]
    a = dig.dig_weights(prior, SCH, three, grid, interval=2, generator=gen(3))
    b = dig.dig_weights(prior, SCH, three[perm], grid, interval=2, generator=gen(3))
    assert torch.allclose(a.steps[0][perm], b.steps[0], atol=1e-15, rtol=0)


def test_dig_weights_favour_the_sharp_source(prior):
    x = fields(8, seed=11)
    src, _ = multi_focus(x)
    grid = SCH.grid(25, "quadratic")
    plan = dig.dig_weights(prior, SCH, src, grid, interval=10, temperature=0.01, generator=gen(4))
    w = plan.steps[10][0]  # source 0's weight at the middle refresh
    left, right = w[..., 4:6].mean().item(), w[..., 10:12].mean().item()  # away from the boundary and the edge
    assert left > 0.6 > 0.4 > right, (left, right)


def test_alignment_covariance_is_zero_for_fixed_weights_and_positive_for_the_oracle(prior):
    x = fields(4, seed=12)
    src, masks = multi_focus(x)
    x0 = dig.gaussian_blur(x, 1.0)  # a guess that misses the detail
    fixed = torch.full((2, 4, 1, 1, 1), 0.5, dtype=D)
    assert (dig.alignment_covariance(fixed, src, x0, x) == 0).all()
    assert (dig.alignment_covariance(masks, src, x0, x) > 0).all()
    assert (dig.alignment_covariance(masks.flip(0), src, x0, x) < 0).all()


# ------------------------------------------------------------------------------------------------ fusion
def test_fusion_ranks_oracle_above_sharp_dig_above_fixed(prior):
    """Multi-focus with the exact prior, 100 DDIM steps, 16 images. Over image seeds 13-17 the gaps were oracle - DIG
    47.5-48.4 dB, DIG - fixed 6.9-7.8 dB, fixed - average -0.5 to -0.3 dB: the margins sit far outside that spread."""
    x = fields(16, seed=13)
    src, masks = multi_focus(x)
    grid = SCH.grid(100, "uniform")
    scores = {}
    for name, kw in {
        "fixed": dict(weights="fixed"),
        "dig": dict(interval=20, temperature=0.01),
        "oracle": dict(weights=masks),
    }.items():
        out = dig.fuse(prior, src, grid, SCH, guidance="em", scale=0.1, generator=gen(0), **kw).image
        scores[name] = psnr(out.clamp(-1, 1), x).mean().item()
    average = psnr(src.mean(0), x).mean().item()
    assert scores["oracle"] > scores["dig"] + 20, scores
    assert scores["dig"] > scores["fixed"] + 5, scores
    assert abs(scores["fixed"] - average) < 1, (scores, average)  # 1/K weights are about the plain average


def test_fusion_runs_unchanged_on_a_mixture_a_toy_mlp_and_a_unet():
    # vectors: an exact 2-D mixture and a random MLP, one weight per coordinate
    gmm = GaussianMixture(
        torch.full((2,), 0.5), torch.tensor([[-2.0, 0.0], [2.0, 0.0]]), 0.1 * torch.eye(2).expand(2, 2, 2)
    )
    exact = ExactModel(gmm, SCH, prediction="v")
    pts = gmm.sample(6, gen(0))
    src = torch.stack([pts, pts + torch.tensor([0.0, 1.0], dtype=D)])
    grid = SCH.grid(10, "quadratic")
    for model in (exact, MLP(2, hidden=16, depth=2, prediction="v").to(D)):
        out = dig.fuse(model, src, grid, SCH, temperature=0.1, interval=3, generator=gen(1))
        assert out.image.shape == (6, 2) and torch.isfinite(out.image).all()
        assert out.weights.steps[0].shape == (2, 6, 2)
        assert out.model_calls == 10 + 2 * 5  # steps, plus K sources at 5 levels (0, 3, 6, 9, 10)
    # images: a tiny random UNet (float32), every guidance, DPS through the network
    net = UNet(3, (8, 16), prediction="v").eval()
    imgs = torch.rand(2, 2, 3, 8, 8, generator=gen(2)) * 2 - 1
    for guidance in dig.GUIDANCE:
        out = dig.fuse(net, imgs, SCH.grid(4, "quadratic"), SCH, guidance=guidance, interval=2, generator=gen(3))
        assert out.image.shape == (2, 3, 8, 8) and out.image.dtype == torch.float32
        assert torch.isfinite(out.image).all()


def test_dps_guidance_pulls_the_guess_towards_the_sources(prior):
    x = fields(4, seed=14)
    src, _ = multi_focus(x)
    grid = SCH.grid(10, "quadratic")
    plan = dig.fixed_weights(src, 10)
    xt = torch.randn(4, 1, 16, 16, generator=gen(5), dtype=D)
    t = grid[3].item()
    target = dig.weighted_target(src, plan.steps[3])
    base = dig.FusionGuided(prior, SCH, src, plan, grid, scale=0.0)
    assert torch.allclose(base(xt, torch.tensor(t, dtype=D)), prior(xt, torch.tensor(t, dtype=D)), atol=1e-12)
    pulled = dig.FusionGuided(prior, SCH, src, plan, grid, scale=5.0)
    c = SCH.coefficients(torch.tensor(t, dtype=D))
    x0_b = prior(xt, torch.tensor(t, dtype=D))
    x0_p = pulled(xt, torch.tensor(t, dtype=D))  # the model predicts x0, so the wrapper does too
    assert pulled.prediction == "x0" and float(c.a) > 0
    assert ((x0_p - target).norm() < (x0_b - target).norm()).item()
    with pytest.raises(ValueError, match="not a step of its grid"):
        pulled(xt, torch.tensor(0.123, dtype=D))


def test_bad_input_is_named():
    prior = StationaryGaussian.fit(fields(8, size=8, seed=15), SCH, prediction="x0")
    x = fields(2, size=8, seed=16)
    src = torch.stack([x, x])
    grid = SCH.grid(5, "quadratic")
    with pytest.raises(ValueError, match="K >= 2"):
        dig.fuse(prior, src[:1], grid, SCH)
    with pytest.raises(ValueError, match="same shape"):
        dig.fuse(prior, [x, x[:1]], grid, SCH)
    with pytest.raises(TypeError, match="sources must be"):
        dig.fuse(prior, [x, "image"], grid, SCH)
    with pytest.raises(ValueError, match="weights must have shape"):
        dig.fuse(prior, src, grid, SCH, weights=torch.full((3, 2, 1, 8, 8), 1 / 3, dtype=D))
    with pytest.raises(ValueError, match="sum to 1"):
        dig.fuse(prior, src, grid, SCH, weights=torch.full((2, 2, 1, 8, 8), 0.6, dtype=D))
    with pytest.raises(ValueError, match="weights must be one of"):
        dig.fuse(prior, src, grid, SCH, weights="uniform")
    with pytest.raises(ValueError, match="guidance must be one of"):
        dig.fuse(prior, src, grid, SCH, guidance="ddfm")
    with pytest.raises(ValueError, match="temperature"):
        dig.fuse(prior, src, grid, SCH, temperature=0.0)
    with pytest.raises(ValueError, match="interval"):
        dig.fuse(prior, src, grid, SCH, interval=0)
    with pytest.raises(ValueError, match="scale"):
        dig.fuse(prior, src, grid, SCH, scale=-1.0)
    with pytest.raises(ValueError, match="sources' shape"):
        dig.fuse(prior, src, grid, SCH, x=x[:1])
    with pytest.raises(ValueError, match="one entry per step"):
        dig.FusionGuided(prior, SCH, src, dig.fixed_weights(src, 4), grid, 1.0)
    with pytest.raises(ValueError, match="shape"):
        StationaryGaussian(prior.power, prior.mean, SCH)(torch.zeros(2, 1, 4, 4, dtype=D), 0.5)
    with pytest.raises(ValueError, match="positive"):
        StationaryGaussian(-prior.power, prior.mean, SCH)


def test_dig_rewards_a_noisy_copy_late_in_sampling_the_failure_mode(prior):
    """A clean image and a noisy copy of it: the copy holds no extra information. Early on (t from 1 to ~0.4) its
    error hardly falls, since the noise sits far below the noise level, and its weight is under 1/2; at the middle
    refresh the prior starts to reconstruct the noise, the copy's error falls further than the clean image's and it
    gets the larger weight, the more so the noisier it is. Fixed weights cannot make this mistake."""
    x = fields(8, seed=17)
    late = []
    for sd in (0.05, 0.1, 0.2):
        noisy = (x + sd * torch.randn(x.shape, generator=gen(18), dtype=D)).clamp(-1, 1)
        src = torch.stack([x, noisy])
        plan = dig.dig_weights(prior, SCH, src, SCH.grid(25, "quadratic"), interval=10, generator=gen(0))
        assert plan.steps[0][1].mean() < 0.4
        late.append(plan.steps[10][1].mean().item())
    assert 0.5 < late[0] < late[1] < late[2], late
    assert late[2] > 0.7, late
