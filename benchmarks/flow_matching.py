"""Flow-matching benchmark: diffmath's rectified flow, OT-CFM and reflow against torchcfm and smalldiffusion, in one process.

The task is smalldiffusion's swiss-roll example, as in ``benchmarks/toy_training.py``: its 100-point training set,
the whole set as the batch of every step. Every model is an MLP of width 64 trained with Adam for the same number of
steps. Each is scored by the sliced W1 distance of 5000 samples to a dense copy of the curve, at 1, 2, 4 and 20
network evaluations (NFE), with its training seconds. Train seconds are the process's CPU time
(``time.process_time``, one thread): the same as wall time on an idle machine, and far steadier on a shared one.

- torchcfm ``ConditionalFlowMatcher`` (sigma = 0: rectified flow) and ``ExactOptimalTransportConditionalFlowMatcher``
  (POT's exact minibatch OT) on torchcfm's own ``MLP(w=64)``. They are trained with the README's loop and sampled by
  Euler from their noise at s = 0 to data at s = 1 (their time is our 1 - t).
- smalldiffusion: DDPM (``ScheduleLogLinear``, eps-prediction) on its ``TimeInputMLP`` with width-64 layers, sampled
  by its example's accelerated sampler (gam = 2) on ``sample_sigmas(n)``.
- diffmath: 1-RF (``FlowMatchingLoss``), OT-CFM (``coupling="ot"``, scipy's ``linear_sum_assignment``), and 2-RF,
  one reflow of the OT-CFM model on its own ODE pairs (its train time includes the OT-CFM time and the pairs). All
  use ``MLP(2, 64, depth=1, "velocity")`` (four linear layers, as torchcfm's) in lesson 3's loop (fused Adam, cosine decay, EMA) and Euler sampling
  (``sample_flow``).

Every loop gets the same niceties as diffmath's: cosine learning-rate decay to 0 and an EMA of the weights (0.995)
that samples (the peers' own loops are wrapped: torchcfm's in its README form, smalldiffusion's through the optimiser
its loop yields). Each peer runs at the better of learning rates 1e-3 (its examples' value) and 3e-3 (diffmath's),
chosen by its mean 20-NFE sliced W1 over the seeds. Every number is a mean +- SD over 5 training seeds (each with its
own sampling noise); the table then gives the ratios of diffmath's best mean to the best peer's at each NFE.

torchcfm and smalldiffusion are installed without touching torch:
``PIP_CONSTRAINT=.venv/constraints.txt pip install --no-deps torchcfm pot smalldiffusion accelerate einops``. A stub
stands in for torchvision, which smalldiffusion imports for image transforms only.

Run: ``python benchmarks/flow_matching.py [--steps 3000] [--seeds 5]``. Not a test: it prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import math
import time

import numpy as np
import torch
from swissroll_task import import_smalldiffusion, swissroll_curve

import diffmath as dm
from diffmath.flows import FlowMatchingLoss, reflow_pairs, sample_flow
from diffmath.metrics import sliced_w1
from diffmath.nets.mlp import MLP
from diffmath.train.training import fit

NFES = (1, 2, 4, 20)


EMA_DECAY = 0.995


def cosine_decay(opt: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The learning-rate decay of diffmath's loop (lesson 3), for the peers' loops: from lr to 0 over ``steps``."""
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * min(k, steps) / steps)))


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module) -> None:
    """The weight average of diffmath's loop (lesson 20, eq. 20.8), for the peers' loops."""
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p, 1 - EMA_DECAY)


def run_torchcfm(data, steps, lr, seed, exact_ot, noise):
    from torchcfm.conditional_flow_matching import (
        ConditionalFlowMatcher,
        ExactOptimalTransportConditionalFlowMatcher,
    )
    from torchcfm.models.models import MLP as CFMMLP

    torch.manual_seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (torchcfm draws its OT pairs from the legacy global numpy state)
    matcher = ExactOptimalTransportConditionalFlowMatcher(sigma=0.0) if exact_ot else ConditionalFlowMatcher(sigma=0.0)
    model = CFMMLP(dim=2, w=64, time_varying=True)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = cosine_decay(opt, steps)
    ema = copy.deepcopy(model).requires_grad_(False)
    t0 = time.process_time()
    for _ in range(steps):
        opt.zero_grad()
        x0 = torch.randn_like(data)  # torchcfm's source: noise at its s = 0
        s, xs, us = matcher.sample_location_and_conditional_flow(x0, data)
        loss = ((model(torch.cat([xs, s[:, None]], 1)) - us) ** 2).mean()
        loss.backward()
        opt.step()
        sched.step()
        ema_update(ema, model)
    train_s = time.process_time() - t0
    model = ema
    out = {}
    with torch.no_grad():
        for n in NFES:
            x = noise.clone()
            for k in range(n):  # Euler from s = 0 (noise) to s = 1 (data)
                s = torch.full((x.shape[0], 1), k / n)
                x = x + model(torch.cat([x, s], 1)) / n
            out[n] = x
    return train_s, out


def train_smalldiffusion(data, steps, lr, seed, width):
    """smalldiffusion's example loop, wrapped with diffmath's cosine decay and EMA: (EMA model, schedule, CPU s)."""
    sd = import_smalldiffusion()
    from torch.utils.data import DataLoader

    torch.manual_seed(seed)
    loader = DataLoader(data, batch_size=2048)  # the example's loader: the whole 100-point set per step
    model = sd.TimeInputMLP(hidden_dims=(16, width, width, width, width, 16))
    schedule = sd.ScheduleLogLinear(N=200, sigma_min=0.005, sigma_max=10)
    ema = copy.deepcopy(model).requires_grad_(False)
    t0 = time.process_time()
    with contextlib.redirect_stderr(io.StringIO()):  # its training loop draws a progress bar
        for k, ns in enumerate(sd.training_loop(loader, model, schedule, epochs=steps, lr=lr)):
            # it yields before its optimiser step: set this step's cosine rate, average the previous step's weights
            for group in ns.optimizer.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * k / steps))
            if k > 0:
                ema_update(ema, model)
    ema_update(ema, model)  # the last step's weights
    return ema, schedule, time.process_time() - t0


def run_smalldiffusion(data, steps, lr, seed, noise):
    sd = import_smalldiffusion()
    model, schedule, train_s = train_smalldiffusion(data, steps, lr, seed, 64)
    out = {}
    for n in NFES:
        sigmas = schedule.sample_sigmas(n)
        *_, x = sd.samples(model, sigmas, gam=2, batchsize=noise.shape[0], xt=noise * sigmas[0])
        out[n] = x.detach()
    return train_s, out


def run_diffmath(data, steps, seed, noise, reflow_steps, num_pairs):
    path = dm.LinearPath()
    rows = {}
    models = {}
    for name, coupling in (("diffmath 1-RF", "independent"), ("diffmath OT-CFM", "ot")):
        torch.manual_seed(seed)
        model = MLP(2, hidden=64, depth=1, prediction="velocity")
        t0 = time.process_time()
        state = fit(
            model,
            data,
            None,
            steps,
            batch_size=data.shape[0],
            lr=3e-3,
            ema_decay=EMA_DECAY,
            seed=seed,
            progress=False,
            loss=FlowMatchingLoss(path, coupling),
        )
        rows[name] = (time.process_time() - t0, {n: sample_flow(state.ema, noise, path.grid(n), path) for n in NFES})
        models[name] = state.ema
    base = "diffmath OT-CFM"
    t0 = time.process_time()
    z1 = torch.randn(num_pairs, 2, generator=torch.Generator().manual_seed(seed + 1))
    pairs = reflow_pairs(models[base], z1, path, num_steps=50, method="heun")
    student = copy.deepcopy(models[base]).requires_grad_(True)
    state = fit(
        student,
        pairs,
        None,
        reflow_steps,
        batch_size=data.shape[0],
        lr=1e-3,
        ema_decay=0.995,
        seed=seed + 1,
        progress=False,
        loss=FlowMatchingLoss(path, paired=True),
    )
    extra = time.process_time() - t0
    rows["diffmath 2-RF"] = (
        rows[base][0] + extra,
        {n: sample_flow(state.ema, noise, path.grid(n), path) for n in NFES},
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000, help="optimiser steps for every model")
    parser.add_argument("--reflow-steps", type=int, default=1000, help="extra steps of the 2-RF")
    parser.add_argument("--pairs", type=int, default=5000, help="ODE pairs for the reflow")
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--seeds", type=int, default=5, help="training seeds 0..seeds-1 (and their sampling noise)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = swissroll_curve(100)
    fresh = swissroll_curve(args.samples)

    def score(out):
        return {n: sliced_w1(x, fresh, 512, torch.Generator().manual_seed(123)) for n, x in out.items()}

    runs: dict[str, list[tuple[float, dict]]] = {}  # label -> per seed (train s, sliced W1 per NFE)
    for seed in range(args.seeds):
        noise = torch.randn(args.samples, 2, generator=torch.Generator().manual_seed(seed + 7))
        for label, runner in (
            ("torchcfm CFM", lambda lr, sd=seed, z=noise: run_torchcfm(data, args.steps, lr, sd, False, z)),
            ("torchcfm exact OT-CFM", lambda lr, sd=seed, z=noise: run_torchcfm(data, args.steps, lr, sd, True, z)),
            ("smalldiffusion DDPM", lambda lr, sd=seed, z=noise: run_smalldiffusion(data, args.steps, lr, sd, z)),
        ):
            for lr in (1e-3, 3e-3):
                tt, out = runner(lr)
                runs.setdefault(f"{label} (lr {lr:g})", []).append((tt, score(out)))
        for k, (tt, out) in run_diffmath(data, args.steps, seed, noise, args.reflow_steps, args.pairs).items():
            runs.setdefault(k, []).append((tt, score(out)))
        print(f"seed {seed} done", flush=True)
    # each peer at its better learning rate, by the mean 20-NFE score over the seeds
    rows = {}
    for label in ("torchcfm CFM", "torchcfm exact OT-CFM", "smalldiffusion DDPM"):
        cands = [k for k in runs if k.startswith(label + " (")]
        rows[min(cands, key=lambda k: np.mean([r[1][20] for r in runs[k]]))] = None
    rows.update({k: None for k in runs if k.startswith("diffmath")})
    stats = {}
    for k in rows:
        tt = np.array([r[0] for r in runs[k]])
        sw = {n: np.array([r[1][n] for r in runs[k]]) for n in NFES}
        stats[k] = (tt.mean(), {n: (v.mean(), v.std(ddof=1) if len(v) > 1 else 0.0) for n, v in sw.items()})
    floor = sliced_w1(data, fresh, 512, torch.Generator().manual_seed(123))
    print(
        f"\nswiss roll (smalldiffusion's 100 points), {args.steps} steps of batch 100, MLP width 64, one thread, every "
        f"loop with cosine decay and EMA {EMA_DECAY}; mean +- SD over {args.seeds} seeds; train CPU seconds (mean); "
        f"sliced W1 to the curve (training set itself: {floor:.4f})"
    )
    head = "".join(f"{'NFE ' + str(n):>18}" for n in NFES)
    print(f"{'model':<32}{'train s':>9}{head}")
    for k, (tt, sw) in stats.items():
        print(f"{k:<32}{tt:>9.2f}" + "".join(f"{sw[n][0]:>10.4f} +- {sw[n][1]:.4f}" for n in NFES))
    peers = [k for k in stats if not k.startswith("diffmath")]
    ours = [k for k in stats if k.startswith("diffmath")]
    line = f"{'best diffmath / best peer':<32}{'':>9}"
    for n in NFES:
        line += f"{min(stats[k][1][n][0] for k in ours) / min(stats[k][1][n][0] for k in peers):>18.2f}"
    print(line + "   (ratio of the means; target <= 1 at every NFE)")
    one = min(stats[k][1][1][0] for k in peers)
    print(f"2-RF one step / best peer one step: {stats['diffmath 2-RF'][1][1][0] / one:.3f} (target < 1)")
    for k in ours:
        faster = [
            p for p in peers if stats[k][0] <= stats[p][0] and all(stats[k][1][n][0] <= stats[p][1][n][0] for n in NFES)
        ]
        print(f"{k}: at least as good at every NFE (means) in no more time than: {', '.join(faster) or 'none'}")


if __name__ == "__main__":
    main()
