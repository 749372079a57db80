"""Sampling on a GPU: images/s at batch 256 and 20 network evaluations, against the memory-bandwidth bound of one
step, host synchronisations per step, and peak memory (lesson 20; lesson 3, sec. 3.6).

For each model (the committed ``attr-uncond`` and ``attr-joint`` UNets at 24 px, the benchmark's 32 px UNet of
``benchmarks/images.py`` at random weights, and an AND of the three one-group ``attr-*`` models, ``Combine`` with
weights 1/3 each, at batch 64) and each precision (float32; bf16 through ``Autocast``) it runs DPM-Solver++(2M) on
the log-SNR grid with ``ode_sample`` and reports:

- images/s over ``--repeats`` timed runs after one warm-up (``torch.cuda.synchronize`` around each);
- the bandwidth bound of one step: the bytes one network evaluation moves, counted at module boundaries (every leaf
  module's inputs and outputs and every parameter, read or written once), over the copy bandwidth measured here (a
  device-to-device copy of 2 GiB, bytes read plus written). Element-wise work between modules is not counted, so the
  bound is optimistic and ``achieved / bound`` is an upper estimate of how far a step is from it;
- host synchronisations: over a whole call, and per step between the first and the last step (target 0), as
  ``torch.cuda.set_sync_debug_mode("warn")`` reports them;
- peak memory allocated during a call.

``--compile`` times ``attr-uncond`` through ``torch.compile`` instead (its first call, the warm-up, compiles).

Run: ``python benchmarks/gpu_sampling.py [--device cuda] [--batch 256] [--nfe 20] [--compile]``; on a CPU it runs with
``--device cpu`` (no synchronisation counts) as a smoke test. Not a test: it prints a table.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

import diffmath as dm
from diffmath.core.device import Autocast, resolve_device, unwrap
from diffmath.guide.compose import Combine, Conditioned
from diffmath.nets.unet import UNet
from diffmath.ode import ode_sample
from diffmath.recipes import train_image
from diffmath.sampling.loop import run
from diffmath.solvers import dpm_multistep_rule


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def copy_bandwidth(dev: torch.device, gib: float = 2.0) -> float:
    """Bytes per second of a device-to-device copy (read plus written), best of 5 after a warm-up."""
    n = int(gib * 2**30 / 4) if dev.type == "cuda" else 2**24
    a = torch.empty(n, device=dev)
    b = torch.empty_like(a)
    b.copy_(a)
    best = float("inf")
    for _ in range(5):
        _sync(dev)
        t0 = time.perf_counter()
        b.copy_(a)
        _sync(dev)
        best = min(best, time.perf_counter() - t0)
    return 2 * a.numel() * a.element_size() / best


def bytes_per_evaluation(model, x: torch.Tensor, t: torch.Tensor, cond) -> int:
    """Bytes one evaluation reads and writes at module boundaries: every leaf module's tensor inputs and outputs,
    and every parameter once."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        outs = output if isinstance(output, (tuple, list)) else (output,)
        for v in (*inputs, *outs):
            if isinstance(v, torch.Tensor):
                total += v.numel() * v.element_size()

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            model(x, t, cond)
    finally:
        for h in handles:
            h.remove()
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return total + params


def count_syncs(fn) -> tuple[object, int]:
    """``fn()`` and the number of host synchronisations CUDA's sync debug mode warned of while it ran."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            out = fn()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return out, sum("synchroniz" in str(w.message) for w in caught)


def models(dev: torch.device) -> list[tuple[str, object, object, int, tuple[int, ...], object]]:
    """(name, model, schedule, batch divisor, image shape, cond maker) for every row."""
    rows = []
    for name in ("attr-uncond", "attr-joint"):
        tm = train_image(name, progress=False)
        cond = None
        if tm.cond is not None:
            labels = tm.cond

            def cond(b, labels=labels):
                return labels[:b].to(dev)

        rows.append((name, tm.model.to(dev), tm.schedule, 1, tuple(tm.data.shape[1:]), cond))
    torch.manual_seed(0)
    bench = UNet(3, (16, 32, 64), 1, (False, False, True), "v", 1.0).to(dev).eval()
    rows.append(("benchmark UNet 32 px (random)", bench, dm.VPCosine(), 1, (3, 32, 32), None))
    parts = [train_image(n, progress=False) for n in ("attr-shape-quadrant", "attr-colour", "attr-size-texture")]
    wanted = [torch.tensor([[0, 1]]), torch.tensor([[2]]), torch.tensor([[1, 0]])]  # a fixed request per group
    combined = []
    for tm, want in zip(parts, wanted, strict=True):
        combined.append(Conditioned(tm.model.to(dev), want.to(dev)))
    rows.append(
        ("AND of 3 attr models (Combine)", combined, parts[0].schedule, 4, tuple(parts[0].data.shape[1:]), None)
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--nfe", type=int, default=20, help="network evaluations (DPM-Solver++(2M): one per step)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="only attr-uncond, through torch.compile (inductor)")
    args = parser.parse_args()
    dev = resolve_device(args.device)
    torch.backends.cudnn.benchmark = dev.type == "cuda"
    bw = copy_bandwidth(dev)
    name_dev = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    print(f"torch {torch.__version__}, {name_dev}; copy bandwidth {bw / 1e12:.2f} TB/s (read + written)")
    print(
        "| model | precision | batch | images/s | ms/step | bound ms/step | achieved/bound | syncs/call "
        "| syncs/step (middle) | peak MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows = models(dev)
    if args.compile:  # the first call compiles (not timed: the warm-up); unwrap() still reaches the UNet
        rows = [(f"{n} (torch.compile)", torch.compile(m), *rest) for n, m, *rest in rows[:1]]
    for name, model, sched, div, shape, make_cond in rows:
        batch = args.batch // div
        for precision in ("float32", "bf16"):
            if isinstance(model, list):  # the AND: weights 1/3 (summing to 1: the same in eps, x0 and v)
                parts = [Conditioned(Autocast(p.model, precision), p.cond) for p in model]
                net = Combine(parts, [1 / 3] * 3, "v")
                probe = model[0].model
            else:
                net = Autocast(model, precision)
                probe = unwrap(model)  # the bare UNet: hooks on a compiled module would recompile it
            cond = make_cond(batch) if make_cond is not None else None
            grid = sched.grid(args.nfe)
            x_T = torch.randn(batch, *shape, generator=torch.Generator(device=dev).manual_seed(0), device=dev)

            def call(net=net, x_T=x_T, grid=grid, sched=sched, cond=cond):
                with torch.no_grad():
                    return ode_sample(net, x_T, grid, sched, "dpm++2m", cond=cond)

            call()  # warm-up (cudnn autotuning, allocator)
            _sync(dev)
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            best = float("inf")
            for _ in range(args.repeats):
                _sync(dev)
                t0 = time.perf_counter()
                out = call()
                _sync(dev)
                best = min(best, time.perf_counter() - t0)
            assert torch.isfinite(out).all(), f"{name} {precision}: non-finite samples"
            peak = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else float("nan")
            evals = 3 if isinstance(model, list) else 1
            t = torch.full((batch,), 0.5 * sched.t_max, device=dev)
            per_eval = bytes_per_evaluation(Autocast(probe, precision), x_T, t, None if evals > 1 else cond)
            bound = evals * per_eval / bw
            step = best / args.nfe
            if dev.type == "cuda":
                _, per_call = count_syncs(call)
                steps = iter(run(net, x_T, grid, sched, dpm_multistep_rule(2), cond=cond))
                next(steps)
                _, middle = count_syncs(lambda steps=steps: [next(steps) for _ in range(args.nfe - 2)])
                for _ in steps:
                    pass
                syncs = (f"{per_call}", f"{middle / (args.nfe - 2):.2f}")
            else:
                syncs = ("n/a", "n/a")
            print(
                f"| {name} | {precision} | {batch} | {batch / best:.0f} | {1e3 * step:.2f} | {1e3 * bound:.3f} "
                f"| {step / bound:.0f}x | {syncs[0]} | {syncs[1]} | {peak:.0f} |"
            )


if __name__ == "__main__":
    main()
