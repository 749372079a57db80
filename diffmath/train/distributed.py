r"""Several processes through ``torchrun`` (lesson 3, sec. 3.6): one process group, rank 0 writes, a clean stop.

``torchrun --nproc_per_node=N -m diffmath train RECIPE`` starts N copies of the command line; :func:`setup` reads
the environment torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) and
joins the process group (gloo on the CPU, nccl on CUDA). :func:`~diffmath.train.training.train` then sees the group
and wraps the model in ``DistributedDataParallel``; each step's *global* batch of ``batch_size`` rows, its times and
its noise are drawn from the one seeded generator on every rank and each rank keeps its slice
(:class:`~diffmath.train.training.Draws`), so the averaged gradient is the one-process gradient of the whole batch up
to the order of the float sums. Checkpoints and cached files are written by rank 0 alone (the others wait at a
barrier) and hold the global state, so a run resumes on any number of processes.

Without torchrun (no ``WORLD_SIZE`` in the environment) every helper here is a no-op for one process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

import torch
import torch.distributed as dist

from diffmath.core.device import resolve_device

STOPPED_EXIT_CODE = 143
"""Exit status of ``diffmath train`` stopped by SIGTERM after its final checkpoint: 128 + 15, what a shell reports
for a process ended by SIGTERM, so a scheduler sees the run as interrupted (not finished) and can requeue it."""

_STOP = threading.Event()


class Stopped(RuntimeError):
    """Raised by :func:`~diffmath.train.training.train` after the step at which a stop was requested (SIGTERM under
    :func:`stop_on_sigterm`, on any rank), once the final checkpoint is written (lesson 3, sec. 3.6).

    Parameters
    ----------
    step : int
        Optimiser steps done (the step stored in the checkpoint).
    checkpoint : str or Path or None
        The checkpoint file (``None`` when the run kept none: nothing to resume from).
    """

    def __init__(self, step: int, checkpoint: object) -> None:
        where = f"checkpoint {checkpoint}" if checkpoint is not None else "no checkpoint was kept"
        super().__init__(f"training stopped after step {step} on request; {where}")
        self.step, self.checkpoint = step, checkpoint


def in_torchrun() -> bool:
    """Whether this process was started by ``torchrun`` (or another launcher setting ``WORLD_SIZE`` and ``RANK``;
    lesson 3, sec. 3.6).

    Returns
    -------
    bool
        ``True`` when both variables are set.
    """
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def setup(device: object = "cpu") -> torch.device:
    """Join the process group torchrun describes, if any, and return this rank's device (lesson 3, sec. 3.6).

    Under torchrun, CUDA runs use ``cuda:LOCAL_RANK`` (made the current device) and the nccl backend; CPU runs use
    gloo. Outside torchrun, or when the group is already initialised, nothing is initialised.

    Parameters
    ----------
    device : {"cpu", "cuda", "auto"} or str or torch.device
        The device asked for (as :func:`~diffmath.core.device.resolve_device`).

    Returns
    -------
    torch.device
        Where this rank trains.

    Raises
    ------
    ValueError
        As :func:`~diffmath.core.device.resolve_device`; or if gloo (nccl) is not available in this torch build.
    """
    dev = resolve_device(device)
    if not in_torchrun() or (dist.is_available() and dist.is_initialized()):
        return dev
    backend = "nccl" if dev.type == "cuda" else "gloo"
    available = dist.is_available() and (dist.is_nccl_available() if backend == "nccl" else dist.is_gloo_available())
    if not available:
        raise ValueError(f"torchrun needs torch.distributed with the {backend} backend, which this torch build lacks")
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    dist.init_process_group(backend)
    return dev


def teardown() -> None:
    """Leave the process group if this process joined one (lesson 3, sec. 3.6)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    """This process's rank in the group (0 without one; lesson 3, sec. 3.6).

    Returns
    -------
    int
        The rank.
    """
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Number of processes in the group (1 without one; lesson 3, sec. 3.6).

    Returns
    -------
    int
        The world size.
    """
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """Whether this process writes files and prints: rank 0, or the only process (lesson 3, sec. 3.6).

    Returns
    -------
    bool
        ``rank() == 0``.
    """
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (a no-op for one process; lesson 3, sec. 3.6)."""
    if world_size() > 1:
        dist.barrier()


def broadcast(obj: object) -> object:
    """Rank 0's ``obj`` on every rank (``obj`` itself for one process; lesson 3, sec. 3.6).

    Used for what rank 0 alone reads (a checkpoint, a cached file), so the other ranks need no shared filesystem.

    Parameters
    ----------
    obj : object
        Picklable data on rank 0 (ignored on the others).

    Returns
    -------
    object
        Rank 0's ``obj``.
    """
    if world_size() == 1:
        return obj
    box = [obj if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def stop_requested() -> bool:
    """Whether a stop was requested in this process (by SIGTERM under :func:`stop_on_sigterm`, or
    :func:`request_stop`); :func:`~diffmath.train.training.train` checks it after every step (lesson 3, sec. 3.6).

    Returns
    -------
    bool
        The flag.
    """
    return _STOP.is_set()


def request_stop() -> None:
    """Ask :func:`~diffmath.train.training.train` to write its checkpoint and stop after the current step, as
    SIGTERM does under :func:`stop_on_sigterm` (lesson 3, sec. 3.6)."""
    _STOP.set()


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Within the block, SIGTERM requests a stop (:func:`request_stop`) instead of killing the process, so that
    training ends after its current step with a final checkpoint and raises :class:`Stopped` (lesson 3, sec. 3.6).

    torchrun forwards SIGTERM to every worker and waits 30 s before SIGKILL; the ranks agree on the stop through an
    all-reduce of their flags after each step, so they all stop at the same step. The previous handler and a clear
    flag are restored on leaving. Outside the main thread (where Python cannot install handlers) it does nothing.

    Returns
    -------
    contextlib.AbstractContextManager
        The ``with`` context.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: _STOP.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        _STOP.clear()
