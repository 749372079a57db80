"""How fast an attribute-shapes recipe trains, and when it reaches its Frechet floor factor (lesson 20, sec. 20.3).

Trains one ``attr-*`` recipe with its own loop (:func:`diffmath.recipes.image_training`) on ``--device`` in
``--precision``, optionally with more steps or another batch size, and at ``--evals`` evenly spaced steps scores the
EMA model with :func:`diffmath.recipes.image_fidelity` (Frechet distance in the judge's features, ``--draws``
independent draws of ``--n`` images, DPM-Solver++(2M) with 20 steps; the floor is real against real at the same n).
It prints one row per evaluation: step, training seconds so far (scoring excluded), images/s, model and floor as
mean +- SD over the draws, and their ratio, then the first step at which the ratio is at most ``--factor`` (the
target of the image models: 1.5). With ``--seconds`` the step count is chosen to fill that much training time, from
the step rate of 100 steps of a throw-away copy (the cosine learning-rate decay then ends with the run).

``--out DIR`` writes the final EMA weights in float16 (``DIR/<recipe>-<steps>.pt``, with the configuration and
losses), the form the committed checkpoints take.

Run: ``python benchmarks/attr_training.py attr-uncond --device cuda --precision bf16 [--seconds 240] [--batch 32]``.
Not a test: it prints a table.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time
from pathlib import Path

import torch

from diffmath.core._io import atomic_write
from diffmath.core.device import resolve_device
from diffmath.recipes import (
    IMAGE_RECIPES,
    ImageModel,
    image_fidelity,
    image_recipe,
    image_setup,
    image_training,
    train_attribute_classifier,
)


def _now(dev: torch.device) -> float:
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def step_rate(config: dict, dev: torch.device, precision: str) -> float:
    """Steps per second of the recipe's loop, from 100 steps after 20 of warm-up, on a throw-away copy."""
    trial = {**config, "steps": 120}
    model, sched, data, labels = image_setup(trial)
    run = image_training(trial, model, sched, data, labels, progress=False, device=dev, precision=precision)
    for _ in range(20):
        next(run)
    start = _now(dev)
    for _ in run:
        pass
    return 100 / (_now(dev) - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", choices=[n for n in IMAGE_RECIPES if n.startswith("attr-")])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="float32", choices=["float32", "bf16"])
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps (default: the recipe's)")
    parser.add_argument("--seconds", type=float, default=None, help="choose the steps to fill this training time")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: the recipe's)")
    parser.add_argument("--evals", type=int, default=4)
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--factor", type=float, default=1.5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    overrides = {} if args.batch is None else {"batch_size": args.batch}
    config = image_recipe(args.recipe, **overrides)
    rate = None
    if args.seconds is not None:
        rate = step_rate(config, dev, args.precision)
        config["steps"] = max(500, int(rate * args.seconds) // 500 * 500)
    elif args.steps is not None:
        config["steps"] = args.steps
    steps, batch = config["steps"], config["batch_size"]
    clf = train_attribute_classifier(config["dataset"], size=config["size"], progress=False)
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    print(
        f"{args.recipe}: {where}, {args.precision}, {steps} steps of batch {batch}"
        + (f" (chosen from {rate:.1f} steps/s for {args.seconds:g} s)" if rate else "")
        + f"; Frechet distance over {args.draws} draws of n = {args.n}"
    )
    print("| step | train s | images/s | model FD | floor FD | ratio |")
    print("|---|---|---|---|---|---|")
    model, sched, data, labels = image_setup(config)
    marks = {round(steps * (k + 1) / args.evals) for k in range(args.evals)}
    trained, reached, state = 0.0, None, None
    start = _now(dev)
    for state in image_training(
        config, model, sched, data, labels, progress=False, device=dev, precision=args.precision
    ):
        if state.step not in marks:
            continue
        trained += _now(dev) - start
        ema = copy.deepcopy(state.ema).eval()
        scored = ImageModel(ema, sched, data, labels, config, Path("."), state.losses)
        fid = image_fidelity(scored, clf, n=args.n, draws=args.draws, progress=False)
        m, f = statistics.mean(fid["model"]), statistics.mean(fid["floor"])
        ratio = m / f
        if reached is None and ratio <= args.factor:
            reached = (state.step, trained)
        print(
            f"| {state.step} | {trained:.0f} | {state.step * batch / trained:.0f} | "
            f"{m:.2f} +- {statistics.stdev(fid['model']):.2f} | {f:.2f} +- {statistics.stdev(fid['floor']):.2f} | "
            f"{ratio:.2f} |",
            flush=True,
        )
        start = _now(dev)
    if reached is None:
        print(f"ratio <= {args.factor} not reached in {steps} steps ({trained:.0f} s of training)")
    else:
        print(f"ratio <= {args.factor} first at step {reached[0]}, after {reached[1]:.0f} s of training")
    if args.out is not None and state is not None and not math.isnan(state.losses[-1]):
        weights = {k: (v.half() if v.is_floating_point() else v).cpu() for k, v in state.ema.state_dict().items()}
        path = Path(args.out) / f"{args.recipe}-{steps}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: torch.save({"config": config, "model": weights, "losses": state.losses}, f))
        print(f"weights: {path}")


if __name__ == "__main__":
    main()
