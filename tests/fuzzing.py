"""Shared harness of the fuzz suites: strategies for bad inputs and one check of what a call does with them.

A bad call is *good* if it returns a valid result (``expect`` passes) or raises ``ValueError``/``TypeError`` from
inside diffmath/toydata with a message naming the offending argument; *unhelpful* if it raises anything else (an
``IndexError``, a raw torch error, a message that does not name the argument); *silent* if it returns a result that
fails ``expect`` (NaN, wrong shape, or any result where ``expect`` is ``REFUSE``).

``bad_*`` strategies draw inputs that must be refused (pass ``expect=REFUSE``); ``edge_*`` strategies draw legal but
awkward inputs (batch 1, empty batch, float16) that must give a valid result or a clear refusal.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

FUZZ = settings(
    max_examples=25, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
)
REFUSE = None
PACKAGES = ("diffmath", "toydata")
CLEAR = (ValueError, TypeError)


def finite(result: object) -> None:
    """Assert every tensor or float in ``result`` (nested in tuples, lists, dicts, dataclasses) is finite."""
    if hasattr(result, "__dataclass_fields__"):
        result = [getattr(result, f) for f in result.__dataclass_fields__]
    if isinstance(result, (tuple, list, dict)):
        for r in result.values() if isinstance(result, dict) else result:
            finite(r)
    elif isinstance(result, (torch.Tensor, float)):
        assert torch.isfinite(torch.as_tensor(result)).all(), "result holds NaN or inf"


def shaped(*shape: int) -> Callable[[object], None]:
    """``expect`` callback: a finite tensor (or a tuple led by one) of ``shape``."""

    def check(result: object) -> None:
        lead = result[0] if isinstance(result, tuple) else result
        assert isinstance(lead, torch.Tensor), f"result is {type(lead).__name__}, expected a tensor"
        assert tuple(lead.shape) == shape, f"result has shape {tuple(lead.shape)}, expected {shape}"
        finite(result)

    return check


def _raised_inside(err: BaseException) -> bool:
    frames = traceback.extract_tb(err.__traceback__)
    return bool(frames) and any(f"/{p}/" in frames[-1].filename for p in PACKAGES)


def classify(fn: Callable, args: tuple, kwargs: dict, names: str | tuple[str, ...], expect=REFUSE) -> tuple[str, str]:
    """Call ``fn(*args, **kwargs)`` (draining a generator) and return ``(verdict, detail)``, verdict one of
    ``"good"``, ``"unhelpful"``, ``"silent"``."""
    names = (names,) if isinstance(names, str) else tuple(names)
    try:
        result = fn(*args, **kwargs)
        if isinstance(result, Iterator):
            result = list(result)
    except CLEAR as err:
        msg = str(err)
        if not _raised_inside(err):
            return "unhelpful", f"{type(err).__name__} from outside the package: {msg}"
        if not any(re.search(rf"(?<![\w.]){re.escape(n)}(?!\w)", msg) for n in names):
            return "unhelpful", f"{type(err).__name__} does not name {names}: {msg}"
        return "good", msg
    except Exception as err:
        return "unhelpful", f"{type(err).__name__}: {err}"
    if expect is REFUSE:
        return "silent", f"accepted, returned {type(result).__name__}"
    try:
        expect(result)
    except AssertionError as err:
        return "silent", str(err)
    return "good", "valid result"


def check_outcome(fn: Callable, /, *args, names: str | tuple[str, ...], expect=REFUSE, **kwargs) -> None:
    """Assert that a bad call is handled well (see the module docstring); ``names``: the argument(s) at fault."""
    verdict, detail = classify(fn, args, kwargs, names, expect)
    assert verdict == "good", f"{getattr(fn, '__qualname__', fn)} [{names}]: {verdict}: {detail}"


NAN, INF = float("nan"), float("inf")


def _poison(x: torch.Tensor, value: float) -> torch.Tensor:
    y = x.clone()
    y.view(-1)[-1] = value
    return y


def bad_tensors(good: torch.Tensor, fixed_shape: bool = True) -> st.SearchStrategy:
    """Tensors that must be refused where ``good`` (shape (B, ...)) is expected: wrong rank (and, if
    ``fixed_shape``, wrong trailing shape), int/bool/complex dtype, NaN/inf, numpy arrays, lists, None, strings."""
    other = good[..., :1] if good.shape[-1] > 1 else torch.cat([good, good], -1)
    cases = [good[0], good.long(), good > 0, good.to(torch.complex128), _poison(good, NAN), _poison(good, INF)]
    cases += [_poison(good, -INF), good.numpy(), good.tolist(), None, "x"]
    return st.sampled_from(cases + ([good.unsqueeze(-1), other] if fixed_shape else []))


def edge_tensors(good: torch.Tensor) -> st.SearchStrategy:
    """Legal but awkward batches: batch 1, an empty batch, float16 and float32 copies, non-contiguous."""
    return st.sampled_from(
        [good[:1], good[:0], good.half(), good.float(), good.transpose(0, -1).contiguous().transpose(0, -1)]
    )


def bad_reals(low: float | None = 0.0, allow_low: bool = True, several: bool = True) -> st.SearchStrategy:
    """Scalars a parameter >= ``low`` (> ``low`` if not ``allow_low``; any real if ``low`` is None) must refuse:
    below range, NaN, inf, None, bool, strings, complex (and, if ``several``, a tensor of several entries)."""
    other = st.sampled_from(
        [NAN, INF, None, True, "1", 1j, np.float64(NAN), torch.tensor(NAN)] + [torch.ones(7)] * several
    )
    if low is None:
        return other
    return st.one_of(st.floats(max_value=low, exclude_max=allow_low, allow_nan=False, width=32), other)


def bad_times(t_max: float, discrete: bool, batch: int = 3, shapes: bool = True) -> st.SearchStrategy:
    """Times outside ``[0, t_max]``, NaN/inf, non-integers on a discrete schedule, wrong types (and, if ``shapes``,
    tensors of shape (B + 1,) or (B, B + 2) where a scalar or (B,) is expected)."""
    outside = st.one_of(
        st.floats(max_value=-1e-3, min_value=-1e6), st.floats(min_value=t_max * 1.001 + 1e-3, max_value=1e6)
    )
    extra = [NAN, INF, None, "0.5", 1j, torch.tensor([True] * batch), np.array([t_max / 2] * batch)]
    if shapes:
        extra += [torch.full((batch + 1,), t_max / 2), torch.full((batch, batch + 2), t_max / 2)]
    if discrete:
        extra += [t_max / 2 + 0.5, torch.full((batch,), 1.5)]
    return st.one_of(outside, st.sampled_from(extra))


def bad_grids(t_max: float, discrete: bool) -> st.SearchStrategy:
    """Grids that are too short, not strictly decreasing, outside the range, non-finite, off the integers, or not
    1-D tensors."""
    g = torch.linspace(t_max, 0.0, 4, dtype=torch.float64)
    if discrete:
        g = g.round()
    cases = [g[:1], g[:0], g.flip(0), torch.cat([g[:2], g[1:]]), g.reshape(2, 2), g + 2 * t_max, g - t_max]
    cases += [_poison(g, NAN), _poison(g, INF), g.numpy(), g.tolist(), None, 3]
    if discrete:
        cases.append(g - 0.5 * (g > 0))
    return st.sampled_from(cases)


def bad_weights(k: int) -> st.SearchStrategy:
    """Mixture weights that are negative, do not sum to one, hold NaN, have the wrong length or rank, or are not
    tensors."""
    w = torch.full((k,), 1.0 / k, dtype=torch.float64)
    neg = w.clone()
    neg[0] = -neg[0]
    return st.sampled_from([neg, 2 * w, w * 0, _poison(w, NAN), w[:-1], w.reshape(1, k), w.numpy(), None])


def bad_covariances(k: int, d: int) -> st.SearchStrategy:
    """Covariances (full, diagonal or isotropic layouts) that are not positive definite, not symmetric, non-finite,
    or of the wrong shape."""
    eye = torch.eye(d, dtype=torch.float64).expand(k, d, d).clone()
    asym = eye.clone()
    asym[:, 0, -1] = 0.5
    cases = [-eye, 0 * eye, eye * torch.tensor([1.0, -1.0] + [1.0] * (d - 2), dtype=torch.float64), asym]
    cases += [_poison(eye, NAN), eye[:, :1], eye[:-1], -torch.ones(k, dtype=torch.float64), torch.zeros(k, d)]
    return st.sampled_from([*cases, eye.numpy(), None])


def bad_names(valid: tuple[str, ...] = ()) -> st.SearchStrategy:
    """Unknown or mistyped names: other strings, case variants of ``valid``, None, numbers."""
    variants = [v.upper() for v in valid if v.upper() != v] + [v + " " for v in valid] + ["", "nope", None, 0, 1.5]
    return st.one_of(st.sampled_from(variants), st.text(min_size=1, max_size=6)).filter(lambda s: s not in valid)


class FakeModel(torch.nn.Module):
    """A model with the one interface whose output is ``fn(x)``; a float32 linear layer when ``fn`` is None."""

    def __init__(self, fn: Callable | None = None, prediction: object = "eps", dim: int = 2) -> None:
        super().__init__()
        self.fn, self.prediction = fn, prediction
        self.lin = torch.nn.Linear(dim, dim) if fn is None else None

    def forward(self, x, t, cond=None):
        return self.lin(x) if self.fn is None else self.fn(x)


def bad_models(dim: int = 2, outputs: bool = True) -> st.SearchStrategy:
    """Models that must be refused or reported: not callable, no or unknown ``prediction``; if ``outputs``, also
    outputs of another shape, a numpy array, None, NaN, or float32 weights fed a float64 batch."""
    interface = [object(), lambda x, t, cond=None: x, FakeModel(lambda x: x, "nope"), FakeModel(lambda x: x, None)]
    if not outputs:
        return st.sampled_from(interface)
    return st.sampled_from(
        [
            *interface,
            FakeModel(lambda x: x[:, :1]),
            FakeModel(lambda x: x.numpy()),
            FakeModel(lambda x: None),
            FakeModel(lambda x: x.sum()),
            FakeModel(lambda x: x * NAN),
            FakeModel(None, dim=dim),
        ]
    )


def bad_schedules(discrete_ok: bool = True, continuous_ok: bool = True) -> st.SearchStrategy:
    """Things passed as a schedule that are not one (or of the wrong kind)."""
    from diffmath.core.schedules import VPLinear, su_linear

    cases = [None, "vp-linear", 1.0, lambda t: t]
    cases += [] if discrete_ok else [su_linear(10)]
    cases += [] if continuous_ok else [VPLinear()]
    return st.sampled_from(cases)


def bad_labels(batch: int, num_classes: int) -> st.SearchStrategy:
    """Class labels (``cond``) that must be refused: floats, out of range, wrong shape, not tensors."""
    y = torch.zeros(batch, dtype=torch.long)
    return st.sampled_from([y.float(), y + num_classes, y - 2, y[:-1], y.reshape(-1, 1), y.numpy(), y.tolist(), "0"])


# ---- the case tables of the fuzz suites ----------------------------------------------------------------------------
def same(v: object) -> Callable:
    """``expect``: the result (or a sampler's last state) has the shape of the drawn input ``v``."""
    return lambda r: shaped(*v.shape)(r[-1].x if isinstance(r, list) and r else r)


def rows(v: object) -> Callable:
    """``expect``: the result is led by a tensor of shape (B,) for the drawn batch ``v``."""
    return lambda r: shaped(v.shape[0])(r)


@dataclass
class Case:
    """One fuzzed argument: ``fn(**good)`` works; ``fn(**{**good, arg: value})`` for values drawn from ``strategy``
    must be refused (``expect`` REFUSE) or give a result that ``expect(value)`` accepts."""

    module: str
    fn: Callable
    good: dict
    arg: str
    strategy: st.SearchStrategy
    expect: Callable | None = REFUSE
    also: tuple[str, ...] = field(default=())

    @property
    def id(self) -> str:
        owner = getattr(self.fn, "__self__", None)
        if owner is not None:
            name = f"{type(owner).__name__}.{self.fn.__name__}"
        else:
            name = getattr(self.fn, "__qualname__", f"{type(self.fn).__name__}.__call__")
        return f"{self.module}.{name}:{self.arg}:{self.strategy_name}"

    @property
    def strategy_name(self) -> str:
        return "edge" if self.expect is not REFUSE else "bad"


class Cases(list):
    """A suite's table of :class:`Case` rows."""

    def add(self, module: str, fn: Callable, good: dict, arg: str, strategy, expect=REFUSE, also=()) -> None:
        self.append(Case(module, fn, good, arg, strategy, expect, also))

    def batch(self, module: str, fn: Callable, good: dict, arg: str, expect=same, also=(), fixed_shape=True) -> None:
        """A batch argument: bad tensors must be refused, edge batches give a result shaped by ``expect`` or a
        refusal."""
        self.add(module, fn, good, arg, bad_tensors(good[arg], fixed_shape), also=also)
        if expect is not None:
            self.add(module, fn, good, arg, edge_tensors(good[arg]), expect, also)


def outcome(case: Case, value: object) -> tuple[str, str]:
    """``(verdict, detail)`` of calling ``case.fn`` with ``value`` for ``case.arg`` (see :func:`classify`)."""
    expect = REFUSE if case.expect is REFUSE else case.expect(value)
    return classify(case.fn, (), {**case.good, case.arg: value}, (case.arg, *case.also), expect)


def assert_good(case: Case, value: object) -> None:
    verdict, detail = outcome(case, value)
    assert verdict == "good", f"{case.id} with {case.arg}={value!r}: {verdict}: {detail}"
