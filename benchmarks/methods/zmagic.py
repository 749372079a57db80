"""Z-Magic (lesson 22) against the vanilla sum of gradients, on the exact 8-mode ring and on the attribute shapes.

Table 1, exact: the 8-mode ring of lesson 0 (radius 2, sd 0.15) on VP-linear, the exact model and the exact
time-dependent likelihoods p(c | x_t): c1 = "one of modes 0-3", c2 = "one of modes 3-6", so only mode 3 has both.
DDPM (eta = 1) on 100 steps, n samples per seed (start and step noise from seed k); rows: no guidance, the vanilla
sum, Z-Magic in both orders, the look-ahead without the Jacobian, Algorithm 22.2 (both ordered pairs, CAGrad c = 0.5),
the vanilla sum at 1.5 times the scale (CAGrad's direction is up to 1 + c times longer than the mean: the control
for length), and the oracle (the exact gradient of log p(c1, c2 | x_t)), at several guidance scales. Columns: joint accuracy (on
mode 3 within 4 sd), off-mode rate, TV to the true conditional (here 1 - joint), seconds per run.

Table 2: the same at large steps (10 and 20 DDPM steps, scales 3 and 10), where the look-ahead's linearisation is
poor: Z-Magic's losses are reported as plainly as its wins.

Table 3, images: attr-uncond (24 px, trained on the correlated set where 2% of triangles are red) guided by energies
on its denoised guess x0_hat from the guidance classifier (trained on attr-uncond's denoised guesses, not the judge);
requests of 2 attributes (a red triangle: a rare pair) and 3 (a red triangle in quadrant q, q cycling). Judged by the
independent classifier of lesson 20, per attribute and jointly, with the kernel distance to real images of the
request (and its floor), the per-step cosine between the attributes' gradients (the paper's Fig. 1: ~0 for vanilla in
high dimension), seconds and peak resident memory per step, and a compute-matched vanilla (as many more steps as
Z-Magic's time per step allows). DDIM on the cosine VP schedule from t = 0.99.

Run: ``python benchmarks/methods/zmagic.py [--seeds 5] [--n 4000] [--images 32] [--skip-toy] [--skip-images]``.
Not a test: it prints the tables (mean +- standard error over the seeds).
"""

from __future__ import annotations

import argparse
import time

import torch

import toydata as td
from diffmath import VPLinear, recipes, sample
from diffmath.compare import format_table, mean_se, mode_metrics
from diffmath.guide.zmagic import ExactAttribute, MultiGuided, TweedieEnergy, classifier_energy
from diffmath.metrics import attribute_accuracy, kernel_distance


def ring_rows(mix, sch, h):
    a1, a2 = ExactAttribute(mix, sch, [0, 1, 2, 3]), ExactAttribute(mix, sch, [3, 4, 5, 6])
    joint = ExactAttribute(mix, sch, [3])
    model = mix.model(sch, "eps")
    return model, {
        "none": lambda s: MultiGuided(model, sch, [], "none"),
        "vanilla sum": lambda s: MultiGuided(model, sch, [a1, a2], "vanilla", s),
        "z-magic c1 -> c2": lambda s: MultiGuided(model, sch, [a1, a2], "zmagic", s, lookahead=h),
        "z-magic c2 -> c1": lambda s: MultiGuided(model, sch, [a2, a1], "zmagic", s, lookahead=h),
        "look-ahead, no J": lambda s: MultiGuided(model, sch, [a1, a2], "lookahead", s, lookahead=h),
        "pairs + CAGrad 0.5": lambda s: MultiGuided(model, sch, [a1, a2], "pairs", s, lookahead=h, c=0.5),
        # CAGrad lengthens the step by up to 1 + c: the vanilla sum at that larger scale is the fair control
        "vanilla sum x 1.5": lambda s: MultiGuided(model, sch, [a1, a2], "vanilla", 1.5 * s),
        "oracle": lambda s: MultiGuided(model, sch, [joint], "vanilla", s),
    }


def ring_table(seeds, n, steps, scales, rows=None):
    torch.set_num_threads(1)
    mix, sch = td.eight_gaussians_mixture(), VPLinear()
    grid = sch.grid(steps)
    _, makers = ring_rows(mix, sch, float(grid[0] - grid[1]))
    for scale in scales:
        table = {}
        for name, make in makers.items():
            if rows is not None and name not in rows:
                continue
            cols = {"joint": [], "off-mode": [], "TV": [], "s/run": []}
            for k in range(seeds):
                gen = torch.Generator().manual_seed(k)
                x = torch.randn(n, 2, dtype=torch.float64, generator=gen)
                t0 = time.perf_counter()
                s = sample(make(scale), x, grid, sch, 1.0, generator=gen)
                cols["s/run"].append(time.perf_counter() - t0)
                for key, v in mode_metrics(mix, s, [3]).items():
                    cols[key].append(v)
            table[name] = cols
        print(f"\n## ring, DDPM {steps} steps, scale {scale}, n = {n} per seed")
        print(format_table(table))


def _reset_peak() -> None:
    """Reset the process's peak resident set (Linux >= 4.0; best-effort), read back by :func:`_vm_hwm`."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _vm_hwm() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
    return float("nan")


def image_table(seeds, n, steps, weights, requests=("2", "3"), extra_steps=0):
    from toydata.images import ATTRIBUTES, held_out

    torch.set_num_threads(1)
    base = recipes.train_image("attr-uncond", progress=False)
    judge = recipes.train_attribute_classifier("attribute-shapes", 24, progress=False)
    guide = recipes.train_attribute_classifier("attribute-shapes", 24, progress=False, denoised_by="attr-uncond")
    for p in list(judge.parameters()) + list(guide.parameters()) + list(base.model.parameters()):
        p.requires_grad_(False)
    sch, names = base.schedule, ATTRIBUTES["attribute-shapes"]
    tri, red = names["shape"].index("triangle"), names["colour"].index("red")
    grid = sch.grid(steps, t_start=0.99)
    h = float(grid[0] - grid[1])
    real = held_out("attribute-shapes", 4000, 24, 7)
    pick = (real.labels["shape"] == tri) & (real.labels["colour"] == red)
    ref = real.images[pick]
    half = ref.shape[0] // 2
    floor = kernel_distance(judge, ref[:half], ref[half:])
    print(
        f"\nreal red triangles in the held-out draw: {ref.shape[0]}; kernel-distance floor (half vs half) {floor:.2f}"
    )

    def energy(attr, value):
        return TweedieEnergy(classifier_energy(guide, attr, value), weights[attr])

    for request in requests:
        quads = torch.arange(n) % 4
        attrs = [energy("shape", tri), energy("colour", red)]
        want = {"shape": torch.full((n,), tri), "colour": torch.full((n,), red)}
        if request == "3":
            attrs.append(energy("quadrant", quads))
            want["quadrant"] = quads
        pairs = "pairs" if request == "3" else "zmagic"
        rows = {
            "none": (MultiGuided(base.model, sch, [], "none"), steps),
            "vanilla sum": (MultiGuided(base.model, sch, attrs, "vanilla", 1.0, diagnostics=True), steps),
            f"z-magic ({pairs})": (
                MultiGuided(base.model, sch, attrs, pairs, 1.0, lookahead=h, diagnostics=True),
                steps,
            ),
        }
        if extra_steps and request == "2":  # is it the rule or the number of steps?
            rows[f"z-magic, {extra_steps} steps"] = (
                MultiGuided(base.model, sch, attrs, "zmagic", 1.0, lookahead=0.99 / extra_steps, diagnostics=True),
                extra_steps,
            )
        table, extra = {}, {}

        def run_row(name, g, k_steps, want=want, table=table, extra=extra):  # one rule over the seeds, judged
            cols = {a: [] for a in want} | {"joint": [], "KID": [], "s/step": [], "MiB": []}
            for k in range(seeds):
                x = torch.randn(n, 3, 24, 24, generator=torch.Generator().manual_seed(k))
                g.trace = []
                _reset_peak()
                t0 = time.perf_counter()
                s = sample(g, x, sch.grid(k_steps, t_start=0.99), sch, 0.0).clamp(-1, 1)
                cols["s/step"].append((time.perf_counter() - t0) / k_steps)
                cols["MiB"].append(_vm_hwm())
                acc = attribute_accuracy(judge, s, want, joint=True)
                for a in [*want, "joint"]:
                    cols[a].append(acc[a])
                cols["KID"].append(kernel_distance(judge, s, ref))
                if g.trace:
                    extra.setdefault(name, []).append(sum(r.get("cos", 0.0) for r in g.trace) / len(g.trace))
                    if "cos_term" in g.trace[0]:
                        extra.setdefault(name + ": cos(g1, J^T g2)", []).append(
                            sum(r["cos_term"] for r in g.trace) / len(g.trace)
                        )
            table[name] = cols
            return mean_se(cols["s/step"])[0]

        for name, (g, k_steps) in rows.items():
            per_step = run_row(name, g, k_steps)
            if name == "vanilla sum":
                vanilla_time = per_step
            if name.startswith("z-magic") and k_steps == steps:
                ratio = per_step / vanilla_time
        matched = max(steps + 1, round(steps * ratio))
        run_row(f"vanilla, {matched} steps (compute-matched)", MultiGuided(base.model, sch, attrs, "vanilla"), matched)
        print(f"\n## images, {request} attributes, DDIM {steps} steps, energy weights {weights}, n = {n} per seed")
        print(format_table(table))
        for name, v in extra.items():
            mu, se = mean_se(v)
            print(f"mean per-step cosine  {name:<40} {mu:+.3f} +- {se:.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--n", type=int, default=4000)
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--image-steps", type=int, default=20)
    p.add_argument("--weights", default="100,30,30", help="energy weights of shape, colour, quadrant")
    p.add_argument("--requests", default="2,3", help="which image requests: 2 and/or 3 attributes")
    p.add_argument("--extra-steps", type=int, default=0, help="also run Z-Magic on this many steps (2 attributes)")
    p.add_argument("--skip-toy", action="store_true")
    p.add_argument("--skip-images", action="store_true")
    args = p.parse_args()
    t0 = time.perf_counter()
    if not args.skip_toy:
        ring_table(args.seeds, args.n, 100, (0.5, 1.0, 2.0))
        for steps in (10, 20):
            ring_table(args.seeds, args.n, steps, (3.0, 10.0))
    if not args.skip_images:
        w = [float(v) for v in args.weights.split(",")]
        weights = dict(zip(("shape", "colour", "quadrant"), w, strict=True))
        requests = tuple(args.requests.split(","))
        image_table(args.seeds, args.images, args.image_steps, weights, requests, args.extra_steps)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
