"""Lesson 17: rectified flow, its closed form on a Gaussian mixture, reflow, straightness, one-step sampling."""

import math

import numpy as np
import pytest
import torch

import diffmath as dm
import toydata as td
from diffmath.flows import (
    AffineCouplingFlow,
    GMMFlow,
    cost_identity,
    distill,
    gmm_velocity,
    reflow,
    reflow_pairs,
    sample_flow,
    straightness,
)
from diffmath.metrics import mmd_rbf, sliced_w1
from diffmath.ode import ode_sample
from diffmath.recipes import reflow_toy

f64 = torch.float64
LIN = dm.LinearPath()
RING = td.eight_gaussians_mixture()


@pytest.mark.parametrize("which", ["ring", "full-3d", "points"])
def test_closed_form_velocity_matches_the_score_form(which):
    """v = sum_k r_k [(t I - (1 - t) Sigma_k) C_k^{-1} x - t C_k^{-1} mu_k] (eq. 17.6) equals the score-form velocity
    of lesson 0 to 1e-8 in float64 on [0, 1] (ring, a full-covariance 3-D mixture, point masses for t > 0)."""
    g = torch.Generator().manual_seed(0)
    if which == "ring":
        gmm = RING
    elif which == "full-3d":
        gmm = td.random_mixture(4, 3, g)
    else:
        gmm = dm.EmpiricalData(torch.randn(6, 2, generator=g, dtype=f64))
    x = 2 * torch.randn(300, *gmm.event_shape, generator=g, dtype=f64)
    lo = 0.01 if which == "points" else 0.0
    for t in torch.linspace(lo, 1.0, 7, dtype=f64):
        c = LIN.coefficients(t.expand(300))
        ref = gmm.velocity(x, c.a, c.b, c.da, c.db)
        assert (gmm_velocity(gmm, x, t) - ref).abs().max() < 1e-8, t


@pytest.mark.parametrize("t", [0.2, 0.5, 0.8])
def test_exact_velocity_solves_the_continuity_equation(t):
    """The ring's noised density and the closed-form velocity solve d_t p + div(v p) = 0 (eq. 17.2) on a 15 x 15 grid
    of [-3, 3]^2: residual < 1e-6 relative to max p (central differences, h = 1e-5)."""
    u = torch.linspace(-3, 3, 15, dtype=f64)
    x = torch.stack(torch.meshgrid(u, u, indexing="ij"), -1).reshape(-1, 2)
    p = lambda y, s: torch.exp(RING.noised_log_prob(y, 1 - s, s))  # noqa: E731
    h = 1e-5
    dt = (p(x, t + h) - p(x, t - h)) / (2 * h)
    flux = lambda y: gmm_velocity(RING, y, t) * p(y, t)[:, None]  # noqa: E731
    div = torch.zeros(x.shape[0], dtype=f64)
    for i in range(2):
        e = torch.zeros(2, dtype=f64)
        e[i] = h
        div = div + (flux(x + e) - flux(x - e))[:, i] / (2 * h)
    assert ((dt + div).abs().max() / p(x, t).max()) < 1e-6


def test_one_euler_step_of_1rf_returns_the_data_mean():
    """v(x, 1) = x - E[x0] for every x (eq. 17.5), so one Euler step of the exact 1-RF maps every prior sample to the
    data mean (1e-12): the ring's centre and a random mixture's mean."""
    g = torch.Generator().manual_seed(1)
    for gmm in (RING, td.random_mixture(3, 2, g)):
        z = 3 * torch.randn(200, 2, generator=g, dtype=f64)
        x = sample_flow(GMMFlow(gmm), z, LIN.grid(1), LIN)
        assert (x - gmm.mean()).abs().max() < 1e-12


def test_euler_on_the_exact_flow_has_order_one():
    """Euler's mean error against Heun with 400 steps (itself 1e-5 accurate) falls with slope -1 from n = 8 to 128
    (measured -0.96; band [-1.15, -0.85]); n = 1 gives 2.01, n = 128 gives 0.0048."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(500, 2, generator=g, dtype=f64)
    flow = GMMFlow(RING)
    ref = ode_sample(flow, z, LIN.grid(400), LIN, "heun")
    ns = [1, 8, 16, 32, 64, 128]
    errs = [(sample_flow(flow, z, LIN.grid(n), LIN) - ref).norm(dim=1).mean().item() for n in ns]
    slope = np.polyfit(np.log(ns[1:]), np.log(errs[1:]), 1)[0]
    assert -1.15 < slope < -0.85
    assert 1.9 < errs[0] < 2.1 and 0.004 < errs[-1] < 0.0056


def test_cost_identity_holds_for_the_exact_flow():
    """E||Z1 - Z0||^2 = E||X1 - X0||^2 - V(X) - S(Z) (eq. 17.12) for the ring's exact 1-RF, N = 4000 independent pairs,
    Heun 100 steps: the residual is within 4 standard errors of 0, and the terms lie in their asserted ranges
    (E||X1 - X0||^2 = 6.045 exactly; measured V 3.75, S 1.44, E||Z1 - Z0||^2 0.88)."""
    g = torch.Generator().manual_seed(0)
    x0, x1 = RING.sample(4000, g, dtype=f64), torch.randn(4000, 2, generator=g, dtype=f64)
    ci = cost_identity(GMMFlow(RING), x0, x1, LIN, g, num_steps=100)
    assert abs(ci.residual) < 4 * ci.residual_se
    assert abs(ci.coupling_cost - 6.045) < 0.15
    assert 3.55 < ci.V < 3.9 and 1.38 < ci.S < 1.5 and 0.84 < ci.flow_cost < 0.93


def test_gaussian_target_2rf_is_exact_in_one_step():
    """For a Gaussian target N(m, Sigma) the 1-RF coupling is affine, Z0 = Sigma^{1/2} Z1 + m (eq. 17.14): the least
    squares fit of the exact flow's pairs has residual < 1e-5 and A = Sigma^{1/2}; the 2-RF of that coupling has
    straightness < 1e-12 (1-RF: > 0.05) and one Euler step returns Z0 to 1e-5."""
    cov = torch.tensor([[[1.5, 0.6], [0.6, 0.4]]], dtype=f64)
    gauss = dm.GaussianMixture(torch.ones(1, dtype=f64), torch.tensor([[1.0, -0.5]], dtype=f64), cov)
    g = torch.Generator().manual_seed(2)
    z1 = torch.randn(300, 2, generator=g, dtype=f64)
    pairs = reflow_pairs(GMMFlow(gauss), z1, LIN, num_steps=400)
    rf2 = AffineCouplingFlow.from_pairs(pairs)
    lam, U = torch.linalg.eigh(cov[0])
    assert rf2.residual < 1e-5
    assert torch.allclose(rf2.A, U @ torch.diag(lam.sqrt()) @ U.T, atol=1e-5)
    assert straightness(rf2, z1, LIN, 20, "euler").straightness < 1e-12
    assert straightness(GMMFlow(gauss), z1, LIN, 50).straightness > 0.05
    assert (sample_flow(rf2, z1, LIN.grid(1), LIN) - pairs[:, 0]).abs().max() < 1e-5


def test_liu_time_convention_gives_the_same_sampler():
    """Liu et al. run s = 1 - t with velocity -v (eq. 17.16): Euler from s = 0 to 1 on their field equals our Euler
    from t = 1 to 0 (1e-12)."""
    g = torch.Generator().manual_seed(3)
    z = torch.randn(50, 2, generator=g, dtype=f64)
    ours = sample_flow(GMMFlow(RING), z, LIN.grid(10), LIN)
    x = z.clone()
    for s in torch.linspace(0, 1, 11, dtype=f64)[:-1]:
        x = x + 0.1 * (-gmm_velocity(RING, x, 1 - s))
    assert (x - ours).abs().max() < 1e-12


# measured (one thread, cached recipes; 1-RF 3000 steps, one reflow of 10000 pairs x 1500 steps):
#   ring:  S 1.45 -> 0.0024 (600x), one-step SW1 1.23 -> 0.047 (26x), MMD 1.01 -> 0.0035 (290x)
#   moons: S 0.61 -> 0.0011 (550x), one-step SW1 0.55 -> 0.019 (30x), MMD 0.86 -> 0.0001 (> 1000x)
REFLOW = {"eight-gaussians-rf": (50.0, 8.0, 50.0), "moons-rf": (50.0, 8.0, 50.0)}


@pytest.mark.parametrize("recipe", list(REFLOW))
def test_trained_reflow_straightens_and_samples_in_one_step(recipe):
    """A trained reflow (2-RF from the 1-RF's ODE pairs): straightness drops by > 50x, the one-step sliced W1 by > 8x
    and the one-step MMD^2 by > 50x (measured 600x/26x/290x on the ring, 550x/30x/>1000x on the moons); the transport
    cost does not rise (within 4 SE) and 20-step quality stays within 1.5x of the 1-RF's. reflow_toy returns the last
    round (the 2-RF here), every round with return_all=True."""
    s_fac, sw_fac, mmd_fac = REFLOW[recipe]
    rf1, rf2 = reflow_toy(recipe, rounds=1, progress=False, return_all=True)
    assert reflow_toy(recipe, rounds=1, progress=False).path == rf2.path  # one round: its model, not a list
    ref = td.sample(rf1.config["toy"], 4000, torch.Generator().manual_seed(7))
    z = torch.randn(4000, 2, generator=torch.Generator().manual_seed(8))
    st = [straightness(m.model, z[:1000], LIN, 50, "euler") for m in (rf1, rf2)]
    assert st[0].straightness > s_fac * st[1].straightness
    assert st[1].cost < st[0].cost + 4 * st[0].per_sample[:, 1].std().item() / math.sqrt(1000)
    one = [sample_flow(m.model, z, LIN.grid(1), LIN) for m in (rf1, rf2)]
    sw = [sliced_w1(x, ref, 256, torch.Generator().manual_seed(1)) for x in one]
    mmd = [mmd_rbf(x[:2000], ref[:2000]) for x in one]
    assert sw[0] > sw_fac * sw[1]
    assert mmd[0] > mmd_fac * max(mmd[1], 1e-4)
    many = [
        sliced_w1(sample_flow(m.model, z, LIN.grid(20), LIN), ref, 256, torch.Generator().manual_seed(1))
        for m in (rf1, rf2)
    ]
    assert many[1] < 1.5 * many[0]


def test_reflow_and_distillation_run_on_any_model():
    """reflow() retrains a copy on paired rows and distill() fits one Euler step to the teacher's endpoints (eq.
    17.15): on the ring's exact-flow pairs, a small net distilled for 600 steps samples in one step with sliced W1
    < 0.5 of the 1-RF's one step (measured 0.11 vs 1.28). reflow() returns the last round's model for any number of
    rounds (rounds=1 too), and every round's with return_all=True."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(4)
    z = torch.randn(2000, 2, generator=g)
    net = dm.nets.MLP(2, 32, 2, "velocity")
    student = distill(
        GMMFlow(RING), z.double(), LIN, 600, student=net, progress=False, batch_size=256, lr=3e-3, ema_decay=None
    )
    ref = RING.sample(2000, g)
    z2 = torch.randn(2000, 2, generator=g)
    sw = sliced_w1(sample_flow(student, z2, LIN.grid(1), LIN), ref, 128, torch.Generator().manual_seed(1))
    sw1 = sliced_w1(
        sample_flow(GMMFlow(RING), z2.double(), LIN.grid(1), LIN), ref, 128, torch.Generator().manual_seed(1)
    )
    assert sw < 0.5 * sw1
    small = {"steps": 5, "num_steps": 4, "progress": False, "seed": 1}
    one = reflow(dm.nets.MLP(2, 8, 1, "velocity"), z[:256], LIN, rounds=1, **small)
    assert isinstance(one, torch.nn.Module) and one.prediction == "velocity" and not one.training
    start = dm.nets.MLP(2, 8, 1, "velocity")
    models = reflow(start, z[:256], LIN, rounds=2, return_all=True, **small)
    assert len(models) == 2 and all(m.prediction == "velocity" for m in models)
    last = reflow(start, z[:256], LIN, rounds=2, **small)
    pairs_of_weights = zip(last.state_dict().values(), models[-1].state_dict().values(), strict=True)
    assert all(torch.equal(p, q) for p, q in pairs_of_weights)
    with pytest.raises(TypeError, match="return_all"):
        reflow(net, z, LIN, return_all="yes")
    with pytest.raises(ValueError, match="rounds"):
        reflow(net, z, LIN, rounds=0)
