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

``--part and-primal`` adds Algorithm 24.1 (``and_primal_dual``): each round a copy of ``attr-shape-quadrant``'s UNet
(asked for triangle and the quadrant) is trained on ``--and-num`` annealed-Langevin draws of the product
(``product_sampler``: predictor-corrector on the weighted score sum, ``--corrector`` steps of snr ``--snr``), its
point-wise KLs to the three parts set the dual step; rows: equal weights by DDIM and by annealed Langevin, the trained
network, and annealed Langevin at the found lambda.

Table 2 aligns ``attr-uncond`` to two differentiable rewards, redness (mean red minus the mean of green and blue) at
least the data's mean + 0.05, and minus local contrast (mean |x - 3x3 blur|) at least the data's, by Algorithm 24.3
(``align_primal_dual``: importance-weighted DSM towards the tilt, warm-started from the committed weights, and dual
steps on the trained model's expected rewards) and by Algorithm 24.4 (``align_finetune``: Adam through the last
``--last`` DDPM steps; ``--handover`` keeps the reference for the steps before them); it reports the rewards, the
share the judge reads as red, KID, the final lambda and slacks.

Table 3 (``--part or``) is the OR of circles and squares + triangles by Algorithm 24.2 (``or_primal_dual``).

Run: ``python benchmarks/methods/constrained_images.py [--part and|and-primal|align|or|all] [--seeds 5] [--n 64]
[--iters 6] [--times 10] [--rounds 4] [--steps 80] [--primal reweight|finetune|both] [--handover]``. Not a test: it prints the tables.
"""

from __future__ import annotations

import argparse
import copy
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


def redness(x: torch.Tensor) -> torch.Tensor:
    """Mean over pixels of red minus the mean of green and blue (images in [-1, 1])."""
    return (x[:, 0] - 0.5 * (x[:, 1] + x[:, 2])).mean((1, 2))


def contrast(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between the image and its 3x3 box blur: local contrast."""
    return (x - torch.nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False)).abs().mean((1, 2, 3))


def rewards(x: torch.Tensor) -> torch.Tensor:
    """The two rewards of the alignment table: redness and minus local contrast."""
    x = x.clamp(-1, 1)
    return torch.stack([redness(x), -contrast(x)], 1)


def alignment(args: argparse.Namespace) -> None:
    """Table 2: ``attr-uncond`` aligned by Algorithm 24.3 (importance-weighted DSM towards the tilt, dual steps on
    the trained model's expected rewards) to redness >= the data's mean + 0.05 and contrast <= the data's."""
    U = recipes.train_image("attr-uncond", progress=False)
    judge = recipes.train_attribute_classifier("attribute-shapes", 24, progress=False)
    sched, data = U.schedule, U.data
    r_data = rewards(data).double()
    b = torch.tensor([r_data[:, 0].mean() + 0.05, r_data[:, 1].mean()], dtype=torch.float64)
    real = td.held_out("attribute-shapes", 512, 24, 3, correlate=recipes.RARE).images
    red = td.ATTRIBUTES["attribute-shapes"]["colour"].index("red")
    grid = sched.grid(20)

    def report(x: torch.Tensor) -> dict[str, float]:
        x = x.clamp(-1, 1)
        r = rewards(x).double().mean(0)
        colour = judge(x)["colour"].argmax(1)
        return {
            "redness": float(r[0]),
            "-contrast": float(r[1]),
            "red share": float((colour == red).double().mean()),
            "kid": kernel_distance(judge, x, real),
        }

    primals = ["reweight", "finetune"] if args.primal == "both" else [args.primal]
    names = {"reweight": "aligned, reweighted (Algorithm 24.3)", "finetune": "aligned, fine-tuned (Algorithm 24.4)"}
    out: dict[str, list[dict[str, float]]] = {"attr-uncond (not aligned)": []}
    if "finetune" in primals:
        out["attr-uncond (not aligned), DDPM"] = []
    out.update({names[p]: [] for p in primals})

    def ddpm_noise(seed: int) -> torch.Generator:
        return torch.Generator().manual_seed(20_000 + seed)

    lam: dict[str, list[list[float]]] = {p: [] for p in primals}
    slack: dict[str, list[list[float]]] = {p: [] for p in primals}
    kl: list[float] = []
    reference = U.model.requires_grad_(False)  # frozen: the fine-tuning primal's KL is to its chain
    handover = {"last": args.last, "early": reference} if args.handover else {}  # the sampler the fine-tune is for
    t0 = time.time()
    for seed in range(args.seeds):
        x_T = torch.randn(args.n, 3, 24, 24, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            out["attr-uncond (not aligned)"].append(report(sample(U.model, x_T, grid, sched)))
            if "finetune" in primals:
                x = sample(U.model, x_T, grid, sched, eta=1.0, noise=ddpm_noise(seed))
                out["attr-uncond (not aligned), DDPM"].append(report(x))
        for primal in primals:
            net = copy.deepcopy(U.model).requires_grad_(True).train()
            if primal == "reweight":
                res = C.align_primal_dual(
                    data, rewards, b, sched, net, rounds=args.rounds, steps=args.steps, num=2048, step=40.0,
                    num_samples=args.n, sample_steps=20, batch_size=32, lr=5e-4, seed=seed,
                )  # fmt: skip
            else:
                prior = torch.randn(4 * args.n, 3, 24, 24, generator=torch.Generator().manual_seed(10_000 + seed))
                res = C.align_finetune(
                    reference, net, rewards, b, sched, prior, grid, rounds=args.rounds, steps=args.ft_steps,
                    step=args.ft_step, last=args.last, num_samples=args.n, batch_size=16, lr=args.ft_lr, seed=seed,
                    handover=args.handover,
                )  # fmt: skip
                kl.append(float(res.kl[-1]))
            with torch.no_grad():  # the fine-tuned network is tuned for its own ancestral sampler: scored by it
                x = (
                    sample(res.model.eval(), x_T, grid, sched)
                    if primal == "reweight"
                    else C.sampler_path_kl(
                        res.model.eval(), reference, x_T, grid, sched, noise=ddpm_noise(seed), **handover
                    ).x
                )
                out[names[primal]].append(report(x))
            lam[primal].append(res.ascent.lam.tolist())
            slack[primal].append(res.ascent.gradients[-1].tolist())
            print(f"{primal} seed {seed} done ({time.time() - t0:.0f} s); lambda {lam[primal][-1]}, "
                  f"last slack {slack[primal][-1]}" + (f", path KL {kl[-1]:.2f}" if primal == "finetune" else ""),
                  flush=True)  # fmt: skip

    def ms(values: list[float]) -> str:
        se = st.stdev(values) / len(values) ** 0.5 if len(values) > 1 else float("nan")
        return f"{st.mean(values):.3f} +- {se:.3f}"

    cols = ["redness", "-contrast", "red share", "kid"]
    print(
        f"\nAlignment of attr-uncond: thresholds redness >= {b[0]:.3f} (data {r_data[:, 0].mean():.3f} + 0.05), "
        f"-contrast >= {b[1]:.3f} (the data's); {args.rounds} rounds of {args.steps} DSM steps or "
        f"{args.ft_steps} fine-tuning steps through the last {args.last} of 20 DDPM steps"
        f"{' (hand-over: the reference before them)' if args.handover else ''}; n = {args.n}, "
        f"{args.seeds} seeds"
    )
    print("| row | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols))
    for name, rows in out.items():
        print(f"| {name} | " + " | ".join(ms([r[c] for r in rows]) for c in cols) + " |")
    for primal in primals:
        print(f"{names[primal]}: lambda (last) {ms([v[0] for v in lam[primal]])}, {ms([v[1] for v in lam[primal]])};"
              f" slack b - E r at the last round {ms([v[0] for v in slack[primal]])}, "
              f"{ms([v[1] for v in slack[primal]])}")  # fmt: skip
    if kl:
        print(f"fine-tuned: path KL to attr-uncond's chain (eq. 24.12, 20 steps) {ms(kl)} nats")
    print(f"({time.time() - t0:.0f} s)")


def union(args: argparse.Namespace) -> None:
    """Table 3: OR by Algorithm 24.2 of two disjoint data sets, circles and squares + triangles, on one network
    warm-started from ``attr-uncond``; lambda from the likelihood-weighted denoising bounds (eq. 24.10). With equal
    class entropies the optimum is lambda = (1/3, 2/3) (eq. 24.6: lambda_i ~ e^{H_i}, and the second set holds two
    classes), i.e. one third of each shape; equal weights (1/2, 1/2) would make half of the samples circles."""
    U = recipes.train_image("attr-uncond", progress=False)
    judge = recipes.train_attribute_classifier("attribute-shapes", 24, progress=False)
    sched, grid = U.schedule, U.schedule.grid(20)
    names = td.ATTRIBUTES["attribute-shapes"]["shape"]
    pool = td.held_out("attribute-shapes", 6 * args.or_size, 24, 7)  # uncorrelated: the law asked for
    shape = pool.labels["shape"]
    circles = pool.images[shape == 0][: args.or_size]
    others = pool.images[shape != 0][: 2 * args.or_size]
    rows: dict[str, list[list[float]]] = {"equal weights (1/2, 1/2), not ascended": [], "OR (Algorithm 24.2)": []}
    lam, gap = [], []
    t0 = time.time()
    for seed in range(args.seeds):
        x_T = torch.randn(4 * args.n, 3, 24, 24, generator=torch.Generator().manual_seed(seed))
        for name in rows:
            net = copy.deepcopy(U.model).requires_grad_(True).train()
            ascend = name.startswith("OR")
            res = C.or_primal_dual(
                [circles, others], sched, net, rounds=args.rounds if ascend else 1, steps=args.or_steps,
                num=2048, step=args.or_step if ascend else 1e-12, num_times=args.times, batch_size=32, lr=args.or_lr,
                seed=seed,
            )  # fmt: skip
            with torch.no_grad():
                got = judge(sample(res.model.eval(), x_T, grid, sched).clamp(-1, 1))["shape"].argmax(1)
            rows[name].append([float((got == k).double().mean()) for k in range(len(names))])
            if ascend:
                lam.append(res.ascent.averaged.tolist())
                gap.append(float(res.ascent.gradients[-1, 0] - res.ascent.gradients[-1, 1]))
                print(f"OR seed {seed}: lambda history {[round(v, 3) for v in res.ascent.history[:, 0].tolist()]}, "
                      f"bounds {res.ascent.gradients.tolist()} ({time.time() - t0:.0f} s)", flush=True)  # fmt: skip

    def ms(values: list[float]) -> str:
        se = st.stdev(values) / len(values) ** 0.5 if len(values) > 1 else float("nan")
        return f"{st.mean(values):.3f} +- {se:.3f}"

    print(
        f"\nOR of circles ({len(circles)}) and squares + triangles ({len(others)}) on attr-uncond's network: "
        f"{args.rounds} rounds of {args.or_steps} DSM steps, dual step {args.or_step} nats, {args.times} times per "
        f"bound; shares of {4 * args.n} samples by the judge (DDIM 20); {args.seeds} seeds"
    )
    print("| row | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    for name, shares in rows.items():
        print(f"| {name} | " + " | ".join(ms([v[k] for v in shares]) for k in range(len(names))) + " |")
    print(f"averaged lambda (circles): {ms([v[0] for v in lam])}; last bound gap CE_1 - CE_2: {ms(gap)} nats")
    print(f"({time.time() - t0:.0f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--iters", type=int, default=6, help="dual steps of the dual-only AND")
    parser.add_argument("--times", type=int, default=10, help="quadrature points of each point-wise KL")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--part", choices=["and", "and-primal", "align", "or", "all"], default="all")
    parser.add_argument("--and-rounds", type=int, default=3, help="dual rounds of the AND primal-dual")
    parser.add_argument("--and-steps", type=int, default=150, help="DSM steps per AND primal round")
    parser.add_argument("--and-num", type=int, default=128, help="draws of the product per AND primal round")
    parser.add_argument("--and-step", type=float, default=0.2, help="dual step of the AND on the normalised KLs")
    parser.add_argument("--and-lr", type=float, default=2e-4)
    parser.add_argument("--snr", type=float, default=0.16, help="of the annealed Langevin corrector")
    parser.add_argument("--corrector", type=int, default=1, help="Langevin steps per predictor step")
    parser.add_argument(
        "--or-size", type=int, default=512, help="circles in the OR's first data set (twice as many others)"
    )
    parser.add_argument("--or-steps", type=int, default=100, help="DSM steps per OR round")
    parser.add_argument("--or-step", type=float, default=0.02, help="dual step of the OR, in nats")
    parser.add_argument("--or-lr", type=float, default=1e-4, help="learning rate of the OR's DSM rounds")
    parser.add_argument("--rounds", type=int, default=4, help="dual rounds of the alignment")
    parser.add_argument("--steps", type=int, default=80, help="DSM steps per alignment round")
    parser.add_argument("--primal", choices=["reweight", "finetune", "both"], default="both")
    parser.add_argument("--ft-steps", type=int, default=30, help="fine-tuning steps per alignment round")
    parser.add_argument("--ft-step", type=float, default=200.0, help="dual step of the fine-tuning primal")
    parser.add_argument("--ft-lr", type=float, default=1e-4)
    parser.add_argument("--last", type=int, default=2, help="sampler steps differentiated by the fine-tuning")
    parser.add_argument("--handover", action="store_true", help="the reference samples before the last steps")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.part in ("align", "all"):
        alignment(args)
    if args.part in ("or", "all"):
        union(args)
    if args.part in ("align", "or"):
        return
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

    def asked_of(num: int) -> tuple[list[Conditioned], torch.Tensor]:
        """The three parts asked for the request on a batch of ``num`` (quadrant cycling), and attr-shape-quadrant's
        labels for it."""
        f, qq = (lambda v: torch.full((num,), v)), torch.arange(num) % 4
        shape_q = torch.stack([f(ask["shape"]), qq], 1)
        return [
            Conditioned(A.model, shape_q),
            Conditioned(B.model, f(ask["colour"])[:, None]),
            Conditioned(Cm.model, torch.stack([f(ask["size"]), f(ask["texture"])], 1)),
        ], shape_q

    parts, shape_q = asked_of(n)
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
    kls: list[list[float]] = []
    t0 = time.time()
    for seed in range(args.seeds):
        x_T = start(seed)
        with torch.no_grad():
            if args.part in ("and", "all"):
                singles = {
                    "attr-shape-quadrant alone": parts[0],
                    "attr-colour alone": parts[1],
                    "attr-size-texture alone": parts[2],
                    "attr-joint (whole request)": Conditioned(J.model, joint),
                }
                for name, m in singles.items():
                    rows.setdefault(name, []).append(score(sample(m, x_T, grid, sched)))
            rows.setdefault("AND, equal weights", []).append(score(sample(and_model([1 / 3] * 3), x_T, grid, sched)))
        lam = [1 / 3] * 3
        lams.setdefault("AND, equal weights", []).append(lam)
        if args.part in ("and", "all"):
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
        if args.part in ("and-primal", "all"):
            g = torch.Generator().manual_seed(seed)
            pc = C.product_sampler(parts, sched, (3, 24, 24), grid, args.snr, args.corrector, clip=1.0)
            third = torch.full((3,), 1 / 3, dtype=torch.float64)
            rows.setdefault("AND, equal weights, annealed Langevin", []).append(score(pc(third, n, g)))
            lams.setdefault("AND, equal weights, annealed Langevin", []).append(third.tolist())
            big, labels = asked_of(args.and_num)
            res = C.and_primal_dual(
                big, sched, copy.deepcopy(A.model).requires_grad_(True),
                C.product_sampler(big, sched, (3, 24, 24), grid, args.snr, args.corrector, clip=1.0),
                rounds=args.and_rounds, steps=args.and_steps, num=args.and_num, step=args.and_step,
                num_times=args.times, batch_size=32, lr=args.and_lr, seed=seed, labels=labels,
            )  # fmt: skip
            lam = res.ascent.averaged.tolist()
            with torch.no_grad():
                trained = sample(Conditioned(res.model.eval(), shape_q), x_T, grid, sched)
            rows.setdefault("AND primal-dual (Algorithm 24.1): its network", []).append(score(trained))
            rows.setdefault("AND, primal-dual lambda, annealed Langevin", []).append(
                score(pc(res.ascent.averaged, n, g))
            )
            for name in ("AND primal-dual (Algorithm 24.1): its network", "AND, primal-dual lambda, annealed Langevin"):
                lams.setdefault(name, []).append(lam)
            kls.append(res.ascent.gradients[-1].tolist())
            print(f"seed {seed}: primal-dual lambda history {res.ascent.history.tolist()}, KLs "
                  f"{res.ascent.gradients.tolist()}", flush=True)  # fmt: skip
        print(f"seed {seed} done ({time.time() - t0:.0f} s); lambda {[round(v, 3) for v in lam]}", flush=True)

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
    if kls:
        print(
            "last KLs of the primal-dual network to the parts (nats): "
            + ", ".join(ms([v[i] for v in kls]) for i in range(3))
        )
    print(f"({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
