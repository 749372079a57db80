r"""The one sampler loop (lesson 4, sec. 4.8): every sampler is an update rule run by :func:`run`.

A step from time $t$ to $s$ has three parts, and only the middle one differs between samplers:

1. **denoise**: one model call at $(x_t, t)$, converted to the pair $(\hat x_0, \hat\varepsilon)$ (lesson 0, eq. 0.5);
2. **update**: a rule maps the pair and $x_t$ to the mean and standard deviation of $x_s$,
   ``rule(pair, x, step, state) -> (mean, std, state)``: plain tensor arithmetic, no ``no_grad`` and no noise, so a
   caller can differentiate through it or merge several models' means before the noise;
3. **noise**: $x_s = \text{mean} + \text{std}\cdot z$, with $z$ from a generator or injected (:func:`noise_source`).

:func:`run` owns everything else, once: validation at the boundary, the grid's coefficients (computed once in
float64 and handed to the rules as Python numbers, so no step re-validates a time or waits for a device; the
multipliers the arithmetic needs are prebuilt as 0-dim tensors, :func:`scalars`, so no step creates a tensor either),
grad mode, progress, the hooks, the yields and the finiteness check. Hooks sit at the two places the multi-model methods need:
``on_pair(pair, x, step, state) -> (pair, state)`` after denoising and ``on_mean(mean, x, step, state) ->
(mean, state)`` before the noise; ``state`` is one dict carried across the steps (rules and hooks each keep their own
keys in it).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm import tqdm

from diffmath.core._validate import check_batch, check_finite, check_output, check_schedule, check_time
from diffmath.core.models import Model, check_input_dtype, check_model
from diffmath.core.notation import Pair
from diffmath.core.schedules import Coefficients, Schedule


@dataclass(frozen=True, slots=True)
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
        A ``torch.Generator`` or ``None`` (fresh normal draws; a generator on another device than the state draws
        there and the draw is copied over, so a CPU generator gives a CUDA run the CPU run's noise), a callable ``noise(i, x) -> Tensor``, or a sequence
        (list, tuple, or a tensor of shape ``(K, B, ...)``) with one draw per step.
    num_steps : int
        $K$, the number of steps of the grid (a sequence must have exactly this many entries).

    Returns
    -------
    Callable[[int, Tensor], Tensor]
        ``draw(i, x)``: a tensor of ``x``'s shape, dtype and device.
    Raises
    ------
    TypeError
        If ``noise`` is none of the accepted kinds.
    ValueError
        If a sequence does not hold ``num_steps`` draws; ``draw`` raises it when a draw is not a tensor of the shape
        of ``x`` or holds NaN or infinity.
    """
    if noise is None or isinstance(noise, torch.Generator):
        where = None if noise is None else noise.device

        def fresh(i: int, x: Tensor) -> Tensor:
            if where is None or where == x.device or (where.type == x.device.type and x.device.index is None):
                return torch.randn(x.shape, generator=noise, dtype=x.dtype, device=x.device)
            # a CPU generator for a GPU state: the CPU run's noise, copied over (a host sync per step: give a
            # generator on x's device for a loop that never waits)
            return torch.randn(x.shape, generator=noise, dtype=x.dtype, device=where).to(x.device)

        return fresh
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
        If ``grid`` is not a tensor (or is complex), or ``schedule`` is not a Schedule.
    ValueError
        If ``grid`` is not 1-D with at least two points, holds NaN or infinity, is not strictly decreasing, lies
        outside the schedule's time range, or holds non-integers on a discrete schedule.
    """
    if not isinstance(grid, Tensor):
        raise TypeError(f"grid must be a 1-D torch.Tensor of decreasing times, got {type(grid).__name__}")
    if grid.dim() != 1 or grid.numel() < 2:
        raise ValueError(f"grid must be 1-D with at least 2 times, got shape {tuple(grid.shape)}")
    g = check_time(grid.to(torch.float64), check_schedule(schedule), "grid")
    if (g[1:] >= g[:-1]).any():
        raise ValueError("grid must be strictly decreasing (from noise towards the data)")
    return g


Rule = Callable[[Pair, Tensor, "Step", dict], tuple[Tensor, "Tensor | float", dict]]
"""An update rule: ``rule(pair, x, step, state) -> (mean, std, state)`` (lesson 4, sec. 4.8).

A rule may also carry ``rule.prepare(steps, x) -> list``: :func:`run` calls it once, before the first step, with every
:class:`Step` of the grid and the start state, and files the ``k``-th entry it returns as ``steps[k].prepared[rule]``,
where the rule finds it (e.g. its coefficients as 0-dim tensors, :func:`scalars`). A rule must give the same result
without it (when called outside :func:`run`, e.g. by a hook on another rule's step)."""


@dataclass(slots=True)
class Step:
    r"""One step of a grid, from ``t = grid[index]`` to ``s = grid[index + 1]`` (lesson 4, sec. 4.8).

    The schedule's coefficients at both ends are Python floats, computed once for the whole grid in float64: a rule
    uses them without creating tensors or touching the device (``nan`` for $\dot a, \dot b$ of a discrete schedule).

    Parameters
    ----------
    index : int
        Step number, from 0.
    num_steps : int
        Steps of the grid, $K$.
    t, s : float
        Start and end time.
    a_t, b_t, da_t, db_t : float
        $a, b, \dot a, \dot b$ at ``t`` (eq. 0.1).
    a_s, b_s, da_s, db_s : float
        The same at ``s``.
    denoise_at : Callable[[Tensor, str], Pair] or None
        ``denoise_at(y, "t" or "s")``: the model's pair at ``y`` at either end (the pair hook applied), for rules
        that evaluate twice (Heun).
    prepared : dict
        What a rule's ``prepare`` computed for this step, keyed by the rule (see :data:`Rule`).
    """

    index: int
    num_steps: int
    t: float
    s: float
    a_t: float
    b_t: float
    da_t: float
    db_t: float
    a_s: float
    b_s: float
    da_s: float
    db_s: float
    denoise_at: Callable[[Tensor, str], Pair] | None = None
    prepared: dict = field(default_factory=dict)

    @property
    def last(self) -> bool:
        """Whether this is the grid's last step."""
        return self.index == self.num_steps - 1

    @property
    def h(self) -> float:
        """The signed step $s - t$ (negative when sampling, positive when encoding)."""
        return self.s - self.t


def scalars(values: Sequence[float], like: Tensor) -> tuple[Tensor, ...] | None:
    r"""A step's coefficients as 0-dim CPU tensors in ``like``'s dtype, built once for a whole grid (lesson 4, sec. 4.8).

    ``c * x`` with ``c`` a Python float wraps ``c`` in a new tensor at every operation; a prebuilt 0-dim CPU tensor of
    ``x``'s dtype holds the same number (the float rounded to that dtype, as the operation would round it) and enters
    the kernel the same way, as a scalar argument, so the results are bit-identical and no step creates a tensor or
    touches the device. Only for a multiplier or divisor of a tensor of exactly that dtype.

    Parameters
    ----------
    values : sequence of float
        The numbers.
    like : Tensor
        The tensor they will multiply or divide.

    Returns
    -------
    tuple of Tensor, or None
        One 0-dim tensor per value; ``None`` unless ``like`` is float32 or float64 (in reduced precision an operation
        computes with the float in float32, so the floats themselves must be used).
    """
    if like.dtype not in (torch.float32, torch.float64):
        return None
    return torch.tensor(values, dtype=like.dtype).unbind(0)


def pair_from(pred: Tensor, kind: str, x: Tensor, a: float, b: float, da: float, db: float) -> Pair:
    r"""$(\hat x_0, \hat\varepsilon)$ from a prediction of ``kind`` with scalar coefficients (lesson 0, eqs. 0.5-0.7).

    The arithmetic of :func:`~diffmath.core.notation.to_pair` for one time, without its input checks (the loop checks
    once, for the whole grid).

    Parameters
    ----------
    pred : Tensor, shape (B, ...)
        The model's output.
    kind : {"eps", "x0", "score", "v", "velocity"}
        What ``pred`` is.
    x : Tensor, shape (B, ...)
        The state it was evaluated at.
    a, b, da, db : float
        The schedule's coefficients at that time.

    Returns
    -------
    Pair

    Raises
    ------
    ValueError
        Where the inversion divides by zero (``a = 0`` for eps or score, ``b = 0`` for x0, $a\dot b - b\dot a$ zero
        or not finite for velocity).
    """
    return _pair(pred, kind, x, a, b, da, db, a, b)


def _pair(pred: Tensor, kind: str, x: Tensor, a: float, b: float, da: float, db: float, ca, cb) -> Pair:
    """:func:`pair_from` with ``ca``, ``cb`` the numbers its arithmetic multiplies and divides by: ``a`` and ``b``
    themselves, or (in :func:`run`) 0-dim CPU tensors holding them in the dtype of ``x`` and ``pred``, which give the
    same results without wrapping a Python number into a tensor at every operation (the checks use the floats)."""
    if kind == "x0":
        if b == 0:
            raise ValueError("cannot recover eps from an 'x0' prediction where b is 0 (the data end)")
        return Pair(pred, (x - ca * pred) / cb)
    if kind in ("eps", "score"):
        if a == 0:
            raise ValueError(
                f"cannot recover x0 from a {kind!r} prediction where a is 0 (x_t is pure noise there, e.g. t = 1 on "
                "VP-cosine): start the grid below that time, e.g. schedule.grid(K, t_start=0.98), or use a model "
                "that predicts 'v' or 'x0'"
            )
        eps = pred if kind == "eps" else -b * pred
        return Pair((x - cb * eps) / ca, eps)
    if kind == "v":
        det = a * a + b * b
        return Pair((ca * x - cb * pred) / det, (cb * x + ca * pred) / det)
    det = a * db - b * da
    if det == 0 or not math.isfinite(det):
        raise ValueError(f"cannot invert a 'velocity' prediction where a db - b da = {det:g} (db = inf at t = 0)")
    return Pair((db * x - cb * pred) / det, (ca * pred - da * x) / det)


def denoise(
    model: Model, x: Tensor, time: Tensor, coefs: tuple[float, float, float, float], cond: Tensor | None = None
) -> Pair:
    r"""One model call at $(x, t)$ and one conversion to $(\hat x_0, \hat\varepsilon)$ (lesson 0, eq. 0.5).

    Parameters
    ----------
    model : Model
        Any model with the one interface (checked once by :func:`run`).
    x : Tensor, shape (B, ...)
        The state.
    time : Tensor, shape (B,)
        The time, in ``x``'s dtype and device.
    coefs : (a, b, da, db)
        The schedule's coefficients at that time.
    cond : Tensor, optional
        Passed to the model.

    Returns
    -------
    Pair

    Raises
    ------
    ValueError
        If the model returns something other than a tensor of the shape of ``x``, or the conversion divides by zero.
    """
    return pair_from(check_output(model(x, time, cond), x), model.prediction, x, *coefs)


def run(
    model: Model,
    x: Tensor,
    grid: Tensor,
    schedule: Schedule,
    rule: Rule,
    *,
    cond: Tensor | None = None,
    noise: Noise = None,
    progress: bool = False,
    desc: str = "sampling",
    on_pair: Callable | None = None,
    on_mean: Callable | None = None,
    state: dict | None = None,
    grad: bool = False,
    check_every: int | None = None,
    checked_grid: Tensor | None = None,
) -> Iterator[SamplerStep]:
    r"""Run an update rule along ``grid`` (lesson 4, sec. 4.8), yielding each step's state.

    Parameters
    ----------
    model : Model
        Any model with the one interface.
    x : Tensor, shape (B, ...)
        The state at ``grid[0]``.
    grid : Tensor, shape (K + 1,)
        Strictly decreasing times inside the schedule's range (:func:`check_grid`).
    schedule : Schedule
        The forward process the model was trained on.
    rule : Rule
        ``rule(pair, x, step, state) -> (mean, std, state)``; ``std`` a float or a tensor broadcasting against ``x``.
        A ``rule.prepare(steps, x)`` is called once, before the first step (:data:`Rule`).
    cond : Tensor, optional
        Passed to the model.
    noise : Noise, optional
        Generator or injected noise (:func:`noise_source`); drawn only on steps whose ``std`` is not the number 0.
    progress : bool
        Show a tqdm bar labelled ``desc``.
    desc : str
        The bar's label.
    on_pair : callable, optional
        ``on_pair(pair, x, step, state) -> (pair, state)``, applied to every denoised pair.
    on_mean : callable, optional
        ``on_mean(mean, x, step, state) -> (mean, state)``, applied before the noise.
    state : dict, optional
        The initial state (a fresh dict if ``None``); the caller's dict is updated in place.
    grad : bool
        Run with autograd on (to differentiate through the steps); off by default.
    check_every : int, optional
        Look every this many steps and after the last (0: only after the last) at whether the state has stayed
        finite; the first step whose state was not is named in the error, whenever it is seen. Each look is one host
        synchronisation on a GPU (nearly free on a CPU), so the default, ``None``, looks after every step on the CPU
        and only after the last step elsewhere: a CUDA run's loop then never waits for the device.
    checked_grid : Tensor, optional
        A grid the caller has validated itself (an increasing one, for encoding); replaces ``grid``'s checks.

    Yields
    ------
    SamplerStep
        After each step: the index, the time reached, the new state and the step's $\hat x_0$.

    Raises
    ------
    TypeError
        If ``model`` does not follow the one interface, ``x`` is not a floating tensor or not in the dtype of the
        model's parameters, or ``grid`` is not a tensor.
    ValueError
        If ``x`` or ``grid`` is invalid, ``check_every`` is not an integer >= 0, or inside a step (named in the
        message): the model's output has the wrong shape, a conversion divides by zero, or the state is not finite.
    """
    check_model(model)
    x = check_batch(x, "x")
    check_input_dtype(model, x)
    if check_every is None:
        check_every = 1 if x.device.type == "cpu" else 0
    if not isinstance(check_every, int) or isinstance(check_every, bool) or check_every < 0:
        raise ValueError(f"check_every must be an integer >= 0 or None, got {check_every!r}")
    if checked_grid is None:
        g = check_grid(grid, schedule)
        c = _coefficients_on_checked(schedule, g)
    else:
        g = checked_grid
        c = schedule.coefficients(g)
    table = [[math.nan] * len(g) if v is None else v.tolist() for v in (c.a, c.b, c.da, c.db)]  # discrete: no da, db
    # times stay in at least float32: bfloat16 would round t = 999 to 1000 and 0.995 to 0.9961 (a network embeds
    # them in float32 anyway)
    times = g.tolist()
    gx = g.to(device=x.device, dtype=x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32)
    num_steps = len(times) - 1
    draw = noise_source(noise, num_steps)
    state = {} if state is None else state

    columns = list(zip(*table, strict=True))  # (a, b, da, db) at each grid point
    # Built once for the whole grid, so that a step creates no tensor of its own: each point's time as a (B,) view
    # (what gx[j].expand(B) gives) and a, b as 0-dim tensors for the conversion of a prediction in x's dtype.
    kind, batch, dtype = model.prediction, x.shape[0], x.dtype
    point_times = gx.unsqueeze(1).expand(-1, batch).unbind(0)
    point_ab = scalars([v for a, b, _, _ in columns for v in (a, b)], x)

    def evaluate(y: Tensor, at: str, step: Step) -> Pair:
        nonlocal state
        j = step.index + (at == "s")
        time = point_times[j] if y.shape[0] == batch else gx[j].expand(y.shape[0])
        pred = check_output(model(y, time, cond), y)
        a, b, da, db = columns[j]
        if point_ab is not None and pred.dtype == dtype and y.dtype == dtype:
            pair = _pair(pred, kind, y, a, b, da, db, point_ab[2 * j], point_ab[2 * j + 1])
        else:
            pair = _pair(pred, kind, y, a, b, da, db, a, b)
        if on_pair is not None:
            pair, state = on_pair(pair, y, step, state)
        return pair

    steps = [Step(i, num_steps, times[i], times[i + 1], *columns[i], *columns[i + 1]) for i in range(num_steps)]
    for step in steps:
        step.denoise_at = functools.partial(evaluate, step=step)
    prepare = getattr(rule, "prepare", None)
    if prepare is not None:
        for step, entry in zip(steps, prepare(steps, x), strict=True):
            step.prepared[rule] = entry

    sums: list[Tensor] = []  # the states' sums (NaN and inf reach a sum) not yet looked at, on x's device
    with torch.set_grad_enabled(grad):
        for step in tqdm(steps, desc=desc, leave=False) if progress else steps:
            i = step.index
            try:
                pair = evaluate(x, "t", step)
                mean, std, state = rule(pair, x, step, state)
                if on_mean is not None:
                    mean, state = on_mean(mean, x, step, state)
                x = mean if isinstance(std, (int, float)) and std == 0 else mean + std * draw(i, x)
            except ValueError as err:
                raise ValueError(f"at step {i} (t={times[i]:g} -> {times[i + 1]:g}): {err}") from err
            sums.append(x.detach().sum())
            if (check_every and (i + 1) % check_every == 0) or i == num_steps - 1:
                _check_states(sums, i + 1 - len(sums), times)
                sums = []
            yield SamplerStep(i, times[i + 1], x, pair.x0)


def _coefficients_on_checked(schedule: Schedule, g: Tensor) -> Coefficients:
    """``schedule.coefficients(g)`` for a grid :func:`check_grid` has checked, without checking it a second time
    (unless the schedule overrides the public checks, which then run as they would)."""
    cls = type(schedule)
    if cls.coefficients is Schedule.coefficients and cls.check_t is Schedule.check_t:
        return schedule._coefficients(g)
    return schedule.coefficients(g)


def _check_states(sums: list[Tensor], first: int, times: list[float]) -> None:
    """Raise at the first of the steps ``first, first + 1, ...`` whose state's sum is not finite (one host sync)."""
    values = sums[0].reshape(1).tolist() if len(sums) == 1 else torch.stack(sums).tolist()
    for j, v in enumerate(values, start=first):
        if not math.isfinite(v):
            raise ValueError(
                f"at step {j} (t={times[j]:g} -> {times[j + 1]:g}): model returned NaN or inf, or the step "
                "diverged: the sampler state is not finite; check the model, its inputs and the time grid"
            )


def final(steps: Iterator[SamplerStep]) -> Tensor:
    """The state after the last of a sampler's steps (lesson 4, sec. 4.8).

    Parameters
    ----------
    steps : iterator of SamplerStep
        What a sampler yields.

    Returns
    -------
    Tensor
        The last step's ``x``.

    Raises
    ------
    ValueError
        If there was no step.
    """
    x = None
    for step in steps:
        x = step.x
    if x is None:
        raise ValueError("the sampler made no step")
    return x
