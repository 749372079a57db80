"""The main job: ``diffmath tour`` writes its figure and prints its table; bad arguments fail clearly."""

import subprocess
import sys

from diffmath.cli import main
from diffmath.tour import run


def test_tour_runs_and_denoises(tmp_path, capsys):
    out = tmp_path / "tour.png"
    rows = run(out, n=600, seed=0, progress=False)
    assert out.stat().st_size > 20_000
    printed = capsys.readouterr().out
    assert "DDPM (eta=1)" in printed and "sliced W1" in printed
    by = {(r["sampler"], r["steps"]): r for r in rows}
    ddpm = by[("DDPM (eta=1)", 1000)]
    # the exact model's ancestral sampler restores every mode's weight (1/8 +- 0.04 at n = 600)
    assert ddpm["max_mode_dev"] < 0.04
    assert ddpm["sliced_w1"] < 2.5 * by[("data vs fresh data", 0)]["sliced_w1"] + 0.02


def test_cli_entry_points(tmp_path):
    assert main(["tour", "--out", str(tmp_path / "t.png"), "--n", "200", "--no-progress"]) == 0
    bad = subprocess.run([sys.executable, "-m", "diffmath", "tour", "--n", "3"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--n must be at least 10" in bad.stderr
    bad = subprocess.run([sys.executable, "-m", "diffmath", "fly"], capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
