"""The stored notebooks are what the site renders: executed in order from a fresh kernel, no errors, with figures."""

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
LESSONS = sorted((ROOT / "lessons").glob("[0-9][0-9]-*.md"))


def test_every_lesson_has_a_notebook_and_tests():
    for lesson in LESSONS:
        num = lesson.name[:2]
        assert list((ROOT / "notebooks").glob(f"{num}-*.ipynb")), f"{lesson.name} has no notebook"
        assert list((ROOT / "tests").glob(f"test_{num}_*.py")), f"{lesson.name} has no tests/test_{num}_*.py"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_was_executed_in_order_and_kept_its_outputs(path):
    nb = json.loads(path.read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    code = [c for c in nb["cells"] if c["cell_type"] == "code" and "".join(c["source"]).strip()]
    counts = [c["execution_count"] for c in code]
    assert counts == list(range(1, len(code) + 1)), f"cells not run once in order from a fresh kernel: {counts}"
    outputs = [o for c in code for o in c["outputs"]]
    assert not [o for o in outputs if o["output_type"] == "error"], "a stored output is an error"
    assert any("image/png" in o.get("data", {}) for o in outputs), "no figure in the stored outputs"
    assert any("assert" in "".join(c["source"]) for c in code[-3:]), "the last cells must assert key numbers"
    assert path.stat().st_size < 1_500_000, "notebook over 1.5 MB"
    src = "".join("".join(c["source"]) for c in code)
    assert "def " not in src and "class " not in src, "library code belongs in diffmath, not in notebooks"
