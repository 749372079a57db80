"""GPU check of the device seam (lesson 3, sec. 3.6): train a toy recipe on CUDA in float32 and bf16, sample it on
CUDA, and compare with the CPU run.

For each precision it trains the recipe's MLP for ``--steps`` steps with ``train(device="cuda", precision=...)``,
then draws ``--n`` samples on CUDA with DDIM (``dm.sample``, 50 steps) and the probability-flow ODE
(``ode_sample``, 25 steps of Heun, or DPM-Solver++(2M) on a discrete schedule). It prints the first and last losses, the largest difference from the CPU float32
losses (the generator stays on the CPU, so the minibatches, times and noise are the same: float32 on CUDA should
agree to float tolerance, bf16 only loosely), seconds for training and sampling, the sliced W1 distance of the
samples to fresh data, and that every sample is finite and on CUDA.

Run: ``python benchmarks/gpu_check.py [--recipe swiss-roll-ddpm] [--steps 200] [--n 4000]``. Without CUDA it says so
and exits with status 0. Not a test: it prints a table.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

import diffmath as dm
import toydata as td
from diffmath.metrics import sliced_w1
from diffmath.nets.mlp import MLP
from diffmath.ode import ode_log_likelihood, ode_sample, solve_ode_reference
from diffmath.recipes import objective, toy_recipe
from diffmath.train.training import fit


def _train(config: dict, data: torch.Tensor, device: str, precision: str, steps: int):
    schedule = dm.get_schedule(config["schedule"], **config["schedule_kwargs"])
    torch.manual_seed(config["seed"])
    model = MLP(2, config["hidden"], config["depth"], config["prediction"], schedule.t_max)
    loss = objective(config["objective"], schedule, **config["objective_kwargs"])
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    state = fit(
        model,
        data,
        None,
        steps,
        batch_size=config["batch_size"],
        lr=config["lr"],
        ema_decay=config["ema_decay"],
        seed=config["seed"],
        progress=False,
        loss=loss,
        device=device,
        precision=precision,
    )
    if device == "cuda":
        torch.cuda.synchronize()
    return state, schedule, time.perf_counter() - t0


def _timed(fn, *args):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn(*args)
    torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="swiss-roll-ddpm")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--n", type=int, default=4000)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: CUDA is not available on this machine (torch.cuda.is_available() is False); nothing to do.")
        return 0
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}, recipe {args.recipe}, {args.steps} steps")
    config = toy_recipe(args.recipe)
    data = td.sample(config["toy"], 20000, torch.Generator().manual_seed(0)).float()
    fresh = td.sample(config["toy"], args.n, torch.Generator().manual_seed(101)).float()
    cpu, _, t_cpu = _train(config, data, "cpu", "float32", args.steps)
    print(f"cpu  float32: loss {cpu.losses[0]:.4f} -> {cpu.losses[-1]:.4f}, train {t_cpu:.2f} s")
    _train(config, data, "cuda", "float32", 5)  # warm-up: the CUDA context and kernels, out of the timings
    ok = True
    for precision in ("float32", "bf16"):
        state, schedule, t_train = _train(config, data, "cuda", precision, args.steps)
        model = state.ema if state.ema is not None else state.model
        dev = next(model.parameters()).device
        gap = max(abs(a - b) for a, b in zip(state.losses, cpu.losses, strict=True))
        x = torch.randn(args.n, 2, generator=torch.Generator().manual_seed(1)).to(dev)
        if config["objective"] == "diffusion":
            ddim, t_ddim = _timed(dm.sample, model, x, schedule.grid(50), schedule, 0.0)
        else:
            ddim, t_ddim = None, float("nan")
        method = "dpm++2m" if schedule.discrete else "heun"  # heun integrates in t: continuous schedules only
        ode, t_ode = _timed(ode_sample, model, x, schedule.grid(25), schedule, method)
        print(
            f"cuda {precision:7s}: loss {state.losses[0]:.4f} -> {state.losses[-1]:.4f}, max |loss - cpu| {gap:.2e}, "
            f"train {t_train:.2f} s, model on {dev}"
        )
        for name, out, secs in (("ddim-50", ddim, t_ddim), (f"ode-{method}-25", ode, t_ode)):
            if out is None:
                continue
            finite, on = bool(torch.isfinite(out).all()), out.device.type
            ok &= finite and on == "cuda"
            w1 = sliced_w1(out.float().cpu(), fresh, generator=torch.Generator().manual_seed(0))
            print(f"    {name:12s}: {secs:.3f} s, finite {finite}, on {on}, sliced W1 to data {w1:.3f}")
        ok &= dev.type == "cuda" and all(abs(v) < float("inf") for v in state.losses)
    # the host-side solves (scipy) take device tensors and give them back on the device
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(2)).to("cuda")
    half = 0.5 * schedule.t_max
    ref = solve_ode_reference(model.float(), x, schedule.t_max, half, schedule, rtol=1e-5, atol=1e-5)
    logp, _ = ode_log_likelihood(model.float(), x, schedule, t_start=half, rtol=1e-4, atol=1e-4)
    on = {ref.device.type, logp.device.type}
    ok &= on == {"cuda"} and bool(torch.isfinite(ref).all() and torch.isfinite(logp).all())
    print(f"scipy solves on cuda inputs: results on {sorted(on)}, finite {bool(torch.isfinite(logp).all())}")
    print("gpu_check:", "OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
