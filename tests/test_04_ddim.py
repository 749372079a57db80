"""Lesson 4: DDIM (the family of samplers with DDPM's marginals, its ODE form and first-order convergence)."""

import math

import pytest
import torch

import diffmath as dm
import toydata as td
from diffmath.ddpm import ddpm_mean, posterior
from diffmath.reference import exact_pf_ode

f64 = torch.float64
SU = dm.su_linear(1000)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize(("t", "s"), [(1000.0, 0.0), (1000.0, 980.0), (600.0, 200.0), (2.0, 1.0)])
def test_ddim_marginal_conditions(eta, t, s):
    """Writing the step as x_s = kappa x_t + lambda x0 + sigma z: kappa abar_t + lambda = abar_s and
    kappa^2 bbar_t^2 + sigma^2 = bbar_s^2 (eq. 4.4), so every eta keeps DDPM's marginals; to 1e-12."""
    t_, s_ = torch.tensor(t, dtype=f64), torch.tensor(s, dtype=f64)
    c_x0, c_eps, sigma = dm.ddim_coefficients(SU, t_, s_, eta)
    ct, cs = SU.coefficients(t_), SU.coefficients(s_)
    kappa = c_eps / ct.b  # eps_hat = (x_t - abar_t x0) / bbar_t
    lam = c_x0 - kappa * ct.a
    assert abs((kappa * ct.a + lam - cs.a).item()) < 1e-12
    assert abs((kappa**2 * ct.b**2 + sigma**2 - cs.b**2).item()) < 1e-12


def test_eta1_is_the_posterior():
    """At eta = 1 the step's mean and sd are those of q(x_s | x_t, x0) (eq. 4.9 = eq. 3.8), for any s < t."""
    for t, s in ((1000.0, 0.0), (500.0, 450.0), (3.0, 2.0)):
        t_, s_ = torch.tensor(t, dtype=f64), torch.tensor(s, dtype=f64)
        c_x0, c_eps, sigma = dm.ddim_coefficients(SU, t_, s_, 1.0)
        post = posterior(SU, t_, s_)
        ct = SU.coefficients(t_)
        assert abs((c_eps / ct.b - post.coef_xt).item()) < 1e-12
        assert abs((c_x0 - c_eps * ct.a / ct.b - post.coef_x0).item()) < 1e-12
        assert abs((sigma - post.std).item()) < 1e-12


def test_eta1_equals_ddpm_step_for_step():
    """DDIM with eta = 1 and DDPM (eq. 3.13 mean + sigma_t z) give the same trajectory under the same noise."""
    gmm = td.eight_gaussians_mixture()
    model = gmm.model(SU, "eps")
    g = torch.Generator().manual_seed(0)
    x_ddim = x_ddpm = torch.randn(300, 2, generator=g, dtype=f64)
    worst = 0.0
    for t in range(1000, 0, -1):
        z = torch.randn(300, 2, generator=g, dtype=f64)
        eps = model(x_ddpm, torch.tensor(float(t), dtype=f64))
        x_ddpm = ddpm_mean(x_ddpm, eps, t, SU) + posterior(SU, float(t)).std.item() * z
        x_ddim, _ = dm.ddim_step(model, x_ddim, float(t), float(t - 1), SU, eta=1.0, noise=z)
        worst = max(worst, (x_ddim - x_ddpm).abs().max().item())
    assert worst < 1e-10, worst


def test_eta0_is_deterministic():
    gmm = td.eight_gaussians_mixture()
    x = torch.randn(100, 2, generator=torch.Generator().manual_seed(1))
    runs = [
        dm.sample(gmm.model(SU), x, SU.grid(20), SU, eta=0.0, generator=torch.Generator().manual_seed(k))
        for k in (2, 3)
    ]
    assert torch.equal(runs[0], runs[1])


def test_one_jump_recovers_a_single_data_point():
    """For data = one point x*, E[x0 | x_T] = x*, so one DDIM step from T to 0 lands on x* exactly."""
    x_star = torch.tensor([[0.3, -1.7]], dtype=f64)
    model = dm.EmpiricalData(x_star).model(SU, "eps")
    x_T = torch.randn(50, 2, generator=torch.Generator().manual_seed(4), dtype=f64)
    out = dm.sample(model, x_T, torch.tensor([1000.0, 0.0]), SU, eta=0.0)
    assert (out - x_star).abs().max().item() < 1e-12


def test_ddim_step_is_euler_in_x_over_a():
    """x_t/abar_t - x_s/abar_s = (bbar_t/abar_t - bbar_s/abar_s) eps_hat (eq. 4.12): Euler for d(x/a) = eps d(b/a)."""
    gmm = td.eight_gaussians_mixture()
    model = gmm.model(SU, "eps")
    x = torch.randn(100, 2, generator=torch.Generator().manual_seed(5), dtype=f64)
    for t, s in ((1000.0, 900.0), (400.0, 100.0)):
        x_s, pair = dm.ddim_step(model, x, t, s, SU, eta=0.0)
        ct, cs = SU.coefficients(t), SU.coefficients(s)
        lhs = x / ct.a - x_s / cs.a
        torch.testing.assert_close(lhs, (ct.b / ct.a - cs.b / cs.a) * pair.eps, rtol=1e-10, atol=1e-10)


def test_first_order_convergence_to_the_pf_ode():
    """DDIM with K steps converges to the scipy RK45 (rtol 1e-9) solution of the PF-ODE from the same x_T at first
    order: the log-log slope of the mean error vs K lies in [-1.15, -0.85] (eq. 4.14)."""
    gmm = td.eight_gaussians_mixture()
    model = gmm.model(SU, "eps")
    x_T = torch.randn(200, 2, generator=torch.Generator().manual_seed(6), dtype=f64)
    ref = exact_pf_ode(gmm, x_T, 1000.0, 0.0, SU, rtol=1e-9, atol=1e-9)
    Ks = [50, 100, 200, 400, 1000]
    errs = [(dm.sample(model, x_T, SU.grid(K), SU) - ref).norm(dim=1).mean().item() for K in Ks]
    slope = (
        torch.linalg.lstsq(
            torch.stack([torch.log(torch.tensor(Ks, dtype=f64)), torch.ones(5, dtype=f64)], 1),
            torch.log(torch.tensor(errs, dtype=f64))[:, None],
        )
        .solution[0]
        .item()
    )
    assert -1.15 <= slope <= -0.85, (slope, errs)
    assert errs[-1] < errs[0] / 10


def test_upper_variance_clamps_without_nan():
    """Ho's sigma_t = beta_t exceeds bbar_{t-1} at t = 1..3 of Su's schedule: the eps coefficient clamps to 0."""
    t = torch.arange(1, 6, dtype=f64)
    neg = SU.b(t - 1) ** 2 - SU.step(t)[1] ** 2
    assert (neg[:3] < 0).all() and (neg[3:] > 0).all()
    _, c_eps, sigma = dm.ddim_coefficients(SU, t, t - 1, 1.0, variance="upper")
    assert (c_eps[:3] == 0).all() and (c_eps[3:] > 0).all()
    torch.testing.assert_close(sigma[1:], SU.step(t)[1][1:])
    assert sigma[0] == 0, "the step into the data (t = 1 -> 0) adds no noise"
    gmm = td.eight_gaussians_mixture()
    x = dm.sample(gmm.model(SU), torch.randn(200, 2, dtype=f64), SU.grid(1000), SU, eta=1.0, variance="upper")
    assert torch.isfinite(x).all()


def test_subsequence_sampling_with_exact_model_lands_on_the_data():
    """A 200-step subsequence tau of T = 1000 with eta = 0 reaches the ring: radius 2 +- 0.02 on average."""
    gmm = td.eight_gaussians_mixture()
    x = dm.sample(
        gmm.model(SU),
        torch.randn(2000, 2, generator=torch.Generator().manual_seed(7), dtype=f64),
        SU.grid(200, "quadratic"),
        SU,
    )
    assert abs(x.norm(dim=1).mean().item() - 2.0) < 0.02
    assert x.norm(dim=1).std().item() < 0.2


def test_ddim_bad_input():
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="eta"):
        dm.ddim_coefficients(SU, 10.0, 5.0, eta=-1.0)
    with pytest.raises(ValueError, match="variance"):
        dm.ddim_coefficients(SU, 10.0, 5.0, eta=1.0, variance="learned")
    with pytest.raises(ValueError, match="noise must have"):
        dm.ddim_step(td.eight_gaussians_mixture().model(SU), x, 10.0, 5.0, SU, eta=1.0, noise=torch.zeros(3, 2))
    assert math.isfinite(dm.ddim_coefficients(SU, 10.0, 5.0, eta=3.0)[1].item())
