"""Solver benchmark: every diffmath rule x grid against every diffusers scheduler x option, on the EXACT model.

The task (lesson 6, sec. 6.13): the probability-flow ODE of the exact 8-Gaussian ring (radius 2, std 0.15) on Ho et
al.'s linear schedule (T = 1000, sigma_max = b/a = 157.4), from x_T ~ N(0, I) at t = T. With the exact noise
prediction the only error left is the solver's (and its grid's). At NFE = 5, 8, 10, 15, 20, 50 model calls we report,
over 5 seeds of x_T (2000 points each; mean +- standard error over the seeds):

- ``err``: the mean distance of the endpoints to the reference solution of the PF-ODE from the same x_T (scipy RK45,
  rtol = atol = 1e-10, in y = x/a and sigma = b/a: ``diffmath.exact.reference.exact_pf_ode``);
- ``SW1``: the sliced W1 distance of the samples to fresh data (its floor, fresh data against fresh data, is printed);
- ``last``: what a first-order last step costs, as a share of ``err``: the distance to the reference endpoint of the
  step x0_hat (DDIM's, Euler's and every diffusers scheduler's last step into sigma = 0) taken from the EXACT state at
  the configuration's smallest nonzero sigma. Near 100 %: that one step is the configuration's error.

Best against best, chosen the same way for both libraries. Every configuration is first screened on a tuning seed
(seed 100, 500 points, never evaluated): diffmath's rules (DDIM, Heun in sigma, DPM-Solver++ 2M/3M in both forms,
each with the last step first order or in sigma, UniPC 1-3 with bh1/bh2 likewise, DEIS 2-3, DPM-Solver++(2S) and
(3S)) on the uniform, quadratic, Karras and log-SNR grids and on the power grids of ``diffmath.solvers.tune_grid``
(t_min x rho); diffusers' DDIM, Euler, Heun, DPM-Solver++ multistep 2M/3M, singlestep 2S/3S, UniPC 1-3 and DEIS 1-3
schedulers over their documented options (timestep_spacing linspace/leading/trailing; default, Karras, exponential,
beta and (DPM) Lu-lambda sigmas; solver_type; lower_order_final; final_sigmas_type zero/sigma_min; 659
configurations). The best configuration of each family per NFE is then evaluated on the 5 seeds. The stored choices
(``diffmath.solvers.TUNED_GRIDS`` and ``DIFFUSERS_BEST`` below) are what ``--tune`` prints; ``--tune`` re-screens
everything (366 s of screening on one core, then the evaluation); the default run evaluates the stored choices (about
3 minutes on a free core, 7 on a busy one).

diffusers' model is a perfect network: it gets only (x, timestep) and returns the exact noise prediction at the
noise level of that timestep (log-sigma interpolation between integer timesteps, as diffusers' own ``_sigma_to_t``
maps sigmas to timesteps). The DPM-Solver, UniPC and DEIS schedulers round Karras/exponential timesteps to integers,
so there the network is evaluated at a slightly different noise level than the solver assumes; that is diffusers'
behaviour with any network. A last section runs diffusers' own DPM-Solver++ and UniPC on diffmath's tuned grid
(custom ``timesteps``/``sigmas``, documented options), which separates the grid's share of the gain from the solver's.

``--trained`` and ``--image`` run the stored choices of both libraries with a network instead (the MLP of the recipe
``eight-gaussians-ddpm`` on Su's schedule; the committed ``digits-ddpm`` image model), scored against that network's
own 1000-step ODE solution (about 5 minutes each on one core).

Run: ``python benchmarks/solvers.py`` (stored choices), ``python benchmarks/solvers.py --tune`` (screen again),
``python benchmarks/solvers.py --trained``, ``python benchmarks/solvers.py --image --n 16``. Not a test: it prints
tables.
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
import warnings

import numpy as np
import torch
from scipy.integrate import solve_ivp

import diffmath as dm
import toydata as td
from diffmath.exact.reference import exact_pf_ode
from diffmath.metrics import sliced_w1
from diffmath.ode import dpm_rule, sigma_heun_rule
from diffmath.sampling.loop import final as last_state
from diffmath.sampling.loop import run
from diffmath.sampling.samplers import ddim_rule
from diffmath.solvers import TUNED_GRIDS, deis_rule, dpm_multistep_rule, dpm_singlestep_rule, tune_grid, unipc_rule

NFES = (5, 8, 10, 15, 20, 50)
SEEDS = (0, 1, 2, 3, 4)
TUNE_SEED = 100
T_MINS = (1, 2, 4, 8, 15, 25, 40, 60, 90)
RHOS = (1.5, 2.0, 2.5, 3.0, 3.5, 4.0)
FIXED = ("uniform", "quadratic", "karras", "log-snr")
F64 = torch.float64
HO = dm.ho_linear(1000)
RING = td.eight_gaussians_mixture()


def ours() -> dict[str, tuple[object, int]]:
    """diffmath's candidates: name -> (rule, model calls per step)."""
    rules: dict[str, tuple[object, int]] = {"ddim": (ddim_rule(0.0), 1), "heun": (sigma_heun_rule, 2)}
    rules["dpm++2m"] = (dpm_rule, 1)
    for order, form, fin in [(2, "taylor", f) for f in ("first", "sigma")] + [
        (3, form, f) for form in ("taylor", "lu") for f in ("first", "sigma")
    ]:
        r = dpm_multistep_rule(order, True, form, fin)
        rules[r.key] = (r, 1)
    for order, variant, fin in itertools.product((1, 2, 3), ("bh1", "bh2"), ("first", "sigma")):
        r = unipc_rule(order, variant, True, True, fin)
        rules[r.key] = (r, 1)
    for order in (2, 3):
        r = deis_rule(order)
        rules[r.key] = (r, 1)
    for order, form in itertools.product((2, 3), ("lu", "taylor")):
        r = dpm_singlestep_rule(form, order=order)
        rules[r.key] = (r, 1)
    return rules


def steps_for(evals: int, nfe: int) -> int:
    return (nfe + 1) // 2 if evals == 2 else nfe  # Heun: K steps cost 2K - 1 calls


def our_grid(spec: tuple, steps: int, schedule=HO) -> torch.Tensor:
    if spec[0] == "power":
        return schedule.grid(steps, "power", rho=spec[2], t_min=spec[1])
    return schedule.grid(steps, spec[0])


def our_run(
    rule, spec: tuple, steps: int, x_T: torch.Tensor, model=None, schedule=HO
) -> tuple[torch.Tensor, torch.Tensor, float, int]:
    """Endpoint, state at the last nonzero time, that time, model calls (the exact model unless ``model``)."""
    model = RING.model(HO, "eps") if model is None else model
    calls = 0

    def counted(x, t, cond=None):
        nonlocal calls
        calls += 1
        return model(x, t, cond)

    counted.prediction = "eps"
    grid = our_grid(spec, steps, schedule)
    with torch.no_grad():
        xs = [s.x for s in run(counted, x_T, grid, schedule, rule)]
    before = xs[-2] if len(xs) > 1 else x_T
    return xs[-1], before, float(grid[-2]), calls


# ---------------------------------------------------------------------------------------------------------------------
# diffusers

COMMON = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear"}
SIGMAS = {
    "default": {},
    "karras": {"use_karras_sigmas": True},
    "exponential": {"use_exponential_sigmas": True},
    "beta": {"use_beta_sigmas": True},
}
SPACINGS = ("linspace", "leading", "trailing")
LOG_SIGMA = torch.log(HO.sigma(torch.arange(1, 1001, dtype=F64))).numpy()  # diffusers' timestep k is diffmath's k + 1

# The best configuration of each diffusers family per NFE on the tuning seed, as printed by --tune.
DIFFUSERS_BEST: dict[str, dict[int, dict]] = {
    "DDIM": {
        5: {"timestep_spacing": "trailing", "set_alpha_to_one": True, "clip_sample": False, "_cls": "DDIMScheduler"},
        8: {"timestep_spacing": "trailing", "set_alpha_to_one": True, "clip_sample": False, "_cls": "DDIMScheduler"},
        10: {
            "timestep_spacing": "leading",
            "set_alpha_to_one": True,
            "clip_sample": False,
            "steps_offset": 1,
            "_cls": "DDIMScheduler",
        },
        15: {
            "timestep_spacing": "leading",
            "set_alpha_to_one": True,
            "clip_sample": False,
            "steps_offset": 1,
            "_cls": "DDIMScheduler",
        },
        20: {
            "timestep_spacing": "leading",
            "set_alpha_to_one": True,
            "clip_sample": False,
            "steps_offset": 1,
            "_cls": "DDIMScheduler",
        },
        50: {
            "timestep_spacing": "leading",
            "set_alpha_to_one": True,
            "clip_sample": False,
            "steps_offset": 1,
            "_cls": "DDIMScheduler",
        },
    },
    "Euler": {
        5: {"timestep_spacing": "leading", "use_karras_sigmas": True, "_cls": "EulerDiscreteScheduler"},
        8: {"timestep_spacing": "trailing", "_cls": "EulerDiscreteScheduler"},
        10: {"timestep_spacing": "leading", "_cls": "EulerDiscreteScheduler"},
        15: {"timestep_spacing": "leading", "_cls": "EulerDiscreteScheduler"},
        20: {"timestep_spacing": "leading", "_cls": "EulerDiscreteScheduler"},
        50: {"timestep_spacing": "trailing", "use_exponential_sigmas": True, "_cls": "EulerDiscreteScheduler"},
    },
    "Heun": {
        5: {"timestep_spacing": "trailing", "use_karras_sigmas": True, "_cls": "HeunDiscreteScheduler"},
        8: {"timestep_spacing": "trailing", "use_karras_sigmas": True, "_cls": "HeunDiscreteScheduler"},
        10: {"timestep_spacing": "trailing", "use_karras_sigmas": True, "_cls": "HeunDiscreteScheduler"},
        15: {"timestep_spacing": "trailing", "_cls": "HeunDiscreteScheduler"},
        20: {"timestep_spacing": "leading", "_cls": "HeunDiscreteScheduler"},
        50: {"timestep_spacing": "leading", "use_exponential_sigmas": True, "_cls": "HeunDiscreteScheduler"},
    },
    "DPM++2M": {
        5: {
            "solver_order": 2,
            "solver_type": "heun",
            "timestep_spacing": "leading",
            "lower_order_final": True,
            "final_sigmas_type": "sigma_min",
            "_cls": "DPMSolverMultistepScheduler",
        },
        8: {
            "solver_order": 2,
            "solver_type": "heun",
            "timestep_spacing": "leading",
            "lower_order_final": True,
            "final_sigmas_type": "sigma_min",
            "_cls": "DPMSolverMultistepScheduler",
        },
        10: {
            "solver_order": 2,
            "solver_type": "midpoint",
            "timestep_spacing": "leading",
            "lower_order_final": True,
            "final_sigmas_type": "sigma_min",
            "_cls": "DPMSolverMultistepScheduler",
        },
        15: {
            "solver_order": 2,
            "solver_type": "midpoint",
            "timestep_spacing": "linspace",
            "lower_order_final": True,
            "final_sigmas_type": "zero",
            "use_lu_lambdas": True,
            "_cls": "DPMSolverMultistepScheduler",
        },
        20: {
            "solver_order": 2,
            "solver_type": "midpoint",
            "timestep_spacing": "linspace",
            "lower_order_final": True,
            "final_sigmas_type": "zero",
            "use_lu_lambdas": True,
            "_cls": "DPMSolverMultistepScheduler",
        },
        50: {
            "solver_order": 2,
            "solver_type": "midpoint",
            "timestep_spacing": "linspace",
            "lower_order_final": True,
            "final_sigmas_type": "zero",
            "use_lu_lambdas": True,
            "_cls": "DPMSolverMultistepScheduler",
        },
    },
    "DPM++3M": {
        5: {
            "solver_order": 3,
            "solver_type": "heun",
            "timestep_spacing": "leading",
            "lower_order_final": False,
            "final_sigmas_type": "zero",
            "_cls": "DPMSolverMultistepScheduler",
        },
        8: {
            "solver_order": 3,
            "solver_type": "midpoint",
            "timestep_spacing": "leading",
            "lower_order_final": True,
            "final_sigmas_type": "sigma_min",
            "_cls": "DPMSolverMultistepScheduler",
        },
        10: {
            "solver_order": 3,
            "solver_type": "heun",
            "timestep_spacing": "linspace",
            "lower_order_final": False,
            "final_sigmas_type": "zero",
            "use_exponential_sigmas": True,
            "_cls": "DPMSolverMultistepScheduler",
        },
        15: {
            "solver_order": 3,
            "solver_type": "heun",
            "timestep_spacing": "linspace",
            "lower_order_final": True,
            "final_sigmas_type": "zero",
            "use_lu_lambdas": True,
            "_cls": "DPMSolverMultistepScheduler",
        },
        20: {
            "solver_order": 3,
            "solver_type": "heun",
            "timestep_spacing": "linspace",
            "lower_order_final": True,
            "final_sigmas_type": "zero",
            "use_exponential_sigmas": True,
            "_cls": "DPMSolverMultistepScheduler",
        },
        50: {
            "solver_order": 3,
            "solver_type": "midpoint",
            "timestep_spacing": "linspace",
            "lower_order_final": True,
            "final_sigmas_type": "zero",
            "use_lu_lambdas": True,
            "_cls": "DPMSolverMultistepScheduler",
        },
    },
    "DPM++2S": {
        5: {
            "solver_order": 2,
            "solver_type": "heun",
            "lower_order_final": True,
            "use_exponential_sigmas": True,
            "_cls": "DPMSolverSinglestepScheduler",
        },
        8: {
            "solver_order": 2,
            "solver_type": "heun",
            "lower_order_final": True,
            "use_exponential_sigmas": True,
            "_cls": "DPMSolverSinglestepScheduler",
        },
        10: {
            "solver_order": 2,
            "solver_type": "midpoint",
            "lower_order_final": True,
            "use_karras_sigmas": True,
            "_cls": "DPMSolverSinglestepScheduler",
        },
        15: {
            "solver_order": 2,
            "solver_type": "heun",
            "lower_order_final": True,
            "use_exponential_sigmas": True,
            "_cls": "DPMSolverSinglestepScheduler",
        },
        20: {
            "solver_order": 2,
            "solver_type": "heun",
            "lower_order_final": True,
            "use_exponential_sigmas": True,
            "_cls": "DPMSolverSinglestepScheduler",
        },
        50: {
            "solver_order": 2,
            "solver_type": "heun",
            "lower_order_final": True,
            "use_exponential_sigmas": True,
            "_cls": "DPMSolverSinglestepScheduler",
        },
    },
    "DPM++3S": {
        5: {
            "solver_order": 3,
            "solver_type": "heun",
            "lower_order_final": True,
            "use_karras_sigmas": True,
            "_cls": "DPMSolverSinglestepScheduler",
        },
        8: {
            "solver_order": 3,
            "solver_type": "heun",
            "lower_order_final": True,
            "use_exponential_sigmas": True,
            "_cls": "DPMSolverSinglestepScheduler",
        },
        10: {
            "solver_order": 3,
            "solver_type": "heun",
            "lower_order_final": True,
            "use_karras_sigmas": True,
            "_cls": "DPMSolverSinglestepScheduler",
        },
        15: {
            "solver_order": 3,
            "solver_type": "midpoint",
            "lower_order_final": True,
            "use_exponential_sigmas": True,
            "_cls": "DPMSolverSinglestepScheduler",
        },
        20: {
            "solver_order": 3,
            "solver_type": "midpoint",
            "lower_order_final": True,
            "use_exponential_sigmas": True,
            "_cls": "DPMSolverSinglestepScheduler",
        },
        50: {
            "solver_order": 3,
            "solver_type": "heun",
            "lower_order_final": True,
            "use_exponential_sigmas": True,
            "_cls": "DPMSolverSinglestepScheduler",
        },
    },
    "UniPC": {
        5: {
            "solver_order": 3,
            "solver_type": "bh1",
            "timestep_spacing": "leading",
            "lower_order_final": True,
            "final_sigmas_type": "sigma_min",
            "_cls": "UniPCMultistepScheduler",
        },
        8: {
            "solver_order": 1,
            "solver_type": "bh1",
            "timestep_spacing": "linspace",
            "lower_order_final": True,
            "final_sigmas_type": "sigma_min",
            "use_exponential_sigmas": True,
            "_cls": "UniPCMultistepScheduler",
        },
        10: {
            "solver_order": 1,
            "solver_type": "bh1",
            "timestep_spacing": "linspace",
            "lower_order_final": True,
            "final_sigmas_type": "sigma_min",
            "use_exponential_sigmas": True,
            "_cls": "UniPCMultistepScheduler",
        },
        15: {
            "solver_order": 2,
            "solver_type": "bh2",
            "timestep_spacing": "linspace",
            "lower_order_final": True,
            "final_sigmas_type": "sigma_min",
            "use_exponential_sigmas": True,
            "_cls": "UniPCMultistepScheduler",
        },
        20: {
            "solver_order": 2,
            "solver_type": "bh2",
            "timestep_spacing": "linspace",
            "lower_order_final": True,
            "final_sigmas_type": "zero",
            "use_exponential_sigmas": True,
            "_cls": "UniPCMultistepScheduler",
        },
        50: {
            "solver_order": 3,
            "solver_type": "bh2",
            "timestep_spacing": "linspace",
            "lower_order_final": True,
            "final_sigmas_type": "zero",
            "use_karras_sigmas": True,
            "_cls": "UniPCMultistepScheduler",
        },
    },
    "DEIS": {
        5: {
            "solver_order": 3,
            "timestep_spacing": "linspace",
            "lower_order_final": False,
            "use_exponential_sigmas": True,
            "_cls": "DEISMultistepScheduler",
        },
        8: {
            "solver_order": 3,
            "timestep_spacing": "linspace",
            "lower_order_final": True,
            "use_exponential_sigmas": True,
            "_cls": "DEISMultistepScheduler",
        },
        10: {
            "solver_order": 3,
            "timestep_spacing": "linspace",
            "lower_order_final": True,
            "use_exponential_sigmas": True,
            "_cls": "DEISMultistepScheduler",
        },
        15: {
            "solver_order": 3,
            "timestep_spacing": "linspace",
            "lower_order_final": True,
            "use_exponential_sigmas": True,
            "_cls": "DEISMultistepScheduler",
        },
        20: {
            "solver_order": 3,
            "timestep_spacing": "linspace",
            "lower_order_final": True,
            "use_exponential_sigmas": True,
            "_cls": "DEISMultistepScheduler",
        },
        50: {
            "solver_order": 3,
            "timestep_spacing": "linspace",
            "lower_order_final": True,
            "use_karras_sigmas": True,
            "_cls": "DEISMultistepScheduler",
        },
    },
}


def diffusers_configs() -> list[tuple[str, str, dict]]:
    """(family, scheduler class name, options) for every screened configuration."""
    out = []
    for sp in SPACINGS:
        kw = {"timestep_spacing": sp, "set_alpha_to_one": True, "clip_sample": False}
        out.append(("DDIM", "DDIMScheduler", kw | ({"steps_offset": 1} if sp == "leading" else {})))
    for sp, sg in itertools.product(SPACINGS, SIGMAS):
        out.append(("Euler", "EulerDiscreteScheduler", {"timestep_spacing": sp, **SIGMAS[sg]}))
        out.append(("Heun", "HeunDiscreteScheduler", {"timestep_spacing": sp, **SIGMAS[sg]}))
    for order, st, sp, sg, lof, fin in itertools.product(
        (2, 3), ("midpoint", "heun"), SPACINGS, [*SIGMAS, "lu"], (True, False), ("zero", "sigma_min")
    ):
        sig = {"use_lu_lambdas": True} if sg == "lu" else SIGMAS[sg]
        kw = {"solver_order": order, "solver_type": st, "timestep_spacing": sp, "lower_order_final": lof}
        out.append((f"DPM++{order}M", "DPMSolverMultistepScheduler", kw | {"final_sigmas_type": fin, **sig}))
    for order, st, sg, lof in itertools.product((2, 3), ("midpoint", "heun"), SIGMAS, (True, False)):
        kw = {"solver_order": order, "solver_type": st, "lower_order_final": lof, **SIGMAS[sg]}
        out.append((f"DPM++{order}S", "DPMSolverSinglestepScheduler", kw))
    for order, st, sp, sg, lof, fin in itertools.product(
        (1, 2, 3), ("bh1", "bh2"), SPACINGS, SIGMAS, (True, False), ("zero", "sigma_min")
    ):
        kw = {"solver_order": order, "solver_type": st, "timestep_spacing": sp, "lower_order_final": lof}
        out.append(("UniPC", "UniPCMultistepScheduler", kw | {"final_sigmas_type": fin, **SIGMAS[sg]}))
    for order, sp, sg, lof in itertools.product((1, 2, 3), SPACINGS, SIGMAS, (True, False)):
        kw = {"solver_order": order, "timestep_spacing": sp, "lower_order_final": lof, **SIGMAS[sg]}
        out.append(("DEIS", "DEISMultistepScheduler", kw))
    return out


def perfect_eps(x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
    sigma = math.exp(float(np.interp(float(timestep), np.arange(1000), LOG_SIGMA)))
    a = 1.0 / math.sqrt(1.0 + sigma * sigma)
    return RING.eps_mean(x, a, sigma * a)


def diffusers_run(
    cls_name: str,
    kw: dict,
    nfe: int,
    x_T: torch.Tensor,
    grid: torch.Tensor | None = None,
    eps_fn=perfect_eps,
    common: dict = COMMON,
) -> tuple[torch.Tensor, torch.Tensor, float, int]:
    """Endpoint, state (VP units) before the last step, the sigma there, model calls; on diffmath's ``grid`` (ending
    at t = 0) if given; ``eps_fn(x, timestep)`` is the network (the exact one unless given)."""
    import diffusers

    sched = getattr(diffusers, cls_name)(**common, **kw)
    steps = (nfe + 1) // 2 if cls_name == "HeunDiscreteScheduler" else nfe
    if grid is not None and cls_name in ("DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler"):
        sched.set_timesteps(timesteps=[int(t) - 1 for t in grid[:-1]])
    elif grid is not None:
        sched.set_timesteps(len(grid) - 1)
        sched.timesteps = (grid[:-1] - 1).long()
        sched.sigmas = torch.cat([HO.sigma(grid[:-1]), torch.zeros(1, dtype=F64)]).float()
    else:
        sched.set_timesteps(steps)
    scale = float(sched.init_noise_sigma)
    x, before, t_last, calls = x_T * scale, x_T, 999.0, 0
    for t in sched.timesteps:
        eps = eps_fn(sched.scale_model_input(x, t), t)
        before, t_last, calls = x, float(t), calls + 1
        x = sched.step(eps, t, x).prev_sample
    sigma = math.exp(float(np.interp(t_last, np.arange(1000), LOG_SIGMA)))
    if scale > 1.5:  # Euler and Heun keep y = x / a
        before = before / math.sqrt(1 + sigma * sigma)
    return x, before, sigma, calls


# ---------------------------------------------------------------------------------------------------------------------
# references and scores


def reference(x_T: torch.Tensor):
    """Endpoint (exact_pf_ode) and a dense solution y(sigma) (for the state at the last nonzero sigma)."""
    end = exact_pf_ode(RING, x_T, 1000.0, 0.0, HO, rtol=1e-10, atol=1e-10)
    s_max = HO.sigma(torch.tensor(1000.0, dtype=F64)).item()
    a_T = HO.coefficients(torch.tensor(1000.0, dtype=F64)).a.item()
    shape = x_T.shape
    sol = solve_ivp(
        lambda s, y: RING.eps_mean(torch.from_numpy(y).reshape(shape), 1.0, s).reshape(-1).numpy(),
        (s_max, 0.0),
        (x_T / a_T).reshape(-1).numpy(),
        rtol=1e-10,
        atol=1e-10,
        dense_output=True,
    )

    def at_sigma(sigma: float) -> torch.Tensor:
        return torch.from_numpy(sol.sol(sigma)).reshape(shape) / math.sqrt(1 + sigma * sigma)

    return end, at_sigma


def mean_dist(x: torch.Tensor, y: torch.Tensor) -> float:
    return (x - y).norm(dim=1).mean().item()


def screen_ours(x_T, ref) -> dict[str, dict[int, tuple[str, float, float]]]:
    """Per rule and NFE the best grid spec on the tuning seed, and the tuned power grid (t_min, rho) per steps."""
    best: dict[str, dict[int, tuple]] = {}
    tuned: dict[str, dict[int, tuple[float, float]]] = {}
    model = RING.model(HO, "eps")
    for name, (rule, evals) in ours().items():
        best[name], tuned[name] = {}, {}
        for nfe in NFES:
            steps = steps_for(evals, nfe)
            cands = []
            for sp in FIXED:
                cands.append((mean_dist(our_run(rule, (sp,), steps, x_T)[0], ref), (sp,)))
            tg = tune_grid(model, x_T, ref, HO, rule, steps, T_MINS, RHOS)
            tuned[name][steps] = (tg.t_min, tg.rho)
            cands.append((tg.error, ("power", tg.t_min, tg.rho)))
            best[name][nfe] = min(cands)[1]
    return best, tuned


def screen_diffusers(x_T, ref) -> dict[str, dict[int, dict]]:
    import diffusers.utils.logging as dlog

    dlog.set_verbosity_error()
    best: dict[str, dict[int, tuple[float, str, dict]]] = {}
    for nfe in NFES:
        for family, cls_name, kw in diffusers_configs():
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    e = mean_dist(diffusers_run(cls_name, kw, nfe, x_T)[0], ref)
            except Exception:  # some option combinations are refused by diffusers (e.g. 3S with 5 steps)
                continue
            if math.isfinite(e) and (nfe not in best.setdefault(family, {}) or e < best[family][nfe][0]):
                best[family][nfe] = (e, cls_name, kw)
    return {f: {n: v[2] | {"_cls": v[1]} for n, v in d.items()} for f, d in best.items()}


def best_spec_from_table(name: str, evals: int, nfe: int) -> tuple:
    entry = TUNED_GRIDS.get(name, {}).get(steps_for(evals, nfe))
    return ("power", *entry) if entry is not None else ("quadratic",)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="points per seed")
    parser.add_argument("--tune", action="store_true", help="screen every configuration again on the tuning seed")
    parser.add_argument("--trained", action="store_true", help="only the trained-MLP table")
    parser.add_argument("--image", action="store_true", help="only the image-model table (--n images per seed)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.trained:
        trained_section(args.n)
        return
    if args.image:
        image_section(args.n)
        return
    t0 = time.perf_counter()
    rules = ours()
    if args.tune:
        x_tune = torch.randn(500, 2, generator=torch.Generator().manual_seed(TUNE_SEED), dtype=F64)
        ref_tune = exact_pf_ode(RING, x_tune, 1000.0, 0.0, HO, rtol=1e-10, atol=1e-10)
        our_best, tuned = screen_ours(x_tune, ref_tune)
        df_best = screen_diffusers(x_tune, ref_tune)
        print(f"screening: {time.perf_counter() - t0:.0f} s\nTUNED_GRIDS = {{")
        for name, table in tuned.items():
            print(f"    {name!r}: {{{', '.join(f'{k}: ({v[0]:g}, {v[1]:g})' for k, v in table.items())}}},")
        print("}\nDIFFUSERS_BEST = {")
        for fam, table in df_best.items():
            print(f"    {fam!r}: {{")
            for nfe, kw in table.items():
                print(f"        {nfe}: {kw!r},")
            print("    },")
        print("}")
        if tuned != TUNED_GRIDS:
            print("note: the screen differs from the stored diffmath.solvers.TUNED_GRIDS")
    else:
        our_best = {n: {nfe: best_spec_from_table(n, ev, nfe) for nfe in NFES} for n, (_, ev) in rules.items()}
        df_best = DIFFUSERS_BEST

    # evaluation on the 5 seeds
    t1 = time.perf_counter()
    refs, fresh = [], []
    for seed in SEEDS:
        x_T = torch.randn(args.n, 2, generator=torch.Generator().manual_seed(seed), dtype=F64)
        refs.append((x_T, *reference(x_T)))
        fresh.append(RING.sample(args.n, torch.Generator().manual_seed(1000 + seed), dtype=F64))
    floor = [
        sliced_w1(RING.sample(args.n, torch.Generator().manual_seed(2000 + s), dtype=F64), f, generator=_g())
        for s, f in zip(SEEDS, fresh, strict=True)
    ]
    print(f"references: {time.perf_counter() - t1:.0f} s; sliced W1 floor (fresh vs fresh): {_mse(floor)}")

    def score(fn) -> dict:
        errs, sws, lasts, calls = [], [], [], 0
        for (x_T, end, at_sigma), f in zip(refs, fresh, strict=True):
            x, _, sigma, calls = fn(x_T)
            e0 = mean_dist(x, end)
            errs.append(e0)
            sws.append(sliced_w1(x, f, generator=_g()))
            y = at_sigma(sigma) * math.sqrt(1 + sigma * sigma)  # the exact state there, in y = x/a
            lasts.append(mean_dist(y - sigma * RING.eps_mean(y, 1.0, sigma), end) / e0)
        return {"err": errs, "sw": sws, "last": lasts, "calls": calls}

    results: dict[int, dict[str, list]] = {nfe: {"diffmath": [], "diffusers": []} for nfe in NFES}
    for nfe in NFES:
        for name, (rule, evals) in rules.items():
            spec, k = our_best[name][nfe], steps_for(evals, nfe)
            r = score(lambda x_T, rule=rule, spec=spec, k=k: _sigma_of(our_run(rule, spec, k, x_T)))
            results[nfe]["diffmath"].append((f"{name} {_spec(spec)}", r))
        for family, table in df_best.items():
            if nfe not in table:
                continue
            kw = {k: v for k, v in table[nfe].items() if k != "_cls"}
            cls_name = table[nfe]["_cls"]
            r = score(lambda x_T, c=cls_name, kw=kw, n=nfe: diffusers_run(c, kw, n, x_T))
            results[nfe]["diffusers"].append((f"{family} {_kw(kw)}", r))
    print(f"evaluation: {time.perf_counter() - t1:.0f} s\n")
    _report(results)
    _same_grid(refs, rules, our_best)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


def trained_section(n: int) -> None:
    """The stored best configurations of both libraries driven by a trained network: the EMA MLP of the recipe
    ``eight-gaussians-ddpm`` (Su's linear schedule, T = 1000; trained on first use, then cached), in float64. The
    reference is the same network's ODE solved on all 1000 integer times by DEIS-3 in sigma (eq. 6.28); diffusers
    gets Su's schedule as ``trained_betas`` and the network at t = timestep + 1. diffmath's grids are the power grids
    tuned on the exact model on Ho's schedule, used unchanged: a test of how the tuned shape transfers."""
    from diffmath.recipes import train_toy

    su = dm.su_linear(1000)
    net = train_toy("eight-gaussians-ddpm", progress=False).model.double()
    starts = [torch.randn(n, 2, generator=torch.Generator().manual_seed(s), dtype=F64) for s in SEEDS]
    title = "Trained MLP (eight-gaussians-ddpm, Su's schedule): mean distance to the 1000-step reference, 5 seeds"
    _network_table(title, net, su, starts, mean_dist)


def image_section(n: int) -> None:
    """The same for the committed image model ``digits-ddpm`` (8x8 digits, eps, VP-cosine, float32): its continuous
    schedule is read at the 1000 times t_k = 0.98 k / 1000 (k = 1..1000; a = 0 at t = 1), which gives diffmath a
    discrete schedule and diffusers the same table as ``trained_betas``; the score is the per-pixel RMS distance to
    the network's 1000-step solution, over 5 seeds of ``n`` images."""
    from diffmath.core.schedules import DiscreteSchedule
    from diffmath.recipes import train_image

    digits = train_image("digits-ddpm", progress=False)
    t_start = 0.98
    a = digits.schedule.coefficients(t_start * torch.arange(0, 1001, dtype=F64) / 1000).a
    table = DiscreteSchedule(a[1:] / a[:-1], name="digits-vp-cosine(T=1000)")

    def net(x, t, cond=None):
        return digits.model(x, t * (t_start / 1000), cond)

    net.prediction = digits.model.prediction
    starts = [torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(s)) for s in SEEDS]

    def rms(x, y):
        return (x - y).flatten(1).pow(2).mean(1).sqrt().mean().item()

    title = "Committed image model (digits-ddpm, 8x8, VP-cosine): per-pixel RMS to the 1000-step reference, 5 seeds"
    _network_table(title, net, table, starts, rms)


FIXED_FOR_NETWORKS = ("unipc2-bh2-sigma", "unipc3-bh1-sigma", "dpm++3m-lu", "deis3")


def _network_table(title, net, schedule, starts, dist) -> None:
    """Both libraries' stored choices (diffmath's also on the Karras and log-SNR grids for a few rules) with a network
    ``net`` on a discrete ``schedule``, scored by ``dist`` against its solution on all integer times (DEIS-3); the
    best candidate of each library is picked on these seeds."""
    abar = schedule.coefficients(torch.arange(0, schedule.T + 1, dtype=F64)).a ** 2
    common = {"num_train_timesteps": schedule.T, "trained_betas": (1 - abar[1:] / abar[:-1]).numpy()}

    def net_eps(x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return net(x, torch.tensor(float(timestep) + 1.0, dtype=x.dtype))

    with torch.no_grad():
        refs = [last_state(run(net, x, schedule.grid(schedule.T), schedule, deis_rule(3))) for x in starts]
    rows: dict[int, dict[str, list]] = {nfe: {"diffmath": [], "diffusers": []} for nfe in NFES}
    rules = ours()
    for nfe in NFES:
        for name, (rule, evals) in rules.items():
            spec, k = best_spec_from_table(name, evals, nfe), steps_for(evals, nfe)
            errs = [dist(our_run(rule, spec, k, x, net, schedule)[0], r) for x, r in zip(starts, refs, strict=True)]
            rows[nfe]["diffmath"].append((f"{name} {_spec(spec)}", errs))
        for name in FIXED_FOR_NETWORKS:  # grids set by the schedule's sigmas, which do not depend on the tuning task
            for spacing in ("karras", "log-snr"):
                out = [our_run(rules[name][0], (spacing,), nfe, x, net, schedule)[0] for x in starts]
                errs = [dist(o, r) for o, r in zip(out, refs, strict=True)]
                rows[nfe]["diffmath"].append((f"{name} {spacing}", errs))
        for family, table in DIFFUSERS_BEST.items():
            kw = {k: v for k, v in table[nfe].items() if k != "_cls"}
            cls_name = table[nfe]["_cls"]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                errs = [
                    dist(diffusers_run(cls_name, kw, nfe, x, eps_fn=net_eps, common=common)[0], r)
                    for x, r in zip(starts, refs, strict=True)
                ]
            rows[nfe]["diffusers"].append((f"{family} {_kw(kw)}", errs))
    print(f"\n{title}")
    for nfe, by_lib in rows.items():
        best = {}
        for lib, cands in by_lib.items():
            cands = [c for c in cands if math.isfinite(np.mean(c[1]))]
            name, errs = min(cands, key=lambda c: np.mean(c[1]))
            m, se = _se(errs)
            best[lib] = m
            print(f"{nfe:>4}  {lib:<9} {m:>10.2e} +- {se:.1e}  {name}")
        print(f"{'':>4}  ratio diffusers / diffmath: {best['diffusers'] / best['diffmath']:.1f}")


def _sigma_of(out):
    x, before, t_last, calls = out
    return x, before, HO.sigma(torch.tensor(t_last, dtype=F64)).item(), calls


def _g() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def _mse(values) -> str:
    v = np.asarray(values)
    return f"{v.mean():.4f} +- {v.std(ddof=1) / math.sqrt(len(v)):.4f}"


def _se(values) -> tuple[float, float]:
    v = np.asarray(values)
    return v.mean(), v.std(ddof=1) / math.sqrt(len(v))


def _spec(spec: tuple) -> str:
    return f"power(t_min={spec[1]:g}, rho={spec[2]:g})" if spec[0] == "power" else spec[0]


def _kw(kw: dict) -> str:
    short = {"timestep_spacing": "", "solver_order": "order=", "solver_type": "", "lower_order_final": "lof="}
    skip = {"set_alpha_to_one", "clip_sample", "steps_offset"}
    parts = []
    for k, v in kw.items():
        if k in skip:
            continue
        if k.startswith("use_"):
            parts.append(k[4:].replace("_sigmas", "").replace("_lambdas", "-lambdas"))
        elif k == "final_sigmas_type":
            parts.append(f"final={v}")
        else:
            parts.append(f"{short.get(k, k + '=')}{v}")
    return " ".join(parts)


def _report(results) -> None:
    head = f"{'NFE':>4}  {'library':<9} {'err (mean +- SE)':>22} {'SW1':>16} {'last':>6}  configuration"
    print("Best of each library per NFE (chosen on the tuning seed, scored on 5 seeds)")
    print(head + "\n" + "-" * len(head))
    for nfe, by_lib in results.items():
        best = {}
        for lib, rows in by_lib.items():
            name, r = min(rows, key=lambda row: np.mean(row[1]["err"]))
            best[lib] = np.mean(r["err"])
            m, se = _se(r["err"])
            sw, sw_se = _se(r["sw"])
            last = np.mean(r["last"])
            print(f"{nfe:>4}  {lib:<9} {m:>10.2e} +- {se:.1e} {sw:>8.4f}+-{sw_se:.4f} {last:>6.0%}  {name}")
        print(f"{'':>4}  ratio diffusers / diffmath: {best['diffusers'] / best['diffmath']:.1f}")
    print("\nEvery evaluated configuration (mean error over the 5 seeds)")
    for nfe, by_lib in results.items():
        for lib, rows in by_lib.items():
            rows = sorted(rows, key=lambda row: np.mean(row[1]["err"]))
            print(f"NFE {nfe:>2} {lib:<9} " + "; ".join(f"{n.split(' ')[0]} {np.mean(r['err']):.1e}" for n, r in rows))


def _same_grid(refs, rules, our_best) -> None:
    """diffusers' DPM-Solver++ and UniPC schedulers run on the grid that won for diffmath's rule of the same algorithm."""
    print(
        "\nSame grid, diffusers' solver: diffmath's winning grid given to diffusers (DPM-Solver++: custom timesteps "
        "k = t - 1, a documented option; UniPC accepts custom sigmas only for flow models, so its timesteps and sigmas "
        "are overwritten after set_timesteps)"
    )
    pairs = [
        ("dpm++3m-lu", "DPMSolverMultistepScheduler", {"solver_order": 3}),
        ("dpm++3s", "DPMSolverSinglestepScheduler", {"solver_order": 3}),
        ("unipc2-bh2", "UniPCMultistepScheduler", {"solver_order": 2, "solver_type": "bh2"}),
        ("unipc3-bh1", "UniPCMultistepScheduler", {"solver_order": 3, "solver_type": "bh1"}),
    ]
    for nfe in NFES:
        for name, cls_name, kw in pairs:
            spec = our_best[name][nfe]
            grid = our_grid(spec, nfe)
            errs_ours, errs_df = [], []
            for x_T, end, _ in refs:
                errs_ours.append(mean_dist(our_run(rules[name][0], spec, nfe, x_T)[0], end))
                errs_df.append(mean_dist(diffusers_run(cls_name, kw, nfe, x_T, grid=grid)[0], end))
            print(
                f"NFE {nfe:>2} {name:<11} {_spec(spec):<28} diffmath {np.mean(errs_ours):.2e}  "
                f"diffusers {np.mean(errs_df):.2e}"
            )


if __name__ == "__main__":
    main()
