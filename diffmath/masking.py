r"""Discrete corruptions of token sequences (lesson 11, secs. 11.3-11.5): masking and editing, exact and learned.

A sequence $x \in \{0..V-1\}^L$ is corrupted at level $t \in 0..L$ by masking $t$ positions chosen uniformly
(``MASK`` marks them) or by substituting $t$ positions with *different* tokens (editing). :class:`TokenLaw` is an
enumerable data law with the exact joint posterior $q(x_0\mid x_t)$ and its factorised marginals
$q(x_0^i\mid x_t)$; :class:`MaskedTokenNet` learns the marginals as a masked language model does, trained by
:class:`MaskedTokenLoss` in the training loop of lesson 3. :func:`token_chain` runs the naive sampler (guess
$\hat x_0$, corrupt it afresh to level $t-1$: eq. 11.10) or the improved one (reveal or correct one position:
eqs. 11.11-11.12).

The state is discrete and every step draws categorical tokens, which the Gaussian update rules of the one sampler loop
(``mean + std * z``) cannot express: the chain is its own short loop, with the same yields.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn

from diffmath.core._validate import check_choice, check_int
from diffmath.train.training import Draws, as_draws

MASK = -1
"""The masked token."""


def _check_tokens(x: object, L: int, V: int, allow_mask: bool, name: str = "x") -> Tensor:
    if not isinstance(x, Tensor) or x.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"{name} must be an integer tensor of tokens, shape (B, {L}), got {type(x).__name__}")
    if x.dim() != 2 or x.shape[1] != L:
        raise ValueError(f"{name} must have shape (B, {L}), got {tuple(x.shape)}")
    low = MASK if allow_mask else 0
    if (x < low).any() or (x >= V).any():
        raise ValueError(f"{name} holds tokens outside {'MASK or ' if allow_mask else ''}0..{V - 1}")
    return x.long()


class TokenLaw:
    r"""An enumerable law on $\{0..V-1\}^L$ with exact posteriors under masking and editing (lesson 11, eq. 11.8).

    Parameters
    ----------
    probs : Tensor, shape (V**L,)
        The probability of each sequence, in lexicographic order (token 0 of position 0 varies slowest).
    L, V : int
        Length and vocabulary size.

    Raises
    ------
    ValueError
        If ``probs`` has the wrong length, a negative entry, or does not sum to 1 (to 1e-9).
    """

    def __init__(self, probs: Tensor, L: int, V: int) -> None:
        self.L, self.V = check_int(L, "L"), check_int(V, "V", low=2)
        probs = torch.as_tensor(probs, dtype=torch.float64)
        if probs.shape != (V**L,) or (probs < 0).any() or abs(probs.sum().item() - 1) > 1e-9:
            raise ValueError(f"probs must be {V**L} non-negative numbers summing to 1 (one per sequence)")
        self.probs = probs / probs.sum()
        self.states = torch.tensor(list(itertools.product(range(V), repeat=L)), dtype=torch.long)  # (S, L)

    def index(self, x: Tensor) -> Tensor:
        r"""The lexicographic index of each sequence in ``x`` (lesson 11, eq. 11.8).

        Parameters
        ----------
        x : Tensor of int, shape (B, L)

        Returns
        -------
        Tensor of int, shape (B,)

        Raises
        ------
        TypeError, ValueError
            If ``x`` is not a (B, L) tensor of tokens in 0..V-1.
        """
        x = _check_tokens(x, self.L, self.V, False)
        return (x * self.V ** torch.arange(self.L - 1, -1, -1)).sum(1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        r"""``n`` exact draws from the law (lesson 11, eq. 11.8).

        Parameters
        ----------
        n : int
            Number of sequences.
        generator : torch.Generator, optional

        Returns
        -------
        Tensor of int, shape (n, L)

        Raises
        ------
        ValueError
            If ``n`` is not a positive integer.
        """
        idx = torch.multinomial(self.probs, check_int(n, "n"), replacement=True, generator=generator)
        return self.states[idx]

    def posterior(self, x_t: Tensor, kind: str = "mask", t: Tensor | None = None) -> Tensor:
        r"""$q(x_0\mid x_t)$ over all $V^L$ sequences (lesson 11, eq. 11.8).

        Masking: the law restricted to the sequences that agree with $x_t$ off its masks. Editing at level $t$: the
        law restricted to the sequences that differ from $x_t$ in exactly $t$ positions (every such $x_0$ has the
        same kernel probability $1/\binom{L}{t}(V-1)^t$).

        Parameters
        ----------
        x_t : Tensor of int, shape (B, L)
            Corrupted sequences (``MASK`` allowed for masking).
        kind : {"mask", "edit"}
            The corruption.
        t : Tensor of int, shape (B,), optional
            The levels, needed for editing.

        Returns
        -------
        Tensor, shape (B, V**L)
            Rows sum to 1.

        Raises
        ------
        ValueError
            On an unknown ``kind``, bad tokens, a missing ``t`` for editing, or a corrupted sequence no data
            sequence can produce.
        """
        kind = check_choice(kind, "kind", ("mask", "edit"))
        if kind == "mask":
            x_t = _check_tokens(x_t, self.L, self.V, True, "x_t")
            w = self.probs[None] * ((self.states[None] == x_t[:, None]) | (x_t[:, None] == MASK)).all(-1)
        else:
            if t is None:
                raise ValueError("editing posteriors need the level t of each row (the number of substitutions)")
            x_t = _check_tokens(x_t, self.L, self.V, False, "x_t")
            diff = (self.states[None] != x_t[:, None]).sum(-1)  # (B, S) Hamming distances
            w = self.probs[None] * (diff == t.long()[:, None])
        total = w.sum(1, keepdim=True)
        if (total == 0).any():
            raise ValueError("no data sequence can produce this corrupted sequence (posterior mass 0)")
        return w / total

    def marginals(self, x_t: Tensor, kind: str = "mask", t: Tensor | None = None) -> Tensor:
        r"""The factorised posterior $q(x_0^i = v\mid x_t)$ (lesson 11, eq. 11.9).

        Parameters
        ----------
        x_t, kind, t
            As :meth:`posterior`.

        Returns
        -------
        Tensor, shape (B, L, V)

        Raises
        ------
        ValueError
            As :meth:`posterior`.
        """
        post = self.posterior(x_t, kind, t)  # (B, S)
        onehot = nn.functional.one_hot(self.states, self.V).to(post.dtype)  # (S, L, V)
        return torch.einsum("bs,slv->blv", post, onehot)


class MaskedTokenNet(nn.Module):
    r"""A small masked language model: an MLP from a masked sequence to the marginals $q(x_0^i\mid x_t)$ at every
    position (lesson 11, eq. 11.9). Unmasked positions are returned as one-hot on their own token.

    Parameters
    ----------
    L, V : int
        Length and vocabulary size.
    width : int
        Hidden width.

    Raises
    ------
    ValueError
        If a size is not a positive integer.
    """

    def __init__(self, L: int, V: int, width: int = 128) -> None:
        super().__init__()
        self.L, self.V = check_int(L, "L"), check_int(V, "V", low=2)
        self.net = nn.Sequential(
            nn.Linear(L * (V + 1), check_int(width, "width")),
            nn.SiLU(),
            nn.Linear(width, width),
            nn.SiLU(),
            nn.Linear(width, L * V),
        )

    def logits(self, x_t: Tensor) -> Tensor:
        r"""Unnormalised log marginals, shape (B, L, V) (lesson 11, eq. 11.9).

        Parameters
        ----------
        x_t : Tensor of int, shape (B, L)
            Masked sequences.

        Returns
        -------
        Tensor, shape (B, L, V)

        Raises
        ------
        TypeError, ValueError
            If ``x_t`` is not a (B, L) tensor of tokens or ``MASK``.
        """
        x_t = _check_tokens(x_t, self.L, self.V, True, "x_t")
        inp = nn.functional.one_hot(torch.where(x_t == MASK, self.V, x_t), self.V + 1)
        dtype = next(self.parameters()).dtype
        return self.net(inp.reshape(x_t.shape[0], -1).to(dtype)).reshape(-1, self.L, self.V)

    def marginals(self, x_t: Tensor, kind: str = "mask", t: Tensor | None = None) -> Tensor:
        r"""$q_\theta(x_0^i\mid x_t)$, with the unmasked positions fixed (lesson 11, eq. 11.9).

        Parameters
        ----------
        x_t : Tensor of int, shape (B, L)
            Masked sequences.
        kind : {"mask"}
            Only masking.
        t : ignored
            For the interface of :meth:`TokenLaw.marginals`.

        Returns
        -------
        Tensor, shape (B, L, V)

        Raises
        ------
        ValueError
            If ``kind`` is not "mask".
        """
        if kind != "mask":
            raise ValueError("MaskedTokenNet is a masked model: kind must be 'mask'")
        with torch.no_grad():
            p = torch.softmax(self.logits(x_t).double(), -1)
        known = nn.functional.one_hot(x_t.clamp_min(0).long(), self.V).double()
        return torch.where((x_t == MASK)[..., None], p, known)


class MaskedTokenLoss:
    r"""Cross-entropy of the masked positions, $t$ uniform on $1..L$ masks chosen uniformly (lesson 10, eq. 10.5;
    lesson 11, eq. 11.9), for :func:`~diffmath.train.training.train` (``data``: tokens stored as floats).

    Parameters
    ----------
    L : int
        Sequence length.

    Raises
    ------
    ValueError
        If ``L`` is not a positive integer.
    """

    def __init__(self, L: int) -> None:
        self.L = check_int(L, "L")

    def __call__(self, model: nn.Module, x0: Tensor, generator: Draws | torch.Generator, cond: Tensor | None = None):
        draws = as_draws(generator)
        tokens = x0.round().long()
        B = tokens.shape[0]
        t = draws.randint(1, self.L + 1, (B,), tokens.device)
        rank = draws.rand((B, self.L), torch.float64, tokens.device).argsort(1).argsort(1)
        masked = rank < t[:, None]  # t positions chosen uniformly
        x_t = torch.where(masked, MASK, tokens)
        logits = model.logits(x_t)
        ce = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens.reshape(-1), reduction="none")
        return (ce.reshape(B, self.L) * masked).sum() / masked.sum()

    def __repr__(self) -> str:
        return f"masked_token_loss(L={self.L})"


def _categorical(p: Tensor, generator: torch.Generator | None) -> Tensor:
    flat = p.reshape(-1, p.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).reshape(p.shape[:-1])


def corrupt_tokens(
    x0: Tensor, t: int, kind: str = "mask", V: int | None = None, generator: torch.Generator | None = None
) -> Tensor:
    r"""Corrupt each row at $t$ uniformly chosen positions: ``MASK`` them, or substitute a different token, uniformly
    among the other $V - 1$ (lesson 11, eq. 11.8).

    Parameters
    ----------
    x0 : Tensor of int, shape (B, L)
        Clean sequences.
    t : int
        Positions to corrupt, in $0..L$.
    kind : {"mask", "edit"}
        The corruption.
    V : int, optional
        Vocabulary size (needed for editing).
    generator : torch.Generator, optional

    Returns
    -------
    Tensor of int, shape (B, L)

    Raises
    ------
    ValueError
        If ``t`` is not in $0..L$, ``kind`` is unknown or ``V`` is missing for editing.
    """
    kind = check_choice(kind, "kind", ("mask", "edit"))
    B, L = x0.shape
    if not isinstance(t, int) or not 0 <= t <= L:
        raise ValueError(f"t must be an integer in 0..{L}, got {t!r}")
    pick = torch.rand(B, L, generator=generator).argsort(1).argsort(1) < t
    if kind == "mask":
        return torch.where(pick, MASK, x0)
    if V is None:
        raise ValueError("editing substitutes other tokens: give the vocabulary size V")
    shift = torch.randint(1, V, (B, L), generator=generator)  # a different token, uniformly
    return torch.where(pick, (x0 + shift) % V, x0)


def token_chain(
    posterior: TokenLaw | MaskedTokenNet,
    x: Tensor,
    kind: str = "mask",
    method: str = "improved",
    factorised: bool = True,
    generator: torch.Generator | None = None,
):
    r"""Run a discrete corruption backwards from level $L$ to 0, yielding the state after each step (lesson 11,
    eqs. 11.10-11.12).

    ``method="naive"``: draw $\hat x_0 \sim q(x_0\mid x_t)$ (the joint posterior, or position by position from the
    marginals if ``factorised``) and corrupt it afresh at $t-1$ uniform positions (eq. 11.10, Su's basic sampler).
    ``method="improved"``: masking reveals one uniformly chosen masked position from its marginal (eq. 11.12);
    editing draws $\hat x_0$ from the joint posterior (exactly $t$ differences) and corrects one of them (eq. 11.11).

    Parameters
    ----------
    posterior : TokenLaw or MaskedTokenNet
        Gives :meth:`~TokenLaw.marginals` (and, for the joint draws, :meth:`~TokenLaw.posterior`).
    x : Tensor of int, shape (B, L)
        The start at level $L$: all ``MASK`` for masking; for editing a draw of $x_L$.
    kind : {"mask", "edit"}
        The corruption.
    method : {"naive", "improved"}
        The sampler.
    factorised : bool
        Naive masking only: draw $\hat x_0$ from the marginals instead of the joint posterior.
    generator : torch.Generator, optional

    Yields
    ------
    (int, Tensor)
        The level reached and the state, shape (B, L).

    Raises
    ------
    ValueError
        On an unknown ``kind``/``method``, a joint draw from a model that has only marginals, or editing with
        factorised draws.
    """
    kind = check_choice(kind, "kind", ("mask", "edit"))
    method = check_choice(method, "method", ("naive", "improved"))
    joint = not factorised or kind == "edit"
    if joint and not isinstance(posterior, TokenLaw):
        raise ValueError("joint posterior draws need a TokenLaw; a MaskedTokenNet gives only marginals")
    if kind == "edit" and factorised and method == "naive":
        raise ValueError("editing draws x0 from the joint posterior: use factorised=False")
    L, V = posterior.L, posterior.V
    x = _check_tokens(x, L, V, kind == "mask").clone()
    B = x.shape[0]
    for t in range(L, 0, -1):
        level = torch.full((B,), t)
        if kind == "mask" and method == "improved":
            masked = x == MASK
            pick = (torch.rand(B, L, generator=generator) * masked).argmax(1)  # one masked position, uniformly
            probs = posterior.marginals(x)[torch.arange(B), pick]
            x[torch.arange(B), pick] = _categorical(probs, generator)
        else:
            if joint:
                x0 = posterior.states[_categorical(posterior.posterior(x, kind, level), generator)]
            else:
                x0 = torch.where(x == MASK, _categorical(posterior.marginals(x), generator), x)
            if method == "naive":
                x = corrupt_tokens(x0, t - 1, kind, V, generator)
            else:  # editing, improved: correct one of the t differing positions
                differ = x0 != x
                pick = (torch.rand(B, L, generator=generator) * differ).argmax(1)
                x[torch.arange(B), pick] = x0[torch.arange(B), pick]
        yield t - 1, x.clone()


def total_variation(samples: Tensor, law: TokenLaw) -> float:
    r"""$\tfrac12\sum_x |\hat p(x) - p(x)|$ between the empirical law of ``samples`` and ``law`` (lesson 11, sec. 11.5).

    Parameters
    ----------
    samples : Tensor of int, shape (N, L)
    law : TokenLaw

    Returns
    -------
    float

    Raises
    ------
    TypeError, ValueError
        If ``samples`` is not a (N, L) tensor of tokens.
    """
    counts = torch.bincount(law.index(samples), minlength=law.probs.numel()).double()
    return 0.5 * (counts / counts.sum() - law.probs).abs().sum().item()


def tv_floor(law: TokenLaw, n: int, repeats: int = 20, generator: torch.Generator | None = None) -> tuple[float, float]:
    r"""The Monte Carlo floor: mean and standard deviation of the total variation of ``n`` exact draws (lesson 11,
    sec. 11.5), the smallest a sampler's measured TV can be.

    Parameters
    ----------
    law : TokenLaw
    n : int
        Draws per repeat.
    repeats : int
        Repeats, >= 2.
    generator : torch.Generator, optional

    Returns
    -------
    (float, float)

    Raises
    ------
    ValueError
        If ``n`` or ``repeats`` is not a positive integer (``repeats`` >= 2).
    """
    check_int(repeats, "repeats", low=2)
    tv = torch.tensor([total_variation(law.sample(n, generator), law) for _ in range(repeats)])
    return tv.mean().item(), tv.std().item()
