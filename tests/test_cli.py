"""The main job: ``diffmath tour`` writes its figure and prints its table; bad arguments fail clearly."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from diffmath.cli import main
from diffmath.tour import run


def test_tour_runs_and_denoises(tmp_path, capsys):
    out = tmp_path / "tour.png"
    rows = run(out, n=600, seed=0, progress=False)
    assert out.stat().st_size > 20_000
    printed = capsys.readouterr().out
    assert "DDPM (eta=1)" in printed and "sliced W1" in printed
    by = {(r["model"], r["sampler"], r["steps"]): r for r in rows}
    floor = by[("data", "fresh data", 0)]["sliced_w1"]
    # the exact model's and the trained MLP's ancestral samplers restore every mode (1/8 +- 0.04 at n = 600)
    for model in ("exact", "MLP"):
        ddpm = by[(model, "DDPM (eta=1)", 1000)]
        assert ddpm["max_mode_dev"] < 0.04, model
        assert ddpm["sliced_w1"] < 2.5 * floor + 0.02, model
    # classifier-free guidance: w = 0 samples the requested class (under 5% outside its mode, close to the class
    # conditional); w = 1 leaves fewer outside
    # far outliers (lesson 20, sec. 20.8): none where DDPM's noise or the clip is at work; every number has its error
    for r in rows:
        if "DDPM" in r["sampler"] or "clipped" in r["sampler"]:
            assert r["outside"] == 0 and r["max_radius"] < 3.0, r
        assert 0 < r["sliced_w1_se"] < 0.1 and r["mmd_se"] > 0, r
    assert "Monte Carlo error (bootstrap SD)" in printed and "+-" in printed
    cfg0, cfg1 = by[("CFG MLP", "DDIM, CFG w=0, clipped", 100)], by[("CFG MLP", "DDIM, CFG w=1, clipped", 100)]
    assert cfg0["max_mode_dev"] < 0.05 and cfg0["sliced_w1"] < 2.5 * floor + 0.02
    assert cfg1["max_mode_dev"] <= cfg0["max_mode_dev"]
    # Poisson flow at 20 steps restores every mode (measured sliced W1 0.045 at n = 2000, floor 0.034)
    pfgm = by[("PFGM", "DPM-Solver++ (z)", 20)]
    assert pfgm["max_mode_dev"] < 0.04 and pfgm["sliced_w1"] < 2.5 * floor + 0.02
    # rectified flow: one reflow makes one Euler step as good as four were before (measured 0.076 vs 1.23 / 0.121)
    rf1, rf2 = by[("1-RF", "Euler", 1)], by[("2-RF", "Euler", 1)]
    assert rf2["sliced_w1"] < 0.2 * rf1["sliced_w1"] and rf2["sliced_w1"] < by[("1-RF", "Euler", 4)]["sliced_w1"]


def test_cli_entry_points():
    """The console entry point parses its arguments and fails clearly (the tour itself runs in the test above)."""
    ok = subprocess.run([sys.executable, "-m", "diffmath", "train"], capture_output=True, text=True)
    assert ok.returncode == 0 and "eight-gaussians-ddpm" in ok.stdout and "shapes-ddpm" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "diffmath", "tour", "--n", "3"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--n must be at least 10" in bad.stderr
    bad = subprocess.run([sys.executable, "-m", "diffmath", "fly"], capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
    bad = subprocess.run([sys.executable, "-m", "diffmath", "train", "mnist"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown recipe 'mnist'" in bad.stderr


def test_cli_train_lists_and_loads_recipes(capsys):
    assert main(["train"]) == 0
    assert "swiss-roll-ddpm" in capsys.readouterr().out
    assert main(["train", "eight-gaussians-ddpm", "--no-progress"]) == 0
    assert "3000 steps" in capsys.readouterr().out


def test_make_demo_writes_only_ignored_files():
    """``make demo`` must leave a checkout clean: the figure it writes goes to a git-ignored path."""
    root = Path(__file__).resolve().parents[1]
    demo = re.search(r"^demo:.*\n((?:\t.*\n)+)", (root / "Makefile").read_text(), re.M)
    assert demo, "Makefile has a demo target"
    outs = re.findall(r"--out\s+(\S+)", demo.group(1))
    assert outs, "the demo names its output with --out"
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    for out in outs:
        ignored = subprocess.run(["git", "-C", str(root), "check-ignore", "-q", out])
        assert ignored.returncode == 0, f"{out} is not git-ignored: make demo would dirty the checkout"


def test_cli_version_and_help():
    from diffmath import __version__

    out = subprocess.run([sys.executable, "-m", "diffmath", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"diffmath {__version__}"
    out = subprocess.run([sys.executable, "-m", "diffmath", "train", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--steps" in out.stdout and "(default: cpu)" in out.stdout


def test_cli_train_says_what_it_did(tmp_path, monkeypatch, capsys):
    """The recipe table shows where weights are; ``train`` says whether it trained, resumed or loaded."""
    monkeypatch.setenv("DIFFMATH_CACHE", str(tmp_path))
    assert main(["train"]) == 0
    table = capsys.readouterr().out
    rows = {line.split()[0]: line for line in table.splitlines()[1:] if line.strip() and "cache folder" not in line}
    assert "committed" in rows["shapes-ddpm"] and "not trained" in rows["eight-gaussians-ddpm"]
    assert f"cache folder: {tmp_path}" in table
    args = ["train", "eight-gaussians-ddpm", "--steps", "40", "--no-progress"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "eight-gaussians-ddpm: trained; 40 steps" in first and str(tmp_path) in first
    assert main(args) == 0
    assert "loaded from the cache; 40 steps" in capsys.readouterr().out
    assert main([*args, "--force"]) == 0
    assert "eight-gaussians-ddpm: trained; 40 steps" in capsys.readouterr().out
    with pytest.raises(SystemExit) as err:
        main(["train", "eight-gaussians-ddpm", "--steps", "0"])
    assert err.value.code == 2 and "--steps must be a positive integer" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--compile"], "--compile is for image recipes"),
        (["--precision", "fp8"], "invalid choice: 'fp8'"),
    ],
)
def test_cli_precision_and_compile_flags_are_checked(flags, message, capsys):
    """``--compile`` belongs to image recipes: a toy recipe with it, or an unknown precision, stops with argparse's
    usage error (exit status 2) naming the problem."""
    from diffmath.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["train", "moons-ddpm", *flags])
    assert stop.value.code == 2 and message in capsys.readouterr().err
