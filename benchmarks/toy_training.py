"""Toy training benchmark: diffmath vs smalldiffusion on smalldiffusion's own swiss-roll example, in one process.

Both libraries train on the same data tensor (the example's 100 points, the whole set as the batch of every step) for
the same number of optimiser steps, then sample from the same noise:

- smalldiffusion: its example's ``TimeInputMLP`` (hidden 16-128-128-128-128-16) on ``ScheduleLogLinear(N=200)`` in
  its own ``training_loop`` (AdamW), sampled by its example's accelerated sampler (gam = 2) on ``sample_sigmas(n)``.
- diffmath DDIM: a v-predicting ``MLP(2, 64, depth=2)`` on the continuous cosine schedule in lesson 3's loop (fused
  Adam, a plain tensor loop), sampled by DDIM on a quadratic grid.
- diffmath PFGM (lesson 13): the same MLP and loop with the objective of the recipe ``swiss-roll-pfgm`` (the Cauchy
  path on the same cosine schedule, clipped at the recipe's radius), sampled from the far-field prior at z_max = 40
  with DPM-Solver++(2M) on a log-z grid.

Every loop gets the same niceties as diffmath's: a cosine decay of the learning rate to 0 and an EMA of the weights
(decay 0.995) that samples (smalldiffusion's loop is wrapped through the optimiser it yields, as in
``benchmarks/flow_matching.py``). smalldiffusion runs at the better of learning rates 1e-3 (its example's) and 3e-3
(diffmath's), chosen by its mean 20-NFE score over the seeds; diffmath at 3e-3. Each seed k trains every model with
seed k and samples it from noise of seed k + 7 (PFGM: its prior draw of seed k + 7).

Reported, as mean +- SD over the seeds: training CPU seconds (``time.process_time``, one thread: steadier than wall
time on a shared machine), the CPU seconds of one 20-NFE sampling of all samples, and the sliced W1 distance of the
samples to a dense copy of the curve at 5, 10, 20 and 50 network evaluations (NFE); then the ratios of the means,
diffmath / smalldiffusion, and best diffmath / smalldiffusion at each NFE.

smalldiffusion 0.5.0 imports torchvision at import time (for image transforms this benchmark does not use) and
torchvision has no CPU build here, so a stub module stands in for it; install the peer with
``PIP_CONSTRAINT=.venv/constraints.txt pip install --no-deps smalldiffusion==0.5.0 accelerate einops``
(``make bench`` does this).

Run: ``python benchmarks/toy_training.py [--steps 15000] [--seeds 5]`` (about 15 min of CPU on one thread at the
defaults; 40 min wall on a loaded 2-core machine). Not a test: it prints a table.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from flow_matching import EMA_DECAY, train_smalldiffusion
from swissroll_task import import_smalldiffusion, swissroll_curve

import diffmath as dm
from diffmath.metrics import sliced_w1
from diffmath.nets.mlp import MLP
from diffmath.ode import nfe
from diffmath.pfgm import pfgm_grid, pfgm_sample
from diffmath.recipes import TOY_RECIPES, objective
from diffmath.train.training import fit

NFES = (5, 10, 20, 50)
LR = 3e-3  # diffmath's learning rate (its toy recipes')


def run_smalldiffusion(data, steps, lr, seed, noise):
    """smalldiffusion's example, its loop wrapped with diffmath's cosine decay and EMA."""
    sd = import_smalldiffusion()
    ema, schedule, train_s = train_smalldiffusion(data, steps, lr, seed, 128)

    def draw(n: int) -> torch.Tensor:  # sample_sigmas(n) has n + 1 levels: n model calls
        sigmas = schedule.sample_sigmas(n)
        *_, x = sd.samples(ema, sigmas, gam=2, batchsize=noise.shape[0], xt=noise * sigmas[0])
        return x.detach()

    return train_s, draw


def run_diffmath(data, steps, seed, noise):
    """diffmath's DDIM model: v-prediction on the continuous cosine schedule, DDIM on a quadratic grid."""
    torch.manual_seed(seed)
    sched = dm.VPCosine()
    model = MLP(2, hidden=64, depth=2, t_max=sched.t_max, prediction="v")
    t0 = time.process_time()
    state = fit(
        model, data, sched, steps, batch_size=data.shape[0], lr=LR, ema_decay=EMA_DECAY, seed=seed, progress=False
    )
    train_s = time.process_time() - t0

    def draw(n: int) -> torch.Tensor:  # DDIM: n steps = n NFE
        with torch.no_grad():
            return dm.sample(state.ema, noise, sched.grid(n, "quadratic"), sched, eta=0.0)

    return train_s, draw


def run_diffmath_pfgm(data, steps, seed, n_samples, noise_seed):
    """Poisson flow with the toy recipe's objective settings on the MLP, schedule and loop of :func:`run_diffmath`."""
    torch.manual_seed(seed)
    recipe = TOY_RECIPES["swiss-roll-pfgm"]
    sched = dm.VPCosine()
    model = MLP(2, hidden=64, depth=2, t_max=sched.t_max, prediction=recipe["prediction"])
    loss = objective(recipe["objective"], sched, **recipe["objective_kwargs"])
    t0 = time.process_time()
    state = fit(
        model,
        data,
        None,
        steps,
        batch_size=data.shape[0],
        lr=LR,
        ema_decay=EMA_DECAY,
        seed=seed,
        progress=False,
        loss=loss,
    )
    train_s = time.process_time() - t0
    clip = recipe["objective_kwargs"].get("max_radius")

    def draw(n: int) -> torch.Tensor:  # DPM-Solver++(2M): n steps = n NFE
        g = torch.Generator().manual_seed(noise_seed)
        grid = pfgm_grid(sched, n, z_max=40.0)
        return pfgm_sample(state.ema, n_samples, 2, grid, sched, "dpm++2m", generator=g, max_radius=clip)

    return train_s, draw


def _sd(v: np.ndarray) -> float:
    return float(v.std(ddof=1)) if len(v) > 1 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--steps", type=int, default=15000, help="optimiser steps for every model (the example's epochs)"
    )
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--seeds", type=int, default=5, help="training seeds 0..seeds-1 (and their sampling noise)")
    parser.add_argument("--peer-lrs", type=float, nargs="+", default=[1e-3, 3e-3], help="smalldiffusion's candidates")
    args = parser.parse_args()
    torch.set_num_threads(1)
    assert all(nfe("dpm++2m", n) == n for n in NFES)
    data = swissroll_curve(100)
    fresh = swissroll_curve(args.samples)

    def measure(train_s, draw):
        t0 = time.process_time()
        draw(20)
        sample_s = time.process_time() - t0
        return train_s, sample_s, {n: sliced_w1(draw(n), fresh, 512, torch.Generator().manual_seed(123)) for n in NFES}

    runs: dict[str, list[tuple[float, float, dict]]] = {}  # label -> per seed (train s, sample s, sliced W1 per NFE)
    t_start = time.perf_counter()
    for seed in range(args.seeds):
        noise = torch.randn(args.samples, 2, generator=torch.Generator().manual_seed(seed + 7))
        for lr in args.peer_lrs:
            runs.setdefault(f"smalldiffusion (lr {lr:g})", []).append(
                measure(*run_smalldiffusion(data, args.steps, lr, seed, noise))
            )
        runs.setdefault("diffmath DDIM", []).append(measure(*run_diffmath(data, args.steps, seed, noise)))
        runs.setdefault("diffmath PFGM", []).append(
            measure(*run_diffmath_pfgm(data, args.steps, seed, args.samples, seed + 7))
        )
        print(f"seed {seed} done ({time.perf_counter() - t_start:.0f} s wall)", flush=True)
    peers = [k for k in runs if k.startswith("smalldiffusion")]
    best_peer = min(peers, key=lambda k: np.mean([r[2][20] for r in runs[k]]))
    stats = {}
    for k, rs in runs.items():
        tt, ts = np.array([r[0] for r in rs]), np.array([r[1] for r in rs])
        sw = {n: np.array([r[2][n] for r in rs]) for n in NFES}
        stats[k] = ((tt.mean(), _sd(tt)), ts.mean(), {n: (v.mean(), _sd(v)) for n, v in sw.items()})
    floor = sliced_w1(data, fresh, 512, torch.Generator().manual_seed(123))
    print(
        f"\nswiss roll (smalldiffusion example: 100 points), {args.steps} steps of batch 100, one thread, every loop "
        f"with cosine decay and EMA {EMA_DECAY}; mean +- SD over {args.seeds} seeds; CPU seconds; sliced W1 of "
        f"{args.samples} samples to the curve (training set itself: {floor:.4f})"
    )
    head = "".join(f"{'NFE ' + str(n):>18}" for n in NFES)
    print(f"{'model':<28}{'train s':>16}{'sample s':>10}{head}")
    for k, ((tt, tt_sd), ts, sw) in stats.items():
        mark = " *" if k == best_peer else ""
        line = f"{k + mark:<28}{tt:>8.1f} +- {tt_sd:<4.1f}{ts:>10.3f}"
        print(line + "".join(f"{sw[n][0]:>10.4f} +- {sw[n][1]:.4f}" for n in NFES))
    print("(* smalldiffusion's better learning rate by its mean 20-NFE score; the ratios below use it)")
    ref = stats[best_peer]
    print(
        f"\n{'ratio of the means':<28}{'train s':>16}{'sample s':>10}" + "".join(f"{'NFE ' + str(n):>18}" for n in NFES)
    )
    for k in ("diffmath DDIM", "diffmath PFGM"):
        (tt, _), ts, sw = stats[k]
        line = f"{k + ' / smalldiff.':<28}{tt / ref[0][0]:>16.2f}{ts / ref[1]:>10.2f}"
        print(line + "".join(f"{sw[n][0] / ref[2][n][0]:>18.2f}" for n in NFES))
    best = {n: min(stats[k][2][n][0] for k in ("diffmath DDIM", "diffmath PFGM")) for n in NFES}
    print(f"{'best diffmath / smalldiff.':<28}{'':>26}" + "".join(f"{best[n] / ref[2][n][0]:>18.2f}" for n in NFES))
    pf, dd = stats["diffmath PFGM"], stats["diffmath DDIM"]
    print(
        f"{'PFGM / DDIM':<28}{pf[0][0] / dd[0][0]:>16.2f}{'':>10}"
        + "".join(f"{pf[2][n][0] / dd[2][n][0]:>18.2f}" for n in NFES)
    )
    print("(targets: diffmath / smalldiffusion train s <= 0.5 and sliced W1 <= 1.0)")


if __name__ == "__main__":
    main()
