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
    args = parser.parse_args(argv)
    if args.command == "tour":
        if args.n < 10:
            parser.error(f"--n must be at least 10, got {args.n}")
        from diffmath.tour import run

        run(args.out, n=args.n, seed=args.seed, progress=not args.no_progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
