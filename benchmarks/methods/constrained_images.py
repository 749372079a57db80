"""Constrained composition (lesson 24) on images: AND of three attribute models, equal weights against the paper's
training-free dual-only multipliers.

The parts are the committed one-group models, each asked for its share of one request: ``attr-shape-quadrant``
(triangle, quadrant cycling over the batch), ``attr-colour`` (red) and ``attr-size-texture`` (large, striped).
Red triangles are rare in their training set (2% of triangles), so the AND must put together what no part saw
often. Rows:

- each part alone, and ``attr-joint`` (one network given the whole request: the oracle-like baseline);
- "AND, equal weights": the weighted score sum (``Combine`` in eps units) with lambda = 1/3;
- "AND, dual-only (paper)": ``dual_only_and`` (lesson 24, eq. 24.8): ``--iters`` projected steps on the simplex from
  point-wise KL estimates (``--times`` quadrature points) between the sum and each part, then the averaged lambda.

Every row samples ``--n`` images by DDIM with 20 steps from t = 0.98 (the sum is taken in eps units, which cannot
start at a = 0). Columns: lambda, the judge's success on each requested attribute and on all five at once
(``attribute_accuracy``), and the kernel distance (KID, eq. 20.10) to held-out images of the training law, next to the
real-vs-real floor at the same n. Mean +- standard error over ``--seeds`` seeds (start noise; for dual-only also the
KL noise).

Run: ``python benchmarks/methods/constrained_images.py [--seeds 5] [--n 64] [--iters 6] [--times 10]``. Not a test:
it prints a table.
"""

from __future__ import annotations

import argparse
import statistics as st
import time

import torch

import toydata as td
from diffmath import recipes
from diffmath.guide import constrained as C
from diffmath.guide.compose import Combine, Conditioned
from diffmath.metrics import attribute_accuracy, kernel_distance
from diffmath.sampling.samplers import sample

ASK = {"shape": "triangle", "colour": "red", "size": "large", "texture": "striped"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--iters", type=int, default=6, help="dual steps of the dual-only AND")
    parser.add_argument("--times", type=int, default=10, help="quadrature points of each point-wise KL")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n = args.n
    names = td.ATTRIBUTES["attribute-shapes"]
    ask = {k: names[k].index(v) for k, v in ASK.items()}
    A, B, Cm, J = (
        recipes.train_image(k, progress=False)
        for k in ("attr-shape-quadrant", "attr-colour", "attr-size-texture", "attr-joint")
    )
    judge = recipes.train_attribute_classifier("attribute-shapes", 24, progress=False)
    sched = A.schedule
    grid = sched.grid(20, t_start=0.98)
    q = torch.arange(n) % 4
    full = lambda v: torch.full((n,), v)  # noqa: E731
    parts = [
        Conditioned(A.model, torch.stack([full(ask["shape"]), q], 1)),
        Conditioned(B.model, full(ask["colour"])[:, None]),
        Conditioned(Cm.model, torch.stack([full(ask["size"]), full(ask["texture"])], 1)),
    ]
    joint = torch.full((n, 6), -1, dtype=torch.long)  # shape, colour, size, quadrant, texture, background
    joint[:, 0], joint[:, 1], joint[:, 2], joint[:, 3], joint[:, 4] = (
        ask["shape"],
        ask["colour"],
        ask["size"],
        q,
        ask["texture"],
    )
    asked = {**{k: full(v) for k, v in ask.items()}, "quadrant": q}
    real = td.held_out("attribute-shapes", 512, 24, 3, correlate=recipes.RARE).images
    spare = td.held_out("attribute-shapes", n * args.seeds, 24, 4, correlate=recipes.RARE).images
    floor = [kernel_distance(judge, spare[k * n : (k + 1) * n], real) for k in range(args.seeds)]

    def start(seed: int) -> torch.Tensor:
        return torch.randn(n, 3, 24, 24, generator=torch.Generator().manual_seed(seed))

    def score(x: torch.Tensor) -> dict[str, float]:
        x = x.clamp(-1, 1)
        return {**attribute_accuracy(judge, x, asked, joint=True), "kid": kernel_distance(judge, x, real)}

    def and_model(lam: list[float]) -> Combine:
        return Combine(parts, lam, "eps", sched)

    rows: dict[str, list[dict[str, float]]] = {}
    lams: dict[str, list[list[float]]] = {}
    t0 = time.time()
    for seed in range(args.seeds):
        x_T = start(seed)
        with torch.no_grad():
            singles = {
                "attr-shape-quadrant alone": parts[0],
                "attr-colour alone": parts[1],
                "attr-size-texture alone": parts[2],
                "attr-joint (whole request)": Conditioned(J.model, joint),
            }
            for name, m in singles.items():
                rows.setdefault(name, []).append(score(sample(m, x_T, grid, sched)))
            rows.setdefault("AND, equal weights", []).append(score(sample(and_model([1 / 3] * 3), x_T, grid, sched)))
            lams.setdefault("AND, equal weights", []).append([1 / 3] * 3)
        ascent = C.dual_only_and(
            parts,
            sched,
            lambda i, seed=seed: start(1000 * (seed + 1) + i),
            grid,
            iters=args.iters,
            num_times=args.times,
            generator=torch.Generator().manual_seed(seed),
        )
        lam = ascent.averaged.tolist()
        with torch.no_grad():
            rows.setdefault("AND, dual-only (paper)", []).append(score(sample(and_model(lam), x_T, grid, sched)))
        lams.setdefault("AND, dual-only (paper)", []).append(lam)
        print(f"seed {seed} done ({time.time() - t0:.0f} s); dual-only lambda {[round(v, 3) for v in lam]}", flush=True)

    def ms(values: list[float]) -> str:
        se = st.stdev(values) / len(values) ** 0.5 if len(values) > 1 else float("nan")
        return f"{st.mean(values):.3f} +- {se:.3f}"

    cols = ["shape", "colour", "size", "texture", "quadrant", "joint", "kid"]
    print(
        f"\nAND of three attribute models on 24 px attribute shapes: {ASK} with the quadrant cycling; n = {n}, "
        f"{args.seeds} seeds, DDIM 20 steps from t = 0.98; KID floor (real vs real, n = {n}): {ms(floor)}"
    )
    print("| row | lambda | " + " | ".join(cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for name, results in rows.items():
        lam = lams.get(name)
        lam_s = "" if lam is None else ", ".join(ms([v[i] for v in lam]) for i in range(3))
        print(f"| {name} | {lam_s} | " + " | ".join(ms([r[c] for r in results]) for c in cols) + " |")
    print(f"({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
