"""Lesson 3, sec. 3.6: one device and precision seam. Wrapped models (DDP, DataParallel, torch.compile) train like
the bare model, devices resolve with clear errors, bf16 is an autocast context, objectives draw one global batch and
keep a rank's slice, and every tensor an objective creates follows its input's dtype."""

import pytest
import torch
import torch.distributed as dist
from torch import nn

import diffmath as dm
import toydata as td
from diffmath.core.device import autocast, resolve_device, unwrap
from diffmath.exact.mixtures import GaussianMixture
from diffmath.flows import DistillationLoss, FlowMatchingLoss
from diffmath.nets.mlp import MLP
from diffmath.pfgm import PoissonLoss
from diffmath.sampling.loop import final, run
from diffmath.sampling.samplers import ddim_rule
from diffmath.train.training import Draws, as_draws, diffusion_loss, fit, noise_batch, read_checkpoint, train

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour of a machine without CUDA")
DATA = td.sample("moons", 256, torch.Generator().manual_seed(0)).float()


def _net(prediction="eps", t_max=1000.0, dtype=torch.float32):
    torch.manual_seed(0)
    return MLP(2, 16, 1, prediction, t_max).to(dtype)


def _run(model, steps=20, **kwargs):
    return fit(model, DATA, dm.su_linear(), steps, batch_size=64, progress=False, **kwargs)


@pytest.fixture
def process_group(tmp_path):
    """A one-process gloo group, so that DistributedDataParallel can be built on the CPU."""
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_wrapped_models_train_like_the_bare_one_bit_for_bit(process_group):
    """DDP (one process) and DataParallel (no GPU: a passthrough) read ``prediction`` and EMA-copy the bare model:
    the 20 losses and the EMA weights equal the bare run's exactly, and the EMA is a bare MLP."""
    bare = _run(_net())
    for wrap in (nn.DataParallel, nn.parallel.DistributedDataParallel):
        run = _run(wrap(_net()))
        assert run.losses == bare.losses
        assert type(run.ema) is MLP
        for k, v in bare.ema.state_dict().items():
            assert torch.equal(run.ema.state_dict()[k], v)


def test_a_wrapped_run_checkpoints_the_bare_model(tmp_path):
    """The checkpoint of a wrapped run holds the bare state dict (no ``module.`` prefix) and the bare fingerprint, so
    a plain model resumes from it."""
    path = tmp_path / "ck.pt"
    for state in train(
        nn.DataParallel(_net()), DATA, dm.su_linear(), 20, 64, progress=False, checkpoint=path, checkpoint_every=10
    ):
        if state.step == 10:  # interrupted half way
            break
    ck = read_checkpoint(path)
    assert ck["fingerprint"]["model"] == "MLP" and set(ck["model"]) == set(_net().state_dict())
    resumed = _run(_net(), steps=20, checkpoint=path)
    assert resumed.losses == _run(_net()).losses


def test_unwrap_reaches_through_nested_wrappers():
    """``unwrap`` takes ``.module`` and ``._orig_mod`` repeatedly, in any order; an unwrapped object is returned as it
    is. (``torch.compile`` only builds its wrapper here; nothing compiled is run.)"""
    net = _net()
    assert unwrap(net) is net
    assert unwrap(nn.DataParallel(nn.DataParallel(net))) is net
    compiled = torch.compile(nn.DataParallel(net))
    assert unwrap(compiled) is net and unwrap(nn.DataParallel(torch.compile(net))) is net
    exact = GaussianMixture(torch.ones(1), torch.zeros(1, 2), torch.eye(2)[None])
    assert unwrap(exact) is exact


@NO_CUDA
def test_devices_resolve_and_cuda_is_refused_without_it():
    """``"auto"`` is the CPU on a machine without CUDA; asking for CUDA there, or for something that is no device,
    is a ValueError naming it; ``train(device="auto")`` is the default run bit for bit."""
    assert resolve_device("auto") == resolve_device("cpu") == resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ValueError, match="CUDA"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="CUDA"):
        _run(_net(), device="cuda:0")
    for bad in (3, None, "gpu0"):
        with pytest.raises(ValueError, match="device"):
            resolve_device(bad)
    assert _run(_net(), device="auto").losses == _run(_net()).losses


def test_bf16_is_autocast_and_float32_changes_nothing():
    """``"float32"`` leaves products in float32; ``"bf16"`` runs them in bfloat16 (PyTorch supports it on the CPU
    too): a bf16 run trains to finite losses that differ from float32's, with float32 weights and EMA. Another
    precision is a ValueError."""
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with autocast("cpu", "float32"):
        assert (a @ b).dtype == torch.float32
    with autocast("cpu", "bf16"):
        assert (a @ b).dtype == torch.bfloat16
    f32, bf16 = _run(_net()), _run(_net(), precision="bf16")
    assert all(torch.isfinite(torch.tensor(bf16.losses))) and bf16.losses != f32.losses
    assert all(p.dtype == torch.float32 for p in [*bf16.raw_model.parameters(), *bf16.ema.parameters()])
    with pytest.raises(ValueError, match="precision"):
        _run(_net(), precision="fp16")


@pytest.mark.parametrize("schedule", [dm.su_linear(), dm.get_schedule("vp-linear")], ids=["discrete", "continuous"])
def test_two_ranks_see_what_one_process_sees(schedule):
    """With ``world_size`` 2 and local batch B, the two ranks' times and noise, concatenated, are the one-process
    draw of batch 2B, bit for bit; a plain generator is one process's draws."""
    x = DATA[:16]
    one = noise_batch(x, schedule, Draws(torch.Generator().manual_seed(3)))
    ranks = [
        noise_batch(x[8 * r : 8 * (r + 1)], schedule, Draws(torch.Generator().manual_seed(3), r, 2)) for r in (0, 1)
    ]
    for whole, a, b in zip(one, *ranks, strict=True):
        assert torch.equal(torch.cat([a, b]), whole)
    plain = noise_batch(x, schedule, torch.Generator().manual_seed(3))
    assert all(torch.equal(p, w) for p, w in zip(plain, one, strict=True))


class _Recorder(nn.Module):
    """A one-parameter model with the one interface that records what an objective feeds it."""

    def __init__(self, prediction, dtype=torch.float32):
        super().__init__()
        self.prediction, self.w = prediction, nn.Parameter(torch.ones((), dtype=dtype))
        self.seen = []

    def forward(self, x, t, cond=None):
        self.seen.append((x.detach(), torch.as_tensor(t).detach()))
        return self.w * x


OBJECTIVES = {
    "diffusion": ("eps", lambda: dm.train.training.DiffusionLoss(dm.get_schedule("vp-linear"))),
    "flow-matching": ("velocity", lambda: FlowMatchingLoss("rectified-flow")),
    "poisson": ("x0", lambda: PoissonLoss(dm.get_schedule("vp-linear"))),
}


@pytest.mark.parametrize("name", OBJECTIVES)
def test_every_objective_draws_one_global_batch(name):
    """Each objective's model inputs (x_t and t, from its times, noise, prior or Cauchy draws) on two ranks,
    concatenated, are the one-process inputs on the global batch, bit for bit."""
    prediction, make = OBJECTIVES[name]
    loss, x = make(), DATA[:16]
    whole = _Recorder(prediction)
    loss(whole, x, Draws(torch.Generator().manual_seed(5)))
    parts = _Recorder(prediction)
    for r in (0, 1):
        loss(parts, x[8 * r : 8 * (r + 1)], Draws(torch.Generator().manual_seed(5), r, 2))
    for i in (0, 1):
        assert torch.equal(torch.cat([parts.seen[0][i], parts.seen[1][i]]), whole.seen[0][i])


@pytest.mark.parametrize("name", [*OBJECTIVES, "distillation"])
def test_objectives_follow_the_input_dtype(name):
    """On float64 data and a float64 model every objective creates its times and noise in float64 and returns a
    float64 loss (nothing falls back to the default float32)."""
    if name == "distillation":
        prediction, loss, x = "velocity", DistillationLoss(), torch.stack([DATA[:8], DATA[8:16]], 1).double()
    else:
        prediction, loss, x = OBJECTIVES[name][0], OBJECTIVES[name][1](), DATA[:8].double()
    model = _Recorder(prediction, torch.float64)
    value = loss(model, x, torch.Generator().manual_seed(0))
    assert value.dtype == torch.float64
    assert all(v.dtype == torch.float64 and v.device == x.device for v in model.seen[0])


def test_diffusion_loss_reads_the_prediction_through_wrappers():
    """``diffusion_loss`` on a wrapped model takes the bare model's ``prediction`` and gives the bare loss."""
    net, x, sched = _net("v", 1.0, torch.float64), DATA[:32].double(), dm.get_schedule("vp-linear")
    bare = diffusion_loss(net, x, sched, torch.Generator().manual_seed(1))
    wrapped = diffusion_loss(nn.DataParallel(net), x, sched, torch.Generator().manual_seed(1))
    assert bare.dtype == torch.float64 and torch.equal(bare, wrapped)


def test_draws_refuse_what_they_cannot_use():
    """A rank outside ``[0, world_size)``, a non-positive world size or a non-generator source is refused."""
    with pytest.raises(ValueError, match="rank"):
        Draws(None, 2, 2)
    with pytest.raises(ValueError, match="world_size"):
        Draws(None, 0, 0)
    with pytest.raises(TypeError, match="generator"):
        as_draws(7)
    d = Draws(torch.Generator())
    assert as_draws(d) is d and as_draws(None).generator is None


def test_discrete_schedule_tables_follow_the_times_device():
    """A discrete schedule's tables are moved to the device of the times once and cached there (checked with torch's
    "meta" device, which has shapes but no data: the lookup must not mix a CPU table with other-device indices)."""
    sched = dm.su_linear(1000)
    t = torch.tensor([3.0, 500.0], device="meta")
    c = sched._coefficients(t)
    assert c.a.device.type == "meta" and c.b.device.type == "meta" and c.a.shape == (2,)
    assert sched._on(torch.device("meta")) is sched._on(torch.device("meta"))  # cached, not copied per call
    cpu = sched._coefficients(torch.tensor([3.0, 500.0], dtype=torch.float64))
    assert torch.equal(cpu.a, sched.abar[[3, 500]]) and torch.equal(cpu.b, sched.bbar[[3, 500]])


class _TimeRecorder(nn.Module):
    """A model that records the times it is asked at, and returns NaN from step ``nan_from`` on."""

    def __init__(self, net, nan_from=None):
        super().__init__()
        self.net, self.prediction, self.times, self.nan_from = net, net.prediction, [], nan_from

    def forward(self, x, t, cond=None):
        self.times.append(t.detach().clone())
        if self.nan_from is not None and len(self.times) > self.nan_from:
            return torch.full_like(x, float("nan"))  # without asking the net, which would refuse a NaN input
        return self.net(x, t, cond)


def test_a_half_precision_state_is_sampled_at_exact_times():
    """A bfloat16 state on a discrete schedule: the model is asked at the grid's integer times in float32 (bfloat16
    would round t = 999 to 1000, outside the schedule), and the bfloat16 MLP embeds them."""
    sched = dm.su_linear()
    model = _TimeRecorder(_net(dtype=torch.bfloat16))
    grid = sched.grid(10)
    x = dm.sample(model, torch.randn(8, 2, generator=torch.Generator().manual_seed(0)).bfloat16(), grid, sched)
    assert x.dtype == torch.bfloat16 and torch.isfinite(x.float()).all()
    assert all(t.dtype == torch.float32 for t in model.times)
    assert [t[0].item() for t in model.times] == grid[:-1].tolist()
    assert torch.tensor(999.0).bfloat16().item() == 1000.0  # what the old float conversion gave


@pytest.mark.parametrize("check_every", [0, 1, 4, None])
def test_a_non_finite_state_is_reported_at_its_first_step(check_every):
    """However seldom the loop looks (``check_every``; ``None``: every step on the CPU, only the last on a GPU, so
    a CUDA loop never waits), the error names the first step whose state was not finite."""
    sched = dm.su_linear()
    model = _TimeRecorder(_net(), nan_from=3)
    with pytest.raises(ValueError, match=r"at step 3 \(t=.*model returned NaN or inf"):
        final(run(model, torch.randn(8, 2), sched.grid(10), sched, ddim_rule(), check_every=check_every))
    with pytest.raises(ValueError, match="check_every must be an integer >= 0 or None"):
        final(run(_net(), torch.randn(8, 2), sched.grid(4), sched, ddim_rule(), check_every=-1))


def test_autocast_wraps_a_model_for_any_sampler():
    """``Autocast(model)`` keeps the one interface: ``prediction``, ``unwrap`` back to the net, output in the state's
    float32, and a bf16 (CPU autocast) DDIM run within bfloat16's rounding of the float32 run; bad input is refused."""
    from diffmath.core.device import Autocast
    from diffmath.nets.unet import UNet

    torch.manual_seed(0)
    net = UNet(3, (8, 16), 1, (False, True), "v", 1.0).eval()
    with torch.no_grad():  # the last convolution starts at zero: give every weight a value
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    wrapped = Autocast(net)
    assert wrapped.prediction == "v" and unwrap(wrapped) is net
    sched = dm.VPCosine()
    x_T = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    full = dm.sample(net, x_T, sched.grid(10), sched)
    half = dm.sample(wrapped, x_T, sched.grid(10), sched)
    assert half.dtype == torch.float32
    assert 0 < (half - full).abs().max() < 0.1
    assert torch.equal(dm.sample(Autocast(net, "float32"), x_T, sched.grid(10), sched), full)
    with pytest.raises(TypeError, match="one interface"):
        Autocast(lambda x, t, c=None: x)
    with pytest.raises(ValueError, match="precision must be one of"):
        Autocast(net, "fp8")


def test_training_and_sampling_through_torch_compile():
    """``train(compile=...)`` runs the passes through ``torch.compile`` (here its ``"eager"`` backend: dynamo's
    capture without code generation, so the test needs no compiler): the losses and EMA weights equal the plain
    run's, the EMA is the bare MLP, and a compiled model samples like the bare one; a wrong ``compile`` is refused."""
    bare = _run(_net())
    compiled = _run(_net(), compile={"backend": "eager"})
    assert torch.allclose(torch.tensor(compiled.losses), torch.tensor(bare.losses), rtol=1e-6, atol=0)
    assert type(compiled.ema) is MLP
    for k, v in bare.ema.state_dict().items():
        assert torch.allclose(compiled.ema.state_dict()[k], v, rtol=1e-5, atol=1e-7), k
    sched, x = dm.su_linear(), torch.randn(16, 2, generator=torch.Generator().manual_seed(3))
    plain = dm.sample(bare.model, x, sched.grid(10), sched)
    assert torch.allclose(dm.sample(torch.compile(bare.model, backend="eager"), x, sched.grid(10), sched), plain)
    with pytest.raises(TypeError, match="compile must be a bool or a dict"):
        _run(_net(), compile="yes")


def test_model_device_reads_through_wrappers():
    """``model_device``: a network's parameters' device through DataParallel and Autocast; the CPU for an exact
    model or a plain function (what a sampler that draws its own start, e.g. ``pfgm_sample``, draws onto)."""
    from diffmath.core.device import Autocast, model_device

    net = _net()
    assert model_device(net) == torch.device("cpu") == model_device(nn.DataParallel(Autocast(net)))
    assert model_device(GaussianMixture(torch.ones(1), torch.zeros(1, 2), torch.eye(2)[None])) == torch.device("cpu")
    assert model_device(lambda x, t, c=None: x) == torch.device("cpu")


def test_a_bf16_recipe_is_stored_apart_from_the_float32_one(tmp_path):
    """``train_toy(..., precision="bf16")`` trains under autocast and stores its weights under another name, so the
    float32 file (the one every lesson loads) is never replaced; the two loss curves start alike."""
    from diffmath.recipes import toy_recipe, train_toy

    config = toy_recipe("moons-ddpm", steps=20)
    half = train_toy(config, progress=False, folder=tmp_path, precision="bf16")
    full = train_toy(config, progress=False, folder=tmp_path)
    assert half.path != full.path and half.path.exists() and full.path.exists()
    assert half.losses != full.losses and abs(half.losses[0] - full.losses[0]) < 0.05 * full.losses[0]
    with pytest.raises(ValueError, match="precision must be one of"):
        train_toy(config, progress=False, folder=tmp_path, precision="fp16")
