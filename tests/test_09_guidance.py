"""Lesson 9 (library part): classifier guidance and classifier-free guidance as model transformations."""

import itertools
import math

import pytest
import torch

import diffmath as dm
from diffmath.guidance import ClassifierFree, ClassifierGuided
from diffmath.ode import ode_sample
from diffmath.sde import reverse_sde

f64 = torch.float64
VP = dm.VPLinear(0.0, 20.0)
# two classes: Gaussians at (+-0.6, 0) with variance 0.25 (the notes' ch.9 example)
TWO = dm.GaussianMixture(
    torch.tensor([0.5, 0.5], dtype=f64),
    torch.tensor([[0.6, 0.0], [-0.6, 0.0]], dtype=f64),
    torch.full((2,), 0.25, dtype=f64),
)


def exact_classifier(x, t, y):
    """log p_t(y | x_t) of the mixture, differentiable in x."""
    c = VP.coefficients(t)
    post = TWO.class_posterior(x, c.a, c.b)
    return torch.log(post.gather(1, y[:, None].long())[:, 0])


@pytest.mark.parametrize("w", [0.0, 0.5, 2.0])
def test_cfg_equals_classifier_guidance_with_exact_scores(w):
    """(1 + w) eps(x, y) - w eps(x) = eps(x) - (1 + w) b grad log p(y | x) (eq. 9.12 = eq. 9.8 with gamma = 1 + w)."""
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=f64)
    y = torch.randint(0, 2, (64,), generator=torch.Generator().manual_seed(1))
    cfg = ClassifierFree(TWO.model(VP, "eps"), w)
    cg = ClassifierGuided(TWO.model(VP, "eps"), exact_classifier, VP, 1 + w)
    for t in (0.1, 0.5, 0.9):
        tt = torch.full((64,), t, dtype=f64)
        torch.testing.assert_close(cfg(x, tt, y), cg(x, tt, y), rtol=1e-9, atol=1e-9)


def _guided_samples(gamma, n=4000, seed=0, steps=200):
    guided = ClassifierGuided(TWO.model(VP, "eps"), exact_classifier, VP, gamma)
    y = torch.zeros(n, dtype=torch.long)  # class 0: the Gaussian at +0.6
    x_T = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=f64)
    return dm.sample(
        guided, x_T, VP.grid(steps), VP, eta=1.0, cond=y, generator=torch.Generator().manual_seed(seed + 1)
    )


def test_gamma_one_samples_the_class_conditional():
    """With gamma = 1 and exact scores, DDPM (1000 steps) samples N((0.6, 0), 0.25 I): mean and variance within 4
    standard errors (N = 3000; the notes measured mean 0.602, var 0.252; 200 steps leave a 10% variance bias)."""
    x = _guided_samples(1.0, n=3000, steps=1000)
    n = x.shape[0]
    assert abs(x[:, 0].mean().item() - 0.6) < 4 * math.sqrt(0.25 / n)
    assert abs(x[:, 1].mean().item()) < 4 * math.sqrt(0.25 / n)
    assert (x.var(0) - 0.25).abs().max().item() < 4 * 0.25 * math.sqrt(2 / n)


def test_stronger_guidance_sharpens_monotonically():
    """As gamma grows (0, 1, 2, 4) the mean classifier confidence p(y | x0) rises and the variance along the
    discriminative axis falls (notes: 0.499/0.835/0.939/0.976 and 0.609/0.252/0.170/0.144)."""
    conf, var = [], []
    for gamma in (0.0, 1.0, 2.0, 4.0):
        x = _guided_samples(gamma, n=3000, seed=int(gamma))
        conf.append(TWO.class_posterior(x, 1.0, 0.0)[:, 0].mean().item())
        var.append(x[:, 0].var().item())
    assert all(a < b for a, b in itertools.pairwise(conf)), conf
    assert all(a > b for a, b in itertools.pairwise(var)), var


def test_guided_models_run_in_every_sampler():
    """A guided model is a model: DDIM, DDPM, the reverse SDE and the ODE solvers take it unchanged."""
    guided = ClassifierFree(TWO.model(VP, "eps"), 1.0)
    x = torch.randn(200, 2, generator=torch.Generator().manual_seed(3), dtype=f64)
    y = torch.zeros(200, dtype=torch.long)
    outs = [
        dm.sample(guided, x, VP.grid(50), VP, eta=0.0, cond=y),
        dm.sample(guided, x, VP.grid(50), VP, eta=1.0, cond=y, generator=torch.Generator().manual_seed(0)),
        list(reverse_sde(guided, x, VP.grid(50), VP, 1.0, cond=y, generator=torch.Generator().manual_seed(0)))[-1].x,
        ode_sample(guided, x, VP.grid(25), VP, "heun", cond=y),
        ode_sample(guided, x, VP.grid(50), VP, "dpm++2m", cond=y),
    ]
    for out in outs:
        assert out.shape == x.shape and out[:, 0].mean().item() > 0.45  # pulled to the +0.6 class


def test_guidance_bad_input():
    with pytest.raises(ValueError, match="scale"):
        ClassifierFree(TWO.model(VP), -1.0)
    with pytest.raises(TypeError, match="log_prob"):
        ClassifierGuided(TWO.model(VP), "classifier", VP)
    with pytest.raises(ValueError, match="cond"):
        ClassifierFree(TWO.model(VP), 1.0)(torch.zeros(3, 2, dtype=f64), torch.full((3,), 0.5, dtype=f64))
    with pytest.raises(ValueError, match=r"shape \(B,\)"):
        ClassifierGuided(TWO.model(VP), lambda x, t, y: x, VP)(
            torch.zeros(3, 2, dtype=f64), torch.full((3,), 0.5), torch.zeros(3)
        )
