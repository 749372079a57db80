"""Traps of a new user's first hour that now fail clearly (issue 25): each misuse names what was expected."""

import pytest
import torch

import toydata as td
from diffmath.core.schedules import VPCosine, su_linear
from diffmath.guide.compose import Combine, Conditioned
from diffmath.nets.mlp import MLP
from diffmath.nets.unet import UNet
from diffmath.sampling.samplers import sample
from diffmath.train.training import fit


def test_a_missing_checkpoint_folder_fails_before_training(tmp_path):
    data = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    missing = tmp_path / "no" / "such" / "ck.pt"
    with pytest.raises(FileNotFoundError, match="does not exist: create it first"):
        fit(MLP(2, t_max=1000), data, su_linear(), 3, checkpoint=missing, progress=False)
    assert not missing.parent.exists()
    (tmp_path / "afile").write_text("a file\n")
    with pytest.raises(FileNotFoundError, match="is a file, not a folder"):
        fit(MLP(2, t_max=1000), data, su_linear(), 3, checkpoint=tmp_path / "afile" / "ck.pt", progress=False)
    ok = tmp_path / "ck.pt"
    fit(MLP(2, t_max=1000), data, su_linear(), 3, checkpoint=ok, checkpoint_every=2, progress=False)
    assert ok.exists()


def test_time_embedding_must_match_the_schedule():
    data = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    with pytest.raises(
        ValueError, match=r"t in \[0, 1\] \(t_max\) but the schedule 'su-linear\(T=1000\)' runs to 1000"
    ):
        fit(MLP(2), data, su_linear(), 2, progress=False)
    fit(MLP(2), data, VPCosine(), 2, progress=False)  # continuous, t_max = 1: fine


def test_an_unconditional_network_refuses_labels():
    x, t = torch.zeros(4, 2), torch.zeros(4)
    net = MLP(2, t_max=1000)
    with pytest.raises(ValueError, match=r"unconditional .* given cond"):
        net(x, t, torch.tensor([0, 1, 2, 3]))
    assert torch.equal(net(x, t, torch.full((4,), -1)), net(x, t))  # the null label is accepted
    unet = UNet(1, (8, 16), prediction="eps")
    with pytest.raises(ValueError, match="UNet is unconditional"):
        unet(torch.zeros(2, 1, 8, 8), torch.zeros(2), torch.tensor([1, 0]))
    # inside a combination, an unconditional part is bound to None
    cond_net = MLP(2, t_max=1000, num_classes=4)
    s = su_linear()
    both = Combine([Conditioned(net, None), cond_net], [0.5, 0.5])
    y = torch.tensor([0, 1, 2, 3])
    assert sample(both, torch.randn(4, 2), s.grid(3), s, cond=y).shape == (4, 2)
    with pytest.raises(ValueError, match="unconditional"):
        sample(Combine([net, cond_net], [0.5, 0.5]), torch.randn(4, 2), s.grid(3), s, cond=y)


def test_likelihood_on_a_discrete_schedule_says_which_to_use():
    from diffmath.ode import ode_log_likelihood

    s = su_linear()
    exact = td.eight_gaussians_mixture().model(s, "eps")
    with pytest.raises(ValueError, match=r"'su-linear\(T=1000\)' is discrete .* use a continuous schedule such as"):
        ode_log_likelihood(exact, torch.zeros(3, 2, dtype=torch.float64), s)
