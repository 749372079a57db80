"""Lesson 4: DDIM (the family of samplers with DDPM's marginals, its ODE form and first-order convergence)."""

import math

import pytest
import torch

import diffmath as dm
import toydata as td
from diffmath.ddpm import ddpm_mean, posterior
from diffmath.exact.reference import exact_pf_ode

f64 = torch.float64
SU = dm.su_linear(1000)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize(("t", "s"), [(1000.0, 0.0), (1000.0, 980.0), (600.0, 200.0), (2.0, 1.0)])
def test_ddim_marginal_conditions(eta, t, s):
    """The marginal conditions (eq. 4.4) by Monte Carlo: for one data point x* (so x0_hat = x* exactly), one step of
    ddim_step from x_t ~ q(x_t | x*) lands on x_s ~ N(a_s x*, b_s^2 I) = q(x_s | x*) for every eta. With N = 1e5
    draws per dimension (fixed seed): the mean within 4 SE (b_s / sqrt(N)), the variance within 4 SE (relative
    sqrt(2/N) = 0.45%); at s = 0, x_s = x* to 1e-12. Su's printed (4.6)-(4.7) (denominators bbar_{t-1} and bbar_t^2)
    would miss both by far more at (600, 200) and (2, 1); at (1000, 980) bbar_t and bbar_s differ by 1e-5 and the
    printed form is invisible."""
    N, x_star = 100_000, torch.tensor([[0.3, -1.7]], dtype=f64)
    model = dm.EmpiricalData(x_star).model(SU, "eps")
    g = torch.Generator().manual_seed(int(t + s + 10 * eta))
    ct, cs = SU.coefficients(torch.tensor(t, dtype=f64)), SU.coefficients(torch.tensor(s, dtype=f64))
    x_t = ct.a * x_star + ct.b * torch.randn(N, 2, generator=g, dtype=f64)
    x_s, _ = dm.ddim_step(model, x_t, t, s, SU, eta=eta, generator=g)
    if s == 0:
        assert (x_s - x_star).abs().max().item() < 1e-12
        return

    def within(x):
        mean_ok = ((x.mean(0) - cs.a * x_star[0]).abs() < 4 * cs.b / math.sqrt(N)).all()
        var_ok = ((x.var(0) / cs.b**2 - 1).abs() < 4 * math.sqrt(2 / N)).all()
        return bool(mean_ok and var_ok)

    assert within(x_s)
    if (t, s) != (1000.0, 980.0):
        sigma = dm.ddim_coefficients(SU, torch.tensor(t, dtype=f64), torch.tensor(s, dtype=f64), eta)[2]
        root = (cs.b**2 - sigma**2).sqrt()
        printed = root / cs.b * x_t + (cs.a - ct.a * root / ct.b**2) * x_star
        assert not within(printed + sigma * torch.randn(N, 2, generator=g, dtype=f64))


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


def test_ddim_is_the_same_ode_on_every_schedule():
    """Sec. 4.6: DDIM (eta = 0) on 50 uniform steps of Su's schedule and on rectified flow at the times
    t' = sigma/(1 + sigma) with the same sigma = b/a, started from x_T and (1 - t'_0) x_T / a_T, give the same samples
    to 1e-12 in float64 (measured 7.6e-14 on 500 points): both are Euler steps of eq. 4.14 on one sigma-grid."""
    gmm, rf = td.eight_gaussians_mixture(), dm.LinearPath()
    grid = SU.grid(50)
    c = SU.coefficients(grid)
    t_rf = (c.b / c.a) / (1 + c.b / c.a)
    x_T = torch.randn(500, 2, generator=torch.Generator().manual_seed(8), dtype=f64)
    su = dm.sample(gmm.model(SU), x_T, grid, SU)
    flow = dm.sample(gmm.model(rf), (1 - t_rf[0]) * x_T / c.a[0], t_rf, rf)
    assert (su - flow).abs().max().item() < 1e-12
    assert (su - x_T).abs().max().item() > 1, "the samples moved"


def test_su_4_20_is_4_19_with_another_clock():
    """Su's (4.20) as printed, dx/du = 5 (eps_hat(x, sqrt u)/sqrt(1 - e^{-10u}) - x) with eps_hat of a = e^{-5t^2}, is
    the probability-flow velocity (eq. 4.15) of the constant-beta schedule a = e^{-5u} (VPLinear(10, 10)), and his
    (4.19) divided by du/dt = 2t at t = sqrt(u): to 1e-12 on the ring's exact model."""
    gmm, vp20, vp10 = td.eight_gaussians_mixture(), dm.VPLinear(0.0, 20.0), dm.VPLinear(10.0, 10.0)
    x = 1.5 * torch.randn(300, 2, generator=torch.Generator().manual_seed(9), dtype=f64)
    for u in (0.02, 0.3, 0.95):
        t = math.sqrt(u)
        eps = gmm.model(vp20, "eps")(x, torch.full((300,), t, dtype=f64))
        printed_420 = 5 * (eps / math.sqrt(1 - math.exp(-10 * u)) - x)
        printed_419 = 10 * t * (eps / math.sqrt(1 - math.exp(-10 * t**2)) - x)
        velocity = dm.predict(gmm.model(vp10, "eps"), x, u, vp10, "velocity")
        torch.testing.assert_close(printed_420, velocity, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(printed_420, printed_419 / (2 * t), rtol=1e-12, atol=1e-12)


def test_a_subsequence_is_the_smaller_ddpm():
    """Sec. 4.5: DDPM (eta = 1) on the subsequence tau = su_linear(1000).grid(20) is DDPM on the 20-step schedule with
    alpha_i = abar_{tau_i}/abar_{tau_{i-1}}, whose exact model is the long chain's at tau_i: the same samples to
    1e-12 under the same noise. Stepping the long chain's network with its one-step alpha_{tau_i} instead (Su's
    warning after (4.13)) misses the ring: mean radius off by more than 0.5 (measured 1.16)."""
    gmm, tau = td.eight_gaussians_mixture(), SU.grid(20).flip(0)
    a = SU.a(tau)
    small = dm.DiscreteSchedule(a[1:] / a[:-1], "subsequence")
    x_T = torch.randn(2000, 2, generator=torch.Generator().manual_seed(12), dtype=f64)

    def ddpm(model, schedule, grid):
        return dm.sample(model, x_T, grid, schedule, 1.0, generator=torch.Generator().manual_seed(13))

    long_run = ddpm(gmm.model(SU), SU, SU.grid(20))
    assert (ddpm(gmm.model(small), small, small.grid(20)) - long_run).abs().max().item() < 1e-12
    assert abs(long_run.norm(dim=1).mean().item() - 2) < 0.05

    class LongNetworkOnStepIndex:  # the T-step network, asked at tau_i when the 20-step chain is at step i
        prediction = "eps"

        def __call__(self, x, t, cond=None):
            return gmm.model(SU, "eps")(x, tau[t.round().long()])

    carried = dm.DiscreteSchedule(SU.step(tau[1:])[0], "carried-over")
    radius = ddpm(LongNetworkOnStepIndex(), carried, carried.grid(20)).norm(dim=1).mean().item()
    assert abs(radius - 2) > 0.5, radius


def test_ddpm_step_is_not_an_euler_step_of_the_ode():
    """Only eta = 0 is Euler's method for the ODE (eq. 4.13): the eta = 1 (DDPM) step adds noise of sd sigma > 0 and,
    even with that noise set to 0, moves x by a different amount than the Euler step (eq. 4.12), by more than half
    the Euler displacement (median over 100 points) at single steps t -> t - 1 (measured 0.94 at t = 50, 2.6 at 400)."""
    gmm = td.eight_gaussians_mixture()
    model = gmm.model(SU, "eps")
    x = torch.randn(100, 2, generator=torch.Generator().manual_seed(5), dtype=f64)
    for t in (50.0, 400.0):
        x_euler, _ = dm.ddim_step(model, x, t, t - 1, SU, eta=0.0)
        x_ddpm, _ = dm.ddim_step(model, x, t, t - 1, SU, eta=1.0, noise=torch.zeros_like(x))
        rel = ((x_ddpm - x_euler).norm(dim=1) / (x_euler - x).norm(dim=1)).median().item()
        assert rel > 0.5, (t, rel)
        sigma = dm.ddim_coefficients(SU, torch.tensor(t, dtype=f64), torch.tensor(t - 1, dtype=f64), 1.0)[2]
        assert sigma.item() > 0


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


# ------------------------------------------------------------------------------------------------ injected noise
RING = td.eight_gaussians_mixture()


@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_injected_noise_replays_the_generator_bit_for_bit(eta):
    """The noise a generator draws, injected as a sequence (one tensor per step) or a callable ``noise(i, x)``,
    gives the identical trajectory: step i (from grid[i]) uses draw i."""
    model, grid = RING.model(SU, "eps"), SU.grid(20)
    x1 = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=f64)
    ref = dm.sample(model, x1, grid, SU, eta, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    draws = [torch.randn(x1.shape, generator=g, dtype=f64) for _ in range(20)]
    assert torch.equal(dm.sample(model, x1, grid, SU, eta, noise=draws), ref)
    assert torch.equal(dm.sample(model, x1, grid, SU, eta, noise=torch.stack(draws)), ref)
    assert torch.equal(dm.sample(model, x1, grid, SU, eta, noise=lambda i, x: draws[i]), ref)
    assert not torch.equal(dm.sample(model, x1, grid, SU, eta, noise=draws[::-1]), ref)


def test_injected_noise_reaches_every_stochastic_sampler():
    """reverse_sde, predictor_corrector and analytic_ddpm take the same ``noise=``: zero noise turns the reverse SDE
    into its drift alone, and analytic DDPM with the generator's draws replays it exactly."""
    from diffmath.sde import predictor_corrector, reverse_sde
    from diffmath.variance import analytic_ddpm

    vp = dm.VPLinear()
    model, grid = RING.model(vp, "eps"), vp.grid(10, t_start=0.999)
    x1 = torch.randn(32, 2, generator=torch.Generator().manual_seed(0), dtype=f64)
    zeros = lambda i, x: torch.zeros_like(x)  # noqa: E731
    *_, a = reverse_sde(model, x1, grid, vp, 1.0, noise=zeros)
    *_, b = reverse_sde(model, x1, grid, vp, 1.0, noise=[torch.zeros_like(x1)] * 10)
    assert torch.equal(a.x, b.x)
    pc = [
        predictor_corrector(model, x1, grid, vp, generator=torch.Generator().manual_seed(1), noise=z)
        for z in (zeros, zeros, lambda i, x: torch.ones_like(x))
    ]
    (*_, c0), (*_, c1), (*_, c2) = pc  # the predictor's noise is injected, the corrector's drawn from the generator
    assert torch.equal(c0.x, c1.x) and not torch.allclose(c0.x, c2.x)
    g = torch.Generator().manual_seed(3)
    draws = [torch.randn(x1.shape, generator=g, dtype=f64) for _ in range(10)]
    sgrid = SU.grid(10)
    *_, ref = analytic_ddpm(
        RING.model(SU, "eps"), x1, sgrid, SU, "posterior", generator=torch.Generator().manual_seed(3)
    )
    *_, rep = analytic_ddpm(RING.model(SU, "eps"), x1, sgrid, SU, "posterior", noise=draws)
    assert torch.equal(ref.x, rep.x)


def test_injected_noise_bad_input():
    model, grid, x = RING.model(SU, "eps"), SU.grid(5), torch.randn(8, 2, dtype=f64)
    with pytest.raises(ValueError, match=r"one draw per step \(5\), got 4"):
        dm.sample(model, x, grid, SU, 1.0, noise=[torch.zeros_like(x)] * 4)
    with pytest.raises(ValueError, match=r"noise for step 0 must be a tensor of the shape of x \(8, 2\)"):
        dm.sample(model, x, grid, SU, 1.0, noise=lambda i, x: torch.zeros(3))
    with pytest.raises(ValueError, match="noise for step 2 contains NaN"):
        dm.sample(model, x, grid, SU, 1.0, noise=lambda i, x: torch.full_like(x, math.nan if i == 2 else 0.0))
    with pytest.raises(TypeError, match=r"noise must be a torch\.Generator, a callable"):
        dm.sample(model, x, grid, SU, 1.0, noise=3)


def test_diffusers_ddpm_replayed_step_for_step():
    """diffusers' DDPMScheduler (linear betas, epsilon, no clipping) and diffmath's DDPM (eta = 1 on ho_linear) agree
    along the whole trajectory when diffmath replays diffusers' noise: diffusers' timestep k is diffmath's t = k + 1."""
    diffusers = pytest.importorskip("diffusers", reason="diffusers is installed by make bench")
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False)
    sched.set_timesteps(1000)
    ho = dm.ho_linear(1000)
    model = RING.model(ho, "eps")
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(5)
    ours_noise, theirs = [], x.clone()
    for k in sched.timesteps.tolist():
        eps = model(theirs.double(), torch.tensor(float(k + 1), dtype=f64)).float()
        state = g.get_state()
        theirs = sched.step(eps, k, theirs, generator=g).prev_sample
        after = g.get_state()
        g.set_state(state)
        ours_noise.append(torch.randn(x.shape, generator=g) if k > 0 else torch.zeros_like(x))
        assert torch.equal(g.get_state(), after) or k == 0  # diffusers drew exactly one normal per step (none at 0)
        g.set_state(after)
    ours = dm.sample(model, x.double(), ho.grid(1000), ho, 1.0, noise=ours_noise)
    assert (ours.float() - theirs).abs().max().item() < 1e-3
