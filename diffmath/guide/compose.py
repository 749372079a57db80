r"""Models that compose (lesson 9, sec. 9.8): bind a condition, add several models' predictions.

A weighted sum of scores is the score of a product of (tempered) densities, $\nabla\log\prod_i p_i^{w_i} =
\sum_i w_i\nabla\log p_i$, and since $\hat\varepsilon = -b_t\,s$ at one time the same sum holds in eps units. The sum
is linear there for any weights; in $\hat x_0$, $v$ or velocity units it is the same combination only when the
weights sum to one (affine), which is why classifier-free guidance, $(1+w) f(y) - w f(\varnothing)$, can be taken in
any parameterisation and a product of experts only in eps or score units.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from diffmath.core._validate import as_tensor, check_batch
from diffmath.core.models import Model, check_input_dtype, check_model, predict_pair
from diffmath.core.notation import PREDICTIONS, Pair, from_pair, to_pair
from diffmath.core.schedules import Schedule


class Conditioned:
    r"""``model`` with its condition bound (lesson 9, sec. 9.8): ``Conditioned(model, c)(x, t) = model(x, t, c)``.

    Parameters
    ----------
    model : Model
        Any model with the one interface.
    cond : Tensor, int or None
        The condition, for every sample: a 0-dim tensor (or int) is broadcast to the call's condition shape (or to
        ``(B,)``), a tensor of shape ``(1, ...)`` is repeated over the batch, one of shape ``(B, ...)`` is used as it is.
        ``None`` is the model's unconditional call. Any tensor may be a null condition (a label -1, an empty
        embedding, ...): diffmath gives it no meaning of its own.

    Raises
    ------
    TypeError
        If ``model`` does not follow the one interface or ``cond`` is not a tensor, an int or ``None``.
    """

    def __init__(self, model: Model, cond: Tensor | int | None) -> None:
        self.model = check_model(model)
        self.prediction = model.prediction
        if isinstance(cond, bool) or not (cond is None or isinstance(cond, (int, Tensor))):
            raise TypeError(f"cond must be a torch.Tensor, an int label or None, got {type(cond).__name__}")
        self.cond = torch.tensor(cond) if isinstance(cond, int) else cond

    def condition(self, batch: int, like: Tensor | None = None) -> Tensor | None:
        """The bound condition for a batch of ``batch`` samples (lesson 9, sec. 9.8).

        Parameters
        ----------
        batch : int
            The batch size $B$.
        like : Tensor, optional
            A call's own condition: a 0-dim bound condition takes its shape (e.g. ``(B, L)`` for several labels).

        Returns
        -------
        Tensor or None
            The condition for every sample.

        Raises
        ------
        ValueError
            If the bound condition is neither 0-dim nor of shape ``(1, ...)`` or ``(B, ...)``.
        """
        c = self.cond
        if c is None:
            return None
        device = like.device if like is not None else None
        if c.dim() == 0:
            shape = like.shape if like is not None and like.shape[:1] == (batch,) else (batch,)
            return c.to(device=device).expand(shape)
        if c.shape[0] == 1:
            return c.to(device=device).expand(batch, *c.shape[1:])
        if c.shape[0] == batch:
            return c.to(device=device)
        raise ValueError(
            f"the bound cond must have shape (), (1, ...) or (B, ...) = ({batch}, ...); got {tuple(c.shape)}"
        )

    def __call__(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        return self.model(x, t, self.condition(x.shape[0], cond))

    def __repr__(self) -> str:
        return f"Conditioned({self.model!r}, cond={self.cond!r})"


def _base(part: Model) -> Model:
    return part.model if isinstance(part, Conditioned) else part


def _check_output(out: object, shape: torch.Size, i: int) -> Tensor:
    if not isinstance(out, Tensor) or out.shape != shape:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"model returned {got} (part {i} of the combination); expected a tensor of shape {tuple(shape)}"
        )
    if not torch.isfinite(out).all():
        raise ValueError(f"model returned NaN or inf (part {i} of the combination); check the model and its inputs")
    return out


class Combine:
    r"""A weighted sum of models' predictions, itself a model (lesson 9, eq. 9.13):
    $f(x, t) = \sum_i w_i f_i(x, t)$ in ``space`` units.

    Calls of the same network (the same object, bare or :class:`Conditioned`, with tensor conditions) are batched
    into one call on the concatenated batch; zero weights are skipped. After each call, ``last_parts`` holds every
    part's prediction (in ``space`` units, ``None`` for a skipped part), for diagnostics.

    Parameters
    ----------
    models : sequence of Model
        The parts; a bare model gets the call's ``cond``, a :class:`Conditioned` one its own.
    weights : sequence of float
        One finite weight per part, any sign. Unless they sum to one, ``space`` must be ``"eps"`` or ``"score"``,
        where the sum is linear (a product of experts).
    space : {"eps", "score", "x0", "v", "velocity"}
        The units in which the sum is taken, and the combination's ``prediction``.
    schedule : Schedule, optional
        Needed where a part's prediction differs from ``space`` (to convert it at each call's time).

    Raises
    ------
    TypeError
        If ``models`` is not a non-empty sequence of models or ``schedule`` is not a Schedule.
    ValueError
        If ``weights`` do not hold one finite number per model or are all 0, ``space`` is unknown, a non-affine
        combination is asked in other units than eps or score, or a part needs converting and no schedule is given;
        a call raises it when a part returns a tensor of another shape than its input.
    """

    def __init__(
        self, models: Sequence[Model], weights: Sequence[float], space: str = "eps", schedule: Schedule | None = None
    ) -> None:
        if isinstance(models, (str, bytes)) or not isinstance(models, Sequence) or len(models) == 0:
            raise TypeError("models must be a non-empty sequence of models")
        self.models = [check_model(m) for m in models]
        if isinstance(weights, Tensor):
            weights = weights.tolist()
        if not isinstance(weights, Sequence) or len(weights) != len(self.models):
            n = len(weights) if isinstance(weights, Sequence) else type(weights).__name__
            raise ValueError(f"weights must hold one number per model ({len(self.models)}), got {n}")
        if not all(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) for w in weights):
            raise ValueError(f"weights must be finite real numbers, got {list(weights)}")
        self.weights = [float(w) for w in weights]
        if not any(self.weights):
            raise ValueError("weights must not all be 0")
        if space not in PREDICTIONS:
            raise ValueError(f"space must be one of {PREDICTIONS}, got {space!r}")
        if space not in ("eps", "score") and abs(sum(self.weights) - 1) > 1e-12:
            raise ValueError(
                f"weights sum to {sum(self.weights):g}: a combination that is not affine (sum 1) is linear only in "
                "'eps' or 'score' units"
            )
        if schedule is None and any(m.prediction != space for m in self.models):
            raise ValueError(f"a schedule is needed to convert parts that do not predict {space!r}")
        if schedule is not None and not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a diffmath Schedule, got {type(schedule).__name__}")
        self.prediction, self.schedule = space, schedule
        self.last_parts: list[Tensor | None] = []

    def parts(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> list[Tensor | None]:
        r"""Every part's prediction at $(x, t)$ in ``space`` units (lesson 9, eq. 9.13).

        Parameters
        ----------
        x : Tensor, shape (B, ...)
            The noisy batch.
        t : float or Tensor of shape () or (B,)
            Its time.
        cond : Tensor, optional
            The condition of the parts that are not :class:`Conditioned`.

        Returns
        -------
        list of Tensor or None
            One prediction per part, ``None`` where the weight is 0.

        Raises
        ------
        TypeError
            If ``x`` is not a floating tensor, ``t`` not a real number or tensor, or ``cond`` not a tensor.
        ValueError
            If ``x`` has fewer than 2 dimensions or holds NaN or infinity, ``t`` has the wrong shape, or a part
            returns a tensor of another shape than ``x`` or NaN.
        """
        x = check_batch(x, "x")
        B = x.shape[0]
        t = as_tensor(t, "t", x)
        if t.dim() == 0:
            t = t.expand(B)
        elif t.shape != (B,):
            raise ValueError(f"t must be a scalar or have shape (B,) = ({B},), got {tuple(t.shape)}")
        if cond is not None and not isinstance(cond, Tensor):
            raise TypeError(f"cond must be a torch.Tensor or None, got {type(cond).__name__}")
        calls = {}  # id(network) -> [(part index, condition)]
        for i, (m, w) in enumerate(zip(self.models, self.weights, strict=True)):
            if w != 0:
                c = m.condition(B, cond) if isinstance(m, Conditioned) else cond
                calls.setdefault(id(_base(m)), []).append((i, c))
        out: list[Tensor | None] = [None] * len(self.models)
        for group in calls.values():
            net = _base(self.models[group[0][0]])
            check_input_dtype(net, x)
            conds = [c for _, c in group]
            if len(group) > 1 and all(isinstance(c, Tensor) and c.shape == conds[0].shape for c in conds):
                xk = x.repeat(len(group), *[1] * (x.dim() - 1))
                y = _check_output(net(xk, t.repeat(len(group)), torch.cat(conds)), xk.shape, group[0][0])
                for j, (i, _) in enumerate(group):
                    out[i] = y[j * B : (j + 1) * B]
            else:
                for i, c in group:
                    out[i] = _check_output(net(x, t, c), x.shape, i)
        for i, y in enumerate(out):
            kind = self.models[i].prediction
            if y is not None and kind != self.prediction:
                co = self.schedule.coefficients(t)
                pair = to_pair(y, kind, x, co.a, co.b, co.da, co.db)
                out[i] = from_pair(pair, self.prediction, co.a, co.b, co.da, co.db)
        return out

    def __call__(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        self.last_parts = self.parts(x, t, cond)
        total = None
        for w, y in zip(self.weights, self.last_parts, strict=True):
            if y is not None:
                total = w * y if total is None else total + w * y
        return total

    def __repr__(self) -> str:
        return f"Combine({self.models!r}, weights={self.weights}, space={self.prediction!r})"


class Clipped:
    r"""``model`` with its denoised guess held inside the data's region (lesson 20, eq. 20.10):
    $\hat x_0 \mapsto \operatorname{clip}(\hat x_0)$, $\hat\varepsilon \mapsto (x_t - a_t\hat x_0)/b_t$.

    The pair is kept consistent with $x_t = a_t\hat x_0 + b_t\hat\varepsilon$ (eq. 0.1), so every sampler, rule and
    combination sees the clipped model as an ordinary model of the same ``prediction``. Near $t_{\max}$ an
    eps-model's $\hat x_0 = (x_t - b_t\hat\varepsilon)/a_t$ multiplies its error by $b_t/a_t$ (154 at the end of
    ``su_linear``); the clip stops a deterministic sampler from carrying that error to the end (lesson 20, sec. 20.8).
    Where $\hat x_0$ lies inside the region the model is unchanged.

    Parameters
    ----------
    model : Model
        Any model with the one interface.
    schedule : Schedule
        The schedule it was trained on (for $a_t, b_t$).
    bound : float
        $c > 0$, the size of the region.
    region : {"box", "ball"}
        ``"box"``: every coordinate of $\hat x_0$ is clipped to $[-c, c]$ (images in $[-1, 1]$: $c = 1$);
        ``"ball"``: $\hat x_0$ is scaled onto the ball $|\hat x_0| \le c$ of each sample where it lies outside
        (a toy: a little more than the data's largest radius).

    Raises
    ------
    TypeError
        If ``model`` does not follow the one interface or ``schedule`` is not a Schedule.
    ValueError
        If ``bound`` is not a finite number > 0 or ``region`` is unknown; at a call, if $b_t = 0$ (at the data end there is nothing to clip
        against: $x_0 = x_t$).
    """

    def __init__(self, model: Model, schedule: Schedule, bound: float, region: str = "box") -> None:
        self.model = check_model(model)
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a diffmath Schedule, got {type(schedule).__name__}")
        if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not 0 < bound < math.inf:
            raise ValueError(f"bound must be a finite number > 0 (the box [-bound, bound] of x0), got {bound!r}")
        if region not in ("box", "ball"):
            raise ValueError(f"region must be 'box' or 'ball', got {region!r}")
        self.schedule, self.bound, self.region, self.prediction = schedule, float(bound), region, model.prediction

    def __call__(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        x = check_batch(x, "x")
        t = as_tensor(t, "t", x)
        t = t.expand(x.shape[0]) if t.dim() == 0 else t
        co = self.schedule.coefficients(t)
        if bool((co.b == 0).any()):
            raise ValueError("Clipped cannot clip at a time where b_t = 0 (the data end): there x0 is x_t itself")
        pair = predict_pair(self.model, x, t, self.schedule, cond)
        if self.region == "box":
            x0 = pair.x0.clamp(-self.bound, self.bound)
        else:
            norm = pair.x0.flatten(1).norm(dim=1).reshape(-1, *[1] * (x.dim() - 1))
            x0 = pair.x0 * (self.bound / norm.clamp(min=self.bound))
        a, b = (c.reshape(-1, *[1] * (x.dim() - 1)) for c in (co.a, co.b))
        return from_pair(Pair(x0, (x - a * x0) / b), self.prediction, co.a, co.b, co.da, co.db)

    def __repr__(self) -> str:
        return f"Clipped({self.model!r}, bound={self.bound:g}, region={self.region!r})"
