"""Lesson 7: the three estimators of the posterior width, the analytic reverse variance and the negative ELBO."""

import pytest
import torch
from modes import mode_spread, widths_within

import diffmath as dm
import toydata as td
from diffmath.variance import (
    VARIANCES,
    analytic_ddpm,
    exact_sbar2,
    neg_elbo,
    reverse_step_variance,
    sbar2_bounds,
    sbar2_estimate,
)

RING = td.eight_gaussians_mixture()
SCHED = dm.su_linear()
EXACT = RING.model(SCHED, "eps")


def _data(n, seed=0):
    return RING.sample(n, torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize(
    ("method", "times"),
    [("eps-norm", [5, 10, 50]), ("variance", [300, 600, 900]), ("residual", [10, 300, 900])],
)
def test_each_estimator_matches_the_exact_posterior_width_in_its_regime(method, times):
    """Eqs. 7.5-7.7 with the exact mean vs E tr Cov[x0|x_t]/d from the exact posterior covariance, within 4 SE
    (plus 1% for the exact value's own Monte Carlo error)."""
    g = torch.Generator().manual_seed(1)
    t = torch.tensor(times, dtype=torch.float64)
    est = sbar2_estimate(EXACT, _data(8000), t, SCHED, method, g, clip=False)
    ref = exact_sbar2(RING, t, SCHED, 8000, g)
    tol = 4 * torch.sqrt(est.se**2 + ref.se**2) + 0.01 * ref.value
    assert ((est.value - ref.value).abs() <= tol).all(), (est, ref)


def test_the_noise_norm_estimator_is_useless_at_large_t():
    """Eq. 7.6 multiplies every error by b^2/a^2: at t = 900 its standard error exceeds the quantity itself, while
    eq. 7.5's is below 1% of it; clipping (eq. 7.8) brings it back into [0, min(Var x0, b^2/a^2)]."""
    g = torch.Generator().manual_seed(2)
    x0 = _data(4000)
    ref = exact_sbar2(RING, 900.0, SCHED, 4000, g).value
    eps = sbar2_estimate(EXACT, x0, 900.0, SCHED, "eps-norm", g, clip=False)
    var = sbar2_estimate(EXACT, x0, 900.0, SCHED, "variance", g, clip=False)
    assert eps.se > ref and var.se < 0.01 * ref
    clipped = sbar2_estimate(EXACT, x0, 900.0, SCHED, "eps-norm", g, clip=True).value
    assert 0 <= clipped <= sbar2_bounds(SCHED, 900.0, x0.var(0, unbiased=False).mean().item()) + 1e-12


def test_variance_choices_for_any_subsequence():
    """Eqs. 7.3-7.4: the posterior (beta-tilde) variance is the upper (beta-hat) one times b_s^2/b_t^2, the analytic
    one lies between sigma^2 and sigma^2 + c0^2 b_t^2/a_t^2, and on a step into the data end beta-tilde takes beta^2."""
    t = torch.tensor([800.0, 300.0, 40.0], dtype=torch.float64)
    s = torch.tensor([600.0, 100.0, 0.0], dtype=torch.float64)
    up = reverse_step_variance(SCHED, t, s, "upper")
    post = reverse_step_variance(SCHED, t, s, "posterior")
    ratio = SCHED.b(s[:2]) ** 2 / SCHED.b(t[:2]) ** 2
    torch.testing.assert_close(post[:2], up[:2] * ratio, rtol=1e-10, atol=0)
    assert post[2] == up[2]
    low = reverse_step_variance(SCHED, t, s, "analytic", 0.0)
    high = reverse_step_variance(SCHED, t, s, "analytic", (SCHED.b(t) / SCHED.a(t)) ** 2)
    assert (low[:2] == post[:2]).all() and (high >= up - 1e-12).all()


@pytest.fixture(scope="module")
def elbo_table():
    x0 = _data(1500, seed=3)
    table = {}
    for K in (5, 10, 100):
        grid = SCHED.grid(K)
        sbar2 = exact_sbar2(RING, grid[:-1], SCHED, 2000, torch.Generator().manual_seed(4)).value
        table[K] = {v: neg_elbo(EXACT, x0, grid, SCHED, v, sbar2, torch.Generator().manual_seed(5)) for v in VARIANCES}
    return table


def test_analytic_variance_has_the_best_elbo(elbo_table):
    """Eq. 7.9 with the exact mean on the 8-ring (same noise for all choices): analytic <= beta-hat <= beta-tilde at
    K = 5, 10, 100 (measured 1.60/1.63/2.20, 1.09/1.35/1.99, 0.62/0.73/1.43 nats/dim)."""
    for K, row in elbo_table.items():
        a, up, post = (row[v].value for v in ("analytic", "upper", "posterior"))
        assert a < up < post, (K, a, up, post)


def test_elbo_is_bounded_below_by_the_data_entropy(elbo_table):
    """Eq. 7.10: -ELBO >= cross-entropy >= H(p_data)/d = 0.561 nats/dim for the ring (within 4 SE), and it falls
    with K for the analytic choice."""
    x = _data(20000, seed=6)
    lp = RING.log_prob(x) / 2
    entropy, se = -lp.mean(), lp.std() / len(lp) ** 0.5
    assert abs(entropy - 0.561) < 4 * se + 1e-3
    for row in elbo_table.values():
        for est in row.values():
            assert est.value + 4 * est.se >= entropy
    assert elbo_table[5]["analytic"].value > elbo_table[10]["analytic"].value > elbo_table[100]["analytic"].value


def test_analytic_and_beta_hat_tie_at_full_length():
    """K = T = 1000: the analytic and beta-hat ELBOs agree within 4 SE of their paired difference (measured 0.554 vs
    0.569); beta-tilde stays ~0.8 nats/dim worse, all of it from the first steps, where Cov[x0|x_t] ~ (b/a)^2 I."""
    x0 = _data(300, seed=7)
    grid = SCHED.grid(1000)
    sbar2 = exact_sbar2(RING, grid[:-1], SCHED, 64, torch.Generator().manual_seed(8)).value
    res = {v: neg_elbo(EXACT, x0, grid, SCHED, v, sbar2, torch.Generator().manual_seed(9)) for v in VARIANCES}
    gap = res["upper"].value - res["analytic"].value
    assert abs(gap) < 0.05 and res["posterior"].value - res["upper"].value > 0.5


@pytest.fixture(scope="module")
def ring_samples():
    """Ancestral samples of the ring with the exact mean, K = 10 and 20 steps, N = 6000, the same x_T and the same
    noise for every variance choice (paired)."""
    out = {}
    for K in (10, 20):
        g = torch.Generator().manual_seed(10)
        grid = SCHED.grid(K)
        sbar2 = exact_sbar2(RING, grid[:-1], SCHED, 2000, g).value
        x = torch.randn(6000, 2, generator=g, dtype=torch.float64)
        for v in VARIANCES:
            sb = sbar2 if v == "analytic" else None
            *_, last = analytic_ddpm(EXACT, x, grid, SCHED, v, sb, torch.Generator().manual_seed(11))
            out[K, v] = last.x
        out[K, "ddim"] = dm.sample(EXACT, x, grid, SCHED, 0.0)
        *_, last = analytic_ddpm(EXACT, x, grid, SCHED, "analytic", sbar2, torch.Generator().manual_seed(11), eta=0.0)
        out[K, "analytic-ddim"] = last.x
    return out


def test_variance_choices_set_the_mode_width(ring_samples):
    """Ancestral sampling with the exact mean, K = 20, paired: the analytic variance (eq. 7.4) gives every mode an SD
    within 4 SE of 0.15 (about 750 samples a mode, SE 0.004); beta-hat makes the modes wider and beta-tilde
    narrower, each by more than 4 SE of the pooled SD (measured 0.149, 0.170, 0.124, pooled SE 0.0014). Mode weights
    and MMD^2 cannot tell the three apart: all three put every weight within 0.03 of 1/8 and have MMD^2 < 5e-3."""
    fresh = _data(3000, seed=11)
    for v in VARIANCES:
        x = ring_samples[20, v]
        assert (dm.metrics.mode_weights(RING, x) - 1 / 8).abs().max() < 0.03, v
        assert dm.metrics.mmd_rbf(x[:3000], fresh) < 5e-3, v
    ok, spread = widths_within(RING, ring_samples[20, "analytic"], 0.15, n_se=4)
    assert ok, spread
    up, post = (mode_spread(RING, ring_samples[20, v]) for v in ("upper", "posterior"))
    assert up.pooled_sd > 0.15 + 4 * up.pooled_se, up
    assert post.pooled_sd < 0.15 - 4 * post.pooled_se, post


def test_ten_steps_widen_the_modes_for_every_variance(ring_samples):
    """What K = 10 can distinguish: nothing by width. With the exact mean, each of the three variances, and DDIM
    without noise, gives modes wider than 0.15 by more than 4 SE of the pooled SD (measured 0.187, 0.199, 0.196 and
    DDIM 0.189, SE 0.002): at steps of 100 one Gaussian (or Euler) step is too coarse for the multimodal reverse
    step (eq. 7.1), and no variance repairs that."""
    for v in (*VARIANCES, "ddim"):
        spread = mode_spread(RING, ring_samples[10, v])
        assert spread.pooled_sd > 0.15 + 4 * spread.pooled_se, (v, spread)


@pytest.mark.parametrize(("t", "s"), [(600.0, 300.0), (200.0, 100.0), (50.0, 10.0)])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_the_analytic_variance_of_the_ddim_family(t, s, eta):
    """Eqs. 7.11-7.12 by Monte Carlo: draw x0 from the ring, x_t = a_t x0 + b_t eps and x_s from the DDIM-family kernel
    as lesson 4 writes it, a_s x0 + sqrt(b_s^2 - sigma^2) eps + sigma z (eq. 4.6), and take the true reverse mean
    from ddim_step with the exact model and no noise. E||x_s - mean||^2 / d equals
    reverse_step_variance(..., eta) = sigma^2 + lambda^2 sbar^2 within 4 SE (N = 20000, both estimates' SEs), and at
    eta = 0 (sigma = 0: DDIM) it is positive by more than 10 SE: the correction survives a deterministic kernel."""
    N, g = 20_000, torch.Generator().manual_seed(int(t + s + 10 * eta))
    t_, s_ = torch.tensor(t, dtype=torch.float64), torch.tensor(s, dtype=torch.float64)
    ct, cs = SCHED.coefficients(t_), SCHED.coefficients(s_)
    sigma = dm.ddim_coefficients(SCHED, t_, s_, eta)[2]
    x0, eps = _data(N, seed=int(t)), torch.randn(N, 2, generator=g, dtype=torch.float64)
    x_t = ct.a * x0 + ct.b * eps
    x_s = cs.a * x0 + (cs.b**2 - sigma**2).sqrt() * eps + sigma * torch.randn(N, 2, generator=g, dtype=torch.float64)
    mean, _ = dm.ddim_step(EXACT, x_t, t, s, SCHED, eta=eta, noise=torch.zeros_like(x_t))
    r2 = ((x_s - mean) ** 2).mean(1)
    sb = exact_sbar2(RING, t, SCHED, N, g)
    v = reverse_step_variance(SCHED, t, s, "analytic", sb.value, eta)
    lam2 = (v - sigma**2) / sb.value
    se = (r2.var() / N + lam2**2 * sb.se**2).sqrt()
    assert abs(r2.mean() - v) < 4 * se, (r2.mean(), v, se)
    if eta == 0:
        assert sigma == 0 and v > 10 * se


def test_analytic_ddim_restores_the_width_that_ddim_loses(ring_samples):
    """Eq. 7.12 in sampling, K = 20, paired with DDIM: the deterministic DDIM (eta = 0) with the exact mean makes the
    modes too narrow (pooled SD more than 4 SE below 0.15; measured 0.133), while the same mean with the variance
    lambda_0^2 sbar^2 (Analytic-DDIM) gives every mode an SD within 4 SE of 0.15 (measured pooled 0.1475)."""
    ddim = mode_spread(RING, ring_samples[20, "ddim"])
    assert ddim.pooled_sd < 0.15 - 4 * ddim.pooled_se, ddim
    ok, spread = widths_within(RING, ring_samples[20, "analytic-ddim"], 0.15, n_se=4)
    assert ok, spread


def test_variance_bad_input():
    x0 = _data(10)
    with pytest.raises(ValueError, match="method"):
        sbar2_estimate(EXACT, x0, 10.0, SCHED, "mle")
    with pytest.raises(ValueError, match="at least 2"):
        sbar2_estimate(EXACT, x0[:1], 10.0, SCHED)
    with pytest.raises(ValueError, match="kind"):
        reverse_step_variance(SCHED, 10.0, 5.0, "learned")
    with pytest.raises(ValueError, match="sbar2"):
        reverse_step_variance(SCHED, 10.0, 5.0, "analytic")
    with pytest.raises(ValueError, match="s < t"):
        reverse_step_variance(SCHED, 10.0, 10.0, "upper")
    with pytest.raises(ValueError, match=r"eta must lie in \[0, 1\]"):
        reverse_step_variance(SCHED, 10.0, 5.0, "analytic", 0.1, eta=1.5)
    with pytest.raises(ValueError, match='analytic" variance only'):
        reverse_step_variance(SCHED, 10.0, 5.0, "upper", eta=0.5)
    with pytest.raises(ValueError, match="non-negative"):
        list(analytic_ddpm(EXACT, x0, SCHED.grid(5), SCHED, "analytic", torch.ones(5), eta=-0.1))
    with pytest.raises(ValueError, match=r"shape \(K,\)"):
        neg_elbo(EXACT, x0, SCHED.grid(5), SCHED, "analytic", torch.ones(4))
    with pytest.raises(ValueError, match="end at t = 0"):
        neg_elbo(EXACT, x0, torch.tensor([900.0, 500.0]), SCHED, "upper")
    with pytest.raises(TypeError, match="model"):
        neg_elbo(object(), x0, SCHED.grid(5), SCHED, "upper")
