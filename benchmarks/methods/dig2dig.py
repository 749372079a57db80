"""Dig2DIG (lesson 23) against fixed weights, the oracle, classical fusion and the plain average, on tasks with truth.

Tasks (toydata.fusion, lesson 23, sec. 23.5): multi-focus, multi-exposure and pseudo infrared/visible, each clean and
with noisy sources (sd 0.1, where a gain can reward noise). Priors:

- exact: the stationary Gaussian fitted to 2000 procedural scenes (32 px), whose denoiser is a Wiener filter;
- unet: the trained attr-uncond UNet of lesson 20 (24 px attribute shapes), on tasks built from held-out images.

Every fusion runs through the one sampler loop (DDIM, eta = 0, on the quadratic grid from t = 1) with the EM
rectification of eq. 23.6 (rho = 0.1) unless the row says otherwise; only the weights change between the rows:

- "unguided": the prior's own samples (rho = 0); "average", "classical" (local variance for multi-focus and
  infrared/visible, Mertens for multi-exposure): no diffusion at all;
- "fixed-N": w = 1/K on N steps (DDFM's weights; fixed-100 is DDFM's budget);
- "DIG-N S tau": Dig2DIG on N steps, refreshed every S steps, softmax temperature tau, per pixel unless "global";
- "oracle": the task's ideal masks as weights.

A last table per prior puts noise on source 2 alone (multi-focus): the gains can reward noise, and "mean w2" (source
2's weight averaged over pixels and steps) shows whether they do.

Columns: PSNR and SSIM against the truth x*, PSNR inside each source's oracle region, the bound's alignment term
sum_k Cov(w_k, B_k) averaged over the steps (eq. 23.13; 0 for fixed weights), model calls and seconds per image;
then the no-reference fusion metrics of the paper (EN, SD, SF, AG, EI, MI, CC, Qabf) for the same rows. Every
entry is mean +- standard error over the seeds (each seed: new images, new degradations, new noise).

Run: ``python benchmarks/methods/dig2dig.py [--seeds 5] [--n 16] [--skip-exact] [--skip-unet] [--tasks ...]``.
Not a test: it prints the tables.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

import toydata as td
from diffmath import fusion, get_schedule, recipes
from diffmath.compare import format_table
from diffmath.exact.stationary import StationaryGaussian
from diffmath.guide import dig
from diffmath.metrics import psnr, ssim

ROWS = {
    "unguided": {"weights": "fixed", "scale": 0.0},
    "fixed-25": {"weights": "fixed"},
    "fixed-100": {"weights": "fixed", "steps": 100},
    "DIG-25 S1": {"interval": 1},
    "DIG-25 S10": {"interval": 10},
    "DIG-25 S20": {"interval": 20},
    "DIG-25 S10 tau 1": {"interval": 10, "temperature": 1.0},
    "DIG-25 S10 tau 0.1": {"interval": 10, "temperature": 0.1},
    "DIG-25 S10 global": {"interval": 10, "spatial": False},
    "DIG-50 S10": {"interval": 10, "steps": 50},
    "DIG-25 S10 x0-step": {"interval": 10, "guidance": "x0", "scale": 0.5},
    "DIG-25 S10 DPS": {"interval": 10, "guidance": "dps", "scale": 1000.0},  # zeta: best of 1-1e4 on seed 99
    "oracle-25": {"weights": "oracle"},
}
NO_DIFFUSION = ("average", "classical")


def classical(task):
    if task.name == "multi-exposure":
        return fusion.mertens_fusion(task.sources)
    return fusion.local_variance_fusion(task.sources)


def region_psnr(out, task, k):
    """PSNR over the pixels where the oracle picks source k, averaged over the images that have such pixels."""
    return fusion.region_psnr(out, task.target, task.oracle[k]).nanmean().item()


def run_row(label, kw, model, sch, task, seed):
    t0 = time.perf_counter()
    if label == "average":
        out, calls, cov, w2 = fusion.average_fusion(task.sources), 0, float("nan"), 0.5
    elif label == "classical":
        out, calls, cov = classical(task), 0, float("nan")
        w2 = fusion.local_variance_weights(task.sources)[1].mean().item() if task.name != "multi-exposure" else math.nan
    else:
        kw = dict(kw)
        steps = kw.pop("steps", 25)
        if kw.get("weights") == "oracle":
            kw["weights"] = task.oracle
        grid = sch.grid(steps, "quadratic")
        res = dig.fuse(model, task.sources, grid, sch, generator=torch.Generator().manual_seed(seed), record=True, **kw)
        out, calls = res.image, res.model_calls
        covs = [
            dig.alignment_covariance(w, task.sources, x0, task.target).mean().item()
            for w, x0 in zip(res.weights.steps, res.x0s, strict=True)
        ]
        cov = sum(covs) / len(covs)
        w2 = sum(w[1].mean().item() for w in res.weights.steps) / len(res.weights.steps)
    seconds = (time.perf_counter() - t0) / task.target.shape[0]
    out = out.clamp(-1, 1)
    row = {
        "PSNR": psnr(out, task.target).mean().item(),
        "SSIM": ssim(out, task.target).mean().item(),
        "PSNR region 1": region_psnr(out, task, 0),
        "PSNR region 2": region_psnr(out, task, 1),
        "Cov(w,B) x1e3": 1e3 * cov,
        "mean w2": w2,
        "calls/img": calls,
        "ms/img": 1e3 * seconds,
    }
    scores = fusion.fusion_scores(out, task.sources)
    return row, {k: v.mean().item() for k, v in scores.items()}


def table(title, model, sch, make_task, seeds, rows):
    main, ref = {}, {}
    for seed in seeds:
        task = make_task(seed)
        for label in rows:
            a, b = run_row(label, ROWS.get(label, {}), model, sch, task, seed)
            for name, v in a.items():
                main.setdefault(label, {}).setdefault(name, []).append(v)
            for name, v in b.items():
                ref.setdefault(label, {}).setdefault(name, []).append(v)
    print(f"\n## {title}\n")
    print(format_table(main, digits=2))
    print()
    print(format_table(ref, digits=2))
    return main


def exact_prior():
    sch = get_schedule("vp-cosine")
    scenes = td.scenes(2000, 32, torch.Generator().manual_seed(10_000), dtype=torch.float64)
    return StationaryGaussian.fit(scenes, sch, prediction="x0"), sch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--n", type=int, default=16, help="images per seed")
    p.add_argument("--tasks", default=",".join(td.FUSION_TASKS))
    p.add_argument("--noise", default="0,0.1", help="source noise levels")
    p.add_argument("--one-noisy", default="0.1,0.2", help="noise levels on source 2 alone (multi-focus)")
    p.add_argument("--skip-exact", action="store_true")
    p.add_argument("--skip-unet", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    seeds = list(range(args.seeds))
    rows = [*NO_DIFFUSION, *ROWS]
    priors = []
    if not args.skip_exact:
        priors.append(("exact Gaussian prior, scenes 32 px", *exact_prior(), "scenes", 32, torch.float64))
    if not args.skip_unet:
        base = recipes.train_image("attr-uncond", progress=False)
        for q in base.model.parameters():
            q.requires_grad_(False)
        priors.append(("attr-uncond UNet, attribute shapes 24 px", base.model, base.schedule, "attribute-shapes", 24,
                       torch.float32))  # fmt: skip
    for title, model, sch, data, size, dtype in priors:
        for name in args.tasks.split(","):
            for noise in (float(v) for v in args.noise.split(",")):

                def make_task(seed, name=name, noise=noise, data=data, size=size, dtype=dtype):
                    g = torch.Generator().manual_seed(1000 + seed)
                    return td.fusion_task(name, args.n, size, g, data=data, noise=noise, dtype=dtype)

                table(f"{title}: {name}, source noise {noise:g}", model, sch, make_task, seeds, rows)
        for sd in (float(v) for v in args.one_noisy.split(",") if v):

            def one_noisy(seed, sd=sd, data=data, size=size, dtype=dtype):
                g = torch.Generator().manual_seed(1000 + seed)
                task = td.fusion_task("multi-focus", args.n, size, g, data=data, dtype=dtype)
                noisy = (task.sources[1] + sd * torch.randn(task.sources[1].shape, generator=g).to(dtype)).clamp(-1, 1)
                return task._replace(sources=torch.stack([task.sources[0], noisy]))

            table(f"{title}: multi-focus, noise sd {sd:g} on source 2 only", model, sch, one_noisy, seeds, rows)


if __name__ == "__main__":
    main()
