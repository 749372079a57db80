"""Re-execute notebooks in place from a fresh kernel (``make notebooks``), keeping their outputs for the site."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from diffmath.core._io import atomic_write


def execute(path: str | Path, timeout: int = 600) -> float:
    """Run every cell of the notebook at ``path`` in order in a fresh ``python3`` kernel; write it back atomically.

    Returns the wall time in seconds. Timing metadata is not recorded, so re-running an unchanged notebook
    leaves a small diff. Raises ``FileNotFoundError`` for a missing file and nbclient's ``CellExecutionError``
    when a cell fails (the file is then left untouched).
    """
    import nbformat
    from nbclient import NotebookClient

    path = Path(path)
    if not path.is_file() or path.suffix != ".ipynb":
        raise FileNotFoundError(f"expected an existing .ipynb file, got {path}")
    nb = nbformat.read(path, as_version=4)
    env_backend = os.environ.pop("MPLBACKEND", None)  # an inherited Agg backend would drop every figure
    t0 = time.perf_counter()
    try:
        NotebookClient(
            nb,
            timeout=timeout,
            kernel_name="python3",
            record_timing=False,
            resources={"metadata": {"path": str(path.parent)}},
        ).execute()
    finally:
        if env_backend is not None:
            os.environ["MPLBACKEND"] = env_backend
    seconds = time.perf_counter() - t0
    atomic_write(path, lambda tmp: nbformat.write(nb, tmp))
    return seconds


def main(argv: list[str] | None = None) -> int:
    """Execute each notebook named on the command line; print its time."""
    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        print("usage: python -m diffmath.notebooks NOTEBOOK.ipynb [...]", file=sys.stderr)
        return 2
    for p in paths:
        print(f"{p}: {execute(p):.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
