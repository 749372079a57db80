"""The main job (``make demo`` / ``diffmath tour``): a toy noised and denoised with its exact model."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch

from diffmath.exact import GaussianMixture
from diffmath.metrics import mmd_rbf, sliced_w1
from diffmath.samplers import ddim
from diffmath.schedules import su_linear


def save_figure(fig, path: str | Path) -> Path:
    """Write a matplotlib figure atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=path.suffix)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def mode_weights(gmm: GaussianMixture, x: torch.Tensor) -> torch.Tensor:
    """Fraction of samples whose most probable component (at t = 0) is each component k."""
    k = gmm.component_posterior(x, 1.0, 0.0).argmax(1)
    return torch.bincount(k, minlength=gmm.K).double() / x.shape[0]


def run(out: str | Path = "tour.png", n: int = 2000, seed: int = 0, progress: bool = True) -> list[dict]:
    """Noise the 8-Gaussian ring with Su's schedule, denoise it with the exact model, plot and tabulate.

    Returns the table rows (also printed): sampler, steps, seconds, sliced W1 and MMD to fresh data, and the
    largest deviation of a mode's weight from 1/8.
    """
    import matplotlib

    if "MPLBACKEND" not in os.environ:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from toydata import eight_gaussians_mixture

    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(seed)
    gmm = eight_gaussians_mixture()
    sched = su_linear(1000)
    model = gmm.model(sched, prediction="eps")
    data = gmm.sample(n, gen, dtype=torch.float64)
    fresh = gmm.sample(n, gen, dtype=torch.float64)
    show = [0, 100, 300, 600, 1000]

    fig, axes = plt.subplots(2, len(show), figsize=(3 * len(show), 6.2), sharex=True, sharey=True)
    eps = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    for ax, t in zip(axes[0], show, strict=True):
        c = sched.coefficients(float(t))
        xt = c.a * data + c.b * eps
        ax.scatter(*xt.T, s=1, alpha=0.4, color="tab:blue")
        ax.set_title(f"forward  t={t}  (a={c.a.item():.3f})", fontsize=9)

    rows = [_row("data vs fresh data", 0, 0.0, data, fresh, gmm)]
    x_T = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    for eta, steps in ((0.0, 10), (0.0, 50), (1.0, 1000)):
        t0 = time.perf_counter()
        snaps = {1000: x_T}
        for st in ddim(model, x_T, sched.grid(steps), sched, eta=eta, generator=gen, progress=progress):
            if round(st.t) in show:
                snaps[round(st.t)] = st.x
        x0 = st.x
        label = "DDPM (eta=1)" if eta == 1 else "DDIM (eta=0)"
        rows.append(_row(label, steps, time.perf_counter() - t0, x0, fresh, gmm))
        if eta == 0 and steps == 50:
            for ax, t in zip(axes[1], show, strict=True):
                ax.scatter(*snaps[t].T, s=1, alpha=0.4, color="tab:orange")
                ax.set_title(f"DDIM 50 steps  t={t}", fontsize=9)
    for ax in axes.flat:
        ax.set_xlim(-4, 4)
        ax.set_ylim(-4, 4)
        ax.set_aspect("equal")
    fig.suptitle("8 Gaussians: noised by Su's schedule (top), denoised by the exact model (bottom)")
    save_figure(fig, out)
    plt.close(fig)
    _print_table(rows)
    print(f"figure written to {out}")
    return rows


def _row(label: str, steps: int, seconds: float, x: torch.Tensor, fresh: torch.Tensor, gmm: GaussianMixture) -> dict:
    g = torch.Generator().manual_seed(1)
    dev = (mode_weights(gmm, x) - 1.0 / gmm.K).abs().max().item()
    return {
        "sampler": label,
        "steps": steps,
        "seconds": seconds,
        "sliced_w1": sliced_w1(x, fresh, generator=g),
        "mmd": mmd_rbf(x, fresh),
        "max_mode_dev": dev,
    }


def _print_table(rows: list[dict]) -> None:
    head = f"{'sampler':<22}{'steps':>6}{'seconds':>9}{'sliced W1':>11}{'MMD^2':>10}{'|w-1/8| max':>13}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['sampler']:<22}{r['steps']:>6}{r['seconds']:>9.2f}{r['sliced_w1']:>11.4f}"
            f"{r['mmd']:>10.5f}{r['max_mode_dev']:>13.4f}"
        )
