"""Far outliers of deterministic samplers and the clip that removes them (lesson 20, sec. 20.8, eqs. 20.11-20.12)."""

import pytest
import torch

import toydata as td
from diffmath.core.schedules import su_linear
from diffmath.guide.compose import Clipped
from diffmath.metrics import outliers, sliced_w1
from diffmath.ode import ode_sample
from diffmath.recipes import train_image, train_toy
from diffmath.sampling.samplers import sample

F64 = torch.float64


def test_outliers_counts_what_lies_beyond_the_data():
    data = torch.randn(1000, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    big_r = data.norm(dim=1).max().item()
    x = torch.cat([data[:997], torch.tensor([[50.0, 0.0], [0.0, -1.2 * big_r], [1.05 * big_r, 0.0]], dtype=F64)])
    o = outliers(x, data)
    assert o.fraction == pytest.approx(2 / 1000) and o.max_radius == pytest.approx(50.0) and o.data_radius == big_r
    assert outliers(x, data, margin=0.0).fraction == pytest.approx(3 / 1000)
    assert "0.20% beyond" in str(o)
    with pytest.raises(ValueError, match="margin"):
        outliers(x, data, margin=-1.0)
    with pytest.raises(ValueError, match="event shape"):
        outliers(x, data[:, :1])


@pytest.mark.parametrize("region", ["box", "ball"])
def test_clipped_keeps_the_pair_consistent_and_changes_nothing_inside(region):
    sched = su_linear()
    ring = td.eight_gaussians_mixture()
    exact = ring.model(sched, "eps")
    x = 3.0 * torch.randn(400, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    t = torch.full((400,), 400.0, dtype=F64)
    co = sched.coefficients(t)
    a, b = co.a[:, None], co.b[:, None]
    eps = exact(x, t)
    x0 = (x - b * eps) / a
    # a bound no x0_hat reaches: the clipped model is the model
    huge = Clipped(exact, sched, 1e6, region)
    assert torch.equal(huge(x, t), eps) or torch.allclose(huge(x, t), eps, rtol=0, atol=1e-12)
    # a bound that binds: x0 inside the region, the pair still reproduces x_t (eq. 0.1) to float64 rounding
    c = 1.5
    clip = Clipped(exact, sched, c, region)
    eps_c = clip(x, t)
    x0_c = (x - b * eps_c) / a
    size = x0_c.abs().amax(dim=1) if region == "box" else x0_c.norm(dim=1)
    assert size.max().item() <= c * (1 + 1e-9)
    assert torch.allclose(a * x0_c + b * eps_c, x, rtol=0, atol=1e-12)
    inside = (x0.abs().amax(dim=1) if region == "box" else x0.norm(dim=1)) <= c
    assert inside.any() and (~inside).any()
    assert torch.allclose(eps_c[inside], eps[inside], rtol=0, atol=1e-9)
    assert repr(clip).startswith("Clipped(") and clip.prediction == "eps"


def test_clipped_refuses_bad_input():
    sched = su_linear()
    exact = td.eight_gaussians_mixture().model(sched, "eps")
    for bad in (0.0, -1.0, float("inf"), True, "1"):
        with pytest.raises(ValueError, match="bound must be a finite number > 0"):
            Clipped(exact, sched, bad)
    with pytest.raises(ValueError, match="region must be 'box' or 'ball'"):
        Clipped(exact, sched, 1.0, "sphere")
    with pytest.raises(TypeError, match="Schedule"):
        Clipped(exact, "su_linear", 1.0)
    with pytest.raises(ValueError, match="b_t = 0"):
        Clipped(exact, sched, 1.0)(torch.zeros(3, 2, dtype=F64), torch.zeros(3, dtype=F64))


@pytest.mark.parametrize("recipe", ["eight-gaussians-ddpm", "moons-ddpm", "swiss-roll-ddpm"])
def test_the_clip_removes_the_far_outliers_of_deterministic_samplers(recipe):
    """Same x_T (3 seeds x 4000), raw eps-MLP vs its clipped version, DDIM 50 steps and DPM-Solver++(2M) 10 steps.

    Raw: about 0.3% of the samples land beyond 1.1 times the data's radius (measured 0.15-0.5% per seed, max |x| 15-81
    on data of radius 1.8-3.0), every one of them from the far tail of x_T. Clipped: none, fewer samples farther
    than 0.5 from 5000 data points (measured 11-34 vs 25-65 of the 12000: by 2.7-4.5 Poisson standard errors), and a smaller sliced W1.
    """
    tm = train_toy(recipe, progress=False)
    s, data = tm.schedule, tm.data
    samplers = {
        "DDIM-50": lambda m, x: sample(m, x, s.grid(50), s),
        "DPM++2M-10": lambda m, x: ode_sample(m, x, s.grid(10, "quadratic"), s, "dpm++2m"),
    }
    for name, run in samplers.items():
        stats = {"raw": [], "clipped": []}
        for seed in range(3):
            x_T = torch.randn(4000, 2, generator=torch.Generator().manual_seed(seed))
            for kind, model in (("raw", tm.model), ("clipped", tm.clipped)):
                x = run(model, x_T)
                o = outliers(x, data)
                far = torch.cdist(x.double(), data[:5000].double()).min(dim=1).values > 0.5
                stats[kind].append((o, far.double().mean().item(), sliced_w1(x, data[:4000])))
                if kind == "raw":
                    beyond = x.norm(dim=1) > 1.1 * o.data_radius
                    assert beyond.any() and x_T[beyond].norm(dim=1).min() > 2.5, (name, seed)
        raw_frac = sum(o.fraction for o, _, _ in stats["raw"]) / 3
        assert raw_frac > 1e-3, (name, raw_frac)
        assert all(
            o.fraction == 0 and o.max_radius <= 1.05 * o.data_radius * (1 + 1e-6) for o, _, _ in stats["clipped"]
        )
        # samples far from the data, counted over the 12000: fewer by more than 2 Poisson standard errors
        far_raw, far_clip = (4000 * sum(f for _, f, _ in stats[k]) for k in ("raw", "clipped"))
        assert far_raw - far_clip > 2 * (far_raw + far_clip) ** 0.5, (name, far_clip, far_raw)
        sw_raw, sw_clip = (sum(w for _, _, w in stats[k]) / 3 for k in ("raw", "clipped"))
        assert sw_clip < sw_raw, (name, sw_clip, sw_raw)


def test_digits_ddpm_under_ddim_needs_the_clip():
    """The eps-UNet of ``digits-ddpm`` under DDIM-50 from t = 0.98: raw pixels reach 5 (8% beyond 1.1 at seed 0, data
    in [-1, 1]); clipped, every pixel is in [-1, 1] and the pixel SD is closer to the data's. The default grid from
    t = 1 fails with a message that says what to do."""
    im = train_image("digits-ddpm", progress=False)
    s = im.schedule
    x_T = torch.randn(96, *im.data.shape[1:], generator=torch.Generator().manual_seed(0))
    raw = sample(im.model, x_T, s.grid(50, t_start=0.98), s)
    clipped = sample(im.clipped, x_T, s.grid(50, t_start=0.98), s)
    assert (raw.abs() > 1.1).double().mean() > 0.01 and clipped.abs().max() <= 1.0 + 1e-6
    sd = im.data.std().item()
    assert abs(clipped.std().item() - sd) < abs(raw.std().item() - sd)
    with pytest.raises(ValueError, match=r"start the grid below that time, e.g. schedule.grid\(K, t_start=0.98\)"):
        sample(im.model, x_T[:4], s.grid(20), s)


@pytest.mark.parametrize("recipe", ["eight-gaussians-ddpm", "moons-ddpm", "eight-gaussians-rf", "eight-gaussians-pfgm"])
def test_a_toy_recipe_samples_with_its_recommended_sampler(recipe):
    """``ToyModel.sample(n)``: the recipe's own sampler (clipped DPM-Solver++(2M), or Poisson flow's) puts no sample
    beyond 1.1 times the data's radius (4000 samples, seed 0) and lands near fresh data (sliced W1 < 0.15, about
    three times the data's own floor; the raw eps-models' DDIM leaves 0.15-0.5% far out)."""
    toy = train_toy(recipe, progress=False)
    x = toy.sample(4000, generator=torch.Generator().manual_seed(0))
    fresh = td.sample(toy.config["toy"], 4000, torch.Generator().manual_seed(7)).float()
    assert x.shape == (4000, 2) and outliers(x, toy.data).fraction == 0
    assert sliced_w1(x, fresh) < 0.15


def test_an_image_recipe_samples_with_its_recommended_sampler():
    """``ImageModel.sample``: ``digits-ddpm`` (eps on VP-cosine, which cannot start at t = 1) starts at t = 0.98 and
    keeps every pixel in [-1, 1] (clipped); a conditional recipe takes labels; Poisson flow runs its own sampler;
    a bad count is refused."""
    digits = train_image("digits-ddpm", progress=False)
    x = digits.sample(16, generator=torch.Generator().manual_seed(0))
    assert x.shape == (16, 1, 8, 8) and x.abs().max() <= 1.0 + 1e-6
    joint = train_image("attr-joint", progress=False)
    assert joint.sample(4, 5, cond=joint.cond[:4]).shape == (4, 3, 24, 24)
    pf = train_image("digits-pfgm", progress=False)
    assert torch.isfinite(pf.sample(4, 10, generator=torch.Generator().manual_seed(0))).all()
    with pytest.raises(ValueError, match="n must be"):
        digits.sample(0)
