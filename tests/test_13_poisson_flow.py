"""Lesson 13: Poisson flow (PFGM): the field of the data on z = 0, its field lines, the prior, training."""

import itertools
import math

import pytest
import torch
from scipy.stats import chi2, kstest

import diffmath as dm
import toydata as td
from diffmath import pfgm
from diffmath.heat import LinearVE, continuity_residual, log_grid
from diffmath.metrics import mode_weights, sliced_w1
from diffmath.ode import divergence, nfe, ode_sample
from diffmath.pfgm import (
    PoissonField,
    PoissonLoss,
    hemisphere_tv,
    pfgm_grid,
    pfgm_sample,
    poisson_log_kernel,
    prior_tv,
    sample_prior,
)
from diffmath.recipes import train_toy

f64 = torch.float64
ANG = 2 * math.pi * torch.arange(8, dtype=f64) / 8
CHARGES = 2 * torch.stack([ANG.cos(), ANG.sin()], 1)  # the 8-ring, radius 2
W = torch.arange(1, 9, dtype=f64) / 36  # weights ~ k: sharper frequency tests
FIELD = PoissonField(CHARGES, W)


def _points(n, seed):
    g = torch.Generator().manual_seed(seed)
    return 3 * torch.randn(n, 2, generator=g, dtype=f64), 0.5 + 2.5 * torch.rand(n, generator=g, dtype=f64)


def _e(y):
    ex, ez = FIELD.field(y[:, :2], y[:, 2])
    return torch.cat([ex, ez[:, None]], 1)


def test_field_is_divergence_free_above_the_plane():
    """div E = 0 for z > 0 (eq. 13.4), at 200 points with z in [1, 3] (away from the charges): autograd below
    1e-10 |E|, central differences (h = 2e-4) below 1e-6 |E|."""
    x, z = _points(200, 0)
    z = 1.0 + (z - 0.5) * 0.8
    y = torch.cat([x, z[:, None]], 1)
    mag = _e(y).norm(dim=1)
    auto = divergence(_e, y).abs() / mag
    eye = torch.eye(3, dtype=f64) * 2e-4
    fd = sum((_e(y + eye[i]) - _e(y - eye[i]))[:, i] / 4e-4 for i in range(3)).abs() / mag
    print(f"autograd {auto.max().item():.1e}, finite differences {fd.max().item():.1e} (relative to |E|)")
    assert auto.max().item() < 1e-10 and fd.max().item() < 1e-6


def test_flux_density_is_the_poisson_kernel_mixture_and_field_lines_follow_the_posterior():
    """E_z > 0; 2 E_z = sum_i w_i P_z(x - x_i) (eq. 13.6); E_x / E_z = (x - E[x0|x, z]) / z (eq. 13.8), to 1e-13."""
    x, z = _points(300, 1)
    ex, ez = FIELD.field(x, z)
    assert (ez > 0).all()
    mix = torch.stack([poisson_log_kernel(x - c, z) for c in CHARGES], 1).exp() @ W
    assert torch.allclose(2 * ez, mix, rtol=1e-13, atol=0)
    v = FIELD.model(LinearVE(4.0), "velocity")(x, z)
    assert (v - ex / ez[:, None]).abs().max().item() < 1e-13


def test_continuity_equation_in_z():
    """The flux density p_z = 2 E_z is carried by dx/dz = E_x/E_z: d_z p + div(p v) = 0 (eq. 13.9), below 1e-6."""
    x, _ = _points(100, 2)
    for z in (0.3, 1.0, 3.0):
        res = continuity_residual(
            lambda y, s: FIELD.noised_log_prob(y, 1.0, s), lambda y, s: FIELD.velocity(y, 1.0, s, 0.0, 1.0), x, z
        )
        assert res.abs().max().item() < 1e-6, z


@pytest.mark.parametrize("z_start", [1.0, 10.0])
def test_ode_from_the_exact_kernel_mixture_lands_on_the_charges_with_their_weights(z_start):
    """x = x_i + z c, i ~ w (eq. 13.10) integrated down to z_min = 1e-5 (DPM-Solver++, 60 steps log-uniform in z)
    lands on the charges with frequencies w: chi^2 (df 7, N = 2e4) below 18.5 (chi2.ppf(0.999) is 24.3; measured
    5.2 / 6.6 at z_start = 1 / 10); fewer than 0.5% end farther than 1e-3 from a charge (measured 0.01% / 0.02%)."""
    sch = LinearVE(z_start)
    x = FIELD.sample_noised(20000, z_start, torch.Generator().manual_seed(3), f64)
    out = ode_sample(FIELD.model(sch, "x0"), x, log_grid(z_start, 1e-5, 60), sch, "dpm++2m")
    dist = torch.cdist(out, CHARGES)
    counts = torch.bincount(dist.argmin(1), minlength=8).double()
    stat = ((counts - 20000 * W) ** 2 / (20000 * W)).sum().item()
    far = (dist.min(1).values > 1e-3).double().mean().item()
    print(f"z = {z_start}: chi^2 = {stat:.2f}, unconverged {far:.4f}")
    assert stat < min(18.5, chi2.ppf(0.999, 7)) and far < 5e-3


def test_far_field_and_hemisphere_priors_improve_with_distance():
    """TV(flux density at z, one charge at the origin) falls with z_max (eq. 13.11); TV(flux through the hemisphere
    of radius R, uniform) falls with R and is below 0.03 at R = 20 = 10x the data radius (eq. 13.12). Exact
    importance-sampling estimates, 4 standard errors apart."""
    g = torch.Generator().manual_seed(4)
    tv_z = [prior_tv(FIELD, z, 50_000, g) for z in (2.0, 10.0, 50.0)]
    tv_r = [hemisphere_tv(FIELD, r, 50_000, g) for r in (5.0, 20.0, 100.0)]
    print("prior TV", [round(v, 4) for v, _ in tv_z], "hemisphere TV", [round(v, 4) for v, _ in tv_r])
    for tvs in (tv_z, tv_r):
        for (hi, se_hi), (lo, se_lo) in itertools.pairwise(tvs):
            assert hi - lo > 4 * math.hypot(se_hi, se_lo)
    assert tv_r[1][0] < 0.03


def test_prior_radius_law_and_clipping():
    """sample_prior draws P_z: the radius CDF is 1 - 1/sqrt(1 + (r/z)^2) in 2-D (eq. 13.11), within 4 SE at 5
    radii; with max_radius every |x| <= z max_radius; works for image shapes."""
    x = sample_prior(40000, 2, 10.0, torch.Generator().manual_seed(5), f64)
    r = x.norm(dim=1)
    for q in (2.0, 5.0, 10.0, 30.0, 100.0):
        p = 1 - 1 / math.sqrt(1 + (q / 10.0) ** 2)
        assert abs((r < q).double().mean().item() - p) < 4 * math.sqrt(p * (1 - p) / 40000)
    clipped = sample_prior(1000, (3, 4, 4), 10.0, torch.Generator().manual_seed(6), max_radius=5.0)
    assert clipped.shape == (1000, 3, 4, 4) and clipped.flatten(1).norm(dim=1).max().item() <= 50.0 + 1e-4


def test_printed_single_charge_target_is_biased_and_the_unbiased_one_is_not():
    """Regressing onto the field of the single charge x0 that (x, z) was perturbed from (the printed eq. 13.8) has
    the minimiser sum_i q_i G_i / sum_i q_i, q_i = w_i P_z(x - x_i): its direction differs from the field's by O(1).
    The unbiased target x0 (eq. 13.14) has the minimiser E[x0 | x, z], whose velocity is E_x/E_z exactly. The printed
    one's direction is exactly the field of a Student-t path with nu = d + 2 (PFGM++ with D = d + 2), which the
    sampler then follows from the Cauchy (D = 1) prior."""
    x, z = _points(200, 7)
    ex, ez = FIELD.field(x, z)
    resp = FIELD.component_posterior(x, 1.0, z)  # q_i / sum q
    diff = x[:, None, :] - CHARGES[None]
    r_pow = ((diff**2).sum(-1) + z[:, None] ** 2) ** -1.5
    printed_x = (resp[:, :, None] * diff * r_pow[:, :, None]).sum(1)
    printed_z = (resp * z[:, None] * r_pow).sum(1)
    ang = lambda u, v: torch.acos(((u * v).sum(1) / (u.norm(dim=1) * v.norm(dim=1))).clamp(-1, 1))  # noqa: E731
    field_dir = torch.cat([ex, ez[:, None]], 1)
    printed = torch.cat([printed_x, printed_z[:, None]], 1)
    unbiased = torch.cat([(x - FIELD.posterior_mean(x, 1.0, z)) / z[:, None], torch.ones(200, 1, dtype=f64)], 1)
    assert ang(printed, field_dir).max().item() > 0.1
    assert ang(unbiased, field_dir).max().item() < 1e-7
    # what the printed minimiser is instead: q_i G_i carries (r_i^2 + z^2)^-(d+1), the field of D = d + 2 augmented
    # dimensions (PFGM++), whose perturbation kernel is a Student-t with nu = d + 2: its direction, to rounding
    d, D = 2, 4
    student = ((diff**2).sum(-1) + z[:, None] ** 2) ** (-(d + D) / 2) * W[None]
    student_dir = torch.cat([(student[:, :, None] * diff).sum(1), (student * z[:, None]).sum(1)[:, None]], 1)
    assert ang(printed, student_dir).max().item() < 1e-7


def test_exact_field_runs_on_image_shapes():
    """The same field, loss and sampler take (B, C, H, W): the ODE from the exact kernel mixture returns the charges."""
    imgs = torch.rand(5, 3, 4, 4, generator=torch.Generator().manual_seed(8), dtype=f64)
    field = PoissonField(imgs)
    sch = LinearVE(5.0)
    x = field.sample_noised(64, 5.0, torch.Generator().manual_seed(9), f64, max_radius=3.0)
    out = ode_sample(field.model(sch, "x0"), x, log_grid(5.0, 1e-4, 40), sch, "dpm++2m")
    err = torch.cdist(out.flatten(1), imgs.flatten(1)).min(1).values
    assert out.shape == x.shape and err.max().item() < 1e-3
    net_like = field.model(dm.VPCosine(), "v")
    loss = PoissonLoss(dm.VPCosine(), max_radius=10.0)(net_like, imgs, torch.Generator().manual_seed(0))
    assert loss.dim() == 0 and torch.isfinite(loss)


def test_loss_draws_log_uniform_heights_and_the_batch_target_is_finite_at_the_data():
    """z_range draws z = b/a log-uniform (eq. 13.18): KS p-value of ln z against U[ln 0.002, ln 40] above 0.001
    (N = 4096); the minibatch target (eq. 13.15) stays finite when b_t rounds to 0 (t = 1e-9 in float32)."""
    seen = []

    def probe(x, t, cond=None):
        seen.append(t.detach().clone())
        return torch.zeros_like(x)

    probe.prediction = "v"
    sch = dm.VPCosine()
    data = td.sample("eight-gaussians", 4096, torch.Generator().manual_seed(10))
    PoissonLoss(sch, "batch", 5.0, z_range=(0.002, 40.0))(probe, data, torch.Generator().manual_seed(11))
    c = sch.coefficients(seen[0].double())
    u = (torch.log(c.b / c.a) - math.log(0.002)) / (math.log(40.0) - math.log(0.002))
    assert kstest(u.numpy(), "uniform").pvalue > 1e-3
    loss = PoissonLoss(sch, "batch", 5.0)
    loss.schedule = _Frozen(sch, 1e-9)
    assert torch.isfinite(loss(probe, data[:64], torch.Generator().manual_seed(12)))


class _Frozen(dm.VPCosine):
    """The cosine schedule with every drawn time replaced by one tiny t (b_t rounds to 0 in float32)."""

    def __init__(self, base, t):
        super().__init__(base.s)
        self.t_fixed = t

    def coefficients(self, t):
        return super().coefficients(torch.full_like(torch.as_tensor(t), self.t_fixed))


@pytest.mark.parametrize(("recipe", "sw_bound"), [("eight-gaussians-pfgm", 0.06), ("swiss-roll-pfgm", 0.07)])
def test_trained_pfgm_reaches_its_quality_bounds_and_matches_ddpm(recipe, sw_bound):
    """A PFGM MLP (recipe; Cauchy path on the cosine schedule clipped at radius 5, v-prediction, the minibatch's
    field as target, z log-uniform on [0.002, 40]: eqs. 13.15, 13.18-13.19) sampled from the prior at z_max = 40
    with DPM-Solver++ on a log-z grid, 20 steps = 20 NFE: sliced W1 to fresh data (N = 4000) below the bound
    (over 5 training and sampling seeds, benchmarks/pfgm_ablation.py: 0.035 +- 0.006 ring, 0.039 +- 0.005 swiss
    roll, mean +- SD, so the bounds sit 4 SD above; two independent 4000-point data sets give 0.033 +- 0.011 ring and
    0.036 +- 0.011 swiss roll, benchmarks/toy_floors.py); on the ring every mode weight within 0.03 of 1/8 (measured
    0.011 +- 0.004) and PFGM below 1.2x the DDPM recipe at the same NFE (DDPM 0.074 +- 0.007: ratio of means 0.47)."""
    tm = train_toy(recipe, progress=False)
    toy, clip = tm.config["toy"], tm.config["objective_kwargs"]["max_radius"]
    grid = pfgm_grid(tm.schedule, 20, z_max=40.0)
    x = pfgm_sample(tm.model, 4000, 2, grid, tm.schedule, generator=torch.Generator().manual_seed(3), max_radius=clip)
    fresh = td.sample(toy, 4000, torch.Generator().manual_seed(9))
    sw = sliced_w1(x, fresh, generator=torch.Generator().manual_seed(0))
    print(f"{recipe}: sliced W1 {sw:.4f} at NFE {nfe('dpm++2m', 20)}")
    assert sw < sw_bound
    if toy == "eight-gaussians":
        weights = mode_weights(td.eight_gaussians_mixture(), x)
        print("mode weights", [round(v, 3) for v in weights.tolist()])
        assert (weights - 0.125).abs().max().item() < 0.03
        dd = train_toy("eight-gaussians-ddpm", progress=False)
        x_T = torch.randn(4000, 2, generator=torch.Generator().manual_seed(3))
        xd = ode_sample(dd.model, x_T, dd.schedule.grid(20), dd.schedule, "dpm++2m")
        sw_ddpm = sliced_w1(xd, fresh, generator=torch.Generator().manual_seed(0))
        print(f"DDPM: sliced W1 {sw_ddpm:.4f} at NFE {nfe('dpm++2m', 20)}")
        assert sw < 1.2 * sw_ddpm


def test_pfgm_bad_input():
    """Bad input is refused with what was expected."""
    with pytest.raises(ValueError, match="sum to 1"):
        PoissonField(CHARGES, torch.ones(8, dtype=f64))
    with pytest.raises(ValueError, match="score"):
        FIELD.model(LinearVE(1.0), "score")
    with pytest.raises(ValueError, match="z > 0"):
        FIELD.noised_log_prob(CHARGES, 1.0, 0.0)
    with pytest.raises(ValueError, match="target"):
        PoissonLoss(LinearVE(1.0), target="normalised")
    with pytest.raises(ValueError, match="z_range"):
        PoissonLoss(LinearVE(1.0), z_range=(1.0, 0.1))
    with pytest.raises(ValueError, match="shape"):
        FIELD.field(torch.zeros(3, 3, dtype=f64), 1.0)
    with pytest.raises(ValueError, match="z_max"):
        pfgm_sample(FIELD.model(dm.VPCosine()), 4, 2, dm.VPCosine().grid(4), dm.VPCosine())


def test_pfgm_sample_takes_a_grid_from_the_prior_plane():
    """pfgm_sample(model, n, event_shape, grid, schedule) draws its prior on the plane z = b/a at grid[0]: on
    pfgm_grid(schedule, K, z_max) that plane is z_max (to 1e-12), and the result equals the prior draw scaled by a at
    grid[0] and integrated by ode_sample in sigma (bit for bit); an int or the schedule where the grid goes is a
    TypeError that says how to make a grid, and z_max above b/a at t_max is refused."""
    ve = dm.VE()
    model = FIELD.model(ve)
    grid = pfgm_grid(ve, 6, z_max=5.0)
    assert abs(ve.sigma(grid[0]).item() - 5.0) < 1e-12 and grid[-1] == 0
    x = pfgm_sample(model, 16, 2, grid, ve, generator=torch.Generator().manual_seed(0), dtype=f64)
    y = sample_prior(16, 2, ve.sigma(grid[0]).item(), torch.Generator().manual_seed(0), f64, 100.0)
    a0 = ve.coefficients(grid[0]).a.item()
    assert torch.equal(x, dm.ode.ode_sample(model, a0 * y, grid, ve, "dpm++2m", variable="sigma"))
    assert torch.equal(pfgm_grid(ve, 6), ve.grid(6, "log-snr"))
    with pytest.raises(TypeError, match=r"pfgm_sample takes a time grid .*pfgm_grid\(schedule, 20, z_max=40\.0\)"):
        pfgm_sample(model, 16, 2, 20, ve)
    with pytest.raises(TypeError, match="the grid comes before the schedule"):
        pfgm_sample(model, 16, 2, ve, 20)
    with pytest.raises(ValueError, match="z_max"):
        pfgm_grid(ve, 6, z_max=1e6)


@pytest.mark.parametrize("d", [2, 64, 192])
def test_clip_radius_keeps_the_asked_fraction_of_prior_draws(d):
    """Eq. 13.12's clip: the fraction of 100k prior radii (seed 0) below clip_radius(d, q) is q within 4 standard
    errors, and R_d follows sqrt(d / chi2_1(1 - q)) for large d (0.5% at d = 192)."""
    from scipy.stats import chi2

    r = pfgm.beta_prime_radius(100_000, d, torch.Generator().manual_seed(0), torch.float64)
    for q in (0.5, 0.9, 0.95):
        kept = (r <= pfgm.clip_radius(d, q)).double().mean().item()
        assert abs(kept - q) < 4 * math.sqrt(q * (1 - q) / 100_000)
    if d == 192:
        assert pfgm.clip_radius(d, 0.95) == pytest.approx(math.sqrt(d / chi2.ppf(0.05, 1)), rel=5e-3)
    with pytest.raises(ValueError, match="keep"):
        pfgm.clip_radius(d, 1.0)
    with pytest.raises(ValueError, match="positive integer"):
        pfgm.clip_radius(0)
