"""Several processes through torchrun (lesson 3, sec. 3.6; diffmath.train.distributed): two gloo processes on the
CPU train the one-process weights, rank 0 alone writes, and a run stopped by SIGTERM resumes on one process.

Each test starts real ``torchrun --standalone`` jobs (a free port is picked by torchrun), as users run them.
Measured on 2 shared CPU cores: 2 processes vs 1 agree to a max abs weight difference of 2.4e-7 in float32 (40
steps of the moons recipe: the order of the float sums in the gradient all-reduce) and to ~1e-16 in float64.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from diffmath.train.training import read_checkpoint

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available in this torch build",
)

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
RECIPE = ["train", "moons-ddpm", "--steps", "40", "--no-progress"]

# the command line under torchrun, with save_atomic spied on: each rank logs the files it writes
SPY = """
import os, sys
import diffmath.recipes as recipes
import diffmath.train.training as training
from diffmath.cli import main

log = open(os.path.join(sys.argv[1], f"writes-{os.environ.get('RANK', '0')}.txt"), "w")
for module in (recipes, training):
    def spy(obj, path, original=module.save_atomic):
        log.write(f"{path}\\n")
        log.flush()
        original(obj, path)
    module.save_atomic = spy
sys.exit(main(sys.argv[2:]))
"""

# train() on a float64 MLP; after step 12 rank 0 marks it and every step slows down, so that SIGTERM lands mid-run
RESUMABLE = """
import os, sys, time
import torch
import diffmath as dm
import toydata as td
from diffmath.nets.mlp import MLP
from diffmath.train import distributed
from diffmath.train.training import train

torch.set_num_threads(1)
folder, checkpoint = sys.argv[1], sys.argv[2]
distributed.setup("cpu")
data = td.sample("moons", 512, torch.Generator().manual_seed(0)).double()
torch.manual_seed(0)
model = MLP(2, 32, 2, "eps", 1000.0).double()
try:
    with distributed.stop_on_sigterm():
        for state in train(model, data, dm.su_linear(), 30, batch_size=32, lr=3e-3, ema_decay=0.9,
                           checkpoint=checkpoint, checkpoint_every=1000, progress=False):
            if state.step == 12 and distributed.is_main() and os.environ.get("MARK"):
                open(os.path.join(folder, "step12"), "w").close()
            if state.step >= 12 and os.environ.get("MARK"):
                time.sleep(0.5)
except distributed.Stopped as stop:
    print(f"stopped at {stop.step}", flush=True)
    sys.exit(distributed.STOPPED_EXIT_CODE)
finally:
    distributed.teardown()
"""


def _env(cache: Path) -> dict:
    return {**os.environ, "DIFFMATH_CACHE": str(cache), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _run(cmd: list[str], cache: Path, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, env=_env(cache), capture_output=True, text=True, timeout=180, **kwargs)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def _stored(cache: Path) -> dict:
    (path,) = cache.glob("moons-ddpm-*.pt")
    return read_checkpoint(path)["model"]


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The moons recipe for 40 steps (global batch 512): once on one process, once on two through torchrun."""
    one, two = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("two")
    _run([sys.executable, "-m", "diffmath", *RECIPE], one)
    spy = two / "spy.py"
    spy.write_text(SPY)
    done = _run([*TORCHRUN, str(spy), str(two), *RECIPE], two)
    return one, two, done


def test_two_gloo_processes_train_the_one_process_weights(runs):
    """Same global batch, same draws: the stored EMA weights of 2 ranks equal 1 process's to float32 rounding of
    the gradient all-reduce (measured 2.4e-7), and the command line printed once (rank 0)."""
    one, two, done = runs
    assert _max_diff(_stored(one), _stored(two)) < 2e-6
    assert done.stdout.count("weights:") == 1 and done.stdout.count("moons-ddpm: trained; 40 steps") == 1


def test_only_rank_0_writes_the_checkpoint_and_the_cache_file(runs):
    """Rank 1 writes nothing; rank 0 wrote the final checkpoint, then the cache file (and removed the checkpoint)."""
    _, two, _ = runs
    assert (two / "writes-1.txt").read_text() == ""
    written = [Path(p).name for p in (two / "writes-0.txt").read_text().split()]
    assert [Path(p).suffix for p in written] == [".ckpt", ".pt"], written
    assert not list(two.glob("*.ckpt")) and len(list(two.glob("moons-ddpm-*.pt"))) == 1


def test_a_two_process_run_stopped_by_sigterm_resumes_on_one_process(tmp_path):
    """SIGTERM to the torchrun process group mid-run: both ranks stop at the same step, rank 0 writes the final
    checkpoint, the job exits non-zero; one plain process resumes it and ends on the weights of an uninterrupted
    one-process run (float64: agreement to 1e-12, measured ~1e-16)."""
    script = tmp_path / "resumable.py"
    script.write_text(textwrap.dedent(RESUMABLE))
    ckpt, whole = tmp_path / "run.ckpt", tmp_path / "whole.ckpt"
    job = subprocess.Popen(
        [*TORCHRUN, str(script), str(tmp_path), str(ckpt)],
        env={**_env(tmp_path), "MARK": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while not (tmp_path / "step12").exists() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (tmp_path / "step12").exists(), job.communicate()[0] if job.poll() is not None else "no step 12"
    os.killpg(job.pid, signal.SIGTERM)
    out = job.communicate(timeout=120)[0]
    assert job.returncode != 0, out
    stopped = read_checkpoint(ckpt)["step"]
    assert 12 <= stopped < 30, out
    assert out.count(f"stopped at {stopped}") == 2, out  # the two ranks agreed on the step
    _run([sys.executable, str(script), str(tmp_path), str(ckpt)], tmp_path)
    _run([sys.executable, str(script), str(tmp_path), str(whole)], tmp_path)
    resumed, straight = read_checkpoint(ckpt), read_checkpoint(whole)
    assert resumed["step"] == straight["step"] == 30
    assert resumed["model"]["inp.weight"].dtype == torch.float64
    for part in ("model", "ema"):
        assert _max_diff(resumed[part], straight[part]) < 1e-12
    assert resumed["generator"].equal(straight["generator"])


def test_diffmath_train_stopped_by_sigterm_checkpoints_exits_143_and_resumes(tmp_path, monkeypatch, capsys):
    """One process: SIGTERM during ``diffmath train`` ends the step, writes the checkpoint (no cache file), exits
    143 with how to resume; the same command resumes and stores the weights of an uninterrupted run, bit for bit."""
    import diffmath.recipes as recipes
    from diffmath.cli import main
    from diffmath.train.distributed import STOPPED_EXIT_CODE

    fit = recipes.fit

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # before the first step: the handler of `diffmath train` catches it
        return fit(*args, **kwargs)

    args = ["train", "moons-ddpm", "--steps", "6", "--no-progress"]
    monkeypatch.setenv("DIFFMATH_CACHE", str(tmp_path / "stopped"))
    monkeypatch.setattr(recipes, "fit", signalled)
    assert main(args) == STOPPED_EXIT_CODE
    assert "stopped by SIGTERM after step 1" in capsys.readouterr().err
    (ckpt,) = (tmp_path / "stopped").glob("*.ckpt")
    assert read_checkpoint(ckpt)["step"] == 1 and not list((tmp_path / "stopped").glob("*.pt"))
    monkeypatch.setattr(recipes, "fit", fit)
    assert main(args) == 0 and "resumed from its last checkpoint" in capsys.readouterr().out
    monkeypatch.setenv("DIFFMATH_CACHE", str(tmp_path / "straight"))
    assert main(args) == 0
    resumed, straight = (read_checkpoint(next((tmp_path / d).glob("*.pt"))) for d in ("stopped", "straight"))
    assert resumed["losses"] == straight["losses"]
    assert all(torch.equal(resumed["model"][k], straight["model"][k]) for k in straight["model"])
