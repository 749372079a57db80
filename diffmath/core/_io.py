"""Files that are data, not code (lesson 3, sec. 3.6): atomic writes, per-file locks and checksummed checkpoints.

- :func:`atomic_write` writes to a temporary file ``.diffmath-tmp-<host>-<pid>-...`` in the target's folder, then
  renames it over the target. A writer killed mid-way leaves its temporary file behind; the next write into that
  folder removes the temporary files of writers that are no longer running on this machine, and any older than
  :data:`STALE_AFTER` seconds (those of other machines sharing the folder).
- :func:`file_lock` holds an exclusive ``fcntl.flock`` on ``<file>.lock`` (the lock file stays: removing it would
  let two processes lock two different files).
- :func:`save_data` stores ``{"format": FORMAT, "sha256": ..., "payload": obj}`` with ``torch.save``; the SHA-256
  is taken over the payload's content (every tensor's dtype, shape and bytes, every number, string and container).
  :func:`load_data` reads it back with ``torch.load(weights_only=True)`` (tensors and plain data only: nothing is
  ever unpickled as code) and refuses any file whose content does not match its SHA-256.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import socket
import tempfile
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

FORMAT = "diffmath-checkpoint/1"
"""The ``format`` entry of every file :func:`save_data` writes."""

STALE_AFTER = 3600.0
"""Seconds after which a temporary file of :func:`atomic_write` counts as abandoned, whoever wrote it."""

_TMP = ".diffmath-tmp-"
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def atomic_write(path: str | Path, write: Callable[[str], object]) -> Path:
    """Call ``write(tmp_path)`` and move the result onto ``path`` in one rename; a reader never sees half a file,
    and a failed write leaves the old file and no temporary file behind (lesson 3, sec. 3.6).

    Parameters
    ----------
    path : str or Path
        Destination file; its folder is created if needed.
    write : callable
        ``write(tmp_path)`` writes the whole file to ``tmp_path`` (which has the suffix of ``path``).

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{_TMP}{_HOST}-{os.getpid()}-{path.stem}-", suffix=path.suffix)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the permissions open() would
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _remove_abandoned(folder: Path) -> None:
    now = time.time()
    for tmp in folder.glob(f"{_TMP}*"):
        host, pid, *_ = [*tmp.name[len(_TMP) :].split("-"), "", ""]
        try:
            if (host == _HOST and pid.isdigit() and not _running(int(pid))) or now - tmp.stat().st_mtime > STALE_AFTER:
                tmp.unlink()
        except FileNotFoundError:  # renamed or removed by its writer meanwhile
            pass


def _running(pid: int) -> bool:
    if os.name != "posix":  # os.kill(pid, 0) would terminate the process on Windows; rely on the age alone
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        pass
    return True


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on ``<path>.lock`` for the ``with`` block (``fcntl.flock``; a no-op where the
    platform has no ``fcntl``), so that one process at a time looks up, trains and stores ``path``.

    Parameters
    ----------
    path : str or Path
        The file to guard; its folder is created if needed.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks in the standard library
        yield
        return
    lock = Path(f"{path}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


_SCALARS = (type(None), bool, int, float, str, bytes)


def _plain(obj: object, where: str) -> object:
    """``obj`` as tensors, scalars, lists, tuples and dicts only (NumPy scalars and arrays converted), so that
    ``torch.load(weights_only=True)`` reads it back; ``TypeError`` naming the entry otherwise."""
    if isinstance(obj, torch.Tensor):
        return obj.detach()
    if type(obj) in _SCALARS:
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, dict):
        out = OrderedDict() if isinstance(obj, OrderedDict) else {}
        for k, v in obj.items():
            out[_plain(k, where)] = _plain(v, f"{where}[{k!r}]")
        if hasattr(obj, "_metadata"):  # a module's state dict: the versions load_state_dict reads
            out._metadata = _plain(obj._metadata, f"{where}._metadata")
        return out
    if isinstance(obj, (list, tuple)):
        items = [_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    raise TypeError(
        f"{where} is a {type(obj).__name__}; a checkpoint holds only tensors, None, bool, int, float, str, bytes, "
        "and lists, tuples and dicts of them"
    )


def content_sha256(obj: object) -> str:
    """SHA-256 of the content of ``obj`` (tensors, scalars, lists, tuples, dicts): each tensor's dtype, shape and
    bytes, each scalar's type and ``repr``, each container's type, length and items in order (lesson 3, sec. 3.6).

    Parameters
    ----------
    obj : object
        Plain data, as :func:`save_data` stores it.

    Returns
    -------
    str
        64 hex digits.

    Raises
    ------
    TypeError
        If ``obj`` holds anything else.
    """
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def _feed(h, obj: object) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous().reshape(-1)
        h.update(f"T{t.dtype}{list(obj.shape)}:".encode())
        h.update(t.view(torch.uint8).numpy())
    elif type(obj) in _SCALARS:
        text = repr(obj).encode()
        h.update(f"{type(obj).__name__}{len(text)}:".encode() + text)
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}:".encode())
        for k, v in obj.items():
            _feed(h, k)
            _feed(h, v)
        if hasattr(obj, "_metadata"):
            h.update(b"M")
            _feed(h, obj._metadata)
    elif isinstance(obj, (list, tuple)):
        h.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)}:".encode())
        for v in obj:
            _feed(h, v)
    else:
        raise TypeError(f"cannot hash a {type(obj).__name__}: expected tensors, scalars, lists, tuples and dicts")


def save_data(obj: object, path: str | Path) -> Path:
    """Store ``obj`` atomically as ``{"format": FORMAT, "sha256": content_sha256(obj), "payload": obj}``.

    Parameters
    ----------
    obj : object
        Tensors, None, bool, int, float, str, bytes, and lists, tuples and dicts of them (NumPy values become
        Python numbers and tensors).
    path : str or Path
        Destination file.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    TypeError
        If ``obj`` holds anything else (a module, a function, a set, ...).
    """
    payload = _plain(obj, "checkpoint")
    wrapper = {"format": FORMAT, "sha256": content_sha256(payload), "payload": payload}
    return atomic_write(path, lambda tmp: torch.save(wrapper, tmp))


def load_data(path: str | Path) -> object:
    """Read a file of :func:`save_data` (tensors and plain data only) and check its SHA-256; return its payload.

    A plain dict saved by ``torch.save`` (a file written before checksums) is returned as it is, unchecked.

    Parameters
    ----------
    path : str or Path
        The file.

    Returns
    -------
    object
        The payload.

    Raises
    ------
    FileNotFoundError
        If there is no file at ``path``.
    ValueError
        If the file is empty, truncated, not a torch file, holds anything but tensors and plain data (such objects
        are never constructed), is not a dict, or its content does not match its SHA-256.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"no checkpoint file at {path} (expected a file written by save_atomic)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torch's remarks on odd pickles; a failure raises below
            ck = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # weights_only met a class or function: nothing was constructed
        raise ValueError(
            f"cannot read checkpoint {path}: it holds objects other than tensors and plain data, which are never "
            "unpickled; expected a file written by diffmath.train.training.save_atomic"
        ) from err
    except Exception as err:  # empty, truncated or foreign: torch's own reason is in the chained exception
        raise ValueError(
            f"cannot read checkpoint {path}: it is empty, truncated or not a torch file; expected a file of tensors "
            "and plain data written by diffmath.train.training.save_atomic (or torch.save)"
        ) from err
    if not isinstance(ck, dict):
        raise ValueError(f"cannot read checkpoint {path}: expected a dict, got a {type(ck).__name__}")
    if not {"format", "sha256", "payload"} & set(ck):
        return ck  # written before checksums
    if ck.get("format") != FORMAT or set(ck) != {"format", "sha256", "payload"} or not isinstance(ck["sha256"], str):
        raise ValueError(f"cannot read checkpoint {path}: expected format {FORMAT!r} with a sha256 and a payload")
    try:
        digest = content_sha256(ck["payload"])
    except TypeError as err:
        raise ValueError(f"cannot read checkpoint {path}: {err}") from err
    if digest != ck["sha256"]:
        raise ValueError(f"checkpoint {path} is corrupted: its content does not match its SHA-256; delete it")
    return ck["payload"]
