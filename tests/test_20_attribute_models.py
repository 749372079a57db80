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


def test_image_fidelity_on_digits_by_subsampling_and_with_a_recipe_sampler():
    """The digits have no independent draws: image_fidelity subsamples the held-out and training splits (n <= 359),
    takes a sampler of the caller's, and gives floors and scores of the same size; the floor is positive and its
    draws differ (the subsets do)."""
    from diffmath import sample

    im = recipes.train_image("digits-ddpm", progress=False)
    judge = recipes.train_attribute_classifier("digits", 8, progress=False)
    calls = []

    def ddpm(model, noise, cond, k):
        calls.append(k)
        return sample(model, noise, im.schedule.grid(20, t_start=0.995), im.schedule, 1.0, cond,
                      generator=torch.Generator().manual_seed(k))  # fmt: skip

    r = recipes.image_fidelity(im, judge, n=64, draws=3, sampler=ddpm)
    assert calls == [0, 1, 2] and all(len(v) == 3 for v in r.values())
    assert min(r["floor"]) > 0 and len(set(r["floor"])) == 3
    assert st.mean(r["model"]) < 10 * st.mean(r["floor"])
    with pytest.raises(ValueError, match="at most 359"):
        recipes.image_fidelity(im, judge, n=400, draws=2)


def test_the_digits_pfgm_clip_keeps_the_stated_share_of_the_prior():
    """Lesson 20, eq. 20.9: in d = 64 the recipe's clip of 20 keeps 69% of prior radii, 5 keeps 11%, and
    clip_radius(64) = 127.1 keeps 95% (100k draws, within 4 SE)."""
    from diffmath import pfgm

    assert recipes.image_recipe("digits-pfgm")["objective_kwargs"]["max_radius"] == 20.0
    r = pfgm.beta_prime_radius(100_000, 64, torch.Generator().manual_seed(1), torch.float64)
    for radius, share in ((20.0, 0.690), (5.0, 0.115), (pfgm.clip_radius(64), 0.95)):
        kept = (r <= radius).double().mean().item()
        assert abs(kept - share) < 4 * math.sqrt(share * (1 - share) / 100_000) + 5e-4, (radius, kept)
    assert abs(pfgm.clip_radius(64) - 127.1) < 0.05
