"""Lesson 0: one model interface from toy to image (sec. 0.5)."""

import pytest
import torch

import diffmath as dm
import toydata as td

f64 = torch.float64


def image_mixture(seed=0):
    """A Gaussian mixture in d = 192 whose samples are (3, 8, 8) images, with diagonal covariances."""
    g = torch.Generator().manual_seed(seed)
    K = 3
    means = torch.randn(K, 3, 8, 8, generator=g, dtype=f64)
    covs = 0.05 + 0.2 * torch.rand(K, 3, 8, 8, generator=g, dtype=f64)
    return dm.GaussianMixture(torch.full((K,), 1 / K, dtype=f64), means, covs)


def run_pipeline(model, schedule, x_T, steps):
    """The same code for any shape: predict every parameterisation, then sample with the DDIM family."""
    t = schedule.grid(steps)[1]
    kinds = [k for k in dm.PREDICTIONS if not (schedule.discrete and k == "velocity")]  # no derivatives on a grid
    preds = {k: dm.predict(model, x_T, t, schedule, k) for k in kinds}
    x0 = dm.sample(model, x_T, schedule.grid(steps), schedule, eta=0.0)
    return preds, x0


@pytest.mark.parametrize("schedule", [dm.cosine(1000), dm.VPLinear()], ids=["cosine", "vp-linear"])
def test_same_code_on_vectors_and_images(schedule):
    """One pipeline runs unchanged on x of shape (B, 2) and (B, 3, 8, 8); outputs keep the input's shape and are
    consistent with each other (eqs. 0.2-0.7), and DDIM with the exact model lands on the data's moments."""
    for gmm in (td.eight_gaussians_mixture(), image_mixture()):
        model = gmm.model(schedule, prediction="eps")
        g = torch.Generator().manual_seed(0)
        x_T = torch.randn(400, *gmm.event_shape, generator=g, dtype=f64)
        preds, x0 = run_pipeline(model, schedule, x_T, steps=100)
        t = schedule.grid(100)[1]
        c = schedule.coefficients(t)
        for kind, p in preds.items():
            assert p.shape == x_T.shape, kind
        torch.testing.assert_close(preds["score"], -preds["eps"] / c.b)
        torch.testing.assert_close(c.a * preds["x0"] + c.b * preds["eps"], x_T)
        assert x0.shape == x_T.shape
        # the deterministic sampler pushes N(0, I) onto the data: per-coordinate mean within 5 standard errors
        flat, mean = x0.reshape(400, -1), gmm.mean().reshape(-1)
        sd = torch.sqrt(torch.diagonal(gmm.covariance()))
        assert ((flat.mean(0) - mean).abs() < 5 * sd / 20).all()


def test_exact_models_and_networks_share_the_interface():
    """A trained-network-like nn.Module and an ExactModel are both Models and drive the same sampler."""

    class Net(torch.nn.Module):
        prediction = "x0"

        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 2)

        def forward(self, x, t, cond=None):
            return self.lin(torch.cat([x, t[:, None] / 1000], 1))

    sched = dm.su_linear(1000)
    net, exact = Net().double(), td.eight_gaussians_mixture().model(sched, "x0")
    x = torch.randn(16, 2, dtype=f64)
    for m in (net, exact):
        assert isinstance(m, dm.Model)
        assert (
            dm.sample(m, x, sched.grid(10), sched, eta=1.0, generator=torch.Generator().manual_seed(0)).shape == x.shape
        )


def test_model_interface_bad_input():
    sched = dm.su_linear(100)
    exact = td.eight_gaussians_mixture().model(sched)
    x = torch.randn(8, 2)

    def no_kind(x, t, cond=None):
        return x

    with pytest.raises(TypeError, match="prediction"):
        dm.predict(no_kind, x, 10, sched, "eps")
    with pytest.raises(TypeError, match="callable"):
        dm.predict(3, x, 10, sched, "eps")
    with pytest.raises(ValueError, match=r"t must lie in \[0, 100\]"):
        dm.predict(exact, x, 500, sched, "eps")
    with pytest.raises(ValueError, match=r"shape \(B,\)"):
        dm.predict(exact, x, torch.ones(3), sched, "eps")

    class Bad:
        prediction = "eps"

        def __init__(self, out):
            self.out = out

        def __call__(self, x, t, cond=None):
            return self.out

    with pytest.raises(ValueError, match="NaN or inf"):
        dm.predict(Bad(torch.full((8, 2), float("nan"))), x, 10, sched, "x0")
    with pytest.raises(ValueError, match="input's shape"):
        dm.predict(Bad(torch.zeros(8, 3)), x, 10, sched, "x0")
    with pytest.raises(ValueError, match="NaN or inf"):
        dm.sample(Bad(torch.full((8, 2), float("nan"))), x, sched.grid(5), sched)
    with pytest.raises(ValueError, match="strictly decreasing"):
        dm.sample(exact, x, torch.tensor([0.0, 50.0, 100.0]), sched)
    with pytest.raises(ValueError, match="eta"):
        dm.sample(exact, x, sched.grid(5), sched, eta=-0.5)
    with pytest.raises(TypeError, match="grid"):
        dm.sample(exact, x, [100, 0], sched)
