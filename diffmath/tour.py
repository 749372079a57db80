"""The main job (``make demo`` / ``diffmath tour``): a toy noised and denoised with its exact model."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from diffmath._io import atomic_write
from diffmath.exact import GaussianMixture
from diffmath.metrics import mmd_rbf, mode_weights, sliced_w1
from diffmath.samplers import ddim, sample
from diffmath.schedules import su_linear


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
    """Noise the 8-Gaussian ring with Su's schedule, denoise it with the exact model and with a trained MLP (lessons 0-4).

    The exact model is sampled with DDIM (10 and 50 steps) and DDPM (1000 steps); the MLP of the recipe
    ``eight-gaussians-ddpm`` (trained on first use, then cached) with DDIM and DDPM at a few step counts. Returns
    the table rows (also printed): model, sampler, steps, seconds, sliced W1 and MMD to fresh data, and the largest
    deviation of a mode's weight from 1/8.

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
        ``sliced_w1``, ``mmd`` and ``max_mode_dev``.

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

    fig, axes = plt.subplots(3, len(show), figsize=(3 * len(show), 9.3))
    eps = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    for ax, t in zip(axes[0], show, strict=True):
        c = sched.coefficients(float(t))
        ax.scatter(*(c.a * data + c.b * eps).T, s=1, alpha=0.4, color="tab:blue")
        ax.set_title(f"forward  t={t}  (a={c.a.item():.3f})", fontsize=9)

    rows = [_row("data", "fresh data", 0, 0.0, data, fresh, gmm)]
    x_T = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    for eta, steps in ((0.0, 10), (0.0, 50), (1.0, 1000)):
        t0 = time.perf_counter()
        snaps = {1000: x_T}
        for st in ddim(exact, x_T, sched.grid(steps), sched, eta=eta, generator=gen, progress=progress):
            if round(st.t) in show:
                snaps[round(st.t)] = st.x
        rows.append(_row("exact", _label(eta), steps, time.perf_counter() - t0, st.x, fresh, gmm))
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
    for ax, (eta, steps) in zip(axes[2, 1:], ((0.0, 10), (0.0, 50), (1.0, 100), (1.0, 1000)), strict=True):
        t0 = time.perf_counter()
        with torch.no_grad():
            x0 = sample(trained.model, x_T32, sched.grid(steps), sched, eta=eta, generator=gen, progress=progress)
        rows.append(_row("MLP", _label(eta), steps, time.perf_counter() - t0, x0.double(), fresh, gmm))
        ax.scatter(*x0.T, s=1, alpha=0.4, color="tab:green")
        ax.set_title(f"trained MLP, {_label(eta)} {steps} steps", fontsize=9)
    for ax in list(axes[:2].flat) + list(axes[2, 1:]):
        ax.set_xlim(-4, 4)
        ax.set_ylim(-4, 4)
        ax.set_aspect("equal")
    fig.suptitle("8 Gaussians: noised by Su's schedule (top), denoised by the exact model (middle) and a trained MLP")
    fig.tight_layout()
    save_figure(fig, out)
    plt.close(fig)
    _print_table(rows)
    print(f"figure written to {out}")
    return rows


def _label(eta: float) -> str:
    return "DDPM (eta=1)" if eta == 1 else "DDIM (eta=0)"


def _row(
    model: str, label: str, steps: int, seconds: float, x: torch.Tensor, fresh: torch.Tensor, gmm: GaussianMixture
) -> dict:
    g = torch.Generator().manual_seed(1)
    dev = (mode_weights(gmm, x) - 1.0 / gmm.K).abs().max().item()
    return {
        "model": model,
        "sampler": label,
        "steps": steps,
        "seconds": seconds,
        "sliced_w1": sliced_w1(x, fresh, generator=g),
        "mmd": mmd_rbf(x, fresh),
        "max_mode_dev": dev,
    }


def _print_table(rows: list[dict]) -> None:
    head = f"{'model':<7}{'sampler':<21}{'steps':>6}{'seconds':>9}{'sliced W1':>11}{'MMD^2':>10}{'|w-1/8| max':>13}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['model']:<7}{r['sampler']:<21}{r['steps']:>6}{r['seconds']:>9.2f}{r['sliced_w1']:>11.4f}"
            f"{r['mmd']:>10.5f}{r['max_mode_dev']:>13.4f}"
        )
