"""Lesson 16: the Wasserstein distance between data and model samples is bounded by the score-matching loss.

Reference case (lesson 16, sec. 16.4): 1-D data N(0, 0.25) (s0 = 0.5), LinearVE (a_t = 1, b_t = t) with T = 3,
both flows started from the exact p_T unless a test says otherwise; sbar_t = sqrt(a_t^2 s0^2 + b_t^2) is the sd of p_t
(sqrt(s0^2 + t^2) here). Everything in float64 with fixed seeds.
"""

import math

import numpy as np
import pytest
import torch
from scipy.integrate import cumulative_trapezoid, quad, solve_ivp, trapezoid

import diffmath as dm
from diffmath.heat import LinearVE
from diffmath.sde import reverse_sde, sde_coefficients
from diffmath.w2bound import W2Bound, score_coupling_term, sde_marginals, w2_bound

f64 = torch.float64
S0, T = 0.5, 3.0
VE3 = LinearVE(t_max=T)
SBAR_T = math.sqrt(S0**2 + T**2)  # sd of p_T


class PerturbedScore:
    """The model score (1 + kappa_t) grad log p_t + beta_t of eq. 16.13 on the one model interface, from the exact
    score of a one-component GaussianMixture (defined at b_t = 0 too)."""

    prediction = "score"

    def __init__(self, schedule, mean, sd, kappa=0.0, beta=0.0):
        self.gmm = dm.GaussianMixture(
            torch.ones(1, dtype=f64), torch.tensor([[mean]], dtype=f64), torch.tensor([[[sd**2]]], dtype=f64)
        )
        self.schedule, self.kappa, self.beta = schedule, kappa, beta

    def __call__(self, x, t, cond=None):
        t = torch.as_tensor(t, dtype=f64).expand(x.shape[0])
        c = self.schedule.coefficients(t)
        k, b = (v(t) if callable(v) else torch.full_like(t, v) for v in (self.kappa, self.beta))
        return (1 + k[:, None]) * self.gmm.score(x, c.a, c.b) + b[:, None]


def _drift(model, x, t):
    """The probability-flow drift f_t x - g_t^2 s(x, t) / 2 (lesson 6, eq. 6.6) of a score model."""
    f, g2 = sde_coefficients(model.schedule, t)
    return f * x - 0.5 * g2 * model(x, t)


def _paths(model, z, grid):
    """Particle paths of the PF-ODE of ``model`` from grid[-1] down to grid[0] (scipy DOP853, rtol 1e-11), shape
    (len(grid), N)."""

    def rhs(t, y):
        return _drift(model, torch.from_numpy(y).reshape(-1, 1), t).reshape(-1).numpy()

    sol = solve_ivp(rhs, (grid[-1], grid[0]), z, method="DOP853", t_eval=grid[::-1], rtol=1e-11, atol=1e-13)
    assert sol.success
    return sol.y[:, ::-1].T


@pytest.mark.parametrize("b", [0.3, -1.0, 2.0])
def test_bound_is_tight_for_a_pure_bias(b):
    """Constant score bias b: W2 = coupled W = bound = |b| s0 (sqrt(s0^2 + T^2) - s0) (eq. 16.14) to 1e-6 (measured
    1e-11), with I_t = s0 / sqrt(s0^2 + t^2) (eq. 16.14) to 1e-9."""
    r = w2_bound(VE3, 0.0, S0, beta=b)
    exact = abs(b) * S0 * (SBAR_T - S0)
    assert isinstance(r, W2Bound)
    for value in (r.w2, r.coupled, r.bound, r.score_term):
        assert abs(value - exact) < 1e-6
    assert r.prior_term == 0.0
    assert np.abs(r.I - S0 / np.sqrt(S0**2 + r.t**2)).max() < 1e-9


@pytest.mark.parametrize("kappa", [0.3, -0.3, 1.0])
def test_bound_is_tight_for_a_pure_scale_error(kappa):
    """Score (1 + kappa) grad log p_t: bound = W2 = s0 |1 - (s0 / sqrt(s0^2 + T^2))^kappa| (eq. 16.15) to 1e-6."""
    r = w2_bound(VE3, 0.0, S0, kappa=kappa)
    exact = S0 * abs(1 - (S0 / SBAR_T) ** kappa)
    assert abs(r.w2 - exact) < 1e-6 and abs(r.bound - exact) < 1e-6


@pytest.mark.parametrize(
    ("kappa", "beta", "w2", "bound"), [(-0.2, 0.1, 0.27056, 0.27766), (0.5, 0.5, 0.47197, 0.48621)]
)
def test_mixed_scale_and_bias_errors_make_the_bound_strict(kappa, beta, w2, bound):
    """Scale and bias together: x - y and v - h are no longer proportional, so Cauchy-Schwarz is strict and the bound
    exceeds W2 by more than 1% (measured 0.2706 <= 0.2777 and 0.4720 <= 0.4862; values to 1e-5)."""
    r = w2_bound(VE3, 0.0, S0, kappa=kappa, beta=beta)
    assert abs(r.w2 - w2) < 1e-5 and abs(r.bound - bound) < 1e-5
    assert r.bound > 1.01 * r.w2


def _sweep_cases():
    rng = np.random.default_rng(16)
    schedules = [(VE3, None), (dm.VPLinear(), None), (dm.VE(0.01, 10.0), None), (dm.LinearPath(), 0.95)]
    for i in range(16):
        schedule, t_end = schedules[i % 4]
        k0, k1, b0, b1 = rng.uniform(-0.6, 0.6, 4)
        kappa = k0 if i % 2 else (lambda t, k0=k0, k1=k1: k0 + k1 * math.sin(3 * t))  # may change sign in time
        beta = b0 if i % 3 else (lambda t, b0=b0, b1=b1: b0 + b1 * t)
        m0, s0 = rng.uniform(-2, 2), rng.uniform(0.2, 2.0)
        yield schedule, t_end, kappa, beta, m0, s0


@pytest.mark.parametrize("case", list(_sweep_cases()), ids=lambda c: c[0].name)
def test_bound_holds_over_a_random_sweep(case):
    """Over schedules (linear VE, VP-linear, Song's VE, rectified flow to T = 0.95), constant and time-dependent
    errors, means and sds: bound >= coupled W >= W2, the bound on W_t holds at every t, and so does the rate
    inequality -dW/dt <= delta + L W (eq. 16.5) in the form -d(W^2)/dt <= 2 W (delta + L W)."""
    schedule, t_end, kappa, beta, m0, s0 = case
    r = w2_bound(schedule, m0, s0, kappa, beta, T=t_end)
    assert r.bound >= r.coupled - 1e-9 >= r.w2 - 2e-9
    assert (r.bound_t >= r.coupled_t - 1e-8).all()
    w = r.coupled_t
    assert (-r.dcoupled_sq <= 2 * w * (r.delta + r.lipschitz * w) + 1e-8 * (1 + np.abs(r.dcoupled_sq))).all()


def test_lipschitz_constant_is_undefined_where_a_vanishes():
    """Rectified flow has a_1 = 0: f_t = da/a and L_t blow up at t = 1, so the evaluator asks for T < 1."""
    with pytest.raises(ValueError, match="a_t = 0"):
        w2_bound(dm.LinearPath(), 0.0, 1.0, beta=0.1)
    assert w2_bound(dm.LinearPath(), 0.0, 1.0, beta=0.1, T=0.99).bound > 0


def test_coupled_distance_matches_monte_carlo_particles():
    """Particles from a common start z ~ p_T, integrated by scipy (DOP853) with lesson 6's drift for the exact score
    and for the perturbed one (time-dependent kappa_t = 0.4 - 0.3 t, beta_t = 0.2 + 0.1 t): the mean of
    |x_0 - y_0|^2 over N = 4000 agrees with the evaluator's coupled W^2 within 4 standard errors."""
    kappa, beta = (lambda t: 0.4 - 0.3 * t), (lambda t: 0.2 + 0.1 * t)
    r = w2_bound(VE3, 0.3, S0, kappa, beta)
    z = 0.3 + SBAR_T * np.random.default_rng(0).standard_normal(4000)
    grid = np.array([0.0, T])
    x0 = _paths(PerturbedScore(VE3, 0.3, S0), z, grid)[0]
    y0 = _paths(PerturbedScore(VE3, 0.3, S0, kappa, beta), z, grid)[0]
    sq = (x0 - y0) ** 2
    assert abs(sq.mean() - r.coupled**2) < 4 * sq.std() / math.sqrt(len(sq))
    assert abs(x0.mean() - 0.3) < 4 * S0 / math.sqrt(len(sq))  # the exact flow lands on the data


def test_printed_error_term_at_y_would_undercut_w2():
    """Erratum (16.13)-(16.18): the error term is E||v(x_t) - h(x_t)||^2, both drifts at x_t. Along particle paths
    of a pure bias b = 1, the printed E||v(x_t) - h(y_t)||^2 gives int I_t (...)^(1/2) dt =
    s0 [sbar_T ln(sbar_T / 4 s0) + 2 s0] = 0.895 W2 < W2, not a bound; the corrected form gives W2 (1e-5)."""
    r = w2_bound(VE3, 0.0, S0, beta=1.0, num_points=1201)
    z = SBAR_T * np.random.default_rng(1).standard_normal(16)
    exact, model = PerturbedScore(VE3, 0.0, S0), PerturbedScore(VE3, 0.0, S0, beta=1.0)
    xs, ys = _paths(exact, z, r.t), _paths(model, z, r.t)
    printed, corrected = [], []
    for t, x, y in zip(r.t, xs, ys, strict=True):
        x_, y_ = torch.from_numpy(x).reshape(-1, 1), torch.from_numpy(y).reshape(-1, 1)
        vx = _drift(exact, x_, t)
        printed.append(((vx - _drift(model, y_, t)) ** 2).mean().sqrt().item())
        corrected.append(((vx - _drift(model, x_, t)) ** 2).mean().sqrt().item())
    assert abs(trapezoid(r.I * np.array(corrected), r.t) - r.w2) < 1e-5
    wrong = trapezoid(r.I * np.array(printed), r.t)
    assert abs(wrong - S0 * (SBAR_T * math.log(SBAR_T / (4 * S0)) + 2 * S0)) < 1e-5
    assert wrong < 0.9 * r.w2


def test_printed_rate_inequality_fails_and_the_corrected_one_is_an_equality_for_a_bias():
    """Erratum (16.14): dividing (16.13) by 2W gives -dW/dt <= delta + L W (eq. 16.5), an equality for a pure bias
    (1e-8); the printed -d(W^2)/dt <= delta + L W^2 fails for b = 2 (by 0.5 or more at some t)."""
    r = w2_bound(VE3, 0.0, S0, beta=2.0)
    w, rate_sq = r.coupled_t, -r.dcoupled_sq
    assert np.abs(rate_sq - 2 * w * (r.delta + r.lipschitz * w)).max() < 1e-8
    assert (rate_sq - (r.delta + r.lipschitz * w**2)).max() > 0.5


def test_one_sided_condition_must_hold_for_the_sampling_direction_drift():
    """Erratum "+-" with (16.10): the proof needs (-h(x) + h(y)).(x - y) <= L ||x - y||^2, the one-sided constant of
    the drift in the direction of integration. VP-linear, data wider than the prior (s0 = 2), pure bias 0.5: the
    bound with that L is tight (1e-6); with the one-sided constant of +h (= -L here) it falls below W2."""
    r = w2_bound(dm.VPLinear(), 0.0, 2.0, beta=0.5, num_points=4001)
    assert abs(r.bound - r.w2) < 1e-6 and (r.lipschitz > 0).all()
    i_wrong = np.exp(cumulative_trapezoid(-r.lipschitz, r.t, initial=0.0))
    assert trapezoid(i_wrong * r.delta, r.t) < 0.5 * r.w2


def test_prior_mismatch_enters_through_I_T():
    """A wrong prior q_T = N(mu_T + 0.7, (1.3 sbar_T)^2) with the exact score: the exact flow is linear, so
    W2[p_0, q_0] = I_T W2[p_T, q_T] exactly (eq. 16.16), with I_T = s0 / sbar_T (1e-9). Adding a scale error
    kappa = 0.3 makes I_T = (s0 / sbar_T)^1.3 and the bound still holds."""
    q = (0.7, 1.3 * SBAR_T)
    w2_T = math.hypot(0.7, 0.3 * SBAR_T)
    r = w2_bound(VE3, 0.0, S0, q_prior=q)
    assert abs(r.prior_term - S0 / SBAR_T * w2_T) < 1e-9 and abs(r.w2 - r.prior_term) < 1e-9 and r.score_term == 0
    r = w2_bound(VE3, 0.0, S0, kappa=0.3, beta=0.2, q_prior=q)
    assert abs(r.I[-1] - (S0 / SBAR_T) ** 1.3) < 1e-9 and abs(r.prior_term - r.I[-1] * w2_T) < 1e-9
    assert r.bound >= r.w2


def test_isotropic_dimensions_scale_the_distance_and_the_bound_by_sqrt_d():
    """Isotropic d-D data: every term is per coordinate, so W2, the bound and delta_t grow by sqrt(d); L_t does not."""
    one, four = w2_bound(VE3, 0.2, S0, 0.3, 0.4), w2_bound(VE3, 0.2, S0, 0.3, 0.4, dim=4)
    assert abs(four.w2 - 2 * one.w2) < 1e-12 and abs(four.bound - 2 * one.bound) < 1e-9
    assert np.allclose(four.delta, 2 * one.delta) and np.allclose(four.lipschitz, one.lipschitz)


def test_model_sde_marginals_follow_euler_maruyama():
    """The model's reverse SDE with kappa = 0.3, beta = 0.4 (eq. 16.17), against lesson 6's Euler-Maruyama sampler
    (1000 steps, N = 20000): mean within 4 SE + 0.005, sd within 1% (measured 5e-5 and 0.25%); with the exact score
    q_t = p_t (1e-9)."""
    m = sde_marginals(VE3, 0.0, S0, 0.3, 0.4)
    g = torch.Generator().manual_seed(2)
    z = SBAR_T * torch.randn(20000, 1, generator=g, dtype=f64)
    *_, last = reverse_sde(PerturbedScore(VE3, 0.0, S0, 0.3, 0.4), z, VE3.grid(1000), VE3, 1.0, generator=g)
    assert abs(last.x.mean().item() - m.mean_q[0]) < 4 * m.sd_q[0] / math.sqrt(20000) + 0.005
    assert abs(last.x.std().item() / m.sd_q[0] - 1) < 0.01
    exact = sde_marginals(dm.VPLinear(), 1.0, 0.7)
    assert np.abs(exact.mean_q - exact.mean_p).max() < 1e-9 and np.abs(exact.sd_q - exact.sd_p).max() < 1e-9


def test_sde_extra_term_is_nonnegative_for_a_common_start_in_1d():
    """Eq. 16.12: for x = m_p + s_p xi, y = m_q + s_q xi the term E[(x - y)(grad log p(x) - grad log q(y))] is
    (s_p - s_q)^2 / (s_p s_q) >= 0, so -g^2 times it can be dropped: checked along the model SDE of a mixed error
    and against Monte Carlo (N = 200000, 4 SE)."""
    m = sde_marginals(VE3, 0.0, S0, -0.4, 0.5)
    term = score_coupling_term(m.sd_p, m.sd_q)
    assert (term >= 0).all() and term.max() > 0.01
    assert np.allclose(term, (m.sd_p - m.sd_q) ** 2 / (m.sd_p * m.sd_q), rtol=1e-12, atol=1e-15)
    xi = np.random.default_rng(3).standard_normal(200_000)
    i = len(m.t) // 3
    x, y = m.mean_p[i] + m.sd_p[i] * xi, m.mean_q[i] + m.sd_q[i] * xi
    s = (x - y) * (-(x - m.mean_p[i]) / m.sd_p[i] ** 2 + (y - m.mean_q[i]) / m.sd_q[i] ** 2)
    assert abs(s.mean() - term[i]) < 4 * s.std() / math.sqrt(len(s)) + 1e-12


def test_sde_extra_term_is_negative_for_a_reflected_start():
    """The sign depends on the coupling, not on the laws: y = m_q - s_q xi gives -(s_p + s_q)^2 / (s_p s_q) < 0
    (eq. 16.12), -4 when q = p (Monte Carlo, 4 SE). The printed (16.25), grad p instead of grad log p, gives another
    number (more than 10 SE away)."""
    sp, sq, mp, mq = 0.8, 1.3, 0.2, -0.5
    term = score_coupling_term(sp, sq, reflected=True)
    assert abs(term + (sp + sq) ** 2 / (sp * sq)) < 1e-12 and score_coupling_term(1.0, 1.0, reflected=True) == -4
    xi = np.random.default_rng(4).standard_normal(200_000)
    x, y = mp + sp * xi, mq - sq * xi
    gp, gq = -(x - mp) / sp**2, -(y - mq) / sq**2
    s = (x - y) * (gp - gq)
    se = s.std() / math.sqrt(len(s))
    assert abs(s.mean() - term) < 4 * se
    p = np.exp(-0.5 * ((x - mp) / sp) ** 2) / (sp * math.sqrt(2 * math.pi))
    assert abs(((x - y) * (gp * p - gq)).mean() - term) > 10 * se


def test_dropping_the_extra_term_would_break_the_sde_bound():
    """Exact score, q = p, reflected start, linear VE: W_t = 2 sbar_t, so W_0 = 2 s0 = 1. The SDE argument without
    the term (constant g^2, L_t = -g^2 / sbar_t^2 of the reverse-SDE drift) would give W_0 <= I_T W_T =
    2 s0^2 / sbar_T = 0.16. The ODE argument (L_t = -g^2 / 2 sbar_t^2) gives I_T W_T = 2 s0, tight."""
    m = sde_marginals(VE3, 0.0, S0)
    w = m.sd_p + m.sd_q  # the reflected coupling's W_t for means equal

    def var(t):
        return S0**2 + t**2

    L_sde = quad(lambda t: -sde_coefficients(VE3, t)[1].item() / var(t), 0, T)[0]
    L_ode = quad(lambda t: -0.5 * sde_coefficients(VE3, t)[1].item() / var(t), 0, T)[0]
    assert abs(w[0] - 1.0) < 1e-9
    assert abs(math.exp(L_sde) * w[-1] - 2 * S0**2 / SBAR_T) < 1e-9 and math.exp(L_sde) * w[-1] < 0.2
    assert abs(math.exp(L_ode) * w[-1] - w[0]) < 1e-9


def test_a_common_start_can_rotate_in_2d_and_flip_the_sign():
    """In 2-D a rotation y = R x between two copies of N(0, I) makes E[(x - y).(grad log p(x) - grad log q(y))] =
    4 cos(theta) - 4 < 0 (Monte Carlo, N = 100000, 4 SE): the common-start coupling need not be optimal in d >= 2."""
    th = 0.7
    R = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    x = np.random.default_rng(5).standard_normal((100_000, 2))
    y = x @ R.T
    s = ((x - y) * (-x + y)).sum(1)
    assert abs(s.mean() - (4 * math.cos(th) - 4)) < 4 * s.std() / math.sqrt(len(s))


def test_weight_of_the_bound_rises_on_ve_and_vp_linear_but_not_for_constant_beta():
    """Loss weighting (sec. 16.5): at the exact score I_t = sbar_0 / sbar_t. On linear VE I_t falls (L_t < 0) while
    w_t = g^2 I_t / 2 = s0 t / sbar_t rises; it rises on VP-linear(0.1, 20) too; with a constant beta = 1 (VP-linear
    (1, 1), s0 = 0.5) it falls. The ratio to the b_t^2 weighting, w_t / b_t^2, falls on linear VE (not constant)."""
    ve = w2_bound(VE3, 0.0, S0, num_points=301)
    w = ve.half_g2 * ve.I
    assert (np.diff(ve.I) < 0).all() and (ve.lipschitz[1:] < 0).all() and (np.diff(w) > 0).all()
    assert np.abs(w - S0 * ve.t / np.sqrt(S0**2 + ve.t**2)).max() < 1e-9
    assert (np.diff(w[1:] / ve.t[1:] ** 2) < 0).all()
    vp = w2_bound(dm.VPLinear(), 0.0, S0)
    assert (np.diff(vp.half_g2 * vp.I) > 0).all()
    ou = w2_bound(dm.VPLinear(1.0, 1.0), 0.0, S0)
    assert (np.diff(ou.half_g2 * ou.I) < 0).all()


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="continuous schedule"):
        w2_bound(dm.su_linear(100))
    with pytest.raises(TypeError, match="Schedule"):
        w2_bound("ve")
    with pytest.raises(ValueError, match="sd"):
        w2_bound(VE3, 0.0, 0.0)
    with pytest.raises(ValueError, match="T must lie"):
        w2_bound(VE3, T=4.0)
    with pytest.raises(TypeError, match="kappa"):
        w2_bound(VE3, kappa="0.1")
    with pytest.raises(ValueError, match="finite"):
        w2_bound(VE3, beta=lambda t: math.nan)
    with pytest.raises(TypeError, match="q_prior"):
        w2_bound(VE3, q_prior=[0.0, 1.0])
    with pytest.raises(ValueError, match="q_prior sd"):
        w2_bound(VE3, q_prior=(0.0, -1.0))
    with pytest.raises(ValueError, match="dim"):
        w2_bound(VE3, dim=0)
    with pytest.raises(ValueError, match="num_points"):
        sde_marginals(VE3, num_points=1)
    with pytest.raises(ValueError, match="positive"):
        score_coupling_term(np.array([1.0, 0.0]), 1.0)
