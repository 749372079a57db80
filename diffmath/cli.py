"""Command line: ``diffmath tour`` (the main job), ``diffmath train`` (recipes) and ``diffmath --version``.

``torchrun --nproc_per_node=N -m diffmath train RECIPE`` trains a recipe on N processes (lesson 3, sec. 3.6;
:mod:`diffmath.train.distributed`): rank 0 alone prints and writes; SIGTERM stops every rank after its current step
with a final checkpoint and the exit status 143, and the same command on any number of processes resumes it.
"""

from __future__ import annotations

import argparse
import sys


def _recipe_table() -> list[tuple[str, str, int, str, str]]:
    """(name, kind, steps, hash, status) of every recipe; status is where its weights are, if anywhere."""
    from diffmath.recipes import IMAGE_RECIPES, TOY_RECIPES, image_recipe, recipe_hash, toy_recipe, weights_status

    rows = []
    for kind, table, make in (("toy", TOY_RECIPES, toy_recipe), ("image", IMAGE_RECIPES, image_recipe)):
        for name in table:
            config = make(name)
            rows.append((name, kind, table[name]["steps"], recipe_hash(config), weights_status(config)))
    return rows


def _train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import torch

    from diffmath.recipes import (
        COMMITTED,
        IMAGE_RECIPES,
        TOY_RECIPES,
        cache_dir,
        image_recipe,
        loss_curve_figure,
        stored_config,
        toy_recipe,
        train_image,
        train_toy,
        weights_status,
    )
    from diffmath.train import distributed

    if args.recipe is None:
        print(f"{'recipe':<24} {'kind':<6} {'steps':>6}  {'hash':<10}  weights")
        for name, kind, steps, h, status in _recipe_table():
            print(f"{name:<24} {kind:<6} {steps:>6}  {h:<10}  {status}")
        print(f"\ncache folder: {cache_dir()} (set DIFFMATH_CACHE to move it); committed weights: {COMMITTED}")
        return 0
    toy = args.recipe in TOY_RECIPES
    if not toy and args.recipe not in IMAGE_RECIPES:
        parser.error(f"unknown recipe {args.recipe!r}; expected one of {', '.join([*TOY_RECIPES, *IMAGE_RECIPES])}")
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be a positive integer, got {args.steps}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be a positive integer, got {args.threads}")
    overrides = {} if args.steps is None else {"steps": args.steps}
    config = (toy_recipe if toy else image_recipe)(args.recipe, **overrides)
    if toy and args.compile:
        parser.error("--compile is for image recipes; toy MLPs gain nothing from it")
    extra = {"precision": args.precision, **({} if toy else {"compile": args.compile})}
    stored_as = stored_config(config, args.precision)
    before = {
        "committed": "loaded the committed weights",
        "cached": "loaded from the cache",
        "partly trained": "resumed from its last checkpoint and trained",
        "not trained": "trained",
    }["not trained" if args.force else weights_status(stored_as)]
    # toy work on one thread: the cached weights do not depend on the core count
    torch.set_num_threads(args.threads if args.threads is not None else 1 if toy else torch.get_num_threads())
    trainer = train_toy if toy else train_image
    try:
        device = distributed.setup(args.device)
        main = distributed.is_main()
        with distributed.stop_on_sigterm():
            tm = trainer(config, progress=not args.no_progress, force=args.force, device=device, **extra)
    except distributed.Stopped as stop:
        if main:
            print(
                f"{args.recipe}: stopped by SIGTERM after step {stop.step}; checkpoint: {stop.checkpoint}\n"
                "run the same command again (on any number of processes) to resume",
                file=sys.stderr,
            )
        return distributed.STOPPED_EXIT_CODE
    finally:
        distributed.teardown()
    if not main:
        return 0
    figure = loss_curve_figure(tm.losses, cache_dir() / f"{tm.path.stem}-loss.png", args.recipe)
    tail = tm.losses[-100:]
    print(f"{args.recipe}: {before}; {len(tm.losses)} steps, final loss {sum(tail) / len(tail):.4f}")
    print(f"weights: {tm.path}")
    print(f"loss curve: {figure}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``diffmath`` console script and of ``python -m diffmath``."""
    from diffmath import __version__

    fmt = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(
        prog="diffmath",
        description="Diffusion models derived, implemented, tested: the course's command line.",
        formatter_class=fmt,
    )
    parser.add_argument("--version", action="version", version=f"diffmath {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    tour = sub.add_parser(
        "tour",
        help="noise and denoise a toy with its exact model and trained ones; write a figure, print a table",
        description="The main job (make demo): the 8-Gaussian ring through DDPM, DDIM, DPM-Solver++, CFG, Poisson "
        "flow and rectified flow, exact and trained, with a table of sample quality.",
        formatter_class=fmt,
    )
    tour.add_argument("--out", default="tour.png", help="where to write the figure (PNG)")
    tour.add_argument("--n", type=int, default=2000, help="number of particles")
    tour.add_argument("--seed", type=int, default=0, help="seed of the particles and the samplers")
    tour.add_argument("--no-progress", action="store_true", help="hide progress bars")
    train = sub.add_parser(
        "train",
        help="train (or load) a named toy or image recipe; without a name, list the recipes",
        description="Train a recipe into the cache folder ($DIFFMATH_CACHE, default ~/.cache/diffmath), resuming "
        "from its last checkpoint if one is there, or load its weights (committed with the package, or cached).",
        formatter_class=fmt,
    )
    train.add_argument("recipe", nargs="?", help="recipe name; omit to list them with where their weights are")
    train.add_argument("--steps", type=int, default=None, help="train for this many steps instead of the recipe's")
    train.add_argument("--force", action="store_true", help="ignore stored weights and train again")
    train.add_argument("--device", default="cpu", help="where to train: cpu, cuda or auto (cuda when present)")
    train.add_argument("--precision", default="float32", choices=["float32", "bf16"],
                       help="bf16 runs the forward passes under bfloat16 autocast (for CUDA)")  # fmt: skip
    train.add_argument("--compile", action="store_true", help="image recipes: train through torch.compile")
    train.add_argument("--threads", type=int, default=None, help="torch threads (default: 1 for toys, torch's own "
                       "for images)")  # fmt: skip
    train.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)
    if args.command == "tour":
        if args.n < 10:
            parser.error(f"--n must be at least 10, got {args.n}")
        from diffmath.tour import run

        run(args.out, n=args.n, seed=args.seed, progress=not args.no_progress)
        return 0
    return _train(args, train)


if __name__ == "__main__":
    sys.exit(main())
