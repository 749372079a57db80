"""Lesson 1: DDPM as demolition and rebuilding (the forward process, merged noises, the chapter-1 loss)."""

import math

import pytest
import torch

import diffmath as dm
import toydata as td
from diffmath.ddpm import ch1_constant, forward_marginal, forward_step, merge_noises

f64 = torch.float64


def test_variance_bookkeeping():
    """sum_i (prod_{j>i} alpha_j)^2 beta_i^2 + abar_t^2 = 1 for every t (eq. 1.4), to 1e-15."""
    for sched in (dm.su_linear(1000), dm.ho_linear(1000), dm.cosine(1000)):
        log_abar = torch.log(sched.abar)  # log of prod_{j <= i} alpha_j, i = 0..T
        for t in (1, 2, 10, 500, 1000):
            i = torch.arange(1, t + 1)
            tail = torch.exp(2 * (log_abar[t] - log_abar[i]))  # prod_{j = i+1}^{t} alpha_j^2
            total = (tail * sched.betas[i] ** 2).sum() + sched.abar[t] ** 2
            assert abs(total.item() - 1.0) < 1e-15 * (1 + t**0.5), (sched.name, t, total.item() - 1)


def test_one_shot_matches_iterated_forward():
    """Iterating x_t = alpha_t x_{t-1} + beta_t eps_t gives the moments of x_t = abar_t x0 + bbar_t eps (eq. 1.3),
    within 4 standard errors at N = 1e5."""
    gmm, sched, N = td.eight_gaussians_mixture(), dm.su_linear(1000), 100_000
    g = torch.Generator().manual_seed(0)
    x = gmm.sample(N, g, dtype=f64)
    mean0, cov0 = gmm.mean(), gmm.covariance()
    for t in range(1, 301):
        x = forward_step(x, t, sched, torch.randn(N, 2, generator=g, dtype=f64))
        if t in (10, 100, 300):
            a, b = sched.a(t).item(), sched.b(t).item()
            m_exact, v_exact = a * mean0, a**2 * torch.diagonal(cov0) + b**2
            se_m = torch.sqrt(v_exact / N)
            fourth = ((x - x.mean(0)) ** 4).mean(0)
            se_v = torch.sqrt((fourth - x.var(0) ** 2) / N)
            assert ((x.mean(0) - m_exact).abs() < 4 * se_m).all(), t
            assert ((x.var(0) - v_exact).abs() < 4 * se_v).all(), t


def test_merged_noises_are_independent_standard_normals():
    """(eps, omega) of eq. 1.7 rebuild x_t exactly and have identity covariance (4 standard errors)."""
    sched, N = dm.su_linear(1000), 200_000
    g = torch.Generator().manual_seed(1)
    t = 400
    x0 = torch.randn(N, 2, generator=g, dtype=f64)
    e_prev, e_t = torch.randn(N, 2, generator=g, dtype=f64), torch.randn(N, 2, generator=g, dtype=f64)
    x_prev = forward_marginal(x0, t - 1, sched, e_prev)
    eps, omega = merge_noises(e_prev, e_t, t, sched)
    torch.testing.assert_close(
        forward_step(x_prev, t, sched, e_t), forward_marginal(x0, t, sched, eps), rtol=1e-12, atol=1e-12
    )
    z = torch.cat([eps, omega], 1)
    cov = z.T @ z / N
    assert ((cov - torch.eye(4, dtype=f64)).abs() < 4 * math.sqrt(2 / N)).all()


@pytest.mark.parametrize("t", [5, 100, 700])
def test_ch1_constant_by_monte_carlo(t):
    """E||eps_t - eps_theta||^2 = (beta^2/bbar^2) E||eps - (bbar/beta) eps_theta||^2 + C with
    C = d alpha_t^2 bbar_{t-1}^2 / bbar_t^2 (eq. 1.10), for an arbitrary eps_theta; common random numbers,
    4 standard errors."""
    gmm, sched, N = td.eight_gaussians_mixture(), dm.su_linear(1000), 200_000
    g = torch.Generator().manual_seed(t)
    x0 = gmm.sample(N, g, dtype=f64)
    e_prev, e_t = torch.randn(N, 2, generator=g, dtype=f64), torch.randn(N, 2, generator=g, dtype=f64)
    x_t = forward_step(forward_marginal(x0, t - 1, sched, e_prev), t, sched, e_t)
    eps, _ = merge_noises(e_prev, e_t, t, sched)
    eps_theta = 0.3 * torch.tanh(x_t) + 0.1  # any function of x_t will do
    alpha, beta = (v.item() for v in sched.step(t))
    bbar = sched.b(t).item()
    diff = ((e_t - eps_theta) ** 2).sum(1) - (beta / bbar) ** 2 * ((eps - bbar / beta * eps_theta) ** 2).sum(1)
    C = ch1_constant(sched, t, dim=2).item()
    assert abs(diff.mean().item() - C) < 4 * diff.std().item() / math.sqrt(N)
    assert C == pytest.approx(2 * alpha**2 * sched.b(t - 1).item() ** 2 / bbar**2, rel=1e-12)


def test_ch1_and_ch3_samplers_agree():
    """Chapter 1's rebuild x_{t-1} = (x_t - beta_t eps1)/alpha_t with its optimal eps1 = (beta_t/bbar_t) E[eps|x_t]
    is the DDPM step (eta = 1) under the same noise: from the same state, every one of the 1000 steps agrees to 1e-12.
    (Compared along two separate trajectories they drift apart by rounding only: the reverse dynamics amplify a 1e-15
    step difference about 400-fold between t = 100 and t = 10, so the end states agree to about 1e-10.)"""
    gmm, sched = td.eight_gaussians_mixture(), dm.su_linear(1000)
    model = gmm.model(sched, "eps")
    g = torch.Generator().manual_seed(2)
    x = torch.randn(500, 2, generator=g, dtype=f64)
    worst = 0.0
    for t in range(1000, 0, -1):
        z = torch.randn(500, 2, generator=g, dtype=f64)
        alpha, beta = (v.item() for v in sched.step(t))
        eps1 = beta / sched.b(t).item() * model(x, torch.tensor(float(t), dtype=f64))
        sigma = sched.b(t - 1).item() * beta / sched.b(t).item()
        x1 = (x - beta * eps1) / alpha + sigma * z
        x3, _ = dm.ddim_step(model, x, float(t), float(t - 1), sched, eta=1.0, noise=z)
        worst = max(worst, ((x1 - x3).abs() / (1 + x3.abs())).max().item())
        x = x3
    assert worst < 1e-12, worst


def test_erratum_1_18_abar_T():
    """(1.18): log abar_T = 1/2 sum log(1 - 0.02 t/T) ~ -0.005 (T + 1), so abar_T ~ 0.0065, not 1e-5."""
    T = 1000
    log_a = math.log(dm.su_linear(T).a(T).item())
    assert abs(log_a - (-0.005 * (T + 1))) < 0.05
    assert dm.su_linear(T).a(T).item() > 600 * 1e-5


def test_forward_bad_input():
    sched = dm.su_linear(10)
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match=r"shape \(4, 2\)"):
        forward_step(x, 3, sched, torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"t = 1\.\.T"):
        forward_step(x, 0, sched, x)
    with pytest.raises(TypeError, match="DiscreteSchedule"):
        forward_step(x, 0.5, dm.VPLinear(), x)
    with pytest.raises(ValueError, match=r"t must lie in \[0, 10\]"):
        forward_marginal(x, 11, sched, x)
