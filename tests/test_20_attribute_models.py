"""Lesson 20, sec. 20.3: the committed attribute-shapes models and their judge, held to stated numbers with spreads."""

import math
import statistics as st

import pytest
import torch

import toydata as td
from diffmath import recipes
from diffmath.metrics import attribute_accuracy

# measured ratio mean(model) / mean(floor) of the Frechet distance at n = 128, 5 draws, DPM-Solver++ 20 steps
# (recipes.image_fidelity); the target is 1.5x, which these 8000-step 24 px models do not reach yet
STATED = {"attr-uncond": 3.94, "attr-shape-quadrant": 1.69, "attr-colour": 3.52, "attr-size-texture": 2.75,
          "attr-joint": 1.94}  # fmt: skip


@pytest.fixture(scope="module")
def judge():
    return recipes.train_attribute_classifier("attribute-shapes", 24, progress=False)


def test_the_judge_reads_every_attribute_of_held_out_images(judge):
    """Held-out accuracy >= 0.97 on each of the six attributes (2000 images of test set 0)."""
    h = td.held_out("attribute-shapes", 2000, 24)
    acc = attribute_accuracy(judge, h.images, h.labels)
    assert min(acc.values()) >= 0.97, acc


@pytest.mark.parametrize("name", sorted(STATED))
def test_committed_model_is_within_its_stated_factor_of_the_floor(name, judge):
    """The model's Frechet distance over the real-vs-real floor, within 3 standard errors (delta method over the
    5 draws) of its stated factor."""
    im = recipes.train_image(name, progress=False)
    assert im.path.parent == recipes.COMMITTED
    r = recipes.image_fidelity(im, judge, n=128, draws=5)
    m, f = st.mean(r["model"]), st.mean(r["floor"])
    se = (m / f) * math.sqrt((st.stdev(r["model"]) / m) ** 2 / 5 + (st.stdev(r["floor"]) / f) ** 2 / 5)
    assert m / f <= STATED[name] + 3 * se, (m / f, se)
    assert all(torch.isfinite(torch.tensor(v)).all() for v in r.values())
