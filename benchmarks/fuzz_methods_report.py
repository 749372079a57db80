"""Fuzz report of the methods API: per module, how the bad calls of ``tests/test_fuzz_methods.py`` end (DESIGN.md,
principle 9). The companion of ``benchmarks/fuzz_report.py`` (the core API), with the same verdicts.

Each bad call is *good* (a valid result, or a ValueError/TypeError from diffmath/toydata naming the argument at fault),
*unhelpful* (another exception type, a raw torch/scipy error, a message that does not name the argument) or *silent*
(a returned result that is NaN, of the wrong shape, or should have been refused). The cases and strategies come from
this checkout's ``tests/``; the library comes from wherever ``import diffmath`` finds it, so a before/after table is

    git worktree add /tmp/before HEAD
    OMP_NUM_THREADS=1 PYTHONPATH=/tmp/before python benchmarks/fuzz_methods_report.py   # before
    OMP_NUM_THREADS=1 python benchmarks/fuzz_methods_report.py                          # after

Add ``-v`` to list the unhelpful and silent calls. Not a test: it prints a table (about 20 s on one thread).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import torch
from test_fuzz_methods import CASES, outcome, run_case

import diffmath
import toydata

VERDICTS = ("good", "unhelpful", "silent")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="list each unhelpful or silent call")
    verbose = parser.parse_args().verbose
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    counts: dict[str, Counter] = defaultdict(Counter)

    def recorder(case):
        def record(value: object) -> None:
            verdict, detail = outcome(case, value)
            counts[case.module][verdict] += 1
            if verbose and verdict != "good":
                print(f"{verdict:9s} {case.id} {case.arg}={str(value)[:40]!r}: {detail[:160]}")

        return record

    for case in CASES:
        run_case(case, recorder(case))
    print(f"diffmath from {Path(diffmath.__file__).parent}, toydata from {Path(toydata.__file__).parent}")
    print(f"{'module':10s} {'calls':>6s} " + " ".join(f"{v:>10s}" for v in VERDICTS))
    total: Counter = Counter()
    for module, c in counts.items():
        total.update(c)
        print(f"{module:10s} {sum(c.values()):6d} " + " ".join(f"{c[v]:10d}" for v in VERDICTS))
    print(f"{'total':10s} {sum(total.values()):6d} " + " ".join(f"{total[v]:10d}" for v in VERDICTS))


if __name__ == "__main__":
    main()
