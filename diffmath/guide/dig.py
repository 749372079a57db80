r"""Image fusion guided by diffusion information gains: Dig2DIG (lesson 23).

$K$ registered sources $c_1, \dots, c_K$ of one scene (a multi-focus pair, two exposures, infrared and visible) are
fused by sampling an unconditional image model with one guidance term per source,
$\nabla\log p(x_t\mid c) \approx \nabla\log p(x_t) + \sum_k w_k\,\nabla\log p(c_k\mid x_t)$ (lesson 23, eq. 23.1).
Fixed weights $w_k = 1/K$ are DDFM's; Dig2DIG sets them from the *diffusion information gain* of each source, how much
the model's reconstruction of a noised copy of $c_k$ improves between two noise levels (eq. 23.2), through a softmax
(eq. 23.3), per pixel from smoothed error maps or per image (eq. 23.4), refreshed every $S$ steps.

The gains depend on the sources and the time only, never on $x_t$, so :func:`dig_weights` computes the weights of a
whole grid before sampling. The guidance then acts on the denoised guess (an ``on_pair`` hook of the one loop,
:class:`FusionGuidance`: an $x_0$-space step or an EM rectification, eqs. 23.5-23.6) or on the score through the
denoiser (:class:`FusionGuided`, a model with the one interface: a DPS-style gradient, eq. 23.7). :func:`fuse` wires
them to :func:`~diffmath.sampling.loop.run`; there is no loop here.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from diffmath.core._validate import check_batch, check_choice, check_int, check_positive
from diffmath.core.models import Model, check_model, predict
from diffmath.core.notation import Pair, from_pair, to_pair
from diffmath.core.schedules import Schedule
from diffmath.fusion import gaussian_blur
from diffmath.guide.guidance import _scale
from diffmath.guide.multi import _floats, _one_time
from diffmath.sampling.loop import check_grid, run
from diffmath.sampling.samplers import ddim_rule

LOSSES = ("l2", "l1")
"""The reconstruction losses $\\ell$ of eq. 23.2: squared error (the paper's default) or absolute error."""

GUIDANCE = ("x0", "em", "dps")
r"""How $\nabla\log p(c_k\mid x_t)$ enters (lesson 23, sec. 23.3): an $x_0$-space step towards the weighted sources
(eq. 23.5), an EM rectification of $\hat x_0$ under a Laplace likelihood in DDFM's spirit (eq. 23.6), or the
gradient of the weighted residual through the denoiser, DPS-style (eq. 23.7)."""

WEIGHTS = ("dig", "fixed", "oracle")
"""The weight strategies of :func:`fuse`: diffusion information gains, $1/K$ (DDFM), or the task's ideal masks."""


# ------------------------------------------------------------------------------------------------------ checks
def check_sources(sources: object) -> Tensor:
    """Sources as one tensor of shape (K, B, ...), K >= 2: images (K, B, C, H, W) or vectors (K, B, D) (lesson 23,
    sec. 23.1).

    Parameters
    ----------
    sources : Tensor or sequence of Tensor
        A tensor (K, B, ...) or K tensors of one shape (B, ...).

    Returns
    -------
    Tensor, shape (K, B, ...)

    Raises
    ------
    TypeError
        If ``sources`` is neither a floating tensor nor a sequence of them.
    ValueError
        If the shapes differ, there are fewer than 2 sources, or a value is not finite.
    """
    if isinstance(sources, (list, tuple)):
        if not all(isinstance(s, Tensor) for s in sources):
            raise TypeError("sources must be a tensor (K, B, ...) or a sequence of K tensors (B, ...)")
        shapes = {tuple(s.shape) for s in sources}
        if len(shapes) != 1:
            raise ValueError(f"every source must have the same shape (B, ...), got {sorted(shapes)}")
        sources = torch.stack(list(sources))
    c = check_batch(sources, "sources", min_dim=3)
    if c.shape[0] < 2:
        raise ValueError(f"sources must have shape (K, B, ...) with K >= 2 sources, got {tuple(c.shape)}")
    return c


def map_shape(sources: Tensor) -> tuple[int, ...]:
    """The shape of one weight map (lesson 23, eq. 23.4): (1, H, W) for images (one weight per pixel, shared by the
    channels), the data's own shape otherwise (one weight per coordinate).

    Parameters
    ----------
    sources : Tensor, shape (K, B, ...)
        Checked sources.

    Returns
    -------
    tuple of int
    """
    return (1, *sources.shape[3:]) if sources.dim() == 5 else tuple(sources.shape[2:])


def _check_weights(w: Tensor, sources: Tensor, name: str = "weights") -> Tensor:
    K, B = sources.shape[:2]
    full = map_shape(sources)
    ones = (1,) * len(full)
    if not isinstance(w, Tensor):
        raise TypeError(f"{name} must be a tensor of shape {(K, B, *full)} or {(K, B, *ones)}")
    if tuple(w.shape) not in ((K, B, *full), (K, B, *ones)):
        raise ValueError(f"{name} must have shape {(K, B, *full)} or {(K, B, *ones)}, got {tuple(w.shape)}")
    return _check_simplex(w, name)


def _check_simplex(w: Tensor, name: str) -> Tensor:
    if bool((w < 0).any()) or not torch.allclose(w.sum(0), torch.ones((), dtype=w.dtype), atol=1e-6):
        raise ValueError(f"{name} must be non-negative and sum to 1 over the sources at every pixel")
    return w


# ------------------------------------------------------------------------------------------------------ the gains
def reconstruction_errors(
    model: Model,
    schedule: Schedule,
    sources: Tensor,
    t: float,
    noise: Tensor,
    loss: str = "l2",
    cond: Tensor | None = None,
) -> Tensor:
    r"""Per-pixel error of the model's reconstruction of each noised source, $\ell(\hat c_k^t, c_k)$ (lesson 23,
    eq. 23.2): $c_k^t = a_t c_k + b_t\varepsilon$, $\hat c_k^t = \hat x_0(c_k^t, t)$, one batched model call.

    Parameters
    ----------
    model : Model
        Any model with the one interface.
    schedule : Schedule
        Its forward process.
    sources : Tensor, shape (K, B, C, H, W) or (K, B, D)
        The sources.
    t : float
        The noise level.
    noise : Tensor, shape (B, ...)
        $\varepsilon$, shared by every source (common random numbers: equal sources get equal errors, swapped
        sources swapped errors).
    loss : {"l2", "l1"}
        $\ell$ per pixel, averaged over the channels (per coordinate for vectors).
    cond : Tensor, optional
        Passed to the model (repeated for every source).

    Returns
    -------
    Tensor, shape (K, B, 1, H, W) or (K, B, D)
        The error maps (:func:`map_shape`); exactly 0 where $b_t = 0$ (the data itself, nothing to reconstruct).
    """
    c = check_sources(sources)
    loss = check_choice(loss, "loss", LOSSES)
    K, B = c.shape[:2]
    a, b, _, _ = _floats(schedule, t)
    if b == 0:
        return c.new_zeros((K, B, *map_shape(c)))
    flat = c.reshape(K * B, *c.shape[2:])
    xt = a * flat + b * noise.to(flat.dtype).repeat(K, *([1] * (flat.dim() - 1)))
    cc = None if cond is None else cond.repeat(K, *([1] * (cond.dim() - 1)))
    x0 = predict(model, xt, t, schedule, "x0", cc)
    diff = x0 - flat
    err = diff.square() if loss == "l2" else diff.abs()
    if c.dim() == 5:
        err = err.mean(1, keepdim=True)
    return err.reshape(K, B, *map_shape(c))


def information_gain(err_high: Tensor, err_low: Tensor, spatial: bool = True, smooth: float = 2.0) -> Tensor:
    r"""The diffusion information gain $\mathrm{DIG}_k = \ell(\hat c_k^{t}, c_k) - \ell(\hat c_k^{s}, c_k)$,
    $s < t$ (lesson 23, eqs. 23.2 and 23.4): per pixel from Gaussian-smoothed error maps, or per image from their means.

    Parameters
    ----------
    err_high, err_low : Tensor, shape (K, B, 1, H, W) or (K, B, D)
        :func:`reconstruction_errors` at the higher and the lower noise level.
    spatial : bool
        Per pixel (per coordinate for vectors) or one number per source and image.
    smooth : float
        Standard deviation of the smoothing, in pixels (spatial only).

    Returns
    -------
    Tensor, shape (K, B, 1, H, W) or (K, B, 1, 1, 1) (vectors: (K, B, D) or (K, B, 1))
    """
    gain = err_high - err_low
    if not spatial:
        return gain.mean(tuple(range(2, gain.dim())), keepdim=True)
    if gain.dim() != 5:  # vectors: one gain per coordinate, nothing to smooth
        return gain
    return gaussian_blur(gain, smooth)


def softmax_weights(gain: Tensor, temperature: float = 1.0) -> Tensor:
    r"""$w_k = \exp(\mathrm{DIG}_k/\tau) / \sum_j \exp(\mathrm{DIG}_j/\tau)$ over the sources (lesson 23, eq. 23.3).

    Parameters
    ----------
    gain : Tensor, shape (K, ...)
        The gains, sources first.
    temperature : float
        $\tau > 0$ (the paper's plain softmax is 1; the gains are in units of the loss).

    Returns
    -------
    Tensor, shape (K, ...)
        Non-negative, summing to 1 over the sources; exactly $1/K$ where the gains are equal.
    """
    tau = check_positive(temperature, "temperature")
    return torch.softmax(gain / tau, dim=0)


class FusionWeights(NamedTuple):
    r"""The weights of every step of a grid (lesson 23, sec. 23.2).

    Attributes
    ----------
    steps : list of Tensor
        One (K, B, 1, H, W) or (K, B, 1, 1, 1) tensor per step; steps between refreshes share one tensor.
    gains : list of Tensor
        The gains at each refresh (empty for fixed or oracle weights).
    refreshes : list of int
        The steps at which the weights were recomputed.
    model_calls : int
        Model evaluations spent on the gains, in images (a call on a batch of B counts B).
    """

    steps: list[Tensor]
    gains: list[Tensor]
    refreshes: list[int]
    model_calls: int


def dig_weights(
    model: Model,
    schedule: Schedule,
    sources: Tensor,
    grid: Tensor,
    *,
    interval: int = 10,
    temperature: float = 0.01,
    spatial: bool = True,
    smooth: float = 2.0,
    loss: str = "l2",
    generator: torch.Generator | None = None,
    cond: Tensor | None = None,
) -> FusionWeights:
    r"""Dig2DIG's weights for every step of ``grid`` (lesson 23, Algorithm 23.1).

    At steps $0, S, 2S, \dots$ the gain of step $i$ is taken between $t = $ ``grid[i]`` and
    $s = $ ``grid[min(i + S, K)]`` (eq. 23.2 over $S$ steps; $S = 1$ is the paper's consecutive-step definition) and
    turned into weights (eq. 23.3), held until the next refresh. One draw of $\varepsilon$ serves every source and
    every level, so each level's errors are computed once: $K\,(\lceil N/S\rceil + 1)$ model calls per image at most.

    Parameters
    ----------
    model : Model
        The unconditional image model.
    schedule : Schedule
        Its forward process.
    sources : Tensor, shape (K, B, C, H, W) or (K, B, D)
        The sources.
    grid : Tensor, shape (N + 1,)
        The sampling grid.
    interval : int
        $S \ge 1$, steps between refreshes.
    temperature : float
        $\tau$ of the softmax. The paper's plain softmax is $\tau = 1$; per-pixel squared errors of images in
        $[-1, 1]$ give gains of order $10^{-2}$, so that $\tau = 1$ is nearly $1/K$ (lesson 23, sec. 23.8).
    spatial : bool
        Per-pixel weights (smoothed error maps) or one weight per source and image.
    smooth : float
        Smoothing of the error maps, in pixels.
    loss : {"l2", "l1"}
        The reconstruction loss.
    generator : torch.Generator, optional
        For $\varepsilon$.
    cond : Tensor, optional
        Passed to the model.

    Returns
    -------
    FusionWeights

    Raises
    ------
    TypeError, ValueError
        If the model, sources or grid are invalid, ``interval`` is not a positive integer, ``temperature`` not
        positive or ``loss`` unknown.
    """
    check_model(model)
    c = check_sources(sources)
    g = check_grid(grid, schedule).tolist()
    S = check_int(interval, "interval")
    check_positive(temperature, "temperature")
    check_positive(smooth, "smooth", allow_zero=True)
    num_steps = len(g) - 1
    eps = torch.randn(c.shape[1:], generator=generator, dtype=torch.float64).to(c.device, c.dtype)
    errors: dict[int, Tensor] = {}
    calls = 0

    def error(j: int) -> Tensor:
        nonlocal calls
        if j not in errors:
            errors[j] = reconstruction_errors(model, schedule, c, g[j], eps, loss, cond)
            calls += c.shape[0] * c.shape[1]
        return errors[j]

    steps, gains, refreshes = [], [], []
    with torch.no_grad():
        for i in range(num_steps):
            if i % S == 0:
                gain = information_gain(error(i), error(min(i + S, num_steps)), spatial, smooth)
                current = softmax_weights(gain, temperature)
                gains.append(gain)
                refreshes.append(i)
            steps.append(current)
    return FusionWeights(steps, gains, refreshes, calls)


def constant_weights(weights: Tensor, num_steps: int) -> FusionWeights:
    r"""The same weights at every step: $1/K$ (DDFM) or a task's oracle masks (lesson 23, sec. 23.5).

    Parameters
    ----------
    weights : Tensor, shape (K, B, 1, H, W) or (K, B, 1, 1, 1)
        Non-negative, summing to 1 over the sources.
    num_steps : int
        Steps of the grid.

    Returns
    -------
    FusionWeights

    Raises
    ------
    TypeError, ValueError
        If ``weights`` is not a tensor of at least 3 dimensions, is negative somewhere or does not sum to 1 over
        the sources, or ``num_steps`` is not a positive integer.
    """
    if not isinstance(weights, Tensor) or weights.dim() < 3:
        raise TypeError("weights must be a tensor of shape (K, B, 1, H, W), (K, B, 1, 1, 1) or (K, B, D)")
    return FusionWeights([_check_simplex(weights, "weights")] * check_int(num_steps, "num_steps"), [], [], 0)


def fixed_weights(sources: Tensor, num_steps: int) -> FusionWeights:
    r"""$w_k = 1/K$ at every step and pixel: DDFM's weights (lesson 23, eq. 23.1).

    Parameters
    ----------
    sources : Tensor, shape (K, B, ...)
        The sources.
    num_steps : int
        Steps of the grid.

    Returns
    -------
    FusionWeights
        One (K, B, 1, ..., 1) tensor of $1/K$, shared by every step.
    """
    c = check_sources(sources)
    K, B = c.shape[:2]
    return constant_weights(
        torch.full((K, B, *[1] * (c.dim() - 2)), 1.0 / K, dtype=c.dtype, device=c.device), num_steps
    )


# ------------------------------------------------------------------------------------------------------ guidance
def weighted_target(sources: Tensor, w: Tensor) -> Tensor:
    r"""$\sum_k w_k c_k$, per pixel (lesson 23, eq. 23.5).

    Parameters
    ----------
    sources : Tensor, shape (K, B, ...)
        The sources.
    w : Tensor
        Weights broadcasting against them, summing to 1 over the sources.

    Returns
    -------
    Tensor, shape (B, ...)
    """
    return (w * sources).sum(0)


class FusionGuidance:
    r"""The fusion guidance on the denoised guess, an ``on_pair`` hook of the one loop (lesson 23, eqs. 23.5-23.6).

    - ``"x0"``: $\hat x_0 \leftarrow \hat x_0 + \rho\sum_k w_k (c_k - \hat x_0)$, a step of length $\rho$ along the
      gradient of $-\tfrac12\sum_k w_k\lVert c_k - x_0\rVert^2$ in $x_0$-space (eq. 23.5);
    - ``"em"``: DDFM's idea of rectifying $\hat x_0$ by EM under a heavy-tailed likelihood, here per pixel with
      Laplace residuals $c_k - f$ written as Gaussian scale mixtures: alternate $u_k = 1/(|c_k - f| + \delta)$
      (E-step) and $f = (\hat x_0 + \rho\sum_k w_k u_k c_k)/(1 + \rho\sum_k w_k u_k)$ (M-step), from $f = \hat x_0$
      (eq. 23.6; DDFM's total-variation term is left out).

    The rectified $\hat x_0$ replaces the model's and $\hat\varepsilon$ is kept, as in DDFM, so the update rule moves
    towards the rectified guess while keeping the direction back to $x_t$.

    Parameters
    ----------
    sources : Tensor, shape (K, B, C, H, W) or (K, B, D)
        The sources.
    weights : FusionWeights
        One weight tensor per step (:func:`dig_weights`, :func:`fixed_weights`, :func:`constant_weights`).
    guidance : {"x0", "em"}
        The rectification.
    scale : float
        $\rho \ge 0$ (``"x0"``: 1 replaces $\hat x_0$ by the weighted sources).
    em_iters : int
        EM iterations.
    delta : float
        $\delta > 0$, keeps the E-step finite.

    Raises
    ------
    TypeError, ValueError
        On invalid sources or weights, an unknown ``guidance`` or a negative ``scale``.
    """

    def __init__(
        self,
        sources: Tensor,
        weights: FusionWeights,
        guidance: str = "em",
        scale: float = 0.1,
        em_iters: int = 3,
        delta: float = 1e-2,
    ) -> None:
        self.sources = check_sources(sources)
        if not isinstance(weights, FusionWeights):
            raise TypeError(f"weights must be FusionWeights, got {type(weights).__name__}")
        for w in {id(w): w for w in weights.steps}.values():
            _check_weights(w, self.sources)
        self.weights = weights
        self.guidance = check_choice(guidance, "guidance", ("x0", "em"))
        self.scale = _scale(scale)
        self.em_iters = check_int(em_iters, "em_iters")
        self.delta = check_positive(delta, "delta")

    def rectify(self, x0: Tensor, index: int) -> Tensor:
        r"""The rectified guess at step ``index`` (lesson 23, eq. 23.5 or 23.6).

        Parameters
        ----------
        x0 : Tensor, shape (B, ...)
            The model's denoised guess.
        index : int
            The step of the grid (whose weights apply).

        Returns
        -------
        Tensor, shape (B, ...)

        Raises
        ------
        ValueError
            If the weights hold no entry for ``index``.
        """
        if index >= len(self.weights.steps):
            raise ValueError(f"no weights for step {index}: the weights cover {len(self.weights.steps)} steps")
        w, c = self.weights.steps[index].to(x0.dtype), self.sources.to(x0.dtype)
        if self.guidance == "x0":
            return x0 + self.scale * (weighted_target(c, w) - x0)
        f = x0
        for _ in range(self.em_iters):
            u = w / ((c - f).abs() + self.delta)
            f = (x0 + self.scale * (u * c).sum(0)) / (1 + self.scale * u.sum(0))
        return f

    def __call__(self, pair: Pair, x: Tensor, step, state: dict) -> tuple[Pair, dict]:
        if pair.x0.shape != self.sources.shape[1:]:
            raise ValueError(
                f"the state {tuple(pair.x0.shape)} must have the sources' shape {tuple(self.sources.shape[1:])}"
            )
        return Pair(self.rectify(pair.x0, step.index), pair.eps), state

    def __repr__(self) -> str:
        return f"FusionGuidance(K={self.sources.shape[0]}, guidance={self.guidance!r}, scale={self.scale:g})"


class FusionGuided:
    r"""DPS-style fusion guidance through the denoiser, as a model with the one interface (lesson 23, eq. 23.7).

    $\nabla\log p(c\mid x_t) \approx -\zeta\,\nabla_{x_t} r(x_t)$ with $r = (\sum_k w_k \lVert c_k -
    \hat x_0(x_t)\rVert^2)^{1/2}$ per image (DPS's normalised step), added to the score; as
    $\hat\varepsilon = -b_t\nabla\log p_t$, the guided pair is $\hat\varepsilon + b_t\,\zeta\,\nabla_{x_t} r$ and
    the $\hat x_0$ that goes with it, returned in the model's own parameterisation. Each call differentiates
    through the model (a forward and a backward pass); where $a_t = 0$ the guess ignores $x_t$ and the model's
    output is returned unguided.

    Parameters
    ----------
    model : Model
        The unconditional model.
    schedule : Schedule
        Its forward process.
    sources : Tensor, shape (K, B, C, H, W) or (K, B, D)
        The sources.
    weights : FusionWeights
        One weight tensor per step of ``grid``.
    grid : Tensor
        The sampling grid the weights belong to (a call at ``grid[i]`` uses step ``i``'s weights).
    scale : float
        $\zeta \ge 0$.

    Raises
    ------
    TypeError, ValueError
        On an invalid model, sources, weights or grid, or a weights list not one per step of ``grid``; a call at
        a time off the grid raises ValueError.
    """

    def __init__(
        self, model: Model, schedule: Schedule, sources: Tensor, weights: FusionWeights, grid: Tensor, scale: float
    ) -> None:
        self.model = check_model(model)
        self.prediction = model.prediction
        self.schedule = schedule
        self.sources = check_sources(sources)
        times = check_grid(grid, schedule).tolist()
        if not isinstance(weights, FusionWeights) or len(weights.steps) != len(times) - 1:
            raise ValueError(f"weights must be FusionWeights with one entry per step of the grid ({len(times) - 1})")
        self.times = times[:-1]
        self.weights, self.scale = weights, _scale(scale)

    def __call__(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        t, value = _one_time(t, x, "FusionGuided")
        # the step whose start time this is (the loop passes it in x's dtype: float32 rounds it)
        i = min(range(len(self.times)), key=lambda j: abs(self.times[j] - value))
        if abs(self.times[i] - value) > 1e-6 * max(1.0, abs(value)):
            raise ValueError(f"FusionGuided was called at t = {value:g}, which is not a step of its grid")
        a, b, da, db = _floats(self.schedule, value)
        time = t if t.dim() else t.expand(x.shape[0])
        if a == 0:  # no signal: the denoised guess does not depend on x_t, so there is nothing to guide
            return self.model(x, time, cond)
        with torch.enable_grad():
            y = x.detach().requires_grad_(True)
            pair = to_pair(self.model(y, time, cond), self.prediction, y, a, b, da, db)
            w = self.weights.steps[i].to(x.dtype)
            r = (w * (self.sources.to(x.dtype) - pair.x0).square()).sum(0).flatten(1).sum(1).clamp_min(1e-24).sqrt()
            (grad,) = torch.autograd.grad(r.sum(), y)
        eps = pair.eps.detach() + b * self.scale * grad
        return from_pair(Pair((x - b * eps) / a, eps), self.prediction, a, b, da, db)

    def __repr__(self) -> str:
        return f"FusionGuided({self.model!r}, scale={self.scale:g})"


# ------------------------------------------------------------------------------------------------------ fuse
class Fused(NamedTuple):
    r"""What :func:`fuse` returns (lesson 23, sec. 23.3).

    Attributes
    ----------
    image : Tensor, shape (B, C, H, W)
        The fused images.
    weights : FusionWeights
        The weights used at each step.
    x0s : list of Tensor
        Each step's (rectified) denoised guess, if recorded.
    model_calls : int
        Model evaluations per image: the sampling steps plus the gains'.
    """

    image: Tensor
    weights: FusionWeights
    x0s: list[Tensor]
    model_calls: int


def fuse(
    model: Model,
    sources: Tensor,
    grid: Tensor,
    schedule: Schedule,
    *,
    weights: str | Tensor = "dig",
    guidance: str = "em",
    scale: float = 0.1,
    eta: float = 0.0,
    interval: int = 10,
    temperature: float = 0.01,
    spatial: bool = True,
    smooth: float = 2.0,
    loss: str = "l2",
    em_iters: int = 3,
    generator: torch.Generator | None = None,
    x: Tensor | None = None,
    cond: Tensor | None = None,
    record: bool = False,
    progress: bool = False,
) -> Fused:
    r"""Fuse $K$ sources by guided sampling of one model (lesson 23, Algorithm 23.1), through the one loop.

    Parameters
    ----------
    model : Model
        An unconditional image model (exact, toy or UNet).
    sources : Tensor, shape (K, B, C, H, W) or (K, B, D)
        The registered sources, in the model's data range.
    grid : Tensor, shape (N + 1,)
        Decreasing times of ``schedule`` (e.g. ``schedule.grid(25, "quadratic")``).
    schedule : Schedule
        The model's forward process.
    weights : {"dig", "fixed"} or Tensor
        Dig2DIG's gains, $1/K$, or a constant weight tensor (K, B, 1, H, W) such as a task's oracle masks.
    guidance : {"x0", "em", "dps"}
        How each source guides (:data:`GUIDANCE`).
    scale : float
        $\rho$ (``"x0"``, ``"em"``) or $\zeta$ (``"dps"``).
    eta : float
        The DDIM-family noise (0: DDIM, DDFM's sampler; 1: DDPM, the paper's update).
    interval, temperature, spatial, smooth, loss
        Of :func:`dig_weights`.
    em_iters : int
        EM iterations (``"em"``).
    generator : torch.Generator, optional
        For the start, the gains' noise and the step noise.
    x : Tensor, optional
        The start at ``grid[0]`` (default: standard normal).
    cond : Tensor, optional
        Passed to the model.
    record : bool
        Keep every step's denoised guess.
    progress : bool
        Show a progress bar.

    Returns
    -------
    Fused

    Raises
    ------
    TypeError, ValueError
        On invalid sources, weights, grid or parameters, or a start not of the sources' shape.
    """
    c = check_sources(sources)
    guidance = check_choice(guidance, "guidance", GUIDANCE)
    g = check_grid(grid, schedule)
    num_steps = len(g) - 1
    # the gains' noise has its own generator, seeded from ``generator`` whatever the weights: every strategy then
    # starts from the same x and draws the same step noise
    gains_gen = torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
    if x is None:
        x = torch.randn(c.shape[1:], generator=generator, dtype=torch.float64).to(c.device, c.dtype)
    elif not isinstance(x, Tensor) or x.shape != c.shape[1:]:
        raise ValueError(f"x must be a tensor of the sources' shape {tuple(c.shape[1:])}")
    if isinstance(weights, Tensor):
        plan = constant_weights(_check_weights(weights.to(c.dtype), c, "weights"), num_steps)
    elif check_choice(weights, "weights", ("dig", "fixed")) == "fixed":
        plan = fixed_weights(c, num_steps)
    else:
        plan = dig_weights(
            model, schedule, c, g, interval=interval, temperature=temperature, spatial=spatial, smooth=smooth,
            loss=loss, generator=gains_gen, cond=cond,
        )  # fmt: skip
    rule = ddim_rule(eta)
    if guidance == "dps":
        sampled, hook = FusionGuided(model, schedule, c, plan, g, scale), None
    else:
        sampled, hook = model, FusionGuidance(c, plan, guidance, scale, em_iters)
    out, x0s = None, []
    for step in run(sampled, x, g, schedule, rule, cond=cond, noise=generator, progress=progress, on_pair=hook,
                    desc="fusing"):  # fmt: skip
        out = step.x
        if record:
            x0s.append(step.x0)
    calls_per_image = num_steps + plan.model_calls // max(c.shape[1], 1)
    return Fused(out, plan, x0s, calls_per_image)


def alignment_covariance(weights: Tensor, sources: Tensor, x0: Tensor, target: Tensor) -> Tensor:
    r"""The covariance across sources of the weights with the alignment of each source's guidance, the term
    $\sum_k \mathrm{Cov}(w_k, B_{t,k})$ of the paper's bound (lesson 23, eq. 23.13).

    Per pixel, source $k$ pulls $\hat x_0$ along $c_k - \hat x_0$ (eq. 23.5) and the ideal direction is
    $x^* - \hat x_0$, so $B_k = (c_k - \hat x_0)\,\mathrm{sign}(x^* - \hat x_0)$. The covariance over the $K$ sources,
    $\frac1K\sum_k (w_k - \tfrac1K)(B_k - \bar B)$, is averaged over pixels and channels: exactly 0 for $w_k = 1/K$,
    positive when the weights favour the sources that point towards $x^*$.

    Parameters
    ----------
    weights : Tensor, shape (K, B, 1, H, W) or (K, B, 1, 1, 1)
        The step's weights.
    sources : Tensor, shape (K, B, C, H, W) or (K, B, D)
        The sources.
    x0 : Tensor, shape (B, C, H, W)
        The step's denoised guess.
    target : Tensor, shape (B, C, H, W)
        The ideal fused image $x^*$.

    Returns
    -------
    Tensor, shape (B,)
    """
    c = check_sources(sources)
    w = _check_weights(weights, c)
    K = c.shape[0]
    align = (c - x0) * torch.sign(target - x0)
    cov = ((w - 1.0 / K) * (align - align.mean(0))).mean(0)
    return cov.flatten(1).mean(1)
