r"""Named, reproducible training recipes for toy models, cached by the hash of their configuration (lesson 3, sec. 3.6).

``train_toy("swiss-roll-ddpm")`` trains once (seconds on one CPU thread), stores the EMA weights under the cache
folder (``$DIFFMATH_CACHE``, default ``~/.cache/diffmath``) in a file named after the recipe and the hash of its
configuration, and loads them on every later call. An interrupted run resumes from its checkpoint.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from diffmath._io import file_lock
from diffmath.nets import MLP
from diffmath.schedules import Schedule, get_schedule
from diffmath.training import TrainStep, fit, read_checkpoint, save_atomic, train

_CACHED = ("config", "model", "losses")  # the entries of a cached recipe file

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
OBJECTIVES: dict[str, str] = {
    "diffusion": "diffmath.training:DiffusionLoss",
    "pfgm": "diffmath.pfgm:PoissonLoss",
    "flow-matching": "diffmath.flows:FlowMatchingLoss",
}
"""Training objectives a recipe can name: ``"module:Factory"``, called as ``Factory(schedule, **objective_kwargs)``
to give the ``loss`` of :func:`~diffmath.training.train`."""
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
    "eight-gaussians-otcfm": {
        **_RF,
        "toy": "eight-gaussians",
        "batch_size": 128,
        "steps": 1500,
        "objective_kwargs": {"coupling": "ot"},
    },
}


@dataclass
class ToyModel:
    """A trained toy model: the (EMA) network, its schedule, its training data, the recipe that made it, the loss curve.

    Returned by :func:`train_toy` (lesson 3, eq. 3.14).

    Parameters
    ----------
    model : MLP
        The trained (EMA) network, in eval mode.
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
    return _configure(TOY_RECIPES, "recipe", name, overrides)


def _configure(table: dict[str, dict], kind: str, name: str, overrides: dict) -> dict:
    if name not in table:
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


def train_toy(recipe: str | dict, progress: bool = True, folder: str | Path | None = None) -> ToyModel:
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
    folder = Path(folder) if folder is not None else cache_dir()
    path = folder / f"{config['name']}-{recipe_hash(config)}.pt"
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
    with file_lock(path):  # one process trains and stores the recipe; another asking for it waits, then loads it
        if path.exists():
            stored = read_checkpoint(path, _CACHED)
            if stored["config"] != config:
                raise ValueError(f"cached model {path} was made by another recipe; delete it to retrain")
            model.load_state_dict(stored["model"])
            return ToyModel(model.eval(), schedule, data, config, path, stored["losses"], labels)
        ckpt = path.with_suffix(".ckpt")
        loss = objective(config.get("objective", "diffusion"), schedule, **config.get("objective_kwargs", {}))
        state = fit(
            model,
            data,
            schedule,
            config["steps"],
            batch_size=config["batch_size"],
            lr=config["lr"],
            ema_decay=config["ema_decay"],
            seed=config["seed"],
            checkpoint=ckpt,
            checkpoint_every=500,
            progress=progress,
            loss=loss,
            labels=labels,
            label_dropout=config.get("label_dropout", 0.0),
        )
        final = state.ema if state.ema is not None else state.model
        save_atomic({"config": config, "model": final.state_dict(), "losses": state.losses}, path)
        ckpt.unlink(missing_ok=True)
    return ToyModel(final.eval(), schedule, data, config, path, state.losses, labels)


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
        ``loss(model, batch, generator, cond) -> Tensor``, for :func:`~diffmath.training.train`.

    Raises
    ------
    ValueError
        If ``name`` is not a key of :data:`OBJECTIVES`.
    """
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; expected one of {tuple(OBJECTIVES)}")
    module, factory = OBJECTIVES[name].split(":")
    return getattr(importlib.import_module(module), factory)(schedule, **kwargs)


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
IMAGE_RECIPES: dict[str, dict] = {
    # class-conditional on the shape, 10% of labels dropped to the null label for classifier-free guidance
    "shapes-ddpm": {**_IMAGE, "condition_on": "shape", "label_dropout": 0.1, "steps": 2000},
    "shapes-rf": {**_IMAGE, "schedule": "rectified-flow", "prediction": "velocity", "objective": "flow-matching"},
    "digits-ddpm": {**_DIGITS, "prediction": "eps"},
    "digits-rf": {**_DIGITS, "schedule": "rectified-flow", "prediction": "velocity", "objective": "flow-matching"},
    # Poisson flow (lesson 13) as the path a x0 + b c, c Cauchy-like with its radius clipped at 20, v-prediction
    "digits-pfgm": {**_DIGITS, "objective": "pfgm", "objective_kwargs": {"max_radius": 20.0}},
}
"""Named image recipes (lesson 20, sec. 20.3): data set, network, schedule, objective and optimiser settings."""

COMMITTED = Path(__file__).parent / "checkpoints"
"""Folder of the small trained image models shipped with the package, looked up before the cache (lesson 20)."""


@dataclass
class ImageModel:
    """A trained image model: the EMA UNet, its schedule, its training images and labels, the recipe, the loss curve.

    Returned by :func:`train_image` (lesson 20, sec. 20.3).

    Parameters
    ----------
    model : UNet
        The trained EMA network in eval mode (a model with the one interface).
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

    @property
    def cond(self) -> torch.Tensor | None:
        """The labels the network is conditioned on (``labels[config["condition_on"]]``), or ``None``."""
        key = self.config.get("condition_on")
        return None if key is None else self.labels[key]


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
    return _configure(IMAGE_RECIPES, "image recipe", name, overrides)


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
    from diffmath.unet import UNet
    from toydata.images import image_dataset

    data_gen = torch.Generator().manual_seed(config["data_seed"])
    batch = image_dataset(config["dataset"], config["n_data"], config["size"], data_gen, **config["dataset_kwargs"])
    schedule = get_schedule(config["schedule"], **config["schedule_kwargs"])
    key = config.get("condition_on")
    if key is not None and key not in batch.labels:
        raise ValueError(f"condition_on must be one of {tuple(batch.labels)}, got {key!r}")
    torch.manual_seed(config["seed"])
    model = UNet(
        batch.images.shape[1],
        tuple(config["channels"]),
        config["num_res_blocks"],
        tuple(config["attention"]),
        config["prediction"],
        schedule.t_max,
        num_classes=int(batch.labels[key].max()) + 1 if key is not None else 0,
    )
    return model, schedule, batch.images, batch.labels


def train_image(recipe: str | dict, progress: bool = True, folder: str | Path | None = None) -> ImageModel:
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
    folder = Path(folder) if folder is not None else cache_dir()
    filename = f"{config['name']}-{recipe_hash(config)}.pt"
    model, schedule, data, labels = image_setup(config)
    path = folder / filename
    if (COMMITTED / filename).exists():
        return _stored_image(COMMITTED / filename, config, model, schedule, data, labels)
    with file_lock(path):  # one process trains and stores the recipe; another asking for it waits, then loads it
        if path.exists():
            return _stored_image(path, config, model, schedule, data, labels)
        ckpt = path.with_suffix(".ckpt")
        *_, state = image_training(config, model, schedule, data, labels, ckpt, progress)
        final = state.ema if state.ema is not None else state.model
        weights = {k: v.half() if v.is_floating_point() else v for k, v in final.state_dict().items()}
        save_atomic({"config": config, "model": weights, "losses": state.losses}, path)
        ckpt.unlink(missing_ok=True)
    final.load_state_dict({k: v.float() for k, v in weights.items()})
    return ImageModel(final.eval(), schedule, data, labels, config, path, state.losses)


def _stored_image(path, config, model, schedule, data, labels) -> ImageModel:
    stored = read_checkpoint(path, _CACHED)
    if stored["config"] != config:
        raise ValueError(f"stored model {path} was made by another recipe; delete it to retrain")
    model.load_state_dict({k: v.float() for k, v in stored["model"].items()})
    return ImageModel(model.eval(), schedule, data, labels, config, path, stored["losses"])


def image_training(
    config: dict,
    model: torch.nn.Module,
    schedule: Schedule,
    data: torch.Tensor,
    labels: dict[str, torch.Tensor],
    checkpoint: str | Path | None = None,
    progress: bool = True,
) -> Iterator[TrainStep]:
    r"""The training run of an image recipe, step by step: :func:`~diffmath.training.train` with the recipe's
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

    Yields
    ------
    TrainStep
        After each step.

    Raises
    ------
    ValueError
        As :func:`~diffmath.training.train` and :func:`objective`.
    """
    key = config.get("condition_on")
    yield from train(
        model,
        data,
        schedule,
        config["steps"],
        batch_size=config["batch_size"],
        lr=config["lr"],
        ema_decay=config["ema_decay"],
        seed=config["seed"],
        checkpoint=checkpoint,
        checkpoint_every=config["checkpoint_every"],
        progress=progress,
        loss=objective(config["objective"], schedule, **config["objective_kwargs"]),
        labels=None if key is None else labels[key],
        label_dropout=config["label_dropout"],
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

    from diffmath._io import atomic_write

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
