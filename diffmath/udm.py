r"""The unified diffusion model (lessons 10-11): any corruption, one reverse step, hot and cold diffusion.

A corruption is a forward process $x_t = F_t(x_0, \varepsilon)$. Here $F$ is affine in the noise,
$x_t = D_t(x_0) + \sigma_t\varepsilon$ (lesson 10, eq. 10.12), with $D_t$ any degradation (a Gaussian schedule's
$a_t x_0$, a blur, a mask) and $\sigma_t \ge 0$. The reverse step of eq. 10.11 guesses $\hat x_0$, recovers the noise
$\hat\varepsilon = F_t^{-1}(\hat x_0, x_t)$, and re-applies $F_{t-1}$ to a mix of $\hat\varepsilon$ and fresh noise.
:func:`udm_rule` is that step as an update rule of the one sampler loop (:func:`diffmath.sampling.loop.run`): with a
Gaussian schedule it is the DDIM family (lesson 11, eq. 11.1); with a deterministic $D_t$ it is cold diffusion's naive
(mix 1) or improved (mix 0) sampler (eqs. 11.4-11.5). :class:`RestorationLoss` trains a restorer $G_t(x_t) \approx x_0$
with the training loop of lesson 3.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from diffmath.core._validate import check_batch, check_int, check_output
from diffmath.core.models import check_model
from diffmath.core.schedules import Coefficients, Schedule
from diffmath.fusion import gaussian_blur
from diffmath.sampling.loop import Rule, Step, final, run
from diffmath.train.training import Draws, as_draws, unwrap


class Corruption(Schedule):
    r"""A forward process $x_t = D_t(x_0) + \sigma_t\varepsilon$ on levels $t = 0, 1, \dots, T$ (lesson 10, eq. 10.12).

    $D_0$ is the identity and $\sigma_0 = 0$; $\sigma_t$ is ``noise`` for $t \ge 1$. It is a discrete
    :class:`~diffmath.core.schedules.Schedule`, so the one sampler loop runs it; its coefficients are placeholders
    ($a_t = b_t = 1$): the loop hands the restorer's $\hat x_0$ to :func:`udm_rule`, which applies $D_t$ itself.

    Parameters
    ----------
    T : int
        Number of levels, >= 1.
    degrade : callable
        ``degrade(x0, level) -> Tensor``: $D_t$ at one integer level in $1..T$, on a batch (B, ...), returning the
        batch's shape. Subclasses implement :meth:`_degrade` instead.
    noise : float
        $\sigma_t$ for $t \ge 1$, >= 0 (0: a deterministic, "cold" corruption).
    name : str
        Label in messages.

    Raises
    ------
    ValueError
        If ``T`` is not a positive integer or ``noise`` is negative or not finite.
    TypeError
        If ``degrade`` is not callable.
    """

    discrete = True

    def __init__(
        self,
        T: int,
        degrade: Callable[[Tensor, int], Tensor] | None = None,
        noise: float = 0.0,
        name: str = "corruption",
    ) -> None:
        self.T = check_int(T, "T")
        self.t_max = float(self.T)
        if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not math.isfinite(noise) or noise < 0:
            raise ValueError(f"noise must be a finite number >= 0 (sigma_t for t >= 1), got {noise!r}")
        if degrade is not None and not callable(degrade):
            raise TypeError(f"degrade must be callable as degrade(x0, level) -> Tensor, got {type(degrade).__name__}")
        self._fn, self.noise, self.name = degrade, float(noise), name

    def _coefficients(self, t: Tensor) -> Coefficients:
        ones = torch.ones_like(t, dtype=t.dtype if t.is_floating_point() else torch.float64)
        return Coefficients(ones, ones.clone())

    def _degrade(self, x0: Tensor, level: int) -> Tensor:
        if self._fn is None:
            raise NotImplementedError("give degrade=... or subclass Corruption and implement _degrade")
        return check_output(self._fn(x0, level), x0, "degrade")

    def degrade(self, x0: Tensor, t: int | Tensor) -> Tensor:
        r"""$D_t(x_0)$, at one level or one level per sample (lesson 10, eq. 10.12).

        Parameters
        ----------
        x0 : Tensor, shape (B, ...)
            Clean data.
        t : int or Tensor of shape (B,)
            Levels in $0..T$.

        Returns
        -------
        Tensor, shape (B, ...)

        Raises
        ------
        ValueError
            If a level is not an integer in $0..T$ or ``t`` is not of shape (B,).
        """
        x0 = check_batch(x0, "x0")
        if not isinstance(t, Tensor):
            level = self._level(t)
            return x0 if level == 0 else self._degrade(x0, level)
        if t.shape != (x0.shape[0],):
            raise ValueError(f"t must be one level or a (B,) tensor of levels, got shape {tuple(t.shape)}")
        levels = t.long()
        if (levels != t).any() or (levels < 0).any() or (levels > self.T).any():
            raise ValueError(f"levels must be integers in 0..{self.T}")
        out = x0.clone()
        for level in torch.unique(levels).tolist():
            if level:
                rows = levels == level
                out[rows] = self._degrade(x0[rows], level)
        return out

    def noise_level(self, t: int | float) -> float:
        r"""$\sigma_t$: ``noise`` for $t \ge 1$, 0 at $t = 0$ (lesson 10, eq. 10.12).

        Parameters
        ----------
        t : int or float
            A level in $0..T$.

        Returns
        -------
        float

        Raises
        ------
        ValueError
            If ``t`` is not an integer in $0..T$.
        """
        return self.noise if self._level(t) > 0 else 0.0

    def corrupt(self, x0: Tensor, eps: Tensor, t: int | Tensor) -> Tensor:
        r"""$F_t(x_0, \varepsilon) = D_t(x_0) + \sigma_t\varepsilon$ (lesson 10, eqs. 10.1 and 10.12).

        Parameters
        ----------
        x0, eps : Tensor, shape (B, ...)
            Data and noise.
        t : int or Tensor of shape (B,)
            Levels in $0..T$.

        Returns
        -------
        Tensor, shape (B, ...)

        Raises
        ------
        ValueError
            As :meth:`degrade`, or if ``eps`` is not of ``x0``'s shape.
        """
        if eps.shape != x0.shape:
            raise ValueError(f"eps must have the shape of x0, {tuple(x0.shape)}; got {tuple(eps.shape)}")
        if isinstance(t, Tensor):
            sigma = torch.where(t > 0, self.noise, 0.0).to(x0.dtype).reshape((-1,) + (1,) * (x0.dim() - 1))
        else:
            sigma = self.noise_level(t)
        return self.degrade(x0, t) + sigma * eps

    def _level(self, t: object) -> int:
        if isinstance(t, bool) or not isinstance(t, (int, float)) or t != int(t) or not 0 <= t <= self.T:
            raise ValueError(f"a level must be an integer in 0..{self.T}, got {t!r}")
        return int(t)

    def __repr__(self) -> str:
        return f"{self.name}(T={self.T}, noise={self.noise:g})"


class Blur(Corruption):
    r"""Gaussian blur of images, standard deviation $\text{sd}_{\max}\sqrt{t/T}$ pixels (lesson 11, sec. 11.2).

    The blur's variance grows linearly with $t$: the heat equation of lesson 12 run for time $\propto t$. Reflect
    padding; the kernel is cut at $3\,$sd or one pixel short of the image (:func:`diffmath.fusion.gaussian_blur`).

    Parameters
    ----------
    T : int
        Number of levels.
    sd_max : float
        Blur at level $T$, in pixels, > 0.
    noise : float
        $\sigma_t$ for $t \ge 1$.

    Raises
    ------
    ValueError
        As :class:`Corruption`, or if ``sd_max`` is not positive.
    """

    def __init__(self, T: int = 20, sd_max: float = 6.0, noise: float = 0.0) -> None:
        super().__init__(T, None, noise, "blur")
        if not isinstance(sd_max, (int, float)) or not math.isfinite(sd_max) or sd_max <= 0:
            raise ValueError(f"sd_max must be a positive number of pixels, got {sd_max!r}")
        self.sd_max = float(sd_max)

    def sd(self, t: int) -> float:
        r"""The blur's standard deviation at level $t$, $\text{sd}_{\max}\sqrt{t/T}$ (lesson 11, sec. 11.2).

        Parameters
        ----------
        t : int
            A level in $0..T$.

        Returns
        -------
        float

        Raises
        ------
        ValueError
            If ``t`` is not an integer in $0..T$.
        """
        return self.sd_max * math.sqrt(self._level(t) / self.T)

    def _degrade(self, x0: Tensor, level: int) -> Tensor:
        if x0.dim() < 3:
            raise ValueError(f"Blur acts on images (B, [C,] H, W), got shape {tuple(x0.shape)}")
        return gaussian_blur(x0, self.sd(level))

    def __repr__(self) -> str:
        return f"blur(T={self.T}, sd_max={self.sd_max:g}, noise={self.noise:g})"


class PixelMask(Corruption):
    r"""Mask pixels of an image in one fixed random order: level $t$ sets the first $\lceil tHW/T\rceil$ pixels of the
    order (all channels) to ``fill`` (lesson 11, sec. 11.2).

    Parameters
    ----------
    T : int
        Number of levels.
    size : (int, int)
        Image height and width.
    seed : int
        Seeds the order.
    fill : float
        The masked value.
    noise : float
        $\sigma_t$ for $t \ge 1$.

    Raises
    ------
    ValueError
        As :class:`Corruption`, or if ``size`` is not two positive integers.
    """

    def __init__(self, T: int, size: tuple[int, int], seed: int = 0, fill: float = 0.0, noise: float = 0.0) -> None:
        super().__init__(T, None, noise, "pixel-mask")
        if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
            raise ValueError(f"size must be (H, W), two positive integers, got {size!r}")
        self.size, self.fill = tuple(size), float(fill)
        n = size[0] * size[1]
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        self.rank = torch.empty(n, dtype=torch.long)
        self.rank[order] = torch.arange(n)  # rank of each pixel in the masking order

    def mask(self, t: int) -> Tensor:
        r"""The boolean (H, W) map of the pixels masked at level $t$ (lesson 11, sec. 11.2).

        Parameters
        ----------
        t : int
            A level in $0..T$.

        Returns
        -------
        Tensor of bool, shape (H, W)

        Raises
        ------
        ValueError
            If ``t`` is not an integer in $0..T$.
        """
        k = math.ceil(self._level(t) * self.rank.numel() / self.T)
        return (self.rank < k).reshape(self.size)

    def _degrade(self, x0: Tensor, level: int) -> Tensor:
        if tuple(x0.shape[-2:]) != self.size:
            raise ValueError(f"PixelMask was built for images of size {self.size}, got shape {tuple(x0.shape)}")
        return torch.where(self.mask(level).to(x0.device), torch.full_like(x0, self.fill), x0)

    def __repr__(self) -> str:
        return f"pixel_mask(T={self.T}, size={self.size}, fill={self.fill:g}, noise={self.noise:g})"


def _mix(mix: object, corruption: Schedule) -> float | str:
    if mix == "ddpm":
        if isinstance(corruption, Corruption):
            raise ValueError(
                "mix='ddpm' is DDPM's posterior noise on a Gaussian schedule; give a number for a Corruption"
            )
        return mix
    if isinstance(mix, bool) or not isinstance(mix, (int, float)) or not 0 <= mix <= 1:
        raise ValueError(f"mix must be a number in [0, 1] (0: reuse the noise, 1: fresh noise) or 'ddpm', got {mix!r}")
    return float(mix)


def udm_rule(corruption: Schedule, mix: float | str = 0.0) -> Rule:
    r"""The unified reverse step as an update rule (lesson 10, eq. 10.13; lesson 11, eqs. 11.1, 11.4-11.5).

    With $\hat x_0$ from the model, $\hat\varepsilon = (x_t - D_t(\hat x_0))/\sigma_t$ and mixing $m$:

    $$x_s = D_s(\hat x_0) + \sqrt{1 - m^2}\,\frac{\sigma_s}{\sigma_t}\big(x_t - D_t(\hat x_0)\big) + m\,\sigma_s z .$$

    On a Gaussian :class:`~diffmath.core.schedules.Schedule` ($D_t = a_t\cdot$, $\sigma_t = b_t$) this is the DDIM
    family with $\sigma = m\,b_s$ (``mix="ddpm"``: DDPM's posterior noise). On a deterministic :class:`Corruption`
    ($\sigma_t = 0$) the ratio $\sigma_s/\sigma_t$ is its limit 1 for a constant noise level: ``mix=0`` is cold
    diffusion's improved sampler $x_s = x_t + D_s(\hat x_0) - D_t(\hat x_0)$, ``mix=1`` the naive $x_s = D_s(\hat x_0)$.

    Parameters
    ----------
    corruption : Schedule
        A :class:`Corruption`, or a Gaussian schedule (the model's own).
    mix : float or "ddpm"
        $m \in [0, 1]$: 0 reuses the recovered noise (eq. 10.10), 1 draws it afresh (eq. 10.8).

    Returns
    -------
    Rule
        For :func:`~diffmath.sampling.loop.run`; it reads only ``pair.x0`` and ``x``.

    Raises
    ------
    TypeError
        If ``corruption`` is not a Schedule.
    ValueError
        If ``mix`` is not in [0, 1] or "ddpm" (which needs a Gaussian schedule).
    """
    if not isinstance(corruption, Schedule):
        raise TypeError(f"corruption must be a Corruption or a Gaussian Schedule, got {type(corruption).__name__}")
    mix = _mix(mix, corruption)
    cold = isinstance(corruption, Corruption)

    def rule(pair, x: Tensor, step: Step, state: dict):
        x0 = pair.x0
        if cold:
            d_t, d_s = corruption.degrade(x0, int(step.t)), corruption.degrade(x0, int(step.s))
            sig_t, sig_s = corruption.noise_level(step.t), corruption.noise_level(step.s)
            ratio = 1.0 if sig_t == 0 else sig_s / sig_t
        else:
            d_t, d_s, sig_t, sig_s = step.a_t * x0, step.a_s * x0, step.b_t, step.b_s
            ratio = sig_s / sig_t
        m = mix if mix != "ddpm" else math.sqrt(max(0.0, 1.0 - (step.a_t * step.b_s / (step.a_s * step.b_t)) ** 2))
        mean = d_s + math.sqrt(1.0 - m * m) * ratio * (x - d_t)
        return mean, m * sig_s, state

    return rule


def cold_sample(
    model: nn.Module,
    x: Tensor,
    corruption: Corruption,
    mix: float = 0.0,
    grid: Tensor | None = None,
    *,
    cond: Tensor | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Tensor:
    r"""Restore ``x`` (at level ``grid[0]``) to level 0 with a restorer and :func:`udm_rule` (lesson 11, eqs. 11.4-11.5).

    Parameters
    ----------
    model : nn.Module
        A restorer with the one interface and ``prediction = "x0"``.
    x : Tensor, shape (B, ...)
        The corrupted state.
    corruption : Corruption
        The forward process the restorer was trained on.
    mix : float
        0: improved sampler; 1: naive sampler.
    grid : Tensor, optional
        Decreasing integer levels (default $T, T-1, \dots, 0$).
    cond : Tensor, optional
        Passed to the model.
    generator : torch.Generator, optional
        Noise for ``mix > 0`` on a noisy corruption.
    progress : bool
        Show a bar.

    Returns
    -------
    Tensor, shape (B, ...)

    Raises
    ------
    TypeError
        If ``corruption`` is not a :class:`Corruption`.
    ValueError
        If the model does not predict ``"x0"``, or as :func:`~diffmath.sampling.loop.run`.
    """
    if not isinstance(corruption, Corruption):
        raise TypeError(f"corruption must be a Corruption, got {type(corruption).__name__}")
    if check_model(model).prediction != "x0":
        raise ValueError(f"a restorer predicts x0 (its prediction must be 'x0'), got {model.prediction!r}")
    grid = torch.arange(corruption.T, -1, -1, dtype=torch.float64) if grid is None else grid
    return final(
        run(
            model,
            x,
            grid,
            corruption,
            udm_rule(corruption, mix),
            cond=cond,
            noise=generator,
            progress=progress,
            desc="cold sampling",
        )
    )


class RestorationLoss:
    r"""The restorer's objective $\mathbb E\,\|G_\theta(F_t(x_0, \varepsilon), t) - x_0\|_p^p / d$, $t$ uniform on
    $1..T$ (lesson 10, eq. 10.6 for $p = 2$; lesson 11, eq. 11.3 for $p = 1$, a Laplace $q(x_0\mid x_t)$).

    Parameters
    ----------
    corruption : Corruption
        The forward process.
    norm : {1, 2}
        The power $p$ (Bansal et al. train cold diffusion with $p = 1$).

    Raises
    ------
    TypeError
        If ``corruption`` is not a :class:`Corruption`.
    ValueError
        If ``norm`` is not 1 or 2.
    """

    def __init__(self, corruption: Corruption, norm: int = 1) -> None:
        if not isinstance(corruption, Corruption):
            raise TypeError(f"corruption must be a Corruption, got {type(corruption).__name__}")
        if norm not in (1, 2) or isinstance(norm, bool):
            raise ValueError(f"norm must be 1 or 2, got {norm!r}")
        self.corruption, self.norm = corruption, norm

    def __call__(
        self, model: nn.Module, x0: Tensor, generator: Draws | torch.Generator, cond: Tensor | None = None
    ) -> Tensor:
        if check_model(unwrap(model)).prediction != "x0":
            raise ValueError("a restorer predicts x0: build the network with prediction='x0'")
        draws, B = as_draws(generator), x0.shape[0]
        t = draws.randint(1, self.corruption.T + 1, (B,), x0.device)
        eps = draws.randn(x0.shape, x0.dtype, x0.device)
        x_t = self.corruption.corrupt(x0, eps, t)
        err = check_output(model(x_t, t.to(x0.dtype), cond), x_t) - x0
        return err.abs().mean() if self.norm == 1 else (err**2).mean()

    def __repr__(self) -> str:
        return f"restoration_loss({self.corruption!r}, norm={self.norm})"


CORRUPTIONS: dict[str, type[Corruption]] = {"blur": Blur, "pixel-mask": PixelMask}
"""Named corruptions a recipe can train a restorer on (lesson 11, sec. 11.2)."""


def get_corruption(name: str, **kwargs: object) -> Corruption:
    r"""The corruption named ``name`` in :data:`CORRUPTIONS`, built with ``kwargs`` (lesson 11, sec. 11.2).

    Parameters
    ----------
    name : str
        ``"blur"`` or ``"pixel-mask"``.
    **kwargs : object
        Its settings (``T``, ``sd_max``, ``size``, ``noise``, ...).

    Returns
    -------
    Corruption

    Raises
    ------
    ValueError
        If ``name`` is unknown (or a setting is invalid).
    """
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; expected one of {tuple(CORRUPTIONS)}")
    if "size" in kwargs:
        kwargs["size"] = tuple(kwargs["size"])
    return CORRUPTIONS[name](**kwargs)


class OracleRestorer:
    r"""A restorer that knows the answer: it returns $x_0 + \delta$, with $\delta$ fresh $\mathcal N(0, \text{noise}^2)$
    at every call (lesson 11, eq. 11.7): the probe of how each sampler propagates a restorer's errors.

    Parameters
    ----------
    x0 : Tensor, shape (B, ...)
        The clean batch the chain started from.
    noise : float
        Standard deviation of each call's error, >= 0.
    generator : torch.Generator, optional
        Source of the errors.

    Raises
    ------
    ValueError
        If ``noise`` is negative or not finite.
    """

    prediction = "x0"

    def __init__(self, x0: Tensor, noise: float = 0.0, generator: torch.Generator | None = None) -> None:
        if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not math.isfinite(noise) or noise < 0:
            raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
        self.x0, self.noise, self.generator = check_batch(x0, "x0"), float(noise), generator

    def __call__(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        if x.shape != self.x0.shape:
            raise ValueError(f"the oracle restores its own batch of shape {tuple(self.x0.shape)}, got {tuple(x.shape)}")
        if self.noise == 0:
            return self.x0.clone()
        return self.x0 + self.noise * torch.randn(x.shape, generator=self.generator, dtype=x.dtype).to(x.device)

    def __repr__(self) -> str:
        return f"OracleRestorer(noise={self.noise:g})"
