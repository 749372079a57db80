"""Lesson 18: conditional score matching exceeds score matching by a theta-free trace; batch score targets."""

import itertools
import math

import pytest
import torch

import diffmath as dm
import toydata as td
from diffmath.scorematching import batch_target_error, score_gap, score_target, sm_loss

f64 = torch.float64
RING = td.eight_gaussians_mixture()


def _ring_draws(N, seed, a=1.0, b=0.5):
    g = torch.Generator().manual_seed(seed)
    x0, eps = RING.sample(N, g, dtype=f64), torch.randn(N, 2, generator=g, dtype=f64)
    return x0, eps, a * x0 + b * eps


def test_csm_minus_sm_is_the_same_for_every_score_and_matches_the_trace():
    """Eq. 18.6 on the ring at a = 1, b = 0.5, N = 2e5 shared draws: for four score models (zero, exact, a distorted
    exact, a random MLP) the per-sample difference CSM - SM minus the predicted trace (eq. 18.7) averages to 0 within
    4 standard errors, the gaps agree pairwise within 4 SE, and each is within 1% of the prediction."""
    a, b, N = 1.0, 0.5, 200_000
    x0, eps, x_t = _ring_draws(N, 0, a, b)
    pred = score_gap(RING, x_t, a, b)
    exact = lambda x: RING.score(x, a, b)  # noqa: E731
    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.Tanh(), torch.nn.Linear(32, 2)).double()
    scores = {
        "zero": torch.zeros_like,
        "exact": exact,
        "distorted": lambda x: 0.5 * exact(x) + torch.tanh(x) - 0.3,
        "mlp": lambda x: net(x).detach(),
    }
    gaps = {}
    for name, s in scores.items():
        diff = sm_loss(s, x0, eps, a, b, "conditional") - sm_loss(s, x0, eps, a, b, "exact", source=RING)
        resid = diff - pred
        assert abs(resid.mean().item()) < 4 * resid.std().item() / math.sqrt(N), name
        assert abs(diff.mean().item() / pred.mean().item() - 1) < 0.01, name
        gaps[name] = diff
    for (n1, d1), (n2, d2) in itertools.combinations(gaps.items(), 2):
        dd = d1 - d2
        assert abs(dd.mean().item()) < 4 * dd.std().item() / math.sqrt(N), (n1, n2)
    # the losses themselves differ a lot between the models: the test can see a theta-dependence if there were one
    spread = [sm_loss(s, x0, eps, a, b, "exact", source=RING).mean().item() for s in scores.values()]
    assert max(spread) - min(spread) > 1.0


def test_the_gap_is_the_noise_trace_minus_the_fisher_information():
    """Eq. 18.7's two forms: (a^2/b^4) E tr Cov[x0|x_t] = d/b^2 - E||grad log p_t||^2 (within 4 SE, N = 1e5), and the
    trace is non-negative at every point (Jensen, eq. 18.5)."""
    for b in (0.1, 0.5, 2.0):
        _, _, x_t = _ring_draws(100_000, 1, 1.0, b)
        pred = score_gap(RING, x_t, 1.0, b)
        assert pred.min().item() >= 0
        other = 2 / b**2 - (RING.score(x_t, 1.0, b) ** 2).sum(1)
        resid = pred - other  # equal on average over p_t, not point by point
        assert abs(resid.mean().item()) < 4 * resid.std().item() / math.sqrt(x_t.shape[0]), b


@pytest.mark.parametrize(("a", "b", "s0", "d"), [(1.0, 0.5, 0.7, 2), (0.6, 0.8, 1.3, 3), (0.99, 0.05, 0.2, 1)])
def test_the_gap_of_gaussian_data_is_in_closed_form(a, b, s0, d):
    """Eq. 18.8: for data N(m, s0^2 I) the trace is d a^2 s0^2 / (b^2 (a^2 s0^2 + b^2)) at every x_t (1e-12)."""
    gauss = dm.GaussianMixture(
        torch.ones(1, dtype=f64), torch.full((1, d), 0.3, dtype=f64), torch.tensor([s0**2], dtype=f64)
    )
    x = torch.randn(50, d, generator=torch.Generator().manual_seed(0), dtype=f64) * 3
    expected = d * a**2 * s0**2 / (b**2 * (a**2 * s0**2 + b**2))
    assert (score_gap(gauss, x, a, b) - expected).abs().max().item() < 1e-12 * expected


def _exact_batch_mean(points, weights, x, a, b, n, own):
    """E[s_hat | x_t] by enumerating every reference batch of a tiny discrete data set (eqs. 18.9-18.10)."""
    cond = [-(x - a * p) / b**2 for p in points]
    kern = [math.exp(-((x - a * p) ** 2) / (2 * b**2)) for p in points]
    total, norm = 0.0, 0.0
    for idx in itertools.product(range(len(points)), repeat=n):
        prob = math.prod(weights[i] for i in idx) * (kern[idx[0]] if own else 1.0)
        w = [kern[i] for i in idx]
        total += prob * sum(wi * cond[i] for wi, i in zip(w, idx, strict=True)) / sum(w)
        norm += prob
    return total / norm


def test_the_batch_target_is_unbiased_for_every_batch_size_and_the_plugin_is_not():
    """Eq. 18.10 by exact enumeration on three weighted points in 1-D: with the point that made x_t in the batch,
    E[s_hat | x_t] equals the score to 1e-12 for n = 1..4; the independent plug-in (eq. 18.9) misses it by more than
    0.02 at n = 2 and its error shrinks with n."""
    points, weights, a, b = [-1.0, 0.4, 1.5], [0.2, 0.5, 0.3], 0.9, 0.7
    data = dm.EmpiricalData(torch.tensor(points, dtype=f64)[:, None], torch.tensor(weights, dtype=f64))
    for x in (-1.7, 0.1, 0.9, 2.4):
        score = data.score(torch.tensor([[x]], dtype=f64), a, b).item()
        for n in (1, 2, 3, 4):
            assert abs(_exact_batch_mean(points, weights, x, a, b, n, True) - score) < 1e-12
        plugin = [abs(_exact_batch_mean(points, weights, x, a, b, n, False) - score) for n in (2, 3, 4)]
        assert plugin[0] > 0.02 and plugin[0] > plugin[1] > plugin[2], (x, plugin)


def test_batch_target_error_measures_zero_bias_with_the_own_point_and_a_shrinking_plugin_bias():
    """Sec. 18.5 by Monte Carlo on 256 ring points (a = 1, b = 0.5, 100 x_t, 400 batches each): the batch target's
    bias^2 is 0 within 4 SE at n = 4, 16, 64 while its error falls; the plug-in's bias^2 is positive (> 4 SE) and
    falls by more than 4x per 4x of n; its error (the excess of the plug-in loss at the exact score) falls too."""
    g = torch.Generator().manual_seed(5)
    data = dm.EmpiricalData(RING.sample(256, g, dtype=f64))
    x_t = data.sample(100, g, dtype=f64) + 0.5 * torch.randn(100, 2, generator=g, dtype=f64)
    own = [batch_target_error(data, x_t, 1.0, 0.5, n, 400, True, g) for n in (4, 16, 64)]
    plug = [batch_target_error(data, x_t, 1.0, 0.5, n, 400, False, g) for n in (4, 16, 64)]
    for e in own:
        assert abs(e.bias_sq) < 4 * e.bias_sq_se, e
    assert own[0].mse > own[1].mse > own[2].mse
    for e in plug:
        assert e.bias_sq > 4 * e.bias_sq_se, e
    assert plug[0].bias_sq > 4 * plug[1].bias_sq > 16 * plug[2].bias_sq
    assert plug[0].mse > plug[1].mse > plug[2].mse
    assert all(p.mse > o.mse for p, o in zip(plug, own, strict=True)), "the plug-in adds bias to the same spread"


def test_batch_targets_and_their_estimates():
    """The targets of score_target: the conditional one is -eps/b; the batch and plug-in ones are the self-normalised
    scores of their reference sets, and 'conditional' sm_loss is lesson 5's dsm_loss."""
    x0, eps, _ = _ring_draws(64, 2)
    x_t, c = score_target(x0, eps, 1.0, 0.5, "conditional")
    assert torch.equal(c, -eps / 0.5)
    _, batch = score_target(x0, eps, 1.0, 0.5, "batch")
    assert torch.allclose(batch, dm.EmpiricalData(x0).score(x_t, 1.0, 0.5), atol=1e-14)
    # one-point batch: the batch target is the conditional one
    _, one = score_target(x0[:1], eps[:1], 1.0, 0.5, "batch")
    assert torch.allclose(one, -eps[:1] / 0.5, atol=1e-12)
    ref = RING.sample(32, torch.Generator().manual_seed(9), dtype=f64)
    _, plug = score_target(x0, eps, 1.0, 0.5, "plugin", reference=ref)
    assert torch.allclose(plug, dm.EmpiricalData(ref).score(x_t, 1.0, 0.5), atol=1e-14)
    s = lambda x: -x  # noqa: E731
    assert torch.allclose(sm_loss(s, x0, eps, 1.0, 0.5, "conditional"), dm.sde.dsm_loss(s, x0, eps, 1.0, 0.5))


def test_score_matching_bad_input():
    x0, eps, x_t = _ring_draws(8, 3)
    with pytest.raises(ValueError, match="target must be one of"):
        score_target(x0, eps, 1.0, 0.5, "denoising")
    with pytest.raises(TypeError, match="source=GaussianMixture"):
        score_target(x0, eps, 1.0, 0.5, "exact")
    with pytest.raises(ValueError, match="reference="):
        sm_loss(torch.zeros_like, x0, eps, 1.0, 0.5, "plugin")
    with pytest.raises(ValueError, match="reference must hold points of shape"):
        score_target(x0, eps, 1.0, 0.5, "plugin", reference=torch.zeros(4, 3, dtype=f64))
    with pytest.raises(ValueError, match="b > 0"):
        score_gap(RING, x_t, 1.0, 0.0)
    with pytest.raises(TypeError, match="finite real number"):
        sm_loss(torch.zeros_like, x0, eps, torch.tensor(1.0), 0.5)
    with pytest.raises(TypeError, match="callable"):
        sm_loss("score", x0, eps, 1.0, 0.5)
    with pytest.raises(TypeError, match="EmpiricalData"):
        batch_target_error(RING, x_t, 1.0, 0.5, 4)
    with pytest.raises(ValueError, match="repeats"):
        batch_target_error(dm.EmpiricalData(x0), x_t, 1.0, 0.5, 4, repeats=1)
    with pytest.raises(ValueError, match="data's shape"):
        batch_target_error(dm.EmpiricalData(x0), torch.zeros(3, 3, dtype=f64), 1.0, 0.5, 4)
