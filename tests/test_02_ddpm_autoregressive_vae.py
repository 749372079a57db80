"""Lesson 2: DDPM as an autoregressive VAE (per-step KL terms and the two classical reverse variances)."""

import pytest
import torch

import diffmath as dm
from diffmath.ddpm import ddpm_mean, gaussian_kl, kl_weight, posterior, reverse_std, reverse_variance

f64 = torch.float64
SCHED = dm.su_linear(1000)


@pytest.mark.parametrize("t", [2, 50, 400, 1000])
def test_kl_weight_matches_gaussian_kl(t):
    """With the posterior's variance, KL(q(x_{t-1}|x_t,x0) || p_theta) = beta^4/(2 bbar^2 alpha^2 sigma^2) ||eps - eps_hat||^2
    (eq. 2.9); with another variance the KL adds (d/2)(log(sp^2/sq^2) + sq^2/sp^2 - 1) (eq. 2.5)."""
    g = torch.Generator().manual_seed(t)
    x0, eps, eps_hat = (torch.randn(64, 2, generator=g, dtype=f64) for _ in range(3))
    x_t = dm.ddpm.forward_marginal(x0, t, SCHED, eps)
    post = posterior(SCHED, torch.tensor(float(t), dtype=f64))
    mean_q = post.coef_xt * x_t + post.coef_x0 * x0
    mean_p = ddpm_mean(x_t, eps_hat, t, SCHED)
    sq2 = post.std**2
    err = ((eps - eps_hat) ** 2).sum(1)
    torch.testing.assert_close(
        gaussian_kl(mean_q, sq2, mean_p, sq2), kl_weight(SCHED, t, post.std) * err, rtol=1e-9, atol=1e-12
    )
    beta = SCHED.step(t)[1]
    extra = 0.5 * 2 * (torch.log(beta**2 / sq2) + sq2 / beta**2 - 1)
    torch.testing.assert_close(
        gaussian_kl(mean_q, sq2, mean_p, beta**2), kl_weight(SCHED, t, beta) * err + extra, rtol=1e-9, atol=1e-12
    )


def test_printed_kl_weight_is_wrong():
    """The text's beta^4/(alpha^2 sigma^4) is not the KL weight (erratum of eq. 2.9)."""
    t = 300
    alpha, beta = SCHED.step(t)
    sigma = reverse_std(SCHED, t)
    printed = beta**4 / (alpha**2 * sigma**4)
    assert abs(printed / kl_weight(SCHED, t, sigma) - 1) > 0.5


@pytest.mark.parametrize("t", [1, 3, 50, 500, 1000])
def test_optimal_reverse_std_in_the_two_cases(t):
    """Single data point x0: Var[x_{t-1} | x_t] by Gaussian conditioning of the joint of (x_{t-1}, x_t) given x0,
    built from the marginals alone (Var x_{t-1} = bbar_{t-1}^2, Cov = alpha_t bbar_{t-1}^2, Var x_t = bbar_t^2), equals
    the posterior's (bbar_{t-1} beta_t / bbar_t)^2 to 1e-9 (the text prints beta_{t-1}); data ~ N(0, I):
    Var[x_{t-1}|x_t] = beta_t^2 from the mixture's exact posterior covariance (eqs. 2.11-2.12), to 1e-12. The
    Monte Carlo check of both is test_reverse_variance_by_regression."""
    x_t = torch.randn(10, 2, generator=torch.Generator().manual_seed(t), dtype=f64)
    normal = dm.GaussianMixture(torch.ones(1, dtype=f64), torch.zeros(1, 2, dtype=f64), torch.ones(1, dtype=f64))
    post_std = reverse_std(SCHED, t, "posterior")
    tt = torch.tensor(float(t), dtype=f64)
    alpha, b_prev, b_t = SCHED.a(tt) / SCHED.a(tt - 1), SCHED.b(tt - 1), SCHED.b(tt)
    conditioned = b_prev**2 - (alpha * b_prev**2) ** 2 / b_t**2
    torch.testing.assert_close(post_std**2, conditioned, rtol=1e-9, atol=1e-15)
    torch.testing.assert_close(
        torch.diagonal(reverse_variance(normal, x_t, float(t), SCHED), dim1=1, dim2=2),
        (reverse_std(SCHED, t, "beta") ** 2).expand(10, 2),
        rtol=1e-12,
        atol=1e-15,
    )
    if t > 1:
        assert abs(post_std.item() - SCHED.step(t - 1)[1].item()) > 1e-6  # the printed beta_{t-1} is another number


@pytest.mark.parametrize("t", [20, 300])
def test_reverse_variance_by_regression(t):
    """Regressing x_{t-1} on x_t by least squares leaves residual variance beta_t^2 for N(0, I) data and
    sigma_post^2 for one data point, within 1% (N = 2e5)."""
    g, N = torch.Generator().manual_seed(t), 200_000
    for data, expected in (
        (torch.randn(N, 1, generator=g, dtype=f64), SCHED.step(t)[1] ** 2),
        (torch.full((N, 1), 0.7, dtype=f64), reverse_std(SCHED, t) ** 2),
    ):
        x_prev = dm.ddpm.forward_marginal(data, t - 1, SCHED, torch.randn(N, 1, generator=g, dtype=f64))
        x_t = dm.ddpm.forward_step(x_prev, t, SCHED, torch.randn(N, 1, generator=g, dtype=f64))
        design = torch.cat([x_t, torch.ones_like(x_t)], 1)
        coef = torch.linalg.lstsq(design, x_prev).solution
        resid = (x_prev - design @ coef).var().item()
        assert resid == pytest.approx(expected.item(), rel=0.01)


def test_posterior_std_never_exceeds_beta():
    t = torch.arange(1, 1001, dtype=f64)
    assert (reverse_std(SCHED, t, "posterior") <= reverse_std(SCHED, t, "beta") + 1e-15).all()


def test_kl_bad_input():
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="positive"):
        gaussian_kl(x, 0.0, x, 1.0)
    with pytest.raises(ValueError, match="kind"):
        reverse_std(SCHED, 10, "optimal")
    with pytest.raises(ValueError, match="s < t"):
        posterior(SCHED, 10, 12)
