"""Lesson 21: AMDM's parts (slerp, the merge rules, the deviation step, alignment across schedules) and the sampler,
checked against exact mixture models in float64, then run unchanged on networks."""

import math

import pytest
import torch

import toydata as td
from diffmath import VPCosine, VPLinear, cosine, recipes, su_linear
from diffmath.compare import decision_curve, format_table, mean_se, method_table, sample_method
from diffmath.guide.compose import Combine, Conditioned
from diffmath.guide.multi import RELEASED, Aligned, amdm, deviation_step, merge_states, slerp
from diffmath.nets.mlp import MLP
from diffmath.nets.unet import UNet
from diffmath.ode import dpm_rule, euler_rule, heun_rule
from diffmath.sampling.loop import final, run
from diffmath.sampling.samplers import ddim_rule

D = torch.float64


def _draws(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D)


@pytest.fixture(scope="module")
def toy():
    ta = td.two_attributes(16)
    sch = su_linear(1000)
    return ta, sch, ta.a.model(sch), ta.b.model(sch)


# ------------------------------------------------------------------ slerp and the merge rules (eqs. 21.4-21.5)
def test_slerp_endpoints_and_equal_norms():
    x1, x2 = _draws(64, 3, 5), _draws(64, 3, 5, seed=1)
    x2 = x2 * (x1.flatten(1).norm(dim=1) / x2.flatten(1).norm(dim=1)).view(-1, 1, 1)  # equal norms per sample
    assert torch.allclose(slerp(x1, x2, 0.0), x1, atol=1e-13, rtol=0)
    assert torch.allclose(slerp(x1, x2, 1.0), x2, atol=1e-13, rtol=0)
    for w in (0.1, 0.5, 0.83):
        y = slerp(x1, x2, w)
        assert torch.allclose(y.flatten(1).norm(dim=1), x1.flatten(1).norm(dim=1), atol=1e-12, rtol=0)
        # the angle to x1 is w times the whole angle
        cos = lambda u, v: (u * v).flatten(1).sum(1) / (u.flatten(1).norm(dim=1) * v.flatten(1).norm(dim=1))  # noqa: E731
        assert torch.allclose(torch.arccos(cos(x1, y)), w * torch.arccos(cos(x1, x2)), atol=1e-7, rtol=0)


def test_slerp_keeps_the_shell_where_lerp_cuts_inside():
    """Independent draws in high dimension are ~90 degrees apart: slerp keeps |x|, the midpoint of lerp has 0.707|x|."""
    x1, x2 = _draws(8, 16384), _draws(8, 16384, seed=1)
    r = x1.norm(dim=1)
    ratio_slerp = slerp(x1, x2, 0.5).norm(dim=1) / r
    ratio_lerp = merge_states([x1, x2], 0.5, "lerp").norm(dim=1) / r
    assert (ratio_slerp - 1).abs().max() < 0.02
    assert (ratio_lerp - math.sqrt(0.5)).abs().max() < 0.02


def test_slerp_guards():
    x = _draws(4, 10)
    near = x + 1e-10 * _draws(4, 10, seed=2)
    assert torch.allclose(slerp(x, near, 0.3), 0.7 * x + 0.3 * near, atol=1e-12, rtol=0)  # theta -> 0: the line
    assert torch.isfinite(slerp(x, x, 0.5)).all()
    with pytest.raises(ValueError, match="opposite"):
        slerp(x, -x, 0.5)
    with pytest.raises(ValueError, match="non-zero norm"):
        slerp(torch.zeros(2, 3, dtype=D), _draws(2, 3), 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        slerp(x, near, 1.5)
    with pytest.raises(ValueError, match="same shape"):
        slerp(x, _draws(4, 9), 0.5)
    with pytest.raises(TypeError):
        slerp(x.numpy(), x, 0.5)


def test_merge_of_three_is_the_stated_nested_rule():
    xs = [_draws(5, 7, seed=k) for k in range(3)]
    for how in ("slerp", "lerp", "released"):
        one = merge_states([merge_states(xs[:2], 0.4, how), xs[2]], 0.65, how)
        assert torch.allclose(merge_states(xs, [0.4, 0.65], how), one, atol=1e-14, rtol=0)
    with pytest.raises(ValueError, match="N - 1 = 2"):
        merge_states(xs, 0.5)
    with pytest.raises(ValueError, match="at least two"):
        merge_states(xs[:1], [])
    with pytest.raises(ValueError, match="how must be one of"):
        merge_states(xs[:2], 0.5, "average")


def test_released_merge_scales_identical_inputs_and_equals_slerp_at_right_angles():
    """omega x1 + sqrt(1 - omega^2) x2: identical inputs grow by omega + sqrt(1 - omega^2) (1.37 at 0.5); orthogonal
    ones of equal norm give slerp with w = (2/pi) arccos(omega), so the code's 0.5 is the paper's w = 2/3."""
    x = _draws(3, 6)
    assert torch.allclose(merge_states([x, x], 0.5, "released"), (0.5 + math.sqrt(0.75)) * x, atol=1e-14, rtol=0)
    e1, e2 = torch.zeros(1, 6, dtype=D), torch.zeros(1, 6, dtype=D)
    e1[0, 0], e2[0, 3] = 2.0, 2.0
    for om in (0.2, 0.5, 0.9):
        w = 2 / math.pi * math.acos(om)
        assert torch.allclose(merge_states([e1, e2], om, "released"), slerp(e1, e2, w), atol=1e-14, rtol=0)


# ------------------------------------------------------------------ the deviation step (eq. 21.6)
def test_deviation_step_is_a_weight_shift_and_leaves_copies_two_eta_apart():
    """With lerp, the pull moves copy 1 to weight w - eta/|d| and copy 2 to w + eta/|d| on the line between the
    means (d = mu2 - mu1), so the copies end exactly 2 eta apart."""
    mu1, mu2 = _draws(6, 20), _draws(6, 20, seed=1)
    w, eta = 0.5, 0.3
    d = (mu2 - mu1).norm(dim=1, keepdim=True)
    merged = merge_states([mu1, mu2], w, "lerp")
    x1, x2 = deviation_step(merged, mu1, eta), deviation_step(merged, mu2, eta)
    assert torch.allclose(x1, mu1 + (w - eta / d) * (mu2 - mu1), atol=1e-13, rtol=0)
    assert torch.allclose(x2, mu1 + (w + eta / d) * (mu2 - mu1), atol=1e-13, rtol=0)
    assert torch.allclose((x2 - x1).norm(dim=1), torch.full((6,), 2 * eta, dtype=D), atol=1e-14, rtol=0)


def test_deviation_step_guards_and_relative_length():
    x, mu = _draws(3, 4), _draws(3, 4, seed=1)
    assert torch.equal(deviation_step(x, x, 0.3), x)  # x' = mu: no direction, no move
    assert torch.allclose(deviation_step(x, mu, 1e6), mu, atol=1e-13, rtol=0)  # a long pull stops at mu
    assert torch.allclose(deviation_step(x, mu, 0.25, relative=True), x - 0.25 * (x - mu), atol=1e-15, rtol=0)
    for bad, kw in ((-0.1, {}), (1.5, {"relative": True}), (math.nan, {})):
        with pytest.raises(ValueError, match="eta"):
            deviation_step(x, mu, bad, **kw)
    with pytest.raises(TypeError, match="relative"):
        deviation_step(x, mu, 0.1, relative="yes")


# ------------------------------------------------------------------ the sampler (Alg. 21.1)
def test_empty_window_is_model_one_bit_for_bit(toy):
    _ta, sch, m1, m2 = toy
    x, grid = _draws(50, 16), sch.grid(20)
    alone = final(run(m1, x, grid, sch, ddim_rule()))
    assert torch.equal(final(amdm([m1, m2], x, grid, sch, window=0, eta=0.3)), alone)
    # a network too (float32), with any rule
    net = MLP(dim=16, t_max=1000.0).eval()
    xf = x.float()
    assert torch.equal(
        final(amdm([net, m1], xf, grid, sch, dpm_rule, window=0)), final(run(net, xf, grid, sch, dpm_rule))
    )


@pytest.mark.parametrize("rule", [ddim_rule(), euler_rule, heun_rule, dpm_rule], ids=["ddim", "euler", "heun", "dpm"])
@pytest.mark.parametrize("how", ["slerp", "lerp"])
def test_identical_models_with_a_shared_start_give_model_one_for_any_weight(toy, rule, how):
    ta, sch = toy[0], VPLinear()  # a continuous schedule: the ODE rules need da, db
    m1 = ta.a.model(sch)
    x, grid = _draws(40, 16), sch.grid(15)
    alone = final(run(m1, x, grid, sch, rule))
    for w in (0.2, 0.5, 0.9):
        out = final(amdm([m1, ta.a.model(sch)], x, grid, sch, rule, window=10, weights=w, eta=0.3, merge=how))
        assert torch.allclose(out, alone, atol=1e-12, rtol=0), (w, (out - alone).abs().max())


def test_stochastic_rule_with_shared_noise_gives_model_one(toy):
    """DDPM (eta = 1): with each step's fresh noise the same for every copy, identical models give model 1's path."""
    ta, sch, m1, _ = toy
    x, grid = _draws(30, 16), sch.grid(12)
    z = _draws(12, 30, 16, seed=5)
    alone = final(run(m1, x, grid, sch, ddim_rule(1.0), noise=list(z)))
    shared = lambda i, y: z[i].repeat(y.shape[0] // 30, 1)  # noqa: E731
    out = final(amdm([m1, ta.a.model(sch)], x, grid, sch, ddim_rule(1.0), window=6, noise=shared))
    assert torch.allclose(out, alone, atol=1e-12, rtol=0)


def test_lerp_merge_under_ddim_is_one_step_with_averaged_eps(toy):
    """From a shared state, the lerp of two DDIM means is the DDIM step with eps_bar = (1 - w) eps_1 + w eps_2: merging
    on every step (no pull) is DDIM on the eps-average."""
    _ta, sch, m1, m2 = toy
    x, grid = _draws(60, 16), sch.grid(25)
    for w in (0.3, 0.5):
        avg = final(run(Combine([m1, m2], [1 - w, w]), x, grid, sch, ddim_rule()))
        out = final(amdm([m1, m2], x, grid, sch, window=25, weights=w, merge="lerp"))
        assert torch.allclose(out, avg, atol=1e-12, rtol=0), (out - avg).abs().max()


def test_one_merged_step_leaves_the_copies_two_eta_apart(toy):
    """Steps 0-7 run the copies apart from a shared start, step 8 merges them (lerp) and pulls each back by eta."""
    _ta, sch, m1, m2 = toy
    x, grid, state = _draws(20, 16), sch.grid(10), {}
    steps = amdm([m1, m2], x, grid, sch, window=(8, 9), eta=0.05, merge="lerp", state=state)
    for _ in range(9):
        next(steps)
    c = state["copies"]
    assert c.shape == (2, 20, 16)
    assert torch.allclose((c[1] - c[0]).norm(dim=1), torch.full((20,), 0.1, dtype=D), atol=1e-13, rtol=0)


def test_independent_starts_halve_the_texture_variance_under_lerp_and_not_under_slerp():
    """Two independent x_T are ~90 degrees apart: their lerp midpoint has half the variance in every texture
    coordinate, and DDIM's later steps are linear there, so the samples keep half (0.5 within 5 standard errors of a
    variance ratio over 1000 samples x 254 coordinates); slerp keeps it (1 within the same)."""
    ta = td.two_attributes(256)
    sch = su_linear(1000)
    m1, m2 = ta.a.model(sch), ta.b.model(sch)
    grid = sch.grid(20)
    xs = [_draws(1000, 256, seed=1), _draws(1000, 256, seed=2)]
    ref = ta.judge(final(run(m1, xs[0], grid, sch, ddim_rule())))["texture_var"]
    se = math.sqrt(2 / 999 / 254)  # relative s.e. of a mean of 254 sample variances (nearly independent)
    lerp = ta.judge(final(amdm([m1, m2], xs, grid, sch, window=5, merge="lerp")))["texture_var"] / ref
    sl = ta.judge(final(amdm([m1, m2], xs, grid, sch, window=5, merge="slerp")))["texture_var"] / ref
    assert abs(lerp - 0.5) < 5 * se * 0.5, lerp
    assert abs(sl - 1.0) < 5 * se + 0.01, sl  # + the slerp's norm error (|x1| != |x2| by O(1/sqrt(d)))


# ------------------------------------------------------------------ schedules: align by noise level, not by index
def test_aligned_model_on_another_schedule_is_the_same_model():
    """An exact model of the same law trained (built) on the VP cosine schedule, called at the VP-linear time with
    the same sigma, predicts what the VP-linear one predicts (1e-9); at the same time index it does not."""
    ta = td.two_attributes(8)
    lin, cos = VPLinear(), VPCosine()
    ref, other = ta.b.model(lin), ta.b.model(cos)
    x, t = _draws(30, 8), torch.full((30,), 0.4, dtype=D)
    assert torch.allclose(Aligned(other, cos, lin)(x, t), ref(x, t), atol=1e-9, rtol=0)
    assert (Aligned(other, cos, lin, "index")(x, t) - ref(x, t)).abs().max() > 0.1
    # another parameterisation is converted to eps
    v_model = ta.b.model(cos, prediction="v")
    assert torch.allclose(Aligned(v_model, cos, lin, prediction="eps")(x, t), ref(x, t), atol=1e-9, rtol=0)


def test_mismatched_schedules_negative_control():
    """AMDM with model 2 built on the VP cosine schedule and model 1 on VP-linear: aligned by noise level it is AMDM
    with model 2 on VP-linear (1e-8), aligned by time index it is not (off by > 0.1 on average)."""
    ta = td.two_attributes(16)
    lin, cos = VPLinear(), VPCosine()
    m1, m2, m2c = ta.a.model(lin), ta.b.model(lin), ta.b.model(cos)
    x, grid = _draws(200, 16), torch.linspace(0.99, 0.0, 26, dtype=D)  # the cosine table's a(1) = 0: eps is lost there
    kw = {"window": 15, "weights": 0.5}
    ref = final(amdm([m1, m2], x, grid, lin, **kw))
    by_sigma = final(amdm([m1, m2c], x, grid, lin, schedules=[lin, cos], **kw))
    by_index = final(amdm([m1, m2c], x, grid, lin, schedules=[lin, cos], align="index", **kw))
    assert torch.allclose(by_sigma, ref, atol=1e-8, rtol=0), (by_sigma - ref).abs().max()
    assert (by_index - ref).abs().mean() > 0.1


def test_discrete_tables_align_to_one_step(toy):
    """On two discrete tables (su-linear, cosine) the matched time is rounded: AMDM is then close to the same-table
    result (mean |error| < 0.03 at 25 steps), index alignment is 10x farther off."""
    ta, sch, m1, m2 = toy
    cos = cosine(1000)
    m2c = ta.b.model(cos)
    x, grid = _draws(200, 16), sch.grid(25)
    kw = {"window": 15, "weights": 0.5}
    ref = final(amdm([m1, m2], x, grid, sch, **kw))
    by_sigma = final(amdm([m1, m2c], x, grid, sch, schedules=[sch, cos], **kw))
    by_index = final(amdm([m1, m2c], x, grid, sch, schedules=[sch, cos], align="index", **kw))
    err_sigma, err_index = (by_sigma - ref).abs().mean(), (by_index - ref).abs().mean()
    assert err_sigma < 0.03 and err_index > 10 * err_sigma, (err_sigma, err_index)


# ------------------------------------------------------------------ networks and bad input
def test_amdm_runs_on_image_networks_with_conditions_and_the_released_variant():
    torch.manual_seed(0)
    nets = [
        UNet(in_channels=3, channels=(8, 16), num_res_blocks=1, attention=(False, True), prediction="v",
             num_classes=(3, 4), t_max=1.0).eval(),
        UNet(in_channels=3, channels=(8, 16), num_res_blocks=1, attention=(False, False), prediction="x0",
             num_classes=3, t_max=1.0).eval(),
    ]  # fmt: skip
    sch = VPCosine()
    models = [Conditioned(nets[0], torch.tensor([[1, 2]])), Conditioned(nets[1], 2)]
    x, grid = torch.randn(4, 3, 8, 8), sch.grid(6)
    with torch.no_grad():
        out = final(amdm(models, x, grid, sch, window=3, eta=0.1))
        code = final(amdm(models, x, grid, sch, **RELEASED, eta=2.0))
        alone = final(run(models[0], x, grid, sch, ddim_rule()))
        zero = final(amdm(models, x, grid, sch, window=0))
    assert out.shape == x.shape and torch.isfinite(out).all() and torch.isfinite(code).all()
    assert torch.equal(zero, alone)
    assert not torch.allclose(out, alone)


def test_bad_input_names_what_was_expected(toy):
    _ta, sch, m1, m2 = toy
    x, grid = _draws(4, 16), sch.grid(10)

    def go(*args, **kw):
        return list(amdm(*args, **{"window": 5, **kw}))

    cases = [
        (([m1], x, grid, sch), {}, ValueError, "at least two"),
        (([m1, m2], x, grid, sch), {"weights": [0.5, 0.5]}, ValueError, "N - 1 = 1"),
        (([m1, m2], x, grid, sch), {"weights": 1.5}, ValueError, r"\[0, 1\]"),
        (([m1, m2], x, grid, sch), {"eta": -1.0}, ValueError, "eta"),
        (([m1, m2], x, grid, sch), {"eta": [0.1, 0.2, 0.3]}, ValueError, "one per model"),
        (([m1, m2], x, grid, sch), {"window": 11}, ValueError, "window"),
        (([m1, m2], x, grid, sch), {"window": (3, 2)}, ValueError, "window"),
        (([m1, m2], [x, x[:, :8]], grid, sch), {}, ValueError, "shape"),
        (([m1, m2], [x], grid, sch), {}, TypeError, "one per model"),
        (([m1, m2], x, grid, sch), {"schedules": [sch]}, ValueError, "one schedule per model"),
        (([m1, m2], x, grid, sch), {"schedules": [sch, "cosine"]}, TypeError, "Schedule"),
        (([m1, m2], x, grid, sch), {"merge": "mean"}, ValueError, "merge must be one of"),
        (([m1, m2], x, grid, sch), {"pull_to": "x0"}, ValueError, "pull_to"),
        (([m1, m2], x, grid, sch), {"align": "time"}, ValueError, "align"),
        (([m1, m2], x, grid, sch), {"schedules": [sch, VPCosine()], "align": "index"}, ValueError, "discrete"),
        (([m1, "model"], x, grid, sch), {}, TypeError, "callable"),
        (([m1, m2], x.numpy(), grid, sch), {}, TypeError, "tensor"),
    ]
    for args, kw, err, msg in cases:
        with pytest.raises(err, match=msg):
            go(*args, **kw)


# ------------------------------------------------------------------ the comparison harness (sec. 21.6)
def test_method_table_and_decision_curve_on_the_exact_mixture(toy):
    """The harness gives each row one number per seed; model 1 alone succeeds at its prior rate P(b=+ | a=+) = 0.1
    (within 4 binomial standard errors of 5 x 300 samples), the oracle always; a decision curve ends at 1."""
    ta, sch, m1, m2 = toy
    parts = {"1": m1, "2": m2, "u": ta.joint.model(sch), "oracle": ta.target.model(sch)}

    def starts(seed):
        return _draws(300, 16, seed=seed), _draws(300, 16, seed=seed + 1000)

    rows = {"alone": ("model 1", {}), "oracle": ("oracle", {}), "amdm": ("amdm", {"window": 5, "independent": True})}
    table = method_table(rows, parts, ta.judge, starts, sch.grid(20), sch, seeds=range(5))
    assert all(len(v) == 5 for row in table.values() for v in row.values())
    m, _ = mean_se(table["alone"]["joint"])
    assert abs(m - 0.1) < 4 * math.sqrt(0.1 * 0.9 / 1500), m
    assert min(table["oracle"]["joint"]) == 1.0
    text = format_table(table, ["joint", "off_mode"])
    assert "+-" in text and "5 seeds" in text and len(text.splitlines()) == 4
    out, x0s = sample_method("model 1", parts, starts(0)[0], sch.grid(20), sch, record=True)
    curve = decision_curve(x0s, out, lambda y: y[:, 1] > 0)
    assert len(curve) == 20 and curve[-1] == 1.0 and all(0 <= c <= 1 for c in curve)
    with pytest.raises(ValueError, match="missing"):
        sample_method("eps-composition", {"1": m1, "2": m2}, starts(0)[0], sch.grid(5), sch)
    with pytest.raises(ValueError, match="method must be one of"):
        sample_method("average", parts, starts(0)[0], sch.grid(5), sch)
    with pytest.raises(ValueError, match="two seeds"):
        method_table(rows, parts, ta.judge, starts, sch.grid(5), sch, seeds=[0])


def test_committed_colour_models_on_two_schedules_agree_only_when_aligned_by_noise_level():
    """attr-colour (VP cosine) and attr-colour-linear (VP linear) learned the same law: on noised held-out images,
    the linear model called at the matching noise level (eq. 21.8) denoises like the cosine one, to within a third of
    the error it makes when called at the same time number."""
    cos_m = recipes.train_image("attr-colour", progress=False)
    lin_m = recipes.train_image("attr-colour-linear", progress=False)
    assert lin_m.path.parent == recipes.COMMITTED and isinstance(lin_m.schedule, VPLinear)
    h = td.held_out("attribute-shapes", 64, 24, 0, correlate=recipes.RARE)
    cond = h.labels["colour"][:, None]
    g = torch.Generator().manual_seed(0)
    errs = {"sigma": [], "index": []}
    with torch.no_grad():
        for t in (0.3, 0.5, 0.7):
            c = cos_m.schedule.coefficients(torch.tensor(t, dtype=D))
            xt = float(c.a) * h.images + float(c.b) * torch.randn(h.images.shape, generator=g)
            tt = torch.full((64,), t)
            ref = Aligned(cos_m.model, cos_m.schedule, cos_m.schedule, prediction="x0")(xt, tt, cond)
            for align in errs:
                other = Aligned(lin_m.model, lin_m.schedule, cos_m.schedule, align, prediction="x0")(xt, tt, cond)
                errs[align].append((other - ref).pow(2).mean().item())
    assert sum(errs["sigma"]) < sum(errs["index"]) / 3, errs
