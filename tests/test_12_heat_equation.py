"""Lesson 12: the continuity equation, the heat equation and the VE probability-flow ODE as heat flow."""

from functools import partial

import pytest
import torch

import toydata as td
from diffmath.heat import LinearVE, continuity_residual, heat_residual, log_grid
from diffmath.ode import ode_log_likelihood, pf_ode_drift

f64 = torch.float64
RING = td.eight_gaussians_mixture()
HEAT = LinearVE(2.0)  # sigma_t = t
GRID = torch.stack(torch.meshgrid(*[torch.linspace(-3, 3, 13, dtype=f64)] * 2, indexing="ij"), -1).reshape(-1, 2)


@pytest.mark.parametrize("t", [0.3, 1.0])
def test_noised_mixture_solves_the_heat_equation(t):
    """p_t = p_0 * N(0, t^2 I) solves d_t p = sigma sigma' Lap p (eqs. 12.5, 12.7): finite-difference residual
    (h = 1e-3) below 1e-5 of max |d_t p|; with D = sigma' alone (a wrong
    diffusion coefficient) it is O(1)."""
    res = heat_residual(RING, HEAT, GRID, t)
    dp_dt = (RING.noised_log_prob(GRID, 1.0, t + 1e-5).exp() - RING.noised_log_prob(GRID, 1.0, t - 1e-5).exp()) / 2e-5
    rel = res.abs().max().item() / dp_dt.abs().max().item()
    assert rel < 1e-5, rel
    print(f"t = {t}: relative heat residual {rel:.2e}")
    if t != 1.0:  # at t = 1, sigma sigma' = sigma': the two coincide
        wrong = dp_dt - (dp_dt - res) / t  # the residual with D = sigma' instead of sigma sigma'
        assert wrong.abs().max().item() / dp_dt.abs().max().item() > 0.1


@pytest.mark.parametrize("t", [0.2, 0.8])
def test_pf_ode_velocity_satisfies_the_continuity_equation(t):
    """The PF-ODE drift (x - E[x0|x_t])/t of LinearVE carries p_t: d_t log p + div f + f . grad log p = 0 (eq. 12.3),
    below 1e-6 (per unit of log-density per time)."""
    model = RING.model(HEAT, "velocity")
    res = continuity_residual(
        lambda x, s: RING.noised_log_prob(x, 1.0, s), lambda x, s: pf_ode_drift(model, x, s, HEAT), GRID, t
    )
    print(f"t = {t}: continuity residual {res.abs().max().item():.1e}")
    assert res.abs().max().item() < 1e-6


def test_heat_drift_is_sigma_dot_times_denoising_direction():
    """-sigma sigma' grad log p = sigma' (x - E[x0|x]) / sigma (eq. 12.9) to 1e-12."""
    x = torch.randn(40, 2, generator=torch.Generator().manual_seed(0), dtype=f64) * 2
    for t in (0.1, 0.7, 1.9):
        v = pf_ode_drift(RING.model(HEAT, "eps"), x, t, HEAT)
        assert torch.allclose(v, -t * RING.score(x, 1.0, t), atol=1e-12, rtol=0)
        assert torch.allclose(v, (x - RING.posterior_mean(x, 1.0, t)) / t, atol=1e-12, rtol=0)


def test_ve_ode_likelihood_equals_the_exact_log_density():
    """log p_0 from the heat-flow ODE (eq. 12.11) with the exact prior p_T equals the ring's log density to 1e-5
    (float64, RK45 at 1e-8), from t = 1e-3 (sigma_0 -> 0)."""
    pts = RING.sample(6, torch.Generator().manual_seed(1), dtype=f64)
    prior = partial(RING.noised_log_prob, a=1.0, b=2.0)
    logp, _ = ode_log_likelihood(RING.model(HEAT, "x0"), pts, HEAT, t_start=1e-3, prior_log_prob=prior)
    exact = RING.noised_log_prob(pts, 1.0, 1e-3)
    print(f"likelihood error {(logp - exact).abs().max().item():.1e}")
    assert (logp - exact).abs().max().item() < 1e-5


def test_log_grid_and_schedule_bad_input():
    """log_grid ends at 0 and is log-uniform before; LinearVE refuses t_max <= 0; the heat residual refuses a != 1."""
    g = log_grid(10.0, 1e-3, 5)
    assert g[-1] == 0 and len(g) == 6 and torch.allclose(g[1:-1] / g[:-2], torch.full((4,), 10**-1.0, dtype=f64))
    with pytest.raises(ValueError, match="t_max"):
        LinearVE(0.0)
    with pytest.raises(ValueError, match="t_start > t_min"):
        log_grid(1.0, 2.0, 4)
    from diffmath.core.schedules import VPCosine

    with pytest.raises(ValueError, match="a_t = 1"):
        heat_residual(RING, VPCosine(), GRID, 0.5)
