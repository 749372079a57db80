"""The common sampler suite (DESIGN.md): every sampler, the same cases.

Each entry of SAMPLERS is ``(name, schedule, run)`` with ``run(model, x_T, grid, generator) -> x_0``. Later lessons add
their samplers here; each must pass shapes, dtypes, determinism, the grid's data end, NaN reporting and the exact-model
convergence check.
"""

import pytest
import torch

import diffmath as dm
import toydata as td
from diffmath.ode import ode_sample
from diffmath.sampling.loop import run as run_rule
from diffmath.sde import predictor_corrector, reverse_sde
from diffmath.solvers import deis_rule, dpm_multistep_rule, dpm_singlestep_rule, unipc_rule
from diffmath.variance import analytic_ddpm

SU = dm.su_linear(1000)
VP = dm.VPLinear()


def _last(steps):
    *_, last = steps
    return last.x


SAMPLERS = [
    ("ddim", SU, lambda m, x, g, gen: dm.sample(m, x, g, SU, eta=0.0, generator=gen)),
    ("ddpm", SU, lambda m, x, g, gen: dm.sample(m, x, g, SU, eta=1.0, generator=gen)),
    ("ddpm-upper", SU, lambda m, x, g, gen: dm.sample(m, x, g, SU, eta=1.0, generator=gen, variance="upper")),
    ("ddim-eta0.5-vp", VP, lambda m, x, g, gen: dm.sample(m, x, g, VP, eta=0.5, generator=gen)),
    ("ode-euler", VP, lambda m, x, g, gen: ode_sample(m, x, g, VP, "euler")),
    ("ode-heun", VP, lambda m, x, g, gen: ode_sample(m, x, g, VP, "heun")),
    ("ode-dpm++2m", VP, lambda m, x, g, gen: ode_sample(m, x, g, VP, "dpm++2m")),
    ("ode-dpm++2m-discrete", SU, lambda m, x, g, gen: ode_sample(m, x, g, SU, "dpm++2m")),
    ("reverse-sde", VP, lambda m, x, g, gen: _last(reverse_sde(m, x, g, VP, 1.0, generator=gen))),
    ("predictor-corrector", VP, lambda m, x, g, gen: _last(predictor_corrector(m, x, g, VP, generator=gen))),
    # Euler in sigma is the DDIM rule; Heun in sigma is the rule pfgm_sample runs from its prior (lesson 13)
    ("ode-heun-sigma", VP, lambda m, x, g, gen: ode_sample(m, x, g, VP, "heun", variable="sigma")),
    ("ancestral-upper", SU, lambda m, x, g, gen: _last(analytic_ddpm(m, x, g, SU, "upper", generator=gen))),
    # the few-step solvers of lesson 6, secs. 6.9-6.11, as rules of the one loop
    ("dpm++3m", SU, lambda m, x, g, gen: _last(run_rule(m, x, g, SU, dpm_multistep_rule(3)))),
    ("dpm++3m-sigma-vp", VP, lambda m, x, g, gen: _last(run_rule(m, x, g, VP, dpm_multistep_rule(3, final="sigma")))),
    ("dpm++2s", SU, lambda m, x, g, gen: _last(run_rule(m, x, g, SU, dpm_singlestep_rule()))),
    ("dpm++3s", SU, lambda m, x, g, gen: _last(run_rule(m, x, g, SU, dpm_singlestep_rule(order=3)))),
    ("unipc-2", SU, lambda m, x, g, gen: _last(run_rule(m, x, g, SU, unipc_rule(2, "bh2", final="sigma")))),
    ("deis-3", VP, lambda m, x, g, gen: _last(run_rule(m, x, g, VP, deis_rule(3)))),
    (
        "ancestral-analytic",  # lesson 7's rule; sbar2 = 0 is the perfect-denoiser limit (the posterior variance)
        SU,
        lambda m, x, g, gen: _last(analytic_ddpm(m, x, g, SU, "analytic", lambda y, t: torch.zeros(len(y)), gen)),
    ),
]
IDS = [s[0] for s in SAMPLERS]


def image_gmm():
    g = torch.Generator().manual_seed(0)
    means = torch.randn(2, 1, 4, 4, generator=g, dtype=torch.float64)
    return dm.GaussianMixture(
        torch.tensor([0.5, 0.5], dtype=torch.float64), means, torch.full((2,), 0.05, dtype=torch.float64)
    )


@pytest.mark.parametrize(("name", "sched", "run"), SAMPLERS, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(64, 2), (16, 1, 4, 4)], ids=["vectors", "images"])
def test_shapes_dtypes_and_determinism(name, sched, run, dtype, shape):
    gmm = td.eight_gaussians_mixture() if len(shape) == 2 else image_gmm()
    model = gmm.model(sched)
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    grid = sched.grid(20)
    a = run(model, x_T, grid, torch.Generator().manual_seed(2))
    b = run(model, x_T, grid, torch.Generator().manual_seed(2))
    assert a.shape == x_T.shape and a.dtype == dtype and torch.isfinite(a).all()
    assert torch.equal(a, b), "a seeded generator must make the sampler deterministic"


@pytest.mark.parametrize(("name", "sched", "run"), SAMPLERS, ids=IDS)
def test_the_grid_ends_at_the_data(name, sched, run):
    """Sampling to t = 0 with single-point data returns the point: exactly for the DDIM family, the exponential
    integrator and the SDE samplers (their last step is a_0 x0_hat), to discretisation error for Euler and Heun in t:
    20x more steps cut their error at least 3x (measured 4.8x for Heun: near t = 0 the drift of VP-linear grows like
    t^(-1/2), so uniform grids converge like h^(1/2) there)."""
    x_star = torch.tensor([[1.5, -0.5]], dtype=torch.float64)
    model = dm.EmpiricalData(x_star).model(sched)
    x_T = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = run(model, x_T, sched.grid(10), torch.Generator().manual_seed(0))
    if name in ("ode-euler", "ode-heun"):
        fine = run(model, x_T, sched.grid(200), torch.Generator().manual_seed(0))
        assert (fine - x_star).abs().max() < (out - x_star).abs().max() / 3
    else:
        assert (out - x_star).abs().max() < 1e-9
    times = [step.t for step in dm.ddim(model, x_T, sched.grid(10), sched)]
    assert times[-1] == 0.0 and len(times) == 10


@pytest.mark.parametrize(("name", "sched", "run"), SAMPLERS, ids=IDS)
def test_a_model_returning_nan_is_reported(name, sched, run):
    class Diverged:
        prediction = "eps"

        def __call__(self, x, t, cond=None):
            out = torch.zeros_like(x)
            out[0, 0] = float("nan") if t[0] < sched.t_max / 2 else 0.0
            return out

    with pytest.raises(ValueError, match="NaN or inf"):
        run(Diverged(), torch.randn(4, 2), sched.grid(10), torch.Generator().manual_seed(0))


@pytest.mark.parametrize(("name", "sched", "run"), SAMPLERS, ids=IDS)
def test_exact_model_convergence(name, sched, run):
    """With the exact model and 200 steps every sampler restores the 8-Gaussian ring: mean radius 2 +- 0.03 and
    every mode weight 1/8 +- 0.03 (N = 2000)."""
    from diffmath.metrics import mode_weights

    gmm = td.eight_gaussians_mixture()
    x = run(
        gmm.model(sched),
        torch.randn(2000, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64),
        sched.grid(200),
        torch.Generator().manual_seed(4),
    )
    assert abs(x.norm(dim=1).mean().item() - 2.0) < 0.03
    assert (mode_weights(gmm, x) - 1 / 8).abs().max() < 0.03


# ---------------------------------------------------------------------------------------------------------------------
# Lesson 20: the same samplers on image-shaped batches, with a small UNet and with the exact mixture in d = C*H*W.

_UNETS = {}


def tiny_unet(sched, dtype):
    """A 2-level UNet on 3x4x4 images (eps-prediction, 1-label conditioning), trained 10 steps so no layer is still
    at its zero initialisation."""
    from diffmath.nets.unet import UNet
    from diffmath.train.training import fit

    key = sched.name
    if key not in _UNETS:
        torch.manual_seed(0)
        net = UNet(3, (8, 16), attention=(False, True), t_max=sched.t_max, num_classes=2)
        data = torch.randn(64, 3, 4, 4, generator=torch.Generator().manual_seed(0))
        labels = torch.arange(64) % 2
        _UNETS[key] = fit(net, data, sched, 10, batch_size=16, labels=labels, ema_decay=None, progress=False).model
    return _UNETS[key].to(dtype)


@pytest.mark.parametrize(("name", "sched", "run"), SAMPLERS, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_unet_on_images_shapes_dtypes_and_determinism(name, sched, run, dtype):
    """Every sampler drives the UNet on (B, 3, 4, 4) batches: shape and dtype kept, finite, deterministic."""
    model = tiny_unet(sched, dtype)
    x_T = torch.randn(4, 3, 4, 4, generator=torch.Generator().manual_seed(1), dtype=dtype)
    grid = sched.grid(8)
    with torch.no_grad():
        a = run(model, x_T, grid, torch.Generator().manual_seed(2))
        b = run(model, x_T, grid, torch.Generator().manual_seed(2))
    assert a.shape == x_T.shape and a.dtype == dtype and torch.isfinite(a).all()
    assert torch.equal(a, b), "a seeded generator must make the sampler deterministic"
    assert not torch.equal(a, x_T), "the trained UNet must move the state"


@pytest.mark.parametrize(("name", "sched", "run"), SAMPLERS, ids=IDS)
def test_exact_model_convergence_on_images(name, sched, run):
    """With the exact 3-component mixture on 3x4x4 images (d = 48, component std 0.2, weights 0.5/0.3/0.2) and 200
    steps, every sampler restores the mode weights (4 SE at N = 400: +-0.10 for 0.5) and the within-mode spread, the
    mean squared distance to the assigned mean, d * 0.04 = 1.92 (SE 1%). Measured: ODE solvers and the SDE samplers
    1.87-1.96; the DDIM family loses variance on a 200-of-1000 grid, more with more fresh noise (DDIM 1.82, eta = 0.5
    1.72, DDPM 1.61, DDPM-upper 1.51: its reverse steps ignore the posterior spread of x0 that lesson 7's optimal
    variance restores). Bounds: 0.75 < spread / 1.92 < 1.05, and the ODE solvers within 5%."""
    from diffmath.metrics import mode_weights

    g = torch.Generator().manual_seed(0)
    weights = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    means = torch.randn(3, 3, 4, 4, generator=g, dtype=torch.float64)
    gmm = dm.GaussianMixture(weights, means, torch.full((3,), 0.04, dtype=torch.float64))
    x = run(
        gmm.model(sched),
        torch.randn(400, 3, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64),
        sched.grid(200),
        torch.Generator().manual_seed(4),
    )
    w = mode_weights(gmm, x)
    se = (weights * (1 - weights) / 400).sqrt()
    assert ((w - weights).abs() < 4 * se).all(), w
    k = gmm.component_posterior(x, 1.0, 0.0).argmax(1)
    ratio = ((x - means[k]) ** 2).sum(dim=(1, 2, 3)).mean().item() / 1.92
    assert 0.75 < ratio < 1.05, ratio
    if name.startswith("ode"):
        assert abs(ratio - 1) < 0.05, ratio


def test_default_solvers_are_heun_except_where_a_docstring_says_why():
    """One default ODE solver: Heun for ode_sample, solve_ode and the flows' accurate solves (pairs, straightness,
    reflow, distillation, the cost identity); Euler for sample_flow (straight flows) and DPM-Solver++(2M) for
    pfgm_sample (exact in ln z), each with its reason in its docstring and in help(diffmath)."""
    import inspect

    from diffmath import flows, ode, pfgm, recipes

    def default(fn):
        return inspect.signature(fn).parameters["method"].default

    heun = [ode.solve_ode, ode.ode_sample, flows.reflow_pairs, flows.straightness, flows.cost_identity]
    assert {default(fn) for fn in [*heun, flows.reflow, flows.distill, recipes.reflow_toy]} == {"heun"}
    for fn, method, reason in ((flows.sample_flow, "euler", "straight"), (pfgm.pfgm_sample, "dpm++2m", "ln z")):
        assert default(fn) == method and reason in " ".join(fn.__doc__.split())
    assert "ODE samplers default to Heun" in " ".join(dm.__doc__.split())
