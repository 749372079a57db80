"""The main job (``make demo`` / ``diffmath tour``): a toy noised and denoised with its exact model and trained
networks, guided to a class, carried by Poisson and rectified flow, then the same samplers on image models (one
figure, one table)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from diffmath.core._io import atomic_write
from diffmath.core.schedules import su_linear
from diffmath.exact.mixtures import GaussianMixture
from diffmath.guide.compose import Clipped
from diffmath.guide.guidance import ClassifierFree
from diffmath.metrics import mmd_rbf, mode_weights, outliers, sliced_w1
from diffmath.sampling.loop import run as run_rule
from diffmath.sampling.samplers import ddim, sample
from diffmath.solvers import TUNED_GRIDS, unipc_rule


def save_figure(fig, path: str | Path) -> Path:
    """Write a matplotlib figure atomically (temporary file in the same folder, then rename; lesson 3, sec. 3.6).

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        The figure.
    path : str or Path
        Destination image file (its suffix picks the format).

    Returns
    -------
    Path
        The file written.
    """
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight"))


def run(out: str | Path = "tour.png", n: int = 2000, seed: int = 0, progress: bool = True) -> list[dict]:
    """Noise the 8-Gaussian ring with Su's schedule, denoise it with the exact model and trained networks, guide it to
    a class, transport it by Poisson and rectified flow, and sample image models (lessons 0-20).

    The exact model is sampled with UniPC-2 on its tuned grid (10 steps; lesson 6, sec. 6.12), DDIM (50 steps) and
    DDPM (1000 steps); the MLP of the recipe
    ``eight-gaussians-ddpm`` (trained on first use, then cached) with DDIM (raw, and clipped: lesson 20, sec. 20.8)
    and DDPM at a few step counts; the
    class-conditional MLP of ``eight-gaussians-cfg`` (the class is the mode) with classifier-free guidance
    (lesson 9, eq. 9.12) at w = 0 and 1; the Poisson flow of ``eight-gaussians-pfgm`` at 10 and 20 steps
    (lesson 13, eq. 13.8); the rectified flow of ``eight-gaussians-rf`` and its reflow in 1 and 4
    Euler steps (lesson 17, eq. 17.10); and, from the committed image checkpoints (lesson 20), shapes with CFG on
    the shape label and by rectified flow, digits by DDPM, rectified flow and Poisson flow. Returns the table rows (also printed): model, sampler, steps, seconds,
    sliced W1 and MMD to fresh data (of the requested classes, for guided rows), the largest deviation of a mode's
    weight from 1/8 (unconditional rows) or the share of samples outside their class's mode (guided rows).

    Parameters
    ----------
    out : str or Path
        The figure file.
    n : int
        Samples per row of the table.
    seed : int
        Seed of the data, the noise and the samplers.
    progress : bool
        Show tqdm bars.

    Returns
    -------
    list of dict
        One row per (model, sampler, steps), with keys ``model``, ``sampler``, ``steps``, ``seconds``,
        ``sliced_w1`` and ``mmd`` with their bootstrap standard deviations ``sliced_w1_se`` and ``mmd_se``,
        ``outside`` and ``max_radius`` (:func:`~diffmath.metrics.outliers`, lesson 20, eq. 20.12) and
        ``max_mode_dev`` (for guided rows: the share outside the requested mode).

    Raises
    ------
    ValueError
        If ``n`` is not a positive integer (or smaller than 2, for the MMD).
    """
    import matplotlib

    if "MPLBACKEND" not in os.environ:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffmath.recipes import train_toy
    from toydata import eight_gaussians_mixture

    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(seed)
    gmm = eight_gaussians_mixture()
    sched = su_linear(1000)
    exact = gmm.model(sched, prediction="eps")
    data = gmm.sample(n, gen, dtype=torch.float64)
    fresh = gmm.sample(n, gen, dtype=torch.float64)
    show = [0, 100, 300, 600, 1000]

    fig, axes = plt.subplots(6, len(show), figsize=(3 * len(show), 18.6))
    eps = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    for ax, t in zip(axes[0], show, strict=True):
        c = sched.coefficients(float(t))
        ax.scatter(*(c.a * data + c.b * eps).T, s=1, alpha=0.4, color="tab:blue")
        ax.set_title(f"forward  t={t}  (a={c.a.item():.3f})", fontsize=9)

    rows = [_row("data", "fresh data", 0, 0.0, data, fresh, gmm)]
    x_T = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    # few steps: UniPC-2 with its last step in sigma on the power grid tuned for it (lesson 6, secs. 6.10-6.12). The
    # table is tuned on Ho's schedule; on Su's, tune_grid (500 other starting points) finds the same (t_min, rho),
    # ten times closer to the exact endpoints than DDIM on the uniform 10-step grid
    # (tests/test_06_solvers.py::test_tuned_shape_transfers_to_su_schedule).
    few = unipc_rule(2, "bh2", final="sigma")
    t_min, rho = TUNED_GRIDS[few.key][10]
    for eta, steps in ((None, 10), (0.0, 50), (1.0, 1000)):
        t0 = time.perf_counter()
        snaps = {1000: x_T}
        if eta is None:
            steps_iter = run_rule(
                exact, x_T, sched.grid(steps, "power", rho=rho, t_min=t_min), sched, few, progress=progress
            )
        else:
            steps_iter = ddim(exact, x_T, sched.grid(steps), sched, eta=eta, generator=gen, progress=progress)
        for st in steps_iter:
            if round(st.t) in show:
                snaps[round(st.t)] = st.x
        label = "UniPC-2 (tuned grid)" if eta is None else _label(eta)
        rows.append(_row("exact", label, steps, time.perf_counter() - t0, st.x, fresh, gmm))
        if eta == 0 and steps == 50:
            for ax, t in zip(axes[1], show, strict=True):
                ax.scatter(*snaps[t].T, s=1, alpha=0.4, color="tab:orange")
                ax.set_title(f"exact model, DDIM 50 steps: t={t}", fontsize=9)

    t0 = time.perf_counter()
    trained = train_toy("eight-gaussians-ddpm", progress=progress)
    print(
        f"MLP of recipe 'eight-gaussians-ddpm': trained or loaded in {time.perf_counter() - t0:.1f} s ({trained.path})"
    )
    ax = axes[2, 0]
    ax.plot(torch.tensor(trained.losses).reshape(-1, 50).mean(1), color="tab:green")
    ax.set_yscale("log")
    ax.set_title("MLP training loss (per 50 steps)", fontsize=9)
    x_T32 = x_T.float()
    t0 = time.perf_counter()
    with torch.no_grad():  # the raw network under DDIM: its far outliers (lesson 20, sec. 20.8)
        x0 = sample(trained.model, x_T32, sched.grid(50), sched, eta=0.0, progress=progress)
    rows.append(_row("MLP", "DDIM (eta=0), raw", 50, time.perf_counter() - t0, x0.double(), fresh, gmm))
    for ax, (eta, steps) in zip(axes[2, 1:], ((0.0, 10), (0.0, 50), (1.0, 100), (1.0, 1000)), strict=True):
        t0 = time.perf_counter()
        # deterministic steps sample the clipped model (eq. 20.11); DDPM's fresh noise does not need it
        model = trained.clipped if eta == 0 else trained.model
        with torch.no_grad():
            x0 = sample(model, x_T32, sched.grid(steps), sched, eta=eta, generator=gen, progress=progress)
        label = _label(eta) + (", clipped" if eta == 0 else "")
        rows.append(_row("MLP", label, steps, time.perf_counter() - t0, x0.double(), fresh, gmm))
        ax.scatter(*x0.T, s=1, alpha=0.4, color="tab:green")
        ax.set_title(f"trained MLP, {label} {steps} steps", fontsize=9)
    rows += _guided_section(axes[3, :2], gmm, sched, x_T32, gen, progress)
    rows += _pfgm_section(axes[3, 2:], gmm, fresh, n, seed, progress)
    rows += _flow_section(axes[4], gmm, fresh, x_T32, progress)
    _image_section(axes[5], seed)
    for ax in list(axes[:2].flat) + list(axes[2, 1:]) + list(axes[3:5].flat):
        if ax.axison:
            ax.set_xlim(-4, 4)
            ax.set_ylim(-4, 4)
            ax.set_aspect("equal")
    fig.suptitle(
        "8 Gaussians: noised by Su's schedule (row 1), denoised by the exact model (2) and a trained MLP (3), "
        "guided to a class and Poisson flow (4);\nrectified flow in 1 and 4 steps before and after reflow (5); "
        "the same code on images (6)"
    )
    fig.tight_layout()
    save_figure(fig, out)
    plt.close(fig)
    _print_table(rows)
    print(f"figure written to {out}")
    return rows


def _guided_section(axes, gmm: GaussianMixture, sched, x_T: torch.Tensor, gen, progress: bool) -> list[dict]:
    """Classifier-free guidance of the class-conditional MLP (lesson 9, eq. 9.12): each point asks for one mode."""
    from diffmath.recipes import train_toy

    t0 = time.perf_counter()
    cond = train_toy("eight-gaussians-cfg", progress=progress)
    print(f"conditional MLP of recipe 'eight-gaussians-cfg': trained or loaded in {time.perf_counter() - t0:.1f} s")
    n = x_T.shape[0]
    y = torch.arange(n) % gmm.K
    target = gmm.means[y] + gmm.lam.sqrt().reshape(gmm.K, -1)[y] * torch.randn(
        n, 2, generator=gen, dtype=gmm.means.dtype
    )
    rows = []
    for ax, w in zip(axes[:2], (0.0, 1.0), strict=True):
        t0 = time.perf_counter()
        with torch.no_grad():
            guided = Clipped(ClassifierFree(cond.model, w), sched, cond.clipped.bound, "ball")  # lesson 20, sec. 20.8
            x0 = sample(guided, x_T, sched.grid(100), sched, cond=y, progress=progress)
        seconds = time.perf_counter() - t0
        row = _row("CFG MLP", f"DDIM, CFG w={w:g}, clipped", 100, seconds, x0.double(), target, gmm)
        row["max_mode_dev"] = (torch.cdist(x0.double(), gmm.means).argmin(1) != y).double().mean().item()
        rows.append(row)
        ax.scatter(*x0.T, s=1, alpha=0.4, c=y, cmap="tab10", vmin=0, vmax=9)
        ax.set_title(f"conditional MLP, CFG w={w:g} (colour: class)", fontsize=9)
    return rows


def _pfgm_section(axes, gmm: GaussianMixture, fresh: torch.Tensor, n: int, seed: int, progress: bool) -> list[dict]:
    """Poisson flow (lesson 13): the network of recipe ``eight-gaussians-pfgm`` from the prior on the plane
    $z = 40$ down the backward ODE (eq. 13.8) with DPM-Solver++ at 10 and 20 evaluations."""
    from diffmath.pfgm import pfgm_grid, pfgm_sample
    from diffmath.recipes import train_toy

    t0 = time.perf_counter()
    toy = train_toy("eight-gaussians-pfgm", progress=progress)
    print(f"PFGM network of recipe 'eight-gaussians-pfgm': trained or loaded in {time.perf_counter() - t0:.1f} s")
    clip = toy.config["objective_kwargs"]["max_radius"]
    rows = []
    for ax, k in zip(axes, (10, 20), strict=False):
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(seed + k)
        grid = pfgm_grid(toy.schedule, k, z_max=40.0)
        x0 = pfgm_sample(toy.model, n, 2, grid, toy.schedule, "dpm++2m", generator=g, max_radius=clip)
        rows.append(_row("PFGM", "DPM-Solver++ (z)", k, time.perf_counter() - t0, x0.double(), fresh, gmm))
        ax.scatter(*x0.T, s=1, alpha=0.4, color="tab:brown")
        ax.set_title(f"Poisson flow (PFGM), {k} steps from z = 40", fontsize=9)
    for ax in axes[2:]:
        ax.axis("off")
    return rows


def _flow_section(axes, gmm: GaussianMixture, fresh: torch.Tensor, x_T: torch.Tensor, progress: bool) -> list[dict]:
    """Rectified flow (lesson 17): the 1-RF of recipe ``eight-gaussians-rf`` and its reflow (2-RF), Euler in 1 and 4
    steps from the same prior draws (eq. 17.10); reflow straightens the paths, so one step suffices."""
    from diffmath.flows import sample_flow
    from diffmath.recipes import reflow_toy

    t0 = time.perf_counter()
    rf1, rf2 = reflow_toy("eight-gaussians-rf", rounds=1, progress=progress, return_all=True)
    print(
        f"rectified flow and its reflow (recipe 'eight-gaussians-rf'): trained or loaded in {time.perf_counter() - t0:.1f} s"
    )
    rows = []
    panels = [(name, m, k) for name, m in (("1-RF", rf1), ("2-RF", rf2)) for k in (1, 4)]
    for ax, (name, m, k) in zip(axes, panels, strict=False):
        t0 = time.perf_counter()
        x0 = sample_flow(m.model, x_T, m.schedule.grid(k), m.schedule)
        rows.append(_row(name, "Euler", k, time.perf_counter() - t0, x0.double(), fresh, gmm))
        ax.scatter(*x0.T, s=1, alpha=0.4, color="tab:purple" if name == "1-RF" else "tab:red")
        ax.set_title(
            f"{'rectified flow' if name == '1-RF' else 'after one reflow'} ({name}), {k} Euler step{'s' * (k > 1)}",
            fontsize=9,
        )
    for ax in axes[len(panels) :]:
        ax.axis("off")
    return rows


def _image_section(axes, seed: int) -> None:
    """The same samplers on image models (lesson 20), from the committed checkpoints: shapes with classifier-free
    guidance on the shape label (columns: circle, square, triangle), shapes by rectified flow, digits by DDPM, rectified
    flow and Poisson flow; 16 samples each, 20 steps."""
    from diffmath.ode import ode_sample
    from diffmath.pfgm import pfgm_grid, pfgm_sample
    from diffmath.recipes import train_image

    g = torch.Generator().manual_seed(seed)
    panels = []
    t0 = time.perf_counter()
    shapes = train_image("shapes-ddpm", progress=False)
    y = torch.arange(16) % 3
    x_T = torch.randn(16, 3, 16, 16, generator=g)
    guided = ClassifierFree(shapes.model, 3.0)
    panels.append(
        (
            "shapes, DDPM model, CFG w=3",
            ode_sample(guided, x_T, shapes.schedule.grid(20), shapes.schedule, "dpm++2m", y),
        )
    )
    rf = train_image("shapes-rf", progress=False)
    panels.append(("shapes, rectified flow", ode_sample(rf.model, x_T, rf.schedule.grid(20), rf.schedule, "euler")))
    z = torch.randn(16, 1, 8, 8, generator=g)
    digits = train_image("digits-ddpm", progress=False)
    panels.append(
        (
            "digits, DDPM",
            sample(digits.model, z, digits.schedule.grid(50, t_start=0.98), digits.schedule, eta=1.0, generator=g),
        )
    )
    rf = train_image("digits-rf", progress=False)
    panels.append(("digits, rectified flow", ode_sample(rf.model, z, rf.schedule.grid(20), rf.schedule, "euler")))
    pf = train_image("digits-pfgm", progress=False)
    clip = pf.config["objective_kwargs"]["max_radius"]
    panels.append(
        (
            "digits, Poisson flow",
            pfgm_sample(
                pf.model, 16, (1, 8, 8), pfgm_grid(pf.schedule, 20, 40.0), pf.schedule, generator=g, max_radius=clip
            ),
        )
    )
    print(f"image models (committed checkpoints): loaded and sampled in {time.perf_counter() - t0:.1f} s")
    for ax, (title, x) in zip(axes, panels, strict=True):
        ax.imshow(_mosaic(x))
        ax.set_title(title, fontsize=9)
        ax.axis("off")


def _mosaic(x: torch.Tensor, cols: int = 4):
    """A (B, C, H, W) batch in [-1, 1] as one (rows*H, cols*W, 3) image array with 1-pixel gaps."""
    x = (
        ((x.detach().float().clamp(-1, 1) + 1) / 2).expand(-1, 3, -1, -1)
        if x.shape[1] == 1
        else ((x.detach().float().clamp(-1, 1) + 1) / 2)
    )
    B, _, H, W = x.shape
    rows = -(-B // cols)
    out = torch.ones(rows * (H + 1) - 1, cols * (W + 1) - 1, 3)
    for i in range(B):
        r, c = divmod(i, cols)
        out[r * (H + 1) : r * (H + 1) + H, c * (W + 1) : c * (W + 1) + W] = x[i].permute(1, 2, 0)
    return out.numpy()


def _label(eta: float) -> str:
    return "DDPM (eta=1)" if eta == 1 else "DDIM (eta=0)"


def _row(
    model: str, label: str, steps: int, seconds: float, x: torch.Tensor, fresh: torch.Tensor, gmm: GaussianMixture
) -> dict:
    g = torch.Generator().manual_seed(1)
    dev = (mode_weights(gmm, x) - 1.0 / gmm.K).abs().max().item()
    far = outliers(x, gmm.sample(20_000, torch.Generator().manual_seed(3), dtype=torch.float64))  # R from 20 000
    # Monte Carlo error: the bootstrap standard deviation of each metric (samples and fresh data resampled, 16 times)
    boot = torch.Generator().manual_seed(2)
    sw, mm = [], []
    for _ in range(16):
        i = torch.randint(len(x), (len(x),), generator=boot)
        j = torch.randint(len(fresh), (len(fresh),), generator=boot)
        sw.append(sliced_w1(x[i], fresh[j], generator=torch.Generator().manual_seed(1)))
        mm.append(mmd_rbf(x[i], fresh[j]))
    return {
        "model": model,
        "sampler": label,
        "steps": steps,
        "seconds": seconds,
        "sliced_w1": sliced_w1(x, fresh, generator=g),
        "sliced_w1_se": torch.tensor(sw).std().item(),
        "mmd": mmd_rbf(x, fresh),
        "mmd_se": torch.tensor(mm).std().item(),
        "max_mode_dev": dev,
        "outside": far.fraction,
        "max_radius": far.max_radius,
    }


def _print_table(rows: list[dict]) -> None:
    print(
        "\nSample quality against fresh data (the first row is fresh data against itself: the floor). Each metric is "
        "followed by its\nMonte Carlo error (bootstrap SD): two rows differ only where their gap exceeds about twice "
        "that. 'beyond' is the share of\nsamples farther than 1.1 times the largest radius of 20 000 data points, "
        "'max |x|' the largest radius (lesson 20,\neq. 20.12); 'modes' is the largest |mode weight - 1/8| (unguided "
        "rows) or the share outside the requested mode (guided rows).\n"
    )
    head = (
        f"{'model':<9}{'sampler':<24}{'steps':>6}{'seconds':>9}{'sliced W1':>17}{'MMD^2':>20}"
        f"{'beyond':>8}{'max |x|':>9}{'modes':>8}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['model']:<9}{r['sampler']:<24}{r['steps']:>6}{r['seconds']:>9.2f}"
            f"{r['sliced_w1']:>9.4f} +- {r['sliced_w1_se']:.4f}{r['mmd']:>11.5f} +- {r['mmd_se']:.5f}"
            f"{100 * r['outside']:>7.2f}%{r['max_radius']:>9.2f}{r['max_mode_dev']:>8.4f}"
        )
