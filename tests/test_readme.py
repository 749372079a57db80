"""The README's examples run as printed: every ```python block of README.md is a fresh user script.

All blocks run in one child process (one import of torch), each in its own namespace and its own empty working
folder, with matplotlib's Agg backend and one torch thread; a block's own prints and asserts are its checks. The
README allows no block that needs a data file or a GPU."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.M | re.S)

RUNNER = r"""
import sys, os, traceback, time
import torch
torch.set_num_threads(1)
blocks = eval(sys.stdin.read())
for i, code in enumerate(blocks, 1):
    folder = os.path.join(sys.argv[1], f"block{i}")
    os.makedirs(folder)
    os.chdir(folder)
    t0 = time.perf_counter()
    try:
        exec(compile(code, f"README.md python block {i}", "exec"), {"__name__": "__main__"})
    except BaseException:
        traceback.print_exc()
        print(f"README python block {i} failed", flush=True)
        sys.exit(1)
    import matplotlib.pyplot as plt
    plt.close("all")
    print(f"README python block {i} ran in {time.perf_counter() - t0:.1f} s; wrote {sorted(os.listdir(folder))}")
"""


def readme_blocks() -> list[str]:
    return BLOCK.findall((ROOT / "README.md").read_text(encoding="utf-8"))


def test_readme_has_python_examples():
    blocks = readme_blocks()
    assert len(blocks) >= 3, f"expected the five-line, train-your-own and cheat-sheet examples, found {len(blocks)}"
    for i, code in enumerate(blocks, 1):
        assert "cuda" not in code, f"README python block {i} must run on a CPU"


def test_readme_python_blocks_run_as_printed(tmp_path):
    blocks = readme_blocks()
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, str(tmp_path)],
        input=repr(blocks),
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.stdout.count("ran in") == len(blocks), proc.stdout
    for i in range(1, len(blocks) + 1):
        produced = sorted(p.name for p in (tmp_path / f"block{i}").iterdir())
        for name in re.findall(r"savefig\(\"([^\"]+)\"\)", blocks[i - 1]):
            assert name in produced, f"README python block {i} did not write {name}: {produced}"
