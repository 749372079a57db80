"""Lesson 3, sec. 3.6: checkpoints are data, not code. No loading path runs pickled code; a corrupted, truncated or
foreign file is refused with a ValueError; a resume needs the same data; killed writers leave no lasting litter; two
processes training one recipe share one file."""

import os
import pickle
import signal
import struct
import subprocess
import sys
import textwrap
import time
import zipfile

import numpy as np
import pytest
import torch

import diffmath.core._io as dio
from diffmath.cli import main
from diffmath.core.schedules import get_schedule
from diffmath.nets.mlp import MLP
from diffmath.recipes import (
    image_recipe,
    recipe_hash,
    reflow_toy,
    toy_recipe,
    train_attribute_classifier,
    train_image,
    train_toy,
)
from diffmath.train.training import fit, read_checkpoint, save_atomic

SCHED = get_schedule("su-linear", T=100)
DATA = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))


class _Bomb:
    """Unpickling this calls ``open(target, "w")``: a file appears if the loader runs pickled code."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def _plant(path, target, writer="torch"):
    path.parent.mkdir(parents=True, exist_ok=True)
    obj = {"config": {}, "model": _Bomb(target), "losses": []}
    if writer == "torch":
        torch.save(obj, path)
    else:
        with open(path, "wb") as fh:
            pickle.dump(obj, fh)


def _tiny_mlp():
    torch.manual_seed(0)
    return MLP(2, hidden=16, depth=1, t_max=SCHED.t_max)


def _tiny_toy(**kw):
    return toy_recipe("swiss-roll-ddpm", **{"n_data": 256, "steps": 20, "hidden": 16, "depth": 1, **kw})


def _same(a, b):
    """Equal content: tensors bit for bit (dtype and shape too), containers item by item, a state dict's versions."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return (
            isinstance(b, dict)
            and list(a) == list(b)
            and all(_same(a[k], b[k]) for k in a)
            and getattr(a, "_metadata", None) == getattr(b, "_metadata", None)
        )
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    return type(a) is type(b) and a == b


# ------------------------------------------------------------------------------------------- no pickled code runs
@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_the_planted_pickle_runs_code_when_fully_unpickled(tmp_path, writer):
    """The test's malicious file is live: an unrestricted ``torch.load`` creates the target file."""
    _plant(tmp_path / "bomb.pt", tmp_path / "pwned", writer)
    if writer == "torch":
        torch.load(tmp_path / "bomb.pt", weights_only=False)
    else:
        with open(tmp_path / "bomb.pt", "rb") as fh:
            pickle.load(fh)
    assert (tmp_path / "pwned").exists()


@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_read_checkpoint_never_runs_pickled_code(tmp_path, writer):
    _plant(tmp_path / "bomb.pt", tmp_path / "pwned", writer)
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        read_checkpoint(tmp_path / "bomb.pt")
    assert not (tmp_path / "pwned").exists()


def test_resuming_train_never_runs_pickled_code(tmp_path):
    _plant(tmp_path / "run.ckpt", tmp_path / "pwned")
    with pytest.raises(ValueError, match="never unpickled"):
        fit(_tiny_mlp(), DATA, SCHED, 5, batch_size=8, checkpoint=tmp_path / "run.ckpt", progress=False)
    assert not (tmp_path / "pwned").exists()


def test_train_toy_never_runs_pickled_code_from_its_cache(tmp_path):
    config = _tiny_toy()
    _plant(tmp_path / "cache" / f"swiss-roll-ddpm-{recipe_hash(config)}.pt", tmp_path / "pwned")
    with pytest.raises(ValueError, match="never unpickled"):
        train_toy(config, progress=False, folder=tmp_path / "cache")
    assert not (tmp_path / "pwned").exists()


def test_train_image_never_runs_pickled_code_from_its_cache(tmp_path):
    config = image_recipe("shapes-rf", n_data=32, channels=[8, 16], attention=[False, True], steps=2)
    _plant(tmp_path / "cache" / f"shapes-rf-{recipe_hash(config)}.pt", tmp_path / "pwned")
    with pytest.raises(ValueError, match="never unpickled"):
        train_image(config, progress=False, folder=tmp_path / "cache")
    assert not (tmp_path / "pwned").exists()


def test_attribute_classifier_never_runs_pickled_code_from_its_cache(tmp_path):
    train_attribute_classifier("shapes", size=16, n=32, steps=1, progress=False, folder=tmp_path / "cache")
    (path,) = (tmp_path / "cache").glob("classifier-*.pt")
    _plant(path, tmp_path / "pwned")
    with pytest.raises(ValueError, match="never unpickled"):
        train_attribute_classifier("shapes", size=16, n=32, steps=1, progress=False, folder=tmp_path / "cache")
    assert not (tmp_path / "pwned").exists()


def test_reflow_never_runs_pickled_code_from_its_cache(tmp_path):
    """Round 0 is an (untrained) valid cache file; round 1's cached file is replaced by the malicious one."""
    config = toy_recipe("moons-rf")
    schedule = get_schedule(config["schedule"], **config["schedule_kwargs"])
    net = MLP(2, config["hidden"], config["depth"], "velocity", schedule.t_max)
    folder = tmp_path / "cache"
    save_atomic(
        {"config": config, "model": net.state_dict(), "losses": [1.0]}, folder / f"moons-rf-{recipe_hash(config)}.pt"
    )
    settings = {"num_pairs": 16, "steps": 2, "num_steps": 2, "method": "euler", "progress": False, "folder": folder}
    reflow_toy("moons-rf", 1, **settings)
    (path,) = folder.glob("moons-rf-reflow1-*.pt")
    _plant(path, tmp_path / "pwned")
    with pytest.raises(ValueError, match="never unpickled"):
        reflow_toy("moons-rf", 1, **settings)
    assert not (tmp_path / "pwned").exists()


def test_cli_train_never_runs_pickled_code_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFMATH_CACHE", str(tmp_path / "cache"))
    _plant(tmp_path / "cache" / f"swiss-roll-ddpm-{recipe_hash(toy_recipe('swiss-roll-ddpm'))}.pt", tmp_path / "pwned")
    with pytest.raises(ValueError, match="never unpickled"):
        main(["train", "swiss-roll-ddpm", "--no-progress"])
    assert not (tmp_path / "pwned").exists()


def test_save_atomic_stores_data_only(tmp_path):
    """Anything but tensors and plain data is refused on save, naming the entry; NumPy values are converted, so the
    file reads back with ``torch.load(weights_only=True)``."""
    with pytest.raises(TypeError, match=r"checkpoint\['f'\] is a builtin_function_or_method"):
        save_atomic({"f": print}, tmp_path / "a.pt")
    with pytest.raises(TypeError, match="a set"):
        save_atomic({"s": {1, 2}}, tmp_path / "a.pt")
    save_atomic({"x": np.float64(1.5), "a": np.arange(3), "t": (1, "two")}, tmp_path / "a.pt")
    got = read_checkpoint(tmp_path / "a.pt")
    assert type(got["x"]) is float and torch.equal(got["a"], torch.arange(3)) and got["t"] == (1, "two")
    assert torch.load(tmp_path / "a.pt", weights_only=True)["format"] == dio.FORMAT


def test_dicts_saved_before_checksums_still_load(tmp_path):
    """A dict saved by plain ``torch.save`` (the committed image checkpoints) loads, unchecked."""
    torch.save({"v": 1, "w": torch.ones(2)}, tmp_path / "old.pt")
    got = read_checkpoint(tmp_path / "old.pt", ("v", "w"))
    assert got["v"] == 1 and torch.equal(got["w"], torch.ones(2))


# ------------------------------------------------------------------------------------------------------ corruption
@pytest.fixture
def train_checkpoint(tmp_path):
    ck = tmp_path / "run.ckpt"
    fit(_tiny_mlp(), DATA, SCHED, 5, batch_size=8, ema_decay=0.9, checkpoint=ck, progress=False)
    return ck


def test_flipped_bytes_are_refused_or_load_identical(train_checkpoint, tmp_path):
    """Flip one byte at 30 positions spread over a real checkpoint of :func:`train`: each copy is refused with a
    ValueError or loads the same content. (Without the SHA-256, 85 of 168 such flips loaded silently different
    content, measured.)"""
    raw = train_checkpoint.read_bytes()
    original = read_checkpoint(train_checkpoint)
    refused = 0
    for i in range(30):
        pos = (i * len(raw)) // 30 + 7
        bad = bytearray(raw)
        bad[pos] ^= 0xFF
        (tmp_path / "bad.ckpt").write_bytes(bytes(bad))
        try:
            got = read_checkpoint(tmp_path / "bad.ckpt")
        except ValueError:
            refused += 1
            continue
        assert _same(original, got), pos
    assert refused >= 10  # most flips land in the pickled content or the tensors' bytes


def test_a_flipped_weight_bit_is_refused_on_resume(train_checkpoint):
    """The lowest bit of one weight (a tensor record of the zip file) flipped: the resume is refused."""
    with zipfile.ZipFile(train_checkpoint) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(train_checkpoint.read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
    raw[info.header_offset + 30 + name_len + extra_len] ^= 0x01
    train_checkpoint.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="checkpoint"):
        fit(_tiny_mlp(), DATA, SCHED, 10, batch_size=8, ema_decay=0.9, checkpoint=train_checkpoint, progress=False)


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("empty", "cannot read checkpoint"),
        ("truncated", "cannot read checkpoint"),
        ("text", "cannot read checkpoint"),
        ("tensor", "expected a dict"),
        ("list", "expected a dict"),
        ("none", "expected a dict"),
        ("dict missing keys", "lacks step"),
        ("checked dict missing keys", "lacks step"),
    ],
)
def test_files_that_are_not_train_checkpoints_are_refused_clearly(train_checkpoint, kind, message):
    raw = train_checkpoint.read_bytes()
    if kind == "empty":
        train_checkpoint.write_bytes(b"")
    elif kind == "truncated":
        train_checkpoint.write_bytes(raw[: len(raw) // 2])
    elif kind == "text":
        train_checkpoint.write_text("step: 5\nloss: 0.3\n")
    elif kind.endswith("dict missing keys"):
        payload = {k: v for k, v in read_checkpoint(train_checkpoint).items() if k != "step"}
        (save_atomic if kind.startswith("checked") else torch.save)(payload, train_checkpoint)
    else:
        torch.save({"tensor": torch.ones(3), "list": [1, 2], "none": None}[kind], train_checkpoint)
    with pytest.raises(ValueError, match=message):
        fit(_tiny_mlp(), DATA, SCHED, 10, batch_size=8, ema_decay=0.9, checkpoint=train_checkpoint, progress=False)


def test_a_cached_recipe_file_missing_keys_is_refused_clearly(tmp_path):
    config = _tiny_toy()
    save_atomic({"config": config}, tmp_path / f"swiss-roll-ddpm-{recipe_hash(config)}.pt")
    with pytest.raises(ValueError, match="lacks model, losses"):
        train_toy(config, progress=False, folder=tmp_path)


# ---------------------------------------------------------------------------------------------- resume: same data
def test_a_checkpoint_of_other_data_of_the_same_shape_is_refused(tmp_path):
    ck = tmp_path / "run.ckpt"
    fit(_tiny_mlp(), DATA, SCHED, 5, batch_size=8, checkpoint=ck, progress=False)
    with pytest.raises(ValueError, match=r"differs in: data_sha256\)"):
        fit(_tiny_mlp(), DATA.flip(0), SCHED, 10, batch_size=8, checkpoint=ck, progress=False)
    labels = torch.arange(64) % 2
    ck = tmp_path / "labelled.ckpt"
    torch.manual_seed(0)
    net = MLP(2, hidden=16, depth=1, t_max=SCHED.t_max, num_classes=2)
    fit(net, DATA, SCHED, 5, batch_size=8, labels=labels, checkpoint=ck, progress=False)
    with pytest.raises(ValueError, match=r"differs in: labels_sha256\)"):
        fit(net, DATA, SCHED, 10, batch_size=8, labels=1 - labels, checkpoint=ck, progress=False)
    fit(net, DATA, SCHED, 10, batch_size=8, labels=labels, checkpoint=ck, progress=False)  # the same data resumes
    assert read_checkpoint(ck)["step"] == 10


# --------------------------------------------------------------------------------------------- abandoned temp files
def test_a_killed_writers_temporary_file_is_removed_by_the_next_write(tmp_path):
    """A writer killed inside ``atomic_write`` leaves ``.diffmath-tmp-<host>-<pid>-...``; the next write into the
    folder removes it (its writer is gone), but keeps a live writer's, a recent one of another machine and other
    dotfiles; one of another machine older than an hour goes too."""
    script = textwrap.dedent(f"""
        import os, signal
        from diffmath.core._io import atomic_write

        def write(tmp):
            with open(tmp, "wb") as fh:
                fh.write(b"half")
            os.kill(os.getpid(), signal.SIGKILL)

        atomic_write({str(tmp_path / "x.pt")!r}, write)
    """)
    proc = subprocess.run([sys.executable, "-c", script])
    assert proc.returncode == -signal.SIGKILL
    (killed,) = tmp_path.glob(".diffmath-tmp-*")
    live = tmp_path / f".diffmath-tmp-{dio._HOST}-{os.getpid()}-y-abc.pt"
    recent = tmp_path / ".diffmath-tmp-0000beef-1-y-abc.pt"
    old = tmp_path / ".diffmath-tmp-0000beef-2-y-abc.pt"
    other = tmp_path / ".hidden"
    for f in (live, recent, old, other):
        f.write_bytes(b"half")
    os.utime(old, (time.time() - 2 * dio.STALE_AFTER,) * 2)
    save_atomic({"v": 1}, tmp_path / "x.pt")
    assert not killed.exists() and not old.exists()
    assert live.exists() and recent.exists() and other.exists()
    assert read_checkpoint(tmp_path / "x.pt") == {"v": 1}


# ------------------------------------------------------------------------------------------ concurrent recipe runs
def test_two_processes_training_one_recipe_share_one_file(tmp_path):
    """Two processes ask for the same recipe in the same folder at the same moment (a file barrier): both succeed,
    exactly one trains (under the lock; the other waits, then loads), and the file holds what a single run stores."""
    config = _tiny_toy(steps=300, n_data=1024, batch_size=64)
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        import torch
        import diffmath.recipes as recipes
        from diffmath.core._io import content_sha256

        fit = recipes.fit

        def announced_fit(*args, **kwargs):
            print("trained")
            return fit(*args, **kwargs)

        recipes.fit = announced_fit
        torch.set_num_threads(1)
        me, other = Path({str(tmp_path)!r}) / f"ready{{sys.argv[1]}}", Path({str(tmp_path)!r}) / f"ready{{1 - int(sys.argv[1])}}"
        me.touch()
        deadline = time.time() + 120
        while not other.exists() and time.time() < deadline:
            time.sleep(0.01)
        tm = recipes.train_toy({config!r}, progress=False, folder={str(tmp_path / "shared")!r})
        print(content_sha256(tm.model.state_dict()))
    """)
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(i)], stdout=subprocess.PIPE, text=True) for i in (0, 1)
    ]
    outs = [p.communicate(timeout=300)[0].split() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert sorted(len(out) for out in outs) == [1, 2]  # one printed "trained", both printed their weights' hash
    single = train_toy(config, progress=False, folder=tmp_path / "single")
    shared = read_checkpoint(tmp_path / "shared" / single.path.name, ("config", "model", "losses"))
    assert _same(shared, read_checkpoint(single.path))
    assert [out[-1] for out in outs] == [dio.content_sha256(single.model.state_dict())] * 2
    assert sorted(p.name for p in (tmp_path / "shared").iterdir()) == [single.path.name, single.path.name + ".lock"]


# --------------------------------------------------------------------------------------------------------- threads
def test_cli_trains_toy_recipes_on_one_thread(tmp_path, monkeypatch):
    """``diffmath train <toy recipe>`` pins one torch thread, so its cached file does not depend on the core count."""
    import diffmath.recipes as recipes

    seen = []

    def fake_train_toy(name, progress=True, folder=None, **kwargs):
        seen.append(torch.get_num_threads())
        return recipes.ToyModel(None, None, None, {}, tmp_path / "fake.pt", [1.0, 0.5])

    monkeypatch.setenv("DIFFMATH_CACHE", str(tmp_path))
    monkeypatch.setattr(recipes, "train_toy", fake_train_toy)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert main(["train", "moons-ddpm", "--no-progress"]) == 0
    finally:
        torch.set_num_threads(threads)
    assert seen == [1]


def test_a_missing_checkpoint_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        read_checkpoint(tmp_path / "absent.pt")


def test_a_recipe_of_the_other_family_names_the_right_function():
    from diffmath.recipes import train_image, train_toy

    with pytest.raises(ValueError, match=r"image recipe: use train_image\('shapes-ddpm'\)"):
        train_toy("shapes-ddpm")
    with pytest.raises(ValueError, match=r"toy recipe: use train_toy\('eight-gaussians-ddpm'\)"):
        train_image("eight-gaussians-ddpm")
