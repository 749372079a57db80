r"""Named, reproducible training recipes, cached by the hash of their configuration (lesson 3, sec. 3.6).

``train_toy("swiss-roll-ddpm")`` trains once (seconds on one CPU thread), stores the EMA weights under the cache
folder (``$DIFFMATH_CACHE``, default ``~/.cache/diffmath``) in a file named after the recipe and the hash of its
configuration, and loads them on every later call. An interrupted run resumes from its checkpoint. Every trained
artefact of the library goes through the one flow :func:`cached` (look up, else train, store atomically, under a
per-file lock): the toy recipes (:func:`train_toy`), their reflows (:func:`reflow_toy`, lesson 17), the image
recipes (:func:`train_image`, lesson 20) and the attribute classifier that judges image samples
(:func:`train_attribute_classifier`, lesson 20).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from diffmath.core._io import atomic_write, file_lock
from diffmath.core._validate import check_int
from diffmath.core.device import check_precision, model_device
from diffmath.core.schedules import Schedule, get_schedule
from diffmath.flows import FlowMatchingLoss, reflow_pairs
from diffmath.guide.compose import Clipped
from diffmath.metrics import (
    AttributeClassifier,
    _AttributeLoss,
    _DenoisedAttributeLoss,
    frechet_distance,
    kernel_distance,
)
from diffmath.nets.mlp import MLP
from diffmath.nets.unet import UNet
from diffmath.ode import ode_sample
from diffmath.pfgm import PoissonLoss, pfgm_grid, pfgm_sample
from diffmath.train import distributed
from diffmath.train.training import DiffusionLoss, TrainStep, fit, read_checkpoint, save_atomic, train
from diffmath.udm import CORRUPTIONS, RestorationLoss, get_corruption

_CACHED = ("model", "losses")  # the entries of a cached recipe file besides its configuration

_BASE = {
    "n_data": 20000,
    "data_seed": 0,
    "schedule": "su-linear",
    "schedule_kwargs": {"T": 1000},
    "prediction": "eps",
    "hidden": 64,
    "depth": 3,
    "steps": 3000,
    "batch_size": 512,
    "lr": 3e-3,
    "ema_decay": 0.995,
    "seed": 0,
    "objective": "diffusion",
    "objective_kwargs": {},
}
_RF = {  # rectified flow (lesson 17): velocity regression on the straight path
    **_BASE,
    "schedule": "rectified-flow",
    "schedule_kwargs": {},
    "prediction": "velocity",
    "objective": "flow-matching",
}
_PFGM = {  # lesson 13: Poisson flow as the path a x0 + b c (c Cauchy, clipped) on the cosine schedule, v-prediction;
    # the minibatch's field as target, z = b/a log-uniform over the sampling grid's heights (eqs. 13.15, 13.18-13.19)
    **_BASE,
    "schedule": "vp-cosine",
    "schedule_kwargs": {},
    "prediction": "v",
    "objective": "pfgm",
    "objective_kwargs": {"max_radius": 5.0, "target": "batch", "z_range": [0.002, 40.0]},
}
OBJECTIVES: dict[str, Callable] = {
    "diffusion": DiffusionLoss,
    "pfgm": PoissonLoss,
    "flow-matching": FlowMatchingLoss,
    "restore": RestorationLoss,
}
"""Training objectives a recipe can name: each a factory, called as ``Factory(schedule, **objective_kwargs)`` to give
the ``loss`` of :func:`~diffmath.train.training.train`."""
TOY_RECIPES: dict[str, dict] = {
    "swiss-roll-ddpm": {**_BASE, "toy": "swiss-roll"},
    "eight-gaussians-ddpm": {**_BASE, "toy": "eight-gaussians"},
    "moons-ddpm": {**_BASE, "toy": "moons"},
    "eight-gaussians-pfgm": {**_PFGM, "toy": "eight-gaussians"},
    "swiss-roll-pfgm": {**_PFGM, "toy": "swiss-roll"},
    # class-conditional (the toy's labels; 15% of them dropped to the null label for classifier-free guidance)
    "eight-gaussians-cfg": {**_BASE, "toy": "eight-gaussians", "num_classes": 8, "label_dropout": 0.15},
    "eight-gaussians-rf": {**_RF, "toy": "eight-gaussians"},
    "moons-rf": {**_RF, "toy": "moons"},
    "eight-gaussians-otcfm": {  # the budget of eight-gaussians-rf (3000 steps of 512): compared at equal cost
        **_RF,
        "toy": "eight-gaussians",
        "objective_kwargs": {"coupling": "ot"},
    },
}


def _summary(trained: object) -> str:
    """One line for a trained model: recipe, network size, schedule, data, steps and last loss (not the tensors)."""
    params = sum(p.numel() for p in trained.model.parameters())
    last = f"{trained.losses[-1]:.4g}" if trained.losses else "-"
    return (
        f"{type(trained).__name__}({trained.config.get('name', '?')!r}: {type(trained.model).__name__} with "
        f"{params:,} parameters, predicts {getattr(trained.model, 'prediction', '?')!r}, schedule "
        f"{trained.schedule.name}, data {tuple(trained.data.shape)}, {len(trained.losses)} steps, last loss {last}, "
        f"weights {trained.path})"
    )


def _recommended_sample(
    trained: ToyModel | ImageModel,
    n: int,
    num_steps: int,
    cond: torch.Tensor | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """The sampler a recipe's model is meant for (lesson 20, sec. 20.8; lesson 13): its clipped model through
    DPM-Solver++(2M) on the schedule's grid, started below $a = 0$ for an eps-model, or Poisson flow's own sampler from
    the prior plane $z = 40$ with the training clip."""
    check_int(n, "n")
    check_int(num_steps, "num_steps")
    config, schedule = trained.config, trained.schedule
    shape = tuple(trained.data.shape[1:])
    device = model_device(trained.model)
    with torch.no_grad():
        if config.get("objective") == "pfgm":
            grid = pfgm_grid(schedule, num_steps, z_max=40.0)
            clip = config["objective_kwargs"].get("max_radius")
            return pfgm_sample(trained.model, n, shape, grid, schedule, generator=generator, max_radius=clip)
        c = schedule.coefficients(torch.tensor(schedule.t_max, dtype=torch.float64))
        starts_at_noise = config["prediction"] == "eps" and float(c.a) == 0.0  # no x0 from eps where a = 0
        grid = schedule.grid(num_steps, t_start=0.98 * schedule.t_max if starts_at_noise else None)
        x = torch.randn(n, *shape, generator=generator, dtype=trained.data.dtype).to(device)
        cond = None if cond is None else cond.to(device)
        return ode_sample(trained.clipped, x, grid, schedule, "dpm++2m", cond=cond)


class _Samples:
    """The recommended sampler of a trained result (shared by :class:`ToyModel` and :class:`ImageModel`)."""

    def sample(
        self,
        n: int,
        num_steps: int = 20,
        cond: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        r"""``n`` samples by the sampler this recipe's model is meant for (lesson 20, sec. 20.8): :attr:`clipped`
        through DPM-Solver++(2M) on the schedule's grid of ``num_steps`` steps (from $t = 0.98$ for an eps-model on a
        schedule whose $a$ is 0 at the end), or, for a Poisson-flow recipe, :func:`~diffmath.pfgm.pfgm_sample` from
        the plane $z = 40$ with the training clip (lesson 13).

        Parameters
        ----------
        n : int
            Number of samples.
        num_steps : int
            Network evaluations (one per step).
        cond : Tensor, optional
            Labels of a conditional recipe, one per sample.
        generator : torch.Generator, optional
            Source of the starting noise (drawn on the CPU, moved to the model's device).

        Returns
        -------
        Tensor, shape (n, ...)
            Samples, on the model's device.

        Raises
        ------
        ValueError
            If ``n`` or ``num_steps`` is not a positive integer, or as the sampler.
        """
        return _recommended_sample(self, n, num_steps, cond, generator)


@dataclass
class ToyModel(_Samples):
    """A trained toy model: the (EMA) network, its schedule, its training data, the recipe that made it, the loss curve.

    Returned by :func:`train_toy` (lesson 3, eq. 3.14).

    Parameters
    ----------
    model : MLP
        The network to sample from: the EMA weights, in eval mode, as ``fit(...).model`` (the optimiser's raw
        weights, ``fit(...).raw_model``, are not stored).
    schedule : Schedule
        The schedule it was trained on.
    data : torch.Tensor, shape (N, 2)
        Its training data.
    config : dict
        The recipe's configuration.
    path : Path
        The cached weights.
    losses : list of float
        The training loss of every step.
    labels : torch.Tensor or None
        The training labels, for class-conditional recipes.
    """

    model: MLP
    schedule: Schedule
    data: torch.Tensor
    config: dict
    path: Path
    losses: list[float]
    labels: torch.Tensor | None = None

    def __repr__(self) -> str:
        return _summary(self)

    @property
    def clipped(self) -> Clipped:
        r"""The model to sample from with few or deterministic steps (lesson 20, sec. 20.8): ``model`` with its
        $\hat x_0$ held in the ball of 1.05 times the data's largest radius (:class:`~diffmath.guide.compose.Clipped`,
        eq. 20.11). It keeps DDIM and DPM-Solver++ from sending about 0.2% of the samples to $|x| \approx 50$."""
        return Clipped(self.model, self.schedule, 1.05 * float(self.data.flatten(1).norm(dim=1).max()), "ball")


def _optimiser(config: dict, seed_offset: int = 0) -> dict:
    """The training settings every recipe passes to :func:`~diffmath.train.training.train` (lesson 3, sec. 3.6)."""
    return {
        "batch_size": config["batch_size"],
        "lr": config["lr"],
        "ema_decay": config["ema_decay"],
        "seed": config["seed"] + seed_offset,
    }


def cache_dir() -> Path:
    """The folder for cached artefacts (lesson 3, sec. 3.6): ``$DIFFMATH_CACHE`` or ``~/.cache/diffmath``.

    Returns
    -------
    Path
        The folder (not created here).
    """
    return Path(os.environ.get("DIFFMATH_CACHE", Path.home() / ".cache" / "diffmath"))


def toy_recipe(name: str, **overrides: object) -> dict:
    """The configuration of a named recipe (one of :data:`TOY_RECIPES`; lesson 3, sec. 3.6), with keyword overrides.

    Parameters
    ----------
    name : str
        A key of :data:`TOY_RECIPES`.
    **overrides : object
        Settings to change (each must be a key of the recipe, e.g. ``steps=500``).

    Returns
    -------
    dict
        The configuration, with ``"name"`` added.

    Raises
    ------
    ValueError
        If ``name`` is unknown or an override is not a setting of the recipe.
    """
    return _configure(TOY_RECIPES, "recipe", name, overrides, (IMAGE_RECIPES, "an image recipe: use train_image"))


def _configure(
    table: dict[str, dict], kind: str, name: str, overrides: dict, other: tuple[dict, str] | None = None
) -> dict:
    if name not in table:
        if other is not None and name in other[0]:  # the other family's recipe: say which function takes it
            raise ValueError(f"{name!r} is {other[1]}({name!r})")
        raise ValueError(f"unknown {kind} {name!r}; expected one of {tuple(table)}")
    unknown = set(overrides) - set(table[name])
    if unknown:
        raise ValueError(f"unknown recipe settings {sorted(unknown)}; expected some of {sorted(table[name])}")
    return {**table[name], **overrides, "name": name}


def recipe_hash(config: dict) -> str:
    """Short SHA-1 of the configuration (sorted JSON): the cache key of a recipe (lesson 3, sec. 3.6).

    Parameters
    ----------
    config : dict
        A JSON-serialisable configuration.

    Returns
    -------
    str
        The first 10 hex digits of the SHA-1.

    Raises
    ------
    TypeError
        If ``config`` is not JSON-serialisable.
    """
    return hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:10]


def stored_config(config: dict, precision: str = "float32") -> dict:
    """The configuration a recipe's weights are stored under (lesson 3, sec. 3.6): ``config`` itself for float32,
    with ``"precision"`` added otherwise, so bf16 weights get their own file and the float32 names never change.

    Parameters
    ----------
    config : dict
        A recipe's configuration.
    precision : {"float32", "bf16"}
        The training precision.

    Returns
    -------
    dict
        ``config``, or a copy with the precision.

    Raises
    ------
    ValueError
        If ``precision`` is unknown.
    """
    return config if check_precision(precision) == "float32" else {**config, "precision": precision}


def weights_file(config: dict) -> str:
    """The file name ``<name>-<hash>.pt`` under which a recipe's weights are committed or cached (lesson 3, sec. 3.6).

    Parameters
    ----------
    config : dict
        A recipe's configuration (from :func:`toy_recipe` or :func:`image_recipe`).

    Returns
    -------
    str

    Raises
    ------
    KeyError
        If ``config`` has no ``"name"``.
    """
    return f"{config['name']}-{recipe_hash(config)}.pt"


def weights_status(config: dict, folder: str | Path | None = None) -> str:
    """Where a recipe's weights are (lesson 3, sec. 3.6): ``"committed"`` (shipped in :data:`COMMITTED`),
    ``"cached"``, ``"partly trained"`` (only a resumable checkpoint) or ``"not trained"``.

    Parameters
    ----------
    config : dict
        A recipe's configuration.
    folder : path, optional
        Cache folder (default :func:`cache_dir`).

    Returns
    -------
    str
    """
    cache = (Path(folder) if folder is not None else cache_dir()) / weights_file(config)
    if (COMMITTED / weights_file(config)).exists():
        return "committed"
    if cache.exists():
        return "cached"
    return "partly trained" if cache.with_suffix(".ckpt").exists() else "not trained"


def cached(path: str | Path, config: dict, keys: tuple[str, ...], train: Callable[[Path], dict]) -> dict:
    r"""The one cached-training flow (lesson 3, sec. 3.6): load ``path`` if it is stored, else train and store it.

    Under a lock on ``<path>.lock`` (:func:`~diffmath.core._io.file_lock`): an existing ``path`` is read with
    :func:`~diffmath.train.training.read_checkpoint` (tensors and plain data only, its SHA-256 checked) and must hold
    ``config``; otherwise ``train(checkpoint)`` runs, with ``checkpoint = path.with_suffix(".ckpt")`` for its
    resumable checkpoints, ``{"config": config, **train(checkpoint)}`` is written with
    :func:`~diffmath.train.training.save_atomic` and the checkpoint is removed. A second process asking for the same file
    waits for the lock, then loads what the first stored. Every recipe of the library goes through here.

    Under ``torchrun`` (:mod:`diffmath.train.distributed`) rank 0 alone takes the lock, looks the file up (and sends
    what it read to the other ranks), writes it and removes the checkpoint; the others train with it and wait at a
    barrier until the file is stored.

    Parameters
    ----------
    path : str or Path
        The stored file, named after the recipe and its :func:`recipe_hash`.
    config : dict
        The configuration, stored with the payload and compared on loading.
    keys : tuple of str
        The entries the file holds besides ``"config"`` (e.g. ``("model", "losses")``).
    train : callable
        ``train(checkpoint: Path) -> dict``: trains and returns the entries of ``keys``.

    Returns
    -------
    dict
        ``"config"`` and the entries of ``keys``, loaded or freshly trained.

    Raises
    ------
    ValueError
        If the stored file was made by another configuration, is unreadable (corrupted, or not tensors and plain
        data) or lacks one of ``keys``; or as ``train``.
    """
    path, main = Path(path), distributed.is_main()
    # one process trains and stores the file; another asking for it waits, then loads it
    with file_lock(path) if main else contextlib.nullcontext():
        stored = distributed.broadcast(_stored(path, config, keys) if main and path.exists() else None)
        if stored is not None:
            return stored
        checkpoint = path.with_suffix(".ckpt")
        payload = {"config": config, **train(checkpoint)}
        if main:
            save_atomic(payload, path)
            checkpoint.unlink(missing_ok=True)
        distributed.barrier()
    return payload


def _stored(path: Path, config: dict, keys: tuple[str, ...]) -> dict:
    stored = read_checkpoint(path, ("config", *keys))
    if stored["config"] != config:
        raise ValueError(f"stored file {path} was made by another recipe; delete it to retrain")
    return stored


def train_toy(
    recipe: str | dict,
    progress: bool = True,
    folder: str | Path | None = None,
    force: bool = False,
    device: str = "cpu",
    precision: str = "float32",
) -> ToyModel:
    r"""Train (or load from the cache) a toy MLP by recipe (lesson 3, eq. 3.14).

    The file ``<name>-<hash>.pt`` is looked up, trained and stored under a lock on ``<name>-<hash>.pt.lock``: a
    second process asking for the same recipe in the same folder waits for the first, then loads its file.

    Parameters
    ----------
    recipe : str or dict
        A name in :data:`TOY_RECIPES`, or a configuration from :func:`toy_recipe`.
    progress : bool
        Show tqdm progress while training.
    folder : path, optional
        Cache folder (default :func:`cache_dir`).
    force : bool
        Delete a stored file of this recipe (and a half-done run's checkpoint) and train again.
    device : str
        Where to train (``"cpu"``, ``"cuda"``, ``"auto"``); the stored weights are on the CPU.
    precision : {"float32", "bf16"}
        The precision of the forward passes; bf16 weights are stored under another name (the recipe's hash with
        ``"precision": "bf16"`` added).

    Returns
    -------
    ToyModel
        ``model`` is the EMA network in eval mode (a model with the one interface).

    Raises
    ------
    ValueError
        If ``recipe`` names no recipe or lacks ``'name'`` and ``'toy'``, an override is unknown, the cached file
        was made by another recipe or is unreadable (corrupted, or not tensors and plain data), or training fails
        (e.g. the loss diverges).
    """
    from toydata import sample

    config = toy_recipe(recipe) if isinstance(recipe, str) else dict(recipe)
    if "name" not in config or "toy" not in config:
        raise ValueError("a recipe must come from toy_recipe(...) (it needs 'name' and 'toy')")
    config = stored_config(config, precision)
    folder = Path(folder) if folder is not None else cache_dir()
    path = folder / weights_file(config)
    if force and distributed.is_main():  # the weights and any half-done run's checkpoint
        path.unlink(missing_ok=True)
        path.with_suffix(".ckpt").unlink(missing_ok=True)
    schedule = get_schedule(config["schedule"], **config["schedule_kwargs"])
    num_classes = config.get("num_classes", 0)
    data_gen = torch.Generator().manual_seed(config["data_seed"])
    labels = None
    if num_classes:
        data, labels = sample(config["toy"], config["n_data"], data_gen, labels=True)
    else:
        data = sample(config["toy"], config["n_data"], data_gen)
    torch.manual_seed(config["seed"])
    model = MLP(2, config["hidden"], config["depth"], config["prediction"], schedule.t_max, num_classes=num_classes)

    def run(checkpoint: Path) -> dict:
        state = fit(
            model,
            data,
            schedule,
            config["steps"],
            **_optimiser(config),
            checkpoint=checkpoint,
            checkpoint_every=500,
            progress=progress,
            loss=objective(config.get("objective", "diffusion"), schedule, **config.get("objective_kwargs", {})),
            labels=labels,
            label_dropout=config.get("label_dropout", 0.0),
            device=device,
            precision=precision,
        )
        final = state.model  # the EMA weights where kept, as ToyModel.model
        return {"model": {k: v.cpu() for k, v in final.state_dict().items()}, "losses": state.losses}

    stored = cached(path, config, _CACHED, run)
    model.load_state_dict(stored["model"])
    return ToyModel(model.cpu().eval(), schedule, data, config, path, stored["losses"], labels)


def objective(name: str, schedule: Schedule, **kwargs: object):
    """The training loss named ``name`` in :data:`OBJECTIVES`, built for ``schedule`` (lesson 3, eq. 3.14).

    Parameters
    ----------
    name : str
        A key of :data:`OBJECTIVES` (``"diffusion"``, ...).
    schedule : Schedule
        The schedule (or path) the model is trained on.
    **kwargs : object
        Settings of the objective.

    Returns
    -------
    callable
        ``loss(model, batch, generator, cond) -> Tensor``, for :func:`~diffmath.train.training.train`.

    Raises
    ------
    ValueError
        If ``name`` is not a key of :data:`OBJECTIVES`.
    """
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; expected one of {tuple(OBJECTIVES)}")
    return OBJECTIVES[name](schedule, **kwargs)


def reflow_toy(
    recipe: str,
    rounds: int = 1,
    num_pairs: int = 10000,
    steps: int = 1500,
    num_steps: int = 50,
    method: str = "heun",
    progress: bool = True,
    folder: str | Path | None = None,
    return_all: bool = False,
) -> ToyModel | list[ToyModel]:
    r"""A toy recipe's rectified flow and its reflows, trained once and cached (lesson 17, eq. 17.9).

    Round 0 is :func:`train_toy` of ``recipe``; round $k$ couples ``num_pairs`` prior samples
    (seed = the recipe's seed + $k$) with round $k-1$'s ODE endpoints and retrains from its weights. Each round is
    cached under the hash of (recipe, round, settings), written atomically, resumed from its checkpoint.

    Parameters
    ----------
    recipe : str
        A flow-matching recipe of :data:`TOY_RECIPES` (e.g. ``"eight-gaussians-rf"``).
    rounds : int
        Reflow rounds $k \ge 0$.
    num_pairs : int
        Pairs per round.
    steps : int
        Optimiser steps per round (batch size, learning rate and EMA of the recipe).
    num_steps : int
        Solver steps for the pairs.
    method : {"euler", "heun", "dpm++2m"}
        Solver for the pairs.
    progress : bool
        Show tqdm progress while training.
    folder : path, optional
        Cache folder (default :func:`cache_dir`).
    return_all : bool
        Return every round, from round 0, not only the last.

    Returns
    -------
    ToyModel or list of ToyModel
        The last round, the $(k+1)$-rectified flow (the recipe's own model for ``rounds=0``), as :func:`reflow`
        returns; with ``return_all=True`` rounds 0..``rounds``: ``[1-RF, 2-RF, ...]``. ``data`` of round
        $k \ge 1$ holds its pairs.

    Raises
    ------
    ValueError
        If the recipe is unknown or does not train a velocity model, ``rounds`` is negative, or as
        :func:`train_toy`.
    TypeError
        If ``return_all`` is not a bool.
    """
    if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 0:
        raise ValueError(f"rounds must be a non-negative integer, got {rounds!r}")
    if not isinstance(return_all, bool):
        raise TypeError(f"return_all must be True or False, got {return_all!r}")
    base = train_toy(recipe, progress=progress, folder=folder)
    if base.config["prediction"] != "velocity":
        raise ValueError(f"recipe {recipe!r} does not train a velocity model")
    folder = Path(folder) if folder is not None else cache_dir()
    settings = {"num_pairs": num_pairs, "steps": steps, "num_steps": num_steps, "method": method}
    out = [base]
    for k in range(1, rounds + 1):
        out.append(_reflow_round(base, out[-1], k, settings, folder, progress))
    return out if return_all else out[-1]


def _reflow_round(base: ToyModel, previous: ToyModel, k: int, settings: dict, folder: Path, progress: bool) -> ToyModel:
    """Round ``k`` of :func:`reflow_toy`: ``previous`` retrained on its own ODE pairs, through :func:`cached`."""
    config = {**base.config, "reflow_round": k, "reflow": settings}
    path = folder / f"{config['name']}-reflow{k}-{recipe_hash(config)}.pt"
    model = MLP(base.data.shape[1], config["hidden"], config["depth"], "velocity", base.schedule.t_max)

    def run(checkpoint: Path) -> dict:
        g = torch.Generator().manual_seed(config["seed"] + k)
        z1 = torch.randn(settings["num_pairs"], *base.data.shape[1:], generator=g, dtype=base.data.dtype)
        pairs = reflow_pairs(previous.model, z1, base.schedule, settings["num_steps"], settings["method"])
        model.load_state_dict(previous.model.state_dict())
        state = fit(
            model,
            pairs,
            None,
            settings["steps"],
            **_optimiser(config, seed_offset=k),
            checkpoint=checkpoint,
            progress=progress,
            loss=FlowMatchingLoss(base.schedule, paired=True),
        )
        final = state.model  # the EMA weights where kept
        return {"model": final.state_dict(), "pairs": pairs, "losses": state.losses}

    stored = cached(path, config, ("model", "pairs", "losses"), run)
    model.load_state_dict(stored["model"])
    return ToyModel(model.eval(), base.schedule, stored["pairs"], config, path, stored["losses"])


# ---------------------------------------------------------------------------------------------------------- images
_IMAGE = {  # lesson 20, sec. 20.3: a v-predicting UNet on the cosine VP schedule, shapes at 16 px
    "dataset": "shapes",
    "size": 16,
    "n_data": 6000,
    "data_seed": 0,
    "dataset_kwargs": {},
    "condition_on": None,
    "label_dropout": 0.0,
    "schedule": "vp-cosine",
    "schedule_kwargs": {},
    "prediction": "v",
    "channels": [16, 32, 64],
    "num_res_blocks": 1,
    "attention": [False, False, True],
    "steps": 800,
    "batch_size": 32,
    "lr": 2e-3,
    "ema_decay": 0.995,
    "seed": 0,
    "checkpoint_every": 100,
    "objective": "diffusion",
    "objective_kwargs": {},
}
_DIGITS = {  # 8 px digits (the 1438 training images): three levels, attention at 2 px
    **_IMAGE,
    "dataset": "digits",
    "size": 8,
    "n_data": None,
    "dataset_kwargs": {"split": "train"},
    "steps": 1200,
    "batch_size": 64,
}
RARE = {"shape": "triangle", "colour": "red", "p": 0.02}
"""The tie of the correlated training set of the ``attr-*`` recipes: 2% of triangles are red (a red triangle is 0.7% of
the images, against 11% for an independent draw), so "red triangle" is a rare combination to ask for."""

ATTRIBUTE_GROUPS: dict[str, tuple[str, ...]] = {
    "attr-shape-quadrant": ("shape", "quadrant"),
    "attr-colour": ("colour",),
    "attr-size-texture": ("size", "texture"),
    "joint": ("shape", "colour", "size", "quadrant", "texture", "background"),
}
"""The attributes each ``attr-*`` recipe is conditioned on (``joint``: the oracle-like CFG model ``attr-joint``)."""

_ATTR = {  # 24 px attribute shapes (32 px costs 1.7x per step on 2 CPU cores): three levels, attention at 6 px
    **_IMAGE,
    "dataset": "attribute-shapes",
    "size": 24,
    "n_data": 20000,
    "dataset_kwargs": {"correlate": RARE},
    "steps": 8000,
    "batch_size": 32,
    "ema_decay": 0.999,
    "checkpoint_every": 500,
}
_RESTORE = {  # lesson 11, sec. 11.2: a restorer predicts x0 from a corrupted image at one of T = 20 levels
    **_IMAGE,
    "size": 32,
    "schedule": "blur",
    "schedule_kwargs": {"T": 20, "sd_max": 8.0},
    "prediction": "x0",
    "objective": "restore",
    "objective_kwargs": {"norm": 1},
    "steps": 2500,
    "checkpoint_every": 250,
}
IMAGE_RECIPES: dict[str, dict] = {
    # class-conditional on the shape, 10% of labels dropped to the null label for classifier-free guidance
    "shapes-ddpm": {**_IMAGE, "condition_on": "shape", "label_dropout": 0.1, "steps": 2000},
    "shapes-rf": {**_IMAGE, "schedule": "rectified-flow", "prediction": "velocity", "objective": "flow-matching"},
    "digits-ddpm": {**_DIGITS, "prediction": "eps"},
    "digits-rf": {**_DIGITS, "schedule": "rectified-flow", "prediction": "velocity", "objective": "flow-matching"},
    # Poisson flow (lesson 13) as the path a x0 + b c, c Cauchy-like with its radius clipped at 20, v-prediction. The
    # clip that keeps 95% of the prior's radius mass in d = 64 is pfgm.clip_radius(64) = 127.1 (20 keeps 69%, 5 only
    # 11%); at this budget it trains a worse model (lesson 20, sec. 20.6 has the measured ablation)
    "digits-pfgm": {**_DIGITS, "objective": "pfgm", "objective_kwargs": {"max_radius": 20.0}},
    # the models the multi-model methods (lessons 21-24) combine, all on one correlated training set
    "attr-uncond": _ATTR,
    "attr-shape-quadrant": {**_ATTR, "condition_on": ["shape", "quadrant"], "label_dropout": 0.1},
    "attr-colour": {**_ATTR, "condition_on": ["colour"], "label_dropout": 0.1},
    "attr-size-texture": {**_ATTR, "condition_on": ["size", "texture"], "label_dropout": 0.1},
    # the colour model again on another forward process (VP-linear): the negative control of lesson 21 (its times
    # mean other noise levels than the cosine models' at the same t)
    "attr-colour-linear": {**_ATTR, "condition_on": ["colour"], "label_dropout": 0.1, "schedule": "vp-linear"},
    # every label dropped on its own with probability 0.15: the network learns every partial condition as well
    "attr-joint": {
        **_ATTR,
        "condition_on": list(ATTRIBUTE_GROUPS["joint"]),
        "label_dropout": 0.15,
        "dropout_per_label": True,
    },
    # lesson 11: restorers G_t(x_t) ~ x0 for cold diffusion on 32 px shapes, trained with the l1 loss (eq. 11.3)
    "restore-shapes-blur": _RESTORE,
    "restore-shapes-mask": {
        **_RESTORE,
        "schedule": "pixel-mask",
        "schedule_kwargs": {"T": 20, "size": [32, 32], "seed": 0, "fill": 0.0},
    },
}
"""Named image recipes (lesson 20, sec. 20.3): data set, network, schedule, objective and optimiser settings."""

COMMITTED = Path(__file__).parent / "checkpoints"
"""Folder of the small trained image models shipped with the package, looked up before the cache (lesson 20)."""


@dataclass
class ImageModel(_Samples):
    """A trained image model: the EMA UNet, its schedule, its training images and labels, the recipe, the loss curve.

    Returned by :func:`train_image` (lesson 20, sec. 20.3).

    Parameters
    ----------
    model : UNet
        The network to sample from: the EMA weights in eval mode (a model with the one interface), as
        ``fit(...).model`` (the raw weights are not stored).
    schedule : Schedule
        The schedule (or path) it was trained on.
    data : torch.Tensor, shape (N, C, H, W)
        Its training images, in [-1, 1].
    labels : dict of str to torch.Tensor
        The training images' attributes (int64, shape (N,)).
    config : dict
        The recipe's configuration.
    path : Path
        The stored weights (committed or cached).
    losses : list of float
        The training loss of every step.
    """

    model: torch.nn.Module
    schedule: Schedule
    data: torch.Tensor
    labels: dict[str, torch.Tensor]
    config: dict
    path: Path
    losses: list[float]

    def __repr__(self) -> str:
        return _summary(self)

    @property
    def clipped(self) -> Clipped:
        r"""The model to sample from with deterministic steps (lesson 20, sec. 20.8): ``model`` with every pixel of
        $\hat x_0$ clipped to the data's range $[-1, 1]$ (:class:`~diffmath.guide.compose.Clipped`, eq. 20.11)."""
        return Clipped(self.model, self.schedule, float(self.data.abs().max()), "box")

    @property
    def cond(self) -> torch.Tensor | None:
        """The training labels the network is conditioned on, or ``None``: ``labels[a]`` (shape (N,)) for one
        attribute ``condition_on = a``, the labels stacked as (N, L) for a list of L attributes."""
        return _condition(self.config, self.labels)


def _condition(config: dict, labels: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """The labels a recipe conditions on: None, one attribute's (N,), or a list of attributes' stacked (N, L)."""
    key = config.get("condition_on")
    if key is None:
        return None
    keys = [key] if isinstance(key, str) else list(key) if isinstance(key, (list, tuple)) else None
    if not keys or not all(isinstance(k, str) and k in labels for k in keys):
        raise ValueError(f"condition_on must be None, one of {tuple(labels)} or a list of them, got {key!r}")
    return labels[key] if isinstance(key, str) else torch.stack([labels[k] for k in keys], 1)


def image_recipe(name: str, **overrides: object) -> dict:
    """The configuration of a named image recipe (one of :data:`IMAGE_RECIPES`; lesson 20, sec. 20.3), with overrides.

    Parameters
    ----------
    name : str
        A key of :data:`IMAGE_RECIPES`.
    **overrides : object
        Settings to change (each must be a key of the recipe, e.g. ``steps=40``).

    Returns
    -------
    dict
        The configuration, with ``"name"`` added.

    Raises
    ------
    ValueError
        If ``name`` is unknown or an override is not a setting of the recipe.
    """
    return _configure(IMAGE_RECIPES, "image recipe", name, overrides, (TOY_RECIPES, "a toy recipe: use train_toy"))


def image_setup(config: dict) -> tuple[torch.nn.Module, Schedule, torch.Tensor, dict[str, torch.Tensor]]:
    """The untrained network, schedule, images and labels of an image recipe (lesson 20, sec. 20.3).

    Parameters
    ----------
    config : dict
        A configuration from :func:`image_recipe`.

    Returns
    -------
    (UNet, Schedule, Tensor, dict)
        The network initialised from ``config["seed"]``, the schedule, the images (N, C, H, W) and their labels.

    Raises
    ------
    ValueError
        If the configuration names an unknown data set, schedule or conditioning attribute.
    """
    from toydata.images import image_dataset

    data_gen = torch.Generator().manual_seed(config["data_seed"])
    batch = image_dataset(config["dataset"], config["n_data"], config["size"], data_gen, **config["dataset_kwargs"])
    make = get_corruption if config["schedule"] in CORRUPTIONS else get_schedule  # a restorer's corruption (lesson 11)
    schedule = make(config["schedule"], **config["schedule_kwargs"])
    cond = _condition(config, batch.labels)
    sizes = 0 if cond is None else int(cond.max()) + 1 if cond.dim() == 1 else tuple((cond.amax(0) + 1).tolist())
    torch.manual_seed(config["seed"])
    model = UNet(
        batch.images.shape[1],
        tuple(config["channels"]),
        config["num_res_blocks"],
        tuple(config["attention"]),
        config["prediction"],
        schedule.t_max,
        num_classes=sizes,
    )
    return model, schedule, batch.images, batch.labels


def train_image(
    recipe: str | dict,
    progress: bool = True,
    folder: str | Path | None = None,
    force: bool = False,
    device: str = "cpu",
    precision: str = "float32",
    compile: bool = False,
) -> ImageModel:
    r"""Train (or load) a UNet by image recipe (lesson 20, sec. 20.3; the loop of lesson 3, eq. 3.14).

    The weights are looked up first in :data:`COMMITTED` (small models shipped with the package), then in
    ``folder``, both under ``<name>-<hash>.pt``; otherwise the recipe is trained with checkpoints every
    ``checkpoint_every`` steps (an interrupted run resumes from the last one) and the EMA weights are stored in
    ``folder``, rounded to float16 (half the file; the loss of a sample changes in the 4th digit). Lookup, training
    and storing in ``folder`` hold a lock on ``<name>-<hash>.pt.lock``, so a second process waits, then loads.

    Parameters
    ----------
    recipe : str or dict
        A name in :data:`IMAGE_RECIPES`, or a configuration from :func:`image_recipe`.
    progress : bool
        Show tqdm progress while training.
    folder : path, optional
        Cache folder (default :func:`cache_dir`).
    force : bool
        Ignore a committed file and delete a cached one (and a half-done run's checkpoint): train again, into
        ``folder``.
    device : str
        Where to train (``"cpu"``, ``"cuda"``, ``"auto"``); the stored weights are on the CPU.
    precision : {"float32", "bf16"}
        The precision of the forward passes; bf16 weights are stored under another name (the recipe's hash with
        ``"precision": "bf16"`` added), so they never replace the float32 ones.
    compile : bool
        Train through ``torch.compile`` (the same weights up to float rounding, so the same file).

    Returns
    -------
    ImageModel
        ``model`` is the EMA network in eval mode.

    Raises
    ------
    ValueError
        If ``recipe`` names no image recipe or lacks ``'name'`` and ``'dataset'``, a stored file was made by another
        recipe or is unreadable (corrupted, or not tensors and plain data), or training fails (e.g. the loss
        diverges).
    """
    config = image_recipe(recipe) if isinstance(recipe, str) else dict(recipe)
    if "name" not in config or "dataset" not in config:
        raise ValueError("an image recipe must come from image_recipe(...) (it needs 'name' and 'dataset')")
    config = stored_config(config, precision)
    folder = Path(folder) if folder is not None else cache_dir()
    filename = weights_file(config)
    model, schedule, data, labels = image_setup(config)

    def run(checkpoint: Path) -> dict:
        run = image_training(config, model, schedule, data, labels, checkpoint, progress, device, precision, compile)
        *_, state = run
        final = state.ema if state.ema is not None else state.model
        weights = {k: (v.half() if v.is_floating_point() else v).cpu() for k, v in final.state_dict().items()}
        return {"model": weights, "losses": state.losses}

    path = COMMITTED / filename
    if force and distributed.is_main():  # the cached weights and any half-done run's checkpoint
        (folder / filename).unlink(missing_ok=True)
        (folder / filename).with_suffix(".ckpt").unlink(missing_ok=True)
    if path.exists() and not force:  # shipped with the package: read only, no lock
        stored = _stored(path, config, _CACHED)
    else:
        path = folder / filename
        stored = cached(path, config, _CACHED, run)
    model.cpu().load_state_dict({k: v.float() for k, v in stored["model"].items()})
    return ImageModel(model.eval(), schedule, data, labels, config, path, stored["losses"])


def image_training(
    config: dict,
    model: torch.nn.Module,
    schedule: Schedule,
    data: torch.Tensor,
    labels: dict[str, torch.Tensor],
    checkpoint: str | Path | None = None,
    progress: bool = True,
    device: str = "cpu",
    precision: str = "float32",
    compile: bool = False,
) -> Iterator[TrainStep]:
    r"""The training run of an image recipe, step by step: :func:`~diffmath.train.training.train` with the recipe's
    objective and settings (lesson 20, sec. 20.3; lesson 3, eq. 3.14).

    Parameters
    ----------
    config : dict
        A configuration from :func:`image_recipe`.
    model, schedule, data, labels
        As returned by :func:`image_setup` for ``config``.
    checkpoint : path, optional
        Checkpoint file (every ``config["checkpoint_every"]`` steps; an existing one is resumed).
    progress : bool
        Show a tqdm bar.
    device : str
        Where to train.
    precision : {"float32", "bf16"}
        The precision of the forward passes (:func:`~diffmath.core.device.autocast`).
    compile : bool
        Run the passes through ``torch.compile``.

    Yields
    ------
    TrainStep
        After each step.

    Raises
    ------
    ValueError
        As :func:`~diffmath.train.training.train` and :func:`objective`.
    """
    yield from train(
        model,
        data,
        schedule,
        config["steps"],
        **_optimiser(config),
        checkpoint=checkpoint,
        checkpoint_every=config["checkpoint_every"],
        progress=progress,
        loss=objective(config["objective"], schedule, **config["objective_kwargs"]),
        labels=_condition(config, labels),
        label_dropout=config["label_dropout"],
        dropout_per_label=config.get("dropout_per_label", False),
        device=device,
        precision=precision,
        compile=compile,
    )


def loss_curve_figure(losses: list[float], path: str | Path, title: str = "") -> Path:
    """Plot a training loss curve (raw and a 50-step running mean, log scale) to a PNG file (lesson 20, sec. 20.3).

    Parameters
    ----------
    losses : list of float
        Loss of every step.
    path : str or Path
        Where to write the PNG (atomically).
    title : str
        Figure title.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ValueError
        If ``losses`` is empty.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not len(losses):
        raise ValueError("losses must hold at least one value")
    x = torch.tensor(losses, dtype=torch.float64)
    k = min(50, len(x))
    smooth = torch.nn.functional.avg_pool1d(x[None, None], k, 1)[0, 0]
    fig, ax = plt.subplots(figsize=(5, 3), dpi=80)
    ax.plot(range(1, len(x) + 1), x, lw=0.5, alpha=0.4, label="step")
    ax.plot(range(k, len(x) + 1), smooth, lw=1.5, label=f"mean of {k}")
    ax.set(xlabel="step", ylabel="loss", yscale="log", title=title)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return Path(path)


# ------------------------------------------------------------------------------------ attribute classifier (lesson 20)
_CLASSIFIER_RECIPE = {
    "n_data": 20000,
    "data_seed": 1000,
    "width": 32,
    "features": 128,
    "steps": 600,
    "batch_size": 64,
    "lr": 3e-3,
    "ema_decay": 0.99,
    "seed": 0,
}


def _classifier_data(dataset: str, size: int, n: int, seed: int):
    from toydata.images import ATTRIBUTES, digits, image_dataset

    if dataset not in ATTRIBUTES:
        raise ValueError(f"unknown image data set {dataset!r}; expected one of {tuple(ATTRIBUTES)}")
    if dataset == "digits":
        return digits(size=size, split="train")
    return image_dataset(dataset, n, size, torch.Generator().manual_seed(seed))


def train_attribute_classifier(
    dataset: str,
    size: int = 16,
    n: int = 20000,
    steps: int | None = None,
    progress: bool = True,
    folder: str | Path | None = None,
    denoised_by: str | None = None,
) -> AttributeClassifier:
    r"""Train (or load from the cache) the attribute classifier of an image data set, by recipe (lesson 20, eq. 20.1;
    with ``denoised_by``, the guidance classifier of lesson 22, eq. 22.8).

    The recipe: ``n`` real images (seed 1000, apart from any seed a test or sampler uses; for ``"digits"`` the fixed
    training split, 1438 images, whatever ``n``), Adam at lr 3e-3 with cosine decay, batch 64, EMA 0.99, and the sum
    of the per-attribute cross-entropies as loss, run by :func:`~diffmath.train.training.train`. The EMA weights are looked
    up in :data:`COMMITTED`, then stored in the cache folder, under a name holding the hash of the configuration. The classifier
    only judges samples; nothing in the library guides sampling with it. For ``"attribute-shapes"``, whose quadrant
    is an attribute and whose small shapes are 5 px across, the classifier gets coordinate channels and trains at
    lr 1e-3 for 4000 steps (held-out accuracy >= 0.98 on every attribute, where 600 steps leave the shape at 0.63).

    With ``denoised_by`` the classifier is a **guidance** classifier, kept apart from the judge: it trains on the
    named image recipe's own training set (its correlations included; ``n`` is ignored) and reads the recipe model's
    denoised guesses $\hat x_0(x_t, t)$ at uniform times instead of clean images, so that an energy on
    $\hat x_0$ (lesson 22, eq. 22.8) has a gradient at every noise level. It is what guidance may use; the judge
    is what scores the result. It trains for 10000 steps by default (the shape, read from blurred guesses, is learned
    last: at 4000 steps its clean held-out accuracy is 0.48).

    Parameters
    ----------
    dataset : {"shapes", "attribute-shapes", "digits", "glyphs"}
        The data set (see ``toydata.ATTRIBUTES``).
    size : int
        Image size in pixels.
    n : int
        Training images of a generated data set.
    steps : int, optional
        Optimiser steps (default 600; 4000 for ``"attribute-shapes"``; 10000 with ``denoised_by``).
    progress : bool
        Show tqdm progress while training.
    folder : path, optional
        Cache folder (default :func:`cache_dir`).
    denoised_by : str, optional
        An image recipe on ``dataset`` at ``size`` (e.g. ``"attr-uncond"``): train on its data and on its model's
        denoised guesses.

    Returns
    -------
    AttributeClassifier
        The EMA model in eval mode.

    Raises
    ------
    ValueError
        If ``dataset`` is unknown, the data set rejects ``size`` or ``n``, ``denoised_by`` names no image recipe on
        that data set and size, the cached file was made by another configuration or is unreadable, or training
        diverges.
    """
    from toydata.images import ATTRIBUTES

    if not isinstance(dataset, str) or dataset not in ATTRIBUTES:
        raise ValueError(f"unknown image data set {dataset!r}: dataset must be one of {tuple(ATTRIBUTES)}")
    if steps is None:
        steps = 10000 if denoised_by is not None else 4000 if dataset == "attribute-shapes" else 600
    config = {**_CLASSIFIER_RECIPE, "name": f"classifier-{dataset}", "dataset": dataset, "size": size, "steps": steps}
    config["n_data"] = None if dataset == "digits" else n
    config["shift"] = size // 8 if dataset == "digits" else 0  # a fixed set of 1438 digits: augment by translation
    if dataset == "attribute-shapes":  # position is an attribute: coordinate channels; small shapes: a lower rate
        config["coords"], config["lr"] = True, 1e-3
    attributes = {a: len(v) for a, v in ATTRIBUTES[dataset].items()}
    if denoised_by is None:
        data = _classifier_data(dataset, size, n, config["data_seed"])
        images, labels = data.images, data.labels
        loss = _AttributeLoss(attributes, config["shift"])
    else:
        base = image_recipe(denoised_by) if isinstance(denoised_by, str) and denoised_by in IMAGE_RECIPES else None
        if base is None or base["dataset"] != dataset or base["size"] != size:
            raise ValueError(f"denoised_by must name an image recipe on {dataset!r} at {size} px, got {denoised_by!r}")
        config.update(name=f"guidance-{dataset}", denoised_by=denoised_by, base_hash=recipe_hash(base), n_data=None)
        config["shift"] = 0
        denoiser = train_image(base, progress=False)
        images, labels = denoiser.data, denoiser.labels  # the recipe's own training set
        loss = _DenoisedAttributeLoss(attributes, denoiser.model, denoiser.schedule)
    torch.manual_seed(config["seed"])
    model = AttributeClassifier(
        images.shape[1], size, attributes, config["width"], config["features"], config.get("coords", False)
    )
    folder = Path(folder) if folder is not None else cache_dir()
    filename = f"{config['name']}-{size}-{recipe_hash(config)}.pt"

    def run(checkpoint: Path) -> dict:
        state = fit(
            model,
            images.float(),
            None,
            steps,
            **_optimiser(config),
            labels=loss.encode(labels),
            checkpoint=checkpoint,
            checkpoint_every=500,
            progress=progress,
            loss=loss,
        )
        return {"model": state.ema.state_dict(), "losses": state.losses}

    committed = COMMITTED / filename  # a judge shipped with the package (read only), else the cache
    if committed.exists():
        stored = _stored(committed, config, _CACHED)
    else:
        stored = cached(folder / filename, config, _CACHED, run)
    model.load_state_dict(stored["model"])
    return model.eval()


# ---------------------------------------------------------------------------------- image statistics that hold
def image_fidelity(
    image_model: ImageModel,
    classifier: AttributeClassifier,
    n: int = 256,
    draws: int = 5,
    method: str = "dpm++2m",
    num_steps: int = 20,
    progress: bool = True,
    sampler: Callable | None = None,
) -> dict[str, list[float]]:
    r"""A trained image model's Frechet and kernel distances to real data, next to the real-vs-real floor, over
    independent draws (lesson 20, eqs. 20.1 and 20.10).

    Draw $k$ takes two independent real sets $A_k, B_k$ of ``n`` images from the recipe's own data distribution
    (held-out seeds ``TEST_SEED + 2k`` and ``2k + 1``, the recipe's ``dataset_kwargs`` included, so a model trained on a
    correlated set is compared with that set's law), and ``n`` samples $S_k$ of the model (noise seed $k$, the ODE
    solver ``method`` on ``num_steps`` steps; a conditional model gets $B_k$'s labels, so its samples follow the real
    label frequencies, with no guidance). The floor is $d(A_k, B_k)$, the model's score $d(S_k, A_k)$: both at the same
    $n$, which matters for the Frechet distance (biased upwards by $O(F/n)$), not for the unbiased kernel distance.

    The 1797 digits have no independent draws: for ``"digits"``, $A_k$ is a random subset of ``n`` of the 359
    held-out images and $B_k$ one of the 1438 training images (subset seed $k$), so the draws overlap and the spread
    is that of subsampling (``n`` <= 359).

    Parameters
    ----------
    image_model : ImageModel
        From :func:`train_image`, on a generated data set; sampled on its model's device (noise drawn on the CPU and
        moved), judged on the CPU.
    classifier : AttributeClassifier
        The judge (from :func:`train_attribute_classifier`, trained on other seeds).
    n : int
        Images per set.
    draws : int
        Independent draws (>= 2, for a spread).
    method : {"euler", "heun", "dpm++2m"}
        ODE solver (lesson 6).
    num_steps : int
        Steps of the time grid.
    progress : bool
        Show a progress bar per sampler run.
    sampler : callable, optional
        ``sampler(model, noise, cond, k) -> samples``, replacing the ODE solver (e.g. DDPM, or Poisson flow's own
        prior and sampler); ``noise`` is the Gaussian draw of seed ``k``, which it may ignore.

    Returns
    -------
    dict of str to list of float
        ``"floor"``, ``"model"`` (Frechet) and ``"kid_floor"``, ``"kid_model"`` (kernel distance), one value per draw.

    Raises
    ------
    TypeError
        If ``image_model`` is not an :class:`ImageModel` or ``classifier`` not an :class:`AttributeClassifier`.
    ValueError
        If ``n`` < 2 (or above 359 for digits) or ``draws`` < 2.
    """
    from toydata.images import digits, held_out

    if not isinstance(image_model, ImageModel):
        raise TypeError(f"image_model must be an ImageModel (from train_image), got {type(image_model).__name__}")
    if not isinstance(classifier, AttributeClassifier):
        raise TypeError(f"classifier must be an AttributeClassifier, got {type(classifier).__name__}")
    check_int(n, "n", 2)
    check_int(draws, "draws", 2)
    config = image_model.config
    device = model_device(image_model.model)  # sample where the model is; judge on the CPU
    out: dict[str, list[float]] = {"floor": [], "model": [], "kid_floor": [], "kid_model": []}
    schedule, size = image_model.schedule, config["size"]
    if config["dataset"] == "digits":
        test, train = digits(size=size, split="test"), digits(size=size, split="train")
        if n > test.images.shape[0]:
            raise ValueError(f"n must be at most {test.images.shape[0]} (the held-out digits), got {n}")
    for k in range(draws):
        if config["dataset"] == "digits":
            g = torch.Generator().manual_seed(k)
            ia, ib = (
                torch.randperm(test.images.shape[0], generator=g)[:n],
                torch.randperm(train.images.shape[0], generator=g)[:n],
            )
            a = type(test)(test.images[ia], {key: v[ia] for key, v in test.labels.items()})
            b = type(train)(train.images[ib], {key: v[ib] for key, v in train.labels.items()})
        else:
            a, b = (held_out(config["dataset"], n, size, 2 * k + j, **config["dataset_kwargs"]) for j in (0, 1))
        g = torch.Generator().manual_seed(k)
        noise = torch.randn(n, *a.images.shape[1:], generator=g).to(device)  # the CPU draw, on the model's device
        cond = _condition(config, b.labels)
        cond = None if cond is None else cond.to(device)
        with torch.no_grad():
            if sampler is not None:
                s = sampler(image_model.model, noise, cond, k)
            else:
                s = ode_sample(image_model.model, noise, schedule.grid(num_steps), schedule, method, cond, progress)
        s = s.clamp(-1, 1).to(a.images.device)
        out["floor"].append(frechet_distance(classifier, a.images, b.images))
        out["model"].append(frechet_distance(classifier, s, a.images))
        out["kid_floor"].append(kernel_distance(classifier, a.images, b.images))
        out["kid_model"].append(kernel_distance(classifier, s, a.images))
    return out
