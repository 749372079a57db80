r"""Samplers on an explicit, decreasing time grid that ends at the data.

One step covers the whole DDIM family (lesson 4, eq. 4.8): from time $t$ to an earlier time $s < t$,

$$x_s = a_s\hat x_0 + \sqrt{\max(b_s^2 - \sigma^2, 0)}\;\hat\varepsilon + \sigma z,\qquad
\sigma = \eta\,\frac{b_s}{b_t}\sqrt{b_t^2 - \frac{a_t^2}{a_s^2} b_s^2},$$

where $\eta = 1$ is DDPM's ancestral step and $\eta = 0$ the deterministic DDIM step. Any subsequence of a discrete
schedule, and any continuous schedule, is just a different ``grid``.

Samplers (here and in :mod:`diffmath.ode`, :mod:`diffmath.sde`) run without autograd, so a trained network's graph is
not kept across steps; guidance that needs a gradient (lesson 9) turns it back on for its own evaluation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm import tqdm

from diffmath._validate import as_tensor, check_batch, check_finite
from diffmath.models import Model, predict_pair
from diffmath.notation import Pair
from diffmath.schedules import Schedule


@dataclass(frozen=True)
class SamplerStep:
    r"""What a sampler yields after each step: the step index, the time reached, the state and the denoised guess.

    Samplers of lessons 4-6 (e.g. the DDIM family, lesson 4, eq. 4.8) yield one per step along their grid.

    Parameters
    ----------
    index : int
        Step number, from 0.
    t : float
        Time reached by the step (``grid[index + 1]``).
    x : Tensor, shape (B, ...)
        State $x_t$ at that time.
    x0 : Tensor, shape (B, ...)
        The model's denoised guess $\hat x_0$ at the step's start.
    """

    index: int
    t: float
    x: Tensor
    x0: Tensor


Noise = torch.Generator | Callable[[int, Tensor], Tensor] | Sequence[Tensor] | None
"""Where a stochastic sampler's fresh noise comes from: a generator (or ``None``: torch's global one), a callable
``noise(i, x)`` returning step ``i``'s draw with the shape of ``x``, or a sequence whose ``i``-th entry is that draw."""


def noise_source(noise: object, num_steps: int) -> Callable[[int, Tensor], Tensor]:
    r"""The fresh noise $z$ of step ``i`` of a stochastic sampler, ``draw(i, x)`` (lesson 4, eq. 4.8; lesson 6, eq. 6.9).

    Injected noise lets a user replay another library's trajectory step for step. Step ``i`` goes from ``grid[i]`` to
    ``grid[i + 1]``; on a discrete schedule diffmath's time $t$ is diffusers' timestep $k = t - 1$ (diffusers counts
    ``0 .. T-1`` where diffmath counts ``1 .. T``, with $t = 0$ the data), so the noise diffusers' scheduler adds at
    timestep ``k`` is diffmath's draw on the step that starts at ``t = k + 1``.

    Parameters
    ----------
    noise : Noise
        A ``torch.Generator`` or ``None`` (fresh normal draws), a callable ``noise(i, x) -> Tensor``, or a sequence
        (list, tuple, or a tensor of shape ``(K, B, ...)``) with one draw per step.
    num_steps : int
        $K$, the number of steps of the grid (a sequence must have exactly this many entries).

    Returns
    -------
    Callable[[int, Tensor], Tensor]
        ``draw(i, x)``: a tensor of ``x``'s shape, dtype and device.
    """
    if noise is None or isinstance(noise, torch.Generator):
        return lambda i, x: torch.randn(x.shape, generator=noise, dtype=x.dtype, device=x.device)
    if isinstance(noise, (Tensor, list, tuple)):
        if len(noise) != num_steps:
            raise ValueError(f"noise must hold one draw per step ({num_steps}), got {len(noise)}")
        table = noise
    elif callable(noise):
        table = None
    else:
        raise TypeError(
            "noise must be a torch.Generator, a callable noise(i, x) or a sequence of tensors, "
            f"got {type(noise).__name__}"
        )

    def draw(i: int, x: Tensor) -> Tensor:
        z = noise(i, x) if table is None else table[i]
        if not isinstance(z, Tensor) or z.shape != x.shape:
            got = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
            raise ValueError(f"noise for step {i} must be a tensor of the shape of x {tuple(x.shape)}, got {got}")
        return check_finite(z.to(dtype=x.dtype, device=x.device), f"noise for step {i}")

    return draw


def check_grid(grid: object, schedule: Schedule) -> Tensor:
    """Check a sampling grid (lesson 0, sec. 0.4): 1-D, at least two points, strictly decreasing, inside the schedule's
    time range.

    Parameters
    ----------
    grid : Tensor, shape (K + 1,)
        Candidate grid of times.
    schedule : Schedule
        Whose time range (and integer times, if discrete) the grid must respect.

    Returns
    -------
    Tensor, shape (K + 1,), float64
        The grid.

    Raises
    ------
    TypeError
        If ``grid`` is not a tensor (or is complex).
    ValueError
        If ``grid`` is not 1-D with at least two points, holds NaN or infinity, is not strictly decreasing, lies
        outside the schedule's time range, or holds non-integers on a discrete schedule.
    """
    if not isinstance(grid, Tensor):
        raise TypeError(f"grid must be a 1-D torch.Tensor of decreasing times, got {type(grid).__name__}")
    if grid.dim() != 1 or grid.numel() < 2:
        raise ValueError(f"grid must be 1-D with at least 2 times, got shape {tuple(grid.shape)}")
    g = schedule.check_t(grid.to(torch.float64))
    if (g[1:] >= g[:-1]).any():
        raise ValueError("grid must be strictly decreasing (from noise towards the data)")
    return g


def ddim_coefficients(
    schedule: Schedule, t: Tensor | float, s: Tensor | float, eta: float = 0.0, variance: str = "posterior"
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Coefficients of one DDIM-family step, $x_s = a_s\hat x_0 + c\,\hat\varepsilon + \sigma z$ (lesson 4, eqs. 4.8-4.9).

    Parameters
    ----------
    schedule : Schedule
        The forward process.
    t, s : float or Tensor
        Current and next time, $s < t$.
    eta : float
        Scale of the step noise, $\eta \ge 0$.
    variance : {"posterior", "upper"}
        ``"posterior"``: $\sigma = \eta\,(b_s/b_t)\sqrt{b_t^2 - (a_t/a_s)^2 b_s^2}$, the standard deviation of
        $q(x_s\mid x_t, x_0)$ times $\eta$ ($\eta = 1$: DDPM, $\eta = 0$: DDIM);
        ``"upper"``: $\sigma = \eta\sqrt{b_t^2 - (a_t/a_s)^2 b_s^2}$ (Ho's $\sigma_t = \beta_t$ for one step).

    Returns
    -------
    (a_s, c, sigma) : tuple of Tensor
        With $c = \sqrt{\max(b_s^2 - \sigma^2, 0)}$: the clamp is active where $\sigma > b_s$ (e.g. ``"upper"``
        at the first steps of Su's schedule, or $\eta > 1$). On a step into $b_s = 0$ (the data end) $\sigma = 0$:
        the last step adds no noise, as in Ho et al.'s algorithm.

    Raises
    ------
    TypeError
        If ``t`` or ``s`` is not a real number or tensor.
    ValueError
        If ``eta`` is not a real number >= 0, ``variance`` is unknown, or ``t`` or ``s`` holds NaN or infinity,
        lies outside the schedule's range or is not an integer on a discrete schedule.
    """
    if not isinstance(eta, (int, float)) or isinstance(eta, bool) or not eta >= 0:
        raise ValueError(f"eta must be a real number >= 0, got {eta!r}")
    if variance not in ("posterior", "upper"):
        raise ValueError(f"variance must be 'posterior' or 'upper', got {variance!r}")
    ct, cs = schedule.coefficients(t), schedule.coefficients(s)
    step_std = torch.sqrt(torch.clamp(ct.b**2 - (ct.a / cs.a) ** 2 * cs.b**2, min=0.0))
    sigma = eta * step_std * (cs.b / ct.b if variance == "posterior" else 1.0)
    sigma = torch.where(cs.b > 0, sigma, torch.zeros_like(sigma))  # no fresh noise on the step into the data
    return cs.a, torch.sqrt(torch.clamp(cs.b**2 - sigma**2, min=0.0)), sigma


@torch.no_grad()
def ddim_step(
    model: Model,
    x: Tensor,
    t: float,
    s: float,
    schedule: Schedule,
    eta: float = 0.0,
    cond: Tensor | None = None,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    variance: str = "posterior",
) -> tuple[Tensor, Pair]:
    r"""One step of the DDIM family from time ``t`` to ``s < t`` (lesson 4, eq. 4.8).

    Parameters
    ----------
    model : Model
        Any model with the one interface.
    x : Tensor, shape (B, ...)
        State at time ``t``.
    t, s : float
        Current and next time, ``s < t``.
    schedule : Schedule
        The forward process the model was trained on.
    eta : float
        0 for DDIM, 1 for DDPM; see :func:`ddim_coefficients` for ``variance`` and the clamp.
    cond : Tensor, optional
        Passed to the model.
    generator : torch.Generator, optional
        Source of the fresh noise $z$ (ignored when ``noise`` is given).
    noise : Tensor, optional
        The noise $z$ itself, shape of ``x`` (to replay a trajectory with common random numbers).
    variance : {"posterior", "upper"}
        Which $\sigma$ family ``eta`` scales (:func:`ddim_coefficients`).

    Returns
    -------
    (Tensor, Pair)
        The new state $x_s$ and the model's $(\hat x_0, \hat\varepsilon)$ at $(x_t, t)$.

    Raises
    ------
    TypeError
        If ``model`` does not follow the one interface, ``x`` is not a floating tensor, or ``t``, ``s`` are not
        real numbers.
    ValueError
        If ``x`` has fewer than 2 dimensions or holds NaN or infinity, a time lies outside the schedule's range,
        the model's output has the wrong shape or is not finite, ``eta`` is negative, ``variance`` is unknown, or
        ``noise`` does not have the shape of ``x``.
    """
    pair = predict_pair(model, x, t, schedule, cond)
    c_x0, c_eps, sigma = ddim_coefficients(schedule, as_tensor(t, "t", x), as_tensor(s, "s", x), eta, variance)
    x_s = c_x0 * pair.x0 + c_eps * pair.eps
    if eta > 0:
        if noise is None:
            noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        elif noise.shape != x.shape:
            raise ValueError(f"noise must have the shape of x {tuple(x.shape)}, got {tuple(noise.shape)}")
        x_s = x_s + sigma * noise
    return x_s, pair


@torch.no_grad()
def ddim(
    model: Model,
    x: Tensor,
    grid: Tensor,
    schedule: Schedule,
    eta: float = 0.0,
    cond: Tensor | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
    variance: str = "posterior",
    *,
    noise: Noise = None,
) -> Iterator[SamplerStep]:
    r"""Run the DDIM family along ``grid``, yielding each step's state (lesson 4, eq. 4.8).

    Parameters
    ----------
    model : Model
        Any model with the one interface.
    x : Tensor, shape (B, ...)
        Start state at ``grid[0]``: for VP schedules a draw of $\mathcal N(0, I)$, for VE $b_{t_{\max}} z$.
    grid : Tensor, shape (K + 1,)
        Strictly decreasing times; the last is where sampling ends (0 = the data).
    schedule : Schedule
        The forward process the model was trained on.
    eta : float
        0: deterministic DDIM; 1: DDPM ancestral sampling.
    cond, generator : optional
        Condition for the model; random generator for the step noise.
    progress : bool
        Show a tqdm bar.
    variance : {"posterior", "upper"}
        Which $\sigma$ family ``eta`` scales (:func:`ddim_coefficients`).
    noise : Noise, optional
        Injected step noise instead of ``generator``'s draws (:func:`noise_source`: a callable ``noise(i, x)`` or
        one tensor per step; step ``i`` starts at ``grid[i]``, which is diffusers' timestep ``grid[i] - 1`` on a
        discrete schedule).

    Yields
    ------
    SamplerStep
        After each step; the last one holds the sample.

    Raises
    ------
    TypeError
        If ``model`` does not follow the one interface, ``x`` is not a floating tensor, or ``grid`` is not a
        tensor.
    ValueError
        If ``x`` has fewer than 2 dimensions or holds NaN or infinity, ``grid`` is not 1-D with at least two
        strictly decreasing times inside the schedule's range, the model's output has the wrong
        shape or is not finite, ``eta`` is negative, ``variance`` is unknown, or the state becomes NaN or infinite.
    """
    x = check_batch(x, "x")
    g = check_grid(grid, schedule)
    draw = noise_source(generator if noise is None else noise, len(g) - 1)
    for i in tqdm(range(len(g) - 1), disable=not progress, desc=f"DDIM(eta={eta:g})", leave=False):
        t, s = g[i].item(), g[i + 1].item()
        z = draw(i, x) if eta > 0 else None
        x, pair = ddim_step(model, x, t, s, schedule, eta, cond, noise=z, variance=variance)
        check_finite(x, f"sampler state at t={s:g}")
        yield SamplerStep(i, s, x, pair.x0)


def sample(
    model: Model,
    x: Tensor,
    grid: Tensor,
    schedule: Schedule,
    eta: float = 0.0,
    cond: Tensor | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
    variance: str = "posterior",
    *,
    noise: Noise = None,
) -> Tensor:
    r"""Final state of :func:`ddim` (lesson 4, eq. 4.8): a batch of samples at ``grid[-1]``.

    Parameters
    ----------
    model, x, grid, schedule, eta, cond, generator, progress, variance, noise
        As in :func:`ddim`.

    Returns
    -------
    Tensor, shape (B, ...)
        The samples at ``grid[-1]``.

    Raises
    ------
    TypeError, ValueError
        As :func:`ddim`.
    """
    for step in ddim(model, x, grid, schedule, eta, cond, generator, progress, variance, noise=noise):
        x = step.x
    return x
