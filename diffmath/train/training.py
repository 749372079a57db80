r"""One training loop for every target (lesson 3, eq. 3.14): regress a model onto the (eps, x0, score, v or
velocity) target of $x_t = a_t x_0 + b_t\varepsilon$, with EMA, atomic checkpoints and resume.

The loop is a generator that yields each step's state, so a notebook can plot the loss as it goes; :func:`fit`
runs it to the end.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm import tqdm

from diffmath.core._io import content_sha256, load_data, save_data
from diffmath.core._validate import check_batch, check_int, check_nonempty, check_output
from diffmath.core.device import autocast, check_precision, resolve_device, unwrap
from diffmath.core.models import check_model
from diffmath.core.notation import Pair, from_pair
from diffmath.core.schedules import Schedule
from diffmath.train import distributed
from diffmath.train.distributed import Stopped

LossFn = Callable[[nn.Module, Tensor, "torch.Generator", "Tensor | None"], Tensor]
"""A training objective ``loss(model, batch, generator, cond) -> scalar``: what :func:`train` minimises."""


class Draws:
    r"""The one source of an objective's randomness (lesson 3, sec. 3.6): draws the *global* batch from one
    generator and keeps this rank's slice, so ``world_size`` processes of local batch $B$ together see exactly what
    one process of batch ``world_size`` $\cdot B$ sees.

    Draws happen on the generator's device (the CPU for torch's global generator, ``generator=None``) and are then
    moved to the requested device, so a CUDA run with a CPU generator trains on the CPU run's times and noise.

    Parameters
    ----------
    generator : torch.Generator, optional
        Source of randomness (``None``: torch's global generator).
    rank : int
        This process's index in ``0..world_size - 1``.
    world_size : int
        Number of processes sharing the global batch.

    Raises
    ------
    TypeError
        If ``generator`` is neither a ``torch.Generator`` nor ``None``.
    ValueError
        If ``world_size`` is not a positive integer or ``rank`` not an integer in ``[0, world_size)``.
    """

    def __init__(self, generator: torch.Generator | None = None, rank: int = 0, world_size: int = 1) -> None:
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        check_int(world_size, "world_size")
        if not isinstance(rank, int) or isinstance(rank, bool) or not 0 <= rank < world_size:
            raise ValueError(f"rank must be an integer in [0, {world_size}), got {rank!r}")
        self.generator, self.rank, self.world_size = generator, rank, world_size

    def draw(
        self,
        fn: Callable[[tuple[int, ...], torch.Generator | None, torch.dtype | None], Tensor],
        shape: tuple[int, ...],
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Draw ``fn(global_shape, generator, dtype)`` for the global batch and keep this rank's rows.

        Parameters
        ----------
        fn : callable
            ``fn(shape, generator, dtype) -> Tensor`` of that shape (a prior's ``sample``, a Cauchy sampler, ...).
        shape : tuple of int
            The local shape ``(B, ...)``; the global draw has ``world_size * B`` rows.
        dtype : torch.dtype, optional
            Dtype of the draw (``fn``'s default when ``None``).
        device : torch.device or str, optional
            Where the result goes (the generator's device when ``None``).

        Returns
        -------
        Tensor, shape ``shape``
            Rows ``rank * B`` to ``(rank + 1) * B`` of the global draw.
        """
        B = shape[0]
        out = fn((B * self.world_size, *shape[1:]), self.generator, dtype)
        if self.world_size > 1:
            out = out[self.rank * B : (self.rank + 1) * B]
        return out if device is None else out.to(device)

    def _on(self) -> torch.device:
        return self.generator.device if self.generator is not None else torch.device("cpu")

    def randn(self, shape: tuple[int, ...], dtype: torch.dtype | None = None, device=None) -> Tensor:
        """Standard normal draws of the local ``shape`` (B, ...), as :meth:`draw`.

        Parameters
        ----------
        shape : tuple of int
            ``(B, ...)``.
        dtype : torch.dtype, optional
            Floating dtype (torch's default when ``None``).
        device : torch.device or str, optional
            Where the result goes.

        Returns
        -------
        Tensor, shape ``shape``
            This rank's slice of the global draw.
        """
        return self.draw(lambda s, g, d: torch.randn(s, generator=g, dtype=d, device=self._on()), shape, dtype, device)

    def rand(self, shape: tuple[int, ...], dtype: torch.dtype | None = None, device=None) -> Tensor:
        """Uniform draws on [0, 1) of the local ``shape`` (B, ...), as :meth:`draw`.

        Parameters
        ----------
        shape : tuple of int
            ``(B, ...)``.
        dtype : torch.dtype, optional
            Floating dtype (torch's default when ``None``).
        device : torch.device or str, optional
            Where the result goes.

        Returns
        -------
        Tensor, shape ``shape``
            This rank's slice of the global draw.
        """
        return self.draw(lambda s, g, d: torch.rand(s, generator=g, dtype=d, device=self._on()), shape, dtype, device)

    def randint(self, low: int, high: int, shape: tuple[int, ...], device=None) -> Tensor:
        """Integers uniform on ``low..high - 1`` (int64) of the local ``shape`` (B, ...), as :meth:`draw`.

        Parameters
        ----------
        low, high : int
            The range, ``high`` excluded.
        shape : tuple of int
            ``(B, ...)``.
        device : torch.device or str, optional
            Where the result goes.

        Returns
        -------
        Tensor, shape ``shape``
            This rank's slice of the global draw.
        """
        on = self._on()
        return self.draw(lambda s, g, d: torch.randint(low, high, s, generator=g, device=on), shape, None, device)

    def __repr__(self) -> str:
        return f"Draws(rank={self.rank}, world_size={self.world_size})"


def as_draws(source: Draws | torch.Generator | None) -> Draws:
    """The :class:`Draws` an objective draws from (lesson 3, sec. 3.6): ``source`` itself, or a plain generator
    (or ``None``, torch's global one) wrapped as a single process's draws.

    Parameters
    ----------
    source : Draws or torch.Generator or None
        What the objective was given as ``generator``.

    Returns
    -------
    Draws
        The draws.

    Raises
    ------
    TypeError
        If ``source`` is none of these.
    """
    if isinstance(source, Draws):
        return source
    if source is None or isinstance(source, torch.Generator):
        return Draws(source)
    raise TypeError(f"generator must be a torch.Generator, a Draws or None, got {type(source).__name__}")


@dataclass
class TrainStep:
    """State after one optimiser step: step number (1-based), this step's loss, and the running models.

    Yielded by :func:`train` and returned by :func:`fit` (lesson 3, eq. 3.14). ``model`` is the network to sample
    from, as in the recipes' results (``train_toy(...).model``, ``train_image(...).model``): the EMA weights when an
    EMA is kept, else the trained network. The network the optimiser updates is ``raw_model``.

    Parameters
    ----------
    step : int
        Optimiser steps done, from 1.
    loss : float
        This step's minibatch loss.
    raw_model : nn.Module
        The network being trained (the optimiser's weights, not averaged).
    ema : nn.Module or None
        The exponential moving average of its weights, if kept.
    losses : list of float
        Every step's loss so far (across resumes).
    """

    step: int
    loss: float
    raw_model: nn.Module
    ema: nn.Module | None
    losses: list[float] = field(repr=False, default_factory=list)

    @property
    def model(self) -> nn.Module:
        """The network to sample from (lesson 3, sec. 3.6): ``ema`` when kept, else ``raw_model``."""
        return self.ema if self.ema is not None else self.raw_model

    def __repr__(self) -> str:
        params = sum(p.numel() for p in self.raw_model.parameters())
        return (
            f"TrainStep(step={self.step}, loss={self.loss:.4g}, raw_model={type(self.raw_model).__name__} ({params:,} "
            f"parameters), ema={'kept' if self.ema is not None else 'None'}; .model is the "
            f"{'EMA' if self.ema is not None else 'raw model'})"
        )


def diffusion_loss(
    model: nn.Module,
    x0: Tensor,
    schedule: Schedule,
    generator: Draws | torch.Generator | None = None,
    cond: Tensor | None = None,
) -> Tensor:
    r"""Monte Carlo estimate of $\mathbb E_{t, x_0, \varepsilon}\|f_\theta(x_t, t) - \text{target}\|^2 / d$
    (lesson 3, eq. 3.14).

    $t$ is uniform on $1..T$ (discrete) or $(0, t_{\max}]$ (continuous); the target is the model's own
    ``prediction`` kind computed from the true $(x_0, \varepsilon)$ (lesson 0, eqs. 0.2-0.4): for ``"eps"`` this
    is Ho's $\|\varepsilon - \epsilon_\theta(x_t, t)\|^2$.

    Parameters
    ----------
    model : nn.Module
        A model with the one interface; its ``prediction`` fixes the target.
    x0 : Tensor, shape (B, ...)
        A minibatch of data.
    schedule : Schedule
        The forward process.
    generator : torch.Generator or Draws, optional
        Source of the times and the noise (a :class:`Draws` to keep one rank's slice of a global batch); they are
        created on ``x0``'s device in its dtype.
    cond : Tensor, optional
        Condition passed to the model.

    Returns
    -------
    Tensor, shape ()
        The mean squared error, differentiable in the model's parameters.

    Raises
    ------
    TypeError
        If ``model`` does not follow the one interface, ``schedule`` is not a
        :class:`~diffmath.core.schedules.Schedule`, or ``x0`` is not a floating tensor.
    ValueError
        If ``x0`` is empty, has fewer than 2 dimensions or holds NaN or infinity, ``model.prediction`` is unknown (or
        ``"velocity"`` on a discrete schedule), or the model returns a tensor of another shape than its input (a
        (B, 1) or (1, d) output would broadcast against the target and train on nonsense).
    """
    kind = check_model(unwrap(model)).prediction
    t, eps, xt = _noise(_check_x0(x0, schedule), schedule, generator)
    c = schedule.coefficients(t)
    target = from_pair(Pair(x0, eps), kind, c.a, c.b, c.da, c.db)
    return ((check_output(model(xt, t, cond), xt) - target) ** 2).mean()


def noise_batch(
    x0: Tensor, schedule: Schedule, generator: Draws | torch.Generator | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Draw a training time per sample and noise it: $x_t = a_t x_0 + b_t\varepsilon$ (lesson 3, eq. 3.14).

    $t$ is uniform on $1..T$ (discrete schedules) or on $(0, t_{\max}]$ (continuous ones); every objective that
    trains on noised data (diffusion, NPR variance, noisy classifiers) draws its batch here.

    Parameters
    ----------
    x0 : Tensor, shape (B, ...)
        A minibatch of data.
    schedule : Schedule
        The forward process.
    generator : torch.Generator or Draws, optional
        Source of the times and the noise (a :class:`Draws` to keep one rank's slice of a global batch); they are
        created on ``x0``'s device in its dtype.

    Returns
    -------
    tuple of Tensor
        ``(t, eps, x_t)``: times of shape (B,), the noise and the noised batch (shape of ``x0``).

    Raises
    ------
    TypeError
        If ``schedule`` is not a :class:`~diffmath.core.schedules.Schedule` or ``x0`` is not a floating tensor.
    ValueError
        If ``x0`` is empty, has fewer than 2 dimensions or holds NaN or infinity.
    """
    return _noise(_check_x0(x0, schedule), schedule, generator)


def _check_x0(x0: object, schedule: object) -> Tensor:
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a diffmath Schedule, got {type(schedule).__name__}")
    return check_nonempty(check_batch(x0, "x0"), "x0")


def _noise(x0: Tensor, schedule: Schedule, generator: Draws | torch.Generator | None) -> tuple[Tensor, Tensor, Tensor]:
    draws, B = as_draws(generator), x0.shape[0]
    if schedule.discrete:
        t = draws.randint(1, int(schedule.t_max) + 1, (B,), x0.device).to(x0.dtype)
    else:
        t = schedule.t_max * (1.0 - draws.rand((B,), x0.dtype, x0.device))
    eps = draws.randn(x0.shape, x0.dtype, x0.device)
    c = schedule.coefficients(t)
    view = (B,) + (1,) * (x0.dim() - 1)
    return t, eps, c.a.reshape(view) * x0 + c.b.reshape(view) * eps


class DiffusionLoss:
    r"""The default objective of :func:`train`: :func:`diffusion_loss` on a fixed schedule (lesson 3, eq. 3.14).

    Parameters
    ----------
    schedule : Schedule
        The forward process.

    Raises
    ------
    TypeError
        If ``schedule`` is not a :class:`~diffmath.core.schedules.Schedule`.
    """

    def __init__(self, schedule: Schedule) -> None:
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a Schedule, got {type(schedule).__name__}")
        self.schedule = schedule

    def __call__(
        self, model: nn.Module, x0: Tensor, generator: Draws | torch.Generator, cond: Tensor | None = None
    ) -> Tensor:
        return diffusion_loss(model, x0, self.schedule, generator, cond)

    def __repr__(self) -> str:
        return f"diffusion_loss({self.schedule.name})"


def train(
    model: nn.Module,
    data: Tensor,
    schedule: Schedule | None,
    steps: int,
    batch_size: int = 256,
    lr: float = 1e-3,
    ema_decay: float | None = 0.999,
    seed: int = 0,
    labels: Tensor | None = None,
    label_dropout: float = 0.0,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 500,
    progress: bool = True,
    loss: LossFn | None = None,
    device: str | torch.device = "cpu",
    precision: str = "float32",
    dropout_per_label: bool = False,
    compile: bool | dict = False,
) -> Iterator[TrainStep]:
    r"""Train ``model`` on ``data`` with :func:`diffusion_loss` (or any other objective), yielding every step
    (lesson 3, eq. 3.14).

    The same loop trains every target of the course: diffusion predictions (the default), flow-matching
    velocities and Poisson fields pass their own ``loss``.

    Parameters
    ----------
    model : nn.Module
        A model with the one interface; its ``prediction`` fixes the regression target. With a custom ``loss``,
        any module (e.g. a noisy classifier).
    data : Tensor, shape (N, ...)
        The training set; minibatches are drawn with replacement.
    schedule : Schedule or None
        The forward process of :func:`diffusion_loss`; may be ``None`` when ``loss`` is given.
    steps : int
        Total optimiser steps (a resumed run continues up to this number).
    batch_size, lr : int, float
        Adam with a cosine decay of the learning rate to zero over ``steps``.
    ema_decay : float or None
        Exponential moving average of the weights, kept in ``TrainStep.ema`` (and then ``TrainStep.model``).
    seed : int
        Seeds the generator of minibatches, times and noise (its state is checkpointed).
    labels : Tensor of int, shape (N,) or (N, L), optional
        Class labels (one or ``L`` per sample) passed as ``cond``; with ``label_dropout`` > 0 a random fraction of
        the samples has all its labels replaced by the null label ``-1`` (for classifier-free guidance).
    label_dropout : float
        Fraction of labels replaced by the null label, in [0, 1).
    dropout_per_label : bool
        With labels of shape (N, L): drop each of the L labels independently with probability ``label_dropout``
        (so the network also learns every partial condition, e.g. shape alone), instead of all of a sample's.
    compile : bool or dict
        Run the training forward and backward passes through ``torch.compile`` (``True``, or a dict of its keyword
        arguments, e.g. ``{"mode": "max-autotune"}``); the EMA copy, the checkpoints and ``raw_model`` stay the bare
        network, so a compiled run resumes an uncompiled one and back.
    checkpoint : path, optional
        File for atomic checkpoints every ``checkpoint_every`` steps and at the end. If it exists, training
        resumes from it (it must come from the same model and settings, else ``ValueError``).
    checkpoint_every : int
        Steps between checkpoints.
    progress : bool
        Show a tqdm bar.
    loss : callable, optional
        ``loss(model, batch, generator, cond) -> Tensor`` of shape (): the objective on a minibatch of ``data``
        rows, drawing its randomness from ``generator``. Default: :func:`diffusion_loss` on ``schedule``. Its
        ``repr`` enters the checkpoint fingerprint, so give it a stable, informative one.
    device : {"cpu", "auto"} or str or torch.device
        Where the model (moved in place), the data, the EMA and every draw live (``"auto"`` is CUDA when
        available; :func:`~diffmath.core.device.resolve_device`). The generator stays on the CPU, so a run draws the
        same minibatches, times and noise on every device; checkpoints are portable across devices.
    precision : {"float32", "bf16"}
        ``"bf16"`` runs the loss under bfloat16 autocast (:func:`~diffmath.core.device.autocast`); weights, optimiser and
        EMA stay in the model's dtype.

    Notes
    -----
    In an initialised ``torch.distributed`` group of ``world_size`` > 1 processes (``torchrun``;
    :mod:`diffmath.train.distributed`) the model is wrapped in ``DistributedDataParallel`` and ``batch_size`` stays
    the *global* batch: every rank draws the whole batch's rows, label dropout, times and noise from the one seeded
    generator and keeps its slice (the objective receives a :class:`Draws` instead of the generator), so the run is
    the one-process run up to the order of float sums. ``TrainStep.loss`` is the global batch's loss; rank 0 alone
    reads and writes the checkpoint (the others receive it and wait at a barrier) and shows the bar; the checkpoint
    holds the global state, so a run resumes on any number of processes. After each step the ranks agree on
    :func:`~diffmath.train.distributed.stop_requested` (SIGTERM under
    :func:`~diffmath.train.distributed.stop_on_sigterm`): then the checkpoint is written and
    :class:`~diffmath.train.distributed.Stopped` is raised.

    Yields
    ------
    TrainStep
        After each step (a run resumed from a finished checkpoint yields its final state once).

    Raises
    ------
    TypeError
        If ``model`` does not follow the one interface (without ``loss``) or is not a trainable module (one with
        parameters that require grad: an exact model is not), ``data`` is not a floating tensor, ``seed`` is not
        an integer, ``checkpoint`` not a path, or ``loss`` returns something else than a scalar tensor that
        depends on the model's parameters.
    FileNotFoundError, PermissionError
        If the checkpoint's folder does not exist or cannot be written (checked before the first step).
    ValueError
        If ``data`` is empty, has fewer than 2 dimensions or holds NaN or infinity, ``steps``, ``batch_size`` or
        ``checkpoint_every`` is not a positive integer, ``lr`` is not a positive finite number, ``ema_decay`` lies
        outside (0, 1), ``label_dropout`` outside [0, 1), ``labels`` is not an integer tensor of shape (N,) or
        (N, L), both ``schedule`` and ``loss`` are ``None``, the checkpoint is unreadable or comes from another
        model or settings, the network's ``time.t_max`` differs from the schedule's ``t_max``, the loss becomes NaN
        or infinite, ``device`` is not a device (or CUDA is asked for and
        absent), ``precision`` is unknown, or ``batch_size`` is not a multiple of the world size.
    Stopped
        After the step at which a stop was requested, once its checkpoint is written.
    """
    dev, precision = resolve_device(device), check_precision(precision)
    if loss is None:
        check_model(unwrap(model))
        if schedule is None:
            raise ValueError("train needs a schedule (for diffusion_loss) or a loss function")
        loss = DiffusionLoss(schedule)
    _check_trainable(model)
    if not callable(loss):
        raise TypeError(f"loss must be callable as loss(model, batch, generator, cond), got {type(loss).__name__}")
    objective = repr(loss)
    data = check_nonempty(check_batch(data, "data"), "data")
    for name, v in (("steps", steps), ("batch_size", batch_size), ("checkpoint_every", checkpoint_every)):
        check_int(v, name)
    if not _real(lr) or not 0 < lr < math.inf:
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    if ema_decay is not None and (not _real(ema_decay) or not 0 < ema_decay < 1):
        raise ValueError(f"ema_decay must lie in (0, 1) or be None, got {ema_decay!r}")
    if not _real(label_dropout) or not 0 <= label_dropout < 1:
        raise ValueError(f"label_dropout must lie in [0, 1), got {label_dropout!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an integer, got {type(seed).__name__}")
    if checkpoint is not None and not isinstance(checkpoint, (str, Path)):
        raise TypeError(f"checkpoint must be a path (str or Path) or None, got {type(checkpoint).__name__}")
    world, rank = distributed.world_size(), distributed.rank()
    if batch_size % world:
        raise ValueError(f"batch_size {batch_size} (the global batch) must be a multiple of the world size {world}")
    if checkpoint is not None and rank == 0:  # fail now, not at the first checkpoint after checkpoint_every steps
        folder = Path(checkpoint).parent
        if folder.exists() and not folder.is_dir():
            raise FileNotFoundError(f"the checkpoint's folder {folder} is a file, not a folder: choose another path")
        if not folder.is_dir():
            raise FileNotFoundError(
                f"the checkpoint's folder {folder} does not exist: create it first "
                "(Path(folder).mkdir(parents=True)) or choose another path"
            )
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(f"cannot write checkpoints into {folder}: choose a folder you can write to")
    sched_of_loss = schedule if schedule is not None else getattr(loss, "schedule", None)
    t_emb = getattr(unwrap(model), "time", None)
    if isinstance(sched_of_loss, Schedule) and isinstance(getattr(t_emb, "t_max", None), float):
        if not math.isclose(t_emb.t_max, sched_of_loss.t_max):
            raise ValueError(
                f"the network's time embedding expects t in [0, {t_emb.t_max:g}] (t_max) but the schedule "
                f"{sched_of_loss.name!r} runs to {sched_of_loss.t_max:g}: build it with t_max=schedule.t_max"
            )
    if labels is not None and (
        not isinstance(labels, Tensor)
        or labels.dim() not in (1, 2)
        or labels.shape[0] != data.shape[0]
        or labels.is_floating_point()
        or labels.is_complex()
    ):
        raise ValueError(f"labels must be an integer tensor of shape (N,) or (N, L) with N = {data.shape[0]}")
    bare = unwrap(model)
    dtype = next(model.parameters()).dtype
    data = data.to(dtype)
    fingerprint = _fingerprint(bare, objective, batch_size, lr, ema_decay, seed, data, labels, label_dropout)
    if not isinstance(dropout_per_label, bool):
        raise TypeError(f"dropout_per_label must be a bool, got {type(dropout_per_label).__name__}")
    if dropout_per_label:
        fingerprint["dropout_per_label"] = True
    model.to(dev)
    data = data.to(dev)
    labels = None if labels is None else labels.to(dev)
    gen = torch.Generator().manual_seed(seed)
    draws, local = Draws(gen, rank, world), batch_size // world
    net = model
    if world > 1 and not isinstance(model, nn.parallel.DistributedDataParallel):
        ids = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if compile is not False:
        if not isinstance(compile, (bool, dict)):
            raise TypeError(
                f"compile must be a bool or a dict of torch.compile's arguments, got {type(compile).__name__}"
            )
        net = torch.compile(net, **(compile if isinstance(compile, dict) else {}))
    opt = torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * min(k, steps) / steps)))
    ema = copy.deepcopy(bare).requires_grad_(False) if ema_decay is not None else None
    params = list(bare.parameters())
    ema_params = list(ema.parameters()) if ema is not None else []
    start, losses = 0, []
    stored = checkpoint is not None and rank == 0 and Path(checkpoint).exists()
    ck = distributed.broadcast(read_checkpoint(checkpoint, _CHECKPOINT_KEYS) if stored else None)
    if ck is not None:
        start, losses = _load(checkpoint, ck, fingerprint, bare, ema, opt, sched, gen)
    if start >= steps:  # a finished run: report its final state once
        model.eval()
        yield TrainStep(start, losses[-1] if losses else math.nan, model, ema.eval() if ema else None, losses)
        return
    model.train()
    bar = tqdm(
        range(start, steps), initial=start, total=steps, disable=not progress or rank != 0, desc="train", leave=False
    )
    for k in bar:
        idx = draws.randint(0, data.shape[0], (local,), dev)
        cond = None
        if labels is not None:
            cond = labels[idx].clone()
            if label_dropout > 0:
                per = cond.shape[1:] if dropout_per_label else ()
                cond[draws.rand((local, *per), device=dev) < label_dropout] = -1
        with autocast(dev, precision):
            value = loss(net, data[idx], gen if world == 1 else draws, cond)
        if not isinstance(value, Tensor) or value.dim() != 0 or not value.requires_grad:
            got = f"shape {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
            raise TypeError(f"loss must return a scalar tensor that depends on the model's parameters, got {got}")
        if not torch.isfinite(value):
            raise ValueError(f"training loss became {value.item()} at step {k + 1}; lower the learning rate")
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        sched.step()
        if ema is not None:
            with torch.no_grad():
                torch._foreach_lerp_(ema_params, params, 1.0 - ema_decay)
        if world == 1:
            losses.append(value.item())
            stop = distributed.stop_requested()
        else:  # the global batch's loss, and a stop asked on any rank, in one all-reduce
            stat = torch.tensor([value.item(), float(distributed.stop_requested())], dtype=torch.float64, device=dev)
            torch.distributed.all_reduce(stat)
            losses.append(stat[0].item() / world)
            stop = stat[1].item() > 0
        if k % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
        if checkpoint is not None and ((k + 1) % checkpoint_every == 0 or k + 1 == steps or stop):
            if rank == 0:
                _save(checkpoint, fingerprint, k + 1, bare, ema, opt, sched, gen, losses)
            distributed.barrier()
        if stop:
            bar.close()
            raise Stopped(k + 1, checkpoint)
        yield TrainStep(k + 1, losses[-1], model, ema, losses)
    model.eval()
    if ema is not None:
        ema.eval()


def _real(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_trainable(model: object, name: str = "model", frozen_ok: bool = False) -> None:
    """Refuse what the optimiser cannot train: a non-module (an exact model), or a module without parameters
    (that require grad, unless ``frozen_ok``: a caller that unfreezes a copy)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{name} must be a trainable torch.nn.Module with parameters, got {type(model).__name__}")
    if not any(frozen_ok or p.requires_grad for p in model.parameters()):
        raise TypeError(
            f"{name} must be a trainable torch.nn.Module with parameters; {type(model).__name__} has no parameters"
            + ("" if frozen_ok else " that require grad")
        )


def fit(model: nn.Module, data: Tensor, schedule: Schedule | None, steps: int, **kwargs: object) -> TrainStep:
    """Run :func:`train` to the end and return its last state (lesson 3, eq. 3.14): ``.model`` is the network to sample
    from (the EMA weights when kept, as in ``train_toy(...).model``), ``.raw_model`` the trained network itself.

    Parameters
    ----------
    model : nn.Module
        A model with the one interface.
    data : Tensor, shape (N, ...)
        The training set.
    schedule : Schedule or None
        The forward process (``None`` when a ``loss`` is passed).
    steps : int
        Total optimiser steps.
    **kwargs
        Further arguments of :func:`train` (``batch_size``, ``lr``, ``ema_decay``, ``seed``, ``labels``,
        ``label_dropout``, ``checkpoint``, ``checkpoint_every``, ``progress``, ``loss``, ``device``,
        ``precision``).

    Returns
    -------
    TrainStep
        The state after the last step.

    Raises
    ------
    TypeError
        As :func:`train`: ``model`` does not follow the one interface or is not a trainable module, or ``data`` is
        not a floating tensor.
    ValueError
        As :func:`train`: invalid settings or data, an incompatible checkpoint, or a diverged loss.
    """
    *_, last = train(model, data, schedule, steps, **kwargs)
    return last


def _fingerprint(model, objective, batch_size, lr, ema_decay, seed, data, labels, label_dropout) -> dict:
    return {
        "model": type(model).__name__,
        "prediction": getattr(model, "prediction", None),
        "params": {k: list(v.shape) for k, v in model.state_dict().items()},
        "objective": objective,
        "batch_size": batch_size,
        "lr": lr,
        "ema_decay": ema_decay,
        "seed": seed,
        "data_shape": list(data.shape),
        "data_sha256": content_sha256(data),
        "labels_sha256": None if labels is None else content_sha256(labels),
        "label_dropout": label_dropout,
    }


def save_atomic(obj: object, path: str | Path) -> None:
    """``torch.save`` data with its SHA-256 to a temporary file in the same folder, then rename: a reader never sees
    half a file, and :func:`read_checkpoint` refuses a corrupted one (lesson 3, sec. 3.6).

    The file holds ``{"format": "diffmath-checkpoint/1", "sha256": ..., "payload": obj}``, the SHA-256 taken over
    the content of ``obj`` (:func:`diffmath.core._io.content_sha256`).

    Parameters
    ----------
    obj : object
        Data: tensors, None, bool, int, float, str, bytes, and lists, tuples and dicts of them (state dicts,
        optimiser states, generator states, losses, configurations). NumPy values are stored as Python numbers
        and tensors.
    path : str or Path
        Destination file.

    Raises
    ------
    TypeError
        If ``obj`` holds anything else (a module, a function, a set, ...): checkpoints are data, not code.
    """
    save_data(obj, path)


def _save(path, fingerprint, step, model, ema, opt, sched, gen, losses) -> None:
    save_atomic(
        {
            "fingerprint": fingerprint,
            "step": step,
            "model": model.state_dict(),
            "ema": None if ema is None else ema.state_dict(),
            "opt": opt.state_dict(),
            "lr_sched": sched.state_dict(),
            "generator": gen.get_state(),
            "losses": losses,
        },
        path,
    )


def read_checkpoint(path: str | Path, keys: tuple[str, ...] = ()) -> dict:
    """Load a file written by :func:`save_atomic` and check its SHA-256 (lesson 3, sec. 3.6).

    The file is read with ``torch.load(weights_only=True)``: tensors and plain data only, so a file that would
    construct other objects (run code) is refused before any is made. A dict saved by plain ``torch.save`` (a file
    from before checksums) loads unchecked.

    Parameters
    ----------
    path : str or Path
        The checkpoint file.
    keys : tuple of str
        Entries the dict must hold.

    Returns
    -------
    dict
        What was saved (for :func:`train`'s checkpoints: model, EMA, optimiser and generator states, losses).

    Raises
    ------
    FileNotFoundError
        If there is no file at ``path``.
    ValueError
        If the file is empty, truncated, not a torch file, holds anything but tensors and plain data, does not match
        its SHA-256 (corrupted), is not a dict or lacks one of ``keys``.
    """
    ck = load_data(path)
    if not isinstance(ck, dict):
        raise ValueError(f"checkpoint {path} holds a {type(ck).__name__}; expected a dict")
    missing = [k for k in keys if k not in ck]
    if missing:
        raise ValueError(f"checkpoint {path} lacks {', '.join(missing)}; expected a dict with {', '.join(keys)}")
    return ck


_CHECKPOINT_KEYS = ("fingerprint", "step", "model", "ema", "opt", "lr_sched", "generator", "losses")


def _load(path, ck, fingerprint, model, ema, opt, sched, gen) -> tuple[int, list[float]]:
    if ck["fingerprint"] != fingerprint:
        got = ck["fingerprint"] if isinstance(ck["fingerprint"], dict) else {}
        diff = sorted(k for k in fingerprint if got.get(k) != fingerprint[k])
        raise ValueError(f"checkpoint {path} belongs to another model or settings (differs in: {', '.join(diff)})")
    model.load_state_dict(ck["model"])
    if ema is not None:
        ema.load_state_dict(ck["ema"])
    opt.load_state_dict(ck["opt"])
    sched.load_state_dict(ck["lr_sched"])
    gen.set_state(ck["generator"])
    return ck["step"], list(ck["losses"])
