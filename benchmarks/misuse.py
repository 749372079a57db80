"""The misuse table of a new user's first hour: how each common mistake ends, in this tree and in an older one.

Each case makes one mistake through the public API (the same call in both versions) and is judged by how it ends:

- *clear*: a ValueError / TypeError / FileNotFoundError whose message holds the case's keywords (what was expected,
  or what to do);
- *raw*: another exception, or a message without them (a user is left with the library's internals);
- *silent*: no error (the mistake is accepted, or a folder is made without asking).

Run: ``python benchmarks/misuse.py`` for this tree, or ``python benchmarks/misuse.py --before /path/to/old/checkout``
to print both columns (the old tree is imported in a subprocess through ``PYTHONPATH``; make one with ``git worktree
add /tmp/before <commit>``). Not a test: it prints a table; ``tests/test_first_hour.py`` holds the behaviour.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path


def cases(tmp: Path) -> list[tuple[str, object, tuple[type, ...], tuple[str, ...]]]:
    """(description, call, accepted exception types, keywords the message must hold)."""
    import torch

    import diffmath as dm
    from diffmath.nets.mlp import MLP
    from diffmath.ode import ode_log_likelihood
    from diffmath.recipes import train_image, train_toy
    from diffmath.train.training import fit, read_checkpoint

    data = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    su, vp = dm.su_linear(), dm.VPCosine()

    def net(t_max=1000.0, prediction="eps"):
        torch.manual_seed(0)
        return MLP(2, 16, 1, prediction, t_max)

    (tmp / "notes.txt").write_text("not a checkpoint\n")
    (tmp / "afile").write_text("a file, not a folder\n")
    errors = (ValueError, TypeError)
    return [
        ("float64 input to a float32 network", lambda: net()(data.double(), torch.zeros(64)), errors, (".float()",)),
        (
            "float64 state to a sampler of a float32 network",
            lambda: dm.sample(net(), data.double(), su.grid(5), su),
            errors,
            (".float()",),
        ),
        ("t of the wrong length in a network call", lambda: net()(data, torch.zeros(3)), errors, ("(B,)",)),
        (
            "likelihood on a discrete schedule",
            lambda: ode_log_likelihood(net(), data[:4], su),
            errors,
            ("continuous",),
        ),
        (
            "network time range (t_max) not the schedule's",
            lambda: fit(net(t_max=1.0), data, su, 2, progress=False),
            errors,
            ("t_max",),
        ),
        (
            "labels to an unconditional network",
            lambda: net()(data, torch.zeros(64), torch.arange(64) % 3),
            errors,
            ("unconditional",),
        ),
        (
            "an eps-model sampled from t = 1 on VP-cosine (a = 0)",
            lambda: dm.sample(net(1.0), data, vp.grid(5), vp),
            errors,
            ("start",),
        ),
        (
            "checkpoint in a folder that does not exist",
            lambda: fit(net(), data, su, 3, progress=False, checkpoint=tmp / "no" / "such" / "ck.pt"),
            (FileNotFoundError, ValueError),
            ("does not exist",),
        ),
        (
            "checkpoint 'folder' that is a file",
            lambda: fit(net(), data, su, 3, progress=False, checkpoint=tmp / "afile" / "ck.pt"),
            (FileNotFoundError, ValueError, NotADirectoryError),
            ("is a file",),
        ),
        ("read_checkpoint of a text file", lambda: read_checkpoint(tmp / "notes.txt"), errors, ("checkpoint",)),
        (
            "read_checkpoint of a missing file",
            lambda: read_checkpoint(tmp / "missing.pt"),
            (FileNotFoundError,),
            ("missing.pt",),
        ),
        (
            "train_toy of an image recipe",
            lambda: train_toy("shapes-ddpm", progress=False, folder=tmp),
            errors,
            ("train_image",),
        ),
        (
            "train_image of a toy recipe",
            lambda: train_image("moons-ddpm", progress=False, folder=tmp),
            errors,
            ("train_toy",),
        ),
    ]


def judge() -> list[tuple[str, str, str]]:
    """Run every case here; (description, verdict, the first line of what it said)."""
    import torch

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, call, types, keys in cases(Path(tmp)):
            try:
                call()
            except Exception as err:  # every way a call can end is what the table shows
                message = f"{type(err).__name__}: {err}".splitlines()[0]
                ok = isinstance(err, types) and all(k in str(err) for k in keys)
                out.append((name, "clear" if ok else "raw", message))
                continue
            made = (Path(tmp) / "no").exists()
            out.append((name, "silent", "made the missing folder" if made else "no error"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default=None, help="an older checkout to compare with (its root folder)")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.json:
        print(json.dumps(judge()))
        return
    now = judge()
    old = None
    if args.before is not None:
        env = {**os.environ, "PYTHONPATH": str(Path(args.before).resolve())}
        run = subprocess.run([sys.executable, __file__, "--json"], env=env, capture_output=True, text=True, check=True)
        old = {name: (verdict, said) for name, verdict, said in json.loads(run.stdout.splitlines()[-1])}
    if old is None:
        print("| misuse | verdict | what it said |\n|---|---|---|")
        for name, verdict, said in now:
            print(f"| {name} | {verdict} | {said[:110]} |")
    else:
        print("| misuse | before | after | what it says now |\n|---|---|---|---|")
        for name, verdict, said in now:
            print(f"| {name} | {old.get(name, ('n/a',))[0]} | {verdict} | {said[:110]} |")
    for label, table in (("before", None if old is None else list(old.values())), ("after", now)):
        if table is not None:
            counts = {v: sum(row[-2] == v for row in table) for v in ("clear", "raw", "silent")}
            print(f"{label}: " + ", ".join(f"{n} {v}" for v, n in counts.items()))


if __name__ == "__main__":
    main()
