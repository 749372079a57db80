"""Lesson 3, sec. 3.6: every trained artefact goes through the one cached-training flow, ``recipes.cached``."""

import ast
from pathlib import Path

import pytest
import torch

import diffmath.recipes as recipes
from diffmath.core.schedules import get_schedule
from diffmath.flows import FlowMatchingLoss
from diffmath.nets.mlp import MLP
from diffmath.pfgm import PoissonLoss
from diffmath.train.training import DiffusionLoss, save_atomic

PACKAGE = Path(recipes.__file__).parent


def _four_flows(folder: Path) -> dict:
    """Call each cached flow with tiny settings; round 0 of the reflow is an untrained, valid cache file."""
    rf = recipes.toy_recipe("moons-rf")
    schedule = get_schedule(rf["schedule"], **rf["schedule_kwargs"])
    net = MLP(2, rf["hidden"], rf["depth"], "velocity", schedule.t_max)
    base = folder / f"moons-rf-{recipes.recipe_hash(rf)}.pt"
    if not base.exists():
        save_atomic({"config": rf, "model": net.state_dict(), "losses": [1.0]}, base)
    toy = recipes.toy_recipe("swiss-roll-ddpm", n_data=256, steps=20, hidden=16, depth=1)
    image = recipes.image_recipe("shapes-rf", n_data=32, channels=[8, 16], attention=[False, True], steps=2)
    quiet = {"progress": False, "folder": folder}
    return {
        "toy": recipes.train_toy(toy, **quiet).model,
        "image": recipes.train_image(image, **quiet).model,
        "reflow": recipes.reflow_toy("moons-rf", 1, num_pairs=16, steps=2, num_steps=2, method="euler", **quiet).model,
        "classifier": recipes.train_attribute_classifier("shapes", size=16, n=32, steps=1, **quiet),
    }


def test_the_four_cached_flows_share_one_function(tmp_path, monkeypatch):
    """train_toy, train_image, reflow_toy and train_attribute_classifier all look up, train and store through
    ``recipes.cached``: the first calls train each file once, the second calls load the same weights, training none."""
    calls, trained = [], []
    one_flow = recipes.cached

    def spy(path, config, keys, train):
        def counted(checkpoint):
            trained.append(Path(path).name)
            return train(checkpoint)

        calls.append(Path(path).name)
        return one_flow(path, config, keys, counted)

    monkeypatch.setattr(recipes, "cached", spy)
    first = _four_flows(tmp_path)
    names = sorted(p.name for p in tmp_path.glob("*.pt"))
    assert sorted(trained) == [n for n in names if not n.startswith("moons-rf-") or "reflow" in n]
    assert len(trained) == 4 and set(calls) == set(names)
    trained.clear()
    again = _four_flows(tmp_path)
    assert trained == []
    for key in first:
        for (name, a), b in zip(first[key].state_dict().items(), again[key].state_dict().values(), strict=True):
            assert torch.equal(a, b), f"{key}: {name}"
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == []


@pytest.mark.parametrize("module", ["recipes", "flows", "metrics"])
def test_no_diffmath_import_hides_inside_a_function(module):
    """The dependency points one way (flows, metrics -> recipes): every ``diffmath`` import of these modules sits at
    the top, where the import graph shows it."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    hidden = [
        f"line {node.lineno}"
        for fn in ast.walk(tree)
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
        for node in ast.walk(fn)
        if (isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "diffmath")
        or (isinstance(node, ast.Import) and any(a.name.split(".")[0] == "diffmath" for a in node.names))
    ]
    assert hidden == [], f"diffmath.{module} imports diffmath inside a function at {', '.join(hidden)}"
    if module != "recipes":
        top = {n.module for n in tree.body if isinstance(n, ast.ImportFrom)}
        assert "diffmath.recipes" not in top, f"diffmath.{module} must not import recipes (recipes imports it)"


def test_objectives_name_their_loss_factories_directly():
    """OBJECTIVES maps a recipe's objective name to the loss class itself (lesson 3, eq. 3.14), no import strings."""
    from diffmath.udm import RestorationLoss

    assert recipes.OBJECTIVES == {
        "diffusion": DiffusionLoss,
        "pfgm": PoissonLoss,
        "flow-matching": FlowMatchingLoss,
        "restore": RestorationLoss,
    }
    assert isinstance(recipes.objective("flow-matching", get_schedule("rectified-flow")), FlowMatchingLoss)
    with pytest.raises(ValueError, match="unknown objective"):
        recipes.objective("score", get_schedule("rectified-flow"))


def test_results_print_a_summary_not_tensors():
    """print() of a training state or a trained model is one line: the network's size, the recipe, the steps."""
    from diffmath.core.schedules import su_linear
    from diffmath.train.training import fit

    st = fit(MLP(2, hidden=8, depth=1, prediction="eps", t_max=1000), torch.randn(64, 2), su_linear(), 3,
             batch_size=16, progress=False)  # fmt: skip
    im = recipes.train_image("digits-ddpm", progress=False)
    for text in (repr(st), repr(im)):
        assert "\n" not in text and "tensor(" not in text and "parameters" in text, text
    assert "'digits-ddpm'" in repr(im) and "1200 steps" in repr(im)
