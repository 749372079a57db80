"""Lesson 10: any corruption x_t = D_t(x0) + sigma_t eps, and the reverse step that keeps p(x_{t-1} | x0)."""

import itertools
import math

import pytest
import torch

import diffmath as dm
import toydata as td
from diffmath.sampling.loop import Step, final, run
from diffmath.train.training import fit
from diffmath.udm import Blur, Corruption, OracleRestorer, PixelMask, RestorationLoss, get_corruption, udm_rule

f64 = torch.float64


def _step(t, s, sched=None):
    """A Step between two levels (coefficients of a Gaussian schedule, or placeholders for a Corruption)."""
    if sched is None:
        return Step(0, 1, float(t), float(s), 1.0, 1.0, math.nan, math.nan, 1.0, 1.0, math.nan, math.nan)
    ct, cs = sched.coefficients(torch.tensor(float(t))), sched.coefficients(torch.tensor(float(s)))
    nan = math.nan
    return Step(0, 1, float(t), float(s), ct.a.item(), ct.b.item(), nan, nan, cs.a.item(), cs.b.item(), nan, nan)


def _images(n, seed=0, size=16):
    return td.shapes(n, size, torch.Generator().manual_seed(seed)).images.to(f64)


@pytest.mark.parametrize("mix", [0.0, 0.5, 1.0, "ddpm"])
def test_the_step_keeps_the_marginal_of_a_gaussian_schedule(mix):
    """Eq. 10.7 with the exact x0 (eq. 10.13): from x_t ~ q(x_t | x0) at t = 600 of Ho's schedule, one step to
    s = 550 gives mean a_s x0 and variance b_s^2 in every coordinate, within 4 standard errors (N = 40000)."""
    sched, N = dm.ho_linear(), 40_000
    g = torch.Generator().manual_seed(1)
    x0 = torch.tensor([[1.5, -0.7]], dtype=f64).expand(N, 2)
    c = sched.coefficients(torch.tensor(600.0))
    x_t = c.a * x0 + c.b * torch.randn(N, 2, generator=g, dtype=f64)
    step = _step(600, 550, sched)
    mean, std, _ = udm_rule(sched, mix)(dm.Pair(x0, (x_t - c.a * x0) / c.b), x_t, step, {})
    x_s = mean + std * torch.randn(N, 2, generator=g, dtype=f64)
    cs = sched.coefficients(torch.tensor(550.0))
    m_err = (x_s.mean(0) - cs.a * x0[0]).abs()
    assert (m_err < 4 * cs.b / math.sqrt(N)).all(), m_err
    v_err = (x_s.var(0) - cs.b**2).abs()
    assert (v_err < 4 * cs.b**2 * math.sqrt(2 / N)).all(), v_err


@pytest.mark.parametrize("mix", [0.0, 0.6, 1.0])
def test_the_step_keeps_the_marginal_of_a_noisy_blur(mix):
    """Eq. 10.7 for x_t = blur_t(x0) + 0.1 eps: with the exact x0, one step from level 12 to 7 has mean blur_7(x0)
    and per-pixel variance 0.1^2 (4.5 SE, max over 144 pixels, 5000 chains of one 12 px image)."""
    corr, N = Blur(20, 3.0, noise=0.1), 5_000
    g = torch.Generator().manual_seed(2)
    x0 = _images(1, size=12)[:, :1].expand(N, 1, 12, 12)
    x_t = corr.corrupt(x0, torch.randn(x0.shape, generator=g, dtype=f64), 12)
    mean, std, _ = udm_rule(corr, mix)(dm.Pair(x0, x0), x_t, _step(12, 7), {})
    x_s = mean + std * torch.randn(x0.shape, generator=g, dtype=f64)
    m_err = (x_s.mean(0) - corr.degrade(x0[:1], 7)[0]).abs().max()
    assert m_err < 4.5 * 0.1 / math.sqrt(N)  # max over 144 pixels
    v_err = (x_s.var(0) - 0.01).abs().max()
    assert v_err < 4.5 * 0.01 * math.sqrt(2 / N)


def test_reusing_the_noise_reproduces_the_forward_path():
    """Eq. 10.10: with the exact x0 and mix 0, x_{t-1} = F_{t-1}(x0, F_t^{-1}(x0, x_t)) is the same eps pushed to
    level t-1, at every level of a noisy blur and of a pixel mask (1e-12)."""
    x0 = _images(6)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3), dtype=f64)
    for corr in (Blur(10, 4.0, noise=0.05), PixelMask(10, (16, 16), seed=1, noise=0.05)):
        x = corr.corrupt(x0, eps, 10)
        for t in range(10, 0, -1):
            mean, std, _ = udm_rule(corr, 0.0)(dm.Pair(x0, x0), x, _step(t, t - 1), {})
            assert std == 0
            x = mean
            expect = corr.corrupt(x0, eps, t - 1)
            assert (x - expect).abs().max().item() < 1e-12, (corr, t)


def test_corruptions_run_through_the_one_loop_and_end_at_the_data():
    """The unified rule in run(): from x_T = F_T(x0, eps) with the exact x0, any mix ends at x0 exactly (level 0 has
    no noise), on a blur, a pixel mask and a user-given corruption."""
    x0 = _images(4)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(4), dtype=f64)
    user = Corruption(8, lambda x, t: x * (1 - t / 8), noise=0.2, name="fade")
    g = torch.Generator().manual_seed(5)
    for corr in (Blur(8, 3.0), PixelMask(8, (16, 16)), user):
        grid = torch.arange(corr.T, -1, -1, dtype=f64)
        for mix in (0.0, 0.5, 1.0):
            out = final(
                run(OracleRestorer(x0), corr.corrupt(x0, eps, corr.T), grid, corr, udm_rule(corr, mix), noise=g)
            )
            assert (out - x0).abs().max().item() < 1e-12, (corr, mix)


def test_corruption_levels():
    """D_0 is the identity; a pixel mask's masked set grows with t to the whole image; the blur's sd is
    sd_max sqrt(t/T); per-sample levels equal the per-level calls."""
    x0 = _images(5)
    blur, mask = Blur(16, 4.0), PixelMask(16, (16, 16), seed=2)
    assert torch.equal(blur.degrade(x0, 0), x0) and torch.equal(mask.degrade(x0, 0), x0)
    sizes = [mask.mask(t).sum().item() for t in range(17)]
    assert sizes[0] == 0 and sizes[-1] == 256 and all(b > a for a, b in itertools.pairwise(sizes))
    assert all((mask.mask(t) <= mask.mask(t + 1)).all() for t in range(16)), "the masks are nested"
    assert blur.sd(4) == pytest.approx(2.0)
    levels = torch.tensor([0, 3, 16, 3, 9])
    per = torch.stack([blur.degrade(x0[i : i + 1], int(levels[i]))[0] for i in range(5)])
    assert torch.equal(blur.degrade(x0, levels), per)
    assert blur.degrade(x0, 16).std(dim=(-1, -2)).mean() < 0.5 * x0.std(dim=(-1, -2)).mean()
    assert isinstance(get_corruption("pixel-mask", T=4, size=[16, 16]), PixelMask)


def test_restoration_loss_trains_a_restorer_with_the_training_loop():
    """Eq. 10.6 / 11.3 through train(): a tiny UNet predicting x0 on 12 px blurred images lowers its l1 loss."""
    torch.manual_seed(0)
    data = _images(256, size=12).float()
    net = dm.nets.unet.UNet(3, (8, 16), attention=(False, False), prediction="x0", t_max=10.0)
    state = fit(net, data, None, 80, loss=RestorationLoss(Blur(10, 2.0)), batch_size=32, lr=3e-3, progress=False)
    first, last = sum(state.losses[:10]) / 10, sum(state.losses[-10:]) / 10
    assert last < 0.6 * first, (first, last)


def test_udm_bad_input():
    with pytest.raises(ValueError, match="mix must be"):
        udm_rule(dm.VPLinear(), 1.5)
    with pytest.raises(ValueError, match="ddpm"):
        udm_rule(Blur(4), "ddpm")
    with pytest.raises(TypeError, match="Corruption or a Gaussian Schedule"):
        udm_rule("blur")
    with pytest.raises(ValueError, match="noise must be"):
        Blur(4, noise=-1.0)
    with pytest.raises(ValueError, match="sd_max"):
        Blur(4, sd_max=0)
    with pytest.raises(ValueError, match=r"integer in 0\.\.4"):
        Blur(4).degrade(_images(2), 5)
    with pytest.raises(ValueError, match="images"):
        Blur(4).degrade(torch.zeros(3, 5, dtype=f64), 2)
    with pytest.raises(ValueError, match="size"):
        PixelMask(4, (16, 16)).degrade(torch.zeros(2, 3, 8, 8), 2)
    with pytest.raises(ValueError, match="unknown corruption"):
        get_corruption("snow")
    with pytest.raises(ValueError, match="norm"):
        RestorationLoss(Blur(4), norm=3)
    with pytest.raises(TypeError, match="callable"):
        Corruption(4, degrade="blur")
