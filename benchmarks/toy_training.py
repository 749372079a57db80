"""Toy training benchmark: diffmath vs smalldiffusion on smalldiffusion's own swiss-roll example, in one process.

Both libraries train on the same data tensor for the same number of optimiser steps with the same batch size, then
draw the same number of samples with 20 network evaluations (smalldiffusion: its example's accelerated sampler,
gam = 2; diffmath: DDIM on a quadratic grid of the continuous cosine schedule, with a v-predicting MLP of width 64,
two residual blocks, fused Adam and a plain tensor loop instead of DataLoader + accelerate); we report train and sample seconds, the sliced W1
distance to a dense copy of the curve, and the ratios diffmath / smalldiffusion.

A second table adds Poisson flow (lesson 13): diffmath's PFGM recipe settings (the Cauchy path on the same cosine
schedule, v-prediction, the same MLP, steps and batch; ``PoissonLoss`` with the recipe's objective settings) sampled
from the far-field prior at z_max = 40 with DPM-Solver++ on a log-z grid, next to diffmath's DDIM and
smalldiffusion's sampler, as sliced W1 at 5, 10, 20 and 50 network evaluations (NFE) with training seconds and the
ratios PFGM / DDIM and PFGM / smalldiffusion.

smalldiffusion 0.5.0 imports torchvision at import time (for image transforms this benchmark does not use) and
torchvision has no CPU build here, so a stub module stands in for it; install the peer with
``pip install --no-deps smalldiffusion==0.5.0 accelerate einops`` (``make bench`` does this).

Run: ``python benchmarks/toy_training.py [--steps 15000] [--seed 0]``. Not a test: it prints a table.
"""

from __future__ import annotations

import argparse
import time

import torch
from swissroll_task import import_smalldiffusion, swissroll_curve

import diffmath as dm
from diffmath.metrics import sliced_w1
from diffmath.nets.mlp import MLP
from diffmath.ode import nfe
from diffmath.pfgm import pfgm_sample
from diffmath.recipes import TOY_RECIPES, objective
from diffmath.train.training import fit

NFES = (5, 10, 20, 50)


def run_smalldiffusion(
    data: torch.Tensor, steps: int, n_samples: int, seed: int, nfes: tuple[int, ...] = ()
) -> tuple[float, float, torch.Tensor, dict[int, torch.Tensor]]:
    sd = import_smalldiffusion()
    from torch.utils.data import DataLoader

    torch.manual_seed(seed)
    loader = DataLoader(data, batch_size=2048)  # the example's loader: the whole 100-point set per step
    model = sd.TimeInputMLP(hidden_dims=(16, 128, 128, 128, 128, 16))
    schedule = sd.ScheduleLogLinear(N=200, sigma_min=0.005, sigma_max=10)
    t0 = time.perf_counter()
    for _ in sd.training_loop(loader, model, schedule, epochs=steps, lr=1e-3):
        pass
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    *_, x0 = sd.samples(model, schedule.sample_sigmas(20), gam=2, batchsize=n_samples)
    t_sample = time.perf_counter() - t0
    more = {}
    for k in nfes:  # sample_sigmas(k) has k + 1 levels: k model calls
        torch.manual_seed(seed)
        *_, xk = sd.samples(model, schedule.sample_sigmas(k), gam=2, batchsize=n_samples)
        more[k] = xk.detach()
    return t_train, t_sample, x0.detach(), more


def run_diffmath(
    data: torch.Tensor, steps: int, n_samples: int, seed: int, nfes: tuple[int, ...] = ()
) -> tuple[float, float, torch.Tensor, dict[int, torch.Tensor]]:
    torch.manual_seed(seed)
    sched = dm.VPCosine()  # continuous cosine schedule, v-prediction: the eps loss weighted by (1 + SNR)
    model = MLP(2, hidden=64, depth=2, t_max=sched.t_max, prediction="v")
    t0 = time.perf_counter()
    state = fit(
        model, data, sched, steps, batch_size=data.shape[0], lr=3e-3, ema_decay=0.995, seed=seed, progress=False
    )
    t_train = time.perf_counter() - t0

    def ddim(k: int) -> torch.Tensor:
        with torch.no_grad():
            x_T = torch.randn(n_samples, 2, generator=torch.Generator().manual_seed(seed))
            return dm.sample(state.ema, x_T, sched.grid(k, "quadratic"), sched, eta=0.0)  # DDIM, k steps = k NFE

    t0 = time.perf_counter()
    x0 = ddim(20)
    return t_train, time.perf_counter() - t0, x0, {k: ddim(k) for k in nfes}


def run_diffmath_pfgm(
    data: torch.Tensor, steps: int, n_samples: int, seed: int, nfes: tuple[int, ...] = NFES
) -> tuple[float, dict[int, torch.Tensor]]:
    """Poisson flow with the toy recipe's objective settings on the MLP, schedule and loop of :func:`run_diffmath`."""
    torch.manual_seed(seed)
    recipe = TOY_RECIPES["swiss-roll-pfgm"]
    sched = dm.VPCosine()
    model = MLP(2, hidden=64, depth=2, t_max=sched.t_max, prediction=recipe["prediction"])
    loss = objective(recipe["objective"], sched, **recipe["objective_kwargs"])
    t0 = time.perf_counter()
    state = fit(
        model,
        data,
        None,
        steps,
        batch_size=data.shape[0],
        lr=3e-3,
        ema_decay=0.995,
        seed=seed,
        progress=False,
        loss=loss,
    )
    t_train = time.perf_counter() - t0
    clip = recipe["objective_kwargs"].get("max_radius")
    out = {}
    for k in nfes:  # DPM-Solver++(2M): k steps = k NFE
        g = torch.Generator().manual_seed(seed)
        out[k] = pfgm_sample(state.ema, n_samples, 2, sched, k, "dpm++2m", 40.0, generator=g, max_radius=clip)
    return t_train, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=15000, help="optimiser steps for both (the example's epochs)")
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = swissroll_curve(100)
    fresh = swissroll_curve(args.samples)
    rows = {
        "smalldiffusion": run_smalldiffusion(data, args.steps, args.samples, args.seed, NFES),
        "diffmath": run_diffmath(data, args.steps, args.samples, args.seed, NFES),
    }
    pf_train, pf_samples = run_diffmath_pfgm(data, args.steps, args.samples, args.seed)
    g = torch.Generator().manual_seed(123)
    score = lambda x: sliced_w1(x, fresh, num_projections=512, generator=g.manual_seed(123))  # noqa: E731
    sw = {k: score(v[2]) for k, v in rows.items()}
    print(f"swiss roll (smalldiffusion example: 100 points), {args.steps} steps of batch 100, 20 NFE sampling")
    print(f"{'library':<16}{'train s':>10}{'sample s':>10}{'sliced W1':>12}")
    for k, (tt, ts, _, _) in rows.items():
        print(f"{k:<16}{tt:>10.2f}{ts:>10.3f}{sw[k]:>12.4f}")
    (tt_d, ts_d, _, _), (tt_s, ts_s, _, _) = rows["diffmath"], rows["smalldiffusion"]
    print(
        f"{'ratio d/s':<16}{tt_d / tt_s:>10.2f}{ts_d / ts_s:>10.2f}{sw['diffmath'] / sw['smalldiffusion']:>12.2f}"
        "   (target: wall time <= 0.5, sliced W1 <= 1.0)"
    )
    table = {
        "smalldiffusion": {k: score(x) for k, x in rows["smalldiffusion"][3].items()},
        "diffmath DDIM": {k: score(x) for k, x in rows["diffmath"][3].items()},
        "diffmath PFGM": {k: score(x) for k, x in pf_samples.items()},
    }
    assert all(nfe("dpm++2m", k) == k for k in NFES)
    print("\nsliced W1 vs NFE (train s: wall time, one thread)")
    print(f"{'model':<20}{'train s':>9}" + "".join(f"{f'NFE {k}':>10}" for k in NFES))
    train_s = {"smalldiffusion": tt_s, "diffmath DDIM": tt_d, "diffmath PFGM": pf_train}
    for name, row in table.items():
        print(f"{name:<20}{train_s[name]:>9.1f}" + "".join(f"{row[k]:>10.4f}" for k in NFES))
    for name, ref in (("PFGM / DDIM", "diffmath DDIM"), ("PFGM / smalldiff.", "smalldiffusion")):
        ratios = "".join(f"{table['diffmath PFGM'][k] / table[ref][k]:>10.2f}" for k in NFES)
        print(f"{name:<20}{pf_train / train_s[ref]:>9.2f}" + ratios)


if __name__ == "__main__":
    main()
