r"""Several diffusion models sampled together (lesson 21): merging states, pulling copies back, aligning schedules.

The multi-model methods of lessons 21-24 keep one copy of the sampler state per model and act between the copies at
the loop's hooks; none has a loop of its own. This module holds their shared parts: the spherical merge of states
(lesson 21, eq. 21.4) and its rule for $N > 2$, the deviation step (eq. 21.6), a model called at the noise level of
another schedule (eq. 21.8), a stack of models that is itself one model over the concatenated copies, and AMDM
(Algorithm 21.1), one run of :func:`~diffmath.sampling.loop.run` with the stack as its model and the merge as its
``on_mean`` hook.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor

from diffmath.core._validate import as_tensor, check_batch, check_choice, check_int, check_real, check_schedule
from diffmath.core.models import Model, check_input_dtype, check_model
from diffmath.core.notation import PREDICTIONS, from_pair, to_pair
from diffmath.core.schedules import Schedule
from diffmath.sampling.loop import Rule, SamplerStep, Step, check_grid, run
from diffmath.sampling.samplers import ddim_rule

MERGES = ("slerp", "lerp", "released")
"""The merge rules of :func:`merge_states`: the paper's slerp, the straight average, and the released code's combination."""

RELEASED = {"merge": "released", "window": (1, 4), "pull_to": "state"}
r"""The released AMDM code's choices as keyword arguments of :func:`amdm` (lesson 21, sec. 21.5): merge
$\omega x_1 + \sqrt{1-\omega^2}\,x_2$ (``weights`` is then $\omega$, the target's coefficient), merge at steps 1-3
only, pull each copy towards its own state before the step instead of its own mean. Its pulls are long (35-55 on
latents of norm about 128): give ``eta`` yourself."""


def _flat_norm(x: Tensor) -> Tensor:
    """Per-sample Euclidean norm over all but the batch dimension, shaped to broadcast against ``x``."""
    return x.flatten(1).norm(dim=1).view(-1, *[1] * (x.dim() - 1))


def slerp(x1: Tensor, x2: Tensor, w: float, eps: float = 1e-7) -> Tensor:
    r"""Spherical interpolation of two batches, sample by sample (lesson 21, eq. 21.4).

    $x' = \frac{\sin((1-w)\theta)}{\sin\theta}x_1 + \frac{\sin(w\theta)}{\sin\theta}x_2$ with the normalised angle
    $\cos\theta = x_1\cdot x_2/(|x_1||x_2|)$ (the paper prints $\theta = \arccos(x_1\cdot x_2)$, which is not an angle
    unless both have norm 1). Where $\sin\theta$ is below ``eps`` with $\cos\theta > 0$ (the states nearly agree) the
    coefficients tend to those of the straight line, $(1-w, w)$, and those are used. Equal norms are kept; unequal
    ones are not interpolated exactly (the formula is the paper's).

    Parameters
    ----------
    x1, x2 : Tensor, shape (B, ...)
        The two batches; each sample is one point.
    w : float
        Weight of ``x2``, in $[0, 1]$ ($w = 0$ gives ``x1``, $w = 1$ gives ``x2``).
    eps : float
        Threshold on $\sin\theta$ below which the straight line is used.

    Returns
    -------
    Tensor, shape (B, ...)
        The merged batch.

    Raises
    ------
    TypeError
        If ``x1`` or ``x2`` is not a floating tensor.
    ValueError
        If the shapes differ, ``w`` is not in $[0, 1]$, a sample has norm 0, or two samples point in opposite
        directions ($\theta = \pi$: every great circle joins them, so the merge is not defined).
    """
    x1, x2 = check_batch(x1, "x1"), check_batch(x2, "x2")
    if x1.shape != x2.shape:
        raise ValueError(f"x1 and x2 must have the same shape, got {tuple(x1.shape)} and {tuple(x2.shape)}")
    w = _check_unit(w, "w")
    n1, n2 = _flat_norm(x1), _flat_norm(x2)
    if (n1 == 0).any() or (n2 == 0).any():
        raise ValueError("slerp needs samples of non-zero norm (the angle of a zero vector is not defined)")
    cos = ((x1 * x2).flatten(1).sum(1).view_as(n1) / (n1 * n2)).clamp(-1.0, 1.0)
    theta = torch.arccos(cos)
    sin = torch.sin(theta)
    near = sin < eps
    if (near & (cos < 0)).any():
        raise ValueError("slerp of two samples pointing in opposite directions (theta = pi) is not defined")
    safe = torch.where(near, torch.ones_like(sin), sin)
    c1 = torch.where(near, torch.full_like(sin, 1 - w), torch.sin((1 - w) * theta) / safe)
    c2 = torch.where(near, torch.full_like(sin, w), torch.sin(w * theta) / safe)
    return c1 * x1 + c2 * x2


def merge_states(xs: Sequence[Tensor], weights: float | Sequence[float], how: str = "slerp") -> Tensor:
    r"""Merge $N \ge 2$ batches into one, sample by sample (lesson 21, eqs. 21.4-21.5).

    For $N > 2$ the pairwise rule is applied in turn (the paper never defines it): $y_1 = x_1$,
    $y_{k+1} = m(y_k, x_{k+1}; w_k)$, so ``weights`` holds $N - 1$ numbers, $w_k$ the weight of model $k+1$ against
    the merge of the ones before it. The pairwise rules $m$:

    - ``"slerp"``: :func:`slerp` (the paper's);
    - ``"lerp"``: $(1-w)\,y + w\,x$, which cuts inside the shell the states lie on;
    - ``"released"``: $\omega\,y + \sqrt{1-\omega^2}\,x$ with ``weights`` the target's coefficients $\omega$ (the
      released code's; it keeps the norm only of orthogonal inputs and scales identical ones by
      $\omega + \sqrt{1-\omega^2}$; its three-model formula carries one factor $\sqrt{1-\omega_1^2}$ more, which
      shrinks every input, and is not reproduced).

    Parameters
    ----------
    xs : sequence of Tensor, each of shape (B, ...)
        The batches, the target model's first.
    weights : float or sequence of float
        $w_1, \dots, w_{N-1}$ in $[0, 1]$ (a float for $N = 2$).
    how : {"slerp", "lerp", "released"}
        The pairwise rule.

    Returns
    -------
    Tensor, shape (B, ...)
        The merged batch.

    Raises
    ------
    TypeError
        If ``xs`` is not a sequence of floating tensors.
    ValueError
        If fewer than two batches are given, their shapes differ, ``weights`` do not hold $N - 1$ numbers in
        $[0, 1]$, or ``how`` is unknown (and as :func:`slerp`).
    """
    check_choice(how, "how", MERGES)
    if isinstance(xs, Tensor) or not isinstance(xs, Sequence) or len(xs) < 2:
        raise ValueError("xs must be a sequence of at least two batches")
    xs = [check_batch(x, f"xs[{i}]") for i, x in enumerate(xs)]
    ws = _weights(weights, len(xs))
    y = xs[0]
    for x, w in zip(xs[1:], ws, strict=True):
        if x.shape != y.shape:
            raise ValueError(f"every batch must have the shape {tuple(y.shape)}, got {tuple(x.shape)}")
        if how == "slerp":
            y = slerp(y, x, w)
        elif how == "lerp":
            y = (1 - w) * y + w * x
        else:
            y = w * y + math.sqrt(1 - w * w) * x
    return y


def deviation_step(merged: Tensor, target: Tensor, eta: float, relative: bool = False) -> Tensor:
    r"""Move the merged state towards one copy's own mean (lesson 21, eq. 21.6).

    $x^i = x' - \eta\,\frac{x' - \mu_i}{|x' - \mu_i|}$ per sample: a step of length $\eta$ from $x'$ towards $\mu_i$.
    With ``relative`` the length is $\eta\,|x' - \mu_i|$, i.e. $x^i = x' - \eta\,(x' - \mu_i)$, the same fraction of
    the gap in any dimension. Two guards the paper lacks: where $x' = \mu_i$ the direction is not defined and the
    state stays at $x'$; a step longer than the gap would pass $\mu_i$ and move away from it again, so it stops at
    $\mu_i$.

    Parameters
    ----------
    merged : Tensor, shape (B, ...)
        $x'$, the merged state.
    target : Tensor, shape (B, ...)
        $\mu_i$, where the copy is pulled.
    eta : float
        The step length (absolute, >= 0), or with ``relative`` the fraction of the gap, in $[0, 1]$.
    relative : bool
        Whether ``eta`` is a fraction of $|x' - \mu_i|$.

    Returns
    -------
    Tensor, shape (B, ...)
        $x^i$.

    Raises
    ------
    TypeError
        If ``merged`` or ``target`` is not a floating tensor.
    ValueError
        If their shapes differ or ``eta`` is out of range.
    """
    merged, target = check_batch(merged, "merged"), check_batch(target, "target")
    if merged.shape != target.shape:
        raise ValueError(
            f"merged and target must have the same shape, got {tuple(merged.shape)} and {tuple(target.shape)}"
        )
    eta = _check_eta(eta, relative)
    gap = merged - target
    if relative:
        return merged - eta * gap
    frac = (eta / _flat_norm(gap).clamp_min(torch.finfo(gap.dtype).tiny)).clamp(max=1.0)  # gap 0: no move
    return merged - frac * gap


def _check_unit(w: object, name: str) -> float:
    w = check_real(w, name)
    if not 0.0 <= w <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {w!r}")
    return w


def _check_eta(eta: object, relative: bool) -> float:
    if not isinstance(relative, bool):
        raise TypeError(f"relative must be True or False, got {type(relative).__name__}")
    eta = check_real(eta, "eta")
    if eta < 0 or (relative and eta > 1):
        raise ValueError(f"eta must be {'in [0, 1] when relative' if relative else '>= 0'}, got {eta!r}")
    return eta


def _weights(weights: object, n: int) -> list[float]:
    if isinstance(weights, (int, float)) and not isinstance(weights, bool):
        weights = [weights]
    if isinstance(weights, Tensor):
        weights = weights.tolist()
    if not isinstance(weights, Sequence) or isinstance(weights, str) or len(weights) != n - 1:
        got = len(weights) if isinstance(weights, Sequence) else type(weights).__name__
        raise ValueError(f"weights must hold N - 1 = {n - 1} numbers in [0, 1] for {n} models, got {got}")
    return [_check_unit(w, f"weights[{i}]") for i, w in enumerate(weights)]


ALIGNS = ("sigma", "index")


class Aligned:
    r"""A model trained on one schedule, called at the times of another (lesson 21, eq. 21.8).

    Two VP schedules with different tables put the same $x_t$ at different times. With ``align="sigma"`` a call at
    time $t$ of ``sampling`` goes to the model at the time $t'$ of its own ``schedule`` with the same noise-to-signal
    ratio $\sigma = b/a$ (equal $\bar\alpha$ for VP schedules), its input rescaled by $a'_{t'}/a_t$ (1 for two VP
    schedules); its prediction is turned into the pair $(\hat x_0, \hat\varepsilon)$ with its own coefficients,
    which is the same pair for both schedules (eq. 21.8), and returned as ``prediction`` with the coefficients of
    ``sampling`` at $t$. On a discrete ``schedule`` $t'$ is rounded to the nearest integer time, so the match holds to
    one step of its table; a ratio outside the schedule's range goes to its end. ``align="index"`` calls the model at
    the same number $t$, which is right only when the schedules agree: the negative control. With ``schedule`` the
    same object as ``sampling`` and the model's own ``prediction``, the call is the model's own, unchanged.

    Parameters
    ----------
    model : Model
        Any model with the one interface.
    schedule : Schedule
        The schedule ``model`` was trained on.
    sampling : Schedule
        The schedule whose times the calls use.
    align : {"sigma", "index"}
        How times are matched.
    prediction : str, optional
        What the calls return (default: the model's own parameterisation).

    Raises
    ------
    TypeError
        If ``model`` does not follow the one interface or a schedule is not a Schedule.
    ValueError
        If ``align`` or ``prediction`` is unknown, or ``"index"`` is asked across a discrete and a continuous
        schedule.
    """

    def __init__(
        self, model: Model, schedule: Schedule, sampling: Schedule, align: str = "sigma", prediction: str | None = None
    ) -> None:
        self.model = check_model(model)
        self.schedule = check_schedule(schedule)
        self.sampling = check_schedule(sampling, "sampling")
        self.align = check_choice(align, "align", ALIGNS)
        self.prediction = (
            model.prediction if prediction is None else check_choice(prediction, "prediction", PREDICTIONS)
        )
        if align == "index" and schedule.discrete != sampling.discrete:
            raise ValueError("align='index' needs two discrete or two continuous schedules (the same time numbers)")
        self.same = schedule is sampling
        self._times: dict[float, tuple] = {}

    def own_time(self, t: float) -> tuple[float, float]:
        r"""The model's own time $t'$ for the sampling time $t$ and the input scale $a'_{t'}/a_t$ (eq. 21.8).

        Parameters
        ----------
        t : float
            A time of the sampling schedule.

        Returns
        -------
        (float, float)
            $t'$ and the scale.
        """
        return self._lookup(t)[:2]

    def _lookup(self, t: float) -> tuple:
        if t not in self._times:
            here = _floats(self.sampling, t)
            a, b = here[0], here[1]
            if self.same or self.align == "index":
                own = t
            else:
                hi = float(self.schedule.t_max)
                lo = 1.0 if self.schedule.discrete else 0.0
                sigma = torch.tensor([b / a if a > 0 else 1e300], dtype=torch.float64)
                own = float(self.schedule.t_of_sigma(sigma, lo=lo, hi=hi)[0])
                own = min(max(float(round(own)) if self.schedule.discrete else own, lo), hi)
            there = here if self.same else _floats(self.schedule, own)
            scale = there[0] / a if self.align == "sigma" and not self.same and a > 0 else 1.0
            self._times[t] = (own, scale, there, here)
        return self._times[t]

    def __call__(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        kind = self.model.prediction
        if self.same and kind == self.prediction:
            return self.model(x, t, cond)
        t, value = _one_time(t, x, "Aligned")
        own, scale, there, here = self._lookup(value)
        xs = x if scale == 1.0 else x * scale
        time = t if own == value else torch.full((x.shape[0],), own, dtype=x.dtype, device=x.device)
        pair = to_pair(self.model(xs, time, cond), kind, xs, *there)
        return from_pair(pair, self.prediction, *here)

    def __repr__(self) -> str:
        return f"Aligned({self.model!r}, {self.schedule!r} -> {self.sampling!r}, align={self.align!r})"


def _one_time(t: object, x: Tensor, who: str) -> tuple[Tensor, float]:
    """``t`` as a tensor for ``x`` and its one value; a ValueError naming ``who`` if the batch holds several times."""
    t = as_tensor(t, "t", x)
    values = t.unique().tolist() if t.dim() else [float(t)]
    if len(values) != 1:
        raise ValueError(f"{who} needs one time for the whole batch (a sampler step's)")
    return t, float(values[0])


def _floats(schedule: Schedule, t: float) -> tuple:
    r"""$(a, b, \dot a, \dot b)$ of ``schedule`` at one time as Python floats (``None`` for a discrete schedule's
    derivatives)."""
    c = schedule.coefficients(torch.tensor([t], dtype=torch.float64))
    return tuple(None if v is None else float(v[0]) for v in (c.a, c.b, c.da, c.db))


class Stack:
    r"""$N$ models as one model over $N$ stacked copies of a batch (lesson 21, sec. 21.4): copy $i$ (rows
    $iB..(i+1)B-1$) goes to model $i$, and every part's prediction is returned in model 1's units, so that one rule of the
    one loop steps all copies at once and a hook sees every copy's mean. With ``only_first`` set, only model 1 is
    called and its prediction is given to every copy (after a merge window, where the other copies no longer matter).

    Parameters
    ----------
    models : sequence of Model
        The models, each bound to its condition (:class:`~diffmath.guide.compose.Conditioned`) or unconditional;
        each is called as :class:`Aligned` with its schedule.
    schedules : sequence of Schedule
        Each model's training schedule.
    sampling : Schedule
        The schedule of the sampling grid.
    align : {"sigma", "index"}
        As :class:`Aligned`.

    Raises
    ------
    TypeError, ValueError
        As :class:`Aligned`; a ValueError if ``models`` and ``schedules`` differ in length or hold fewer than two.
    """

    def __init__(self, models: Sequence[Model], schedules: Sequence[Schedule], sampling: Schedule, align: str) -> None:
        if isinstance(models, (str, bytes)) or not isinstance(models, Sequence) or len(models) < 2:
            raise ValueError("models must be a sequence of at least two models")
        if not isinstance(schedules, Sequence) or len(schedules) != len(models):
            raise ValueError(f"schedules must hold one schedule per model ({len(models)})")
        self.prediction = models[0].prediction
        self.parts = [Aligned(m, s, sampling, align, self.prediction) for m, s in zip(models, schedules, strict=True)]
        self.only_first = False

    def __call__(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        n = len(self.parts)
        if x.shape[0] % n:
            raise ValueError(f"a Stack of {n} models needs a batch of n * B rows, got {x.shape[0]}")
        if self.only_first:
            first = x.chunk(n)[0]
            check_input_dtype(self.parts[0].model, first)
            return self.parts[0](first, t.chunk(n)[0], cond).repeat(n, *[1] * (x.dim() - 1))
        out = []
        for part, xi, ti in zip(self.parts, x.chunk(n), t.chunk(n), strict=True):
            check_input_dtype(part.model, xi)
            out.append(part(xi, ti, cond))
        return torch.cat(out)


def _window(window: object, num_steps: int) -> tuple[int, int]:
    if isinstance(window, tuple) and len(window) == 2:
        start, stop = (check_int(v, "window", 0) for v in window)
    else:
        start, stop = 0, check_int(window, "window", 0)
    if not start <= stop <= num_steps:
        raise ValueError(
            f"window must be a number of first steps s in 0..{num_steps} or a pair (start, stop) with "
            f"0 <= start <= stop <= {num_steps}, got {window!r}"
        )
    return start, stop


PULLS = ("mean", "state")


def amdm(
    models: Sequence[Model],
    x: Tensor | Sequence[Tensor],
    grid: Tensor,
    schedule: Schedule,
    rule: Rule | None = None,
    *,
    schedules: Sequence[Schedule] | None = None,
    window: int | tuple[int, int] = 20,
    weights: float | Sequence[float] = 0.5,
    eta: float | Sequence[float] = 0.0,
    relative: bool = False,
    merge: str = "slerp",
    pull_to: str = "mean",
    align: str = "sigma",
    noise: torch.Generator | Callable[[int, Tensor], Tensor] | None = None,
    state: dict | None = None,
    progress: bool = False,
) -> Iterator[SamplerStep]:
    r"""AMDM: sample the target model with $N - 1$ others merged into it over the first steps (lesson 21, Alg. 21.1).

    Each model keeps its own copy of the state. On every step of the window the copies' means $\mu_i$ (the ``rule``'s
    mean from the copy's own state) are merged, $x' = $ :func:`merge_states` $(\mu_1, \dots, \mu_N; w)$, and each copy is
    pulled back towards its own mean by :func:`deviation_step`; the rule's noise is then added to each copy
    (independent draws). Steps before a window's start run every copy unmerged; after the window only the target,
    model 1, is called (the other copies are carried along on its prediction and discarded, so that one run of
    :func:`~diffmath.sampling.loop.run` covers the grid and a multistep rule keeps its history). For DDIM
    ($\sigma = 0$, the paper's case) this is exactly the paper's algorithm; model calls: $N$ per step in the window
    and before it, 1 after. With an empty window (``window=0``) it is model 1 alone, bit for bit.

    Parameters
    ----------
    models : sequence of Model
        $N \ge 2$ models, the target first; bind each one's condition with
        :class:`~diffmath.guide.compose.Conditioned`.
    x : Tensor of shape (B, ...), or a sequence of $N$ of them
        The start at ``grid[0]``: one shared by all copies, or one per model (independent starts).
    grid : Tensor, shape (K + 1,)
        Decreasing times of ``schedule``.
    schedule : Schedule
        The schedule of the grid (model 1's).
    rule : Rule, optional
        Any update rule of the one loop (default DDIM, :func:`~diffmath.sampling.samplers.ddim_rule`).
    schedules : sequence of Schedule, optional
        Each model's training schedule (default: all ``schedule``); others are matched by ``align``.
    window : int or (int, int)
        $s$, merge on the first $s$ steps, or ``(start, stop)``, merge on steps ``start .. stop - 1`` (from 0).
    weights : float or sequence of float
        The merge weights (:func:`merge_states`).
    eta : float or sequence of float
        The pull length, one for all copies or one per copy (:func:`deviation_step`).
    relative : bool
        Whether ``eta`` is a fraction of the gap.
    merge : {"slerp", "lerp", "released"}
        The pairwise merge rule (:func:`merge_states`).
    pull_to : {"mean", "state"}
        Pull towards the copy's own mean (the paper's) or towards its own state before the step (the released code's
        one-step mean at the wrong time, about $1.006\,x_t$ of that state).
    align : {"sigma", "index"}
        How models with other schedules are called (:class:`Aligned`).
    noise : torch.Generator or callable, optional
        Fresh noise of stochastic rules: a generator (``None``: the global one) or ``noise(i, x)`` for step ``i``
        (``x`` has the stacked shape inside the window).
    state : dict, optional
        Filled with ``"copies"``: every copy's state, shape (N, B, ...), after each step of the window.
    progress : bool
        Show a progress bar.

    Yields
    ------
    SamplerStep
        After each step, model 1's copy and its $\hat x_0$.

    Raises
    ------
    TypeError
        If a model does not follow the one interface, a schedule is not a Schedule, or ``x`` is not a tensor or a
        sequence of them.
    ValueError
        If fewer than two models are given, ``schedules``, ``weights``, ``eta`` or a start sequence has the wrong
        length, the starts differ in shape, ``window``, ``weights`` or ``eta`` are out of range, or a choice is
        unknown (and as :func:`~diffmath.sampling.loop.run`).
    """
    if isinstance(models, (str, bytes)) or not isinstance(models, Sequence) or len(models) < 2:
        raise ValueError("models must be a sequence of at least two models (the target first)")
    models = [check_model(m) for m in models]
    n = len(models)
    schedule = check_schedule(schedule)
    schedules = [schedule] * n if schedules is None else list(schedules)
    if len(schedules) != n:
        raise ValueError(f"schedules must hold one schedule per model ({n}), got {len(schedules)}")
    for i, s in enumerate(schedules):
        check_schedule(s, f"schedules[{i}]")
    how = check_choice(merge, "merge", MERGES)
    pull_to = check_choice(pull_to, "pull_to", PULLS)
    ws = _weights(weights, n)
    etas = [eta] * n if isinstance(eta, (int, float)) else eta
    if not isinstance(etas, Sequence) or len(etas) != n:
        raise ValueError(f"eta must be one number or one per model ({n})")
    etas = [_check_eta(e, relative) for e in etas]
    g = check_grid(grid, schedule)
    start, stop = _window(window, len(g) - 1)
    rule = ddim_rule() if rule is None else rule
    if not callable(rule):
        raise TypeError(f"rule must be an update rule of the one loop, got {type(rule).__name__}")
    if isinstance(x, Tensor):
        starts = [check_batch(x, "x")] * n
    elif isinstance(x, Sequence) and len(x) == n:
        starts = [check_batch(xi, f"x[{i}]") for i, xi in enumerate(x)]
        if any(s.shape != starts[0].shape for s in starts):
            raise ValueError(f"every start must have the shape {tuple(starts[0].shape)}")
    else:
        raise TypeError(f"x must be a tensor (a shared start) or a sequence of {n} tensors (one per model)")
    state = {} if state is None else state
    stack = Stack(models, schedules, schedule, align)

    def on_mean(mean: Tensor, xt: Tensor, step: Step, st: dict) -> tuple[Tensor, dict]:
        stack.only_first = step.index + 1 >= stop  # from the next step on, only the target's copy matters
        if not start <= step.index < stop:
            return mean, st
        mus = mean.chunk(n)
        merged = merge_states(list(mus), ws, how)
        towards = mus if pull_to == "mean" else xt.chunk(n)
        out = torch.cat([deviation_step(merged, m, e, relative) for m, e in zip(towards, etas, strict=True)])
        st["copies"] = out.view(n, *starts[0].shape)
        return out, st

    if stop == 0:  # no merge at all: model 1 alone, exactly
        for out in run(models[0], starts[0], g, schedule, rule, noise=noise, progress=progress, checked_grid=g):
            yield out
        return
    B = starts[0].shape[0]
    for out in run(
        stack,
        torch.cat(starts),
        g,
        schedule,
        rule,
        noise=noise,
        on_mean=on_mean,
        state=state,
        progress=progress,
        desc="amdm",
        checked_grid=g,
    ):
        yield SamplerStep(out.index, out.t, out.x[:B], out.x0[:B])
