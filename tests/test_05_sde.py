"""Lesson 5: the SDE framework (design of f and g^2, forward Euler-Maruyama, denoising score matching)."""

import math

import pytest
import torch
from modes import widths_within

import diffmath as dm
import toydata as td
from diffmath.sde import dsm_loss, forward_sde, reverse_sde, sde_coefficients

f64 = torch.float64


def test_vp_exp5t2_f_and_g2():
    """abar = exp(-5 t^2): f = -10 t and g^2 = 20 t (eq. 5.6; the text prints g where g^2 is meant)."""
    t = torch.linspace(0.0, 1.0, 101, dtype=f64)
    f, g2 = sde_coefficients(dm.VPLinear(0.0, 20.0), t)
    torch.testing.assert_close(f, -10 * t, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g2, 20 * t, rtol=1e-12, atol=1e-12)
    g_true = torch.sqrt(g2[1:])  # the text's formula yields 20 t as "g"; the diffusion coefficient g is sqrt(20 t)
    assert (g_true - 20 * t[1:]).abs().max() > 1


@pytest.mark.parametrize("name", ["vp-linear", "vp-cosine", "ve", "rectified-flow"])
def test_coefficients_reproduce_the_marginals(name):
    """Integrating the moment ODEs da/dt = f a and d(b^2)/dt = 2 f b^2 + g^2 (eq. 5.4) with f and g^2 from
    sde_coefficients alone (scipy's DOP853, rtol 1e-12) from t = 0.05 reproduces the schedule's a_t and b_t^2 at
    t = 0.05, ..., 0.95 to 1e-9 relative: an independent check of the coefficients, which never uses da or db."""
    from scipy.integrate import solve_ivp

    s = dm.get_schedule(name)
    t = torch.linspace(0.05, 0.95, 19, dtype=f64)

    def rhs(tau, y):
        f, g2 = (v.item() for v in sde_coefficients(s, torch.tensor(tau, dtype=f64)))
        return [f * y[0], 2 * f * y[1] + g2]

    c0 = s.coefficients(t[0])
    sol = solve_ivp(rhs, (0.05, 0.95), [c0.a.item(), c0.b.item() ** 2], "DOP853", t.numpy(), rtol=1e-12, atol=1e-14)
    c = s.coefficients(t)
    torch.testing.assert_close(torch.from_numpy(sol.y[0]), c.a, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(torch.from_numpy(sol.y[1]), c.b**2, rtol=1e-9, atol=1e-12)
    assert (sde_coefficients(s, t)[1] > 0).all()


def test_forward_euler_maruyama_moments():
    """Euler-Maruyama with 400 steps from the ring to t = 0.5 matches the exact noised mean within 1% of the standard
    deviation (3.2 standard errors at N = 1e5) and the variance within 1% (the sample variance's relative standard
    error is about sqrt(2 / N) = 0.45% for Gaussian tails, so 1% is about 2.2 standard errors; the seed is fixed)."""
    gmm, sched, N = td.eight_gaussians_mixture(), dm.VPLinear(0.0, 20.0), 100_000
    g = torch.Generator().manual_seed(0)
    x0 = gmm.sample(N, g, dtype=f64)
    *_, last = forward_sde(x0, torch.linspace(0, 0.5, 401, dtype=f64), sched, g)
    c = sched.coefficients(0.5)
    var_exact = c.a**2 * torch.diagonal(gmm.covariance()) + c.b**2
    assert ((last.x.mean(0) - c.a * gmm.mean()).abs() < 0.01 * var_exact.sqrt()).all()
    assert ((last.x.var(0) / var_exact - 1).abs() < 0.01).all()


@pytest.mark.parametrize("t", [0.1, 0.4, 0.8])
def test_dsm_identity(t):
    """E||s - grad log p(x_t|x0)||^2 - E||s* - grad log p(x_t|x0)||^2 = E||s - s*||^2 for any s (eq. 5.13): the
    cross term has mean 0; common random numbers, 4 standard errors."""
    gmm, sched, N = td.eight_gaussians_mixture(), dm.VPLinear(0.0, 20.0), 200_000
    g = torch.Generator().manual_seed(int(10 * t))
    x0, eps = gmm.sample(N, g, dtype=f64), torch.randn(N, 2, generator=g, dtype=f64)
    c = sched.coefficients(t)
    a, b = c.a.item(), c.b.item()
    exact = lambda x: gmm.score(x, a, b)  # noqa: E731
    other = lambda x: exact(x) + 0.5 * torch.tanh(x) - 0.2  # noqa: E731
    diff = dsm_loss(other, x0, eps, a, b) - dsm_loss(exact, x0, eps, a, b)
    x_t = a * x0 + b * eps
    gap = ((other(x_t) - exact(x_t)) ** 2).sum(1)
    resid = diff - gap
    assert abs(resid.mean().item()) < 4 * resid.std().item() / math.sqrt(N)
    assert gap.mean().item() > 10 * resid.std().item() / math.sqrt(N), "the test must be able to see a difference"


def test_reverse_sde_with_the_exact_score_samples_the_data():
    """Anderson's reverse SDE (noise_scale 1) with the exact score, 500 steps, lands on the ring: every mode weight
    1/8 +- 0.025 (N = 4000), mean radius 2 +- 0.02, and every mode's SD within 4 standard errors of 0.15 (about 500
    samples a mode, SE 0.0034: sd 0.20 would be 14 SE away). Time runs backwards: the grid decreases."""
    from diffmath.metrics import mode_weights

    gmm, sched = td.eight_gaussians_mixture(), dm.VPLinear(0.0, 20.0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4000, 2, generator=g, dtype=f64)
    *_, last = reverse_sde(gmm.model(sched), x, sched.grid(500), sched, 1.0, generator=g)
    assert (mode_weights(gmm, last.x) - 1 / 8).abs().max() < 0.025
    assert abs(last.x.norm(dim=1).mean().item() - 2) < 0.02
    ok, spread = widths_within(gmm, last.x, 0.15, n_se=4)
    assert ok, spread


def test_sde_bad_input():
    with pytest.raises(TypeError, match="continuous schedule"):
        sde_coefficients(dm.su_linear(), 10)
    with pytest.raises(ValueError, match="increasing"):
        list(forward_sde(torch.zeros(3, 2), torch.tensor([0.5, 0.1]), dm.VPLinear()))
    with pytest.raises(ValueError, match="noise_scale"):
        list(
            reverse_sde(
                td.eight_gaussians_mixture().model(dm.VPLinear()),
                torch.zeros(3, 2),
                dm.VPLinear().grid(3),
                dm.VPLinear(),
                -1.0,
            )
        )


def test_sde_coefficients_are_finite_at_the_data_end():
    """On VP schedules g_t^2 = beta(t) = -2 f_t is finite at t = 0 (eq. 5.6, Su's 5.21); the general form 2b(db - f b) would be
    0 * inf there."""
    from diffmath.sde import sde_coefficients

    for sched, beta0 in ((dm.VPLinear(0.1, 20.0), 0.1), (dm.VPCosine(0.008), None)):
        f, g2 = sde_coefficients(sched, torch.tensor(0.0, dtype=torch.float64))
        assert torch.isfinite(f) and torch.isfinite(g2) and abs((g2 + 2 * f).item()) < 1e-15
        if beta0 is not None:
            assert abs(g2.item() - beta0) < 1e-14
