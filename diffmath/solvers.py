r"""Higher-order solvers of the probability-flow ODE as update rules of the one loop (lesson 6, secs. 6.9-6.14).

Every solver here is a rule ``rule(pair, x, step, state) -> (mean, 0.0, state)`` of :func:`diffmath.sampling.loop.run`:
one model call per step (the loop's), pure tensor arithmetic, the history of a multistep method kept in ``state``
under the rule's ``key``. They integrate the ODE in one of its two exact forms:

- in the half log-SNR $\ell = \log(a/b)$ with the denoiser $\hat x_0$, the exponential integrator (lesson 6,
  eq. 6.16): DPM-Solver++ multistep of order 1-3 (Lu et al. 2022; eqs. 6.22-6.24), its singlestep 2S and 3S
  (secs. 6.9, 6.14; eqs. 6.31-6.32) and UniPC, the UniP predictor with the UniC corrector (Zhao et al. 2023;
  eqs. 6.25-6.27);
- in $\sigma = b/a$ with $\hat\varepsilon$ for $y = x/a$ (eq. 6.15): the variable-step Adams-Bashforth method of
  DEIS, $\rho$AB (Zhang & Chen 2023; eq. 6.28), which also gives the methods above a last step into $\sigma = 0$ of
  their own order (sec. 6.11).

A rule's coefficients depend on the grid alone; they are computed in float64 from the step's Python floats. Grids
tuned for a number of steps on one task are stored as data (:data:`TUNED_GRIDS`, sec. 6.12), never searched while
sampling; :func:`tune_grid` is the search that produced them.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from diffmath.core._validate import check_choice, check_int
from diffmath.core.models import Model
from diffmath.core.notation import Pair
from diffmath.core.schedules import Schedule
from diffmath.sampling.loop import Rule, Step, run
from diffmath.sampling.loop import final as last_state

FINALS: tuple[str, ...] = ("first", "sigma")


def phi(k: int, h: float) -> float:
    r"""$\varphi_k(-h) = \int_0^1 e^{-h(1-u)}\,\frac{u^{k-1}}{(k-1)!}\,\mathrm du$, the weights of the exponential
    integrator (lesson 6, eq. 6.22), accurate for every $h \ge 0$.

    A series below $h = 1$ (where the recursion $\varphi_{k+1}(z) = (\varphi_k(z) - 1/k!)/z$ cancels digits) and the
    recursion above; $\varphi_0(-h) = e^{-h}$, $h\varphi_1(-h) = 1 - e^{-h}$.

    Parameters
    ----------
    k : int
        Index $k \ge 0$.
    h : float
        The step in $\ell$, $h \ge 0$ (``inf`` allowed: $\varphi_k(-\infty) = 0$ for $k \ge 1$).

    Returns
    -------
    float

    Raises
    ------
    ValueError
        If ``k`` is not an integer >= 0 or ``h`` is not a number >= 0.
    """
    check_int(k, "k", low=0)
    if isinstance(h, bool) or not isinstance(h, (int, float)) or not h >= 0:
        raise ValueError(f"h must be a number >= 0, got {h!r}")
    if k == 0:
        return math.exp(-h)
    if math.isinf(h):
        return 0.0
    if h < 1.0:  # sum_n (-h)^n / (n + k)!: alternating, with terms falling at least like 1/n
        total, term = 0.0, 1.0 / math.factorial(k)
        for n in range(80):
            total += term
            term *= -h / (n + k + 1)
            if abs(term) < 1e-18 * abs(total):
                break
        return total
    value = -math.expm1(-h) / h
    for j in range(1, k):
        value = (value - 1.0 / math.factorial(j)) / (-h)
    return value


def _check_order(order: object) -> int:
    if isinstance(order, bool) or order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
    return int(order)


def _half_log_snr(a: float, b: float) -> float:
    if b == 0:
        return math.inf
    if a == 0:
        return -math.inf
    return math.log(a) - math.log(b)


def _solve_transposed(nodes: Sequence[float], moments: Sequence[float]) -> list[float]:
    """w with sum_m w_m r_m^j = moments_j, j = 0..n-1: the weights that integrate the interpolant through the nodes."""
    if len(nodes) == 1:
        return [float(moments[0])]
    V = np.vander(np.asarray(nodes, dtype=np.float64), len(nodes), increasing=True)  # V[m, j] = r_m^j
    return np.linalg.solve(V.T, np.asarray(moments, dtype=np.float64)).tolist()


def exponential_weights(offsets: Sequence[float], h: float, form: str = "taylor") -> list[float]:
    r"""Weights $w_m$ of one DPM-Solver++ step, $x_s = \frac{b_s}{b_t}x_t + a_s\sum_m w_m\hat x_0^{(m)}$
    (lesson 6, eqs. 6.23-6.24).

    Parameters
    ----------
    offsets : sequence of float
        $u_m = \ell_m - \ell_t \le 0$ of the $p$ denoised values used, the current one first ($u_0 = 0$).
    h : float
        The step $\ell_s - \ell_t > 0$.
    form : {"taylor", "lu"}
        ``"taylor"``: $\int_0^h e^{-(h-u)}P(u)\,\mathrm du$ for the polynomial $P$ through the $p$ values (eq. 6.23),
        exact for polynomials of degree $< p$; ``"lu"``: Lu et al.'s published 2M (midpoint, eq. 6.17) and 3M
        (eq. 6.24) coefficients.

    Returns
    -------
    list of float
        $w_0, \dots, w_{p-1}$.

    Raises
    ------
    ValueError
        If ``offsets`` is empty, longer than 3 for ``"lu"``, does not start at 0, is not strictly decreasing, ``h``
        is not a finite number > 0, or ``form`` is unknown.
    """
    check_choice(form, "form", ("taylor", "lu"))
    us = [float(u) for u in offsets]
    if not us or us[0] != 0 or any(b >= a for a, b in itertools.pairwise(us)):
        raise ValueError(f"offsets must start at 0 and decrease strictly, got {list(offsets)!r}")
    if not (isinstance(h, (int, float)) and 0 < h < math.inf):
        raise ValueError(f"h must be a finite number > 0, got {h!r}")
    if form == "taylor":
        return _solve_transposed([u / h for u in us], [h * math.factorial(j) * phi(j + 1, h) for j in range(len(us))])
    if len(us) > 3:
        raise ValueError(f"Lu et al.'s coefficients exist for 1-3 values, got {len(us)}")
    e1 = -math.expm1(-h)
    if len(us) == 1:
        return [e1]
    r0 = -us[1] / h
    if len(us) == 2:  # D1 = (m0 - m1) / r0, x_s += a_s (1 - e^{-h}) D1 / 2
        return [e1 + 0.5 * e1 / r0, -0.5 * e1 / r0]
    r1 = (us[1] - us[2]) / h
    c1, c2 = h * phi(2, h), h * phi(3, h)  # (e^{-h} - 1)/h + 1 and 1/2 - (e^{-h} - 1 + h)/h^2
    d10, d11 = [1 / r0, -1 / r0, 0.0], [0.0, 1 / r1, -1 / r1]
    diff = [u - v for u, v in zip(d10, d11, strict=True)]  # D1_0 - D1_1
    d1 = [u + r0 / (r0 + r1) * v for u, v in zip(d10, diff, strict=True)]
    d2 = [v / (r0 + r1) for v in diff]
    return [e1 * (m == 0) + c1 * d1[m] + c2 * d2[m] for m in range(3)]


def sigma_weights(sigmas: Sequence[float], sigma_s: float) -> list[float]:
    r"""Weights of one Adams-Bashforth step in $\sigma$, $y_s = y_t + \sum_m w_m\hat\varepsilon^{(m)}$, integrating the
    polynomial through the $p$ values $\hat\varepsilon^{(m)}$ at ``sigmas`` exactly from $\sigma_t$ to $\sigma_s$
    (lesson 6, eq. 6.28).

    Parameters
    ----------
    sigmas : sequence of float
        Distinct $\sigma_m$ of the values used, the current one ($\sigma_t$) first.
    sigma_s : float
        The end of the step ($0$ allowed).

    Returns
    -------
    list of float

    Raises
    ------
    ValueError
        If ``sigmas`` is empty or holds repeated or non-finite values, or ``sigma_s`` equals ``sigmas[0]``.
    """
    ss = [float(s) for s in sigmas]
    if not ss or len(set(ss)) != len(ss) or not all(math.isfinite(s) for s in ss):
        raise ValueError(f"sigmas must be distinct finite numbers, got {list(sigmas)!r}")
    delta = float(sigma_s) - ss[0]
    if delta == 0 or not math.isfinite(delta):
        raise ValueError(f"sigma_s must differ from sigmas[0] = {ss[0]:g}, got {sigma_s!r}")
    return _solve_transposed([(s - ss[0]) / delta for s in ss], [delta / (j + 1) for j in range(len(ss))])


def _order_now(order: int, step: Step, lower_order_final: bool, available: int) -> int:
    p = min(order, available)
    return min(p, step.num_steps - step.index) if lower_order_final else p


def _history(state: dict, key: str, step: Step, fresh: object) -> object:
    if step.index == 0 or key not in state:
        state[key] = fresh
    return state[key]


def _sigma_step(x: Tensor, step: Step, sigmas: list[float], eps: list[Tensor]) -> Tensor:
    y = x / step.a_t
    for w, e in zip(sigma_weights(sigmas, step.b_s / step.a_s), eps, strict=True):
        y = y + w * e
    return step.a_s * y


def _into_data(x: Tensor, pair: Pair, step: Step, hist: list, p: int, final_kind: str) -> Tensor:
    """The step into b_s = 0: a_s x0_hat, or (final_kind "sigma", p > 1) Adams-Bashforth in sigma (eq. 6.28)."""
    if final_kind == "sigma" and p > 1 and step.a_t > 0 and step.a_s > 0:
        return _sigma_step(x, step, [h[1] for h in hist[:p]], [h[3] for h in hist[:p]])
    return step.a_s * pair.x0


def dpm_multistep_rule(
    order: int = 3, lower_order_final: bool = True, form: str = "taylor", final: str = "first"
) -> Rule:
    r"""DPM-Solver++ multistep of order 1-3 (Lu et al. 2022; lesson 6, eqs. 6.22-6.24) as a rule of the one loop.

    Step $i$ integrates the polynomial through the last $p$ denoised values (in $\ell = \log(a/b)$) against
    $e^{-(\ell_{i+1} - \ell)}$ in the exponential integrator (eq. 6.16), with :func:`exponential_weights`;
    $p = \min(\text{order}, i + 1)$ (the warm-up; order 1 is DDIM, eq. 4.11).

    Parameters
    ----------
    order : {1, 2, 3}
        The order $p$.
    lower_order_final : bool
        Cap the order by the number of steps left (diffusers does this on grids of fewer than 15 steps).
    form : {"taylor", "lu"}
        ``"taylor"``: the exact integral of the interpolant (eq. 6.23), of order $p$; ``"lu"``: Lu et al.'s
        published coefficients (eq. 6.24), which diffusers runs; their 3M is of order 2 (sec. 6.9).
    final : {"first", "sigma"}
        The step into $b_s = 0$, where $\ell = \infty$ and no polynomial in $\ell$ reaches: ``"first"``,
        $x_s = a_s\hat x_0$; ``"sigma"``, the Adams-Bashforth step in $\sigma$ through the last $p$ values of
        $\hat\varepsilon$ (eq. 6.28, sec. 6.11; ``lower_order_final`` does not cap it).

    Returns
    -------
    Rule
        ``rule(pair, x, step, state) -> (mean, 0.0, state)``, with ``rule.key`` naming it (and its history in
        ``state``).

    Raises
    ------
    ValueError
        If ``order`` is not 1, 2 or 3, or ``form`` or ``final`` is unknown.
    """
    order = _check_order(order)
    check_choice(form, "form", ("taylor", "lu"))
    check_choice(final, "final", FINALS)
    key = f"dpm++{order}m" + ("-lu" if form == "lu" else "") + ("-sigma" if final == "sigma" else "")
    key += "" if lower_order_final else "-nolof"

    def rule(pair: Pair, x: Tensor, step: Step, state: dict) -> tuple[Tensor, float, dict]:
        hist = _history(state, key, step, [])
        ell_t = _half_log_snr(step.a_t, step.b_t)
        if not math.isfinite(ell_t) and step.b_s > 0:  # from a = 0 (lambda = -inf): only DDIM's step is defined,
            # its weight 1 - e^{-h} being 1; the point has no lambda to extrapolate from, so it stays out of the history
            return (step.b_s / step.b_t) * x + step.a_s * pair.x0, 0.0, state
        hist.insert(0, (ell_t, step.b_t / step.a_t if step.a_t > 0 else math.inf, pair.x0, pair.eps))
        del hist[order:]
        last_sigma = final == "sigma" and step.b_s == 0
        p = _order_now(order, step, lower_order_final and not last_sigma, len(hist))
        if step.b_s == 0:
            return _into_data(x, pair, step, hist, p, final), 0.0, state
        h = _half_log_snr(step.a_s, step.b_s) - ell_t
        w = exponential_weights([hist[m][0] - ell_t for m in range(p)], h, form)
        mean = (step.b_s / step.b_t) * x
        for wm, entry in zip(w, hist, strict=False):
            mean = mean + (step.a_s * wm) * entry[2]
        return mean, 0.0, state

    rule.key = key
    return rule


def singlestep_orders(
    num_steps: int, lower_order_final: bool = True, order: int = 2, into_data: bool = True
) -> list[int]:
    r"""The order of each step of DPM-Solver++(2S) or (3S) on a grid of ``num_steps`` steps (lesson 6, secs. 6.9 and
    6.14): groups ``[1, 2]`` (2S) or ``[1, 2, 3]`` (3S) from the start, each group one singlestep step over its grid
    intervals, the order-$p$ entry closing a group of $p$ intervals; diffusers' order list.

    With ``lower_order_final`` the end is shortened as diffusers does (2S: an even grid ends ``[1, 1]``; 3S: a grid
    of $3n$ steps ends ``[1, 2, 1]``, of $3n + 1$ steps ``[1]``, of $3n + 2$ steps ``[1, 2]``); without it an
    incomplete last group keeps its first entries. With ``into_data`` the last step, into $b = 0$, is first order
    (where $\ell = \infty$ only $a_s\hat x_0$ is defined); :func:`dpm_singlestep_rule` asks for the list without it
    and takes that first-order step wherever $b_s = 0$, so a grid that stops short of the data keeps its last order.

    Parameters
    ----------
    num_steps : int
        Steps of the grid, >= 1.
    lower_order_final : bool
        Shorten the end as above.
    order : {1, 2, 3}
        1 (all DDIM), 2 (2S) or 3 (3S).
    into_data : bool
        The grid ends at $b = 0$: the last entry is 1.

    Returns
    -------
    list of int

    Raises
    ------
    ValueError
        If ``num_steps`` is not a positive integer or ``order`` is not 1, 2 or 3.
    """
    check_int(num_steps, "num_steps")
    order = _check_order(order)
    group, full, rest = list(range(1, order + 1)), num_steps // order, num_steps % order
    if lower_order_final and order == 3 and rest == 0:
        orders = group * (full - 1) + [1, 2, 1]
    elif lower_order_final and order == 2 and rest == 0:
        orders = group * (full - 1) + [1, 1]
    else:
        orders = group * full + group[:rest]
    if into_data:
        orders[-1] = 1
    return orders


def singlestep_weights(nodes: Sequence[float], h: float, form: str = "lu") -> list[float]:
    r"""Weights $w_m$ of one singlestep step $x_s = \frac{b_s}{b_g}x_g + a_s\sum_m w_m\hat x_0^{(m)}$ from the denoised
    values at the nodes $r_m = (\ell_m - \ell_g)/h$ inside the step (lesson 6, eqs. 6.31-6.32).

    Parameters
    ----------
    nodes : sequence of float
        $r_0 = 0 < r_1 < \dots < 1$: the step's start and the intermediate points, 1-3 of them.
    h : float
        The step $\ell_s - \ell_g > 0$.
    form : {"lu", "taylor"}
        ``"taylor"``: the polynomial through all values integrated exactly (eq. 6.31), diffusers' ``"heun"``
        solver type; ``"lu"``: Lu et al.'s coefficients, diffusers' ``"midpoint"``: for two nodes
        $w_1 = (1 - e^{-h})/(2r_1)$, for three the line through $r_0$ and $r_2$ alone, $w_2 = h\varphi_2(-h)/r_2$,
        $w_1 = 0$ (eq. 6.32). Always $\sum_m w_m = h\varphi_1(-h) = 1 - e^{-h}$.

    Returns
    -------
    list of float
        $w_0, \dots, w_{n-1}$.

    Raises
    ------
    ValueError
        If ``nodes`` does not start at 0, is not strictly increasing below 1, holds more than 3 values, ``h`` is
        not a finite number > 0, or ``form`` is unknown.
    """
    check_choice(form, "form", ("taylor", "lu"))
    rs = [float(r) for r in nodes]
    if not 1 <= len(rs) <= 3 or rs[0] != 0 or rs[-1] >= 1 or any(b <= a for a, b in itertools.pairwise(rs)):
        raise ValueError(f"nodes must be 1-3 numbers from 0, strictly increasing below 1, got {list(nodes)!r}")
    if not (isinstance(h, (int, float)) and 0 < h < math.inf):
        raise ValueError(f"h must be a finite number > 0, got {h!r}")
    if form == "taylor":
        return _solve_transposed(rs, [h * math.factorial(j) * phi(j + 1, h) for j in range(len(rs))])
    e1 = -math.expm1(-h)
    if len(rs) == 1:
        return [e1]
    if len(rs) == 2:
        w1 = e1 / (2 * rs[1])
        return [e1 - w1, w1]
    w2 = h * phi(2, h) / rs[2]
    return [e1 - w2, 0.0, w2]


def dpm_singlestep_rule(form: str = "lu", lower_order_final: bool = True, order: int = 2) -> Rule:
    r"""DPM-Solver++(2S) and (3S) (Lu et al. 2022; lesson 6, secs. 6.9 and 6.14) as a rule of the one loop:
    singlestep, of order 2 or 3.

    The grid's intervals are taken in groups (:func:`singlestep_orders`). From $x_g$ at a group's start a DDIM step
    reaches the next grid point $s_1$, whose only use is its denoised value; every later step of the group restarts
    from $x_g$ and integrates the polynomial through the denoised values gathered so far over the intervals up to its
    end with :func:`singlestep_weights` (eqs. 6.31-6.32), $h = \ell_{\rm end} - \ell_g$, nodes
    $r_m = (\ell_{s_m} - \ell_g)/h$. The intermediate states are not the ODE's solution there, only a means to the
    denoised values. 3S is of third order when $r_2 \to 2/3$ (sec. 6.14): exactly on the ``"log-snr"`` grid, which
    puts the nodes at DPM-Solver's $r_1 = 1/3$, $r_2 = 2/3$, and in the limit on any smooth grid. A step into
    $b_s = 0$ is first order, $a_s\hat x_0$.

    Parameters
    ----------
    form : {"lu", "taylor"}
        The weights (:func:`singlestep_weights`): ``"lu"`` is diffusers' ``DPMSolverSinglestepScheduler`` with
        ``solver_type="midpoint"`` (its default), ``"taylor"`` with ``solver_type="heun"``.
    lower_order_final : bool
        As in :func:`singlestep_orders`.
    order : {2, 3}
        2S or 3S (1 gives DDIM).

    Returns
    -------
    Rule
        ``rule(pair, x, step, state) -> (mean, 0.0, state)``, with ``rule.key``.

    Raises
    ------
    ValueError
        If ``form`` is unknown or ``order`` is not 1, 2 or 3.
    """
    check_choice(form, "form", ("taylor", "lu"))
    order = _check_order(order)
    key = f"dpm++{order}s" + ("-taylor" if form == "taylor" else "") + ("" if lower_order_final else "-nolof")

    def rule(pair: Pair, x: Tensor, step: Step, state: dict) -> tuple[Tensor, float, dict]:
        st = _history(state, key, step, {})
        if step.index == 0 or st.get("num_steps") != step.num_steps:
            st.clear()
            orders = singlestep_orders(step.num_steps, lower_order_final, order, into_data=False)
            st.update(num_steps=step.num_steps, orders=orders)
        ell_t = _half_log_snr(step.a_t, step.b_t)
        if st["orders"][step.index] == 1 or not math.isfinite(st["nodes"][0][0]):  # a group starts here
            st["start"], st["nodes"] = (x, step.b_t), [(ell_t, pair.x0)]
        else:
            st["nodes"].append((ell_t, pair.x0))
        if step.b_s == 0:
            return step.a_s * pair.x0, 0.0, state
        if len(st["nodes"]) == 1:  # DDIM (eq. 4.11)
            return (step.b_s / step.b_t) * x + (step.a_s - step.a_t * step.b_s / step.b_t) * pair.x0, 0.0, state
        (x_g, b_g), ell_g = st["start"], st["nodes"][0][0]
        h = _half_log_snr(step.a_s, step.b_s) - ell_g
        w = singlestep_weights([(ell - ell_g) / h for ell, _ in st["nodes"]], h, form)
        mean = (step.b_s / b_g) * x_g
        for wm, (_, m) in zip(w, st["nodes"], strict=True):
            if wm != 0:
                mean = mean + (step.a_s * wm) * m
        return mean, 0.0, state

    rule.key = key
    return rule


def unipc_coefficients(rs: Sequence[float], h: float, variant: str = "bh2") -> list[float]:
    r"""The $\rho_k$ of UniP and UniC: $\sum_k \rho_k r_k^{\,j-1} = j!\,h\,\varphi_{j+1}(-h)/B(h)$ for
    $j = 1..n$, $n$ = ``len(rs)`` (lesson 6, eq. 6.25).

    Parameters
    ----------
    rs : sequence of float
        $r_k = (\ell_k - \ell_t)/h$ of the values used besides the current one; UniC's last is the new value, $r = 1$.
    h : float
        The step $\ell_s - \ell_t > 0$.
    variant : {"bh1", "bh2"}
        $B(h) = h$ or $B(h) = 1 - e^{-h}$.

    Returns
    -------
    list of float

    Raises
    ------
    ValueError
        If ``rs`` is empty or has repeated entries, ``h`` is not a finite number > 0, or ``variant`` is unknown.
    """
    check_choice(variant, "variant", ("bh1", "bh2"))
    if not rs or len(set(rs)) != len(rs):
        raise ValueError(f"rs must be distinct numbers, got {list(rs)!r}")
    if not (isinstance(h, (int, float)) and 0 < h < math.inf):
        raise ValueError(f"h must be a finite number > 0, got {h!r}")
    B = h if variant == "bh1" else -math.expm1(-h)
    b = [math.factorial(j) * h * phi(j + 1, h) / B for j in range(1, len(rs) + 1)]
    R = np.vander(np.asarray(rs, dtype=np.float64), len(rs), increasing=True).T  # R[j, k] = r_k^j
    return np.linalg.solve(R, np.asarray(b, dtype=np.float64)).tolist()


def unipc_rule(
    order: int = 2,
    variant: str = "bh2",
    lower_order_final: bool = True,
    corrector: bool = True,
    final: str = "first",
) -> Rule:
    r"""UniPC (Zhao et al. 2023; lesson 6, eqs. 6.25-6.27): the UniP predictor of order $p$ and the UniC corrector,
    which reuses the next step's model call, so there is one model call per step.

    Step $i$ receives the predictor's $\tilde x_i$ and the denoiser there; it first corrects $\tilde x_i$ (eq. 6.27,
    order $p + 1$), then predicts $\tilde x_{i+1}$ from the corrected state (eq. 6.26). The last step's prediction
    is not corrected (no model call follows it). Order $p = \min(\text{order}, i + 1)$ (warm-up).

    Parameters
    ----------
    order : {1, 2, 3}
        The predictor's order $p$.
    variant : {"bh1", "bh2"}
        $B(h) = h$ or $B(h) = 1 - e^{-h}$ (eq. 6.25).
    lower_order_final : bool
        Cap the order by the number of steps left (diffusers' default).
    corrector : bool
        Apply UniC (``False``: UniP alone).
    final : {"first", "sigma"}
        The step into $b_s = 0$, as in :func:`dpm_multistep_rule`.

    Returns
    -------
    Rule
        ``rule(pair, x, step, state) -> (mean, 0.0, state)``, with ``rule.key``.

    Raises
    ------
    ValueError
        If ``order`` is not 1, 2 or 3, or ``variant`` or ``final`` is unknown.
    """
    order = _check_order(order)
    check_choice(variant, "variant", ("bh1", "bh2"))
    check_choice(final, "final", FINALS)
    key = f"unipc{order}-{variant}" + ("" if corrector else "-p") + ("-sigma" if final == "sigma" else "")
    key += "" if lower_order_final else "-nolof"

    def update(x: Tensor, coefs: tuple[float, float, float], hist: list, new: Tensor | None, p: int) -> Tensor:
        # eq. 6.26 (new is None) or 6.27: x_s = (b_s/b_t) x + a_s [(1 - e^-h) m0 + B(h) sum_k rho_k D_k]
        b_t, a_s, b_s = coefs
        ell_t = hist[0][0]
        h = _half_log_snr(a_s, b_s) - ell_t
        rs = [(hist[k][0] - ell_t) / h for k in range(1, p)]
        B = h if variant == "bh1" else -math.expm1(-h)
        m0 = hist[0][2]
        mean = (b_s / b_t) * x + (a_s * -math.expm1(-h)) * m0
        if new is None:
            if p == 1:
                return mean
            rho = [0.5] if p == 2 else unipc_coefficients(rs, h, variant)
        else:
            rho = [0.5] if p == 1 else unipc_coefficients([*rs, 1.0], h, variant)
            mean = mean + (a_s * B * rho[-1]) * (new - m0)
        for k in range(1, p):
            mean = mean + (a_s * B * rho[k - 1] / rs[k - 1]) * (hist[k][2] - m0)
        return mean

    def rule(pair: Pair, x: Tensor, step: Step, state: dict) -> tuple[Tensor, float, dict]:
        st = _history(state, key, step, {"hist": [], "last": None})
        hist = st["hist"]
        if corrector and st["last"] is not None:
            x_prev, coefs, p_prev = st["last"]
            x = update(x_prev, coefs, hist, pair.x0, p_prev)
        ell_t = _half_log_snr(step.a_t, step.b_t)
        hist.insert(0, (ell_t, step.b_t / step.a_t if step.a_t > 0 else math.inf, pair.x0, pair.eps))
        del hist[order:]
        last_sigma = final == "sigma" and step.b_s == 0
        p = _order_now(order, step, lower_order_final and not last_sigma, len(hist))
        if step.b_s == 0:
            st["last"] = None
            return _into_data(x, pair, step, hist, p, final), 0.0, state
        if not math.isfinite(ell_t):
            p = 1
        coefs = (step.b_t, step.a_s, step.b_s)
        st["last"] = (x, coefs, p)
        return update(x, coefs, hist, None, p), 0.0, state

    rule.key = key
    return rule


def deis_rule(order: int = 3, lower_order_final: bool = False) -> Rule:
    r"""DEIS's $\rho$AB (Zhang & Chen 2023; lesson 6, eq. 6.28): Adams-Bashforth in $\sigma = b/a$ for $y = x/a$,
    the polynomial through the last $p$ values of $\hat\varepsilon$ integrated exactly over the step
    (:func:`sigma_weights`), the step into $\sigma = 0$ included.

    Parameters
    ----------
    order : {1, 2, 3}
        The order $p$ (warm-up: $\min(p, i + 1)$; order 1 is DDIM).
    lower_order_final : bool
        Cap the order by the number of steps left.

    Returns
    -------
    Rule
        ``rule(pair, x, step, state) -> (mean, 0.0, state)``, with ``rule.key``; it raises ``ValueError`` where
        $a = 0$ ($\sigma$ is infinite there).

    Raises
    ------
    ValueError
        If ``order`` is not 1, 2 or 3.
    """
    order = _check_order(order)
    key = f"deis{order}" + ("-lof" if lower_order_final else "")

    def rule(pair: Pair, x: Tensor, step: Step, state: dict) -> tuple[Tensor, float, dict]:
        if step.a_t == 0 or step.a_s == 0:
            raise ValueError("DEIS integrates in sigma = b/a and needs a > 0 on the whole grid")
        hist = _history(state, key, step, [])
        hist.insert(0, (step.b_t / step.a_t, pair.eps))
        del hist[order:]
        p = _order_now(order, step, lower_order_final, len(hist))
        return _sigma_step(x, step, [h[0] for h in hist[:p]], [h[1] for h in hist[:p]]), 0.0, state

    rule.key = key
    return rule


# ---------------------------------------------------------------------------------------------------------------------
# Grids tuned for a number of steps (lesson 6, sec. 6.12)


@dataclass(frozen=True)
class TunedGrid:
    r"""The result of :func:`tune_grid`: the power grid's $t_1$ and $\rho$ (lesson 6, eq. 6.30) and its error.

    Parameters
    ----------
    t_min : float
        The grid's smallest time above the data end.
    rho : float
        Its exponent.
    error : float
        The mean endpoint distance to the reference it reached.
    """

    t_min: float
    rho: float
    error: float


def tune_grid(
    model: Model,
    x: Tensor,
    reference: Tensor,
    schedule: Schedule,
    rule: Rule,
    num_steps: int,
    t_mins: Sequence[float],
    rhos: Sequence[float],
) -> TunedGrid:
    r"""Search the power grids $t_i = t_1 + (t_{\max} - t_1)u_i^\rho$, then $0$ (lesson 6, eq. 6.30), for the one
    whose endpoint is closest to ``reference`` on average (sec. 6.12).

    Run it once per task (model, schedule, starting distribution), store the result as data and sample with it;
    searching at sampling time would need the reference, i.e. the answer.

    Parameters
    ----------
    model : Model
        The model (exact, for a reference that is the true ODE solution).
    x : Tensor, shape (B, ...)
        Starting points at $t_{\max}$, not those the grid will be judged on.
    reference : Tensor, shape (B, ...)
        Their exact endpoints (e.g. :func:`~diffmath.exact.reference.exact_pf_ode`).
    schedule : Schedule
        The schedule.
    rule : Rule
        The solver.
    num_steps : int
        Steps of the grid.
    t_mins, rhos : sequence of float
        The candidates for $t_1$ and $\rho$.

    Returns
    -------
    TunedGrid

    Raises
    ------
    ValueError
        If ``reference`` does not have the shape of ``x``, a candidate list is empty, or no candidate gives a valid
        grid; the solver's own errors otherwise.
    """
    check_int(num_steps, "num_steps", low=2)
    if not isinstance(reference, Tensor) or reference.shape != x.shape:
        raise ValueError(f"reference must be a tensor of the shape of x {tuple(x.shape)}")
    if not t_mins or not rhos:
        raise ValueError("t_mins and rhos must each hold at least one candidate")
    best = None
    for t_min in t_mins:
        for rho in rhos:
            try:
                grid = schedule.grid(num_steps, "power", rho=rho, t_min=t_min)
            except ValueError:
                continue
            with torch.no_grad():
                err = (last_state(run(model, x, grid, schedule, rule)) - reference).flatten(1).norm(dim=1).mean().item()
            if math.isfinite(err) and (best is None or err < best.error):
                best = TunedGrid(float(t_min), float(rho), err)
    if best is None:
        raise ValueError("no candidate (t_min, rho) gave a valid grid")
    return best


#: Power grids (t_min, rho) tuned per solver key and number of steps for the exact 8-Gaussian ring (radius 2, std
#: 0.15) on Ho et al.'s linear schedule (T = 1000) from x_T ~ N(0, I), by ``python benchmarks/solvers.py --tune``
#: (500 points of a tuning seed, never the benchmark's). Other tasks need their own table.
TUNED_GRIDS: dict[str, dict[int, tuple[float, float]]] = {
    "ddim": {5: (90, 2), 8: (60, 1.5), 10: (40, 1.5), 15: (40, 1.5), 20: (25, 1.5), 50: (8, 1.5)},
    "heun": {3: (90, 1.5), 4: (90, 1.5), 5: (90, 1.5), 8: (25, 1.5), 10: (15, 1.5), 25: (4, 1.5)},
    "dpm++2m": {5: (40, 2.5), 8: (25, 4), 10: (25, 4), 15: (4, 4), 20: (4, 3.5), 50: (1, 3.5)},
    "dpm++2m-sigma": {5: (40, 2), 8: (40, 3.5), 10: (25, 3.5), 15: (15, 4), 20: (15, 3.5), 50: (8, 3.5)},
    "dpm++3m": {5: (60, 2.5), 8: (25, 4), 10: (25, 3), 15: (15, 2.5), 20: (8, 3), 50: (1, 2.5)},
    "dpm++3m-sigma": {5: (40, 2), 8: (40, 3.5), 10: (40, 3), 15: (40, 3), 20: (25, 2.5), 50: (25, 2.5)},
    "dpm++3m-lu": {5: (60, 2.5), 8: (25, 4), 10: (25, 3), 15: (15, 2.5), 20: (8, 2.5), 50: (1, 2)},
    "dpm++3m-lu-sigma": {5: (40, 2), 8: (25, 3.5), 10: (40, 3), 15: (25, 2.5), 20: (25, 2.5), 50: (25, 2)},
    "unipc1-bh1": {5: (40, 2.5), 8: (25, 2.5), 10: (15, 2.5), 15: (8, 2.5), 20: (4, 2.5), 50: (1, 3)},
    "unipc1-bh1-sigma": {5: (40, 2.5), 8: (25, 2.5), 10: (15, 2.5), 15: (8, 2.5), 20: (4, 2.5), 50: (1, 3)},
    "unipc1-bh2": {5: (60, 2), 8: (40, 2.5), 10: (25, 2), 15: (15, 2), 20: (8, 2), 50: (2, 2.5)},
    "unipc1-bh2-sigma": {5: (60, 2), 8: (40, 2.5), 10: (25, 2), 15: (15, 2), 20: (8, 2), 50: (2, 2.5)},
    "unipc2-bh1": {5: (60, 3), 8: (25, 3.5), 10: (15, 3), 15: (4, 3), 20: (4, 2.5), 50: (1, 2.5)},
    "unipc2-bh1-sigma": {5: (25, 2), 8: (40, 4), 10: (25, 3), 15: (15, 2.5), 20: (15, 2), 50: (4, 2.5)},
    "unipc2-bh2": {5: (40, 2.5), 8: (25, 3.5), 10: (8, 3.5), 15: (4, 2.5), 20: (4, 2), 50: (1, 2)},
    "unipc2-bh2-sigma": {5: (25, 2), 8: (25, 3.5), 10: (25, 3), 15: (8, 2.5), 20: (8, 2), 50: (4, 2.5)},
    "unipc3-bh1": {5: (60, 3), 8: (15, 3.5), 10: (15, 4), 15: (8, 3), 20: (4, 3), 50: (1, 4)},
    "unipc3-bh1-sigma": {5: (25, 2), 8: (15, 4), 10: (15, 3.5), 15: (40, 4), 20: (25, 3), 50: (25, 2)},
    "unipc3-bh2": {5: (40, 3), 8: (25, 3.5), 10: (15, 3), 15: (8, 3), 20: (4, 3), 50: (1, 4)},
    "unipc3-bh2-sigma": {5: (25, 2), 8: (15, 4), 10: (15, 3.5), 15: (40, 4), 20: (25, 3), 50: (25, 2)},
    "deis2": {5: (60, 1.5), 8: (40, 1.5), 10: (40, 1.5), 15: (25, 1.5), 20: (15, 1.5), 50: (8, 1.5)},
    "deis3": {5: (60, 1.5), 8: (25, 1.5), 10: (8, 1.5), 15: (8, 1.5), 20: (15, 1.5), 50: (25, 1.5)},
    "dpm++2s": {5: (60, 1.5), 8: (40, 1.5), 10: (25, 2), 15: (15, 2), 20: (8, 2), 50: (1, 2)},
    "dpm++2s-taylor": {5: (40, 2), 8: (15, 2.5), 10: (8, 2), 15: (1, 2.5), 20: (1, 2), 50: (1, 2)},
    "dpm++3s": {5: (60, 2.5), 8: (40, 4), 10: (4, 2), 15: (1, 3.5), 20: (2, 2), 50: (1, 1.5)},
    "dpm++3s-taylor": {5: (60, 2), 8: (25, 3.5), 10: (15, 2), 15: (15, 2.5), 20: (8, 3), 50: (1, 2)},
}
TUNED_FOR = "ho-linear(T=1000)"


def tuned_grid(schedule: Schedule, rule: Rule | str, num_steps: int) -> Tensor:
    r"""The stored tuned power grid (lesson 6, eq. 6.30, sec. 6.12) of a solver for ``num_steps`` steps.

    Parameters
    ----------
    schedule : Schedule
        Must be the schedule the table was tuned on (:data:`TUNED_FOR`).
    rule : Rule or str
        A rule of this module (its ``key``) or the key itself.
    num_steps : int
        Steps of the grid.

    Returns
    -------
    Tensor, shape (num_steps + 1,), float64

    Raises
    ------
    ValueError
        If the schedule is not the one tuned on, or the table has no entry for the solver and ``num_steps``.
    """
    key = rule if isinstance(rule, str) else getattr(rule, "key", None)
    if getattr(schedule, "name", None) != TUNED_FOR:
        raise ValueError(f"TUNED_GRIDS were tuned on {TUNED_FOR}, got {schedule!r}; run tune_grid for this task")
    entry = TUNED_GRIDS.get(key, {}).get(num_steps)
    if entry is None:
        have = {k: sorted(v) for k, v in TUNED_GRIDS.items()}
        raise ValueError(f"no tuned grid for solver {key!r} and num_steps={num_steps}; the table holds {have}")
    t_min, rho = entry
    return schedule.grid(num_steps, "power", rho=rho, t_min=t_min)
