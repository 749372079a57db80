r"""Several attributes guiding one unconditional model at once (lesson 22): the vanilla sum and Z-Magic.

Guidance adds $\gamma\,G(x_t)$ to the score, with $G$ an estimate of $\nabla_{x_t}\log p(c_1, \dots, c_n \mid x_t)$
(lesson 22, eq. 22.1). The vanilla rule (FreeDoM's) sums the attributes' gradients, which is right only when the
attributes are independent given $x_t$. Z-Magic writes the joint by the chain rule,
$\log p(c_1, c_2\mid x_t) = \log p(c_1\mid x_t) + \log p(c_2\mid c_1, x_t)$, and estimates the second term at the
look-ahead $\hat x$, one reverse step guided by $c_1$ alone; its gradient comes back to $x_t$ through the Jacobian of
that step, as ONE vector-Jacobian product (eq. 22.6). For $n \ge 3$ attributes every ordered pair gives such a joint
gradient and CAGrad combines them (Algorithm 22.2).

:class:`MultiGuided` is a model with the one interface (it predicts ``"eps"``): every sampler of lessons 3-6 takes it
unchanged, and it has no loop of its own. Attributes are either exact, time-dependent likelihoods (the mixtures of
lesson 0: :class:`ExactAttribute`) or energies on the denoised guess $\hat x_0(x_t)$ (:class:`TweedieEnergy`, eq. 22.8),
the zero-shot setting of the paper.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from diffmath.core._validate import as_tensor, check_choice, check_int, check_real, check_schedule
from diffmath.core.models import Model, check_model
from diffmath.core.notation import Pair, to_pair
from diffmath.core.schedules import Schedule
from diffmath.exact.mixtures import GaussianMixture, check_components
from diffmath.guide.guidance import _scale
from diffmath.guide.multi import _floats, _one_time
from diffmath.sampling.loop import Step
from diffmath.sampling.samplers import ddim_rule

METHODS = ("none", "vanilla", "lookahead", "zmagic", "pairs")
r"""The rules of :class:`MultiGuided`: no guidance; the sum of gradients (eq. 22.2); the look-ahead without the
Jacobian (eq. 22.6 with $J = I$); Z-Magic for two attributes (eq. 22.6, Algorithm 22.1); every ordered pair combined by
CAGrad (Algorithm 22.2)."""


# ------------------------------------------------------------------------------------------------------ attributes
class ExactAttribute:
    r"""The exact attribute "$x_0$ came from one of the components $C$" of a Gaussian mixture: $\log p(k\in C\mid x_t)$
    at any time (lesson 22, eq. 22.1; lesson 0, eq. 0.19).

    Parameters
    ----------
    mixture : GaussianMixture
        The data distribution.
    schedule : Schedule
        The forward process (gives $a_t, b_t$).
    components : sequence of int
        The components $C$ that satisfy the attribute.

    Raises
    ------
    TypeError
        If ``mixture`` is not a GaussianMixture or ``schedule`` not a Schedule.
    ValueError
        If ``components`` is not a non-empty set of distinct component indices.
    """

    needs_pair = False

    def __init__(self, mixture: GaussianMixture, schedule: Schedule, components: Sequence[int]) -> None:
        if not isinstance(mixture, GaussianMixture):
            raise TypeError(f"mixture must be a GaussianMixture, got {type(mixture).__name__}")
        self.mixture, self.schedule = mixture, check_schedule(schedule)
        self.components = check_components(components, mixture.K)

    def __call__(self, x: Tensor, t: Tensor, pair: Pair | None = None) -> Tensor:
        c = self.schedule.coefficients(as_tensor(t, "t", x))
        return self.mixture.log_prob_of_components(x, c.a.to(x.dtype), c.b.to(x.dtype), self.components)

    def __repr__(self) -> str:
        return f"ExactAttribute(components={self.components.tolist()})"


class TweedieEnergy:
    r"""An attribute as an energy on the denoised guess, $\log p(c\mid x_t) \approx -\rho\,E(c, \hat x_0(x_t))$
    (lesson 22, eq. 22.8): the zero-shot likelihood of the paper (and of FreeDoM), differentiable through the
    denoiser.

    Parameters
    ----------
    energy : callable
        ``energy(x0) -> Tensor (B,)``, differentiable: lower means "more like the attribute" (e.g.
        :func:`classifier_energy`).
    weight : float
        $\rho \ge 0$.

    Raises
    ------
    TypeError
        If ``energy`` is not callable.
    ValueError
        If ``weight`` is not a finite number >= 0.
    """

    needs_pair = True

    def __init__(self, energy: Callable[[Tensor], Tensor], weight: float = 1.0) -> None:
        if not callable(energy):
            raise TypeError(f"energy must be callable as energy(x0) -> (B,), got {type(energy).__name__}")
        self.energy, self.weight = energy, _scale(weight)

    def __call__(self, x: Tensor, t: Tensor, pair: Pair | None = None) -> Tensor:
        if pair is None:
            raise ValueError("a TweedieEnergy needs the denoised pair at x_t")
        return -self.weight * self.energy(pair.x0)

    def __repr__(self) -> str:
        return f"TweedieEnergy({self.energy!r}, weight={self.weight:g})"


class classifier_energy:
    r"""The cross-entropy of a classifier's reading of $\hat x_0$ as an energy, $E = -\log p_\phi(c\mid\hat x_0)$
    (lesson 22, eq. 22.8).

    Parameters
    ----------
    classifier : nn.Module
        Returns a dict of logits per attribute (e.g. :class:`~diffmath.metrics.AttributeClassifier`), or a tensor of
        logits when ``attribute`` is ``None``.
    attribute : str or None
        Which head.
    target : int or Tensor of shape (B,)
        The requested class.

    Raises
    ------
    TypeError
        If ``classifier`` is not an ``nn.Module``.
    ValueError
        If ``target`` is not a non-negative integer or integer tensor; a call raises it when ``attribute`` is not a
        head of the classifier.
    """

    def __init__(self, classifier: nn.Module, attribute: str | None, target: int | Tensor) -> None:
        if not isinstance(classifier, nn.Module):
            raise TypeError(f"classifier must be an nn.Module, got {type(classifier).__name__}")
        if isinstance(target, Tensor):
            if target.is_floating_point() or target.dim() > 1 or (target < 0).any():
                raise ValueError("target must be a non-negative integer tensor of shape () or (B,)")
        else:
            check_int(target, "target", 0)
        self.classifier, self.attribute, self.target = classifier, attribute, target

    def __call__(self, x0: Tensor) -> Tensor:
        out = self.classifier(x0.clamp(-1, 1))
        if self.attribute is not None:
            if not isinstance(out, dict) or self.attribute not in out:
                raise ValueError(f"the classifier has no head {self.attribute!r}")
            out = out[self.attribute]
        target = torch.as_tensor(self.target, device=out.device).expand(out.shape[0])
        return nn.functional.cross_entropy(out, target, reduction="none")

    def __repr__(self) -> str:
        return f"classifier_energy({self.attribute!r} = {self.target!r})"


# --------------------------------------------------------------------------------------------------------- CAGrad
def cagrad(grads: Tensor, c: float = 0.5, iters: int = 100, rescale: bool = False) -> Tensor:
    r"""Conflict-averse combination of $K$ gradients per sample (CAGrad; lesson 22, eq. 22.7).

    With $g_0 = \frac1K\sum_k G_k$ and $g_w = \sum_k w_k G_k$, the weights solve
    $w^\star = \arg\min_{w \in \Delta} g_w^\top g_0 + c\,\|g_0\|\,\|g_w\|$ over the simplex (projected gradient
    descent on the $K\times K$ Gram matrix, in float64), and the direction is
    $d = g_0 + c\,\|g_0\|\,g_{w^\star}/\|g_{w^\star}\|$: at $c = 0$ the mean, and always
    $\|d - g_0\| = c\,\|g_0\|$. With ``rescale`` the result is divided by $1 + c^2$ (the CAGrad authors' code).

    Parameters
    ----------
    grads : Tensor, shape (K, B, ...)
        The gradients, $K \ge 1$ per sample.
    c : float
        $c \ge 0$.
    iters : int
        Projected-gradient iterations.
    rescale : bool
        Divide by $1 + c^2$.

    Returns
    -------
    Tensor, shape (B, ...)

    Raises
    ------
    TypeError
        If ``grads`` is not a floating tensor.
    ValueError
        If ``grads`` has fewer than 2 dimensions, ``c`` is not a finite number >= 0 or ``iters`` not a positive
        integer.
    """
    if not isinstance(grads, Tensor) or not grads.is_floating_point():
        raise TypeError(f"grads must be a floating tensor of shape (K, B, ...), got {type(grads).__name__}")
    if grads.dim() < 2:
        raise ValueError(f"grads must have shape (K, B, ...), got {tuple(grads.shape)}")
    c = _scale(c)
    check_int(iters, "iters")
    K, B = grads.shape[:2]
    flat = grads.reshape(K, B, -1).transpose(0, 1).to(torch.float64)  # (B, K, D)
    g0 = flat.mean(1)  # (B, D)
    if c == 0:
        return g0.to(grads.dtype).reshape(grads.shape[1:])
    gram = flat @ flat.transpose(1, 2)  # (B, K, K)
    lin = gram.mean(2)  # G g0
    norm0 = gram.mean((1, 2)).clamp_min(0).sqrt()  # ||g0||
    w = torch.full((B, K), 1.0 / K, dtype=torch.float64, device=grads.device)
    lipschitz = gram.diagonal(dim1=1, dim2=2).sum(1).clamp_min(1e-300)  # >= the largest eigenvalue
    step = (1.0 / lipschitz)[:, None]
    for _ in range(iters):
        gw_norm = torch.einsum("bk,bkl,bl->b", w, gram, w).clamp_min(1e-300).sqrt()
        grad_w = lin + (c * norm0 / gw_norm)[:, None] * torch.einsum("bkl,bl->bk", gram, w)
        w = _project_simplex(w - step * grad_w)
    gw = torch.einsum("bk,bkd->bd", w, flat)
    gw_norm = gw.norm(dim=1, keepdim=True)
    d = g0 + torch.where(gw_norm > 0, c * norm0[:, None] * gw / gw_norm.clamp_min(1e-300), torch.zeros_like(gw))
    if rescale:
        d = d / (1 + c * c)
    return d.to(grads.dtype).reshape(grads.shape[1:])


def _project_simplex(v: Tensor) -> Tensor:
    """Euclidean projection of each row of ``v`` onto the probability simplex (sort-based, exact)."""
    u, _ = torch.sort(v, dim=1, descending=True)
    css = u.cumsum(1) - 1
    k = torch.arange(1, v.shape[1] + 1, dtype=v.dtype, device=v.device)
    rho = (u - css / k > 0).sum(1, keepdim=True)
    theta = css.gather(1, rho - 1) / rho
    return (v - theta).clamp_min(0)


# ---------------------------------------------------------------------------------------------------- the guided model
def _cos(u: Tensor, v: Tensor) -> float:
    """Mean over the batch of the per-sample cosine between two batches of vectors."""
    u, v = u.detach().flatten(1).double(), v.detach().flatten(1).double()
    den = (u.norm(dim=1) * v.norm(dim=1)).clamp_min(1e-300)
    return float(((u * v).sum(1) / den).mean())


class MultiGuided:
    r"""An unconditional model guided by several attributes at once (lesson 22): a model with the one interface that
    predicts ``"eps"``, $\tilde\varepsilon = \hat\varepsilon - \gamma\,b_t\,G(x_t)$ (eq. 22.1), for any sampler.

    ``method`` chooses $G$, with $g_i(y, \tau) = \nabla_y \log p(c_i\mid y)$ at time $\tau$:

    * ``"vanilla"``: $G = \sum_i g_i(x_t, t)$ (eq. 22.2).
    * ``"zmagic"`` (two attributes, in the given order): $G = g_1(x_t, t) + J^\top g_2(\hat x, s)$ with $\hat x$ the
      mean of one DDIM($\eta$) step from $t$ to $s = t - h$ guided by $c_1$ alone and $J = \partial\hat x/\partial x_t$
      (through the network and the Hessian of $\log p(c_1\mid x_t)$; eq. 22.6), computed as one vector-Jacobian
      product.
    * ``"lookahead"``: the same with $J$ replaced by the identity (the ablation: does the Jacobian matter?).
    * ``"pairs"`` ($n \ge 2$): $G_{ij}$ as ``"zmagic"`` for every ordered pair $i \ne j$, combined by
      :func:`cagrad` with ``c`` and multiplied by $n/2$, so that with $J = I$ and ``c = 0`` it is the vanilla sum
      (the mean of the pairs is $2/n$ of it; Algorithm 22.2).
    * ``"none"``: the model's own prediction.

    Guidance is off for $t$ below ``stop_below`` (FreeDoM's last steps). Each call appends a dict to :attr:`trace`
    (the time, the cosine between the attributes' gradients at $x_t$, for ``"zmagic"`` the cosine between $g_1$ and
    the pulled-back term, and the norms), when ``diagnostics`` is on.

    Parameters
    ----------
    model : Model
        The unconditional model (any parameterisation).
    schedule : Schedule
        Its forward process.
    attributes : sequence of callables
        ``attribute(x, t, pair) -> Tensor (B,)``: $\log p(c_i\mid x_t)$, differentiable in ``x`` (``pair`` is the
        denoised pair at ``x``, with its graph): :class:`ExactAttribute`, :class:`TweedieEnergy` or your own.
    method : str
        One of :data:`METHODS`.
    scale : float
        $\gamma \ge 0$.
    lookahead : float, optional
        The look-ahead's step $h > 0$ in the schedule's time units (the sampler grid's spacing); needed by
        ``"zmagic"``, ``"lookahead"`` and ``"pairs"``.
    eta : float
        The look-ahead step's $\eta$ (0: DDIM's deterministic mean; 1: DDPM's posterior mean). The look-ahead is
        the step's mean, without its noise.
    c : float
        CAGrad's $c \ge 0$ (``"pairs"``).
    stop_below : float
        No guidance at times below this.
    diagnostics : bool
        Record :attr:`trace`.

    Raises
    ------
    TypeError
        If ``model`` does not follow the one interface, ``schedule`` is not a Schedule or an attribute is not callable.
    ValueError
        If ``method`` is unknown, the number of attributes does not fit it (``"zmagic"`` and ``"lookahead"`` take
        two, ``"pairs"`` at least two, ``"vanilla"`` at least one), ``lookahead`` is missing or not > 0 where needed,
        or ``scale``, ``eta``, ``c`` or ``stop_below`` is out of range. A call raises it where the batch holds
        several times or the time has $a_t = 0$.
    """

    prediction = "eps"

    def __init__(
        self,
        model: Model,
        schedule: Schedule,
        attributes: Sequence[Callable],
        method: str = "zmagic",
        scale: float = 1.0,
        lookahead: float | None = None,
        eta: float = 0.0,
        c: float = 0.5,
        stop_below: float = 0.0,
        diagnostics: bool = False,
    ) -> None:
        self.model, self.schedule = check_model(model), check_schedule(schedule)
        self.method = check_choice(method, "method", METHODS)
        if isinstance(attributes, (str, bytes)) or not isinstance(attributes, Sequence):
            raise TypeError("attributes must be a sequence of callables attribute(x, t, pair) -> (B,)")
        if not all(callable(a) for a in attributes):
            raise TypeError("every attribute must be callable as attribute(x, t, pair) -> (B,)")
        n = len(attributes)
        need = {"zmagic": (2, 2), "lookahead": (2, 2), "pairs": (2, None), "vanilla": (1, None), "none": (0, None)}
        lo, hi = need[method]
        if n < lo or (hi is not None and n > hi):
            many = f"exactly {lo}" if hi == lo else f"at least {lo}"
            raise ValueError(f"method {method!r} takes {many} attributes, got {n}")
        if method in ("zmagic", "lookahead", "pairs"):
            if lookahead is None:
                raise ValueError(
                    f"method {method!r} needs lookahead, the time step h > 0 of its look-ahead (the sampler's spacing)"
                )
            if not check_real(lookahead, "lookahead") > 0:
                raise ValueError(f"lookahead must be > 0, got {lookahead!r}")
        self.attributes, self.scale, self.lookahead = list(attributes), _scale(scale), lookahead
        self.eta, self.c = _scale(eta), _scale(c)
        self.stop_below = check_real(stop_below, "stop_below")
        self.diagnostics = bool(diagnostics)
        self.rule = ddim_rule(self.eta)
        self.trace: list[dict] = []

    # -- pieces
    def _time(self, x: Tensor, t: Tensor) -> tuple[Tensor, float]:
        t, value = _one_time(t, x, "MultiGuided")
        return (t if t.dim() else t.expand(x.shape[0])), value

    def _pair(self, y: Tensor, time: Tensor, coefs: tuple, cond: Tensor | None) -> Pair:
        if coefs[0] == 0:
            raise ValueError("guidance needs a_t > 0 (start the grid below the time where the signal vanishes)")
        return to_pair(self.model(y, time, cond), self.model.prediction, y, *coefs)

    def _grad(self, i: int, y: Tensor, time: Tensor, pair: Pair | None, create_graph: bool) -> Tensor:
        lp = self.attributes[i](y, time, pair)
        if not isinstance(lp, Tensor) or lp.shape != (y.shape[0],):
            got = tuple(lp.shape) if isinstance(lp, Tensor) else type(lp).__name__
            raise ValueError(f"attribute {i} must return a tensor of shape (B,) = ({y.shape[0]},), got {got}")
        (g,) = torch.autograd.grad(lp.sum(), y, create_graph=create_graph, retain_graph=True)
        return g

    def _at_lookahead(self, xh: Tensor, s: float, cond: Tensor | None, j: int) -> Tensor:
        r"""$g_j(\hat x, s)$, held fixed (a new leaf: no graph back to $x_t$)."""
        y = xh.detach().requires_grad_(True)
        time = torch.full((y.shape[0],), s, dtype=y.dtype, device=y.device)
        pair = self._pair(y, time, _floats(self.schedule, s), cond) if self.attributes[j].needs_pair else None
        return self._grad(j, y, time, pair, False).detach()

    def _lookahead_mean(self, xr: Tensor, pair: Pair, g: Tensor, coefs: tuple, t: float, s: float) -> Tensor:
        a, b = coefs[0], coefs[1]
        eps = pair.eps - self.scale * b * g
        ends = [math.nan if v is None else v for v in (*coefs, *_floats(self.schedule, s))]  # discrete: no da, db
        step = Step(0, 1, t, s, *ends)
        mean, _, _ = self.rule(Pair((xr - b * eps) / a, eps), xr, step, {})
        return mean

    def guidance(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        r"""The model's $\hat\varepsilon$ and the guidance direction $G(x_t)$ of the chosen method (eqs. 22.2-22.7).

        Parameters
        ----------
        x : Tensor, shape (B, ...)
            The state $x_t$.
        t : Tensor, shape (B,) or ()
            One time for the whole batch.
        cond : Tensor, optional
            Passed to the model.

        Returns
        -------
        (Tensor, Tensor)
            $\hat\varepsilon$ and $G$, both detached, of the shape of ``x``.
        """
        time, tv = self._time(x, t)
        coefs = _floats(self.schedule, tv)
        method = "none" if tv < self.stop_below or self.scale == 0 else self.method
        second = method in ("zmagic", "pairs")
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            pair = self._pair(xr, time, coefs, cond)
            if method == "none":
                return pair.eps.detach(), torch.zeros_like(x)
            n = len(self.attributes)
            s = max(tv - self.lookahead, 0.0) if self.lookahead is not None else tv
            used = n if method in ("vanilla", "pairs") or self.diagnostics else 1  # zmagic needs g_2 at x_hat only
            gs = [self._grad(i, xr, time, pair, second and (i == 0 or method == "pairs")) for i in range(used)]
            record = {"t": tv, "norms": [float(g.detach().flatten(1).norm(dim=1).mean()) for g in gs]}
            if used >= 2:
                record["cos"] = _cos(gs[0], gs[1])
            if method == "vanilla":
                G = sum(g.detach() for g in gs)
            elif method == "lookahead":
                xh = self._lookahead_mean(xr, pair, gs[0].detach(), coefs, tv, s)
                G = gs[0].detach() + self._at_lookahead(xh, s, cond, 1)
            else:
                order = [(0, 1)] if method == "zmagic" else [(i, j) for i in range(n) for j in range(n) if i != j]
                heads: dict[int, Tensor] = {}
                joint = []
                for i, j in order:
                    if i not in heads:
                        heads[i] = self._lookahead_mean(xr, pair, gs[i], coefs, tv, s)
                    gh = self._at_lookahead(heads[i], s, cond, j)
                    (term,) = torch.autograd.grad(heads[i], xr, grad_outputs=gh, retain_graph=True)
                    if method == "zmagic":
                        record["cos_term"] = _cos(gs[i].detach(), term)
                        record["term_norm"] = float(term.flatten(1).norm(dim=1).mean())
                    joint.append(gs[i].detach() + term)
                G = joint[0] if method == "zmagic" else cagrad(torch.stack(joint), self.c) * (n / 2)
        if self.diagnostics:
            record["G_norm"] = float(G.flatten(1).norm(dim=1).mean())
            self.trace.append(record)
        return pair.eps.detach(), G.detach()

    def __call__(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        eps, G = self.guidance(x, t, cond)
        _, tv = self._time(x, t)
        return eps - self.scale * _floats(self.schedule, tv)[1] * G

    def __repr__(self) -> str:
        return f"MultiGuided({self.method!r}, {len(self.attributes)} attributes, scale={self.scale:g})"
