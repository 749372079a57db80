"""Lesson 6, secs. 6.9-6.14: the few-step solvers (DPM-Solver++ multistep and singlestep, UniPC, DEIS, Heun on the
Karras grid), their weights, observed orders against the exact PF-ODE, the power grid, tuned grids, and step-for-step
parity with diffusers' schedulers."""

import itertools
import math
import re

import pytest
import torch
from scipy.integrate import quad

import diffmath as dm
import toydata as td
from diffmath.exact.reference import exact_pf_ode
from diffmath.ode import ode_sample
from diffmath.sampling.loop import final, run
from diffmath.sampling.samplers import ddim_rule
from diffmath.solvers import (
    TUNED_GRIDS,
    deis_rule,
    dpm_multistep_rule,
    dpm_singlestep_rule,
    exponential_weights,
    phi,
    sigma_weights,
    singlestep_orders,
    singlestep_weights,
    tune_grid,
    tuned_grid,
    unipc_coefficients,
    unipc_rule,
)

f64 = torch.float64
VP = dm.VPLinear(0.0, 20.0)  # Su's abar = exp(-5 t^2): smooth at both ends
HO = dm.ho_linear(1000)
RING = td.eight_gaussians_mixture()
T_MIN = 0.02  # the order runs stop here: the step into b = 0 is measured on its own (sec. 6.11)


def _slope(Ks, errs):
    lk, le = torch.log(torch.tensor(Ks, dtype=f64)), torch.log(torch.tensor(errs, dtype=f64))
    return (((lk - lk.mean()) * (le - le.mean())).sum() / ((lk - lk.mean()) ** 2).sum()).item()


@pytest.mark.parametrize("k", [1, 2, 3, 4])
@pytest.mark.parametrize("h", [0.0, 1e-6, 1e-3, 0.3, 0.999, 1.0, 2.5, 30.0])
def test_phi_matches_quadrature(k, h):
    """phi_k(-h) = int_0^1 e^{-h(1-v)} v^{k-1}/(k-1)! dv (eq. 6.22) to 1e-13 relative, across the switch from the
    series to the recursion at h = 1 (where the recursion alone loses log10(1/h) digits per level)."""
    exact, _ = quad(
        lambda v: math.exp(-h * (1 - v)) * v ** (k - 1) / math.factorial(k - 1), 0, 1, epsabs=0, epsrel=1e-13
    )
    assert abs(phi(k, h) - exact) <= 1e-13 * exact, (phi(k, h), exact)


def test_phi_limits():
    assert phi(0, 2.0) == math.exp(-2.0)
    assert phi(1, 0.0) == 1.0 and phi(3, 0.0) == pytest.approx(1 / 6, abs=1e-17)  # phi_k(0) = 1/k!
    assert phi(2, math.inf) == 0.0


def test_weights_integrate_polynomials_exactly():
    """The weights of eq. 6.23 integrate every polynomial of degree < p against e^{-(h-u)} exactly, those of eq. 6.28
    integrate them over [sigma_t, sigma_s]; Lu's 2M (eq. 6.17) only to O(h^2)."""
    h, us = 0.4, [0.0, -0.3, -0.7]
    for j in range(3):
        exact, _ = quad(lambda u, j=j: math.exp(-(h - u)) * u**j, 0, h, epsabs=0, epsrel=1e-13)
        got = sum(w * u**j for w, u in zip(exponential_weights(us, h), us, strict=True))
        assert abs(got - exact) < 1e-13, j
    sig, s_end = [2.0, 2.5, 3.1], 0.0
    for j in range(3):
        got = sum(w * s**j for w, s in zip(sigma_weights(sig, s_end), sig, strict=True))
        assert abs(got - (s_end ** (j + 1) - sig[0] ** (j + 1)) / (j + 1)) < 1e-12, j
    taylor, lu = exponential_weights(us[:2], h), exponential_weights(us[:2], h, "lu")
    assert sum(lu) == pytest.approx(sum(taylor), abs=1e-15)  # both exact for constants
    assert abs(lu[1] - taylor[1]) > 1e-3  # different second-order methods


def test_lu_3m_halves_the_curvature_term():
    """For a quadratic x0_hat, diffusers' 3M (eq. 6.24) integrates m0 and m' exactly but m'' with half its weight:
    the error is h phi_3(-h) h^2 m''/2 (sec. 6.9)."""
    h, us = 0.3, [0.0, -0.25, -0.6]
    m = [1.0 + 0.5 * u + 2.0 * u * u for u in us]  # m'' = 4
    exact, _ = quad(lambda u: math.exp(-(h - u)) * (1.0 + 0.5 * u + 2.0 * u * u), 0, h, epsabs=0, epsrel=1e-13)
    lu = sum(w * v for w, v in zip(exponential_weights(us, h, "lu"), m, strict=True))
    taylor = sum(w * v for w, v in zip(exponential_weights(us, h), m, strict=True))
    assert taylor == pytest.approx(exact, abs=1e-14)
    assert exact - lu == pytest.approx(h * phi(3, h) * h * h * 4.0 / 2, rel=1e-10)


def test_unipc_b_cancels_where_the_system_is_solved():
    """B(h) rho_k is fixed by eq. 6.25, so bh1 and bh2 give the same step wherever (6.25) is solved."""
    rs, h = [-0.5, 1.0], 0.7
    b1 = [h * r for r in unipc_coefficients(rs, h, "bh1")]
    b2 = [-math.expm1(-h) * r for r in unipc_coefficients(rs, h, "bh2")]
    assert b1 == pytest.approx(b2, rel=1e-12)


# Observed orders: K-step grids uniform in l = log(a/b) from t = 1 to T_MIN (exact ring, VPLinear(0, 20), float64,
# lower_order_final off, which would spend a first-order step and cap every method at order 2); slope fitted on the
# last three K. Bands as in lesson 6's order table.
ORDERS = [
    ("ddim", ddim_rule(0.0), [32, 64, 128], (-1.15, -0.85)),
    ("dpm++2m lu (6.17)", dpm_multistep_rule(2, False, "lu"), [32, 64, 128], (-2.3, -1.7)),
    ("dpm++2m taylor (6.23)", dpm_multistep_rule(2, False), [32, 64, 128], (-2.3, -1.7)),
    ("dpm++3m taylor (6.23)", dpm_multistep_rule(3, False), [32, 64, 128], (-3.4, -2.7)),
    ("dpm++2s lu", dpm_singlestep_rule("lu", False), [64, 128, 256], (-2.3, -1.7)),
    ("dpm++2s taylor", dpm_singlestep_rule("taylor", False), [64, 128, 256], (-2.3, -1.7)),
    ("dpm++3s lu (6.32)", dpm_singlestep_rule("lu", False, 3), [192, 384, 768], (-3.4, -2.7)),
    ("dpm++3s taylor (6.31)", dpm_singlestep_rule("taylor", False, 3), [192, 384, 768], (-3.4, -2.7)),
    ("dpm++3m lu (6.24)", dpm_multistep_rule(3, False, "lu"), [64, 128, 256], (-2.5, -1.7)),
    ("unip-3 (6.26)", unipc_rule(3, lower_order_final=False, corrector=False), [32, 64, 128], (-3.4, -2.7)),
    ("unipc-1 (6.27)", unipc_rule(1, lower_order_final=False), [32, 64, 128], (-2.3, -1.7)),
    ("unipc-2 bh1", unipc_rule(2, "bh1", False), [32, 64, 128], (-3.4, -2.6)),
    ("unipc-2 bh2", unipc_rule(2, "bh2", False), [32, 64, 128], (-3.4, -2.6)),
    ("unipc-3 (6.27)", unipc_rule(3, lower_order_final=False), [16, 32, 64], (-5.5, -3.6)),
    ("deis-2 (6.28)", deis_rule(2), [32, 64, 128], (-2.3, -1.6)),
    ("deis-3 (6.28)", deis_rule(3), [32, 64, 128], (-3.4, -2.3)),
]


@pytest.fixture(scope="module")
def order_task():
    x_T = torch.randn(100, 2, generator=torch.Generator().manual_seed(0), dtype=f64)
    return x_T, exact_pf_ode(RING, x_T, 1.0, T_MIN, VP, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("name", "rule", "Ks", "band"), ORDERS, ids=[o[0] for o in ORDERS])
def test_observed_order(order_task, name, rule, Ks, band):
    """Log-log slope of the mean endpoint error against exact_pf_ode (scipy RK45, rtol 1e-12) vs steps: p for
    DPM-Solver++ pM (eq. 6.23), 2 for diffusers' 3M (eq. 6.24), p for pS (eqs. 6.31-6.32), p for UniP, p + 1 for UniPC
    (eq. 6.27), p for DEIS."""
    x_T, ref = order_task
    model = RING.model(VP, "eps")
    errs = []
    for K in Ks:
        grid = VP.grid(K + 1, "log-snr", t_min=T_MIN)[:-1]
        with torch.no_grad():
            errs.append((final(run(model, x_T, grid, VP, rule)) - ref).norm(dim=1).mean().item())
    slope = _slope(Ks, errs)
    assert band[0] <= slope <= band[1], (name, slope, errs)


@pytest.mark.parametrize("variable", ["sigma", "t"])
def test_heun_on_the_karras_grid_is_second_order(order_task, variable):
    """Heun (eq. 6.14; in sigma, eq. 6.15, Karras et al.'s EDM sampler) on K steps of the Karras grid (eq. 6.29,
    rho = 7) from t = 1 to T_MIN: slope of the mean endpoint error against exact_pf_ode in [-2.3, -1.7] (measured
    -2.11 in sigma, -1.97 in t over K = 32-128)."""
    x_T, ref = order_task
    model = RING.model(VP, "eps")
    Ks, errs = [32, 64, 128], []
    for K in Ks:
        grid = VP.grid(K + 1, "karras", t_min=T_MIN)[:-1]
        with torch.no_grad():
            errs.append((ode_sample(model, x_T, grid, VP, "heun", variable=variable) - ref).norm(dim=1).mean().item())
    slope = _slope(Ks, errs)
    assert -2.3 <= slope <= -1.7, (variable, slope, errs)


def _triples_grid(n, fractions):
    """n singlestep groups of equal length in l = log(a/b) from t = 1 to T_MIN, nodes at the given fractions."""
    lo, hi = (0.5 * VP.log_snr(t).item() for t in (1.0, T_MIN))
    H = (hi - lo) / n
    ell = torch.tensor([lo + H * (i + f) for i in range(n) for f in fractions] + [hi], dtype=f64)
    grid = VP.t_of_sigma(torch.exp(-ell))
    grid[0], grid[-1] = 1.0, T_MIN
    return grid


@pytest.mark.parametrize("form", ["lu", "taylor"])
@pytest.mark.parametrize(
    ("fractions", "band"),
    [((0, 1 / 4, 1 / 2), (-2.3, -1.7)), ((0, 1 / 2, 2 / 3), (-3.4, -2.7))],
    ids=["r2=1/2", "r2=2/3"],
)
def test_3s_is_third_order_only_with_r2_two_thirds(order_task, form, fractions, band):
    """3S needs its second node at r2 = 2/3 of the step (sec. 6.14), whatever r1 and whichever weights: with
    (r1, r2) = (1/4, 1/2) both forms are of order 2 (measured -2.03 lu, -1.87 taylor), with (1/2, 2/3) of order 3
    (-2.89, -2.91), over 64-256 groups."""
    x_T, ref = order_task
    model = RING.model(VP, "eps")
    Ks, errs = [64, 128, 256], []
    for n in Ks:
        with torch.no_grad():
            x = final(run(model, x_T, _triples_grid(n, fractions), VP, dpm_singlestep_rule(form, False, 3)))
        errs.append((x - ref).norm(dim=1).mean().item())
    slope = _slope(Ks, errs)
    assert band[0] <= slope <= band[1], (fractions, form, slope, errs)


def test_last_step_in_sigma(order_task):
    """The step into b = 0 (sec. 6.11): from the same state at T_MIN on 32 log-SNR steps, the first-order step
    a_0 x0_hat and the third-order step in sigma (eq. 6.28) against the exact endpoint; the sigma step is more accurate
    and the first-order step's error dominates the 3M run's endpoint error."""
    x_T, _ = order_task
    end = exact_pf_ode(RING, x_T, 1.0, 0.0, VP, rtol=1e-12, atol=1e-12)
    model = RING.model(VP, "eps")
    grid = VP.grid(33, "log-snr", t_min=T_MIN)
    errs = {}
    for fin in ("first", "sigma"):
        with torch.no_grad():
            x = final(run(model, x_T, grid, VP, dpm_multistep_rule(3, False, final=fin)))
        errs[fin] = (x - end).norm(dim=1).mean().item()
    with torch.no_grad():
        before = final(run(model, x_T, grid[:-1], VP, dpm_multistep_rule(3, False)))
    ref_before = exact_pf_ode(RING, x_T, 1.0, T_MIN, VP, rtol=1e-12, atol=1e-12)
    err_before = (before - ref_before).norm(dim=1).mean().item()
    assert errs["sigma"] < 0.5 * errs["first"], errs
    assert err_before < 0.5 * errs["first"], (err_before, errs)


def test_power_grid():
    """The power grid (eq. 6.30): t_start, then t_1 + (t_start - t_1)(1 - i/(K-1))^rho down to t_min, then t_end;
    without t_min rho = 2 is the quadratic grid."""
    g = HO.grid(5, "power", rho=3.0, t_min=20)
    assert g.tolist() == [
        1000.0,
        round(20 + 980 * 0.75**3),
        round(20 + 980 * 0.5**3),
        round(20 + 980 * 0.25**3),
        20.0,
        0.0,
    ]
    assert torch.equal(VP.grid(7, "power", rho=2.0), VP.grid(7, "quadratic"))
    gk = VP.grid(6, "karras", t_min=0.05)
    assert gk[-2].item() == pytest.approx(0.05, abs=1e-9) and gk[-1].item() == 0.0
    gl = VP.grid(6, "log-snr", t_min=0.05)
    ell = [math.log(VP.coefficients(t).a.item() / VP.coefficients(t).b.item()) for t in gl[:-1].tolist()]
    steps = [b - a for a, b in itertools.pairwise(ell)]
    assert max(steps) - min(steps) < 1e-9


def test_grid_bad_input():
    with pytest.raises(ValueError, match="rho must be a finite number > 0"):
        VP.grid(5, "power", rho=0.0)
    with pytest.raises(ValueError, match="t_min applies to the 'karras', 'log-snr' and 'power' grids"):
        VP.grid(5, "uniform", t_min=0.1)
    with pytest.raises(ValueError, match="t_min must lie strictly between"):
        VP.grid(5, "power", t_min=1.5)
    with pytest.raises(ValueError, match="num_steps >= 2"):
        VP.grid(1, "power", t_min=0.1)
    with pytest.raises(ValueError, match="'power'"):
        VP.grid(5, "cubic")


def test_singlestep_orders():
    """DPM-Solver++(2S) pairs the grid's steps, [1, 2, 1, 2, ...], (3S) takes them in threes, [1, 2, 3, ...], first
    order into the data (secs. 6.9, 6.14): diffusers' order lists; a grid that stops short of the data keeps its last
    order."""
    assert singlestep_orders(7) == [1, 2, 1, 2, 1, 2, 1]
    assert singlestep_orders(6) == [1, 2, 1, 2, 1, 1]
    assert singlestep_orders(6, lower_order_final=False) == [1, 2, 1, 2, 1, 1]
    assert singlestep_orders(6, lower_order_final=False, into_data=False) == [1, 2, 1, 2, 1, 2]
    assert singlestep_orders(5, lower_order_final=False) == [1, 2, 1, 2, 1]
    assert singlestep_orders(9, order=3) == [1, 2, 3, 1, 2, 3, 1, 2, 1]
    assert singlestep_orders(10, order=3) == [1, 2, 3, 1, 2, 3, 1, 2, 3, 1]
    assert singlestep_orders(11, order=3) == [1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 1]
    assert singlestep_orders(11, order=3, into_data=False) == [1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2]
    assert singlestep_orders(9, False, 3, into_data=False) == [1, 2, 3] * 3
    assert singlestep_orders(4, order=1) == [1, 1, 1, 1]
    with pytest.raises(ValueError, match="num_steps must be a positive integer"):
        singlestep_orders(0)
    with pytest.raises(ValueError, match="order must be 1, 2 or 3"):
        singlestep_orders(6, order=4)


def test_singlestep_weights():
    """(6.31) integrates every polynomial of degree < n through the n nodes exactly against e^{-(h-u)}; Lu's 3S
    weights (6.32) integrate lines exactly and miss a quadratic by exactly h^3 m'' (phi_3 - r2 phi_2 / 2), which is
    O(h^4) only at r2 = 2/3; Lu's 2S midpoint (6.32) matches (6.31) for constants only."""
    h, rs = 0.4, [0.0, 0.3, 0.7]
    for j in range(3):
        exact, _ = quad(lambda u, j=j: math.exp(-(h - u)) * u**j, 0, h, epsabs=0, epsrel=1e-13)
        got = sum(w * (r * h) ** j for w, r in zip(singlestep_weights(rs, h, "taylor"), rs, strict=True))
        assert abs(got - exact) < 1e-13, j
    m0, m1, m2 = 1.0, 0.5, 4.0  # m(u) = m0 + m1 u + m2 u^2 / 2
    for r2 in (0.5, 2 / 3):
        nodes = [0.0, 0.25, r2]
        vals = [m0 + m1 * r * h + 0.5 * m2 * (r * h) ** 2 for r in nodes]
        w = singlestep_weights(nodes, h, "lu")
        assert w[1] == 0.0 and sum(w) == pytest.approx(-math.expm1(-h), abs=1e-15)
        exact, _ = quad(lambda u: math.exp(-(h - u)) * (m0 + m1 * u + 0.5 * m2 * u * u), 0, h, epsabs=0, epsrel=1e-13)
        lu = sum(wm * v for wm, v in zip(w, vals, strict=True))
        assert exact - lu == pytest.approx(h**3 * m2 * (phi(3, h) - r2 * phi(2, h) / 2), rel=1e-9, abs=1e-15)
    lu2, taylor2 = singlestep_weights([0.0, 0.5], h, "lu"), singlestep_weights([0.0, 0.5], h, "taylor")
    assert sum(lu2) == pytest.approx(sum(taylor2), abs=1e-15) and abs(lu2[1] - taylor2[1]) > 1e-3
    with pytest.raises(ValueError, match="nodes must be 1-3 numbers from 0"):
        singlestep_weights([0.0, 0.5, 0.4], h)
    with pytest.raises(ValueError, match="nodes must be 1-3 numbers from 0"):
        singlestep_weights([0.0, 1.0], h)
    with pytest.raises(ValueError, match="h must be a finite number > 0"):
        singlestep_weights([0.0], math.inf)
    with pytest.raises(ValueError, match="order must be 1, 2 or 3"):
        dpm_singlestep_rule(order=4)
    with pytest.raises(ValueError, match="form must be one of"):
        dpm_singlestep_rule("midpoint", order=3)


def test_solvers_bad_input():
    with pytest.raises(ValueError, match="order must be 1, 2 or 3"):
        dpm_multistep_rule(4)
    with pytest.raises(ValueError, match="form must be one of"):
        dpm_multistep_rule(2, form="euler")
    with pytest.raises(ValueError, match="final must be one of"):
        unipc_rule(2, final="last")
    with pytest.raises(ValueError, match="variant must be one of"):
        unipc_rule(2, "bh3")
    with pytest.raises(ValueError, match="k must be an integer >= 0"):
        phi(-1, 0.5)
    with pytest.raises(ValueError, match="h must be a number >= 0"):
        phi(1, -0.5)
    with pytest.raises(ValueError, match="offsets must start at 0 and decrease strictly"):
        exponential_weights([0.0, 0.1], 0.5)
    with pytest.raises(ValueError, match="h must be a finite number > 0"):
        exponential_weights([0.0], 0.0)
    with pytest.raises(ValueError, match="sigmas must be distinct finite numbers"):
        sigma_weights([1.0, 1.0], 0.0)
    with pytest.raises(ValueError, match="rs must be distinct numbers"):
        unipc_coefficients([], 0.5)
    cos = dm.VPCosine()
    with pytest.raises(ValueError, match="needs a > 0"):
        final(run(RING.model(cos, "x0"), torch.zeros(2, 2, dtype=f64), cos.grid(4), cos, deis_rule(2)))
    with pytest.raises(ValueError, match="tuned on ho-linear"):
        tuned_grid(VP, "dpm++3m", 10)
    with pytest.raises(ValueError, match=re.escape("no tuned grid for solver 'dpm++3m' and num_steps=7")):
        tuned_grid(HO, dpm_multistep_rule(3), 7)


def test_tuned_grid_is_stored_data_and_beats_the_fixed_grids():
    """TUNED_GRIDS is data (the benchmark's --tune wrote it); on fresh starting points the tuned 10-step grid of UniPC-2
    bh2 is more accurate than the quadratic and log-SNR grids (sec. 6.12), and tune_grid finds its own optimum."""
    x_T = torch.randn(300, 2, generator=torch.Generator().manual_seed(7), dtype=f64)
    ref = exact_pf_ode(RING, x_T, 1000.0, 0.0, HO, rtol=1e-10, atol=1e-10)
    model = RING.model(HO, "eps")
    rule = unipc_rule(2, final="sigma")
    assert rule.key in TUNED_GRIDS and 10 in TUNED_GRIDS[rule.key]

    def err(grid):
        with torch.no_grad():
            return (final(run(model, x_T, grid, HO, rule)) - ref).norm(dim=1).mean().item()

    tuned = err(tuned_grid(HO, rule, 10))
    assert tuned < 0.5 * min(err(HO.grid(10, "quadratic")), err(HO.grid(10, "log-snr"))), tuned
    t_min, rho = TUNED_GRIDS[rule.key][10]
    found = tune_grid(model, x_T[:100], ref[:100], HO, rule, 10, [t_min, 2 * t_min], [rho, rho + 1])
    assert found.error <= err(HO.grid(10, "power", rho=rho + 1, t_min=t_min)) + 1e-15


# Parity with diffusers (sec. 6.13): the same grid (diffusers' timestep k is diffmath's t = k + 1), the same x_T, the
# same exact model, step for step. diffusers keeps its schedule tables in float32; the tests hand its scheduler the
# float64 values of diffmath's schedule (alphas_cumprod for DDIM, sigmas for the multistep solvers) after
# set_timesteps, so both sides compute in float64 wherever diffusers' arithmetic allows it.
PARITY_K = 10


def _diffusers_trajectory(sched, x_T, model):
    ts = sched.timesteps.tolist()
    traj, x = [], x_T.clone()
    for k in ts:
        eps = model(x, torch.tensor(float(k + 1), dtype=f64))
        x = sched.step(eps, k, x).prev_sample
        traj.append(x)
    return torch.stack(traj)


def _diffmath_trajectory(rule, grid, x_T, model):
    with torch.no_grad():
        return torch.stack([s.x for s in run(model, x_T, grid, HO, rule)])


def _multistep(name, **kw):
    diffusers = pytest.importorskip("diffusers", reason="diffusers is installed by make bench")
    sched = getattr(diffusers, name)(num_train_timesteps=1000, beta_schedule="linear", **kw)
    sched.set_timesteps(PARITY_K)
    t = (sched.timesteps + 1).to(f64)
    last = sched.sigmas[-1].item()
    end = 0.0 if last == 0 else 1.0  # final_sigmas_type 'zero': the data; 'sigma_min': timestep 0, diffmath's t = 1
    sched.sigmas = torch.cat([HO.sigma(t), HO.sigma(torch.tensor([end], dtype=f64))])
    return sched, torch.cat([t, torch.tensor([end], dtype=f64)])


@pytest.fixture(scope="module")
def parity_start():
    return torch.randn(64, 2, generator=torch.Generator().manual_seed(11), dtype=f64)


def test_parity_ddim(parity_start):
    """DDIMScheduler (eta 0, set_alpha_to_one, no clipping) with float64 alphas_cumprod is diffmath's DDIM (eq. 4.11)
    to 1e-12 along the whole trajectory."""
    diffusers = pytest.importorskip("diffusers", reason="diffusers is installed by make bench")
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False)
    sched.set_timesteps(PARITY_K)
    sched.alphas_cumprod = HO.coefficients(torch.arange(1, 1001, dtype=f64)).a ** 2
    grid = torch.cat([(sched.timesteps + 1).to(f64), torch.zeros(1, dtype=f64)])
    model = RING.model(HO, "eps")
    theirs = _diffusers_trajectory(sched, parity_start, model)
    ours = _diffmath_trajectory(ddim_rule(0.0), grid, parity_start, model)
    assert (ours - theirs).abs().max().item() < 1e-12


# (diffusers scheduler, its options, diffmath's rule, tolerance). DPMSolverMultistepScheduler casts the state to
# float32 inside step() ("upcast to avoid precision issues"), so its trajectory is only float32-accurate: there the
# tolerance is float32's (1e-5 on states of size ~2, after 10 steps); DPMSolverSinglestepScheduler (2S, 3S; its
# "midpoint" solver type is form "lu", "heun" is "taylor") and UniPC stay in float64. UniPC's bh1 with
# final_sigmas_type="zero" returns NaN at the last step in diffusers 0.42 (B(h) = h is infinite there and multiplies a
# zero), so that case stops at sigma_min (diffmath's t = 1). diffusers' DEISMultistepScheduler is not in the list: it
# interpolates eps in log sigma, not in sigma as eq. 6.28 does, a different method (lesson 6, sec. 6.13).
PARITY = [
    ("DPMSolverMultistepScheduler", {"solver_order": 2}, dpm_multistep_rule(2, form="lu"), 1e-5),
    ("DPMSolverMultistepScheduler", {"solver_order": 3}, dpm_multistep_rule(3, form="lu"), 1e-5),
    ("DPMSolverSinglestepScheduler", {"solver_order": 2}, dpm_singlestep_rule("lu"), 1e-12),
    ("DPMSolverSinglestepScheduler", {"solver_order": 2, "solver_type": "heun"}, dpm_singlestep_rule("taylor"), 1e-12),
    ("DPMSolverSinglestepScheduler", {"solver_order": 3}, dpm_singlestep_rule("lu", order=3), 1e-12),
    (
        "DPMSolverSinglestepScheduler",
        {"solver_order": 3, "solver_type": "heun"},
        dpm_singlestep_rule("taylor", order=3),
        1e-12,
    ),
    ("UniPCMultistepScheduler", {"solver_order": 2, "solver_type": "bh2"}, unipc_rule(2, "bh2"), 1e-12),
    (
        "UniPCMultistepScheduler",
        {"solver_order": 3, "solver_type": "bh1", "final_sigmas_type": "sigma_min"},
        unipc_rule(3, "bh1"),
        1e-12,
    ),
]


@pytest.mark.parametrize(("name", "kw", "rule", "tol"), PARITY, ids=[f"{p[0]}-{p[2].key}" for p in PARITY])
def test_parity_multistep(parity_start, name, kw, rule, tol):
    """diffusers' multistep scheduler and diffmath's rule on the same 10-step grid (diffusers' default linspace
    spacing, lower_order_final) agree at every step: eqs. 6.24 (Lu's 2M is 6.17), 6.26-6.27, 6.28 and the singlestep
    6.31-6.32."""
    sched, grid = _multistep(name, **kw)
    model = RING.model(HO, "eps")
    theirs = _diffusers_trajectory(sched, parity_start, model)
    ours = _diffmath_trajectory(rule, grid, parity_start, model)
    diff = (ours - theirs).abs().amax(dim=(1, 2))
    assert diff.max().item() < tol, diff.tolist()
    assert (ours[-1] - parity_start).abs().max().item() > 0.5  # it moved


def test_tuned_shape_transfers_to_su_schedule():
    """The tour samples Su's schedule with the 10-step grid of UniPC-2 (sigma last step) tuned on Ho's (sec. 6.12):
    tune_grid on Su's schedule, over the benchmark's candidates and 500 other starting points, finds the same
    (t_min, rho), far ahead of DDIM on the uniform grid."""
    su = dm.su_linear(1000)
    model = RING.model(su, "eps")
    x_T = torch.randn(500, 2, generator=torch.Generator().manual_seed(100), dtype=f64)
    ref = exact_pf_ode(RING, x_T, 1000.0, 0.0, su, rtol=1e-10, atol=1e-10)
    rule = unipc_rule(2, "bh2", final="sigma")
    found = tune_grid(model, x_T, ref, su, rule, 10, [1, 2, 4, 8, 15, 25, 40, 60, 90], [1.5, 2, 2.5, 3, 3.5, 4])
    assert (found.t_min, found.rho) == TUNED_GRIDS[rule.key][10]
    with torch.no_grad():
        ddim_err = (final(run(model, x_T, su.grid(10), su, ddim_rule(0.0))) - ref).norm(dim=1).mean().item()
    assert found.error < 0.1 * ddim_err, (found, ddim_err)


@pytest.mark.parametrize("order", [2, 3])
def test_multistep_starts_from_pure_noise_on_vp_cosine(order):
    """From t = 1 on VP-cosine (a = 0, lambda = -inf) the first step is DDIM's exactly (its exponential weight is 1)
    and stays out of the history (it has no lambda to extrapolate from), so the run is finite and converges: against
    1280 steps the error falls by more than 1.5x at each doubling from 40 to 160 steps and ends below 5e-3 (exact
    v-model of the ring, float64; measured 0.015 / 0.0027-0.0051 / 0.0007-0.0023). It raised on a NaN offset before."""
    sched = dm.VPCosine()
    model = td.eight_gaussians_mixture().model(sched, "v")
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    rule = dpm_multistep_rule(order)
    first = final(run(model, x, sched.grid(40)[:2], sched, rule))
    assert torch.equal(first, final(run(model, x, sched.grid(40)[:2], sched, ddim_rule())))
    ref = final(run(model, x, sched.grid(1280), sched, rule))
    errors = [(final(run(model, x, sched.grid(k), sched, rule)) - ref).abs().max().item() for k in (40, 80, 160)]
    assert all(a > 1.5 * b for a, b in itertools.pairwise(errors)) and errors[-1] < 5e-3, errors
