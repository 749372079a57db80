"""Solver benchmark: diffmath's PF-ODE solvers vs diffusers' schedulers, driven by the same EXACT model.

With the exact noise prediction of the 8-Gaussian ring (lesson 0), the only error left is the solver's
discretisation error. Every solver starts from the same x_T (N(0, I), so sigma_max = 157.4 on Ho's linear schedule,
T = 1000) and we report, at NFE = 5, 10, 20, 50 (network evaluations):

- the mean distance of the endpoints to the reference solution of the probability-flow ODE from the same x_T
  (scipy RK45, rtol 1e-10, in y = x/a and sigma = b/a: ``diffmath.exact.reference.exact_pf_ode``);
- the sliced W1 distance of the samples to fresh data (floor: fresh data against fresh data).

diffusers (in the ``[bench]`` extra; no downloads) runs DDIMScheduler, EulerDiscreteScheduler, HeunDiscreteScheduler
and DPMSolverMultistepScheduler (dpmsolver++, order 2) with ``timestep_spacing="trailing"`` so they start at the
schedule's last step; its Heun uses 2K - 1 evaluations for K steps, as ours. diffmath runs the same four algorithms:
``ddim`` (eta = 0), ``euler`` and ``heun`` in sigma = b/a (Karras et al.'s form; Euler there is DDIM), and
``dpm++2m``, each on its own time grid (the grid is part of a solver's design; the schedule is the same). On the same
uniform grid diffmath's DDIM, Euler, Heun and DPM-Solver++(2M) reproduce diffusers' errors to three digits (a
cross-check of both); the gains come from the quadratic grid (denser near the data), chosen once per solver from a
sweep over uniform, quadratic, Karras and log-SNR grids (Heun keeps the uniform grid: on quadratic and Karras grids
its first, very long step in sigma is unstable at NFE <= 10).

Run: ``python benchmarks/solvers.py`` (about a minute). Not a test: it prints a table.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import diffmath as dm
import toydata as td
from diffmath.exact.reference import exact_pf_ode
from diffmath.metrics import sliced_w1
from diffmath.ode import ode_sample

NFES = (5, 10, 20, 50)
OURS = {  # name: (method, grid spacing, steps for an NFE budget)
    "ddim": ("ddim", "quadratic", lambda n: n),
    "euler": ("euler", "quadratic", lambda n: n),
    "heun": ("heun", "uniform", lambda n: (n + 1) // 2),
    "dpm++2m": ("dpm++2m", "quadratic", lambda n: n),
}


def diffusers_sample(name: str, gmm: dm.GaussianMixture, x_T: torch.Tensor, nfe: int) -> torch.Tensor:
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, HeunDiscreteScheduler

    common = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear"}
    common["timestep_spacing"] = "trailing"
    cls, steps = {
        "ddim": (DDIMScheduler, nfe),
        "euler": (EulerDiscreteScheduler, nfe),
        "heun": (HeunDiscreteScheduler, (nfe + 1) // 2),
        "dpm++2m": (DPMSolverMultistepScheduler, nfe),
    }[name]
    extra = {"set_alpha_to_one": True, "clip_sample": False} if name == "ddim" else {}
    if name == "dpm++2m":
        extra = {"algorithm_type": "dpmsolver++", "solver_order": 2}
    sched = cls(**common, **extra)
    sched.set_timesteps(steps)
    train_sigma = np.sqrt((1 - sched.alphas_cumprod.numpy()) / sched.alphas_cumprod.numpy())
    x = x_T * sched.init_noise_sigma
    for t in sched.timesteps:
        x_in = sched.scale_model_input(x, t)  # VP-scaled input for every scheduler
        sigma = float(np.interp(float(t), np.arange(1000), train_sigma))
        a = 1.0 / np.sqrt(1.0 + sigma**2)
        eps = gmm.eps_mean(x_in, a, sigma * a)
        x = sched.step(eps, t, x).prev_sample
    return x


def ours_sample(name: str, gmm: dm.GaussianMixture, x_T: torch.Tensor, nfe: int) -> torch.Tensor:
    method, spacing, steps = OURS[name]
    sched = dm.ho_linear(1000)
    grid = sched.grid(steps(nfe), spacing)
    model = gmm.model(sched, "eps")
    if method == "ddim":
        return dm.sample(model, x_T, grid, sched)
    return ode_sample(model, x_T, grid, sched, method, variable="sigma")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="particles")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    gmm = td.eight_gaussians_mixture()
    x_T = torch.randn(args.n, 2, generator=torch.Generator().manual_seed(args.seed), dtype=torch.float64)
    ho = dm.ho_linear(1000)
    t0 = time.perf_counter()
    ref = exact_pf_ode(gmm, x_T, 1000.0, 0.0, ho, rtol=1e-10, atol=1e-10)
    print(f"reference solve: {time.perf_counter() - t0:.1f} s")
    fresh = gmm.sample(args.n, torch.Generator().manual_seed(args.seed + 1), dtype=torch.float64)
    floor = sliced_w1(
        gmm.sample(args.n, torch.Generator().manual_seed(args.seed + 2), dtype=torch.float64),
        fresh,
        generator=torch.Generator().manual_seed(0),
    )
    print(
        f"sliced W1 floor (fresh vs fresh data): {floor:.4f};  reference vs fresh data: "
        f"{sliced_w1(ref, fresh, generator=torch.Generator().manual_seed(0)):.4f}\n"
    )
    head = f"{'solver':<9}{'NFE':>4}  {'diffmath err':>13}{'diffusers err':>14}{'ratio':>7}  {'dm SW1':>7}{'df SW1':>7}"
    print(head + "\n" + "-" * len(head))
    best: dict[int, float] = {}
    best_sw: dict[int, float] = {}
    wins = 0
    for name in OURS:
        for nfe in NFES:
            xs = {"dm": ours_sample(name, gmm, x_T, nfe), "df": diffusers_sample(name, gmm, x_T, nfe)}
            err = {k: (v - ref).norm(dim=1).mean().item() for k, v in xs.items()}
            sw = {k: sliced_w1(v, fresh, generator=torch.Generator().manual_seed(0)) for k, v in xs.items()}
            best[nfe] = min(best.get(nfe, np.inf), err["dm"])
            best_sw[nfe] = min(best_sw.get(nfe, np.inf), sw["dm"])
            wins += err["dm"] <= err["df"] * (1 + 1e-9)
            print(
                f"{name:<9}{nfe:>4}  {err['dm']:>13.2e}{err['df']:>14.2e}{err['dm'] / err['df']:>7.2f}  "
                f"{sw['dm']:>7.4f}{sw['df']:>7.4f}"
            )
    print(f"\ndiffmath at least as accurate as diffusers in {wins} of {len(OURS) * len(NFES)} cases")
    print(
        f"best diffmath error to the reference: NFE 10 {best[10]:.2e}, NFE 50 {best[50]:.2e} (ratio {best[10] / best[50]:.1f})"
    )
    print(
        f"best diffmath sliced W1 to data:      NFE 10 {best_sw[10]:.4f}, NFE 50 {best_sw[50]:.4f} "
        f"(ratio {best_sw[10] / best_sw[50]:.2f}; target <= 2)"
    )
    print("grids: " + ", ".join(f"{k} {v[1]}" for k, v in OURS.items()))


if __name__ == "__main__":
    main()
