"""Lesson 9, sec. 9.5: models that compose. ``Conditioned`` binds a condition, ``Combine`` adds predictions where the
sum is linear (eps or score units for any weights, any units when they sum to one), batching calls of one network."""

import pytest
import torch

import diffmath as dm
from diffmath.guide.compose import Combine, Conditioned

f64 = torch.float64
VP = dm.VPLinear(0.0, 20.0)
TWO = dm.GaussianMixture(
    torch.tensor([0.5, 0.5], dtype=f64),
    torch.tensor([[0.6, 0.0], [-0.6, 0.0]], dtype=f64),
    torch.full((2,), 0.25, dtype=f64),
)
X = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=f64)
Y = torch.randint(0, 2, (64,), generator=torch.Generator().manual_seed(1))


def gaussian(mean, var):
    return dm.GaussianMixture(torch.ones(1, dtype=f64), torch.tensor([mean], dtype=f64), torch.tensor([var], dtype=f64))


class Counting:
    """A model that counts its calls and the batch sizes it saw."""

    def __init__(self, model):
        self.model, self.prediction, self.batches = model, model.prediction, []

    def __call__(self, x, t, cond=None):
        self.batches.append(x.shape[0])
        return self.model(x, t, cond)


@pytest.mark.parametrize("kind", ["eps", "x0", "velocity"])
@pytest.mark.parametrize("w", [0.0, 0.5, 3.0])
def test_cfg_through_combine_equals_the_guidance_formula(kind, w):
    """Combine([m, Conditioned(m, -1)], [1 + w, -w]) in the model's own units is (1 + w) f(y) - w f(null) (eq. 9.12),
    to 1e-12, for any parameterisation (the weights sum to one)."""
    m = TWO.model(VP, kind)
    cfg = Combine([m, Conditioned(m, -1)], [1 + w, -w], space=kind)
    for t in (0.1, 0.5, 0.9):
        tt = torch.full((64,), t, dtype=f64)
        want = (1 + w) * m(X, tt, Y) - w * m(X, tt, torch.full_like(Y, -1))
        torch.testing.assert_close(cfg(X, tt, Y), want, rtol=1e-12, atol=1e-12)


def test_product_of_gaussian_experts_is_the_exact_product_score():
    """Combine([p1, p2], [w1, w2], "score") is the score of p1_t^w1 p2_t^w2; for Gaussian experts that product is a
    Gaussian with precision w1/V1 + w2/V2 (V_i = a^2 v_i + b^2) and the precision-weighted mean, to 1e-12; the same
    combination in eps units is -b_t times it."""
    e1, e2 = gaussian([1.0, 0.0], 0.3), gaussian([-0.5, 0.8], 0.7)
    for w1, w2 in ((1.0, 1.0), (0.5, 2.0), (2.0, -0.5)):
        prod = Combine([e1.model(VP, "eps"), e2.model(VP, "x0")], [w1, w2], space="score", schedule=VP)
        in_eps = Combine([e1.model(VP, "eps"), e2.model(VP, "x0")], [w1, w2], space="eps", schedule=VP)
        for t in (0.05, 0.3, 0.8):
            c = VP.coefficients(torch.tensor(t, dtype=f64))
            V1, V2 = c.a**2 * 0.3 + c.b**2, c.a**2 * 0.7 + c.b**2
            P = w1 / V1 + w2 / V2
            mu = (
                w1 * c.a * torch.tensor([1.0, 0.0], dtype=f64) / V1
                + w2 * c.a * torch.tensor([-0.5, 0.8], dtype=f64) / V2
            ) / P
            tt = torch.full((64,), t, dtype=f64)
            torch.testing.assert_close(prod(X, tt), -P * (X - mu), rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(in_eps(X, tt), c.b * P * (X - mu), rtol=1e-12, atol=1e-12)


def test_calls_of_one_network_are_batched_and_parts_kept():
    """CFG on one network is one call on a batch of 2B; a zero weight skips its part; ``last_parts`` holds each part."""
    net = Counting(TWO.model(VP, "eps"))
    cfg = Combine([net, Conditioned(net, -1)], [3.0, -2.0])
    tt = torch.full((64,), 0.4, dtype=f64)
    out = cfg(X, tt, Y)
    assert net.batches == [128]
    torch.testing.assert_close(cfg.last_parts[0], net.model(X, tt, Y), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(cfg.last_parts[1], net.model(X, tt, torch.full_like(Y, -1)), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(out, 3 * cfg.last_parts[0] - 2 * cfg.last_parts[1], rtol=0, atol=0)
    net.batches.clear()
    Combine([net, Conditioned(net, -1)], [1.0, 0.0])(X, tt, Y)
    assert net.batches == [64]


def test_conditioned_binds_and_broadcasts_its_condition():
    m = TWO.model(VP, "eps")
    tt = torch.full((64,), 0.4, dtype=f64)
    torch.testing.assert_close(Conditioned(m, Y)(X, tt), m(X, tt, Y), rtol=0, atol=0)
    torch.testing.assert_close(Conditioned(m, 1)(X, tt), m(X, tt, torch.ones(64, dtype=torch.long)), rtol=0, atol=0)
    torch.testing.assert_close(
        Conditioned(m, torch.tensor([0]))(X, tt), m(X, tt, torch.zeros(64, dtype=torch.long)), rtol=0, atol=0
    )
    with pytest.raises(ValueError, match=r"shape \(\), \(1, \.\.\.\) or \(B, \.\.\.\)"):
        Conditioned(m, torch.zeros(3, dtype=torch.long))(X, tt)
    with pytest.raises(TypeError, match=r"cond must be a torch\.Tensor"):
        Conditioned(m, "cat")


def test_a_combination_samples_like_any_model():
    """A product of two experts is a model: DDIM carries noise to a finite sample of the input's shape."""
    prod = Combine([gaussian([1.0, 0.0], 0.3).model(VP), gaussian([-0.5, 0.8], 0.7).model(VP)], [1.0, 1.0])
    x = dm.sample(prod, torch.randn(256, 2, dtype=f64), VP.grid(50, t_start=0.999), VP)
    assert x.shape == (256, 2) and torch.isfinite(x).all()


def test_combine_bad_input():
    m = TWO.model(VP, "eps")
    with pytest.raises(ValueError, match=r"one number per model \(2\), got 3"):
        Combine([m, m], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="finite real numbers"):
        Combine([m, m], [1.0, float("nan")])
    with pytest.raises(ValueError, match="not all be 0"):
        Combine([m, m], [0.0, 0.0])
    with pytest.raises(ValueError, match="linear only in 'eps' or 'score'"):
        Combine([TWO.model(VP, "x0")] * 2, [1.0, 1.0], space="x0")
    with pytest.raises(ValueError, match="a schedule is needed"):
        Combine([m, TWO.model(VP, "x0")], [1.0, 1.0])
    with pytest.raises(TypeError, match="non-empty sequence"):
        Combine([], [])
    bad = lambda x, t, c=None: x[:, :1]  # noqa: E731
    bad.prediction = "eps"
    with pytest.raises(ValueError, match=r"model returned \(64, 1\) \(part 1 of the combination\)"):
        Combine([m, bad], [1.0, 1.0])(X, torch.full((64,), 0.5, dtype=f64))


def test_classifier_free_guidance_is_a_combination_with_any_null_tensor():
    """ClassifierFree is Combine([m, Conditioned(m, null)], [1 + w, -w]); the null may be any tensor (here the label
    -1 given as a tensor of shape (1,)), and a null that fits no batch is refused at the call, naming its shape."""
    from diffmath.guide.guidance import ClassifierFree

    net = Counting(TWO.model(VP, "eps"))
    tt = torch.full((64,), 0.4, dtype=f64)
    out = ClassifierFree(net, 2.0, null=torch.tensor([-1]))(X, tt, Y)
    assert net.batches == [128]
    want = 3 * net.model(X, tt, Y) - 2 * net.model(X, tt, torch.full_like(Y, -1))
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"got \(2,\)"):
        ClassifierFree(net, 2.0, null=torch.ones(2))(X, tt, Y)
