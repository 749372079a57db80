"""The common sampler suite (DESIGN.md): every sampler, the same cases.

Each entry of SAMPLERS is ``(name, schedule, run)`` with ``run(model, x_T, grid, generator) -> x_0``. Later lessons add
their samplers here; each must pass shapes, dtypes, determinism, the grid's data end, NaN reporting and the exact-model
convergence check.
"""

import pytest
import torch

import diffmath as dm
import toydata as td

SU = dm.su_linear(1000)
SAMPLERS = [
    ("ddim", SU, lambda m, x, g, gen: dm.sample(m, x, g, SU, eta=0.0, generator=gen)),
    ("ddpm", SU, lambda m, x, g, gen: dm.sample(m, x, g, SU, eta=1.0, generator=gen)),
    ("ddpm-upper", SU, lambda m, x, g, gen: dm.sample(m, x, g, SU, eta=1.0, generator=gen, variance="upper")),
    ("ddim-eta0.5-vp", dm.VPLinear(), lambda m, x, g, gen: dm.sample(m, x, g, dm.VPLinear(), eta=0.5, generator=gen)),
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
    """Sampling to t = 0 returns the model's denoised guess at the last step: with single-point data it is the point."""
    x_star = torch.tensor([[1.5, -0.5]], dtype=torch.float64)
    model = dm.EmpiricalData(x_star).model(sched)
    out = run(model, torch.randn(8, 2, dtype=torch.float64), sched.grid(10), torch.Generator().manual_seed(0))
    assert (out - x_star).abs().max() < 1e-9
    stopped = []
    for step in dm.ddim(model, torch.randn(8, 2, dtype=torch.float64), sched.grid(10), sched):
        stopped.append(step.t)
    assert stopped[-1] == 0.0 and len(stopped) == 10


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
    from diffmath.tour import mode_weights

    gmm = td.eight_gaussians_mixture()
    x = run(
        gmm.model(sched),
        torch.randn(2000, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64),
        sched.grid(200),
        torch.Generator().manual_seed(4),
    )
    assert abs(x.norm(dim=1).mean().item() - 2.0) < 0.03
    assert (mode_weights(gmm, x) - 1 / 8).abs().max() < 0.03
