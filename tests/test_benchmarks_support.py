"""The benchmarks' torchvision stand-in (benchmarks/swissroll_task.py) leaves ``import diffusers`` working in either
order: a package importing torchvision (like smalldiffusion) gets the stand-in, and afterwards torchvision reads as
not installed, which is what diffusers asks ``importlib.util.find_spec``."""

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _run(tmp_path, body):
    fake = tmp_path / "smalldiffusion"  # a stand-in package that imports torchvision as smalldiffusion does
    fake.mkdir()
    (fake / "__init__.py").write_text("from torchvision import transforms\nTRANSFORM = transforms.Compose([])\n")
    script = textwrap.dedent(f"""
        import importlib.util, sys
        sys.path[:0] = [{str(tmp_path)!r}, {str(BENCH)!r}]
        from swissroll_task import import_smalldiffusion
        {textwrap.indent(textwrap.dedent(body), " " * 8).strip()}
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None, reason="a real torchvision is installed")
def test_stand_in_is_gone_after_the_import(tmp_path):
    out = _run(
        tmp_path,
        """
        sd = import_smalldiffusion()
        print(sd.TRANSFORM is None, importlib.util.find_spec("torchvision") is None, "torchvision" in sys.modules)
        """,
    )
    assert out.split() == ["True", "True", "False"]


@pytest.mark.skipif(importlib.util.find_spec("diffusers") is None, reason="diffusers is installed by make bench")
@pytest.mark.parametrize("diffusers_first", [True, False])
def test_diffusers_imports_in_either_order(tmp_path, diffusers_first):
    first, second = ("import diffusers", "import_smalldiffusion()")[:: 1 if diffusers_first else -1]
    out = _run(tmp_path, f"{first}\n{second}\nimport diffusers\nprint(diffusers.UNet2DModel.__name__)")
    assert out.strip() == "UNet2DModel"
