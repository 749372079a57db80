"""Lesson 4, sec. 4.6: the one sampler loop. Updates are pure and differentiable, hooks see the pair and the mean
with the step and a state carried across steps, and a method can merge several models' means before the noise."""

import pytest
import torch

import diffmath as dm
import toydata as td
from diffmath.core.notation import Pair
from diffmath.sampling import loop
from diffmath.sampling.samplers import ddim_rule

f64 = torch.float64
VP = dm.VPLinear()
RING = td.eight_gaussians_mixture()
MODEL = RING.model(VP, "eps")
GRID = VP.grid(10, t_start=0.999)
X1 = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=f64)


def test_gradient_through_a_step_matches_finite_differences():
    """d/dx of a loss on one DDIM step's output (eta = 0, exact model) equals central finite differences to 1e-6."""

    def step_loss(x):
        first = next(loop.run(MODEL, x, GRID, VP, ddim_rule(0.0), grad=True))
        return (first.x**2).sum() + first.x0[:, 0].sum()

    x = X1.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(step_loss(x), x)
    fd = torch.zeros_like(X1)
    h = 1e-6
    for i in range(4):
        for j in range(2):
            e = torch.zeros_like(X1)
            e[i, j] = h
            fd[i, j] = (step_loss(X1 + e) - step_loss(X1 - e)) / (2 * h)
    torch.testing.assert_close(grad[:4], fd[:4], rtol=1e-6, atol=1e-6)


def test_samplers_run_without_autograd_by_default():
    x = X1.clone().requires_grad_(True)
    *_, last = loop.run(MODEL, x, GRID, VP, ddim_rule(0.0))
    assert not last.x.requires_grad


def test_pair_hook_clips_x0_and_the_sample_obeys():
    """A hook on the denoised pair that clips x0 to [-0.5, 0.5] (recomputing eps from x) bounds every yielded x0, and
    the last step into the data returns the clipped x0 itself."""
    seen = []

    def clip(pair, x, step, state):
        seen.append(step.index)
        c = step.a_t, step.b_t
        x0 = pair.x0.clamp(-0.5, 0.5)
        return Pair(x0, (x - c[0] * x0) / c[1]), state

    steps = list(loop.run(MODEL, X1, GRID, VP, ddim_rule(0.0), on_pair=clip))
    assert seen == list(range(10))
    assert all(s.x0.abs().max() <= 0.5 for s in steps)
    assert steps[-1].x.abs().max() <= 0.5 + 1e-12
    assert torch.equal(steps[-1].x, steps[-1].x0)


def test_mean_hook_sees_every_step_and_keeps_its_state():
    """A hook on the mean before the noise sees steps 0..K-1, in order, with one state dict across the steps."""

    def count(mean, x, step, state):
        state["n"] = state.get("n", 0) + 1
        state.setdefault("t", []).append(step.t)
        return mean, state

    state = {}
    loop.final(loop.run(MODEL, X1, GRID, VP, ddim_rule(1.0), on_mean=count, state=state, noise=torch.Generator()))
    assert state["n"] == 10 and state["t"] == GRID[:-1].tolist()


def test_merging_two_models_means_before_the_noise():
    """A method that needs several models' means (AMDM) calls denoise and the rule itself: averaging the means of
    one model evaluated twice is that model's step, and an on_mean hook that merges two models reproduces it."""
    other = RING.model(VP, "x0")

    def merge(mean, x, step, state):
        t = torch.full((x.shape[0],), step.t, dtype=x.dtype)
        pair = loop.denoise(other, x, t, (step.a_t, step.b_t, step.da_t, step.db_t))
        mean2, _, _ = ddim_rule(0.0)(pair, x, step, state)
        return 0.5 * (mean + mean2), state

    merged = loop.final(loop.run(MODEL, X1, GRID, VP, ddim_rule(0.0), on_mean=merge))
    alone = loop.final(loop.run(MODEL, X1, GRID, VP, ddim_rule(0.0)))
    torch.testing.assert_close(merged, alone, rtol=1e-10, atol=1e-10)  # the same exact model, two parameterisations


def test_loop_reports_nan_with_its_step():
    def nan_after(x, t, cond=None):
        return torch.where(t[:, None] < 0.5, torch.full_like(x, float("nan")), MODEL(x, t))

    nan_after.prediction = "eps"
    with pytest.raises(ValueError, match=r"at step 5 \(t=0\.4995 -> 0\.3996\): model returned NaN or inf"):
        loop.final(loop.run(nan_after, X1, GRID, VP, ddim_rule(0.0)))
    with pytest.raises(ValueError, match="check_every must be an integer >= 0"):
        loop.final(loop.run(MODEL, X1, GRID, VP, ddim_rule(0.0), check_every=-1))


class _TinyNet(torch.nn.Module):
    def __init__(self, kind, dtype):
        super().__init__()
        torch.manual_seed(0)
        self.prediction = kind
        self.net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.SiLU(), torch.nn.Linear(16, 2)).to(dtype)

    def forward(self, x, t, cond=None):
        return self.net(torch.cat([x, t[:, None]], 1))


@pytest.mark.parametrize("dtype", [torch.float32, f64])
@pytest.mark.parametrize("kind", ["eps", "x0", "v", "velocity"])
def test_prebuilt_coefficients_give_the_float_arithmetic_bit_for_bit(kind, dtype):
    """Issue 15, item 8: the loop's coefficients built once per grid (times as views, a, b and the DDIM rule's a_s, c
    as 0-dim tensors) change no bit of a trajectory against the same steps done with Python floats, one at a time."""
    sched, grid = dm.VPCosine(), dm.VPCosine().grid(8, t_start=0.99)
    model, x = _TinyNet(kind, dtype), X1.to(dtype)
    noise = [torch.randn(x.shape, generator=torch.Generator().manual_seed(k), dtype=dtype) for k in range(8)]
    got = [s.x for s in loop.run(model, x, grid, sched, ddim_rule(0.5), noise=noise)]
    c = sched.coefficients(grid)
    cols = list(zip(c.a.tolist(), c.b.tolist(), c.da.tolist(), c.db.tolist(), strict=True))
    times, rule, y = grid.tolist(), ddim_rule(0.5), x
    for i in range(8):
        step = loop.Step(i, 8, times[i], times[i + 1], *cols[i], *cols[i + 1])
        with torch.no_grad():
            pair = loop.denoise(model, y, torch.full((len(y),), times[i], dtype=dtype), cols[i])
            mean, std, _ = rule(pair, y, step, {})  # no prepared entry: the floats themselves
        y = mean + std * noise[i]
        assert torch.equal(got[i], y), f"step {i} differs"
