"""Command line: ``diffmath tour`` (the main job) and friends."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``diffmath`` console script and of ``python -m diffmath``."""
    parser = argparse.ArgumentParser(prog="diffmath", description="Diffusion models derived, implemented, tested.")
    sub = parser.add_subparsers(dest="command", required=True)
    tour = sub.add_parser("tour", help="noise and denoise a toy with its exact model; write a figure, print a table")
    tour.add_argument("--out", default="tour.png", help="where to write the figure (PNG)")
    tour.add_argument("--n", type=int, default=2000, help="number of particles")
    tour.add_argument("--seed", type=int, default=0)
    tour.add_argument("--no-progress", action="store_true", help="hide progress bars")
    train = sub.add_parser("train", help="train (or load from the cache) a named toy or image recipe")
    train.add_argument("recipe", nargs="?", help="recipe name; omit to list them")
    train.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)
    if args.command == "tour":
        if args.n < 10:
            parser.error(f"--n must be at least 10, got {args.n}")
        from diffmath.tour import run

        run(args.out, n=args.n, seed=args.seed, progress=not args.no_progress)
    elif args.command == "train":
        from diffmath.recipes import (
            IMAGE_RECIPES,
            TOY_RECIPES,
            cache_dir,
            image_recipe,
            loss_curve_figure,
            recipe_hash,
            toy_recipe,
            train_image,
            train_toy,
        )

        if args.recipe is None:
            for name in TOY_RECIPES:
                print(f"{name:<24} {recipe_hash(toy_recipe(name))}  {TOY_RECIPES[name]}")
            for name in IMAGE_RECIPES:
                print(f"{name:<24} {recipe_hash(image_recipe(name))}  {IMAGE_RECIPES[name]}")
            return 0
        if args.recipe not in TOY_RECIPES and args.recipe not in IMAGE_RECIPES:
            names = ", ".join([*TOY_RECIPES, *IMAGE_RECIPES])
            parser.error(f"unknown recipe {args.recipe!r}; expected one of {names}")
        if args.recipe in TOY_RECIPES:
            import torch

            torch.set_num_threads(1)  # toy work on one thread: the cached weights do not depend on the core count
            tm = train_toy(args.recipe, progress=not args.no_progress)
        else:
            tm = train_image(args.recipe, progress=not args.no_progress)
        figure = loss_curve_figure(tm.losses, cache_dir() / f"{tm.path.stem}-loss.png", args.recipe)
        tail = tm.losses[-100:]
        print(f"{args.recipe}: {len(tm.losses)} steps, final loss {sum(tail) / len(tail):.4f}, stored at {tm.path}")
        print(f"loss curve: {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
