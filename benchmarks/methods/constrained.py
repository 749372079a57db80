"""Constrained composition (lesson 24) in 2-D: exact optima against the weights other rules pick.

Problems: the unequal-variance pair N((1,0), 0.025 I), N((-1,0), 0.5 I) and the three-model case (means (1,0), (-1,0),
(0,1.5), variances 0.025, 0.5, 0.1), on VP-linear. Rows:

- "equal weights": lambda = 1/m;
- "exact dual": projected ascent on grid-exact KLs (solve_and), deterministic;
- "dual-only (paper)": the training-free loop on the weighted score sum with point-wise KL estimates (dual_only_and);
- "primal-dual": Algorithm 24.1, an MLP trained by DSM on exact draws of the product each round (and_primal_dual).

Columns: the multipliers, the true (grid) KL of q_lambda to each model, the largest of them (what AND minimises), and
seconds. Stochastic rows are mean +- standard error over the seeds (start noise, KL noise, network initialisation).

Run: ``python benchmarks/methods/constrained.py [--seeds 5] [--skip-primal]``. Not a test: it prints the tables.
"""

from __future__ import annotations

import argparse
import time

import torch

from diffmath import VPLinear
from diffmath.compare import format_table
from diffmath.exact.mixtures import GaussianMixture
from diffmath.guide import constrained as C
from diffmath.nets.mlp import MLP

D = torch.float64
PROBLEMS = {
    "pair": (([1.0, 0.0], 0.025), ([-1.0, 0.0], 0.5)),
    "three": (([1.0, 0.0], 0.025), ([-1.0, 0.0], 0.5), ([0.0, 1.5], 0.1)),
}


def mixtures(spec):
    return [GaussianMixture(torch.ones(1, dtype=D), torch.tensor([m], dtype=D), v * torch.eye(2, dtype=D)[None])
            for m, v in spec]  # fmt: skip


def row(lam, log_q, grid, seconds):
    kls = C.and_product(log_q, grid, lam)[1]
    out = {f"lambda_{i + 1}": float(v) for i, v in enumerate(lam)}
    out.update({f"KL_{i + 1}": float(v) for i, v in enumerate(kls)})
    out["max KL"] = float(kls.max())
    out["seconds"] = seconds
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--skip-primal", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    sch, grid = VPLinear(), C.Grid2D(-4.0, 4.0, 200)
    for name, spec in PROBLEMS.items():
        mixes = mixtures(spec)
        models = [m.model(sch, "eps") for m in mixes]
        log_q = torch.stack([m.log_prob(grid.points) for m in mixes])
        m = len(mixes)
        table: dict[str, dict[str, list[float]]] = {}

        def add(label, values, table=table):
            for k, v in values.items():
                table.setdefault(label, {}).setdefault(k, []).append(v)

        t0 = time.perf_counter()
        exact = C.solve_and(log_q, grid, iters=600)
        exact_s = time.perf_counter() - t0
        for seed in range(args.seeds):
            add("equal weights", row(torch.full((m,), 1.0 / m, dtype=D), log_q, grid, 0.0))
            add("exact dual", row(exact.lam, log_q, grid, exact_s))
            t0 = time.perf_counter()
            run = C.dual_only_and(
                models, sch, lambda i, seed=seed: torch.randn(256, 2, generator=torch.Generator().manual_seed(1000 * seed + i),
                                                              dtype=D),
                sch.grid(30), step=0.2, iters=25, num_times=15, generator=torch.Generator().manual_seed(seed),
            )  # fmt: skip
            add("dual-only (paper)", row(run.averaged, log_q, grid, time.perf_counter() - t0))
            if not args.skip_primal:
                torch.manual_seed(seed)
                net = MLP(2, hidden=64, depth=3, prediction="eps").to(D)
                t0 = time.perf_counter()
                res = C.and_primal_dual(mixes, sch, net, grid, rounds=8, steps=400, seed=seed)
                add("primal-dual (Alg. 24.1)", row(res.ascent.averaged, log_q, grid, time.perf_counter() - t0))
        print(
            f"\n## AND, {name}: exact u* = {exact.values.max():.3f} at lambda* = {[round(v, 4) for v in exact.lam.tolist()]}\n"
        )
        print(format_table(table, digits=3))


if __name__ == "__main__":
    main()
