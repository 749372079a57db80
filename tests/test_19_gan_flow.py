"""Lesson 19: a GAN is a gradient flow. The Wasserstein gradient flow of KL(q||p) in particles, the logistic
discriminator as the log density ratio, the one-step equivalence (19.10) and the MonoFlow generator loop."""

import itertools
import math

import pytest
import torch
from torch import nn

from diffmath.gradflow import (
    AffineGenerator,
    QuadraticDiscriminator,
    gaussian_fit,
    gaussian_ratio,
    generator_loss,
    logistic_ratio,
    matching_loss,
    monoflow,
    ou_marginals,
    particle_flow,
    velocity,
)
from diffmath.guide.constrained import gaussian_kl

f64 = torch.float64
ZERO, ONE = torch.zeros(1, dtype=f64), torch.eye(1, dtype=f64)
M2 = torch.tensor([1.0, -2.0], dtype=f64)
S2 = torch.tensor([[1.0, 0.5], [0.5, 2.0]], dtype=f64)


def draw(mean, cov, n, g):
    return mean + torch.randn(n, len(mean), generator=g, dtype=f64) @ torch.linalg.cholesky(cov).T


def start_1d(n=4000, seed=0):
    """Particles of N(3, 0.25) (variance 0.25), the start of the 1-D example."""
    return draw(3 * ONE[0], 0.25 * ONE, n, torch.Generator().manual_seed(seed))


def kls(states, mean, cov):
    """KL(q_t || p) and KL(p || q_t) of the particles' Gaussian fits along a flow."""
    fits = [gaussian_fit(s.x) for s in states]
    return [gaussian_kl(m, S, mean, cov).item() for m, S in fits], [
        gaussian_kl(mean, cov, m, S).item() for m, S in fits
    ]


def test_exact_flow_follows_the_ou_marginals():
    """N(3, 0.25) -> N(0, 1) with the exact ratio: at t = 3 the particles' mean and variance are the OU marginals
    3 e^{-t} = 0.1494, 1 - 0.75 e^{-2t} = 0.9981 (eq. 19.15). Tolerance: 4 Monte Carlo SE of the start's moments,
    damped by e^{-t} and e^{-2t} (1.6e-3 and 6e-5 at B = 4000), plus the Euler bound t eps/2 |m_t| (2.2e-4) and 5e-5
    for the variance (measured: 0.1488 / 0.99815). The particles move affinely, so their own moments follow the
    Euler recursion of eq. 19.14 from the sample's start to 1e-12."""
    x0, eps, n = start_1d(), 1e-3, 3000
    states = list(particle_flow(x0, gaussian_ratio(ZERO, ONE), eps, n))
    m, v = (u.squeeze() for u in gaussian_fit(states[-1].x))
    t = n * eps
    assert math.isclose(states[-1].t, t)
    m_ou, v_ou = ou_marginals(3 * ONE[0], 0.25 * ONE, ZERO, ONE, t)
    assert math.isclose(m_ou.item(), 3 * math.exp(-t), rel_tol=1e-12)
    assert math.isclose(v_ou.item(), 1 - 0.75 * math.exp(-2 * t), rel_tol=1e-12)
    se_m, se_v = 0.5 / math.sqrt(len(x0)) * math.exp(-t), 0.25 * math.sqrt(2 / len(x0)) * math.exp(-2 * t)
    assert abs(m - m_ou) < 4 * se_m + t * eps / 2 * m_ou.abs() + 1e-12
    assert abs(v - v_ou) < 4 * se_v + 5e-5
    m0, v0 = (u.squeeze() for u in gaussian_fit(x0))
    for _ in range(n):
        m0, v0 = m0 * (1 - eps), v0 * (1 + eps * (1 / v0 - 1)) ** 2
    assert abs(m - m0) < 1e-12 and abs(v - v0) < 1e-12


def test_ou_marginals_solve_the_moment_equations_in_2d():
    """The closed form m + E(m0 - m), S + E(S0 - S)E, E = exp(-S^{-1} t) (eq. 19.14) solves dm/dt = -P(m - m_p),
    dS/dt = 2I - PS - SP (central differences, 1e-7) and tends to p."""
    m0, S0, h = torch.tensor([3.0, 0.0], dtype=f64), torch.diag(torch.tensor([0.25, 4.0], dtype=f64)), 1e-5
    P = torch.linalg.inv(S2)
    for t in (0.1, 1.0, 3.0):
        (mp, Sp), (mm, Sm), (m, S) = (ou_marginals(m0, S0, M2, S2, s) for s in (t + h, t - h, t))
        assert ((mp - mm) / (2 * h) + P @ (m - M2)).abs().max() < 1e-7
        assert ((Sp - Sm) / (2 * h) - (2 * torch.eye(2, dtype=f64) - P @ S - S @ P)).abs().max() < 1e-7
    m, S = ou_marginals(m0, S0, M2, S2, 60.0)
    assert (m - M2).abs().max() < 1e-9 and (S - S2).abs().max() < 1e-9


@pytest.mark.parametrize("ratio", ["exact", "learned"])
def test_kl_q_p_decreases_monotonically_along_the_flow(ratio):
    """KL(q_t || p) of the particles falls at every step (eq. 19.1a), with the exact ratio and with the logistic
    discriminator refitted at every step (2000 real and 2000 fake samples, eps = 0.05, t <= 3): from 4.84 to 0.0096
    (exact) / 0.0042 (learned). KL(p || q_t) falls too here (it must along the exact flow: the Langevin semigroup
    fixes p, and divergences contract under it)."""
    g = torch.Generator().manual_seed(1)
    x0 = start_1d(2000)
    fit = gaussian_ratio(ZERO, ONE) if ratio == "exact" else logistic_ratio(draw(ZERO, ONE, 2000, g))
    forward, reverse = kls(list(particle_flow(x0, fit, 0.05, 60)), ZERO, ONE)
    assert all(b < a for a, b in itertools.pairwise(forward))
    assert forward[0] > 4.5 and forward[-1] < 0.02
    if ratio == "exact":
        assert all(b < a for a, b in itertools.pairwise(reverse))


@pytest.mark.parametrize("h", ["identity", "logsigmoid"])
def test_dissipation_rate_is_minus_the_fisher_divergence_of_kl_q_p_not_kl_p_q(h):
    """d/dt KL(q_t || p) = -E_q[grad log r . grad h(log r)] (eqs. 19.1a and 19.12; the Fisher divergence for h = id):
    measured by one step of 1e-5 from N(3, 0.25) to 1e-3 relative. KL(p || q_t) falls at a rate more than 10x larger
    (153 against 11.25 in closed form): the flow is the gradient flow of KL(q || p), not of KL(p || q)."""
    x0, eps = start_1d(20000), 1e-5
    states = list(particle_flow(x0, gaussian_ratio(ZERO, ONE), eps, 1, h=h))
    D = states[0].discriminator
    rate = -(velocity(D, x0) * velocity(D, x0, h)).sum(-1).mean().item()
    forward, reverse = kls(states, ZERO, ONE)
    assert math.isclose((forward[1] - forward[0]) / eps, rate, rel_tol=1e-3)
    assert (reverse[1] - reverse[0]) / eps < 10 * rate
    if h == "identity":
        m, v = (u.item() for u in gaussian_fit(x0))
        assert math.isclose(rate, -((1 - v) ** 2 / v + m**2), rel_tol=1e-9)


def _theta(D):
    """Coefficients on the features (1, x_i, x_i x_j for i <= j), the order QuadraticDiscriminator.fit uses."""
    i, j = torch.triu_indices(len(D.b), len(D.b))
    return torch.cat([D.c[None], D.b, D.W[i, j] * torch.where(i == j, 1.0, 2.0).to(f64)])


@pytest.mark.parametrize("dim", [1, 2])
def test_quadratic_logistic_discriminator_recovers_the_log_ratio(dim):
    """Maximising (19.3) over quadratic D gives log p/q (eq. 19.4): every coefficient within 4 standard errors of the
    exact one (inverse Fisher information of the logistic model at the truth, 20000 samples a class; conservative for
    the intercept with fixed class sizes). 1-D: p = N(0, 1), q = N(1, 0.64); 2-D: p = N((1, -2), [[1, .5], [.5, 2]]),
    q = N(0, I)."""
    g = torch.Generator().manual_seed(2)
    (mp, Sp), (mq, Sq) = (
        ((ZERO, ONE), (ONE[0], 0.64 * ONE))
        if dim == 1
        else ((M2, S2), (torch.zeros(2, dtype=f64), torch.eye(2, dtype=f64)))
    )
    real, fake = draw(mp, Sp, 20000, g), draw(mq, Sq, 20000, g)
    exact = QuadraticDiscriminator.from_gaussians(mp, Sp, mq, Sq)
    x = torch.linspace(-3, 3, 7, dtype=f64)[:, None].expand(7, dim)
    logp = torch.distributions.MultivariateNormal(mp, Sp).log_prob
    logq = torch.distributions.MultivariateNormal(mq, Sq).log_prob
    assert (exact(x) - (logp(x) - logq(x))).abs().max() < 1e-12
    assert (exact.grad(x) - velocity(exact, x)).abs().max() < 1e-12
    fitted = QuadraticDiscriminator.fit(real, fake)
    both = torch.cat([real, fake])
    i, j = torch.triu_indices(dim, dim)
    phi = torch.cat([torch.ones_like(both[:, :1]), both, both[:, i] * both[:, j]], 1)
    s = torch.sigmoid(exact(both))
    se = torch.linalg.inv((phi * (s * (1 - s))[:, None]).T @ phi).diagonal().sqrt()
    z = (_theta(fitted) - _theta(exact)) / se
    assert z.abs().max() < 4, z


def test_one_step_of_the_matching_loss_is_2eps_times_the_generator_loss_gradient():
    """At theta_t the gradient of (19.8) is 2 eps times that of E[-D(g(z))] (eqs. 19.9-19.10), to 1e-12, for an
    affine generator with a quadratic D and for a small MLP generator with a non-quadratic D."""
    g = torch.Generator().manual_seed(3)
    z, eps = torch.randn(256, 2, generator=g, dtype=f64), 0.05
    D_quad = QuadraticDiscriminator.from_gaussians(M2, S2, torch.zeros(2, dtype=f64), torch.eye(2, dtype=f64))
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2)).to(f64)
    affine = AffineGenerator(2, torch.tensor([0.3, -0.1]), torch.tensor([[1.0, 0.2], [0.0, 0.7]]))
    for net, D in ((affine, D_quad), (mlp, lambda x: torch.sin(x).sum(-1) - 0.1 * x.pow(4).sum(-1))):
        with torch.no_grad():
            x = net(z)
        target = x + eps * velocity(D, x)
        g_match = torch.autograd.grad(matching_loss(net, z, target), list(net.parameters()))
        g_loss = torch.autograd.grad(generator_loss(net, z, D), list(net.parameters()))
        for a, b in zip(g_match, g_loss, strict=True):
            assert (a - 2 * eps * b).abs().max() < 1e-12


def test_many_generator_steps_on_the_generator_loss_overshoot_while_the_matching_loss_settles():
    """With D held fixed, 20 SGD steps of (19.8) (learning rate 1/2) settle on its exact least-squares minimiser
    (1e-9), while 20 steps of E[-D(g(z))] (learning rate eps, the same first step by eq. 19.10) travel more than 10x as
    far from theta_t: the equivalence holds for one step only."""
    g = torch.Generator().manual_seed(4)
    z, eps = torch.randn(500, 2, generator=g, dtype=f64), 0.05
    D = QuadraticDiscriminator.from_gaussians(M2, S2, torch.zeros(2, dtype=f64), torch.eye(2, dtype=f64))
    start = AffineGenerator(2)
    with torch.no_grad():
        x = start(z)
    target = x + eps * velocity(D, x)
    best = AffineGenerator(2)
    best.refit_(z, target)
    params = {}
    for kind, lr in (("match", 0.5), ("loss", eps)):
        net = AffineGenerator(2)
        opt = torch.optim.SGD(net.parameters(), lr=lr)
        for _ in range(20):
            opt.zero_grad()
            (matching_loss(net, z, target) if kind == "match" else generator_loss(net, z, D)).backward()
            opt.step()
        params[kind] = torch.cat([net.mu.detach(), net.A.detach().flatten()])
    theta0 = torch.cat([start.mu.detach(), start.A.detach().flatten()])
    theta1 = torch.cat([best.mu.detach(), best.A.detach().flatten()])
    assert (params["match"] - theta1).abs().max() < 1e-9
    assert (params["loss"] - theta0).norm() > 10 * (theta1 - theta0).norm()


@pytest.mark.parametrize(
    ("dim", "refit", "h"),
    [(1, "lstsq", "identity"), (1, "loss", "identity"), (2, "lstsq", "identity"), (2, "loss", "logsigmoid")],
)
def test_affine_monoflow_reaches_the_target_moments(dim, refit, h):
    """Alternating the discriminator fit (19.3), the move (19.6) and the refit (19.8) or one step of (19.11)/(19.12)
    brings N(0, I) to the target's mean and covariance within 5% (relative norms; 20000 real samples, whose own
    moments are within 1-3% of the target, 2000 latent draws a step, eps = 0.1): 1-D N(2, 0.5) in 100 steps, 2-D
    N((1, -2), [[1, .5], [.5, 2]]) in 150. Measured: 0.4% / 3.2% (mean / covariance), 0.4% / 3.0%, 0.7% / 3.1%,
    1.4% / 2.1%; within 2.5% of the real sample's own fit."""
    mp, Sp = (2 * ONE[0], 0.5 * ONE) if dim == 1 else (M2, S2)
    real = draw(mp, Sp, 20000, torch.Generator().manual_seed(0))
    net = AffineGenerator(dim)
    states = list(
        monoflow(net, real, 0.1, 100 if dim == 1 else 150, 2000, refit, h=h, generator=torch.Generator().manual_seed(6))
    )
    m, S = net.moments()
    assert (m - mp).norm() < 0.05 * mp.norm() and (S - Sp).norm() < 0.05 * Sp.norm()
    mr, Sr = gaussian_fit(real)
    assert (m - mr).norm() < 0.025 * mr.norm() and (S - Sr).norm() < 0.025 * Sr.norm()
    assert (gaussian_fit(states[-1].x)[0] - m).norm() < 0.1


def test_match_and_loss_refits_are_the_same_loop():
    """One "match" step (learning rate 1/2) and one "loss" step (learning rate eps) per discriminator fit give the
    same generator after 20 rounds (1e-10): (19.10) inside the loop."""
    real = draw(M2, S2, 1000, torch.Generator().manual_seed(7))
    nets = {}
    for refit in ("match", "loss"):
        nets[refit] = AffineGenerator(2)
        for _ in monoflow(nets[refit], real, 0.1, 20, 500, refit, generator=torch.Generator().manual_seed(8)):
            pass
    for a, b in zip(nets["match"].moments(), nets["loss"].moments(), strict=True):
        assert (a - b).abs().max() < 1e-10


def test_bad_input_is_refused():
    x, real = start_1d(10), torch.randn(10, 1, dtype=f64)
    ratio = gaussian_ratio(ZERO, ONE)
    with pytest.raises(ValueError, match="shape"):
        next(particle_flow(x[:, 0], ratio, 0.1, 1))
    with pytest.raises(ValueError, match="eps"):
        next(particle_flow(x, ratio, 0.0, 1))
    with pytest.raises(ValueError, match="num_steps"):
        next(particle_flow(x, ratio, 0.1, 0))
    with pytest.raises(TypeError, match="ratio"):
        next(particle_flow(x, "exact", 0.1, 1))
    with pytest.raises(ValueError, match="h must be one of"):
        next(particle_flow(x, ratio, 0.1, 1, h="exp"))
    with pytest.raises(TypeError, match="increasing callable"):
        next(particle_flow(x, ratio, 0.1, 1, h=3))
    with pytest.raises(ValueError, match="NaN"):
        next(particle_flow(x * math.nan, ratio, 0.1, 1))
    with pytest.raises(ValueError, match=r"\(B, 1\)"):
        QuadraticDiscriminator.fit(real, torch.randn(10, 2, dtype=f64))
    with pytest.raises(ValueError, match="did not converge"):
        QuadraticDiscriminator.fit(real, x, max_iter=1)
    with pytest.raises(ValueError, match="positive definite"):
        QuadraticDiscriminator.from_gaussians(ZERO, -ONE, ZERO, ONE)
    with pytest.raises(ValueError, match=r"shapes \(d,\) and \(d, d\)"):
        gaussian_ratio(M2, ONE)
    with pytest.raises(ValueError, match="t must be non-negative"):
        ou_marginals(ZERO, ONE, ZERO, ONE, -1.0)
    with pytest.raises(ValueError, match="shapes"):
        AffineGenerator(2, mean=torch.zeros(3))
    with pytest.raises(TypeError, match="AffineGenerator"):
        next(monoflow(nn.Linear(1, 1).to(f64), real, 0.1, 1))
    with pytest.raises(TypeError, match=r"nn\.Module"):
        next(monoflow(lambda z: z, real, 0.1, 1))
    with pytest.raises(ValueError, match="refit must be one of"):
        next(monoflow(AffineGenerator(1), real, 0.1, 1, refit="adam"))
