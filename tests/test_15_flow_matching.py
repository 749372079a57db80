"""Lesson 15: conditional paths with any prior, the method of characteristics, conditional flow matching."""

import itertools
import math

import pytest
import torch
from scipy.stats import chisquare

import diffmath as dm
from diffmath.flows import (
    ConditionalPath,
    EmpiricalFlow,
    FlowMatchingLoss,
    FunctionSchedule,
    OTPath,
    UniformPrior,
    minibatch_ot,
    sample_flow,
)

f64 = torch.float64
LIN = dm.LinearPath()
# a curved mean with mu_0 = x0, mu_1 = 0: mu_t = (1 - t)^2 x0 + sin(pi t) (1 - t) c
C = torch.tensor([0.3, -0.2], dtype=f64)
MU = lambda x0, t: (1 - t)[:, None] ** 2 * x0 + (torch.sin(math.pi * t) * (1 - t))[:, None] * C  # noqa: E731
DMU = lambda x0, t: (  # noqa: E731
    -2 * (1 - t)[:, None] * x0 + (math.pi * torch.cos(math.pi * t) * (1 - t) - torch.sin(math.pi * t))[:, None] * C
)


def test_gaussian_path_is_the_schedule():
    """With a Gaussian prior and mu_t = a_t x0, sigma_t = b_t (eq. 15.4) the path is the diffusion schedule: its point
    is a x0 + b eps and its target the velocity da x0 + db eps, to 1e-12, for the straight and a VP path."""
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(50, 2, generator=g, dtype=f64), torch.randn(50, 2, generator=g, dtype=f64)
    t = torch.rand(50, generator=g, dtype=f64) * 0.98 + 0.01
    for sched in (LIN, dm.VPCosine()):
        path = ConditionalPath(sched)
        c = sched.coefficients(t)
        assert torch.allclose(path.sample(x0, t, x1), c.a[:, None] * x0 + c.b[:, None] * x1, atol=1e-12)
        want = dm.from_pair(dm.Pair(x0, x1), "velocity", c.a, c.b, c.da, c.db)
        assert torch.allclose(path.target(x0, x1, t), want, atol=1e-12)
    assert OTPath(0.0).coefficients(t).b.sub(t).abs().max() == 0  # sigma_min = 0 is rectified flow


SQ = FunctionSchedule(lambda t: 1 - t, lambda t: t**2, lambda t: -torch.ones_like(t), lambda t: 2 * t, "sigma=t^2")


@pytest.mark.parametrize("prior", ["gaussian", "uniform"])
@pytest.mark.parametrize("sched", [dm.VPCosine(), SQ], ids=["vp-cosine", "sigma=t^2"])
def test_paths_are_characteristics_of_the_conditional_field(prior, sched):
    """x_t = mu_t(x0) + sigma_t x1 solves dx/dt = f_t(x | x0) = mu' + (sigma'/sigma)(x - mu) (eq. 15.7) for a curved
    mu and two sigma_t: the field at x_t equals the target, and both equal a central difference of the path (1e-7)."""
    path = ConditionalPath(sched, prior, mu=MU, dmu=DMU)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(40, 2, generator=g, dtype=f64)
    x1 = path.sample_prior((40, 2), g)
    t = torch.rand(40, generator=g, dtype=f64) * 0.9 + 0.05
    xt = path.sample(x0, t, x1)
    f = path.conditional_velocity(xt, x0, t)
    assert torch.allclose(f, path.target(x0, x1, t), atol=1e-10)
    h = 1e-5
    fd = (path.sample(x0, t + h, x1) - path.sample(x0, t - h, x1)) / (2 * h)
    assert torch.allclose(fd, f, atol=1e-7)


def test_conditional_density_solves_the_continuity_equation():
    """p_t(x | x0) = p_1((x - mu_t)/sigma_t) / sigma_t^d (eq. 15.8, from the characteristics) with the field f_t(x | x0)
    solves d_t p + div(f p) = 0 (relative residual < 1e-6 by central differences), and for the straight path with
    a Gaussian prior it is N((1 - t) x0, t^2 I): the text's (15.20) with (1 + t) x0 is not."""
    path = ConditionalPath(dm.VPCosine(), "gaussian", mu=MU, dmu=DMU)
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(1, 2, generator=g, dtype=f64).expand(30, 2)
    x = torch.randn(30, 2, generator=g, dtype=f64) * 0.8
    t = torch.full((30,), 0.4, dtype=f64)
    p = lambda y, s: torch.exp(path.conditional_log_prob(y, x0, s))  # noqa: E731
    h = 1e-5
    dt = (p(x, t + h) - p(x, t - h)) / (2 * h)
    div = torch.zeros(30, dtype=f64)
    for i in range(2):
        e = torch.zeros(2, dtype=f64)
        e[i] = h
        flux = lambda y, i=i: path.conditional_velocity(y, x0, t)[:, i] * p(y, t)  # noqa: E731
        div = div + (flux(x + e) - flux(x - e)) / (2 * h)
    assert ((dt + div).abs() / p(x, t).max()).max() < 1e-6
    lin = ConditionalPath(LIN)
    tt = torch.full((30,), 0.5, dtype=f64)
    normal = -0.5 * ((x - 0.5 * x0) ** 2).sum(1) / 0.25 - math.log(2 * math.pi * 0.25)
    assert torch.allclose(lin.conditional_log_prob(x, x0, tt), normal, atol=1e-12)
    wrong = -0.5 * ((x - 1.5 * x0) ** 2).sum(1) / 0.25 - math.log(2 * math.pi * 0.25)
    assert (lin.conditional_log_prob(x, x0, tt) - wrong).abs().max() > 0.1


def test_marginal_velocity_is_the_posterior_mean_of_the_conditional_field():
    """f_t(x) = E[f_t(x | x0) | x_t = x] (eq. 15.9): for point masses and the Gaussian prior, EmpiricalFlow equals the
    score-form velocity of lesson 0's exact model to 1e-10."""
    g = torch.Generator().manual_seed(3)
    pts = torch.randn(5, 2, generator=g, dtype=f64)
    flow = EmpiricalFlow(pts, LIN)
    exact = dm.EmpiricalData(pts).model(LIN, "velocity")
    x = torch.randn(64, 2, generator=g, dtype=f64)
    t = torch.rand(64, generator=g, dtype=f64) * 0.98 + 0.02
    assert torch.allclose(flow(x, t), exact(x, t), atol=1e-10)


def test_fm_and_cfm_losses_differ_by_a_constant():
    """E||v - f_t(x_t)||^2 and E||v - f_t(x_t | x0)||^2 differ by a theta-independent constant (eq. 15.11): for two
    very different models the two gaps agree within 4 standard errors (common random numbers, N = 20000), while the
    losses themselves differ by far more."""
    g = torch.Generator().manual_seed(4)
    pts = torch.tensor([[1.0, 0.0], [-1.0, 0.5], [0.0, -1.0]], dtype=f64)
    path = ConditionalPath(LIN, "uniform")
    exact = EmpiricalFlow(pts, path)
    n = 20000
    x0 = pts[torch.randint(0, 3, (n,), generator=g)]
    x1 = path.sample_prior((n, 2), g)
    t = torch.rand(n, generator=g, dtype=f64) * 0.98 + 0.02
    xt, u = path.sample(x0, t, x1), path.target(x0, x1, t)
    vstar = exact(xt, t)
    models = [lambda x, s: torch.zeros_like(x), lambda x, s: 2 * x - 1 + s[:, None]]
    gaps, cfm = [], []
    for m in models:
        v = m(xt, t)
        cfm.append(((v - u) ** 2).sum(1))
        gaps.append(((v - u) ** 2).sum(1) - ((v - vstar) ** 2).sum(1))
    diff = gaps[0] - gaps[1]
    assert abs(diff.mean()) < 4 * diff.std() / math.sqrt(n)
    assert abs(cfm[0].mean() - cfm[1].mean()) > 50 * diff.std() / math.sqrt(n)


def test_uniform_prior_point_masses_land_with_their_weights():
    """Uniform prior on [-1, 1]^2, three point masses with weights 0.2, 0.3, 0.5: the posterior weights are indicators
    of the boxes (eq. 15.9) and the exact flow (Euler, 400 steps) carries 3000 prior samples onto the points (to 1e-6)
    with the right frequencies (chi-square p > 1e-3; measured p = 0.52)."""
    pts = torch.tensor([[0.5, 0.5], [-0.6, 0.2], [0.1, -0.7]], dtype=f64)
    w = torch.tensor([0.2, 0.3, 0.5], dtype=f64)
    path = ConditionalPath(LIN, UniformPrior(-1.0, 1.0))
    flow = EmpiricalFlow(pts, path, w)
    g = torch.Generator().manual_seed(0)
    r = flow.responsibilities(path.sample_prior((500, 2), g) * 0.5, 0.3)
    box_w = (r > 0).double() * w  # renormalised indicator weights
    assert torch.allclose(r, box_w / box_w.sum(1, keepdim=True), atol=1e-12)
    x = sample_flow(flow, path.sample_prior((3000, 2), g), path.grid(400), path)
    d = torch.cdist(x, pts)
    assert d.min(1).values.max() < 1e-6
    counts = torch.bincount(d.argmin(1), minlength=3).numpy()
    assert chisquare(counts, 3000 * w.numpy()).pvalue > 1e-3


def test_minibatch_ot_is_the_optimal_permutation():
    """minibatch_ot returns the permutation of x1 with the least total squared distance (brute force over 7! pairings)
    and lowers the mean cost of independent pairs."""
    g = torch.Generator().manual_seed(5)
    x0, x1 = torch.randn(7, 2, generator=g, dtype=f64), torch.randn(7, 2, generator=g, dtype=f64)
    paired = minibatch_ot(x0, x1)
    assert sorted(map(tuple, paired.tolist())) == sorted(map(tuple, x1.tolist()))
    best = min(((x0 - x1[list(p)]) ** 2).sum().item() for p in itertools.permutations(range(7)))
    assert abs(((x0 - paired) ** 2).sum().item() - best) < 1e-12
    assert ((x0 - paired) ** 2).sum() < ((x0 - x1) ** 2).sum()


def test_flow_matching_loss_is_smallest_at_the_exact_velocity():
    """The CFM loss (eq. 15.10) with independent coupling of the exact marginal field is below that of the field
    scaled by 0.8 or 1.2 (common random numbers); its repr names path and coupling (the checkpoint fingerprint)."""
    coupling = "independent"
    pts = torch.tensor([[1.0, 0.0], [-1.0, 0.5]], dtype=f64)
    exact = EmpiricalFlow(pts, LIN)
    loss = FlowMatchingLoss(LIN, coupling)
    data = pts[torch.randint(0, 2, (4000,), generator=torch.Generator().manual_seed(6))]
    vals = []
    for scale in (1.0, 0.8, 1.2):
        m = lambda x, t, c=None, s=scale: s * exact(x, t)  # noqa: E731
        m.prediction = "velocity"
        vals.append(loss(m, data, torch.Generator().manual_seed(7)).item())
    assert vals[0] < min(vals[1:])
    assert repr(loss) == f"flow_matching(rectified-flow|gaussian, coupling={coupling})"
    assert repr(FlowMatchingLoss(LIN, "ot")) == "flow_matching(rectified-flow|gaussian, coupling=ot)"


def test_flow_matching_is_shape_agnostic():
    """Paths, losses (unpaired, OT and paired), OT pairing and sampling work on image-shaped batches (B, 1, 3, 3)."""
    g = torch.Generator().manual_seed(8)
    x0 = torch.randn(16, 1, 3, 3, generator=g, dtype=f64)
    path = ConditionalPath(LIN, "uniform")
    model = lambda x, t, c=None: x * t.reshape(-1, 1, 1, 1)  # noqa: E731
    model.prediction = "velocity"
    for loss in (FlowMatchingLoss(path), FlowMatchingLoss(path, "ot")):
        assert loss(model, x0, g).shape == ()
    pairs = torch.stack([x0, path.sample_prior(x0.shape, g)], 1)
    assert FlowMatchingLoss(path, paired=True)(model, pairs, g).shape == ()
    assert minibatch_ot(x0, pairs[:, 1]).shape == x0.shape
    assert sample_flow(model, pairs[:, 1], path.grid(3), path).shape == x0.shape
    flow = EmpiricalFlow(x0[:4], ConditionalPath(LIN))
    assert flow(pairs[:5, 1], 0.5).shape == (5, 1, 3, 3)


def test_flow_matching_bad_input():
    """Unknown couplings and priors, OT on paired rows, discrete schedules, a mean without its derivative, a non-velocity
    model and rows that are not pairs are refused with the expected error."""
    with pytest.raises(ValueError, match="coupling"):
        FlowMatchingLoss(LIN, "sinkhorn")
    with pytest.raises(ValueError, match="paired"):
        FlowMatchingLoss(LIN, "ot", paired=True)
    with pytest.raises(ValueError, match="continuous"):
        ConditionalPath(dm.su_linear(10))
    with pytest.raises(ValueError, match="mu"):
        ConditionalPath(LIN, mu=MU)
    with pytest.raises(ValueError, match="prior"):
        ConditionalPath(LIN, "laplace")
    with pytest.raises(ValueError, match="low < high"):
        UniformPrior(1.0, -1.0)
    net = dm.nets.MLP(2, 8, 1, "eps")
    with pytest.raises(ValueError, match="velocity"):
        FlowMatchingLoss(LIN)(net, torch.randn(4, 2), torch.Generator())
    with pytest.raises(ValueError, match=r"\(N, 2, \.\.\.\)"):
        FlowMatchingLoss(LIN, paired=True)(dm.nets.MLP(2, 8, 1, "velocity"), torch.randn(4, 3, 2), torch.Generator())
    with pytest.raises(ValueError, match="sigma_t > 0"):
        ConditionalPath(LIN).conditional_velocity(torch.zeros(2, 2), torch.zeros(2, 2), 0.0)


def test_sample_flow_takes_a_grid_like_every_sampler():
    """sample_flow(model, x1, grid, schedule) integrates along the grid it is given, as ode_sample does (lesson 0,
    sec. 0.4; the same result on a quadratic grid); a number of steps where the grid goes, or the old order with the schedule
    first, is a TypeError that says how to make a grid."""
    flow = EmpiricalFlow(torch.randn(5, 2, generator=torch.Generator().manual_seed(9), dtype=f64), ConditionalPath(LIN))
    x1 = torch.randn(8, 2, generator=torch.Generator().manual_seed(10), dtype=f64)
    grid = LIN.grid(6, "quadratic")
    assert torch.equal(sample_flow(flow, x1, grid, LIN), dm.ode.ode_sample(flow, x1, grid, LIN, "euler"))
    with pytest.raises(TypeError, match=r"sample_flow takes a time grid .*pass schedule\.grid\(4\)"):
        sample_flow(flow, x1, 4, LIN)
    with pytest.raises(TypeError, match=r"the grid comes before the schedule"):
        sample_flow(flow, x1, LIN, 4)
    with pytest.raises(ValueError, match="decreasing"):
        sample_flow(flow, x1, grid.flip(0), LIN)
