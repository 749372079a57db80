r"""The ablation of lesson 13, sec. 13.7: what closed PFGM's gap to DDPM on the 2-D toys, with its spread over seeds.

Each row is a variant of the toy recipe ``eight-gaussians-pfgm`` (on the swiss roll: ``swiss-roll-pfgm``) trained by
:func:`~diffmath.recipes.train_toy` with the recipe's network and budget (MLP 64 wide, depth 3, 3000 steps of batch
512 on the recipe's 20000 training points, lr 3e-3, EMA 0.995) and only its ``objective_kwargs`` changed (the
``PoissonLoss`` target, ``z_range`` and ``max_radius``: eqs. 13.15, 13.18, 13.19). Each is sampled by
:func:`~diffmath.pfgm.pfgm_sample` from the far-field prior at z_max = 40 (clipped at the row's training radius) with
DPM-Solver++(2M) on the log-z grid of :func:`~diffmath.pfgm.pfgm_grid` at 10, 20 and 50 NFE. Two reference rows:
the exact field (:class:`~diffmath.pfgm.PoissonField`) of 2000 training points, sampled the same way with the
recipe's clip, and the DDPM recipe (``eight-gaussians-ddpm`` / ``swiss-roll-ddpm``) with DPM-Solver++ on its
uniform grid from Gaussian noise.

Seed k (k = 0 .. seeds - 1) trains every network with recipe seed k (its initialisation and every training draw;
the training data are the recipe's, data seed 0; seed 0 is the recipe itself), draws the prior or noise with seed
1000 + k, scores against 4000 fresh data points of seed 2000 + k with the projections of seed k, and gives the exact
field the training points 2000 k .. 2000 k + 1999. Score: sliced W1 (256 projections) of 4000 samples to the fresh
data; on the ring also the worst |mode weight - 1/8| at 20 NFE. Prints mean +- SD over the seeds (SD of one
seed's score, not the SE of the mean) and the data floor (4000 fresh points against 4000 others, same seeds).
Trained networks are cached by recipe (``$DIFFMATH_CACHE``), so a second run only samples.

Run: ``python benchmarks/pfgm_ablation.py [--seeds 5] [--toys eight-gaussians swiss-roll]`` (both toys, 5 seeds:
44 min wall on one thread of a loaded 2-core machine, most of it training). Not a test: it prints a table.
"""

from __future__ import annotations

import argparse
import statistics as st
import time

import torch

import toydata as td
from diffmath.metrics import mode_weights, sliced_w1
from diffmath.ode import ode_sample
from diffmath.pfgm import PoissonField, pfgm_grid, pfgm_sample
from diffmath.recipes import toy_recipe, train_toy

NFES = (10, 20, 50)  # DPM-Solver++(2M): n steps = n NFE
Z_MAX, N_SAMPLES = 40.0, 4000
RECIPE = {"target": "batch", "z_range": [0.002, 40.0], "max_radius": 5.0}
VARIANTS = {  # row label -> objective_kwargs of PoissonLoss (None: t uniform on the cosine schedule)
    "unbiased target, t uniform, clip 20 (old recipe)": {"target": "unbiased", "max_radius": 20.0},
    "+ minibatch target (13.15)": {"target": "batch", "max_radius": 20.0},
    "+ z log-uniform on [0.002, 40] (13.18)": {"target": "batch", "z_range": [0.002, 40.0], "max_radius": 20.0},
    "same, z log-uniform on [0.01, 40]": {"target": "batch", "z_range": [0.01, 40.0], "max_radius": 20.0},
    "+ clip 10 (13.19)": {"target": "batch", "z_range": [0.002, 40.0], "max_radius": 10.0},
    "+ clip 5 (13.19): the recipe": RECIPE,
    "clip 5 and (13.18) with the unbiased target": {**RECIPE, "target": "unbiased"},
}
SWISS_ROLL_ROWS = (
    "unbiased target, t uniform, clip 20 (old recipe)",
    "+ clip 10 (13.19)",
    "+ clip 5 (13.19): the recipe",
)
EXACT, DDPM, FLOOR = "exact field of 2000 training points", "DDPM recipe (DPM-Solver++, uniform grid)", "data floor"


def scores(x_of_nfe, toy: str, k: int) -> dict:
    """Sliced W1 at each NFE (and the ring's worst mode-weight error at 20 NFE) of one seed's samples."""
    fresh = td.sample(toy, N_SAMPLES, torch.Generator().manual_seed(2000 + k))
    out = {}
    for n in NFES:
        x = x_of_nfe(n)
        out[n] = sliced_w1(x, fresh, generator=torch.Generator().manual_seed(k))
        if n == 20 and toy == "eight-gaussians":
            out["modes"] = (mode_weights(td.eight_gaussians_mixture(), x) - 0.125).abs().max().item()
    return out


def pfgm_draws(model, schedule, clip: float, k: int):
    def draw(n: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(1000 + k)
        grid = pfgm_grid(schedule, n, z_max=Z_MAX)
        return pfgm_sample(model, N_SAMPLES, 2, grid, schedule, "dpm++2m", generator=g, max_radius=clip)

    return draw


def seed_row(toy: str, label: str, k: int, folder, steps: int) -> dict:
    """One row's scores for seed ``k``."""
    if label == FLOOR:
        data = td.sample(toy, N_SAMPLES, torch.Generator().manual_seed(1000 + k))
        return scores(lambda n: data, toy, k)
    if label == DDPM:
        dd = train_toy(toy_recipe(f"{toy}-ddpm", seed=k, steps=steps), progress=False, folder=folder)
        x_T = torch.randn(N_SAMPLES, 2, generator=torch.Generator().manual_seed(1000 + k))
        return scores(lambda n: ode_sample(dd.model, x_T, dd.schedule.grid(n), dd.schedule, "dpm++2m"), toy, k)
    if label == EXACT:
        pf = train_toy(
            toy_recipe(f"{toy}-pfgm", steps=steps), progress=False, folder=folder
        )  # the recipe's data and schedule
        field = PoissonField(pf.data[2000 * k : 2000 * (k + 1)])
        draw = pfgm_draws(field.model(pf.schedule, "x0"), pf.schedule, RECIPE["max_radius"], k)
        return scores(draw, toy, k)
    kwargs = VARIANTS[label]
    tm = train_toy(
        toy_recipe(f"{toy}-pfgm", seed=k, steps=steps, objective_kwargs=kwargs), progress=False, folder=folder
    )
    return scores(pfgm_draws(tm.model, tm.schedule, kwargs["max_radius"], k), toy, k)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--toys", nargs="*", default=["eight-gaussians", "swiss-roll"])
    p.add_argument("--steps", type=int, default=3000, help="training steps (the recipes': 3000)")
    p.add_argument("--folder", default=None, help="cache folder of the trained networks (default: the recipes' cache)")
    args = p.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    for toy in args.toys:
        labels = list(VARIANTS) if toy == "eight-gaussians" else list(SWISS_ROLL_ROWS)
        labels += [EXACT, DDPM, FLOOR]
        runs = {label: [] for label in labels}
        for k in range(args.seeds):
            for label in labels:
                runs[label].append(seed_row(toy, label, k, args.folder, args.steps))
            print(f"{toy}: seed {k} done ({time.perf_counter() - start:.0f} s)", flush=True)
        cols = [*NFES, "modes"] if toy == "eight-gaussians" else list(NFES)
        head = " | ".join(f"NFE {c}" if c != "modes" else "worst mode weight error (NFE 20)" for c in cols)
        print(f"\n{toy}: sliced W1 of {N_SAMPLES} samples to fresh data, mean +- SD over {args.seeds} seeds")
        print(f"| variant | {head} |\n|---|" + "---|" * len(cols))
        for label, rs in runs.items():
            cells = []
            for c in cols:
                v = [r[c] for r in rs]
                sd = st.stdev(v) if len(v) > 1 else 0.0
                cells.append(f"{st.mean(v):.3f} +- {sd:.3f}")
            print(f"| {label} | " + " | ".join(cells) + " |")
    print(f"\n{time.perf_counter() - start:.0f} s wall in all")


if __name__ == "__main__":
    main()
