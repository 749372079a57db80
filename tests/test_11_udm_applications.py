"""Lesson 11: hot diffusion is DDPM/DDIM, cold diffusion's two samplers, and masking and editing of tokens."""

import math

import pytest
import torch

import diffmath as dm
import toydata as td
from diffmath.masking import (
    MASK,
    MaskedTokenLoss,
    MaskedTokenNet,
    TokenLaw,
    corrupt_tokens,
    token_chain,
    total_variation,
    tv_floor,
)
from diffmath.sampling.loop import run
from diffmath.sampling.samplers import ddim_rule
from diffmath.train.training import fit
from diffmath.udm import Blur, OracleRestorer, PixelMask, cold_sample, udm_rule

f64 = torch.float64


def _images(n, seed=0, size=16):
    return td.shapes(n, size, torch.Generator().manual_seed(seed)).images.to(f64)


# ------------------------------------------------------------------------------------------------ hot diffusion (11.1)
@pytest.mark.parametrize(("mix", "eta"), [(0.0, 0.0), ("ddpm", 1.0)])
def test_hot_diffusion_is_ddim_and_ddpm(mix, eta):
    """Eq. 11.1: the unified step on a Gaussian schedule is DDIM (mix 0) and DDPM (mix 'ddpm' = eta 1) to 1e-12, with
    the exact ring model, 50 steps, the same injected noise."""
    ring, sched = td.eight_gaussians_mixture(), dm.VPLinear()
    x = torch.randn(400, 2, generator=torch.Generator().manual_seed(0), dtype=f64)
    grid = sched.grid(50)
    a = list(run(ring.model(sched), x, grid, sched, udm_rule(sched, mix), noise=torch.Generator().manual_seed(1)))
    b = list(run(ring.model(sched), x, grid, sched, ddim_rule(eta), noise=torch.Generator().manual_seed(1)))
    assert max((p.x - q.x).abs().max().item() for p, q in zip(a, b, strict=True)) < 1e-12


# ------------------------------------------------------------------------------------------------ cold diffusion (11.2)
def test_the_improved_cold_sampler_telescopes():
    """Eq. 11.6: whatever the restorer returns, the improved sampler ends at x_T + sum_t (D_{t-1} - D_t)(x0_hat_t)
    (1e-12); with the exact x0 both samplers return x0 from x_T = D_T(x0)."""
    x0 = _images(6)
    for corr in (Blur(20, 5.0), PixelMask(20, (16, 16), seed=3)):
        x_T = corr.degrade(x0, 20)
        noisy = OracleRestorer(x0, 0.3, torch.Generator().manual_seed(2))
        steps = list(run(noisy, x_T, torch.arange(20, -1, -1, dtype=f64), corr, udm_rule(corr, 0.0)))
        total = x_T.clone()
        for k, st in enumerate(steps):
            t = 20 - k
            total = total + corr.degrade(st.x0, t - 1) - corr.degrade(st.x0, t)
        assert (steps[-1].x - total).abs().max().item() < 1e-12
        for mix in (0.0, 1.0):
            assert (cold_sample(OracleRestorer(x0), x_T, corr, mix) - x0).abs().max().item() < 1e-12


def test_improved_cold_sampling_damps_restorer_errors_and_naive_does_not():
    """Eq. 11.7 on 16 px shapes, 20 blur levels (sd_max 5), a restorer off by N(0, 0.1^2) at every call: the naive
    sampler ends 0.1 rms from x0 (its last guess); the improved one ends at 0.1 sqrt(sum_t ||D_{t-1} - D_t||_F^2 / n),
    each within 4 SE over 48 images x 3 channels, and below naive by more than 4 SE."""
    corr, x0 = Blur(20, 5.0), _images(48, seed=1)
    basis = torch.eye(256, dtype=f64).reshape(256, 1, 16, 16)
    ops = [corr.degrade(basis, t).reshape(256, 256) for t in range(21)]
    predicted = 0.1 * math.sqrt(sum(((ops[t - 1] - ops[t]) ** 2).sum().item() for t in range(1, 21)) / 256)
    x_T = corr.degrade(x0, 20)
    err = {}
    for mix in (0.0, 1.0):
        out = cold_sample(OracleRestorer(x0, 0.1, torch.Generator().manual_seed(7)), x_T, corr, mix)
        sq = ((out - x0) ** 2).mean(dim=(-1, -2)).flatten()  # per image and channel
        err[mix] = (sq.mean().sqrt().item(), sq.std().item() / (2 * sq.mean().sqrt().item() * math.sqrt(sq.numel())))
    assert abs(err[1.0][0] - 0.1) < 4 * err[1.0][1] + 1e-3
    assert abs(err[0.0][0] - predicted) < 4 * err[0.0][1] + 1e-3
    assert err[1.0][0] - err[0.0][0] > 4 * math.hypot(err[0.0][1], err[1.0][1]), err


@pytest.mark.parametrize("name", ["restore-shapes-blur", "restore-shapes-mask"])
def test_committed_restorers_favour_the_improved_sampler(name):
    """Sec. 11.2 with the committed restorers (32 px shapes, 20 levels): from x_10 = D_10(x0) of 32 held-out images
    (half the pixels masked, or a blur of sd 5.7 px) the improved sampler (11.5) ends closer to x0 than the naive one
    (11.4), by more than 4 paired standard errors. (From level 20 a mask leaves nothing to restore: both samplers
    return the same average image.)"""
    from diffmath.recipes import COMMITTED, train_image

    im = train_image(name, progress=False)
    assert im.path.parent == COMMITTED
    test = td.shapes(32, 32, torch.Generator().manual_seed(321)).images
    x = im.schedule.degrade(test, 10)
    levels = torch.arange(10, -1, -1, dtype=f64)
    with torch.no_grad():
        err = {
            m: ((cold_sample(im.model, x, im.schedule, m, levels) - test) ** 2).mean(dim=(1, 2, 3)).sqrt()
            for m in (0, 1)
        }
    gap = err[1] - err[0]
    assert gap.mean() > 4 * gap.std() / math.sqrt(32), (err[0].mean(), err[1].mean())


# ------------------------------------------------------------------------------------------------ tokens (11.3-11.5)
@pytest.fixture(scope="module")
def law():
    return td.potts_chain()


def test_masking_the_enumerable_toy(law):
    """Sec. 11.5, length 4, vocabulary 3, N = 60000 chains: the naive sampler with the joint posterior and the
    improved one with the factorised marginals are within the Monte Carlo floor + 0.01 of the law in total variation;
    the naive sampler with the marginals is above 3x the floor."""
    g, N = torch.Generator().manual_seed(0), 60_000
    floor, _ = tv_floor(law, N, 10, g)
    tv = {}
    for method, factorised in (("naive", False), ("improved", True), ("naive", True)):
        *_, (level, out) = token_chain(law, torch.full((N, 4), MASK), "mask", method, factorised, g)
        assert level == 0 and (out >= 0).all()
        tv[method, factorised] = total_variation(out, law)
    assert tv["naive", False] < floor + 0.01 and tv["improved", True] < floor + 0.01, (floor, tv)
    assert tv["naive", True] > 3 * floor, (floor, tv)


def test_editing_the_enumerable_toy(law):
    """Sec. 11.4: from exact draws of x_L (every token substituted by a different one), the naive sampler (resubstitute
    t - 1 positions) and the improved one (correct one differing position) with the joint posterior reach the law
    within the floor + 0.01, and the improved chain changes one token per step."""
    g, N = torch.Generator().manual_seed(1), 40_000
    floor, _ = tv_floor(law, N, 10, g)
    x0 = law.sample(N, g)
    x_L = (x0 + torch.randint(1, 3, x0.shape, generator=g)) % 3
    for method in ("naive", "improved"):
        states = list(token_chain(law, x_L, "edit", method, False, g))
        assert total_variation(states[-1][1], law) < floor + 0.01, method
    prev = x_L
    for _, x in token_chain(law, x_L, "edit", "improved", False, g):
        assert ((x != prev).sum(1) == 1).all()
        prev = x


def test_a_masked_token_net_learns_the_marginals(law):
    """Eq. 11.9 learned: an MLP trained with the masked cross-entropy (eq. 10.5) in the training loop (1500 steps of
    256 from 2e5 draws) gives marginals within 0.04 of the exact ones on average over corrupted draws at every level
    (the rare contexts are off by more: they were seen a few hundred times), and its improved chain reaches the law
    within the floor + 0.025 in total variation."""
    g = torch.Generator().manual_seed(2)
    data = law.sample(200_000, g).double()
    torch.manual_seed(0)
    net = MaskedTokenNet(4, 3, width=64).double()
    state = fit(net, data, None, 1500, loss=MaskedTokenLoss(4), batch_size=256, lr=3e-3, ema_decay=None, progress=False)
    net, x0 = state.model, law.sample(20_000, g)
    for t in range(1, 5):
        x_t = corrupt_tokens(x0, t, "mask", 3, g)
        err = (net.marginals(x_t) - law.marginals(x_t)).abs().amax(-1)[x_t == MASK].mean().item()
        assert err < 0.04, (t, err)
    N = 40_000
    floor, _ = tv_floor(law, N, 10, g)
    *_, (_, out) = token_chain(net, torch.full((N, 4), MASK), "mask", "improved", True, g)
    assert total_variation(out, law) < floor + 0.025


def test_token_bad_input(law):
    with pytest.raises(ValueError, match="joint posterior draws need a TokenLaw"):
        next(token_chain(MaskedTokenNet(4, 3), torch.full((2, 4), MASK), "mask", "naive", False))
    with pytest.raises(ValueError, match="shape"):
        next(token_chain(law, torch.full((2, 5), MASK)))
    with pytest.raises(TypeError, match="integer tensor"):
        law.index(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="sum"):
        TokenLaw(torch.ones(81), 4, 3)
    with pytest.raises(ValueError, match="posterior mass 0"):
        law.posterior(torch.zeros(1, 4, dtype=torch.long), "edit", torch.tensor([0]) * 0 + 5)
    with pytest.raises(ValueError, match="level t"):
        law.posterior(torch.zeros(1, 4, dtype=torch.long), "edit")
