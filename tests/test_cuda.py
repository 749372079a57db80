"""Lessons 3 (sec. 3.6), 6 and 20 on a GPU: the same code on CUDA as on the CPU. Skipped where CUDA is absent
(``make test`` on a CPU machine); ``bash benchmarks/gpu_run.sh`` runs it on a GPU machine with the benchmarks.

What must hold on CUDA: training a UNet gives the CPU run's losses to float tolerance (float32, TF32 off) and sane
bf16 losses; every sampler of the common suite gives the CPU run's samples (the CPU generator's noise is copied
over); a sampling loop never waits for the device between its first and last step (no host synchronisation); the
committed image models sample in float32 and under ``Autocast`` (bf16); likelihood, the Frechet distance and the
diffusers adapter accept CUDA tensors; ``torchrun`` trains a recipe with nccl.
"""

import os
import subprocess
import sys
import warnings

import pytest
import torch
from test_samplers_common import IDS, SAMPLERS

import diffmath as dm
import toydata as td
from diffmath.core.device import Autocast
from diffmath.metrics import frechet_distance, sliced_w1
from diffmath.nets.mlp import MLP
from diffmath.nets.unet import UNet
from diffmath.ode import ode_log_likelihood
from diffmath.recipes import image_recipe, image_setup, image_training, train_attribute_classifier, train_image
from diffmath.sampling.loop import run
from diffmath.sampling.samplers import ddim_rule
from diffmath.solvers import dpm_multistep_rule, unipc_rule

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (bash benchmarks/gpu_run.sh)")
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def _true_float32():
    """TF32 rounds convolutions and products to 10 mantissa bits: compare CPU and CUDA in true float32."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def _unet(prediction="v", t_max=1.0, num_classes=0, scale=0.05):
    torch.manual_seed(0)
    net = UNet(3, (16, 32), 1, (False, True), prediction, t_max, num_classes=num_classes)
    with torch.no_grad():  # the last convolution starts at zero: give every weight a value
        for p in net.parameters():
            p.add_(scale * torch.randn_like(p))
    return net.eval()


def _rel(a, b):
    return ((a.cpu().double() - b.cpu().double()).abs().max() / b.cpu().double().abs().max()).item()


def test_unet_training_on_cuda_follows_the_cpu_run():
    """30 Adam steps of a UNet on 16 px shapes: CUDA float32 losses equal the CPU's to 1e-4 (relative; the minibatches,
    times and noise come from the same CPU generator), the EMA weights to 1e-4; bf16 losses stay within 5%."""
    data = td.images.shapes(512, 16, torch.Generator().manual_seed(0)).images
    sched = dm.VPCosine()

    def fit(device, precision="float32"):
        *_, last = dm.train.training.train(
            _unet(scale=0.0), data, sched, 30, 32, 2e-3, 0.9, progress=False, device=device, precision=precision
        )
        return last

    cpu, gpu, bf16 = fit("cpu"), fit("cuda"), fit("cuda", "bf16")
    losses = torch.tensor(cpu.losses)
    assert (torch.tensor(gpu.losses) - losses).abs().max() / losses.abs().max() < 1e-4
    for (k, v), w in zip(cpu.ema.state_dict().items(), gpu.ema.state_dict().values(), strict=True):
        assert w.device.type == CUDA.type and (w.cpu() - v).abs().max() <= 1e-4 * max(1.0, v.abs().max().item()), k
    assert abs(sum(bf16.losses) / sum(cpu.losses) - 1) < 0.05


@pytest.mark.parametrize(("name", "sched", "sampler"), SAMPLERS, ids=IDS)
def test_every_sampler_on_cuda_gives_the_cpu_samples(name, sched, sampler):
    """The common suite's samplers on a random eps-UNet: 10 steps on CUDA from the same x_T and the same CPU
    generator (its draws are copied over) give the CPU samples to 1e-4 relative, on CUDA, in float32."""
    net = _unet("eps", sched.t_max, scale=0.02)
    x_T = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    grid = sched.grid(10)
    cpu = sampler(net, x_T, grid, torch.Generator().manual_seed(2))
    gpu = sampler(net.to(CUDA), x_T.to(CUDA), grid, torch.Generator().manual_seed(2))
    assert gpu.device.type == CUDA.type and gpu.dtype == torch.float32 and torch.isfinite(gpu).all()
    assert _rel(gpu, cpu) < 1e-4


def _syncs_between_first_and_last(steps):
    """Host synchronisations (as ``torch.cuda.set_sync_debug_mode`` warns of them) after the first step and before
    the last: the first builds the run's tables, the last looks at the state."""
    steps = iter(steps)
    next(steps)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            middle = [next(steps) for _ in range(7)]
        finally:
            torch.cuda.set_sync_debug_mode(0)
    *_, last = steps
    assert len(middle) == 7 and torch.isfinite(last.x).all()
    return [str(w.message) for w in caught if "synchroniz" in str(w.message)]


@pytest.mark.parametrize(
    "rule",
    [ddim_rule(), ddim_rule(1.0), dpm_multistep_rule(2), dpm_multistep_rule(3), unipc_rule(2, "bh2")],
    ids=["ddim", "ddpm-cuda-generator", "dpm++2m", "dpm++3m", "unipc-2"],
)
def test_a_cuda_sampling_loop_never_waits_for_the_device(rule):
    """Between the first and the last of 10 steps of a class-conditional UNet at batch 64, no step synchronises
    with the host: the loop looks at the state only after the last step (``check_every=None``), the network checks
    values only on the CPU, and DDPM's noise comes from a CUDA generator."""
    sched = dm.VPCosine()
    net = _unet(num_classes=(3, 4)).to(CUDA)
    x = torch.randn(64, 3, 8, 8, device=CUDA)
    cond = torch.stack([torch.arange(64) % 3, torch.arange(64) % 4 - 1], 1).to(CUDA)
    noise = torch.Generator(device=CUDA).manual_seed(0)
    assert _syncs_between_first_and_last(run(net, x, sched.grid(10), sched, rule, cond=cond, noise=noise)) == []


def test_committed_image_model_samples_on_cuda_in_float32_and_bf16():
    """``attr-uncond`` (committed) on CUDA: DPM-Solver++(2M), 20 steps, 64 images equal the CPU's to 1e-3 relative;
    under ``Autocast`` (bf16) they stay finite, in float32, and their Frechet distance to the float32 samples is
    small against the model's distance to data."""
    tm = train_image("attr-uncond", progress=False)
    sched = tm.schedule
    x_T = torch.randn(64, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    grid = sched.grid(20)
    cpu = dm.ode.ode_sample(tm.model, x_T, grid, sched, "dpm++2m")
    model = tm.model.to(CUDA)
    gpu = dm.ode.ode_sample(model, x_T.to(CUDA), grid, sched, "dpm++2m")
    half = dm.ode.ode_sample(Autocast(model), x_T.to(CUDA), grid, sched, "dpm++2m")
    assert _rel(gpu, cpu) < 1e-3
    assert half.dtype == torch.float32 and torch.isfinite(half).all()
    assert (half - gpu).abs().mean() < 0.05


def test_likelihood_and_frechet_distance_take_cuda_tensors():
    """``ode_log_likelihood`` of an MLP on CUDA (solved to 1e-7) equals the CPU's to 1e-5 relative; the Frechet distance of CUDA
    image sets (classifier on CUDA) equals the CPU's to 1e-6 relative, and the sliced W1 of CUDA samples (directions
    drawn on the CPU) the CPU's to 1e-12."""
    sched = dm.VPCosine()
    torch.manual_seed(0)
    mlp = MLP(2, 32, 2, "eps", sched.t_max).eval()
    x0 = td.sample("moons", 16, torch.Generator().manual_seed(0)).float()
    cpu, _ = ode_log_likelihood(mlp, x0, sched, t_start=1e-3, t_end=0.99, rtol=1e-7, atol=1e-7)
    gpu, _ = ode_log_likelihood(mlp.to(CUDA), x0.to(CUDA), sched, t_start=1e-3, t_end=0.99, rtol=1e-7, atol=1e-7)
    assert gpu.device.type == CUDA.type and _rel(gpu, cpu) < 1e-5
    clf = train_attribute_classifier("shapes", size=16, progress=False)
    a = td.images.shapes(128, 16, torch.Generator().manual_seed(5)).images
    b = td.images.shapes(128, 16, torch.Generator().manual_seed(6)).images
    fd_cpu = frechet_distance(clf, a, b)
    fd_gpu = frechet_distance(clf.to(CUDA), a.to(CUDA), b.to(CUDA))
    assert abs(fd_gpu - fd_cpu) <= 1e-6 * fd_cpu + 1e-9
    u, v = td.sample("moons", 500, torch.Generator().manual_seed(1)), td.sample("moons", 400, torch.Generator())
    w_cpu = sliced_w1(u, v, generator=torch.Generator().manual_seed(0))
    assert abs(sliced_w1(u.to(CUDA), v.to(CUDA), generator=torch.Generator().manual_seed(0)) - w_cpu) < 1e-12


def test_image_recipe_trains_on_cuda_in_bf16():
    """An attribute recipe's own loop, 50 steps on CUDA under bf16 autocast: finite, falling loss; weights on CUDA."""
    config = image_recipe("attr-shape-quadrant", steps=50)
    model, sched, data, labels = image_setup(config)
    *_, last = image_training(config, model, sched, data, labels, progress=False, device="cuda", precision="bf16")
    losses = torch.tensor(last.losses)
    assert torch.isfinite(losses).all() and losses[-10:].mean() < losses[:10].mean()
    assert next(last.ema.parameters()).device.type == CUDA.type


def test_torchrun_trains_a_recipe_with_nccl(tmp_path):
    """``torchrun --nproc_per_node=1 -m diffmath train moons-ddpm --device cuda --steps 60`` (nccl) finishes and
    writes its weights into ``DIFFMATH_CACHE``."""
    env = {**os.environ, "DIFFMATH_CACHE": str(tmp_path), "PYTHONPATH": os.getcwd()}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", "-m", "diffmath", "train"]
    out = subprocess.run(
        [*cmd, "moons-ddpm", "--device", "cuda", "--steps", "60", "--no-progress"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert list(tmp_path.glob("moons-ddpm-*.pt")), out.stdout


def test_diffusers_adapter_on_cuda():
    """A tiny random diffusers UNet2DModel through ``DiffusersModel`` on CUDA: eps equals the UNet's own output and a
    DDIM run gives the CPU samples to 1e-4 relative."""
    diffusers = pytest.importorskip("diffusers")
    from diffmath.adapters import DiffusersModel, schedule_from_diffusers

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    ).eval()
    scheduler = diffusers.DDIMScheduler(num_train_timesteps=1000)
    sched = schedule_from_diffusers(scheduler.config)
    model = DiffusersModel(unet, scheduler.config)
    x_T = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    cpu = dm.sample(model, x_T, sched.grid(10), sched)
    model = model.to(CUDA)
    t = torch.full((4,), 500.0, device=CUDA)
    with torch.no_grad():
        direct = unet.to(CUDA)(x_T.to(CUDA), t - 1).sample
    assert torch.allclose(model(x_T.to(CUDA), t), direct, atol=1e-6)
    assert _rel(dm.sample(model, x_T.to(CUDA), sched.grid(10), sched), cpu) < 1e-4


def test_pfgm_sample_draws_onto_the_models_device():
    """``pfgm_sample`` of an eps-UNet on CUDA starts on CUDA from the CPU prior draws: the CPU samples to 1e-4."""
    from diffmath.pfgm import pfgm_grid, pfgm_sample

    sched = dm.VPCosine()
    net = _unet("eps", sched.t_max, scale=0.02)
    grid = pfgm_grid(sched, 10, z_max=40.0)
    cpu = pfgm_sample(net, 8, (3, 8, 8), grid, sched, generator=torch.Generator().manual_seed(0))
    gpu = pfgm_sample(net.to(CUDA), 8, (3, 8, 8), grid, sched, generator=torch.Generator().manual_seed(0))
    assert gpu.device.type == CUDA.type and _rel(gpu, cpu) < 1e-4
