"""The data floor of the toy sample-quality scores: sliced W1 between independent draws of the data itself.

A sampler's sliced W1 to fresh data (lesson 0, eq. 0.21) cannot go below the distance between two independent data
sets of the same sizes: that floor is what a perfect sampler scores, and it has a spread of its own. For each toy and
each pair of sizes (n samples against m fresh points, the settings of lessons 13 and 17: 4000 against 4000, and the
2000 training points of lesson 13's exact field against 4000), each of the independent draws k takes two data sets
(seeds 1000 + k and 2000 + k) and the projections of seed k, as the tests do. Prints mean +- SD over the draws.

Run: ``python benchmarks/toy_floors.py [--draws 10] [--toys eight-gaussians swiss-roll]`` (about 10 s on one thread).
"""

from __future__ import annotations

import argparse
import statistics as st

import torch

import toydata as td
from diffmath.metrics import sliced_w1

SIZES = ((4000, 4000), (2000, 4000))


def floor(toy: str, n: int, m: int, draws: int) -> list[float]:
    """Sliced W1 of ``draws`` independent pairs of data sets of sizes ``n`` and ``m``."""
    out = []
    for k in range(draws):
        a = td.sample(toy, n, torch.Generator().manual_seed(1000 + k))
        b = td.sample(toy, m, torch.Generator().manual_seed(2000 + k))
        out.append(sliced_w1(a, b, generator=torch.Generator().manual_seed(k)))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--draws", type=int, default=10)
    p.add_argument("--toys", nargs="*", default=["eight-gaussians", "swiss-roll"])
    args = p.parse_args()
    torch.set_num_threads(1)
    print(f"data vs data, sliced W1 (256 projections), {args.draws} independent draws")
    print("toy               n     m     mean     SD       min      max")
    for toy in args.toys:
        for n, m in SIZES:
            v = floor(toy, n, m, args.draws)
            print(f"{toy:16s} {n:5d} {m:5d}   {st.mean(v):.4f}   {st.stdev(v):.4f}   {min(v):.4f}   {max(v):.4f}")


if __name__ == "__main__":
    main()
