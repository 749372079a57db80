"""Lesson 0, sec. 0.3 (precision near the data end): every schedule's a, b, da, db in float64 against 50-digit
references, the exact limits at t = 0 and t = 1, and the forward SDE started at t = 0 (lesson 5, eq. 5.6).

The references are the textbook formulas evaluated by mpmath at 50 digits: ``b = sqrt(1 - a^2)`` (its cancellation
costs mpmath at most 17 of its 50 digits) and the derivatives by ``mpmath.diff``, so they share nothing with the
library's rewritten forms. ``python tests/test_00_schedule_precision.py`` prints the table of lesson 0.
"""

import math

import mpmath
import pytest
import torch

import diffmath as dm
from diffmath.ode import ode_log_likelihood
from diffmath.sde import forward_sde

f64 = torch.float64
DIGITS = 50
T_NEAR_DATA = [10.0**-e for e in range(8, 0, -1)]  # 1e-8 .. 1e-1
T_REST = [0.3, 0.5, 0.7, 0.9, 1 - 1e-3, 1 - 1e-6, 1 - 1e-8, 1.0]
# A few ulp of float64 is ~1e-15; 1e-13 leaves a factor of about 50 for libm differences across platforms.
RTOL_CONTINUOUS = 1e-13
# The discrete tables sum T = 1000 logarithms: the running sum's rounding grows like T * 1e-16 in the worst case.
RTOL_DISCRETE = 1e-12

CONTINUOUS = {
    "vp-cosine(s=0)": (lambda: dm.VPCosine(0.0)),
    "vp-cosine(s=0.008)": (lambda: dm.VPCosine(0.008)),
    "vp-linear(0.1,20)": (lambda: dm.VPLinear(0.1, 20.0)),
    "vp-linear(0,20)": (lambda: dm.VPLinear(0.0, 20.0)),
    "ve(0.01,50)": (lambda: dm.VE(0.01, 50.0)),
    "rectified-flow": (lambda: dm.LinearPath()),
}


def _cosine_beta_ho(s: float):
    """Nichol & Dhariwal's clipped per-step variance (eq. 0.12) as an mpmath function of (t, T)."""

    def beta_ho(t: int, T: int):
        f = lambda u: mpmath.cos(mpmath.pi / 2 * (mpmath.mpf(u) / T + s) / (1 + mpmath.mpf(s))) ** 2  # noqa: E731
        return min(1 - f(t) / f(t - 1), mpmath.mpf(0.999))

    return beta_ho


# name: (factory, Ho's per-step variance beta^Ho_t as an mpmath function of (t, T)), eqs. 0.10-0.12
DISCRETE = {
    "su-linear(T=1000)": (lambda: dm.su_linear(1000), lambda t, T: mpmath.mpf(0.02) * t / T),
    "ho-linear(T=1000)": (
        lambda: dm.ho_linear(1000),
        lambda t, T: mpmath.mpf(1e-4) + (t - 1) * (mpmath.mpf(0.02) - mpmath.mpf(1e-4)) / (T - 1),
    ),
    "cosine(T=1000)": (lambda: dm.cosine(1000), _cosine_beta_ho(0.008)),
    "cosine(T=50,s=0)": (lambda: dm.cosine(50, s=0.0), _cosine_beta_ho(0.0)),
}


def reference_a(schedule):
    """a(t) of a continuous schedule as an mpmath function of an mpf time: the lesson's formulas (eqs. 0.12-0.15)."""
    if isinstance(schedule, dm.VPCosine):
        s = mpmath.mpf(schedule.s)
        k = mpmath.pi / 2 / (1 + s)
        return lambda t: mpmath.cos(k * (t + s)) / mpmath.cos(k * s)
    if isinstance(schedule, dm.VPLinear):
        lo, hi = mpmath.mpf(schedule.beta_min), mpmath.mpf(schedule.beta_max)
        return lambda t: mpmath.exp(-(lo * t + (hi - lo) * t * t / 2) / 2)
    if isinstance(schedule, dm.VE):
        return lambda t: mpmath.mpf(1)
    return lambda t: 1 - t


def reference_b(schedule):
    """b(t) of a continuous schedule as an mpmath function: ``sqrt(1 - a^2)`` for VP, else eqs. 0.14-0.15."""
    if isinstance(schedule, dm.VE):
        lo, hi = mpmath.mpf(schedule.sigma_min), mpmath.mpf(schedule.sigma_max)
        return lambda t: lo * (hi / lo) ** t
    if isinstance(schedule, dm.LinearPath):
        return lambda t: t
    a = reference_a(schedule)
    return lambda t: mpmath.sqrt(1 - a(t) ** 2)


def reference_coefficients(schedule, t: float) -> dict[str, float]:
    """The 50-digit (a, b, da, db) at a float time t > 0, as mpf numbers."""
    with mpmath.workdps(DIGITS):
        tt = mpmath.mpf(t)  # the float's exact value: the library sees the same time
        a, b = reference_a(schedule), reference_b(schedule)
        return {"a": a(tt), "b": b(tt), "da": mpmath.diff(a, tt), "db": mpmath.diff(b, tt)}


def relative_error(value: float, ref) -> float:
    """|value - ref| / |ref|, with an exact zero required where the reference vanishes (below 1e-30)."""
    with mpmath.workdps(DIGITS):
        if abs(ref) < mpmath.mpf(10) ** -30:
            return 0.0 if value == 0 else math.inf
        return float(abs(mpmath.mpf(value) - ref) / abs(ref))


def continuous_errors(schedule, times) -> dict[str, list[float]]:
    """Relative errors of the library's float64 (a, b, da, db) at ``times`` against the references."""
    c = schedule.coefficients(torch.tensor(times, dtype=f64))
    refs = [reference_coefficients(schedule, t) for t in times]
    return {
        q: [relative_error(getattr(c, q)[i].item(), r[q]) for i, r in enumerate(refs)] for q in ("a", "b", "da", "db")
    }


def reference_discrete(name: str) -> dict[str, list]:
    """50-digit (abar, bbar) on t = 0..T and (alpha, beta) on t = 1..T from Ho's per-step variances (eq. 0.9)."""
    make, beta_ho = DISCRETE[name]
    T = make().T
    with mpmath.workdps(DIGITS):
        abar2, out = mpmath.mpf(1), {"abar": [mpmath.mpf(1)], "bbar": [mpmath.mpf(0)], "alpha": [], "beta": []}
        for t in range(1, T + 1):
            bh = beta_ho(t, T)
            abar2 *= 1 - bh
            out["abar"].append(mpmath.sqrt(abar2))
            out["bbar"].append(mpmath.sqrt(1 - abar2))
            out["alpha"].append(mpmath.sqrt(1 - bh))
            out["beta"].append(mpmath.sqrt(bh))
        return out


@pytest.mark.parametrize("name", list(CONTINUOUS))
def test_continuous_coefficients_match_50_digit_references(name):
    """a, b, da, db of every continuous schedule in float64 agree with the 50-digit formulas to 1e-13 relative at
    t = 1e-8 .. 1e-1 and on to t = 1 (exact zeros, e.g. a_1 = 0 on vp-cosine, reproduced exactly)."""
    errors = continuous_errors(CONTINUOUS[name](), T_NEAR_DATA + T_REST)
    for quantity, errs in errors.items():
        assert max(errs) <= RTOL_CONTINUOUS, f"{name}: {quantity} relative errors {errs}"


@pytest.mark.parametrize("s", [0.0, 0.008])
def test_vp_cosine_b_has_no_cancellation_near_the_data(s):
    """The claim of sec. 0.3: b_t = sqrt(sin(kt) sin(k(t+2s)))/cos(ks) keeps full precision where sqrt(1 - a_t^2)
    in float64 keeps only about 16 + log10(1 - a_t^2) digits (relative error ~1e-8 at t = 1e-8 with s = 0.008)."""
    sched = dm.VPCosine(s)
    t = torch.tensor(T_NEAR_DATA, dtype=f64)
    c = sched.coefficients(t)
    naive = torch.sqrt(1 - c.a**2)
    refs = [reference_coefficients(sched, v)["b"] for v in T_NEAR_DATA]
    ours = [relative_error(c.b[i].item(), r) for i, r in enumerate(refs)]
    theirs = [relative_error(naive[i].item(), r) for i, r in enumerate(refs)]
    assert max(ours) <= RTOL_CONTINUOUS, ours
    assert theirs[0] > 1e-10, "the textbook form cancels at t = 1e-8"


@pytest.mark.parametrize(
    ("name", "a0", "b0", "da0", "db0"),
    [
        ("vp-cosine(s=0)", 1.0, 0.0, 0.0, math.pi / 2),  # b = sin(pi t / 2)
        ("vp-cosine(s=0.008)", 1.0, 0.0, -math.pi / 2 / 1.008 * math.tan(math.pi / 2 * 0.008 / 1.008), math.inf),
        ("vp-linear(0.1,20)", 1.0, 0.0, -0.05, math.inf),  # b ~ sqrt(beta_min t)
        ("vp-linear(0,20)", 1.0, 0.0, 0.0, math.sqrt(10.0)),  # b ~ sqrt(beta_max / 2) t
        ("ve(0.01,50)", 1.0, 0.01, 0.0, 0.01 * math.log(5000.0)),
        ("rectified-flow", 1.0, 0.0, -1.0, 1.0),
    ],
)
def test_coefficients_at_t0_are_their_limits(name, a0, b0, da0, db0):
    """At t = 0 the coefficients are the one-sided limits: db0 = pi/2 on vp-cosine(s=0) (finite), +inf where b grows
    like sqrt(t); never NaN."""
    c = CONTINUOUS[name]().coefficients(torch.tensor(0.0, dtype=f64))
    for got, want in ((c.a, a0), (c.b, b0), (c.da, da0), (c.db, db0)):
        assert got.item() == pytest.approx(want, rel=1e-14, abs=0.0), (name, got.item(), want)


@pytest.mark.parametrize("s", [0.0, 0.008, 0.5])
def test_vp_cosine_ends_exactly(s):
    """vp-cosine reaches a_0 = 1, b_0 = 0 and a_1 = 0, b_1 = 1 exactly (so log-SNR is +inf and -inf there)."""
    c = dm.VPCosine(s).coefficients(torch.tensor([0.0, 1.0], dtype=f64))
    assert c.a.tolist() == [1.0, 0.0] and c.b.tolist() == [0.0, 1.0]


@pytest.mark.parametrize("name", list(DISCRETE))
def test_discrete_tables_match_50_digit_references(name):
    """abar_t, bbar_t and the per-step alpha_t, beta_t of every discrete table agree with 50-digit products of the
    per-step variances to 1e-12 relative at every t = 0..T (bbar_1 = beta_1 ~ 1e-3 included)."""
    sched, ref = DISCRETE[name][0](), reference_discrete(name)
    tables = {"abar": sched.abar, "bbar": sched.bbar, "alpha": sched.alphas[1:], "beta": sched.betas[1:]}
    for quantity, got in tables.items():
        errs = [relative_error(got[i].item(), w) for i, w in enumerate(ref[quantity])]
        worst = max(range(len(errs)), key=errs.__getitem__)
        assert errs[worst] <= RTOL_DISCRETE, f"{name}: {quantity}[{worst}] relative error {errs[worst]:.2e}"


def test_discrete_schedule_rejects_inconsistent_betas():
    """Given both, alphas and betas must satisfy alpha^2 + beta^2 = 1 (to 1e-12)."""
    alphas = torch.tensor([0.9, 0.8], dtype=f64)
    with pytest.raises(ValueError, match="alpha_t\\^2 \\+ beta_t\\^2 = 1"):
        dm.DiscreteSchedule(alphas, betas=torch.tensor([0.4, 0.6], dtype=f64))
    with pytest.raises(ValueError, match="shape"):
        dm.DiscreteSchedule(alphas, betas=torch.tensor([0.6], dtype=f64))


@pytest.mark.parametrize("name", list(CONTINUOUS))
def test_drift_diffusion_closed_forms(name):
    """(f, g^2) of eq. 5.6 on t = 0..0.9: VP-linear gives -beta/2 and beta(t) (finite at t = 0), vp-cosine
    -k tan(k(t+s)) and 2k tan(k(t+s)), VE 0 and 2 r b^2, the linear path -1/(1-t) and 2t/(1-t); and the VP
    shortcut g^2 = -2f equals the general 2 b db - 2 f b^2 wherever both are finite."""
    sched = CONTINUOUS[name]()
    t = torch.linspace(0.0, 0.9, 10, dtype=f64)
    f, g2 = sched.drift_diffusion(t)
    if isinstance(sched, dm.VPLinear):
        beta = sched.beta_min + t * (sched.beta_max - sched.beta_min)
        want_f, want_g2 = -beta / 2, beta
    elif isinstance(sched, dm.VPCosine):
        k = math.pi / 2 / (1 + sched.s)
        want_f = -k * torch.tan(k * (t + sched.s))
        want_g2 = -2 * want_f
    elif isinstance(sched, dm.VE):
        r = math.log(sched.sigma_max / sched.sigma_min)
        want_f, want_g2 = torch.zeros_like(t), 2 * r * sched.b(t) ** 2
    else:
        want_f, want_g2 = -1 / (1 - t), 2 * t / (1 - t)
    torch.testing.assert_close(f, want_f, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(g2, want_g2, rtol=1e-13, atol=1e-15)
    c = sched.coefficients(t[1:])
    torch.testing.assert_close(g2[1:], 2 * c.b * c.db - 2 * f[1:] * c.b**2, rtol=1e-10, atol=1e-12)


def test_drift_diffusion_needs_a_continuous_schedule():
    """A discrete table has no time derivatives, so no SDE."""
    with pytest.raises(TypeError, match="continuous"):
        dm.su_linear(10).drift_diffusion(3)


@pytest.mark.parametrize("name", list(CONTINUOUS))
def test_forward_sde_from_t0_is_finite(name):
    """Euler-Maruyama on linspace(0, 1, 11) evaluates g^2 at t = 0, where b = 0 and db = inf: it must use the
    limit (g^2 = beta(0) on VP-linear), not 0 * inf = NaN."""
    x0 = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=f64)
    steps = list(forward_sde(x0, torch.linspace(0, 1, 11), CONTINUOUS[name](), torch.Generator().manual_seed(1)))
    assert len(steps) == 10 and all(torch.isfinite(step.x).all() for step in steps)


@pytest.mark.parametrize(
    ("name", "t_end"), [("vp-linear(0.1,20)", 1.0), ("vp-linear(0,20)", 1.0), ("vp-cosine(s=0.008)", 0.9)]
)
def test_forward_sde_from_t0_reaches_the_marginal(name, t_end):
    """Forward Euler-Maruyama from t = 0 with 2000 steps, x0 = 3 (N = 20000, seed 0): the mean matches a x0 and the
    std matches b within 4 standard errors (b/sqrt(N) and b/sqrt(2N)), after checking that the scheme's own
    (deterministic) moments are off by less than half a standard error. vp-cosine stops at t = 0.9: its last
    Euler step into a_1 = 0 has f dt -> -1 and g^2 dt -> 2 on any uniform grid, so the scheme's variance at t = 1
    is about 2, not b_1^2 = 1 (a limit of the Euler scheme, not of the coefficients)."""
    sched, n, num_steps = CONTINUOUS[name](), 20_000, 2000
    grid = torch.linspace(0.0, t_end, num_steps + 1, dtype=f64)
    mean, var = torch.tensor(3.0, dtype=f64), torch.tensor(0.0, dtype=f64)
    for i in range(num_steps):  # the Euler scheme's exact moments
        f, g2 = sched.drift_diffusion(grid[i])
        dt = grid[i + 1] - grid[i]
        mean, var = (1 + f * dt) * mean, (1 + f * dt) ** 2 * var + g2 * dt
    c = sched.coefficients(t_end)
    se_mean, se_std = c.b / math.sqrt(n), c.b / math.sqrt(2 * n)
    assert abs(mean - 3 * c.a) < se_mean / 2 and abs(var.sqrt() - c.b) < se_std / 2, (mean, var, c)
    x0 = torch.full((n, 1), 3.0, dtype=f64)
    *_, last = forward_sde(x0, grid, sched, torch.Generator().manual_seed(0))
    assert abs(last.x.mean() - 3 * c.a) < 4 * se_mean, (last.x.mean(), 3 * c.a)
    assert abs(last.x.std() - c.b) < 4 * se_std, (last.x.std(), c.b)


def test_ode_log_likelihood_from_t0_on_vp_cosine_s0():
    """On vp-cosine(s=0), db/dt = pi/2 at t = 0, so the probability-flow drift is finite there and the exact
    likelihood of a Gaussian (mean (0.5, -0.3), correlated covariance) integrated from t = 0 to t = 1 (where
    x_1 ~ N(0, I) exactly) matches its closed-form log density to 1e-6 nats."""
    sched = dm.VPCosine(0.0)
    gauss = dm.GaussianMixture(
        torch.ones(1, dtype=f64),
        torch.tensor([[0.5, -0.3]], dtype=f64),
        torch.tensor([[[1.0, 0.3], [0.3, 0.5]]], dtype=f64),
    )
    x0 = gauss.sample(8, torch.Generator().manual_seed(0), dtype=f64)
    logp, x1 = ode_log_likelihood(gauss.model(sched, "velocity"), x0, sched, t_start=0.0, rtol=1e-10, atol=1e-10)
    assert torch.isfinite(logp).all() and torch.isfinite(x1).all()
    assert (logp - gauss.log_prob(x0)).abs().max().item() < 1e-6


def precision_table() -> str:
    """Markdown rows of lesson 0, table 0.3: the larger relative error of b and db at t = 1e-2 .. 1e-8, and of
    bbar_1 on the discrete tables."""
    times = [10.0**-e for e in range(2, 9)]
    names = ["vp-cosine(s=0.008)", "vp-cosine(s=0)", "vp-linear(0.1,20)"]
    errs = {name: continuous_errors(CONTINUOUS[name](), times) for name in names}
    lines = ["| $t$ | " + " | ".join(f"`{name}`" for name in names) + " |", "|" + "---|" * (len(names) + 1)]
    for i, t in enumerate(times):
        row = [f"{max(errs[name]['b'][i], errs[name]['db'][i]):.0e}" for name in names]
        lines.append(f"| $10^{{{round(math.log10(t))}}}$ | " + " | ".join(row) + " |")
    bbar1 = []
    for name, (make, _) in DISCRETE.items():
        bbar1.append(f"{name}: {relative_error(make().bbar[1].item(), reference_discrete(name)['bbar'][1]):.0e}")
    return "\n".join(lines) + "\n\nbbar_1: " + "; ".join(bbar1)


if __name__ == "__main__":
    print(precision_table())
