"""Image benchmark: diffmath's UNet vs a diffusers ``UNet2DModel`` of the same channel widths, on CPU, in one run.

Both networks (randomly initialised from the same seed, no download) train on the same shapes (32 px by default) with the same
loop (:func:`diffmath.train.training.train`: v-prediction on the cosine VP schedule, batch 32, Adam 2e-3 with no decay to
speak of, EMA 0.995) for the same wall-clock time; the diffusers model enters through a four-line adapter to the one model interface. We report
training steps per second, sampling images per second (DPM-Solver++(2M), 20 network evaluations, batch 256) and the
Frechet distance in the attribute classifier's features (lesson 20, eq. 20.1) of 256 samples to 256 real images,
next to the real-vs-real floor at the same size.

Widths: channels (16, 32, 64), one residual block per level, self-attention at the lowest level (size / 4); diffusers:
``block_out_channels=(16, 32, 64)``, ``layers_per_block=1``, ``DownBlock2D, DownBlock2D, AttnDownBlock2D``.

Run: ``python benchmarks/images.py [--seconds 120] [--threads 1] [--size 32] [--device cuda] [--precision bf16]
[--batch 128]``; on a GPU the timings drain the device's queue (``torch.cuda.synchronize``), and both networks skip
their first 20 steps (allocation, cuDNN's choice of kernels). Needs ``diffusers`` (the bench extra; install it
with ``PIP_CONSTRAINT=.venv/constraints.txt pip install diffusers`` so torch is left alone). Not a test: it prints a
table.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import diffmath as dm
from diffmath.core.device import Autocast, resolve_device
from diffmath.metrics import frechet_distance
from diffmath.nets.unet import UNet, num_parameters
from diffmath.recipes import objective, train_attribute_classifier
from diffmath.train.training import train
from toydata.images import shapes


class DiffusersAdapter(nn.Module):
    """A diffusers UNet2DModel as a diffmath model: ``model(x, t) -> tensor`` with a ``prediction`` attribute."""

    def __init__(self, net: nn.Module, prediction: str = "v", t_scale: float = 999.0) -> None:
        super().__init__()
        self.net, self.prediction, self.t_scale = net, prediction, t_scale

    def forward(self, x, t, cond=None):
        return self.net(x, t * self.t_scale).sample


def diffusers_unet(size: int = 32) -> nn.Module:
    from diffusers import UNet2DModel

    net = UNet2DModel(
        sample_size=size,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(16, 32, 64),
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        attention_head_dim=64,
    )
    return DiffusersAdapter(net)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="training time of each network")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--n", type=int, default=256, help="samples for the Frechet distance")
    parser.add_argument("--size", type=int, default=32, help="image size in pixels (a multiple of 4)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--precision", default="float32", choices=["float32", "bf16"])
    parser.add_argument("--batch", type=int, default=32, help="training batch size")
    args = parser.parse_args()
    size = args.size
    dev = resolve_device(args.device)
    torch.set_num_threads(args.threads)

    def now() -> float:  # wall time with the device's queue drained
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    sched = dm.VPCosine()
    data = shapes(6000, size, torch.Generator().manual_seed(0)).images
    real = shapes(args.n, size, torch.Generator().manual_seed(123)).images
    clf = train_attribute_classifier("shapes", size=size, progress=False)
    floor = frechet_distance(clf, shapes(args.n, size, torch.Generator().manual_seed(456)).images, real)
    rows = []
    for name, make in (
        ("diffmath UNet", lambda: UNet(3, (16, 32, 64), 1, (False, False, True), "v", 1.0)),
        ("diffusers UNet2DModel", lambda: diffusers_unet(size)),
    ):
        torch.manual_seed(0)
        model = make()
        loss = objective("diffusion", sched)
        run = train(
            model,
            data,
            sched,
            10**6,
            batch_size=args.batch,
            lr=2e-3,
            ema_decay=0.995,
            progress=False,
            loss=loss,
            device=dev,
            precision=args.precision,
        )
        for _ in range(20):  # warm-up: allocation, cudnn's choice of kernels
            next(run)
        start, first = now(), 20
        state = next(s for s in run if time.perf_counter() - start > args.seconds)
        steps, elapsed = state.step - first, now() - start
        ema = Autocast(state.ema.eval(), args.precision)
        x_T = torch.randn(args.n, 3, size, size, generator=torch.Generator().manual_seed(1)).to(dev)
        with torch.no_grad():
            dm.ode.ode_sample(ema, x_T[:8], sched.grid(20), sched, "dpm++2m")  # warm-up
            start = now()
            x = dm.ode.ode_sample(ema, x_T, sched.grid(20), sched, "dpm++2m").clamp(-1, 1)
            sample_s = now() - start
        fd = frechet_distance(clf, x.cpu(), real)
        rows.append((name, num_parameters(model), steps / elapsed, state.step, args.n / sample_s, fd))
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, threads={args.threads}"
    print(
        f"{size} px, {where}, {args.precision}, batch {args.batch}, {args.seconds:g} s of training each, "
        f"FD floor (real vs real, n={args.n}): {floor:.3g}"
    )
    print("| network | parameters | train steps/s | steps in budget | sample images/s (20 NFE) | Frechet distance |")
    print("|---|---|---|---|---|---|")
    for name, p, sps, steps, ips, fd in rows:
        print(f"| {name} | {p / 1e6:.2f} M | {sps:.2f} | {steps} | {ips:.1f} | {fd:.3g} |")
    print(f"ratio diffmath / diffusers: train {rows[0][2] / rows[1][2]:.2f}x, sample {rows[0][4] / rows[1][4]:.2f}x")


if __name__ == "__main__":
    main()
