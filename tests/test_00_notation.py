"""Lesson 0: converters between parameterisations, schedules, grids."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import diffmath as dm

KINDS = dm.PREDICTIONS
shapes = st.sampled_from([(3, 2), (1, 5), (2, 3, 4, 4), (4, 1, 2, 3)])
coef = st.floats(0.05, 3.0)
deriv = st.floats(-3.0, 3.0)


@settings(max_examples=60, deadline=None)
@given(
    shape=shapes,
    a=coef,
    b=coef,
    da=deriv,
    db=deriv,
    seed=st.integers(0, 2**31 - 1),
    src=st.sampled_from(KINDS),
    dst=st.sampled_from(KINDS),
)
def test_converters_roundtrip(shape, a, b, da, db, seed, src, dst):
    """Any kind -> any kind -> back is the identity, for any (a, b, da, db) with a db - b da away from 0 (eqs. 0.5-0.7)."""
    if abs(a * db - b * da) < 1e-2:
        db = db + 0.5
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    pred = torch.randn(shape, generator=g, dtype=torch.float64)
    there = dm.convert(pred, src, dst, x, a, b, da, db)
    back = dm.convert(there, dst, src, x, a, b, da, db)
    torch.testing.assert_close(back, pred, rtol=1e-10, atol=1e-10)


@settings(max_examples=30, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**31 - 1))
def test_converters_roundtrip_per_sample_coefficients(shape, seed):
    """Coefficients of shape (B,) broadcast over (B, ...): each sample uses its own (a, b)."""
    g = torch.Generator().manual_seed(seed)
    B = shape[0]
    a, b = 0.1 + torch.rand(B, generator=g, dtype=torch.float64), 0.1 + torch.rand(B, generator=g, dtype=torch.float64)
    da, db = -torch.rand(B, generator=g, dtype=torch.float64), 0.2 + torch.rand(B, generator=g, dtype=torch.float64)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    for src in KINDS:
        pred = torch.randn(shape, generator=g, dtype=torch.float64)
        x0, eps = dm.to_pair(pred, src, x, a, b, da, db)
        view = (-1,) + (1,) * (len(shape) - 1)
        torch.testing.assert_close(a.view(view) * x0 + b.view(view) * eps, x, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(dm.from_pair(dm.Pair(x0, eps), src, a, b, da, db), pred, rtol=1e-10, atol=1e-10)


def test_converter_definitions():
    """The converters implement the definitions eqs. 0.2-0.4 on a constructed (x0, eps)."""
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64)
    a, b, da, db = 0.7, 0.4, -0.9, 1.3
    x = a * x0 + b * eps
    expected = {"eps": eps, "x0": x0, "score": -eps / b, "v": a * eps - b * x0, "velocity": da * x0 + db * eps}
    for kind, value in expected.items():
        torch.testing.assert_close(dm.convert(eps, "eps", kind, x, a, b, da, db), value, rtol=1e-13, atol=1e-13)
        pair = dm.to_pair(value, kind, x, a, b, da, db)
        torch.testing.assert_close(pair.x0, x0, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(pair.eps, eps, rtol=1e-12, atol=1e-12)


def test_converter_bad_input():
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match=r"prediction|kind|target"):
        dm.convert(x, "noise", "eps", x, 0.5, 0.5)
    with pytest.raises(ValueError, match="shape"):
        dm.convert(torch.randn(4, 3), "eps", "x0", x, 0.5, 0.5)
    with pytest.raises(ValueError, match="da and db"):
        dm.convert(x, "velocity", "eps", x, 0.5, 0.5)
    with pytest.raises(ValueError, match="NaN"):
        dm.convert(torch.full((4, 2), float("nan")), "eps", "x0", x, 0.5, 0.5)
    with pytest.raises(ValueError, match="a is 0"):
        dm.convert(x, "eps", "x0", x, 0.0, 1.0)
    with pytest.raises(TypeError):
        dm.convert(x.numpy(), "eps", "x0", x, 0.5, 0.5)
    with pytest.raises(ValueError, match=r"shape \(B,\)"):
        dm.convert(x, "eps", "x0", x, torch.ones(3), 0.5)


def test_su_linear_abar_T():
    """Su's alpha_t = sqrt(1 - 0.02 t/T) ends at abar_T = 0.00648 at T = 1000 (the text says about 1e-5)."""
    s = dm.su_linear(1000)
    assert s.a(1000).item() == pytest.approx(0.006482, abs=5e-6)
    assert s.a(1000).item() > 100 * 1e-5


def test_su_vs_ho_linear_differ():
    """Su's schedule is Ho's with beta ramping from 2e-5, not 1e-4 (per-step beta^Ho = 1 - alpha_t^2)."""
    su, ho = dm.su_linear(1000), dm.ho_linear(1000)
    beta_ho_su = 1 - su.alphas[1:] ** 2
    beta_ho_ho = 1 - ho.alphas[1:] ** 2
    assert beta_ho_su[0].item() == pytest.approx(2e-5, rel=1e-9)
    assert beta_ho_ho[0].item() == pytest.approx(1e-4, rel=1e-9)
    assert beta_ho_su[-1].item() == pytest.approx(0.02, rel=1e-9) == beta_ho_ho[-1].item()
    # Ho's a_T**2 (his alphabar_T) is the well-known 4.04e-5
    assert ho.a(1000).item() ** 2 == pytest.approx(4.035e-5, rel=1e-3)


@pytest.mark.parametrize("name", dm.SCHEDULES)
def test_variance_bookkeeping_and_endpoints(name):
    """VP schedules keep a^2 + b^2 = 1; every schedule starts at the data (a_0 = 1, b_0 = 0, except VE's sigma_min)."""
    s = dm.get_schedule(name)
    t = s.grid(100) if not s.discrete else torch.arange(0, s.T + 1, dtype=torch.float64)
    c = s.coefficients(t)
    if name in ("su-linear", "ho-linear", "cosine", "vp-linear", "vp-cosine"):
        torch.testing.assert_close(c.a**2 + c.b**2, torch.ones_like(c.a), rtol=0, atol=1e-14)
    c0 = s.coefficients(torch.tensor(0.0, dtype=torch.float64))
    assert c0.a.item() == 1.0
    assert c0.b.item() == (0.01 if name == "ve" else 0.0)
    lam = s.log_snr(torch.sort(t).values[1:])
    assert (lam[1:] < lam[:-1]).all(), "log-SNR must fall as t grows"


def test_discrete_per_step_matches_marginal():
    """One step x_t = alpha_t x_{t-1} + beta_t eps composes to a_t = prod alpha, b_t^2 = sum (prod_{j>i} alpha_j)^2 beta_i^2 (eq. 0.9)."""
    s = dm.su_linear(1000)
    var = torch.zeros((), dtype=torch.float64)
    for t in range(1, 1001):
        alpha, beta = s.step(t)
        var = alpha.double() ** 2 * var + beta.double() ** 2
    assert abs(var.item() - s.bbar[-1].item() ** 2) < 1e-13
    assert abs(var.item() + s.abar[-1].item() ** 2 - 1.0) < 1e-14


@pytest.mark.parametrize("name", ["vp-linear", "vp-cosine", "ve", "rectified-flow"])
def test_schedule_derivatives_match_finite_differences(name):
    """Continuous schedules' da, db equal central differences of a, b (float64, 1e-7)."""
    s = dm.get_schedule(name)
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    h = 1e-6
    c, cp, cm = s.coefficients(t), s.coefficients(t + h), s.coefficients(t - h)
    torch.testing.assert_close(c.da, (cp.a - cm.a) / (2 * h), rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(c.db, (cp.b - cm.b) / (2 * h), rtol=1e-7, atol=1e-7)


def test_vp_exp5t2_coefficients():
    """abar = exp(-5 t^2) is VP-linear(0, 20): f = d ln a/dt = -10 t and g^2 = 2 a b d(b/a)/dt = 20 t (ch.5 design)."""
    s = dm.VPLinear(0.0, 20.0)
    t = torch.linspace(0.01, 1.0, 50, dtype=torch.float64)
    c = s.coefficients(t)
    torch.testing.assert_close(c.a, torch.exp(-5 * t**2), rtol=1e-14, atol=0)
    f = c.da / c.a
    g2 = 2 * c.a * c.b * (c.db * c.a - c.b * c.da) / c.a**2
    torch.testing.assert_close(f, -10 * t, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g2, 20 * t, rtol=1e-12, atol=1e-12)
    assert s.coefficients(0.0).db.item() == pytest.approx(math.sqrt(10))


@pytest.mark.parametrize("name", dm.SCHEDULES)
@pytest.mark.parametrize("spacing", ["uniform", "quadratic", "karras", "log-snr"])
def test_grids_decrease_and_end_at_data(name, spacing):
    """Every grid starts at t_max, is strictly decreasing and its last point is the data end t = 0."""
    s = dm.get_schedule(name)
    if name in ("rectified-flow", "vp-cosine") and spacing in ("karras", "log-snr"):
        with pytest.raises(ValueError, match="smaller t_start"):
            s.grid(5, spacing)
        return
    if name == "cosine" and spacing in ("karras", "log-snr"):
        with pytest.raises(ValueError, match="piles up"):  # b/a = 2e4 at T
            s.grid(50, spacing)
        return
    for n in (1, 5, 50):
        g = s.grid(n, spacing)
        assert g.shape == (n + 1,)
        assert g[0].item() == s.t_max and g[-1].item() == 0.0
        assert (g[1:] < g[:-1]).all()
    assert dm.get_schedule("su-linear").grid(10).tolist() == [1000.0 - 100 * i for i in range(11)]


@pytest.mark.parametrize("name", ["vp-linear", "ve", "ho-linear"])
def test_karras_and_log_snr_grids_are_uniform_in_their_variable(name):
    """Karras: sigma^(1/7) equally spaced (lesson 0, sec. 0.4); log-snr: log(a/b) equally spaced; both before the final
    t = 0, from sigma(t_max) to sigma(t_1), t_1 = 1 (discrete) or 1e-3 t_max (continuous), to 1e-9 relative."""
    s = dm.get_schedule(name)
    t1 = 1.0 if s.discrete else 1e-3 * s.t_max
    sig = lambda t: s.sigma(torch.tensor(t, dtype=torch.float64)).item()  # noqa: E731
    for spacing, transform in (("karras", lambda v: v ** (1 / 7)), ("log-snr", torch.log)):
        g = s.grid(12, spacing)[:-1]
        assert g[0].item() == s.t_max and abs(sig(g[-1].item()) / sig(t1) - 1) < 1e-9
        c = s.coefficients(g)
        steps = torch.diff(transform(c.b / c.a))
        tol = 0.05 if s.discrete else 1e-6  # discrete grids are rounded to integer times
        assert ((steps - steps.mean()).abs() < tol * steps.abs().mean() + (1 if s.discrete else 0) * 0.02).all()


def test_schedule_bad_input():
    s = dm.su_linear(100)
    with pytest.raises(ValueError, match="unknown schedule"):
        dm.get_schedule("linear")
    with pytest.raises(ValueError, match=r"t must lie in \[0, 100\]"):
        s.a(101)
    with pytest.raises(ValueError, match="integer"):
        s.a(2.5)
    with pytest.raises(ValueError, match="NaN"):
        s.a(torch.tensor(float("nan")))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        dm.VPLinear().b(torch.tensor([0.5, 1.5]))
    with pytest.raises(ValueError, match="num_steps"):
        s.grid(0)
    with pytest.raises(ValueError, match="exceeds"):
        s.grid(200)
    with pytest.raises(ValueError, match="spacing"):
        s.grid(10, "cubic")
    with pytest.raises(ValueError, match="alpha"):
        dm.DiscreteSchedule(torch.tensor([0.5, 1.2]))
    with pytest.raises(ValueError, match="T must be"):
        dm.su_linear(0)
    with pytest.raises(ValueError, match="sigma_min"):
        dm.VE(1.0, 0.5)
    with pytest.raises(TypeError):
        s.a("10")


def test_velocity_inversion_at_the_data_end_fails_clearly():
    """On VP-linear with beta_min > 0, db/dt is infinite at t = 0: inverting a velocity raises, never returns NaN."""
    c = dm.VPLinear().coefficients(torch.tensor(0.0, dtype=torch.float64))
    x = torch.randn(3, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="infinite"):
        dm.to_pair(x, "velocity", x, c.a, c.b, c.da, c.db)


def test_cosine_signal_vanishes_exactly_at_t_max():
    """VP-cosine's a_1 is exactly 0 (computed as a sine), so an eps prediction at t = 1 fails clearly instead of
    amplifying rounding by 1e16."""
    s = dm.VPCosine()
    assert s.a(1.0).item() == 0.0
    x = torch.randn(3, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="a is 0"):
        dm.to_pair(x, "eps", x, s.a(1.0), s.b(1.0))
