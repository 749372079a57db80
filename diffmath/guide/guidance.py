r"""Guidance as a transformation of models (lesson 9): the result is again a model with the one interface, so every
sampler (DDPM, DDIM, SDE, ODE) takes it unchanged, and guided models compose.

Classifier guidance tilts $p_t(x)$ by $p_t(y\mid x)^\gamma$; in noise units (lesson 9, eq. 9.8)

$$\tilde\varepsilon(x_t, t) = \hat\varepsilon(x_t, t) - \gamma\, b_t\, \nabla_{x_t}\log p_t(y\mid x_t),$$

and classifier-free guidance (eq. 9.12) combines a conditional and an unconditional prediction,
$\tilde\varepsilon = (1 + w)\,\hat\varepsilon(x_t, y) - w\,\hat\varepsilon(x_t, \varnothing)$. By Bayes' rule the two
agree when $\gamma = 1 + w$ and the scores are exact.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from diffmath.core._validate import as_tensor, check_batch, check_int, check_positive, check_schedule, per_sample
from diffmath.core.models import Model, check_model, predict
from diffmath.core.schedules import Schedule
from diffmath.guide.compose import Combine, Conditioned
from diffmath.nets.mlp import MLP
from diffmath.train.training import noise_batch

LogProb = Callable[[Tensor, Tensor, Tensor], Tensor]


class ClassifierGuided:
    r"""A model guided by a differentiable classifier $\log p_t(y\mid x_t)$ (lesson 9, eq. 9.8).

    Parameters
    ----------
    model : Model
        The unconditional model (any parameterisation; the guided model predicts ``"eps"``).
    log_prob : callable
        ``log_prob(x, t, y) -> Tensor (B,)``: the log-probability of the labels ``y`` given $x_t$ at time ``t``
        (shape (B,)); it must be differentiable in ``x``.
    schedule : Schedule
        The model's forward process; gives $b_t$.
    scale : float
        $\gamma \ge 0$; 0 returns the model's own prediction, 1 samples $p(x\mid y)$ when everything is exact.

    Raises
    ------
    TypeError
        If ``model`` does not follow the one interface, ``log_prob`` is not callable, or ``schedule`` is not a
        Schedule.
    ValueError
        If ``scale`` is not a finite number >= 0, or ``model.prediction`` is unknown; a call raises it when ``cond``
        is ``None`` or ``log_prob`` does not return shape (B,).

    Notes
    -----
    Call it as ``guided(x, t, cond)`` with ``cond`` the labels ``y`` of shape (B,).
    """

    prediction = "eps"

    def __init__(self, model: Model, log_prob: LogProb, schedule: Schedule, scale: float = 1.0) -> None:
        self.model = check_model(model)
        if not callable(log_prob):
            raise TypeError("log_prob must be callable as log_prob(x, t, y)")
        self.log_prob, self.schedule, self.scale = log_prob, check_schedule(schedule), _scale(scale)

    def __call__(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        if cond is None:
            raise ValueError("classifier guidance needs the labels y as cond, shape (B,)")
        eps = predict(self.model, x, t, self.schedule, "eps")
        if self.scale == 0:
            return eps
        grad = classifier_gradient(self.log_prob, x, t, cond)
        b = per_sample(self.schedule.coefficients(as_tensor(t, "t", x)).b, x, "t")
        return eps - self.scale * b * grad


def _scale(scale: object) -> float:
    try:
        value = (
            math.nan if isinstance(scale, (bool, str)) else float(scale)
        )  # numbers, numpy scalars, 1-element tensors
    except (TypeError, ValueError, RuntimeError):
        value = math.nan
    if not 0 <= value < math.inf:
        raise ValueError(f"the guidance scale must be a finite number >= 0, got {scale!r}")
    return value


def classifier_gradient(log_prob: LogProb, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
    r"""$\nabla_{x}\log p_t(y\mid x)$ by autograd (lesson 9, eq. 9.8), shape of ``x``.

    Parameters
    ----------
    log_prob : callable
        ``log_prob(x, t, y) -> Tensor (B,)``, differentiable in ``x``.
    x : Tensor, shape (B, ...)
        Points $x_t$.
    t : Tensor
        Time(s), passed to ``log_prob``.
    y : Tensor, shape (B,)
        Labels, passed to ``log_prob``.

    Returns
    -------
    Tensor, shape (B, ...)
        The gradient of $\log p_t(y\mid x)$ with respect to ``x``.

    Raises
    ------
    TypeError
        If ``log_prob`` is not callable or ``x`` is not a floating tensor.
    ValueError
        If ``x`` has fewer than 2 dimensions or holds NaN or infinity, or ``log_prob`` does not return a tensor of
        shape (B,).
    """
    if not callable(log_prob):
        raise TypeError(f"log_prob must be callable as log_prob(x, t, y), got {type(log_prob).__name__}")
    x = check_batch(x, "x")
    with torch.enable_grad():
        xr = x.detach().requires_grad_(True)
        lp = log_prob(xr, t, y)
        if not isinstance(lp, Tensor) or lp.shape != (x.shape[0],):
            got = tuple(lp.shape) if isinstance(lp, Tensor) else type(lp).__name__
            raise ValueError(f"log_prob must return a tensor of shape (B,) = ({x.shape[0]},), got {got}")
        (grad,) = torch.autograd.grad(lp.sum(), xr)
    return grad


class ClassifierFree(Combine):
    r"""Classifier-free guidance of a conditional model (lesson 9, eq. 9.12):
    $(1 + w)\,f(x, t, y) - w\,f(x, t, \varnothing)$ in the model's own parameterisation.

    The combination is affine with weights summing to one, so it is the same in eps, x0, v or velocity units: it is
    ``Combine([model, Conditioned(model, null)], [1 + w, -w], space=model.prediction)``, one call of the network on a
    batch of 2B (lesson 9, sec. 9.8).

    Parameters
    ----------
    model : Model
        A conditional model that accepts ``cond = null`` for the unconditional prediction.
    scale : float
        $w \ge 0$ (0: the conditional model itself).
    null : Tensor or int
        The null condition, any tensor (broadcast as in :class:`~diffmath.guide.compose.Conditioned`); an int is a label
        (diffmath's networks and exact models use -1).

    Raises
    ------
    TypeError
        If ``model`` does not follow the one interface or ``null`` is not a tensor or an integer.
    ValueError
        If ``scale`` is not a finite number >= 0, or ``model.prediction`` is unknown; a call raises it when ``cond``
        is not a tensor, or when the model's output is not a finite tensor of the shape of ``x`` (the checks of
        :func:`~diffmath.core.models.predict`).
    """

    def __init__(self, model: Model, scale: float, null: Tensor | int = -1) -> None:
        check_model(model)
        if isinstance(null, bool) or not isinstance(null, (int, Tensor)):
            raise TypeError(
                f"null must be a tensor or an integer label (the unconditional class, e.g. -1), got {null!r}"
            )
        self.model, self.scale, self.null = model, _scale(scale), null
        super().__init__([model, Conditioned(model, null)], [1 + self.scale, -self.scale], space=model.prediction)

    def __call__(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        if not isinstance(cond, Tensor):
            raise ValueError(
                f"classifier-free guidance needs the labels y as cond, shape (B,), got {type(cond).__name__}"
            )
        return super().__call__(x, t, cond)


class NoisyClassifier(nn.Module):
    r"""A time-dependent classifier $p_\phi(y\mid x_t, t)$ for classifier guidance (lesson 9, eq. 9.10): an
    :class:`~diffmath.nets.mlp.MLP` body with ``num_classes`` outputs (logits), trained on noised data by
    :class:`ClassifierLoss`.

    Parameters
    ----------
    dim : int
        Data dimension $d$.
    num_classes : int
        Number of classes.
    hidden, depth : int
        Width and number of residual blocks of the MLP.
    t_max : float
        The schedule's $t_{\max}$, to normalise time.

    Raises
    ------
    ValueError
        If ``num_classes`` < 2, or ``dim``, ``hidden`` or ``depth`` is not a positive integer.
    """

    def __init__(self, dim: int, num_classes: int, hidden: int = 64, depth: int = 3, t_max: float = 1.0) -> None:
        super().__init__()
        check_int(dim, "dim")
        check_int(num_classes, "num_classes", 2)
        self.num_classes = num_classes
        self.body = MLP(dim, hidden, depth, "eps", t_max, out_dim=num_classes)

    def forward(self, x: Tensor, t: Tensor | float, cond: Tensor | None = None) -> Tensor:
        r"""Logits of $p_\phi(y\mid x_t, t)$, shape (B, num_classes) (lesson 9, eq. 9.10).

        Parameters
        ----------
        x : Tensor, shape (B, d)
            Noisy inputs.
        t : float or Tensor
            Time(s).
        cond : None
            Ignored (the training loop passes the labels here; :class:`ClassifierLoss` uses them).

        Returns
        -------
        Tensor, shape (B, num_classes)
        """
        return self.body(x, as_tensor(t, "t", x))

    def log_prob(self, x: Tensor, t: Tensor | float, y: Tensor) -> Tensor:
        r"""$\log p_\phi(y\mid x_t, t)$, shape (B,): the ``log_prob`` that :class:`ClassifierGuided` differentiates
        (lesson 9, eq. 9.8).

        Parameters
        ----------
        x : Tensor, shape (B, d)
            Noisy inputs.
        t : float or Tensor
            Time(s).
        y : Tensor of int, shape (B,)
            Labels.

        Returns
        -------
        Tensor, shape (B,)
        """
        logp = torch.log_softmax(self(x, t), dim=-1)
        return logp.gather(1, y.long().reshape(-1, 1))[:, 0]


class ClassifierLoss:
    r"""Cross-entropy of a noisy classifier on noised labelled data,
    $\mathbb E_{t, x_0, y, \varepsilon}[-\log p_\phi(y\mid a_t x_0 + b_t\varepsilon, t)]$ (lesson 9, eq. 9.10).

    Use with :func:`~diffmath.train.training.train` and ``labels=``: ``train(clf, x, None, steps, labels=y,
    loss=ClassifierLoss(schedule))``. Times are drawn as in :func:`~diffmath.train.training.diffusion_loss`.

    Parameters
    ----------
    schedule : Schedule
        The forward process the guided model uses.

    Raises
    ------
    TypeError
        If ``schedule`` is not a Schedule.
    """

    def __init__(self, schedule: Schedule) -> None:
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a Schedule, got {type(schedule).__name__}")
        self.schedule = schedule

    def __call__(self, model: nn.Module, x0: Tensor, generator: torch.Generator, cond: Tensor | None = None) -> Tensor:
        if cond is None or (cond < 0).any():
            raise ValueError("ClassifierLoss needs the labels (train with labels=... and label_dropout=0)")
        t, _, xt = noise_batch(x0, self.schedule, generator)
        return torch.nn.functional.cross_entropy(model(xt, t), cond.long())

    def __repr__(self) -> str:
        return f"ClassifierLoss({self.schedule.name})"


class Similarity:
    r"""Similarity guidance (lesson 9, eq. 9.9): $\log p_t(y\mid x_t) := \cos\big(E(x_t, t), r_y\big)/\tau$, the
    cosine between an encoding of $x_t$ and a reference embedding $r_y$, used as the ``log_prob`` of
    :class:`ClassifierGuided`.

    With ``encoder = lambda x, t: predict(model, x, t, schedule, "x0")`` the encoding is the model's own denoised
    guess, so no noisy encoder has to be trained (as with CLIP guidance on $\hat x_0$).

    Parameters
    ----------
    encoder : callable
        ``encoder(x, t) -> Tensor`` of shape (B, ...), differentiable in ``x``.
    references : Tensor, shape (R, ...)
        Reference embeddings; the label ``y`` picks row ``y``.
    temperature : float
        $\tau > 0$; smaller is sharper.

    Raises
    ------
    TypeError
        If ``encoder`` is not callable or ``references`` is not a floating tensor.
    ValueError
        If ``temperature`` is not a finite number > 0 or ``references`` has fewer than 2 dimensions.
    """

    def __init__(self, encoder: Callable[[Tensor, Tensor], Tensor], references: Tensor, temperature: float = 1.0):
        if not callable(encoder):
            raise TypeError("encoder must be callable as encoder(x, t)")
        self.encoder, self.references = encoder, check_batch(references, "references")
        self.temperature = check_positive(temperature, "temperature")

    def __call__(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        e = self.encoder(x, t).reshape(x.shape[0], -1)
        r = self.references.to(e.dtype)[y.long()].reshape(x.shape[0], -1)
        return torch.nn.functional.cosine_similarity(e, r, dim=1) / self.temperature
