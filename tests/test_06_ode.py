"""Lesson 6: the ODE framework (same marginals for every sigma, the PF-ODE, solvers, likelihood, encode/decode)."""

import math

import numpy as np
import pytest
import torch

import diffmath as dm
import toydata as td
from diffmath.ode import (
    decode,
    divergence,
    encode,
    ode_log_likelihood,
    ode_sample,
    pf_ode_drift,
    rademacher,
    solve_ode,
    solve_ode_reference,
)
from diffmath.sde import fokker_planck_residual, reverse_sde, sde_coefficients

f64 = torch.float64
VP = dm.VPLinear(0.0, 20.0)  # Su's abar = exp(-5 t^2): smooth at both ends
RING = td.eight_gaussians_mixture()


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0, 2.0])
def test_every_sigma_gives_the_same_marginals(lam):
    """The reverse SDEs dx = [f x - (g^2 + sigma^2)/2 score] dt + sigma dw, sigma^2 = lam g^2 (eq. 6.9), started from
    exact samples of p_1, match the exact p_t at t = 0.5, 0.2 and 0: mean and variance within 4 standard errors (plus 1%
    of the variance for the discretisation with 400 steps), MMD^2 below 2e-3 (N = 2000). lam = 2 > 1 works too: the
    text's condition sigma^2 <= g^2 is unnecessary."""
    from diffmath.metrics import mmd_rbf

    g = torch.Generator().manual_seed(int(10 * lam))
    c1 = VP.coefficients(1.0)
    x = c1.a * RING.sample(2000, g, dtype=f64) + c1.b * torch.randn(2000, 2, generator=g, dtype=f64)
    seen = {}
    for step in reverse_sde(RING.model(VP), x, VP.grid(400), VP, lam, generator=g):
        if round(step.t, 6) in (0.5, 0.2, 0.0):
            seen[round(step.t, 6)] = step.x
    for t, xt in seen.items():
        c = VP.coefficients(t)
        exact = c.a * RING.sample(2000, g, dtype=f64) + c.b * torch.randn(2000, 2, generator=g, dtype=f64)
        var = c.a**2 * torch.diagonal(RING.covariance()) + c.b**2
        n = xt.shape[0]
        se_mean = torch.sqrt(var / n)
        se_var = torch.sqrt((((xt - xt.mean(0)) ** 4).mean(0) - xt.var(0) ** 2) / n)
        assert ((xt.mean(0) - c.a * RING.mean()).abs() < 4 * se_mean).all(), t
        assert ((xt.var(0) - var).abs() < 4 * se_var + 0.01 * var).all(), t
        assert mmd_rbf(xt, exact, bandwidth=0.3) < 2e-3, t


@pytest.mark.parametrize("t", [0.2, 0.5, 0.8])
def test_fokker_planck_residual(t):
    """The exact noised density solves d_t p = -div(f x p) + g^2/2 Lap p (eq. 6.2) on a grid: residual < 1e-6,
    while the same residual with g in place of g^2 is > 1e-2."""
    u = torch.linspace(-3, 3, 25, dtype=f64)
    xx, yy = torch.meshgrid(u, u, indexing="ij")
    pts = torch.stack([xx.flatten(), yy.flatten()], 1)
    res = fokker_planck_residual(RING, VP, pts, t)
    assert res.abs().max().item() < 1e-6
    _, g2 = sde_coefficients(VP, t)
    wrong = res + 0.5 * (g2 - g2.sqrt()) * _laplacian(pts, t)  # the residual if the diffusion term used g, not g^2
    assert wrong.abs().max().item() > 1e-2


def _laplacian(pts, t):
    c = VP.coefficients(t)
    x = pts.clone().requires_grad_(True)
    p = torch.exp(RING.noised_log_prob(x, c.a, c.b))
    (grad,) = torch.autograd.grad(p.sum(), x, create_graph=True)
    return sum(torch.autograd.grad(grad[:, i].sum(), x, retain_graph=True)[0][:, i] for i in range(2)).detach()


def test_pf_ode_drift_is_the_velocity():
    """f x - g^2/2 score = da E[x0|x] + db E[eps|x] (eq. 6.7), to 1e-12."""
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(0), dtype=f64)
    for t in (0.1, 0.5, 0.9):
        c = VP.coefficients(t)
        f, g2 = sde_coefficients(VP, t)
        expected = f * x - 0.5 * g2 * RING.score(x, c.a, c.b)
        torch.testing.assert_close(pf_ode_drift(RING.model(VP), x, t, VP), expected, rtol=1e-12, atol=1e-12)


def test_dpm_solver_first_step_is_ddim():
    """DPM-Solver++'s first step is exactly DDIM (eta = 0): the PF-ODE's exponential integrator of first order."""
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(1), dtype=f64)
    grid = torch.tensor([1.0, 0.6], dtype=f64)
    torch.testing.assert_close(
        ode_sample(RING.model(VP), x, grid, VP, "dpm++2m"), dm.sample(RING.model(VP), x, grid, VP)
    )


def _slope(Ks, errs):
    lk, le = torch.log(torch.tensor(Ks, dtype=f64)), torch.log(torch.tensor(errs, dtype=f64))
    return (((lk - lk.mean()) * (le - le.mean())).sum() / ((lk - lk.mean()) ** 2).sum()).item()


@pytest.mark.parametrize(
    ("method", "Ks", "band"),
    [
        ("euler", [20, 40, 80, 160], (-1.15, -0.85)),
        ("heun", [20, 40, 80, 160], (-2.3, -1.7)),
        ("dpm++2m", [40, 80, 160, 320], (-2.4, -1.6)),
    ],
)
def test_orders_of_convergence(method, Ks, band):
    """Against a scipy RK45 solve (rtol 1e-10) from the same x_T: log-log slope of the mean endpoint error vs steps is
    about -1 for Euler and -2 for Heun and DPM-Solver++(2M) (measured -0.97, -1.99, -2.0)."""
    x_T = torch.randn(200, 2, generator=torch.Generator().manual_seed(0), dtype=f64)
    model = RING.model(VP)
    ref = solve_ode_reference(model, x_T, 1.0, 0.0, VP, rtol=1e-10, atol=1e-10)
    errs = [(ode_sample(model, x_T, VP.grid(K), VP, method) - ref).norm(dim=1).mean().item() for K in Ks]
    slope = _slope(Ks, errs)
    assert band[0] <= slope <= band[1], (slope, errs)


def test_ode_likelihood_equals_the_exact_log_density():
    """With the exact divergence and the exact p_1 as prior, the ODE log-likelihood equals the mixture's log density
    (eq. 6.21) to 1e-6."""
    x0 = RING.sample(20, torch.Generator().manual_seed(2), dtype=f64)
    c1 = VP.coefficients(1.0)
    prior = lambda x: RING.noised_log_prob(x, c1.a, c1.b)  # noqa: E731
    logp, _ = ode_log_likelihood(RING.model(VP), x0, VP, prior_log_prob=prior, rtol=1e-10, atol=1e-10)
    err = (logp - RING.log_prob(x0)).abs().max().item()
    assert err < 1e-6, err


def test_hutchinson_divergence_is_unbiased():
    """Single-probe Hutchinson estimates of div v average to the exact divergence within 4 standard errors."""
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(3), dtype=f64)
    drift = lambda z: pf_ode_drift(RING.model(VP), z, 0.3, VP)  # noqa: E731
    exact = divergence(drift, x, "exact")
    g = torch.Generator().manual_seed(4)
    est = torch.stack([divergence(drift, x, "hutchinson", rademacher((1, 5, 2), g)) for _ in range(400)])
    se = est.std(0) / math.sqrt(400)
    assert ((est.mean(0) - exact).abs() < 4 * se).all()
    assert (est.std(0) > 0).all(), "a probe must add noise"


def test_encode_decode_round_trip():
    """Encoding the data into noise and decoding it back along the PF-ODE returns the data (< 1e-5)."""
    x0 = RING.sample(30, torch.Generator().manual_seed(5), dtype=f64)
    model = RING.model(VP)
    z = encode(model, x0, VP, rtol=1e-9, atol=1e-9)
    assert z.std().item() > 0.5, "the code is noise-like"
    assert (decode(model, z, VP, rtol=1e-9, atol=1e-9) - x0).abs().max().item() < 1e-5


def test_heun_runs_both_ways():
    x0 = RING.sample(30, torch.Generator().manual_seed(6), dtype=f64)
    model = RING.model(VP)
    up = ode_sample(model, x0, torch.linspace(0.0, 1.0, 401, dtype=f64), VP, "heun")
    back = ode_sample(model, up, VP.grid(400), VP, "heun")
    assert (back - x0).abs().max().item() < 1e-3


def test_ode_bad_input():
    model = RING.model(VP)
    x = torch.zeros(3, 2, dtype=f64)
    with pytest.raises(ValueError, match="method"):
        ode_sample(model, x, VP.grid(3), VP, "rk4")
    with pytest.raises(ValueError, match="decreasing"):
        ode_sample(model, x, torch.tensor([0.0, 1.0]), VP, "dpm++2m")
    with pytest.raises(TypeError, match="continuous"):
        ode_sample(RING.model(dm.su_linear()), x, dm.su_linear().grid(3), dm.su_linear(), "heun")
    with pytest.raises(ValueError, match="not finite"):
        encode(RING.model(dm.VPLinear()), x, dm.VPLinear())
    with pytest.raises(ValueError, match="probes"):
        divergence(lambda z: z, x, "hutchinson")
    assert list(solve_ode(model, x, VP.grid(2), VP, "euler"))[-1].t == 0.0


def test_euler_in_sigma_is_ddim_and_heun_in_sigma_is_second_order():
    """In y = x/a, sigma = b/a (eq. 6.15) Euler is exactly DDIM on any schedule, discrete too, and Heun converges at
    second order even on VP-linear(0.1, 20), whose t-drift is singular at t = 0 (measured slope -2.0)."""
    x_T = torch.randn(100, 2, generator=torch.Generator().manual_seed(7), dtype=f64)
    su = dm.su_linear(1000)
    torch.testing.assert_close(
        ode_sample(RING.model(su), x_T, su.grid(25), su, "euler", variable="sigma"),
        dm.sample(RING.model(su), x_T, su.grid(25), su),
    )
    vp = dm.VPLinear()
    ref = solve_ode_reference(RING.model(vp), x_T, 1.0, 1e-4, vp, rtol=1e-10, atol=1e-10)
    Ks = [20, 40, 80, 160]
    errs = [
        (ode_sample(RING.model(vp), x_T, vp.grid(K, t_end=1e-4), vp, "heun", variable="sigma") - ref)
        .norm(dim=1)
        .mean()
        .item()
        for K in Ks
    ]
    assert -2.3 <= _slope(Ks, errs) <= -1.7, errs


def test_sde_and_ode_machinery_runs_on_a_trained_network():
    """The same samplers, solvers and likelihood run on a trained MLP (the one interface): a v-predicting MLP trained
    for 800 steps on the ring under VP-linear(0, 20) gives samples near the ring (sliced W1 < 0.35; measured 0.14) with
    the reverse SDE, the predictor-corrector sampler, Heun and DPM-Solver++, and a finite Hutchinson likelihood.
    (An eps-MLP trained as briefly sends Euler and Heun to |x| ~ 150: at sigma_max = b/a = 148 the eps error is
    multiplied by 148, while DPM-Solver++'s exact linear part is immune; v-prediction has no such weak spot.)"""
    from diffmath.metrics import sliced_w1
    from diffmath.nets.mlp import MLP
    from diffmath.sde import predictor_corrector
    from diffmath.train.training import fit

    torch.manual_seed(0)
    net = MLP(2, hidden=64, depth=2, t_max=1.0, prediction="v")
    fit(net, RING.sample(4000, torch.Generator().manual_seed(0)), VP, 800, batch_size=256, lr=3e-3, progress=False)
    net.eval()
    x_T = torch.randn(1000, 2, generator=torch.Generator().manual_seed(1))
    fresh = RING.sample(1000, torch.Generator().manual_seed(2))
    with torch.no_grad():
        outs = {
            "sde": list(reverse_sde(net, x_T, VP.grid(100), VP, 1.0, generator=torch.Generator().manual_seed(3)))[-1].x,
            "pc": list(predictor_corrector(net, x_T, VP.grid(50), VP, generator=torch.Generator().manual_seed(4)))[
                -1
            ].x,
            "heun": ode_sample(net, x_T, VP.grid(25), VP, "heun"),
            "dpm": ode_sample(net, x_T, VP.grid(25), VP, "dpm++2m"),
        }
    for name, x in outs.items():
        assert torch.isfinite(x).all(), name
        assert sliced_w1(x, fresh, generator=torch.Generator().manual_seed(0)) < 0.35, name
    logp, _ = ode_log_likelihood(
        net,
        fresh[:10],
        VP,
        t_start=1e-3,
        divergence_method="hutchinson",
        generator=torch.Generator().manual_seed(5),
        rtol=1e-5,
        atol=1e-5,
    )
    assert torch.isfinite(logp).all() and (logp < 5).all()


def test_dopri5_in_torch_is_scipys_rk45_step_for_step():
    """The likelihood's solver (:func:`diffmath.core.integrate.dopri5`) takes scipy's RK45 steps: on a nonlinear
    6-D system in float64 the same number of evaluations and the same end state to 1e-13, at two tolerances, in both
    directions; it is accurate to its tolerance against DOP853 at 1e-13; bad input is refused."""
    from scipy.integrate import solve_ivp

    from diffmath.core.integrate import dopri5

    g = torch.Generator().manual_seed(0)
    A = 0.5 * torch.randn(6, 6, generator=g, dtype=torch.float64)

    def f(t, y):
        return torch.tanh(A @ y) + math.sin(3 * t)

    def f_np(t, y):
        return f(t, torch.from_numpy(y)).numpy()

    y0 = torch.randn(6, generator=g, dtype=torch.float64)
    tight = solve_ivp(f_np, (0, 2), y0.numpy(), "DOP853", rtol=1e-13, atol=1e-13).y[:, -1]
    for tol in (1e-5, 1e-9):
        for t0, t1 in ((0.0, 2.0), (2.0, 0.5)):
            ours = dopri5(f, t0, t1, y0, tol, tol)
            ref = solve_ivp(f_np, (t0, t1), y0.numpy(), "RK45", rtol=tol, atol=tol)
            assert ours.evaluations == ref.nfev
            assert np.abs(ours.y.numpy() - ref.y[:, -1]).max() < 1e-13
        assert np.abs(dopri5(f, 0.0, 2.0, y0, tol, tol).y.numpy() - tight).max() < 50 * tol
    with pytest.raises(ValueError, match="rtol must be a positive number"):
        dopri5(f, 0.0, 1.0, y0, 0.0)
    with pytest.raises(TypeError, match="y0 must be a floating-point tensor"):
        dopri5(f, 0.0, 1.0, y0.numpy())
    with pytest.raises(ValueError, match="NaN or inf"):
        dopri5(lambda t, y: y * float("nan"), 0.0, 1.0, y0)
