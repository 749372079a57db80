r"""The multi-model methods side by side (lessons 21-24): one sampling call per method, tables over seeds.

A comparison names its models by role in one dict, ``parts``: ``"1"`` the target model and ``"2"`` the other one
(each bound to its condition), ``"u"`` an unconditional model (for eps-composition) and ``"oracle"`` a model of the
law asked for, where one exists. :func:`sample_method` samples one method from them; :func:`method_table` runs a
list of methods over seeds and judges every sample set; :func:`format_table` prints mean $\pm$ standard error.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from diffmath.core.models import Model
from diffmath.core.schedules import Schedule
from diffmath.guide.compose import Combine
from diffmath.guide.multi import amdm
from diffmath.sampling.loop import Rule, run
from diffmath.sampling.samplers import ddim_rule

METHODS = ("model 1", "model 2", "oracle", "eps-average", "eps-composition", "amdm")
"""What :func:`sample_method` can run."""


def sample_method(
    method: str,
    parts: dict[str, Model],
    x: Tensor,
    grid: Tensor,
    schedule: Schedule,
    *,
    x_other: Tensor | None = None,
    rule: Rule | None = None,
    record: bool = False,
    **amdm_kwargs: object,
) -> tuple[Tensor, list[Tensor]]:
    r"""Samples of one method from a shared start (lesson 21, sec. 21.6).

    - ``"model 1"``, ``"model 2"``, ``"oracle"``: that part alone;
    - ``"eps-average"``: $(1-w)\hat\varepsilon_1 + w\hat\varepsilon_2$ with $w$ = ``weights`` (default 1/2), which is
      what AMDM's lerp merge is from a shared state under DDIM (eq. 21.7);
    - ``"eps-composition"``: $\hat\varepsilon_1 + \hat\varepsilon_2 - \hat\varepsilon_u$, the product
      $p_1 p_2 / p$ of lesson 9 (eq. 9.13);
    - ``"amdm"``: :func:`~diffmath.guide.multi.amdm` with ``amdm_kwargs`` (and ``x_other`` as copy 2's start if
      given: independent starts).

    Parameters
    ----------
    method : str
        One of :data:`METHODS`.
    parts : dict of str to Model
        The models by role (``"1"``, ``"2"``, ``"u"``, ``"oracle"``; a method needs only its own).
    x : Tensor, shape (B, ...)
        The start at ``grid[0]``.
    grid : Tensor
        Decreasing times of ``schedule``.
    schedule : Schedule
        The schedule of the grid.
    x_other : Tensor, optional
        Copy 2's own start, for AMDM with independent starts.
    rule : Rule, optional
        The update rule (default DDIM).
    record : bool
        Also return every step's $\hat x_0$ (for :func:`decision_curve`).
    **amdm_kwargs
        Passed to :func:`~diffmath.guide.multi.amdm` (``weights`` is also the eps-average's weight).

    Returns
    -------
    (Tensor, list of Tensor)
        The samples at ``grid[-1]``, and each step's $\hat x_0$ (empty unless ``record``).

    Raises
    ------
    ValueError
        If ``method`` is unknown or ``parts`` lacks a model it needs (and as the sampler it runs).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    need = {"model 1": ["1"], "model 2": ["2"], "oracle": ["oracle"], "eps-average": ["1", "2"],
            "eps-composition": ["1", "2", "u"], "amdm": ["1", "2"]}[method]  # fmt: skip
    missing = [k for k in need if k not in parts]
    if missing:
        raise ValueError(f"method {method!r} needs parts {need}; missing {missing}")
    rule = ddim_rule() if rule is None else rule
    if method == "amdm":
        start = x if x_other is None else [x, x_other]
        steps = amdm([parts["1"], parts["2"]], start, grid, schedule, rule, **amdm_kwargs)
    else:
        if method in ("model 1", "model 2", "oracle"):
            model = parts[need[0]]
        else:  # both sums are affine (weights sum to 1): the same in eps units and in model 1's (eq. 9.13)
            space = parts["1"].prediction
            if method == "eps-average":
                w = float(amdm_kwargs.get("weights", 0.5))
                model = Combine([parts["1"], parts["2"]], [1 - w, w], space, schedule)
            else:
                model = Combine([parts["1"], parts["2"], parts["u"]], [1.0, 1.0, -1.0], space, schedule)
        steps = run(model, x, grid, schedule, rule)
    x0s, out = [], None
    for step in steps:
        out = step.x
        if record:
            x0s.append(step.x0)
    return out, x0s


def method_table(
    rows: dict[str, tuple[str, dict]],
    parts: dict[str, Model],
    judge: Callable[[Tensor], dict[str, float]],
    starts: Callable[[int], tuple[Tensor, Tensor]],
    grid: Tensor,
    schedule: Schedule,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    rule: Rule | None = None,
) -> dict[str, dict[str, list[float]]]:
    r"""Every row's judged numbers on every seed (lesson 21, sec. 21.6).

    Parameters
    ----------
    rows : dict of str to (str, dict)
        Row label -> (method, keyword arguments of :func:`sample_method`; ``"independent": True`` gives copy 2 its
        own start).
    parts : dict of str to Model
        The models by role (:func:`sample_method`).
    judge : callable
        ``judge(samples) -> {metric: value}``.
    starts : callable
        ``starts(seed) -> (x, x_other)``: the shared start and copy 2's own, the same for every row.
    grid : Tensor
        Decreasing times of ``schedule``.
    schedule : Schedule
        The schedule of the grid.
    seeds : sequence of int
        The seeds (at least 2, for a spread).
    rule : Rule, optional
        The update rule (default DDIM).

    Returns
    -------
    dict of str to dict of str to list of float
        Row label -> metric -> one value per seed.

    Raises
    ------
    ValueError
        If fewer than two seeds are given (and as :func:`sample_method`).
    """
    if len(seeds) < 2:
        raise ValueError("method_table needs at least two seeds, for a standard error")
    table: dict[str, dict[str, list[float]]] = {}
    with torch.no_grad():
        for seed in seeds:
            x, x_other = starts(seed)
            for label, (method, kwargs) in rows.items():
                kw = dict(kwargs)
                other = x_other if kw.pop("independent", False) else None
                out, _ = sample_method(method, parts, x, grid, schedule, x_other=other, rule=rule, **kw)
                for metric, value in judge(out).items():
                    table.setdefault(label, {}).setdefault(metric, []).append(float(value))
    return table


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    r"""Mean and standard error $s/\sqrt{n}$ of per-seed values (lesson 21, sec. 21.6).

    Parameters
    ----------
    values : sequence of float
        At least two values.

    Returns
    -------
    (float, float)
        The standard error is ``nan`` when a value is not finite (a metric undefined for a method, an infinite
        PSNR).

    Raises
    ------
    ValueError
        If fewer than two values are given.
    """
    if len(values) < 2:
        raise ValueError("a standard error needs at least two values")
    if not all(math.isfinite(v) for v in values):
        return statistics.fmean(values), math.nan
    return statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values))


def format_table(
    table: dict[str, dict[str, list[float]]], metrics: Sequence[str] | None = None, digits: int = 3
) -> str:
    r"""A :func:`method_table` as text: one row per method, mean $\pm$ s.e. over the seeds (lesson 21, sec. 21.6).

    Parameters
    ----------
    table : dict
        From :func:`method_table`.
    metrics : sequence of str, optional
        The columns (default: every metric of the first row).
    digits : int
        Decimals.

    Returns
    -------
    str
    """
    first = next(iter(table.values()))
    metrics = list(first) if metrics is None else list(metrics)
    n = len(next(iter(first.values())))
    cells = {
        label: [f"{mu:.{digits}f} +- {se:.{digits}f}" for mu, se in (mean_se(cols[m]) for m in metrics)]
        for label, cols in table.items()
    }
    widths = [max(len(m), *(len(c[k]) for c in cells.values())) + 2 for k, m in enumerate(metrics)]
    width = max(len(k) for k in table) + 2
    head = f"{'method':<{width}}" + "".join(f"{m:>{w}}" for m, w in zip(metrics, widths, strict=True))
    lines = [head + f"   (mean +- s.e., {n} seeds)"]
    for label, row in cells.items():
        lines.append(f"{label:<{width}}" + "".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
    return "\n".join(lines)


def decision_curve(x0s: Sequence[Tensor], final: Tensor, attribute: Callable[[Tensor], Tensor]) -> list[float]:
    r"""How early the attributes are decided: at each step, the fraction of samples whose $\hat x_0$ already shows
    the attribute value the final sample has (lesson 21, sec. 21.6).

    Parameters
    ----------
    x0s : sequence of Tensor, each of shape (B, ...)
        Every step's $\hat x_0$ (:func:`sample_method` with ``record``).
    final : Tensor, shape (B, ...)
        The final samples.
    attribute : callable
        ``attribute(x) -> labels`` of shape (B,) (or (B, L) for several attributes, all of which must agree).

    Returns
    -------
    list of float
        One agreement fraction per step.
    """
    end = attribute(final)
    out = []
    for x0 in x0s:
        same = attribute(x0) == end
        out.append(float((same if same.dim() == 1 else same.all(1)).double().mean()))
    return out


def mode_metrics(mixture, x: Tensor, target: Sequence[int], radius: float = 4.0) -> dict[str, float]:
    r"""How well samples of a Gaussian mixture hit the components asked for (lesson 22, sec. 22.7).

    Each sample goes to its nearest component mean; it is *on* that mode when it lies within ``radius`` standard
    deviations of it (the component's largest one), else *off-mode*. Returns the joint accuracy (the fraction on a mode
    of ``target``), the off-mode rate, and the total-variation distance between the histogram over the $K$ modes plus
    an off-mode bin and the true conditional law (the mixture's weights restricted to ``target``, renormalised). With
    one target mode the distance is one minus the joint accuracy.

    Parameters
    ----------
    mixture : GaussianMixture
        The data law.
    x : Tensor, shape (B, *event_shape)
        Samples.
    target : sequence of int
        The components that satisfy every requested attribute.
    radius : float
        On-mode radius, in standard deviations.

    Returns
    -------
    dict
        ``"joint"``, ``"off-mode"``, ``"TV"``.

    Raises
    ------
    ValueError
        If ``target`` is empty or holds an index outside 0..K-1.
    """
    K = mixture.K
    target = list(target)
    if not target or any(not isinstance(k, int) or not 0 <= k < K for k in target):
        raise ValueError(f"target must be a non-empty list of component indices in 0..{K - 1}, got {target!r}")
    flat = x.reshape(x.shape[0], -1).to(torch.float64)
    dist = torch.cdist(flat, mixture.means.to(flat.device))
    nearest = dist.argmin(1)
    sd = mixture.lam.amax(1).sqrt().to(flat.device)[nearest]
    on = dist.gather(1, nearest[:, None])[:, 0] < radius * sd
    hist = torch.bincount(nearest[on], minlength=K).double() / x.shape[0]
    law = torch.zeros(K, dtype=torch.float64)
    law[target] = mixture.weights[target] / mixture.weights[target].sum()
    tv = 0.5 * ((hist.cpu() - law).abs().sum() + (1 - hist.sum().cpu()))
    return {"joint": float(hist[target].sum()), "off-mode": float(1 - on.double().mean()), "TV": float(tv)}
