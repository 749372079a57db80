"""Lesson 0: exact Gaussian-mixture and empirical models (eqs. 0.16-0.20)."""

import math

import pytest
import torch

import diffmath as dm
import toydata as td

f64 = torch.float64
COVS = ["full", "diag", "isotropic"]


def mixture(cov, d=3, K=4, seed=0):
    return td.random_mixture(K, d, torch.Generator().manual_seed(seed), cov=cov)


def fd_grad(f, x, h=1e-5):
    """Central finite differences of a batched scalar function f: (B, d) -> (B,)."""
    g = torch.zeros_like(x)
    for i in range(x.shape[1]):
        e = torch.zeros_like(x)
        e[:, i] = h
        g[:, i] = (f(x + e) - f(x - e)) / (2 * h)
    return g


@pytest.mark.parametrize("cov", COVS)
@pytest.mark.parametrize(("a", "b"), [(1.0, 0.0), (0.9, 0.3), (0.5, 0.8), (0.05, 1.0), (1.0, 2.0)])
def test_score_matches_finite_differences(cov, a, b):
    """The closed-form noised score (eq. 0.17) equals central differences of the noised log density (eq. 0.16)."""
    gmm = mixture(cov)
    x = 2 * torch.randn(64, 3, generator=torch.Generator().manual_seed(1), dtype=f64)
    score = gmm.score(x, a, b)
    fd = fd_grad(lambda y: gmm.noised_log_prob(y, a, b), x)
    err = ((score - fd).abs() / (1 + score.abs())).max().item()
    assert err < 1e-8, f"max relative score error {err:.2e}"


def test_empirical_score_matches_finite_differences():
    pts = torch.randn(50, 2, generator=torch.Generator().manual_seed(2), dtype=f64)
    emp = dm.EmpiricalData(pts)
    x = torch.randn(40, 2, generator=torch.Generator().manual_seed(3), dtype=f64)
    for a, b in [(0.9, 0.4), (0.3, 1.0)]:
        fd = fd_grad(lambda y, a=a, b=b: emp.noised_log_prob(y, a, b), x)
        torch.testing.assert_close(emp.score(x, a, b), fd, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("cov", COVS)
def test_tweedie_identity(cov):
    """E[x0 | x_t] = (x_t + b^2 grad log p_t(x_t)) / a (eq. 0.18), to 1e-12."""
    gmm = mixture(cov, d=5)
    x = torch.randn(100, 5, generator=torch.Generator().manual_seed(4), dtype=f64)
    a = torch.linspace(0.2, 0.99, 100, dtype=f64)
    b = torch.sqrt(1 - a**2)
    tweedie = (x + b[:, None] ** 2 * gmm.score(x, a, b)) / a[:, None]
    torch.testing.assert_close(gmm.posterior_mean(x, a, b), tweedie, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gmm.eps_mean(x, a, b), (x - a[:, None] * gmm.posterior_mean(x, a, b)) / b[:, None])


def _snis(gmm, x_t, a, b, n, seed):
    """Self-normalised importance sampling of p(x0 | x_t) with the prior as proposal."""
    x0 = gmm.sample(n, torch.Generator().manual_seed(seed), dtype=f64)
    logw = -((x_t - a * x0) ** 2).sum(1) / (2 * b**2)
    w = torch.softmax(logw, 0)
    return x0, w


@pytest.mark.parametrize("cov", COVS)
def test_posterior_mean_matches_monte_carlo(cov):
    """E[x0 | x_t] (eq. 0.18) agrees with importance sampling within 4 standard errors."""
    gmm = mixture(cov, d=2)
    a, b = 0.8, 0.6
    gen = torch.Generator().manual_seed(5)
    x_t = a * gmm.sample(3, gen, dtype=f64) + b * torch.randn(3, 2, generator=gen, dtype=f64)
    exact = gmm.posterior_mean(x_t, a, b)
    for i in range(3):
        x0, w = _snis(gmm, x_t[i], a, b, 400_000, seed=10 + i)
        mc = (w[:, None] * x0).sum(0)
        se = torch.sqrt((w[:, None] ** 2 * (x0 - mc) ** 2).sum(0))
        assert ((mc - exact[i]).abs() < 4 * se).all(), (mc, exact[i], se)


def test_posterior_cov_matches_monte_carlo():
    """Cov[x0 | x_t] (eq. 0.20) agrees with importance sampling within 4 standard errors per entry."""
    gmm = mixture("full", d=2)
    a, b = 0.7, 0.7
    gen = torch.Generator().manual_seed(6)
    x_t = a * gmm.sample(2, gen, dtype=f64) + b * torch.randn(2, 2, generator=gen, dtype=f64)
    exact = gmm.posterior_cov(x_t, a, b)
    for i in range(2):
        x0, w = _snis(gmm, x_t[i], a, b, 400_000, seed=20 + i)
        m = (w[:, None] * x0).sum(0)
        outer = (x0 - m)[:, :, None] * (x0 - m)[:, None, :]
        mc = (w[:, None, None] * outer).sum(0)
        se = torch.sqrt((w[:, None, None] ** 2 * (outer - mc) ** 2).sum(0))
        assert ((mc - exact[i]).abs() < 4 * se + 1e-12).all(), (mc, exact[i], se)
        assert torch.linalg.eigvalsh(exact[i]).min() > 0


def test_noised_density_integrates_to_one():
    """exp(log p_t) integrates to one on a fine grid (eq. 0.16), at several noise levels."""
    gmm = td.eight_gaussians_mixture()
    u = torch.linspace(-7, 7, 561, dtype=f64)
    xx, yy = torch.meshgrid(u, u, indexing="ij")
    grid = torch.stack([xx.flatten(), yy.flatten()], 1)
    h = (u[1] - u[0]).item()
    for a, b in [(1.0, 0.3), (0.6, 0.8), (0.1, 1.0)]:
        mass = torch.exp(gmm.noised_log_prob(grid, a, b)).sum().item() * h * h
        assert abs(mass - 1) < 1e-6, (a, b, mass)


def test_samples_have_the_mixture_moments():
    """Samples' mean and covariance match mean() and covariance() within 4 standard errors."""
    gmm = mixture("full", d=3)
    x = gmm.sample(200_000, torch.Generator().manual_seed(7), dtype=f64)
    se = x.std(0) / math.sqrt(x.shape[0])
    assert ((x.mean(0) - gmm.mean()).abs() < 4 * se).all()
    torch.testing.assert_close(torch.cov(x.T), gmm.covariance(), rtol=0, atol=0.05)


def test_class_posterior_sums_components():
    """p(y | x_t) sums p(k | x_t) over the components of class y (eq. 0.19); cond restricts the mixture."""
    base = td.eight_gaussians_mixture()
    labels = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    gmm = dm.GaussianMixture(base.weights, base.means, base.lam[:, 0], labels=labels)
    x = torch.randn(30, 2, generator=torch.Generator().manual_seed(8), dtype=f64)
    resp = gmm.component_posterior(x, 0.8, 0.6)
    torch.testing.assert_close(resp.sum(1), torch.ones(30, dtype=f64))
    cp = gmm.class_posterior(x, 0.8, 0.6)
    torch.testing.assert_close(cp[:, 0], resp[:, ::2].sum(1))
    # Bayes: p(x | y) p(y) = p(y | x) p(x)
    y = torch.zeros(30, dtype=torch.long)
    lhs = gmm.noised_log_prob(x, 0.8, 0.6, cond=y) + math.log(0.5)
    rhs = torch.log(cp[:, 0]) + gmm.noised_log_prob(x, 0.8, 0.6)
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gmm.score(x, 0.8, 0.6, cond=torch.full((30,), -1)), gmm.score(x, 0.8, 0.6))


def test_empirical_data_denoiser_is_weighted_average():
    """EmpiricalData's E[x0|x_t] is the softmax(-|x - a x_i|^2 / 2b^2)-weighted data average (eq. 0.18, Sigma = 0)."""
    pts = torch.randn(20, 3, generator=torch.Generator().manual_seed(9), dtype=f64)
    emp = dm.EmpiricalData(pts)
    x = torch.randn(10, 3, generator=torch.Generator().manual_seed(10), dtype=f64)
    a, b = 0.6, 0.8
    w = torch.softmax(-(torch.cdist(x, a * pts) ** 2) / (2 * b**2), 1)
    torch.testing.assert_close(emp.posterior_mean(x, a, b), w @ pts, rtol=1e-12, atol=1e-12)
    tweedie = (x + b**2 * emp.score(x, a, b)) / a
    torch.testing.assert_close(emp.posterior_mean(x, a, b), tweedie, rtol=1e-11, atol=1e-11)
    # at tiny noise the denoiser snaps to the nearest data point: it memorises
    near = pts[torch.cdist(x, pts).argmin(1)]
    torch.testing.assert_close(emp.posterior_mean(near + 1e-4, 1.0, 1e-3), near, rtol=0, atol=1e-6)


def test_exact_velocity_of_linear_path():
    """For a = 1 - t, b = t the exact velocity is E[eps - x0 | x_t] (eq. 0.4), also through ExactModel."""
    gmm = td.eight_gaussians_mixture()
    sched = dm.LinearPath()
    x = torch.randn(20, 2, generator=torch.Generator().manual_seed(11), dtype=f64)
    t = torch.full((20,), 0.4, dtype=f64)
    v = gmm.velocity(x, 0.6, 0.4, -1.0, 1.0)
    torch.testing.assert_close(v, gmm.eps_mean(x, 0.6, 0.4) - gmm.posterior_mean(x, 0.6, 0.4))
    torch.testing.assert_close(gmm.model(sched, "velocity")(x, t), v)
    # at t = 1 (a = 0) the velocity is x - E[x0]: the x0-from-eps division is never needed
    v1 = gmm.model(sched, "velocity")(x, torch.ones(20, dtype=f64))
    torch.testing.assert_close(v1, x - gmm.mean()[None], rtol=1e-12, atol=1e-12)


def test_gaussian_mixture_bad_input():
    w, mu = torch.tensor([0.5, 0.5]), torch.zeros(2, 2)
    with pytest.raises(ValueError, match="non-negative"):
        dm.GaussianMixture(torch.tensor([1.5, -0.5]), mu, torch.ones(2))
    with pytest.raises(ValueError, match="sum to 1"):
        dm.GaussianMixture(torch.tensor([0.5, 0.6]), mu, torch.ones(2))
    with pytest.raises(ValueError, match="positive definite"):
        dm.GaussianMixture(w, mu, torch.tensor([[1.0, 2.0], [2.0, 1.0]]).expand(2, 2, 2).clone())
    with pytest.raises(ValueError, match="positive definite"):
        dm.GaussianMixture(w, mu, torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="symmetric"):
        dm.GaussianMixture(w, mu, torch.tensor([[1.0, 0.5], [0.0, 1.0]]).expand(2, 2, 2).clone())
    with pytest.raises(ValueError, match="covs must have shape"):
        dm.GaussianMixture(w, mu, torch.ones(2, 3))
    with pytest.raises(ValueError, match="means must have shape"):
        dm.GaussianMixture(w, torch.zeros(3, 2), torch.ones(3))
    with pytest.raises(ValueError, match="NaN"):
        dm.GaussianMixture(w, torch.tensor([[0.0, float("nan")], [0.0, 0.0]]), torch.ones(2))
    gmm = dm.GaussianMixture(w, mu, torch.ones(2))
    with pytest.raises(ValueError, match=r"shape \(B, 2\)"):
        gmm.score(torch.zeros(4, 3), 0.5, 0.5)
    with pytest.raises(ValueError, match=r"shape \(B, \.\.\.\)"):
        gmm.score(torch.zeros(2), 0.5, 0.5)
    with pytest.raises(ValueError, match="NaN"):
        gmm.score(torch.full((4, 2), float("nan")), 0.5, 0.5)
    with pytest.raises(ValueError, match=r"shape \(B,\)"):
        gmm.score(torch.zeros(4, 2), torch.ones(3), 0.5)
    with pytest.raises(ValueError, match="cond labels"):
        gmm.score(torch.zeros(4, 2), 0.5, 0.5, cond=torch.full((4,), 7))
    with pytest.raises(ValueError, match="positive integer"):
        gmm.sample(0)
    with pytest.raises(ValueError, match="no density"):
        dm.EmpiricalData(torch.zeros(3, 2)).log_prob(torch.zeros(1, 2))
    with pytest.raises(ValueError, match="b > 0"):
        dm.EmpiricalData(torch.zeros(3, 2)).score(torch.zeros(1, 2), 1.0, 0.0)
    with pytest.raises(TypeError, match="Schedule"):
        gmm.model("su-linear")
    with pytest.raises(ValueError, match="prediction"):
        gmm.model(dm.su_linear(), prediction="noise")
