"""Fuzzing the methods API (DESIGN.md, principle 9): the objectives and the argument checks of ``train``/``fit``,
flows, pfgm, heat, greens, nets, unet, metrics and toydata. Every bad call gives a valid result or a
ValueError/TypeError that names the argument at fault; never another exception type, a raw torch error, NaN or a
wrong shape.

The first tests pin the concrete faults found by hand; ``CASES`` is the table the fuzz test runs, one row per
(callable, argument, kind of bad input), in the layout of ``tests/test_fuzz_core.py``;
``benchmarks/fuzz_report.py --methods`` counts its outcomes per module on any checkout.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from fuzzing import (
    FUZZ,
    INF,
    NAN,
    Cases,
    FakeModel,
    assert_good,
    bad_grids,
    bad_labels,
    bad_models,
    bad_names,
    bad_reals,
    bad_schedules,
    bad_times,
    bad_weights,
    check_outcome,
    finite,
    rows,
    same,
    shaped,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import diffmath as dm
import toydata as td
from diffmath import flows, greens, heat, metrics, pfgm, recipes
from diffmath.nets import mlp as nets
from diffmath.nets import unet
from diffmath.train import training
from diffmath.train.training import diffusion_loss, fit

F32, F64 = torch.float32, torch.float64
VP, VE, SU, LP = dm.VPLinear(), dm.VE(), dm.su_linear(100), dm.LinearPath()
X = torch.randn(3, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
X32 = X.float()
DATA = torch.tensor([[1.0, 0.0], [-1.0, 0.5], [0.0, -1.0], [0.5, 0.5]], dtype=F64)
DATA32 = DATA.float()
GMM = dm.GaussianMixture(torch.tensor([0.5, 0.5], dtype=F64), DATA[:2], torch.tensor([0.1, 0.2], dtype=F64))
LGMM = dm.GaussianMixture(GMM.weights, DATA[:2], torch.tensor([0.1, 0.2], dtype=F64), torch.tensor([0, 1]))
EXACT = GMM.model(VP)
IMG = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(2), dtype=F64) * 2 - 1
IMG32 = IMG.float()
METHODS = ("euler", "heun", "dpm++2m")
METHODS_FUZZ = settings(FUZZ, max_examples=12)


def torch_seeded(fn: Callable) -> Callable:
    """Build a network under a fixed torch seed (the fuzz cases must not depend on the global RNG)."""

    def build(*args, **kwargs):
        with torch.random.fork_rng():
            torch.manual_seed(0)
            return fn(*args, **kwargs)

    return build


mlp = torch_seeded(nets.MLP)
small_unet = torch_seeded(unet.UNet)


CASES = Cases()
add, batch = CASES.add, CASES.batch


# ---- strategies of this suite (the shared ones are in tests/fuzzing.py) ------------------------------------------
def bad_ints(low: int = 1) -> st.SearchStrategy:
    """Values an integer parameter >= ``low`` must refuse: smaller integers, floats, strings, None, bools, tensors."""
    return st.one_of(
        st.integers(min_value=-(10**6), max_value=low - 1),
        st.sampled_from([low + 0.5, float(low + 1), "3", None, True, NAN, INF, torch.tensor(low + 1)]),
    )


def bad_any_real() -> st.SearchStrategy:
    """Values a parameter that may be any finite real must refuse."""
    return st.sampled_from([NAN, INF, -INF, None, "1", 1j, torch.ones(7), torch.tensor(NAN)])


def bad_optional_reals(low: float = 0.0, allow_low: bool = False) -> st.SearchStrategy:
    """``bad_reals`` for a parameter whose ``None`` means "not given" (no clipping, no weighting, the default)."""
    return bad_reals(low, allow_low).filter(lambda v: v is not None)


def bad_dtypes() -> st.SearchStrategy:
    """Dtypes that must be refused where a floating dtype (or None) is expected."""
    return st.sampled_from([torch.int64, torch.bool, torch.complex64, "float32", 32, np.float64])


def bad_shapes() -> st.SearchStrategy:
    """Shapes ``(B, ...)`` that must be refused: negative or non-integer sizes, scalars, strings, None."""
    return st.sampled_from([(-1, 2), (2, -3), (2.5, 2), ("2", 2), (), None, "2", (True, 2)])


def bad_event_shapes() -> st.SearchStrategy:
    """Event shapes that must be refused: non-positive or non-integer sizes, empty tuples, strings, None, bools."""
    return st.sampled_from([0, -1, (2, 0), (), "2", None, 2.5, (2.5,), True, (True,)])


def wrong_outputs(prediction: str, dim: int = 2) -> st.SearchStrategy:
    """Trainable models of a given ``prediction`` whose outputs have another shape or type than their input: the
    (B, 1) and (1, d) outputs broadcast against a training target."""
    return st.sampled_from(
        [
            FakeModel(lambda x: x[:, :1] * 1.0, prediction),
            FakeModel(lambda x: x[:1] * 1.0, prediction),
            FakeModel(lambda x: x.sum(), prediction),
            FakeModel(lambda x: x.reshape(-1), prediction),
            FakeModel(lambda x: torch.cat([x, x], 1), prediction),
            FakeModel(lambda x: None, prediction),
            FakeModel(lambda x: x.detach().numpy(), prediction),
        ]
    )


def bad_velocity_models() -> st.SearchStrategy:
    """``bad_models`` as velocity models, for the straight path (where an ``"eps"`` model cannot be converted at
    t = 1 whatever its output): the interface faults, then outputs of another shape or type, NaN, float32 weights."""
    outputs = [lambda x: x[:, :1], lambda x: x.numpy(), lambda x: None, lambda x: x.sum(), lambda x: x * NAN]
    models = [FakeModel(fn, "velocity") for fn in outputs] + [FakeModel(None, "velocity")]
    return st.one_of(bad_models(outputs=False), st.sampled_from(models))


def untrainable(frozen: bool = True) -> st.SearchStrategy:
    """Things ``fit`` cannot train: exact models, modules without (trainable) parameters, non-modules."""
    cases = [EXACT, FakeModel(lambda x: x), object(), None, lambda x, t, c=None: x]
    return st.sampled_from(cases + ([nets.MLP(2, 4, 1).requires_grad_(False)] if frozen else []))


def float32_bad_models() -> st.SearchStrategy:
    """``bad_models`` for a float32 batch, where the float32 linear model is a good one; without the NaN model: an
    objective returns the NaN loss of a NaN output, and ``train`` reports it at that step."""
    return bad_models().filter(_bad_for_float32)


def _bad_for_float32(model: object) -> bool:
    if not isinstance(model, FakeModel):
        return True
    if model.lin is not None:
        return False
    out = model.fn(torch.ones(2, 2))
    return not (isinstance(out, torch.Tensor) and out.is_floating_point() and out.isnan().any())


def bad_callables() -> st.SearchStrategy:
    """Things passed as a function that are not callable."""
    return st.sampled_from([None, 3, "f", torch.ones(2)])


# ---- the concrete faults ----------------------------------------------------------------------------------------
class Linear(nn.Module):
    """A trainable model of the one interface whose output is reshaped by ``out`` (a net with a wrong head)."""

    def __init__(self, prediction: str, out: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.prediction, self.out, self.lin = prediction, out, nn.Linear(2, 2)

    def forward(self, x, t, cond=None):
        return self.out(self.lin(x))


WRONG_HEADS = {"(B, 1)": lambda h: h[:, :1], "(1, d)": lambda h: h[:1]}


@pytest.mark.parametrize("head", WRONG_HEADS)
@pytest.mark.parametrize(
    ("prediction", "loss"),
    [
        ("eps", training.DiffusionLoss(VP)),
        ("velocity", flows.FlowMatchingLoss("rectified-flow")),
        ("x0", pfgm.PoissonLoss(VE)),
    ],
    ids=["diffusion", "flow-matching", "poisson"],
)
def test_an_objective_refuses_a_network_output_that_would_broadcast(head, prediction, loss):
    """A (B, 1) or (1, d) output broadcasts against the (B, d) target: every objective names the shape instead of
    training to the end on nonsense."""
    net = Linear(prediction, WRONG_HEADS[head])
    with pytest.raises(ValueError, match=r"model returned shape .* expected a tensor of the input's shape \(4, 2\)"):
        fit(net, DATA32, None, 3, batch_size=4, loss=loss, progress=False, ema_decay=None)


def test_distillation_refuses_a_network_output_that_would_broadcast():
    pairs = torch.stack([DATA32, DATA32.flip(0)], 1)
    with pytest.raises(ValueError, match="model returned shape"):
        flows.DistillationLoss()(Linear("velocity", WRONG_HEADS["(1, d)"]), pairs, torch.Generator())


@pytest.mark.parametrize("model", [EXACT, FakeModel(lambda x: x), nets.MLP(2, 4, 1).requires_grad_(False)])
def test_fit_refuses_a_model_without_trainable_parameters(model):
    with pytest.raises(TypeError, match=r"model must be a trainable torch.nn.Module with parameters"):
        fit(model, DATA32, VP, 2, batch_size=4, progress=False)


def test_mlp_labels_must_lie_in_the_class_range():
    """``num_classes=3``: label 3 is not the null label (that is -1) and 7 is no class; both are refused by name."""
    net = mlp(2, 8, 1, num_classes=3)
    t = torch.full((2,), 0.5)
    for bad in (3, 7, -2):
        with pytest.raises(ValueError, match=r"cond labels must lie in \[-1, 3\)"):
            net(X32[:2], t, torch.full((2,), bad))
    with pytest.raises(ValueError, match="cond must hold integer labels"):
        net(X32[:2], t, torch.full((2,), 1.0))
    null, free = net(X32[:2], t, torch.full((2,), -1)), net(X32[:2], t)
    assert torch.equal(null, free), "-1 and None are the same null condition"


def test_unet_labels_below_the_null_label_are_refused():
    net = small_unet(1, (8,), num_classes=2)
    with pytest.raises(ValueError, match="cond labels must lie in"):
        net(torch.zeros(2, 1, 8, 8), torch.full((2,), 0.5), torch.tensor([-2, 0]))


class Diverging:
    """A velocity model that goes NaN after ``calls`` evaluations (or for times in ``band``)."""

    prediction = "velocity"

    def __init__(self, calls: int = 10**9, band: tuple[float, float] = (2.0, 3.0)) -> None:
        self.calls, self.band, self.n = calls, band, 0

    def __call__(self, x, t, cond=None):
        self.n += 1
        t = torch.as_tensor(t, dtype=x.dtype).reshape(-1, 1)
        bad = (t > self.band[0]) & (t < self.band[1])
        return torch.where(bad | (self.n > self.calls), math.nan, -x)


def test_straightness_reports_a_model_that_goes_nan():
    """The solver's evaluations are checked; so is the Riemann sum's second pass over the trajectory."""
    with pytest.raises(ValueError, match="model returned NaN"):
        flows.straightness(Diverging(calls=4), X, LP, 4, "euler")


def test_cost_identity_reports_a_model_that_goes_nan_between_grid_times():
    """V(X) evaluates the model at random times off the solver's grid (1, 0.75, ..., 0): a NaN there was averaged
    into V."""
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="model returned NaN"):
        flows.cost_identity(Diverging(band=(0.51, 0.74)), X, X.flip(0), generator=g, num_steps=4, num_times=16)


@pytest.mark.parametrize(
    "call",
    [
        lambda e: metrics.sliced_w1(e, X),
        lambda e: metrics.sliced_w1(X, e),
        lambda e: metrics.mmd_rbf(e, X),
        lambda e: pfgm.PoissonField(e),
        lambda e: flows.EmpiricalFlow(e, LP),
    ],
    ids=["sliced_w1-x", "sliced_w1-y", "mmd_rbf", "PoissonField", "EmpiricalFlow"],
)
def test_an_empty_sample_is_refused_by_name(call):
    with pytest.raises(ValueError, match=r"needs at least (one|1|2) sample"):
        call(torch.zeros(0, 2, dtype=F64))


@pytest.mark.parametrize("toy", sorted(td.TOYS))
def test_toy_generators_refuse_bad_sizes_and_dtypes(toy):
    for n in (0, -3, 2.5, "4", None, True):
        with pytest.raises(ValueError, match="n must be a positive integer"):
            td.sample(toy, n)
    with pytest.raises(TypeError, match=r"dtype must be a floating torch\.dtype"):
        td.sample(toy, 4, dtype=torch.int64)


@pytest.mark.parametrize("fn", [td.swiss_roll, td.moons, td.rings])
def test_toy_noise_must_be_a_non_negative_number(fn):
    for noise in (-0.1, NAN, INF, "a", None):
        with pytest.raises(ValueError, match="noise must be"):
            fn(4, noise=noise)
    assert fn(4, noise=0).shape == (4, 2)


def test_toy_shape_parameters_are_checked():
    with pytest.raises(ValueError, match="num_arms"):
        td.pinwheel(4, num_arms=0)
    with pytest.raises(ValueError, match="num_modes"):
        td.eight_gaussians_mixture(num_modes=0)
    with pytest.raises(ValueError, match="radii"):
        td.rings(4, radii=())
    with pytest.raises(ValueError, match="unknown toy"):
        td.sample(["moons"], 4)
    with pytest.raises(ValueError, match="unknown image data set"):
        td.image_dataset(["shapes"], 4, 16)


# ---- the fuzz table ---------------------------------------------------------------------------------------------


def any_finite(v: object) -> Callable:
    """``expect``: any result without NaN or inf."""
    return finite


def scalar(v: object) -> Callable:
    """``expect``: a finite number or 0-d tensor."""
    return lambda r: shaped()(torch.as_tensor(r))


# ---- training ----------------------------------------------------------------------------------------------------
NET = mlp(2, 8, 1, "eps", 1.0)
DL = {"model": NET, "x0": X32, "schedule": VP}
add("training", diffusion_loss, DL, "model", float32_bad_models())
add("training", diffusion_loss, DL, "model", wrong_outputs("eps"))
batch("training", diffusion_loss, DL, "x0", scalar, also=("x",))
add("training", diffusion_loss, DL, "schedule", bad_schedules())
batch("training", training.noise_batch, {"x0": X, "schedule": VP}, "x0", any_finite, fixed_shape=False)
add("training", training.noise_batch, {"x0": X, "schedule": VP}, "schedule", bad_schedules())
add("training", training.DiffusionLoss, {"schedule": VP}, "schedule", bad_schedules())


def _fit(**kwargs):
    """``fit`` with two steps of a fresh tiny network (unless a model is given)."""
    kwargs.setdefault("model", mlp(2, 4, 1, "eps", 1.0, num_classes=kwargs.pop("num_classes", 0)))
    return fit(**kwargs)


FIT = {"data": DATA32, "schedule": VP, "steps": 2, "batch_size": 4, "progress": False, "ema_decay": None}
add("training", _fit, FIT, "model", untrainable())
batch("training", _fit, FIT, "data", any_finite, also=("x",))
add("training", _fit, FIT, "schedule", st.sampled_from([None, "vp-linear", 1.0, lambda t: t]))
for arg in ("steps", "batch_size", "checkpoint_every"):
    add("training", _fit, FIT, arg, bad_ints(1))
add("training", _fit, FIT, "lr", bad_reals(0.0, allow_low=False))
add(
    "training",
    _fit,
    FIT,
    "ema_decay",
    st.one_of(bad_reals(0.0).filter(lambda v: v is not None), st.sampled_from([1.0, 1.5, "0.9"])),
)  # None: no EMA
add("training", _fit, FIT, "label_dropout", st.one_of(bad_reals(0.0), st.sampled_from([1.0, 2.0])))
add("training", _fit, FIT, "seed", st.sampled_from([None, 1.5, "0", torch.tensor(0)]))
add("training", _fit, FIT, "checkpoint", st.sampled_from([3, 1.5, torch.ones(2)]))
add("training", _fit, {**FIT, "num_classes": 2, "labels": None}, "labels", bad_labels(4, 2), also=("cond",))
add("training", _fit, FIT, "loss", bad_callables().filter(lambda f: f is not None))
LOSSES = [lambda m, x, g, c: (m(x, torch.rand(x.shape[0])) ** 2).mean(1), lambda m, x, g, c: 1.0]
add("training", _fit, FIT, "loss", st.sampled_from([*LOSSES, lambda m, x, g, c: None]))
add("training", lambda **kw: list(training.train(model=mlp(2, 4, 1), **kw)), FIT, "steps", bad_ints(1))

# ---- flows -------------------------------------------------------------------------------------------------------
GP, UP = flows.GaussianPrior(), flows.UniformPrior()
for prior in (GP, UP, flows.SamplerPrior(lambda shape, g, dtype: torch.zeros(shape, dtype=dtype))):
    add("flows", prior.sample, {"shape": (3, 2)}, "shape", bad_shapes())
    add("flows", prior.sample, {"shape": (3, 2), "dtype": F64}, "dtype", bad_dtypes())
for prior in (GP, UP):  # points inside the uniform prior's box: a finite log density
    batch("flows", prior.log_prob, {"x": X / 4}, "x", rows, fixed_shape=False)
batch("flows", UP.distance, {"x": X}, "x", rows, fixed_shape=False)
add("flows", flows.UniformPrior, {"low": -1.0, "high": 1.0}, "low", st.one_of(bad_any_real(), st.just(2.0)))
add("flows", flows.UniformPrior, {"low": -1.0, "high": 1.0}, "high", st.one_of(bad_any_real(), st.just(-1.0)))
add("flows", flows.SamplerPrior, {"fn": lambda s, g, d: torch.zeros(s)}, "fn", bad_callables(), also=("prior",))
add("flows", flows.OTPath, {"sigma_min": 0.0}, "sigma_min", st.one_of(bad_reals(0.0), st.just(1.0)))
FSCH = {"a": lambda t: 1 - t, "b": lambda t: t, "da": lambda t: -1 + 0 * t, "db": lambda t: 1 + 0 * t}
add("flows", flows.FunctionSchedule, FSCH, "db", bad_callables())
NOT_CONTINUOUS = st.sampled_from([None, 1.0, lambda t: t, dm.su_linear(10), "nope", "su-linear"])
add("flows", flows.ConditionalPath, {"schedule": "rectified-flow"}, "schedule", NOT_CONTINUOUS)
PRIOR_NAMES = bad_names(("gaussian", "uniform")).filter(lambda v: v is not None)
add("flows", flows.ConditionalPath, {"schedule": "rectified-flow", "prior": "gaussian"}, "prior", PRIOR_NAMES)
add(
    "flows",
    flows.ConditionalPath,
    {"mu": lambda x, t: x, "dmu": lambda x, t: 0 * x},
    "dmu",
    bad_callables(),
    also=("mu",),
)
add("flows", flows.as_path, {"schedule": "rectified-flow"}, "schedule", NOT_CONTINUOUS)
PATH = flows.ConditionalPath("rectified-flow")
for meth in ("mean", "mean_velocity"):
    fn = getattr(PATH, meth)
    batch("flows", fn, {"x0": X, "t": 0.5}, "x0", fixed_shape=False)
    add("flows", fn, {"x0": X, "t": 0.5}, "t", bad_times(1.0, False))
for meth in ("sample", "target"):
    fn = getattr(PATH, meth)
    good = {"x0": X, "x1": X.flip(0), "t": 0.5}
    batch("flows", fn, good, "x1", expect=None, also=("x0",))
    add("flows", fn, good, "t", bad_times(1.0, False))
for meth in ("conditional_velocity", "conditional_log_prob"):
    fn = getattr(PATH, meth)
    good = {"x": X, "x0": X.flip(0), "t": 0.5}
    batch("flows", fn, good, "x", expect=None, also=("x0",))
    add("flows", fn, good, "t", st.one_of(bad_times(1.0, False), st.just(0.0)), also=("sigma_t",))
add("flows", PATH.sample_prior, {"shape": (3, 2)}, "shape", bad_shapes())
add("flows", PATH.sample_prior, {"shape": (3, 2)}, "dtype", bad_dtypes())
GV = {"gmm": LGMM, "x": X, "t": 0.5}
add("flows", flows.gmm_velocity, GV, "gmm", st.sampled_from([None, DATA, "gmm", EXACT]))
batch("flows", flows.gmm_velocity, GV, "x")
add("flows", flows.gmm_velocity, GV, "t", bad_times(1.0, False))
add("flows", flows.gmm_velocity, {**GV, "cond": None}, "cond", bad_labels(3, 2))
add("flows", flows.GMMFlow, {"gmm": GMM}, "gmm", st.sampled_from([None, DATA, "gmm", EXACT]))
EF = {"points": DATA, "path": LP}
batch("flows", flows.EmpiricalFlow, EF, "points", any_finite, fixed_shape=False)
add("flows", flows.EmpiricalFlow, EF, "path", NOT_CONTINUOUS, also=("schedule",))
add("flows", flows.EmpiricalFlow, {**EF, "weights": None}, "weights", bad_weights(4).filter(lambda w: w is not None))
EFLOW = flows.EmpiricalFlow(DATA, LP)
for fn, expect in ((EFLOW, same), (EFLOW.responsibilities, lambda v: shaped(v.shape[0], 4))):
    batch("flows", fn, {"x": X, "t": 0.5}, "x", expect)
    add("flows", fn, {"x": X, "t": 0.5}, "t", st.one_of(bad_times(1.0, False), st.just(0.0)), also=("sigma_t",))
A2 = torch.tensor([[1.0, 0.2], [0.2, 0.8]], dtype=F64)
M2 = torch.tensor([0.5, -0.5], dtype=F64)
BAD_MATRICES = st.sampled_from([None, "A", torch.ones(2, 3), torch.ones(2), A2 * NAN, A2.numpy(), A2.long() > 0])
add("flows", flows.AffineCouplingFlow, {"A": A2, "m": M2}, "A", BAD_MATRICES, also=("m",))
add("flows", flows.AffineCouplingFlow, {"A": A2, "m": M2}, "m", st.sampled_from([None, M2[:1], M2 * INF, A2]))
PAIRS = torch.stack([torch.randn(8, 2, generator=torch.Generator().manual_seed(3), dtype=F64), DATA.repeat(2, 1)], 1)
batch("flows", flows.AffineCouplingFlow.from_pairs, {"pairs": PAIRS}, "pairs", expect=None, fixed_shape=False)
AFF = flows.AffineCouplingFlow(A2, M2)
batch("flows", AFF, {"x": X, "t": 0.5}, "x", fixed_shape=False)
add("flows", AFF, {"x": X, "t": 0.5}, "x", st.sampled_from([X[:, :1], torch.zeros(3, 3, dtype=F64)]))
add("flows", AFF, {"x": X, "t": 0.5}, "t", bad_times(1.0, False))
batch("flows", flows.minibatch_ot, {"x0": X, "x1": X.flip(0)}, "x1", same, also=("x0",))
FML = {"schedule": "rectified-flow"}
add("flows", flows.FlowMatchingLoss, FML, "schedule", NOT_CONTINUOUS)
add("flows", flows.FlowMatchingLoss, FML, "coupling", bad_names(flows.COUPLINGS))
add("flows", flows.FlowMatchingLoss, FML, "prior", PRIOR_NAMES)
VNET = mlp(2, 8, 1, "velocity", 1.0)
for fm in (flows.FlowMatchingLoss("rectified-flow"), flows.FlowMatchingLoss("rectified-flow", coupling="ot")):
    CALL = {"model": VNET, "batch": X32, "generator": None}
    add("flows", fm, CALL, "model", float32_bad_models(), also=("velocity",))
    add("flows", fm, CALL, "model", wrong_outputs("velocity"))
    batch("flows", fm, CALL, "batch", scalar, also=("x",))
PAIRS32 = PAIRS.float()
for loss in (flows.FlowMatchingLoss("rectified-flow", paired=True), flows.DistillationLoss()):
    CALL = {"model": VNET, "batch": PAIRS32, "generator": None}
    add("flows", loss, CALL, "model", wrong_outputs("velocity"))
    batch("flows", loss, CALL, "batch", scalar, also=("pairs", "x"))
SF = {"model": GMM.model(LP, "velocity"), "x1": X, "schedule": LP}
for fn in (flows.sample_flow, flows.reflow_pairs, flows.straightness):
    expect = {flows.sample_flow: same, flows.reflow_pairs: lambda v: shaped(v.shape[0], 2, 2)}.get(fn, any_finite)
    steps, value, strategy = (
        ("grid", LP.grid(2), bad_grids(1.0, False)) if fn is flows.sample_flow else ("num_steps", 2, bad_ints(1))
    )
    good = {**SF, steps: value}
    add("flows", fn, good, "model", bad_velocity_models())
    batch("flows", fn, good, "x1", expect, also=("x",))
    add("flows", fn, good, "schedule", bad_schedules())
    add("flows", fn, good, steps, strategy)
    add("flows", fn, good, "method", bad_names(METHODS))
CI = {"model": GMM.model(LP, "velocity"), "x0": X, "x1": X.flip(0), "num_steps": 2}
add("flows", flows.cost_identity, CI, "model", bad_velocity_models())
batch("flows", flows.cost_identity, CI, "x0", any_finite, also=("x1", "x"))
add("flows", flows.cost_identity, CI, "num_times", bad_ints(1))
add("flows", flows.cost_identity, CI, "schedule", NOT_CONTINUOUS.filter(lambda v: v is not None))
RF = {"x1": X32, "schedule": LP, "steps": 2, "num_steps": 2, "batch_size": 3, "progress": False, "ema_decay": None}
add("flows", flows.reflow, {"model": VNET, **RF}, "rounds", bad_ints(1))
add("flows", flows.reflow, {"model": VNET, **RF}, "model", untrainable(frozen=False))
add("flows", flows.reflow, {"model": VNET, **RF}, "return_all", st.sampled_from([None, 1, "yes", torch.tensor(True)]))
add("flows", flows.distill, {"teacher": VNET, **RF}, "student", untrainable().filter(lambda m: m is not None))
add("flows", flows.distill, {"teacher": VNET, **RF}, "steps", bad_ints(1))

# ---- pfgm --------------------------------------------------------------------------------------------------------
add("pfgm", pfgm.sphere_area, {"n": 3}, "n", bad_ints(1))
batch("pfgm", pfgm.poisson_log_kernel, {"x": X, "z": 0.5}, "x", rows, fixed_shape=False)
add("pfgm", pfgm.poisson_log_kernel, {"x": X, "z": 0.5}, "z", bad_reals(0.0, allow_low=False))
batch("pfgm", pfgm.PoissonField, {"points": DATA}, "points", any_finite, fixed_shape=False)
add(
    "pfgm",
    pfgm.PoissonField,
    {"points": DATA, "weights": None},
    "weights",
    bad_weights(4).filter(lambda w: w is not None),
)
FIELD = pfgm.PoissonField(DATA)
AB = {"x": X, "a": 0.8, "b": 0.6}
for meth in ("noised_log_prob", "component_posterior", "posterior_mean", "eps_mean", "score"):
    fn = getattr(FIELD, meth)
    expect = {"noised_log_prob": rows, "component_posterior": lambda v: shaped(v.shape[0], 4)}.get(meth, same)
    batch("pfgm", fn, AB, "x", expect)
    add("pfgm", fn, AB, "a", bad_any_real())
    add("pfgm", fn, AB, "b", bad_reals(0.0, allow_low=False))
VEL = {**AB, "da": -0.5, "db": 1.0}
for arg in ("da", "db"):
    add("pfgm", FIELD.velocity, VEL, arg, bad_any_real())
batch("pfgm", FIELD.velocity, VEL, "x")
add("pfgm", FIELD.model, {"schedule": VE}, "schedule", bad_schedules())
add("pfgm", FIELD.model, {"schedule": VE, "prediction": "x0"}, "prediction", bad_names(dm.PREDICTIONS))
batch("pfgm", FIELD.field, {"x": X, "z": 0.5}, "x", expect=None)
add("pfgm", FIELD.field, {"x": X, "z": 0.5}, "z", bad_reals(0.0))
add("pfgm", FIELD.flux_density, {"x": X, "z": 0.5}, "z", bad_reals(0.0, allow_low=False))
add("pfgm", FIELD.sample, {"n": 3}, "n", bad_ints(1))
add("pfgm", FIELD.sample, {"n": 3}, "dtype", bad_dtypes())
SN = {"n": 3, "z": 0.5}
add("pfgm", FIELD.sample_noised, SN, "n", bad_ints(1))
add("pfgm", FIELD.sample_noised, SN, "z", bad_reals(0.0, allow_low=False))
add("pfgm", FIELD.sample_noised, {**SN, "max_radius": None}, "max_radius", bad_optional_reals())
add("pfgm", FIELD.sample_noised, SN, "dtype", bad_dtypes())
PM = {"field": FIELD, "schedule": VE}
add("pfgm", pfgm.PoissonModel, PM, "field", st.sampled_from([None, DATA, GMM]))
add("pfgm", pfgm.PoissonModel, PM, "schedule", bad_schedules())
add("pfgm", pfgm.PoissonModel, {**PM, "prediction": "x0"}, "prediction", bad_names(("x0", "eps", "v", "velocity")))
PMOD = pfgm.PoissonModel(FIELD, VE, "eps")
batch("pfgm", PMOD, {"x": X, "t": 0.5}, "x")
add("pfgm", PMOD, {"x": X, "t": 0.5}, "t", bad_times(1.0, False))
for fn in (pfgm.multivariate_cauchy, pfgm.sample_prior):
    good = {"n": 3, "event_shape": 2} | ({"z_max": 2.0} if fn is pfgm.sample_prior else {})
    add("pfgm", fn, good, "n", bad_ints(1))
    add("pfgm", fn, good, "event_shape", bad_event_shapes())
    add("pfgm", fn, {**good, "max_radius": None}, "max_radius", bad_optional_reals())
    add("pfgm", fn, good, "dtype", bad_dtypes())
add("pfgm", pfgm.sample_prior, {"n": 3, "event_shape": 2, "z_max": 2.0}, "z_max", bad_reals(0.0, allow_low=False))
BR = {"n": 3, "d": 2}
add("pfgm", pfgm.beta_prime_radius, BR, "n", bad_ints(1))
add("pfgm", pfgm.beta_prime_radius, BR, "d", bad_ints(1))
add("pfgm", pfgm.beta_prime_radius, {**BR, "max_radius": None}, "max_radius", bad_optional_reals())
add("pfgm", pfgm.beta_prime_radius, BR, "dtype", bad_dtypes())
UH = {"n": 3, "d": 2, "radius": 1.0}
for arg, strategy in (("n", bad_ints(1)), ("d", bad_ints(1)), ("radius", bad_reals(0.0, allow_low=False))):
    add("pfgm", pfgm.uniform_hemisphere, UH, arg, strategy)
for fn, arg in ((pfgm.hemisphere_tv, "radius"), (pfgm.prior_tv, "z")):
    good = {"field": FIELD, arg: 2.0, "n": 16}
    add("pfgm", fn, good, "field", st.sampled_from([None, DATA, GMM]))
    add("pfgm", fn, good, arg, bad_reals(0.0, allow_low=False))
    add("pfgm", fn, good, "n", bad_ints(1))
PL = {"schedule": VE}
add("pfgm", pfgm.PoissonLoss, PL, "schedule", bad_schedules(discrete_ok=False))
add("pfgm", pfgm.PoissonLoss, PL, "target", bad_names(("unbiased", "batch")))
add("pfgm", pfgm.PoissonLoss, {**PL, "max_radius": None}, "max_radius", bad_optional_reals())
add("pfgm", pfgm.PoissonLoss, {**PL, "sigma_data": None}, "sigma_data", bad_optional_reals())
BAD_RANGES = st.sampled_from([(1.0,), (2.0, 1.0), (0.0, 1.0), (1.0, INF), (NAN, 1.0), "ab", 3, (1e-9, 1e9), None])
add("pfgm", pfgm.PoissonLoss, {**PL, "z_range": (0.1, 10.0)}, "z_range", BAD_RANGES.filter(lambda v: v is not None))
X0NET = mlp(2, 8, 1, "x0", 1.0)
for loss in (pfgm.PoissonLoss(VE), pfgm.PoissonLoss(VE, "batch", sigma_data=0.5)):
    CALL = {"model": X0NET, "x0": X32, "generator": None}
    add("pfgm", loss, CALL, "model", float32_bad_models())
    add("pfgm", loss, CALL, "model", wrong_outputs("x0"))
    batch("pfgm", loss, CALL, "x0", scalar, also=("x",))
PS = {"model": FIELD.model(VE), "n": 3, "event_shape": 2, "grid": pfgm.pfgm_grid(VE, 2), "schedule": VE}
add("pfgm", pfgm.pfgm_sample, PS, "model", float32_bad_models())
add("pfgm", pfgm.pfgm_sample, PS, "n", bad_ints(1))
add("pfgm", pfgm.pfgm_sample, PS, "event_shape", bad_event_shapes())
add("pfgm", pfgm.pfgm_sample, PS, "schedule", bad_schedules(discrete_ok=False))
add("pfgm", pfgm.pfgm_sample, PS, "grid", bad_grids(1.0, False))
add("pfgm", pfgm.pfgm_sample, PS, "method", bad_names(METHODS))
add("pfgm", pfgm.pfgm_sample, PS, "dtype", bad_dtypes())
PG = {"schedule": VE, "num_steps": 2, "z_max": 2.0}
add("pfgm", pfgm.pfgm_grid, PG, "schedule", bad_schedules())
add("pfgm", pfgm.pfgm_grid, PG, "num_steps", bad_ints(1))
add("pfgm", pfgm.pfgm_grid, PG, "z_max", bad_optional_reals())

# ---- heat --------------------------------------------------------------------------------------------------------
add("heat", heat.LinearVE, {"t_max": 1.0}, "t_max", bad_reals(0.0, allow_low=False))
LG = {"t_start": 1.0, "t_min": 0.01, "num_steps": 4}
add("heat", heat.log_grid, LG, "num_steps", bad_ints(2))
add("heat", heat.log_grid, LG, "t_start", st.one_of(bad_any_real(), st.just(0.005)), also=("t_min",))
add("heat", heat.log_grid, LG, "t_min", st.one_of(bad_reals(0.0), st.just(2.0)), also=("t_start",))
HR = {"source": GMM, "schedule": heat.LinearVE(2.0), "x": X, "t": 0.5}
add("heat", heat.heat_residual, HR, "source", st.sampled_from([None, DATA, EXACT, FIELD]))
add("heat", heat.heat_residual, HR, "schedule", st.one_of(bad_schedules(discrete_ok=False), st.just(VP)))
batch("heat", heat.heat_residual, HR, "x", rows)
add("heat", heat.heat_residual, HR, "t", bad_times(2.0, False))
for arg in ("h", "dt"):
    add("heat", heat.heat_residual, HR, arg, bad_reals(0.0, allow_low=False))
CR = {
    "log_prob": lambda x, t: GMM.noised_log_prob(x, 1.0, t),
    "velocity": lambda x, t: -t * GMM.score(x, 1.0, t),
    "x": X,
    "t": 0.5,
}
add("heat", heat.continuity_residual, CR, "log_prob", bad_callables())
add("heat", heat.continuity_residual, CR, "velocity", bad_callables())
batch("heat", heat.continuity_residual, CR, "x", rows, fixed_shape=False)
add("heat", heat.continuity_residual, CR, "t", bad_any_real())
add("heat", heat.continuity_residual, CR, "dt", bad_reals(0.0, allow_low=False))

# ---- greens ------------------------------------------------------------------------------------------------------
add("greens", greens.radial_profile, {"kind": "gaussian", "d": 2}, "kind", bad_names(greens.PROFILES))
add("greens", greens.radial_profile, {"kind": "gaussian", "d": 2}, "d", bad_ints(1))
X0 = torch.tensor([0.1, -0.2], dtype=F64)
BAD_CENTRES = st.sampled_from([None, X0[:1], X, X0 * NAN, X0.numpy(), "x0"])
SK = {"kind": "cauchy", "x": X, "x0": X0, "sigma": 0.5, "dsigma": 1.0}
add("greens", greens.scale_kernel, SK, "kind", bad_names(greens.PROFILES))
batch("greens", greens.scale_kernel, SK, "x", rows, also=("x0",))
add("greens", greens.scale_kernel, SK, "x0", BAD_CENTRES)
add("greens", greens.scale_kernel, SK, "sigma", bad_reals(0.0, allow_low=False))
add("greens", greens.scale_kernel, SK, "dsigma", bad_any_real())
IK = {"x": X, "x0": X0, "t": 0.5}
batch("greens", greens.isotropic_kernel, IK, "x", rows, also=("x0",))
add("greens", greens.isotropic_kernel, IK, "x0", BAD_CENTRES)
add("greens", greens.isotropic_kernel, IK, "t", bad_reals(0.0, allow_low=False))
R = torch.tensor([0.5, 1.0, 2.0], dtype=F64)
for fn in (greens.tanh_cdf, greens.exp_cdf):
    add("greens", fn, {"r": R, "t": 0.5}, "r", st.sampled_from([None, "r", R * NAN, -R, R.numpy()]))
    add("greens", fn, {"r": R, "t": 0.5}, "t", bad_reals(0.0, allow_low=False))
CK = {"psi": greens.tanh_cdf, "x": X, "x0": X0, "t": 0.5}
add("greens", greens.cdf_kernel, CK, "psi", bad_callables())
batch("greens", greens.cdf_kernel, CK, "x", rows, also=("x0",))
add("greens", greens.cdf_kernel, CK, "x0", BAD_CENTRES)
add("greens", greens.cdf_kernel, CK, "t", bad_reals(0.0, allow_low=False))
FD = {"phi": lambda s, t: torch.exp(-(s**2) / (2 * t**2)), "r": R[:2], "t": 0.5, "d": 2}
add("greens", greens.flux_from_density, FD, "phi", bad_callables())
add("greens", greens.flux_from_density, FD, "r", st.sampled_from([None, "r", R * 0, -R, R * NAN, 0.5, R.reshape(3, 1)]))
add("greens", greens.flux_from_density, FD, "t", st.one_of(bad_reals(0.0, allow_low=False), st.just(1e-6)))
add("greens", greens.flux_from_density, FD, "d", bad_ints(1))
add("greens", greens.flux_from_density, FD, "dt", bad_reals(0.0, allow_low=False))

# ---- nets --------------------------------------------------------------------------------------------------------
add("nets", nets.TimeEmbedding, {"dim": 8}, "dim", st.one_of(bad_ints(2), st.just(7)))
add("nets", nets.TimeEmbedding, {"dim": 8, "t_max": 1.0}, "t_max", bad_reals(0.0, allow_low=False))
TE = nets.TimeEmbedding(8)
add("nets", TE, {"t": torch.full((3,), 0.5)}, "t", st.sampled_from([None, 0.5, torch.ones(3, 1), torch.ones(3) * NAN]))
MLPA = {"dim": 2}
for arg in ("dim", "hidden", "depth"):
    add("nets", nets.MLP, MLPA, arg, bad_ints(1))
add("nets", nets.MLP, MLPA, "out_dim", bad_ints(1).filter(lambda v: v is not None))
add("nets", nets.MLP, MLPA, "num_classes", bad_ints(0))
add("nets", nets.MLP, MLPA, "prediction", bad_names(dm.PREDICTIONS))
add("nets", nets.MLP, MLPA, "t_max", bad_reals(0.0, allow_low=False))
add("nets", nets.MLP, MLPA, "time_dim", st.one_of(bad_ints(2), st.just(5)))
CMLP = mlp(2, 8, 1, num_classes=2)
MC = {"x": X32, "t": torch.full((3,), 0.5), "cond": torch.tensor([0, 1, -1])}
batch("nets", CMLP, {**MC, "t": 0.5, "cond": None}, "x")
add("nets", CMLP, MC, "x", st.sampled_from([X, X.half(), torch.zeros(3, 3)]))
NOT_TIMES = [NAN, INF, None, "0.5", 1j, torch.full((4,), 0.5), torch.full((3, 2), 0.5), torch.tensor([True] * 3)]
add("nets", CMLP, MC, "t", st.sampled_from([*NOT_TIMES, np.array([0.5] * 3)]))
add("nets", CMLP, MC, "cond", bad_labels(3, 2))

# ---- unet --------------------------------------------------------------------------------------------------------
for arg in ("c_in", "c_out", "emb_dim"):
    add("unet", unet.ResBlock, {"c_in": 8, "c_out": 8, "emb_dim": 16}, arg, bad_ints(1))
add("unet", unet.Attention, {"channels": 8}, "channels", bad_ints(1))
RB, ATT = torch_seeded(unet.ResBlock)(4, 8, 16), torch_seeded(unet.Attention)(4)
H = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(4))
BAD_MAPS = st.sampled_from([None, H[0], H[:, :3], H.double(), H.numpy(), H.reshape(2, 4, 16)])  # values: UNet
add("unet", RB, {"h": H, "e": torch.zeros(2, 16)}, "h", BAD_MAPS)
add("unet", RB, {"h": H, "e": torch.zeros(2, 16)}, "e", st.sampled_from([None, torch.zeros(2, 15), torch.zeros(3, 16)]))
add("unet", ATT, {"h": H}, "h", BAD_MAPS)
UA = {"in_channels": 1, "channels": (8,)}
add("unet", unet.UNet, UA, "in_channels", bad_ints(1))
add("unet", unet.UNet, UA, "channels", st.sampled_from([(), (0,), (8, -1), 8.5, "8", None, (8.0,), (True,)]))
add("unet", unet.UNet, UA, "num_res_blocks", bad_ints(1))
add("unet", unet.UNet, {**UA, "attention": None}, "attention", st.sampled_from([(True, True), 1, "yes", (1,)]))
add("unet", unet.UNet, UA, "num_classes", st.sampled_from([-1, (2, -1), 1.5, "2", None, True]))
add("unet", unet.UNet, UA, "prediction", bad_names(dm.PREDICTIONS))
add("unet", unet.UNet, UA, "t_max", bad_reals(0.0, allow_low=False))
NETU = small_unet(3, (8, 8), num_classes=(2, 3))
UC = {"x": IMG32[:2, :, :8, :8], "t": torch.full((2,), 0.5), "cond": torch.tensor([[0, 2], [-1, -1]])}
batch("unet", NETU, {**UC, "t": 0.5, "cond": None}, "x")
add("unet", NETU, UC, "x", st.sampled_from([IMG[:2, :, :8, :8], IMG32[:2, :, :7, :8], IMG32[:2, :1, :8, :8]]))
add("unet", NETU, UC, "t", st.sampled_from([None, "t", torch.full((3,), 0.5), torch.full((2,), NAN)]))
add("unet", NETU, UC, "cond", bad_labels(2, 2))
add("unet", NETU, UC, "cond", st.sampled_from([torch.tensor([[0, 3], [0, 0]]), torch.tensor([[-2, 0], [0, 0]])]))
add("unet", unet.num_parameters, {"model": NETU}, "model", st.sampled_from([None, EXACT, "net", DATA]))

# ---- metrics -----------------------------------------------------------------------------------------------------
XY = {"x": X, "y": DATA}
for fn in (metrics.sliced_w1, metrics.mmd_rbf):
    batch("metrics", fn, XY, "x", scalar, fixed_shape=False)
    batch("metrics", fn, XY, "y", scalar, fixed_shape=False)
add("metrics", metrics.sliced_w1, XY, "num_projections", bad_ints(1))
add("metrics", metrics.mmd_rbf, XY, "bandwidth", bad_reals(0.0, allow_low=False))
add("metrics", metrics.mode_weights, {"gmm": GMM, "x": X}, "gmm", st.sampled_from([None, DATA, EXACT, FIELD]))
batch("metrics", metrics.mode_weights, {"gmm": GMM, "x": X}, "x", lambda v: shaped(2))
AC = {"in_channels": 3, "size": 16, "attributes": {"shape": 3}, "width": 8, "features": 8}
for arg in ("in_channels", "size", "width", "features"):
    add("metrics", metrics.AttributeClassifier, AC, arg, bad_ints(1))
add("metrics", metrics.AttributeClassifier, AC, "width", st.sampled_from([4, 12]))
BAD_ATTRS = st.sampled_from([{}, {"shape": 1}, {"shape": 2.5}, ["shape"], None, "shape", {3: 2}])
add("metrics", metrics.AttributeClassifier, AC, "attributes", BAD_ATTRS)
CLF = torch_seeded(metrics.AttributeClassifier)(3, 16, {"shape": 3, "colour": 2}, 8, 8).eval()
for fn in (CLF.features, CLF):
    batch("metrics", fn, {"x": IMG}, "x", expect=None, also=("images",))
LAB = {"shape": torch.tensor([0, 1, 2])}
AA = {"classifier": CLF, "images": IMG, "labels": LAB}
add("metrics", metrics.attribute_accuracy, AA, "classifier", st.sampled_from([None, NETU, "clf"]))
batch("metrics", metrics.attribute_accuracy, AA, "images", expect=None)
BAD_LABS = [{}, None, {"size": LAB["shape"]}, {"shape": LAB["shape"].float()}, {"shape": LAB["shape"] + 1}]
add("metrics", metrics.attribute_accuracy, AA, "labels", st.sampled_from([*BAD_LABS, {"shape": LAB["shape"][:2]}]))
MU3, COV3 = torch.zeros(3, dtype=F64), torch.eye(3, dtype=F64)
GF = {"mu1": MU3, "cov1": COV3, "mu2": MU3 + 1, "cov2": 2 * COV3}
NOT_COVS = [None, "c", COV3 * NAN, COV3[:2], -COV3, COV3 + torch.triu(torch.ones(3, 3, dtype=F64), 1), MU3]
add("metrics", metrics.gaussian_frechet, GF, "cov1", st.sampled_from(NOT_COVS))
add("metrics", metrics.gaussian_frechet, GF, "mu2", st.sampled_from([None, "m", MU3 * NAN, MU3[:2], COV3]))
FRD = {"classifier": CLF, "x": IMG, "y": IMG.flip(0)}
add("metrics", metrics.frechet_distance, FRD, "classifier", st.sampled_from([None, NETU, "clf"]))
batch("metrics", metrics.frechet_distance, FRD, "x", expect=None)
for fn in (metrics.psnr, metrics.ssim):
    good = {"x": IMG, "y": IMG.roll(1, 0)}
    batch("metrics", fn, good, "y", rows, also=("x",))
    add("metrics", fn, good, "data_range", bad_reals(0.0, allow_low=False))
add(
    "metrics", metrics.ssim, {"x": IMG, "y": IMG.roll(1, 0)}, "window", st.one_of(bad_ints(3), st.sampled_from([4, 17]))
)
add("recipes", recipes.train_attribute_classifier, {"dataset": "shapes"}, "dataset", bad_names(td.IMAGE_DATASETS))

# ---- toydata -----------------------------------------------------------------------------------------------------
for fn in td.TOYS.values():
    add("toydata", fn, {"n": 3}, "n", bad_ints(1))
    add("toydata", fn, {"n": 3}, "dtype", bad_dtypes())
for fn in (td.swiss_roll, td.moons, td.rings):
    add("toydata", fn, {"n": 3}, "noise", bad_reals(0.0))
add("toydata", td.rings, {"n": 3}, "radii", st.sampled_from([(), (0.5, -1.0), (NAN,), "ab", None, 1.0, [[1.0]]]))
add("toydata", td.pinwheel, {"n": 3}, "num_arms", bad_ints(1))
for arg in ("radius", "std"):
    add("toydata", td.eight_gaussians_mixture, {}, arg, bad_reals(0.0, allow_low=False))
    add("toydata", td.eight_gaussians, {"n": 3}, arg, bad_reals(0.0, allow_low=False))
add("toydata", td.eight_gaussians_mixture, {}, "num_modes", bad_ints(1))
RM = {"num_components": 2, "dim": 2}
for arg in ("num_components", "dim"):
    add("toydata", td.random_mixture, RM, arg, bad_ints(1))
add("toydata", td.random_mixture, RM, "cov", bad_names(("full", "diag", "isotropic")))
add("toydata", td.random_mixture, RM, "scale", bad_reals(0.0, allow_low=False))
add("toydata", td.sample, {"name": "moons", "n": 3}, "name", bad_names(tuple(td.TOYS)))
add("toydata", td.sample, {"name": "swiss-roll", "n": 3, "labels": False}, "labels", st.just(True), also=("name",))
SH = {"n": 2, "size": 12}
add("toydata", td.shapes, SH, "n", bad_ints(1))
add("toydata", td.shapes, SH, "size", bad_ints(12))
add("toydata", td.shapes, SH, "dtype", bad_dtypes())
BAD_CORR = [{"shape": "triangle"}, {"shape": "hexagon", "colour": "red", "p": 0.5}, {"shape": "circle", "p": 0.5}]
BAD_CORR += [{"shape": "circle", "colour": "red", "p": 1.5}, ["shape"], "shape", {"size": "huge", "shape": "circle"}]
add("toydata", td.shapes, {**SH, "correlate": None}, "correlate", st.sampled_from(BAD_CORR), also=("p",))
DG = {"n": 3, "size": 8}
add("toydata", td.digits, DG, "n", bad_ints(1).filter(lambda v: v is not None))
add("toydata", td.digits, DG, "n", st.just(5000))
add("toydata", td.digits, DG, "size", bad_ints(8))
add("toydata", td.digits, DG, "split", bad_names(("all", "train", "test")))
add("toydata", td.digits, DG, "dtype", bad_dtypes())
GL = {"n": 2, "size": 8, "chars": "AB"}
add("toydata", td.glyphs, GL, "n", bad_ints(1))
add("toydata", td.glyphs, GL, "size", bad_ints(8))
add("toydata", td.glyphs, GL, "chars", st.sampled_from(["", "AA", 3, None, " ", ["A"], "\U0001f600"]))
add("toydata", td.glyphs, GL, "dtype", bad_dtypes())
ID = {"name": "shapes", "n": 2, "size": 12}
add("toydata", td.image_dataset, ID, "name", bad_names(td.IMAGE_DATASETS))
add("toydata", td.image_dataset, ID, "n", st.just(None))

SKIP_GOOD = {recipes.train_attribute_classifier}  # its good call trains (or loads) a cached classifier


def run_case(case, on_value: Callable[[object], None]) -> None:
    """Call ``on_value`` on each value hypothesis draws from ``case.strategy``."""
    given(value=case.strategy)(METHODS_FUZZ(on_value))()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_a_valid_result_or_a_clear_error(case):
    run_case(case, lambda value: assert_good(case, value))


GOOD = [c for c in CASES if c.fn not in SKIP_GOOD]


@pytest.mark.parametrize("case", GOOD, ids=[c.id for c in GOOD])
def test_the_good_arguments_of_each_case_are_accepted(case):
    """The fuzz perturbs one argument of a call that works: otherwise a refusal would prove nothing."""
    check_outcome(case.fn, names=(), expect=lambda r: None, **case.good)


def test_npr_loss_refuses_a_wrong_shaped_network_output():
    """NPR's second stage shares the objectives' output check: a (B, 1) output would broadcast against its target."""
    from diffmath.variance import NPRLoss

    ring = td.eight_gaussians_mixture()
    loss = NPRLoss(ring.model(dm.VPLinear(), "eps"), dm.VPLinear(), data_var=2.0)
    with pytest.raises(ValueError, match=r"returned shape \(8, 1\)"):
        loss(lambda x, t, c=None: x[:, :1], ring.sample(8, torch.Generator().manual_seed(0)), torch.Generator())
