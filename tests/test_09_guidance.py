"""Lesson 9 (library part): classifier guidance and classifier-free guidance as model transformations."""

import itertools
import math

import pytest
import torch

import diffmath as dm
import toydata as td
from diffmath.core.models import predict
from diffmath.guide.guidance import ClassifierFree, ClassifierGuided, ClassifierLoss, NoisyClassifier, Similarity
from diffmath.ode import ode_sample
from diffmath.recipes import train_toy
from diffmath.sde import reverse_sde
from diffmath.train.training import fit

f64 = torch.float64
VP = dm.VPLinear(0.0, 20.0)
# two classes: Gaussians at (+-0.6, 0) with variance 0.25 (lesson 9's example)
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


def _guided_samples(gamma, n=4000, seed=0, steps=200, eta=1.0):
    guided = ClassifierGuided(TWO.model(VP, "eps"), exact_classifier, VP, gamma)
    y = torch.zeros(n, dtype=torch.long)  # class 0: the Gaussian at +0.6
    x_T = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=f64)
    return dm.sample(
        guided, x_T, VP.grid(steps), VP, eta=eta, cond=y, generator=torch.Generator().manual_seed(seed + 1)
    )


def test_gamma_one_samples_the_class_conditional():
    """With gamma = 1 and exact scores, DDPM (1000 steps) samples N((0.6, 0), 0.25 I): mean and variance within 4
    standard errors (N = 3000; 200 steps leave a 10% variance bias)."""
    x = _guided_samples(1.0, n=3000, steps=1000)
    n = x.shape[0]
    assert abs(x[:, 0].mean().item() - 0.6) < 4 * math.sqrt(0.25 / n)
    assert abs(x[:, 1].mean().item()) < 4 * math.sqrt(0.25 / n)
    assert (x.var(0) - 0.25).abs().max().item() < 4 * 0.25 * math.sqrt(2 / n)


def test_stronger_guidance_sharpens_monotonically():
    """As gamma grows (0, 1, 2, 4) the mean classifier confidence p(y | x0) rises and the variance along the
    discriminative axis falls (measured 0.487/0.843/0.940/0.978 and 0.577/0.233/0.151/0.128; printed with -s)."""
    conf, var = [], []
    for gamma in (0.0, 1.0, 2.0, 4.0):
        x = _guided_samples(gamma, n=3000, seed=int(gamma))
        conf.append(TWO.class_posterior(x, 1.0, 0.0)[:, 0].mean().item())
        var.append(x[:, 0].var().item())
    print("confidence", [f"{c:.3f}" for c in conf], "variance", [f"{v:.3f}" for v in var])
    assert all(a < b for a, b in itertools.pairwise(conf)), conf
    assert all(a > b for a, b in itertools.pairwise(var)), var


def _tilt_moments(gamma):
    """Mean and variance along x of the tilted law p_0(x) p(y = 0 | x)^gamma / Z (the classifier at t = 0), by
    quadrature on a 1601^2 grid of [-4, 4]^2."""
    u = torch.linspace(-4, 4, 1601, dtype=f64)
    pts = torch.stack(torch.meshgrid(u, u, indexing="ij"), -1).reshape(-1, 2)
    w = torch.exp(TWO.log_prob(pts)) * TWO.class_posterior(pts, 1.0, 0.0)[:, 0] ** gamma
    w = w / w.sum()
    mean = (w * pts[:, 0]).sum()
    return mean.item(), (w * (pts[:, 0] - mean) ** 2).sum().item()


def test_guidance_away_from_gamma_one_is_sharper_than_the_tilt_and_depends_on_the_sampler():
    """Sec. 9.3: the guided field with gamma != 1 is not the score of a noised law. At gamma = 1, DDPM (eta = 1) and
    DDIM (eta = 0), 500 steps each from the same x_T, both sample p(x | y) = the tilt: mean and variance along x within
    4 SE of 0.6 and 0.25. At gamma = 4 both are sharper than the tilt p_0 p(y | x)^4 (variance below the tilt's 0.154
    by more than 4 SE) and they disagree with each other (means and variances more than 4 SE apart; measured means
    1.03 and 1.28 against the tilt's 0.82, variances 0.138 and 0.084; N = 3000)."""
    n = 3000
    for gamma in (1.0, 4.0):
        tilt_mean, tilt_var = _tilt_moments(gamma)
        moments = {}
        for eta in (1.0, 0.0):
            x = _guided_samples(gamma, n=n, steps=500, eta=eta)[:, 0]
            moments[eta] = (x.mean().item(), x.var().item())
        (m1, v1), (m0, v0) = moments[1.0], moments[0.0]
        print(
            f"gamma = {gamma}: mean/var tilt {tilt_mean:.3f}/{tilt_var:.3f}, DDPM {m1:.3f}/{v1:.3f}, DDIM {m0:.3f}/{v0:.3f}"
        )
        se_m = {e: math.sqrt(v / n) for e, (_, v) in moments.items()}
        se_v = {e: v * math.sqrt(2 / (n - 1)) for e, (_, v) in moments.items()}
        if gamma == 1.0:
            for eta, (m, v) in moments.items():
                assert abs(m - tilt_mean) < 4 * se_m[eta] and abs(v - tilt_var) < 4 * se_v[eta], (eta, m, v)
        else:
            for eta, (_, v) in moments.items():
                assert v < tilt_var - 4 * se_v[eta], (eta, v, tilt_var)
            assert abs(m1 - m0) > 4 * math.hypot(se_m[1.0], se_m[0.0])
            assert abs(v1 - v0) > 4 * math.hypot(se_v[1.0], se_v[0.0])


def test_clean_classifier_on_the_denoised_guess_is_an_approximation():
    """A clean classifier fed the denoised guess x0_hat(x_t) (sec. 9.5) is not the noisy classifier p_t(y | x_t):
    E[p(y | x0) | x_t] != p(y | E[x0 | x_t]). For the two classes on 2000 points the class-0 probabilities differ by
    more than 0.1 at t = 0.5 (measured 0.18) and by less than 0.05 at t = 0.05 (measured 0.024), where x_t is
    nearly clean."""
    model = TWO.model(VP, "eps")
    x = torch.randn(2000, 2, generator=torch.Generator().manual_seed(0), dtype=f64)
    gap = {}
    for t in (0.05, 0.5):
        c = VP.coefficients(torch.tensor(t, dtype=f64))
        noisy = TWO.class_posterior(x, c.a, c.b)[:, 0]
        x0_hat = predict(model, x, torch.full((2000,), t, dtype=f64), VP, "x0")
        gap[t] = (TWO.class_posterior(x0_hat, 1.0, 0.0)[:, 0] - noisy).abs().max().item()
    assert gap[0.5] > 0.1 and gap[0.05] < 0.05, gap


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


RING = td.eight_gaussians_mixture()
SU = dm.su_linear()


def _in_mode(x, y):
    """Fraction of samples whose nearest ring mode is their class."""
    return (torch.cdist(x.double(), RING.means).argmin(1) == y).double().mean().item()


@pytest.fixture(scope="module")
def noisy_classifier():
    torch.manual_seed(0)
    x, y = td.sample("eight-gaussians", 20000, torch.Generator().manual_seed(0), labels=True)
    clf = NoisyClassifier(2, 8, 64, 3, SU.t_max)
    state = fit(clf, x, None, 2000, batch_size=512, lr=3e-3, labels=y, loss=ClassifierLoss(SU), progress=False)
    return state.ema


def test_a_trained_noisy_classifier_matches_the_exact_class_posterior(noisy_classifier):
    """Eq. 9.10: trained on noised labelled ring data, p_phi(y | x_t) is within 0.05 (mean total variation) of the
    exact p(y | x_t) of the labelled mixture at t = 100, 400, 700."""
    g = torch.Generator().manual_seed(1)
    labelled = dm.GaussianMixture(RING.weights, RING.means, torch.full((8,), 0.15**2, dtype=f64), torch.arange(8))
    for t in (100.0, 400.0, 700.0):
        c = SU.coefficients(torch.tensor(t, dtype=f64))
        x = c.a * RING.sample(2000, g, dtype=f64) + c.b * torch.randn(2000, 2, generator=g, dtype=f64)
        exact = labelled.class_posterior(x, c.a, c.b)
        learned = torch.softmax(noisy_classifier(x.float(), t), -1).double()
        assert 0.5 * (learned - exact).abs().sum(1).mean() < 0.05, t


def test_classifier_guidance_with_a_trained_classifier_picks_the_class(noisy_classifier):
    """Eq. 9.8 with the exact unconditional ring and the trained classifier (DDIM, 50 steps): at gamma = 1 over 90%
    of the samples land in the requested mode, at gamma = 0 about 1/8 (within 4 SE)."""
    y = torch.arange(8).repeat(100)
    x_T = torch.randn(800, 2, generator=torch.Generator().manual_seed(2))
    fracs = []
    for gamma in (0.0, 1.0):
        guided = ClassifierGuided(RING.model(SU, "eps"), noisy_classifier.log_prob, SU, gamma)
        fracs.append(_in_mode(dm.sample(guided, x_T, SU.grid(50), SU, cond=y), y))
    assert abs(fracs[0] - 1 / 8) < 4 * math.sqrt(1 / 8 * 7 / 8 / 800) and fracs[1] > 0.9, fracs


def test_similarity_guidance_pulls_towards_the_reference():
    """Eq. 9.9 with the model's own denoised guess as encoder and the direction of mode 1 (45 degrees) as reference:
    the share of samples in modes 0-2 grows with the scale (1/8 per mode unguided)."""
    model = RING.model(SU, "eps")
    sim = Similarity(lambda x, t: predict(model, x, t, SU, "x0"), torch.tensor([[1.0, 1.0]], dtype=f64), 0.2)
    x_T = torch.randn(1000, 2, generator=torch.Generator().manual_seed(3), dtype=f64)
    y = torch.zeros(1000, dtype=torch.long)
    shares = []
    for gamma in (0.0, 0.5, 2.0):
        x = dm.sample(ClassifierGuided(model, sim, SU, gamma), x_T, SU.grid(50), SU, cond=y)
        shares.append((torch.cdist(x, RING.means).argmin(1) <= 2).double().mean().item())
    assert abs(shares[0] - 3 / 8) < 0.06 and shares[0] < shares[1] < shares[2] and shares[2] > 0.9, shares


def test_cfg_on_a_trained_conditional_mlp():
    """A conditional MLP trained with 15% label dropout (recipe eight-gaussians-cfg, eq. 9.11) samples its class
    with w = 0 (over 90% in the requested mode); w = 2 keeps at least as many there and shrinks the spread of the
    in-mode samples about their class mean (measured 0.038 -> 0.008 at w = 1 in notebook 09; data 0.045); the null
    label gives the whole ring (mode weights within 0.03 of 1/8). Guidance scales may be numpy or 0-d tensors."""
    toy = train_toy("eight-gaussians-cfg", progress=False)
    y = torch.arange(8).repeat(150)
    x_T = torch.randn(1200, 2, generator=torch.Generator().manual_seed(4))
    stats = []
    for w in (0.0, torch.tensor(2.0)):
        x = dm.sample(ClassifierFree(toy.model, w), x_T, SU.grid(100), SU, cond=y).double()
        inside = torch.cdist(x, RING.means).argmin(1) == y
        centred = torch.cat([x[inside & (y == k)] - x[inside & (y == k)].mean(0) for k in range(8)])
        stats.append((inside.double().mean().item(), centred.pow(2).sum(1).mean().item()))
    assert stats[0][0] > 0.9 and stats[1][0] >= stats[0][0] and stats[1][1] < 0.5 * stats[0][1], stats
    x = dm.sample(toy.model, x_T, SU.grid(100), SU, cond=torch.full((1200,), -1))
    assert (dm.metrics.mode_weights(RING, x) - 1 / 8).abs().max() < 0.03


def test_guidance_bad_input():
    with pytest.raises(ValueError, match="scale"):
        ClassifierFree(TWO.model(VP), -1.0)
    with pytest.raises(ValueError, match="scale"):
        ClassifierFree(TWO.model(VP), "strong")
    with pytest.raises(TypeError, match="log_prob"):
        ClassifierGuided(TWO.model(VP), "classifier", VP)
    with pytest.raises(ValueError, match="cond"):
        ClassifierFree(TWO.model(VP), 1.0)(torch.zeros(3, 2, dtype=f64), torch.full((3,), 0.5, dtype=f64))
    with pytest.raises(ValueError, match=r"shape \(B,\)"):
        ClassifierGuided(TWO.model(VP), lambda x, t, y: x, VP)(
            torch.zeros(3, 2, dtype=f64), torch.full((3,), 0.5), torch.zeros(3)
        )
    with pytest.raises(ValueError, match="num_classes"):
        NoisyClassifier(2, 1)
    with pytest.raises(ValueError, match="labels"):
        ClassifierLoss(SU)(NoisyClassifier(2, 8), torch.zeros(4, 2), torch.Generator(), None)
    with pytest.raises(ValueError, match="temperature"):
        Similarity(lambda x, t: x, torch.ones(1, 2), 0.0)
    with pytest.raises(TypeError, match="encoder"):
        Similarity("clip", torch.ones(1, 2))
