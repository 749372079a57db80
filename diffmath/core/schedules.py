r"""Noise schedules: the coefficients $a_t, b_t$ of $x_t = a_t x_0 + b_t\varepsilon$ (lesson 0, eq. 0.1).

A schedule is a small object. Discrete schedules (Su's linear, Ho's linear, cosine) live on the integer grid
$t = 0, 1, \dots, T$ with $a_0 = 1, b_0 = 0$; continuous ones (VP, VE, rectified flow) on $t \in [0, 1]$ and also
give the time derivatives $\dot a_t, \dot b_t$. Time runs from the data ($t=0$) to the noise ($t = t_{\max}$).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from diffmath.core._validate import as_tensor, check_finite


@dataclass(frozen=True)
class Coefficients:
    r"""$(a_t, b_t, \dot a_t, \dot b_t)$ at a batch of times; the derivatives are ``None`` for discrete schedules.

    The coefficients of $x_t = a_t x_0 + b_t \varepsilon$ (lesson 0, eq. 0.1 and table 0.2).

    Parameters
    ----------
    a, b : Tensor
        $a_t$ and $b_t$, of the shape of the times asked for.
    da, db : Tensor or None
        $\dot a_t$ and $\dot b_t$; ``None`` for a discrete schedule.
    """

    a: Tensor
    b: Tensor
    da: Tensor | None = None
    db: Tensor | None = None


class Schedule:
    r"""Base class: a forward process $x_t = a_t x_0 + b_t \varepsilon$ (lesson 0, eq. 0.1).

    Subclasses implement :meth:`_coefficients` on validated times; this class checks input, builds grids and
    derived quantities. It takes no constructor parameters.
    """

    name: str = "schedule"
    discrete: bool = False
    #: True where $a_t^2 + b_t^2 = 1$ for every $t$ (then $g_t^2 = -2 f_t$, lesson 5, eq. 5.6)
    variance_preserving: bool = False
    t_max: float = 1.0

    def _coefficients(self, t: Tensor) -> Coefficients:  # pragma: no cover - abstract
        raise NotImplementedError

    def check_t(self, t: object) -> Tensor:
        r"""Return ``t`` as a floating tensor after checking it lies in the schedule's time range (lesson 0, eq. 0.1).

        Parameters
        ----------
        t : float or Tensor of any shape
            Times to check.

        Returns
        -------
        Tensor
            ``t`` as a floating tensor (float64 for a Python number or an integer tensor).

        Raises
        ------
        TypeError
            If ``t`` is not a real number or a real tensor.
        ValueError
            If ``t`` holds NaN or infinity, lies outside $[0, t_{\max}]$, or is not an integer on a discrete
            schedule.
        """
        t_ = as_tensor(t, "t")
        check_finite(t_, "t")
        if (t_ < 0).any() or (t_ > self.t_max).any():
            raise ValueError(
                f"t must lie in [0, {self.t_max:g}] for schedule {self.name!r}; got values in "
                f"[{t_.min().item():g}, {t_.max().item():g}]"
            )
        if self.discrete and (t_ != torch.round(t_)).any():
            raise ValueError(f"schedule {self.name!r} is discrete: t must be an integer in 0..{int(self.t_max)}")
        return t_

    def coefficients(self, t: Tensor | float) -> Coefficients:
        r"""$(a_t, b_t, \dot a_t, \dot b_t)$ at ``t`` (lesson 0, eq. 0.1 and table 0.2).

        Parameters
        ----------
        t : float or Tensor of any shape
            Times in $[0, t_{\max}]$ (integers for discrete schedules).

        Returns
        -------
        Coefficients
            Tensors of the shape of ``t``, in its floating dtype (the default dtype for integer ``t``).

        Raises
        ------
        TypeError, ValueError
            On bad ``t``, as :meth:`check_t`.
        """
        return self._coefficients(self.check_t(t))

    def a(self, t: Tensor | float) -> Tensor:
        r"""Signal coefficient $a_t$ (lesson 0, eq. 0.1).

        Parameters
        ----------
        t : float or Tensor of any shape
            Times in $[0, t_{\max}]$ (integers for discrete schedules).

        Returns
        -------
        Tensor
            $a_t$, of the shape of ``t``.

        Raises
        ------
        TypeError, ValueError
            On bad ``t``, as :meth:`check_t`.
        """
        return self.coefficients(t).a

    def b(self, t: Tensor | float) -> Tensor:
        r"""Noise coefficient $b_t$ (lesson 0, eq. 0.1).

        Parameters
        ----------
        t : float or Tensor of any shape
            Times in $[0, t_{\max}]$ (integers for discrete schedules).

        Returns
        -------
        Tensor
            $b_t$, of the shape of ``t``.

        Raises
        ------
        TypeError, ValueError
            On bad ``t``, as :meth:`check_t`.
        """
        return self.coefficients(t).b

    def drift_diffusion(self, t: Tensor | float) -> tuple[Tensor, Tensor]:
        r"""Drift and squared diffusion $(f_t, g_t^2)$ of the forward SDE with these marginals (lesson 5, eq. 5.6).

        $f_t = \dot a_t / a_t$ and $g_t^2 = 2 b_t\dot b_t - 2 f_t b_t^2$. Where $a_t^2 + b_t^2 = 1$ the second reduces
        to $g_t^2 = -2 f_t$ (differentiate $b_t^2 = 1 - a_t^2$: $2 b_t\dot b_t = -2 a_t\dot a_t$), which stays finite
        at $t = 0$ where $b_0 = 0$ and $\dot b_0 = \infty$ would give $0\cdot\infty$; for VP-linear it is $\beta(t)$.

        Parameters
        ----------
        t : float or Tensor of any shape
            Times in $[0, t_{\max}]$.

        Returns
        -------
        (f, g2) : tuple of Tensor
            $f_t$ and $g_t^2$, of the shape of ``t`` ($-\infty$ and $+\infty$ where $a_t = 0$).

        Raises
        ------
        TypeError
            If the schedule is discrete (it has no $\dot a_t, \dot b_t$), or ``t`` is not a real number or tensor.
        ValueError
            If ``t`` holds NaN or infinity or lies outside $[0, t_{\max}]$.
        """
        if self.discrete:
            raise TypeError(f"the SDE view needs a continuous schedule, got {self.name!r}")
        c = self.coefficients(t)
        f = c.da / c.a
        if self.variance_preserving:
            return f, -2.0 * f
        return f, 2.0 * c.b * (c.db - f * c.b)

    def log_snr(self, t: Tensor | float) -> Tensor:
        r"""Log signal-to-noise ratio $\lambda_t = \log(a_t^2 / b_t^2)$ (lesson 0, eq. 0.8).

        Parameters
        ----------
        t : float or Tensor of any shape
            Times in $[0, t_{\max}]$ (integers for discrete schedules).

        Returns
        -------
        Tensor
            $\\lambda_t$ ($+\\infty$ where $b_t = 0$, $-\\infty$ where $a_t = 0$), of the shape of ``t``.

        Raises
        ------
        TypeError, ValueError
            On bad ``t``, as :meth:`check_t`.
        """
        c = self.coefficients(t)
        return 2.0 * (torch.log(c.a) - torch.log(c.b))

    def grid(
        self,
        num_steps: int,
        spacing: str = "uniform",
        t_start: float | None = None,
        t_end: float = 0.0,
        rho: float = 7.0,
        t_min: float | None = None,
    ) -> Tensor:
        r"""A decreasing time grid from ``t_start`` (default $t_{\max}$) to ``t_end`` (lesson 0, sec. 0.4).

        Parameters
        ----------
        num_steps : int
            Number of intervals; the grid has ``num_steps + 1`` points and its last point is ``t_end``.
        spacing : {"uniform", "quadratic", "karras", "log-snr", "power"}
            ``"uniform"`` in $t$; ``"quadratic"``: uniform in $\sqrt{t}$ (the DDIM paper's grid, denser near the
            data); ``"karras"``: the noise-to-signal ratio $\sigma = b/a$ uniform in $\sigma^{1/\rho}$ from
            $\sigma(t_{\rm start})$ to $\sigma(t_1)$, then ``t_end`` (Karras et al.; lesson 0, sec. 0.4;
            lesson 6, eq. 6.29); ``"log-snr"``: uniform in the log-SNR $\lambda = \log(a^2/b^2)$ of eq. 0.8 over the
            same range (DPM-Solver's grid, which counts half of it, $\log(a/b)$: the same points). For these two, $t_1$ is ``t_min`` if given, else the schedule's first step above ``t_end`` on a
            discrete schedule, or ``t_end + 1e-3 (t_start - t_end)`` on a continuous one. ``"power"``: uniform in
            $(t - t_1)^{1/\rho}$ from ``t_start`` to $t_1$ = ``t_min``, then ``t_end`` (lesson 6, eq. 6.30); without
            ``t_min``, uniform in $(t - t_{\rm end})^{1/\rho}$ down to ``t_end`` ($\rho = 2$ is ``"quadratic"``).
        t_start, t_end : float
            End points, ``t_start > t_end``.
        rho : float
            Exponent of the Karras and power grids, $\rho > 0$.
        t_min : float, optional
            The grid's smallest time above ``t_end`` for ``"karras"``, ``"log-snr"`` and ``"power"``,
            ``t_end < t_min < t_start`` (``num_steps >= 2``).

        Returns
        -------
        Tensor, shape (num_steps + 1,), float64
            Strictly decreasing; integers for discrete schedules.

        Raises
        ------
        ValueError
            If ``num_steps`` is not a positive integer (or exceeds the integer steps of a discrete schedule),
            ``t_start`` or ``t_end`` lies outside the schedule's time range, ``t_start <= t_end``, ``spacing`` is
            unknown, $b/a$ is infinite at ``t_start`` (``"karras"``, ``"log-snr"``), ``rho`` is not a finite number
            > 0, ``t_min`` is not inside ``(t_end, t_start)`` (or comes with one step, or with another spacing), or
            the grid is not strictly decreasing.
        """
        if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
            raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
        t0 = self.t_max if t_start is None else float(t_start)
        self.check_t(torch.tensor([t0, float(t_end)]))
        if not t0 > t_end:
            raise ValueError(f"t_start must exceed t_end, got t_start={t0}, t_end={t_end}")
        if self.discrete and num_steps > t0 - t_end:
            raise ValueError(
                f"num_steps={num_steps} exceeds the {int(t0 - t_end)} integer steps in [{t_end:g}, {t0:g}]"
            )
        if not isinstance(rho, (int, float)) or isinstance(rho, bool) or not 0 < rho < math.inf:
            raise ValueError(f"rho must be a finite number > 0, got {rho!r}")
        if t_min is not None:
            if spacing not in ("karras", "log-snr", "power"):
                raise ValueError(f"t_min applies to the 'karras', 'log-snr' and 'power' grids, not {spacing!r}")
            if not isinstance(t_min, (int, float)) or isinstance(t_min, bool) or not t_end < t_min < t0:
                raise ValueError(f"t_min must lie strictly between t_end={t_end:g} and t_start={t0:g}, got {t_min!r}")
            if num_steps < 2:
                raise ValueError("a grid with t_min needs num_steps >= 2 (t_start, t_min, t_end)")
        u = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
        if spacing == "uniform":
            g = t_end + (t0 - t_end) * u
        elif spacing == "quadratic":
            g = t_end + (t0 - t_end) * u**2
        elif spacing == "power" and t_min is None:
            g = t_end + (t0 - t_end) * u**rho
        elif spacing == "power":
            v = torch.linspace(1.0, 0.0, num_steps, dtype=torch.float64)
            g = torch.cat([t_min + (t0 - t_min) * v**rho, torch.tensor([float(t_end)], dtype=torch.float64)])
        elif spacing in ("karras", "log-snr"):
            t1 = t_end + 1.0 if self.discrete else t_end + 1e-3 * (t0 - t_end)
            t1 = t1 if t_min is None else float(t_min)
            s_hi, s_lo = (self.sigma(torch.tensor(v, dtype=torch.float64)) for v in (t0, t1))
            if not torch.isfinite(s_hi):
                raise ValueError(f"b/a is infinite at t_start={t0:g} (a = 0): pass a smaller t_start")
            if spacing == "karras":
                lo, hi = s_lo ** (1 / rho), s_hi ** (1 / rho)
                sig = (lo + (hi - lo) * torch.linspace(1.0, 0.0, num_steps, dtype=torch.float64)) ** rho
            else:
                frac = torch.linspace(1.0, 0.0, num_steps, dtype=torch.float64)
                sig = torch.exp(torch.log(s_lo) + (torch.log(s_hi) - torch.log(s_lo)) * frac)
            g = torch.cat([self.t_of_sigma(sig, t1, t0), torch.tensor([float(t_end)], dtype=torch.float64)])
            g[0] = t0
        else:
            raise ValueError(f"spacing must be 'uniform', 'quadratic', 'karras', 'log-snr' or 'power', got {spacing!r}")
        if self.discrete:
            g = torch.round(g)
            for i in range(num_steps - 1, 0, -1):  # keep integer times distinct where rounding merged them
                g[i] = max(g[i].item(), g[i + 1].item() + 1)
        if (g[1:] >= g[:-1]).any():
            raise ValueError(
                f"the {spacing!r} grid piles up at t_start (b/a = {self.sigma(torch.tensor(t0, dtype=torch.float64)).item():.3g} "
                "there): pass a t_start where b/a is moderate (e.g. <= 100) or use fewer steps"
            )
        return g

    def sigma(self, t: Tensor | float) -> Tensor:
        r"""The noise-to-signal ratio $\sigma_t = b_t / a_t$ (lesson 4, eq. 4.14; PFGM's $z$, lesson 13).

        Parameters
        ----------
        t : float or Tensor
            Time(s) on the schedule.

        Returns
        -------
        Tensor
            $b_t/a_t$ in float64 (``inf`` where $a_t = 0$).
        """
        c = self.coefficients(t)
        return c.b / c.a

    def t_of_sigma(self, sigma: Tensor, lo: float = 0.0, hi: float | None = None) -> Tensor:
        r"""The time with $b_t/a_t = \sigma$ on $[lo, hi]$ (lesson 4, eq. 4.14): bisection on the increasing map,
        piecewise linear between the integer times of a discrete schedule.

        Parameters
        ----------
        sigma : Tensor
            Target ratios.
        lo, hi : float
            The bracket (``hi`` defaults to ``t_max``).

        Returns
        -------
        Tensor
            The times, float64, to about $2^{-64}$ of the bracket.
        """
        hi = float(self.t_max) if hi is None else hi
        a = torch.full_like(sigma, lo)
        b = torch.full_like(sigma, hi)
        for _ in range(64):
            mid = 0.5 * (a + b)
            below = self._sigma_cont(mid) < sigma
            a, b = torch.where(below, mid, a), torch.where(below, b, mid)
        return 0.5 * (a + b)

    def _sigma_cont(self, t: Tensor) -> Tensor:
        if not self.discrete:
            return self.sigma(t)
        lo = torch.floor(t).clamp(0, self.t_max - 1)
        frac = t - lo
        s0, s1 = self.sigma(lo), self.sigma(lo + 1)
        return s0 + frac * (s1 - s0)  # piecewise-linear between the integer times

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class DiscreteSchedule(Schedule):
    r"""A discrete schedule from its per-step coefficients $\alpha_1, \dots, \alpha_T$ (lesson 0, eq. 0.9).

    In Su's notation one step is $x_t = \alpha_t x_{t-1} + \beta_t \varepsilon_t$ with $\alpha_t^2 + \beta_t^2 = 1$,
    so $a_t = \bar\alpha_t = \prod_{s \le t} \alpha_s$ and $b_t = \bar\beta_t = \sqrt{1 - \bar\alpha_t^2}$.

    Everything is float64 and free of cancellation: $\log\alpha_t = \tfrac12\log(1 - \beta_t^2)$ by ``log1p`` where
    $\beta_t < \alpha_t$, $\bar\beta_t = \sqrt{-\operatorname{expm1}(2\sum_{s\le t}\log\alpha_s)}$, and without
    ``betas``, $\beta_t = \sqrt{(1-\alpha_t)(1+\alpha_t)}$ ($1 - \alpha_t$ is exact for $\alpha_t \ge \tfrac12$).

    Parameters
    ----------
    alphas : Tensor, shape (T,)
        Per-step $\alpha_t \in (0, 1)$ for $t = 1..T$ (Ho's $\sqrt{1-\beta^{\mathrm{Ho}}_t}$).
    name : str
        Label used in messages and plots.
    betas : Tensor, shape (T,), optional
        Per-step $\beta_t = \sqrt{1 - \alpha_t^2}$ (Ho's $\sqrt{\beta^{\mathrm{Ho}}_t}$), when known more precisely
        than ``alphas`` can give it: a rounded $\alpha_t \approx 1$ fixes $1 - \alpha_t^2$ to only about
        $16 + \log_{10}(1 - \alpha_t^2)$ digits.

    Raises
    ------
    TypeError
        If ``alphas`` or ``betas`` is not a real tensor.
    ValueError
        If ``alphas`` is not 1-D and non-empty, holds NaN or infinity, or has an entry outside $(0, 1)$; or
        ``betas`` is not of the same shape, has an entry outside $(0, 1)$, or misses $\alpha_t^2 + \beta_t^2 = 1$
        by more than $10^{-12}$.
    """

    discrete = True
    variance_preserving = True

    def __init__(self, alphas: Tensor, name: str = "discrete", betas: Tensor | None = None) -> None:
        alphas = as_tensor(alphas, "alphas").to(torch.float64)
        if alphas.dim() != 1 or alphas.numel() < 1:
            raise ValueError(f"alphas must be a 1-D tensor of length T >= 1, got shape {tuple(alphas.shape)}")
        check_finite(alphas, "alphas")
        if (alphas <= 0).any() or (alphas >= 1).any():
            raise ValueError("every per-step alpha_t must lie in the open interval (0, 1)")
        if betas is None:
            betas = torch.sqrt((1.0 - alphas) * (1.0 + alphas))
        else:
            betas = as_tensor(betas, "betas").to(torch.float64)
            if betas.shape != alphas.shape:
                raise ValueError(
                    f"betas must have the shape of alphas, {tuple(alphas.shape)}; got {tuple(betas.shape)}"
                )
            check_finite(betas, "betas")
            if (betas <= 0).any() or (betas >= 1).any():
                raise ValueError("every per-step beta_t must lie in the open interval (0, 1)")
            if ((alphas**2 + betas**2 - 1.0).abs() > 1e-12).any():
                raise ValueError("alphas and betas must satisfy alpha_t^2 + beta_t^2 = 1 (to 1e-12)")
        self.name = name
        self.T = alphas.numel()
        self.t_max = float(self.T)
        one, zero = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
        #: per-step alpha_t and beta_t for t = 0..T (entry 0 is alpha_0 = 1, beta_0 = 0, never used by a step)
        self.alphas = torch.cat([one, alphas])
        self.betas = torch.cat([zero, betas])
        log_alpha = torch.where(betas < alphas, 0.5 * torch.log1p(-(betas**2)), torch.log(alphas))
        log_abar = torch.cat([zero, torch.cumsum(log_alpha, 0)])
        #: abar_t = a_t and bbar_t = b_t on t = 0..T
        self.abar = torch.exp(log_abar)
        self.bbar = torch.sqrt(-torch.expm1(2.0 * log_abar))
        self._tables: dict[torch.device, tuple[Tensor, ...]] = {}

    def _coefficients(self, t: Tensor) -> Coefficients:
        idx = t.long()
        dtype = t.dtype if t.is_floating_point() else torch.float64
        abar, bbar, _, _ = self._on(idx.device)
        return Coefficients(abar[idx].to(dtype), bbar[idx].to(dtype))

    def _on(self, device: torch.device) -> tuple[Tensor, ...]:
        """The float64 tables (abar, bbar, alphas, betas) on ``device``, moved there once and cached."""
        if device.type == "cpu":
            return self.abar, self.bbar, self.alphas, self.betas
        if device not in self._tables:
            self._tables[device] = tuple(v.to(device) for v in (self.abar, self.bbar, self.alphas, self.betas))
        return self._tables[device]

    def step(self, t: Tensor | float) -> tuple[Tensor, Tensor]:
        r"""Per-step $(\alpha_t, \beta_t)$ of $x_t = \alpha_t x_{t-1} + \beta_t\varepsilon_t$ (lesson 0, eq. 0.9), $t \ge 1$.

        Parameters
        ----------
        t : float or Tensor of any shape
            Integer steps in $1..T$.

        Returns
        -------
        alpha, beta : tuple of Tensor
            $\alpha_t$ and $\beta_t = \sqrt{1 - \alpha_t^2}$, of the shape of ``t``.

        Raises
        ------
        TypeError
            If ``t`` is not a real number or a real tensor.
        ValueError
            If ``t`` holds NaN or infinity, is not an integer, or lies outside $1..T$.
        """
        t_ = self.check_t(t)
        if (t_ < 1).any():
            raise ValueError("a single forward step is defined for t = 1..T only")
        dtype = t_.dtype if t_.is_floating_point() else torch.float64
        idx = t_.long()
        _, _, alphas, betas = self._on(idx.device)
        return alphas[idx].to(dtype), betas[idx].to(dtype)


def su_linear(T: int = 1000) -> DiscreteSchedule:
    r"""Su's schedule $\alpha_t = \sqrt{1 - 0.02\,t/T}$ (lesson 0, eq. 0.10).

    In Ho's notation $\beta^{\mathrm{Ho}}_t = 0.02\,t/T$ ramps from $2\cdot10^{-5}$ to $0.02$; at $T = 1000$,
    $\bar\alpha_T = 0.00648$ (not the $10^{-5}$ the text claims).
    Parameters
    ----------
    T : int
        Number of steps.

    Returns
    -------
    DiscreteSchedule

    Raises
    ------
    ValueError
        If ``T`` is not a positive integer.
    """
    _check_T(T)
    beta_ho = 0.02 * torch.arange(1, T + 1, dtype=torch.float64) / T
    return DiscreteSchedule(torch.sqrt(1.0 - beta_ho), name=f"su-linear(T={T})", betas=torch.sqrt(beta_ho))


def ho_linear(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> DiscreteSchedule:
    r"""Ho et al.'s linear schedule $\beta^{\mathrm{Ho}}_t$ from ``beta_start`` to ``beta_end`` (lesson 0, eq. 0.11).

    Parameters
    ----------
    T : int
        Number of steps.
    beta_start, beta_end : float
        Ho's $\beta_1$ and $\beta_T$, linearly interpolated.

    Returns
    -------
    DiscreteSchedule

    Raises
    ------
    ValueError
        If ``T`` is not a positive integer, or ``0 < beta_start <= beta_end < 1`` fails.
    """
    _check_T(T)
    if not 0 < beta_start <= beta_end < 1:
        raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
    beta_ho = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    return DiscreteSchedule(torch.sqrt(1.0 - beta_ho), name=f"ho-linear(T={T})", betas=torch.sqrt(beta_ho))


def cosine(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> DiscreteSchedule:
    r"""Nichol & Dhariwal's cosine schedule on $t = 0..T$ (lesson 0, eq. 0.12).

    $\bar\alpha_t^2 = f(t)/f(0)$ with $f(t) = \cos^2\!\big(\tfrac{\pi}{2}\tfrac{t/T + s}{1+s}\big)$, per-step
    $\beta^{\mathrm{Ho}}_t = \min(1 - \bar\alpha_t^2/\bar\alpha_{t-1}^2,\ \text{max\_beta})$.

    Parameters
    ----------
    T : int
        Number of steps.
    s : float
        Offset $s$ that keeps $\beta_1$ away from 0.
    max_beta : float
        Cap on the per-step $\beta^{\mathrm{Ho}}_t$ (near $t = T$).

    Returns
    -------
    DiscreteSchedule

    Raises
    ------
    ValueError
        If ``T`` is not a positive integer.
    """
    _check_T(T)
    t = torch.arange(1, T + 1, dtype=torch.float64)
    k = 0.5 * math.pi / (1 + s)  # the angle is x_t = k (t/T + s), and cos x_t = sin(k (T - t)/T)
    cos_t, cos_prev = torch.sin(k * (T - t) / T), torch.sin(k * (T - t + 1) / T)
    # 1 - cos^2 x_t / cos^2 x_{t-1} = sin(x_t - x_{t-1}) sin(x_t + x_{t-1}) / cos^2 x_{t-1}: no cancellation near t = 0;
    # sin(x_t + x_{t-1}) = sin(pi - x_t - x_{t-1}), taking the smaller angle keeps its digits where x_t + x_{t-1} ~ pi
    angle = torch.minimum(k * ((2 * t - 1) / T + 2 * s), k * (2 * T - 2 * t + 1) / T)
    beta_ho = math.sin(k / T) * torch.sin(angle) / cos_prev**2
    clipped = beta_ho > max_beta
    alphas = torch.where(clipped, math.sqrt(1.0 - max_beta), cos_t / cos_prev)
    betas = torch.sqrt(torch.clamp(beta_ho, max=max_beta))
    return DiscreteSchedule(alphas, name=f"cosine(T={T})", betas=betas)


def _check_T(T: object) -> None:
    if not isinstance(T, int) or isinstance(T, bool) or T < 1:
        raise ValueError(f"T must be a positive integer, got {T!r}")


def _vp_db(a: Tensor, da: Tensor, b: Tensor, db0: float) -> Tensor:
    """d b / dt for a variance-preserving schedule (b^2 = 1 - a^2), with its limit ``db0`` where b = 0."""
    safe = torch.where(b > 0, b, torch.ones_like(b))
    return torch.where(b > 0, -a * da / safe, torch.full_like(b, db0))


class VPLinear(Schedule):
    r"""Song et al.'s variance-preserving SDE with $\beta(t) = \beta_{\min} + t(\beta_{\max} - \beta_{\min})$.

    $a_t = \exp\!\big(-\tfrac12\int_0^t \beta\big)$, $b_t = \sqrt{1 - a_t^2}$ (lesson 0, eq. 0.13). With
    $\beta_{\min} = 0, \beta_{\max} = 20$ it is Su's $\bar\alpha_t = e^{-5t^2}$ of chapter 5.

    Parameters
    ----------
    beta_min, beta_max : float
        $\beta(0)$ and $\beta(1)$.

    Raises
    ------
    ValueError
        Unless ``0 <= beta_min <= beta_max`` and ``beta_max > 0``.
    """

    variance_preserving = True

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        if not 0 <= beta_min <= beta_max or beta_max <= 0:
            raise ValueError(f"need 0 <= beta_min <= beta_max and beta_max > 0, got {beta_min}, {beta_max}")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)
        self.name = f"vp-linear({beta_min:g},{beta_max:g})"

    def _coefficients(self, t: Tensor) -> Coefficients:
        d = self.beta_max - self.beta_min
        log_a = -0.5 * (self.beta_min * t + 0.5 * d * t * t)
        a = torch.exp(log_a)
        b = torch.sqrt(-torch.expm1(2.0 * log_a))
        da = -0.5 * (self.beta_min + d * t) * a
        db0 = math.inf if self.beta_min > 0 else math.sqrt(d / 2)
        return Coefficients(a, b, da, _vp_db(a, da, b, db0))


class VPCosine(Schedule):
    r"""Continuous cosine schedule $a_t = \cos(\tfrac{\pi}{2}\tfrac{t+s}{1+s})/\cos(\tfrac{\pi}{2}\tfrac{s}{1+s})$,
    $b_t = \sqrt{1-a_t^2}$ (lesson 0, eq. 0.12).

    With $k = \tfrac{\pi}{2(1+s)}$ and $c_0 = \cos(ks)$ it evaluates $b_t = \sqrt{\sin(kt)\sin(k(t+2s))}/c_0$ while
    $a_t > \tfrac12$, the same number without the cancellation of $1 - a_t^2$ near $t = 0$ (lesson 0, eq. 0.12a), and
    $\sqrt{(1-a_t)(1+a_t)}$ after, so that $b_1 = 1$ exactly. $\dot b_0 = \infty$ for $s > 0$ ($b_t \propto \sqrt t$)
    and $\dot b_0 = \pi/2$ for $s = 0$ ($b_t = \sin kt$).

    Parameters
    ----------
    s : float
        Offset $s \ge 0$ of the cosine.

    Raises
    ------
    ValueError
        If ``s < 0`` (or NaN).
    """

    variance_preserving = True

    def __init__(self, s: float = 0.008) -> None:
        if not s >= 0:
            raise ValueError(f"s must be >= 0, got {s}")
        self.s = float(s)
        self.name = f"vp-cosine(s={s:g})"

    def _coefficients(self, t: Tensor) -> Coefficients:
        k = 0.5 * math.pi / (1 + self.s)
        c0 = math.sin(k)  # = cos(k s), in the form that makes a_0 = 1 exactly
        a = torch.clamp(torch.sin(k * (1.0 - t)) / c0, min=0.0, max=1.0)  # = cos(k (t + s)) / c0, exactly 0 at t = 1
        # 1 - a^2 = (cos^2(k s) - cos^2(k (t + s))) / c0^2 = sin(k t) sin(k (t + 2 s)) / c0^2: no cancellation at t ~ 0;
        # once a <= 1/2, (1 - a)(1 + a) cancels nothing either (1 - a is exact) and gives b_1 = 1 exactly
        b_near_data = torch.sqrt(torch.sin(k * t)) * torch.sqrt(torch.sin(k * (t + 2 * self.s))) / c0
        b = torch.where(a > 0.5, b_near_data, torch.sqrt((1.0 - a) * (1.0 + a)))
        da = -k * torch.sin(k * (t + self.s)) / c0
        db0 = math.inf if self.s > 0 else k  # s = 0: b_t = sin(k t), so db/dt = k cos(k t) = pi/2 at t = 0
        return Coefficients(a, b, da, _vp_db(a, da, b, db0))


class VE(Schedule):
    r"""Variance-exploding schedule: $a_t = 1$, $b_t = \sigma_{\min}(\sigma_{\max}/\sigma_{\min})^t$ (lesson 0, eq. 0.14).

    As in Song et al., $b_0 = \sigma_{\min} > 0$: the "data" end carries a little noise.

    Parameters
    ----------
    sigma_min, sigma_max : float
        $b_0$ and $b_1$.

    Raises
    ------
    ValueError
        Unless ``0 < sigma_min < sigma_max``.
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0) -> None:
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.name = f"ve({sigma_min:g},{sigma_max:g})"

    def _coefficients(self, t: Tensor) -> Coefficients:
        r = math.log(self.sigma_max / self.sigma_min)
        b = self.sigma_min * torch.exp(r * t)
        return Coefficients(torch.ones_like(b), b, torch.zeros_like(b), r * b)


class LinearPath(Schedule):
    r"""The straight path of rectified flow / flow matching: $a_t = 1 - t$, $b_t = t$ (lesson 0, eq. 0.15)."""

    name = "rectified-flow"

    def _coefficients(self, t: Tensor) -> Coefficients:
        return Coefficients(1.0 - t, t.clone(), -torch.ones_like(t), torch.ones_like(t))


_FACTORIES = {
    "su-linear": su_linear,
    "ho-linear": ho_linear,
    "cosine": cosine,
    "vp-linear": VPLinear,
    "vp-cosine": VPCosine,
    "ve": VE,
    "rectified-flow": LinearPath,
}
SCHEDULES: tuple[str, ...] = tuple(_FACTORIES)


def get_schedule(name: str, **kwargs: float) -> Schedule:
    r"""Build a named schedule (lesson 0, table 0.2).

    Parameters
    ----------
    name : {"su-linear", "ho-linear", "cosine", "vp-linear", "vp-cosine", "ve", "rectified-flow"}
        Which schedule; keyword arguments go to its constructor (e.g. ``T=1000``, ``beta_max=20``).
    **kwargs : float
        Constructor arguments of the schedule.

    Returns
    -------
    Schedule

    Raises
    ------
    TypeError
        If ``name`` is not a string (or ``kwargs`` does not fit the constructor).
    ValueError
        If ``name`` is unknown, or the constructor rejects ``kwargs``.
    """
    if not isinstance(name, str):
        raise TypeError(f"schedule name must be a string, one of {SCHEDULES}")
    if name not in _FACTORIES:
        raise ValueError(f"unknown schedule {name!r}; expected one of {SCHEDULES}")
    return _FACTORIES[name](**kwargs)
