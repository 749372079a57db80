"""AMDM (lesson 21) against simpler compositions, on the exact two-attribute mixture and on the attribute shapes.

Table 1, exact: ``toydata.two_attributes(d)`` (modes at (+-1, +-1), sd 0.3, the mode a = b = + of prior weight 0.05,
d - 2 texture coordinates), model 1 = p(x | a = +), model 2 = p(x | b = +), both exact; DDIM with 50 steps on the
su-linear table (1000 steps), n samples per seed from noise seed k (copy 2's own start from seed k + 1000). Columns:
joint success (a = b = + on a mode), off-mode rate (> 4 sd from every mode), texture variance (the data's is 1;
50-step DDIM alone gives ~0.93, its own discretisation error).

Table 2, images: the committed 24 px models, all trained on the correlated set (2% of triangles red): model 1 =
attr-shape-quadrant given (triangle, quadrant q), model 2 = attr-colour given red, u = attr-uncond, and attr-joint
given (triangle, red, q) as a reference; a red triangle in quadrant q (q cycling over the four) is asked for, judged
by the independent attribute classifier of lesson 20 (per attribute and jointly), with the kernel distance (unbiased,
in the judge's features) to 256 real red triangles of an independent held-out draw, next to its floor (64 other real
red triangles). DDIM with 20 steps on the cosine VP schedule. The negative control: model 2 replaced by
attr-colour-linear (the same colour model trained on VP-linear), called at the noise level that matches (sigma) or
at the same time number (index).

Run: ``python benchmarks/methods/amdm.py [--seeds 5] [--n 1000] [--d 1024] [--images 64] [--skip-images]``.
Not a test: it prints the tables (mean +- standard error over the seeds).
"""

from __future__ import annotations

import argparse
import time

import torch

import toydata as td
from diffmath import recipes, su_linear
from diffmath.compare import decision_curve, format_table, mean_se, method_table, sample_method
from diffmath.guide.compose import Conditioned
from diffmath.guide.multi import RELEASED
from diffmath.metrics import attribute_accuracy, kernel_distance

TOY_ROWS = {
    "model 1 alone": ("model 1", {}),
    "oracle p(x | a, b)": ("oracle", {}),
    "eps-average (w 1/2)": ("eps-average", {}),
    "eps-composition": ("eps-composition", {}),
    "amdm slerp s=10": ("amdm", {"window": 10}),
    "amdm slerp s=20": ("amdm", {"window": 20}),
    "amdm slerp s=35": ("amdm", {"window": 35}),
    "amdm slerp s=50": ("amdm", {"window": 50}),
    "amdm slerp s=20 indep": ("amdm", {"window": 20, "independent": True}),
    "amdm lerp s=20 indep": ("amdm", {"window": 20, "merge": "lerp", "independent": True}),
    "amdm lerp s=50 indep": ("amdm", {"window": 50, "merge": "lerp", "independent": True}),
    "amdm slerp s=20 eta=0.3": ("amdm", {"window": 20, "eta": 0.3}),
    "amdm slerp s=20 eta_rel=0.5": ("amdm", {"window": 20, "eta": 0.5, "relative": True}),
    "released (steps 1-3) indep": ("amdm", {**RELEASED, "independent": True}),
}


def toy_table(seeds: int, n: int, d: int, separation: float) -> None:
    ta = td.two_attributes(d, separation=separation)
    sch = su_linear(1000)
    grid = sch.grid(50)
    parts = {"1": ta.a.model(sch), "2": ta.b.model(sch), "u": ta.joint.model(sch), "oracle": ta.target.model(sch)}

    def starts(seed):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, d, generator=g, dtype=torch.float64)
        g.manual_seed(seed + 1000)
        return x, torch.randn(n, d, generator=g, dtype=torch.float64)

    t0 = time.time()
    table = method_table(TOY_ROWS, parts, ta.judge, starts, grid, sch, seeds=list(range(seeds)))
    print(f"\nTable 1: exact two-attribute mixture, d = {d}, modes at +-{separation:g}, n = {n}, 50 DDIM steps")
    print(format_table(table, ["joint", "off_mode", "texture_var"]))
    print(f"({time.time() - t0:.0f} s)")

    # the early-steps claim: when does x0-hat show the final attributes?
    x, _ = starts(0)
    signs = lambda y: torch.stack([y[:, 0] > 0, y[:, 1] > 0], 1)  # noqa: E731
    print("\nDecision curve (fraction of samples whose x0-hat already has the final signs of coordinates 0 and 1):")
    print("step       " + "".join(f"{k:>6}" for k in (0, 5, 10, 15, 20, 30, 40, 49)))
    for label, method, kw in (("model 1", "model 1", {}), ("amdm s=20", "amdm", {"window": 20})):
        out, x0s = sample_method(method, parts, x, grid, sch, record=True, **kw)
        curve = decision_curve(x0s, out, signs)
        print(f"{label:<11}" + "".join(f"{curve[k]:6.2f}" for k in (0, 5, 10, 15, 20, 30, 40, 49)))


def image_table(seeds: int, n: int) -> None:
    names = td.ATTRIBUTES["attribute-shapes"]
    tri, red = names["shape"].index("triangle"), names["colour"].index("red")
    A, B, U, J = (recipes.train_image(k, progress=False) for k in ("attr-shape-quadrant", "attr-colour", "attr-uncond",
                                                                   "attr-joint"))  # fmt: skip
    Bl = recipes.train_image("attr-colour-linear", progress=False)
    judge = recipes.train_attribute_classifier("attribute-shapes", 24, progress=False)
    q = torch.arange(n) % 4
    joint_cond = torch.full((n, 6), -1, dtype=torch.long)  # shape, colour, size, quadrant, texture, background
    joint_cond[:, 0], joint_cond[:, 1], joint_cond[:, 3] = tri, red, q
    parts = {
        "1": Conditioned(A.model, torch.stack([torch.full((n,), tri), q], 1)),
        "2": Conditioned(B.model, torch.full((n, 1), red)),
        "u": U.model,
        "oracle": Conditioned(J.model, joint_cond),
    }
    sch = A.schedule
    grid = sch.grid(20)
    # quality: kernel distance to real red triangles (any quadrant, size, texture) of an independent held-out draw
    pool = td.held_out("attribute-shapes", 8000, 24, 1)
    keep = (pool.labels["shape"] == tri) & (pool.labels["colour"] == red)
    reds = pool.images[keep]
    real, spare = reds[:256], reds[256:]
    asked = {"shape": torch.full((n,), tri), "colour": torch.full((n,), red), "quadrant": q}

    def score(x):
        x = x.clamp(-1, 1)
        acc = attribute_accuracy(judge, x, asked, joint=True)
        return {**acc, "kid": kernel_distance(judge, x, real)}

    floor = [kernel_distance(judge, spare[k * n : (k + 1) * n], real) for k in range(min(seeds, len(spare) // n))]

    def starts(seed):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, 3, 24, 24, generator=g)
        g.manual_seed(seed + 1000)
        return x, torch.randn(n, 3, 24, 24, generator=g)

    rows = {
        "model 1 (shape, quadrant)": ("model 1", {}),
        "model 2 (colour)": ("model 2", {}),
        "attr-joint (all three)": ("oracle", {}),
        "eps-average": ("eps-average", {}),
        "eps-composition": ("eps-composition", {}),
        "amdm slerp s=5": ("amdm", {"window": 5}),
        "amdm slerp s=10": ("amdm", {"window": 10}),
        "amdm slerp s=15": ("amdm", {"window": 15}),
        "amdm slerp s=20": ("amdm", {"window": 20}),
        "amdm slerp s=10 indep": ("amdm", {"window": 10, "independent": True}),
        "amdm lerp s=10 indep": ("amdm", {"window": 10, "merge": "lerp", "independent": True}),
        "released (1-3) indep": ("amdm", {**RELEASED, "independent": True}),
    }
    t0 = time.time()
    with torch.no_grad():
        table = method_table(rows, parts, score, starts, grid, sch, seeds=list(range(seeds)))
        # the negative control: model 2 on another schedule
        neg = {
            "amdm s=10, 2 on VP-linear, sigma": ("amdm", {"window": 10, "schedules": [sch, Bl.schedule]}),
            "amdm s=10, 2 on VP-linear, index": (
                "amdm",
                {"window": 10, "schedules": [sch, Bl.schedule], "align": "index"},
            ),
        }
        neg_parts = {**parts, "2": Conditioned(Bl.model, torch.full((n, 1), red))}
        table.update(method_table(neg, neg_parts, score, starts, grid, sch, seeds=list(range(seeds))))
    print(f"\nTable 2: a red triangle in quadrant q asked of the 24 px models, n = {n} per seed, 20 DDIM steps")
    print(format_table(table, ["shape", "colour", "quadrant", "joint", "kid"]))
    mu, se = mean_se(floor)
    print(f"kid of {n} real red triangles (the floor, {len(floor)} draws): {mu:.3f} +- {se:.3f}")
    print(f"({time.time() - t0:.0f} s)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--d", type=int, default=1024)
    p.add_argument("--separation", type=float, default=1.0)
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--skip-images", action="store_true")
    p.add_argument("--skip-toy", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if not args.skip_toy:
        toy_table(args.seeds, args.n, args.d, args.separation)
    if not args.skip_images:
        image_table(args.seeds, args.images)


if __name__ == "__main__":
    main()
