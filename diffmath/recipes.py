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
from dataclasses import dataclass
from pathlib import Path

import torch

from diffmath.nets import MLP
from diffmath.schedules import Schedule, get_schedule
from diffmath.training import fit, read_checkpoint, save_atomic

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
_PFGM = {  # lesson 13: Poisson flow as the path a x0 + b c (c Cauchy, clipped) on the cosine schedule, v-prediction
    **_BASE,
    "schedule": "vp-cosine",
    "schedule_kwargs": {},
    "prediction": "v",
    "objective": "pfgm",
    "objective_kwargs": {"max_radius": 20.0},
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
        "batch_size": 256,
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
    if name not in TOY_RECIPES:
        raise ValueError(f"unknown recipe {name!r}; expected one of {tuple(TOY_RECIPES)}")
    unknown = set(overrides) - set(TOY_RECIPES[name])
    if unknown:
        raise ValueError(f"unknown recipe settings {sorted(unknown)}; expected some of {sorted(TOY_RECIPES[name])}")
    return {**TOY_RECIPES[name], **overrides, "name": name}


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
        was made by another recipe or is unreadable, or training fails (e.g. the loss diverges).
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
    if path.exists():
        stored = read_checkpoint(path)
        if stored.get("config") != config:
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
