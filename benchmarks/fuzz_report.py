"""Fuzz report: per module, how the bad calls of ``tests/test_fuzz_core.py`` (the core API) and
``tests/test_fuzz_methods.py`` (the methods API and toydata) end (DESIGN.md, principle 9).

Each bad call is *good* (a valid result, or a ValueError/TypeError from diffmath/toydata naming the argument at
fault), *unhelpful* (another exception, or one that does not name the argument) or *silent* (nonsense accepted, a
NaN or wrong-shaped result). The cases come from this tree's tests; the library from ``PYTHONPATH`` if set, so the
same table can be printed for an older checkout:

    OMP_NUM_THREADS=1 PYTHONPATH=/tmp/before python benchmarks/fuzz_report.py   # before
    OMP_NUM_THREADS=1 python benchmarks/fuzz_report.py                          # after

``--suite core`` or ``--suite methods`` prints one suite; ``-v`` lists the unhelpful and silent calls. Not a test:
it prints a table (about a minute and a half on one thread).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import fuzzing
import test_fuzz_core
import test_fuzz_methods
import torch

import diffmath
import toydata

VERDICTS = ("good", "unhelpful", "silent")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="list each unhelpful or silent call")
    parser.add_argument("--suite", choices=("all", "core", "methods"), default="all")
    args = parser.parse_args()
    verbose = args.verbose
    suites = {"core": [test_fuzz_core], "methods": [test_fuzz_methods]}.get(
        args.suite, [test_fuzz_core, test_fuzz_methods]
    )
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    counts: dict[str, Counter] = defaultdict(Counter)

    def recorder(case):
        def record(value: object) -> None:
            verdict, detail = fuzzing.outcome(case, value)
            counts[case.module][verdict] += 1
            if verbose and verdict != "good":
                print(f"{verdict:9s} {case.id} {case.arg}={str(value)[:40]!r}: {detail[:160]}")

        return record

    for suite in suites:
        for case in suite.CASES:
            suite.run_case(case, recorder(case))
    print(f"diffmath from {Path(diffmath.__file__).parent}, toydata from {Path(toydata.__file__).parent}")
    print(f"{'module':10s} {'calls':>6s} " + " ".join(f"{v:>10s}" for v in VERDICTS))
    total: Counter = Counter()
    for module, c in counts.items():
        total.update(c)
        print(f"{module:10s} {sum(c.values()):6d} " + " ".join(f"{c[v]:10d}" for v in VERDICTS))
    print(f"{'total':10s} {sum(total.values()):6d} " + " ".join(f"{total[v]:10d}" for v in VERDICTS))


if __name__ == "__main__":
    main()
