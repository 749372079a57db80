"""Overhead of the one sampler loop: a DDIM step of a tiny network through ``diffmath.sample`` against the same
arithmetic written plainly (one model call, x0 from eps, the DDIM update), batch 1 to 4096, in one process.

    python benchmarks/sampler_overhead.py [--steps 50] [--repeats 7] [--device cpu|cuda]

Prints microseconds per step (best of the repeats, the two versions timed alternately so that both see the same load)
and the ratio library / plain, with the largest difference between their samples (0: the same arithmetic, bit for
bit); where CUDA is present and chosen, also the library's host synchronisations per step (counted by torch's sync
debug mode, the checks at the boundary included).
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

import diffmath as dm


class TinyEps(torch.nn.Module):
    """A 2-D eps-predicting MLP of width 32 (time as an input feature)."""

    prediction = "eps"

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(3, 32), torch.nn.SiLU(), torch.nn.Linear(32, 2))

    def forward(self, x, t, cond=None):
        return self.net(torch.cat([x, t[:, None]], 1))


def plain(model, x, grid, schedule):
    """DDIM (eta = 0) written out: the coefficients once, then x0 = (x - b eps)/a and x_s = a_s x0 + b_s eps."""
    c = schedule.coefficients(grid)
    a, b, g = c.a.tolist(), c.b.tolist(), grid.to(x).tolist()
    with torch.no_grad():
        for i in range(len(g) - 1):
            eps = model(x, torch.full((x.shape[0],), g[i], dtype=x.dtype, device=x.device))
            x0 = (x - b[i] * eps) / a[i]
            x = a[i + 1] * x0 + b[i + 1] * eps
    return x


def library(model, x, grid, schedule):
    return dm.sample(model, x, grid, schedule, eta=0.0)


def best_times(fns, repeats, sync):
    """Best wall time of each of ``fns`` over ``repeats`` rounds, each round running every function once in turn."""
    for fn in fns:
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for k, fn in enumerate(fns):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            best[k] = min(best[k], time.perf_counter() - start)
    return best


def syncs_per_step(model, x, grid, schedule):
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            library(model, x, grid, schedule)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught) / (len(grid) - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    schedule = dm.VPCosine()
    grid = schedule.grid(args.steps, t_start=0.999)
    model = TinyEps().to(device)
    print(f"DDIM step of a width-32 MLP, {args.steps} steps, {device.type}, best of {args.repeats}")
    print(
        f"{'batch':>6} {'plain us/step':>14} {'diffmath us/step':>17} {'ratio':>6} {'max|diff|':>10}"
        + ("  syncs/step" if device.type == "cuda" else "")
    )
    for batch in (1, 16, 256, 4096):
        x = torch.randn(batch, 2, device=device)
        diff = (library(model, x, grid, schedule) - plain(model, x, grid, schedule)).abs().max().item()
        t_plain, t_lib = (
            t / args.steps * 1e6
            for t in best_times(
                [lambda x=x: plain(model, x, grid, schedule), lambda x=x: library(model, x, grid, schedule)],
                args.repeats,
                sync,
            )
        )
        row = f"{batch:>6} {t_plain:>14.1f} {t_lib:>17.1f} {t_lib / t_plain:>6.2f} {diff:>10.1e}"
        if device.type == "cuda":
            row += f"  {syncs_per_step(model, x, grid, schedule):>10.1f}"
        print(row)


if __name__ == "__main__":
    main()
