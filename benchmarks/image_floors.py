"""Every committed image model against its real-vs-real floor, over independent draws (lesson 20, sec. 20.6).

For each model, ``recipes.image_fidelity`` takes 5 draws: two real sets A_k, B_k of n images (generated data: fresh
held-out seeds of the recipe's own law; digits: random subsets of the 359 held-out and the 1438 training images) and
n samples from noise seed k with the recipe's sampler; the floor is d(A_k, B_k), the model's score d(S_k, A_k), in the
features of the data set's judge (the attribute classifier of lesson 20). Frechet distance (biased upwards by O(F/n):
compare only at equal n) and the unbiased kernel distance beside it. Prints mean +- SD over the draws and the ratio of
the means.

Run: ``python benchmarks/image_floors.py [--n 256] [--draws 5] [--only NAME ...]``. Not a test; the test that holds
the attribute models to their factors is tests/test_20_attribute_models.py.
"""

from __future__ import annotations

import argparse
import statistics as st
import time

import torch

from diffmath import recipes, sample
from diffmath.pfgm import pfgm_grid, pfgm_sample


def samplers():
    def ddpm50(model, noise, cond, k, schedule):
        grid = schedule.grid(50, t_start=0.995)
        return sample(model, noise, grid, schedule, 1.0, cond, generator=torch.Generator().manual_seed(1000 + k))

    def pfgm20(model, noise, cond, k, schedule):
        radius = recipes.image_recipe("digits-pfgm")["objective_kwargs"]["max_radius"]  # the training clip
        gen = torch.Generator().manual_seed(1000 + k)
        grid = pfgm_grid(schedule, 20, z_max=40.0)
        return pfgm_sample(
            model, noise.shape[0], tuple(noise.shape[1:]), grid, schedule, generator=gen, max_radius=radius
        )

    return {
        "digits-ddpm": ("DDPM, 50 steps from t = 0.995", ddpm50),
        "digits-pfgm": ("PFGM, DPM-Solver++(2M) 20", pfgm20),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--draws", type=int, default=5)
    p.add_argument("--only", nargs="*")
    args = p.parse_args()
    torch.set_num_threads(1)
    special = samplers()
    judges = {}
    rows = []
    for name in recipes.IMAGE_RECIPES:
        if args.only and name not in args.only:
            continue
        t0 = time.perf_counter()
        im = recipes.train_image(name, progress=False)
        if im.path.parent != recipes.COMMITTED:
            continue
        c = im.config
        key = (c["dataset"], c["size"])
        if key not in judges:
            judges[key] = recipes.train_attribute_classifier(c["dataset"], c["size"], progress=False)
        label, fn = special.get(name, (None, None))
        method = "euler" if c["objective"] == "flow-matching" else "dpm++2m"
        label = label or f"{'Euler' if method == 'euler' else 'DPM-Solver++(2M)'}, 20 steps"
        sampler = None if fn is None else (lambda m, x, cond, k, fn=fn, s=im.schedule: fn(m, x, cond, k, s))
        r = recipes.image_fidelity(im, judges[key], n=args.n, draws=args.draws, method=method, sampler=sampler)
        rows.append((name, label, r, time.perf_counter() - t0))
        print(f"{name:22s} done in {rows[-1][3]:.0f} s", flush=True)

    print(f"\nn = {args.n}, {args.draws} draws (mean +- SD over the draws)")
    head = f"{'model':22s} {'sampler':32s} {'floor FD':>14s} {'model FD':>14s} {'ratio':>6s} {'floor KID':>14s} {'model KID':>14s}"
    print(head)
    for name, label, r, _ in rows:
        cells = [f"{st.mean(r[k]):.2f} +- {st.stdev(r[k]):.2f}" for k in ("floor", "model", "kid_floor", "kid_model")]
        ratio = st.mean(r["model"]) / st.mean(r["floor"])
        print(f"{name:22s} {label:32s} {cells[0]:>14s} {cells[1]:>14s} {ratio:6.2f} {cells[2]:>14s} {cells[3]:>14s}")


if __name__ == "__main__":
    main()
