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
    train = sub.add_parser("train", help="train (or load from the cache) a named toy recipe")
    train.add_argument("recipe", nargs="?", help="recipe name; omit to list them")
    train.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)
    if args.command == "tour":
        if args.n < 10:
            parser.error(f"--n must be at least 10, got {args.n}")
        from diffmath.tour import run

        run(args.out, n=args.n, seed=args.seed, progress=not args.no_progress)
    elif args.command == "train":
        from diffmath.recipes import TOY_RECIPES, recipe_hash, toy_recipe, train_toy

        if args.recipe is None:
            for name in TOY_RECIPES:
                print(f"{name:<24} {recipe_hash(toy_recipe(name))}  {TOY_RECIPES[name]}")
            return 0
        if args.recipe not in TOY_RECIPES:
            parser.error(f"unknown recipe {args.recipe!r}; expected one of {', '.join(TOY_RECIPES)}")
        tm = train_toy(args.recipe, progress=not args.no_progress)
        tail = tm.losses[-100:]
        print(f"{args.recipe}: {len(tm.losses)} steps, final loss {sum(tail) / len(tail):.4f}, stored at {tm.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
