"""diffusers adapters (issue 21, item 3): a diffusers UNet with its scheduler config is a diffmath model. Lesson 0's
schedule and time map (t = k + 1) against diffusers' own tables and add_noise, lesson 4's DDIM against DDIMScheduler's
loop on the same UNet and noise, lesson 9's classifier-free guidance against diffusers' uncond + s (cond - uncond),
every sampler on the adapter, latents decoded once, and bad input. Tiny random networks only: nothing is downloaded."""

import pytest
import torch

import diffmath as dm
from diffmath.adapters import (
    DiffusersModel,
    decode_latents,
    encode_images,
    grid_from_timesteps,
    schedule_from_diffusers,
)
from diffmath.guide.compose import Combine, Conditioned
from diffmath.guide.guidance import ClassifierFree
from diffmath.ode import ode_sample

diffusers = pytest.importorskip("diffusers", reason="diffusers is installed by make bench")

f64 = torch.float64
BLOCKS = {"block_out_channels": (8, 16), "layers_per_block": 1, "norm_num_groups": 4, "sample_size": 8}


def _unet(seed=0, **kw):
    torch.manual_seed(seed)
    args = {
        "in_channels": 1,
        "out_channels": 1,
        "down_block_types": ("DownBlock2D", "AttnDownBlock2D"),
        "up_block_types": ("AttnUpBlock2D", "UpBlock2D"),
        "attention_head_dim": 4,
        **BLOCKS,
        **kw,
    }
    return diffusers.UNet2DModel(**args).eval()


def _cond_unet(seed=0):
    torch.manual_seed(seed)
    return diffusers.UNet2DConditionModel(
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8,
        attention_head_dim=2,
        **BLOCKS,
    ).eval()


@pytest.fixture(scope="module")
def unet():
    return _unet()


@pytest.fixture(scope="module")
def x_T():
    return torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))


CONFIGS = [
    {"beta_schedule": "linear"},
    {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    {"beta_schedule": "squaredcos_cap_v2"},
]


@pytest.mark.parametrize("kw", CONFIGS, ids=[c["beta_schedule"] for c in CONFIGS])
def test_schedule_matches_diffusers_alphas_cumprod(kw):
    """a_t^2 is diffusers' alphas_cumprod[t - 1] (lesson 0, eq. 0.9). diffusers keeps betas and their cumprod in
    float32, so against its tables the agreement is float32's: the betas within 5e-7 relative (measured <= 2.3e-7,
    about 2 float32 ulps, on scaled_linear; exactly equal on squaredcos_cap_v2), alphas_cumprod within 1e-6
    absolute (measured <= 4.7e-7: float32 cumprod over 1000 steps), and within 5e-8 of the float64 cumprod of
    diffusers' own float32 betas (measured <= 1.4e-8: the betas' rounding only). In float64, a_t^2 is the cumprod of
    1 - beta^Ho_t to 1e-12 (measured <= 1.3e-15)."""
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, **kw)
    ours = schedule_from_diffusers(sched)
    abar2 = ours.coefficients(torch.arange(1, 1001, dtype=f64)).a ** 2
    beta_ho = ours.betas[1:] ** 2
    assert ((beta_ho - sched.betas.double()) / sched.betas.double()).abs().max().item() < 5e-7
    assert (abar2 - sched.alphas_cumprod.double()).abs().max().item() < 1e-6
    assert (abar2 - torch.cumprod(1.0 - sched.betas.double(), 0)).abs().max().item() < 5e-8
    assert (abar2 - torch.cumprod(1.0 - beta_ho, 0)).abs().max().item() < 1e-12
    assert schedule_from_diffusers(sched.config).T == 1000  # a config mapping works as the scheduler does


def test_schedule_from_trained_betas():
    betas = torch.linspace(1e-4, 0.02, 50, dtype=f64)
    sched = diffusers.DDPMScheduler(num_train_timesteps=50, trained_betas=betas.tolist())
    ours = schedule_from_diffusers(sched)
    assert (ours.betas[1:] ** 2 - betas).abs().max().item() < 1e-15


@pytest.mark.parametrize("kw", CONFIGS, ids=[c["beta_schedule"] for c in CONFIGS])
def test_time_map_agrees_with_add_noise(kw):
    """diffmath's a_t x0 + b_t eps at t = k + 1 is diffusers' scheduler.add_noise(x0, eps, k) (lesson 0, eq. 0.1),
    to float32's accuracy, 1e-5 on entries of size ~3: diffusers forms sqrt(1 - alphas_cumprod) in float32, which
    cancels near k = 0 (1 - abar^2 ~ 1e-4 there); measured 2.8e-6 (linear), 1.0e-6 (scaled_linear), 4.4e-6 (cosine)."""
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, **kw)
    ours = schedule_from_diffusers(sched)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(6, 1, 4, 4, generator=g), torch.randn(6, 1, 4, 4, generator=g)
    k = torch.tensor([0, 1, 10, 500, 998, 999])
    c = ours.coefficients((k + 1).to(f64))
    mine = c.a.view(-1, 1, 1, 1) * x0.double() + c.b.view(-1, 1, 1, 1) * eps.double()
    theirs = sched.add_noise(x0, eps, k)
    assert (mine - theirs.double()).abs().max().item() < 1e-5


def test_adapter_eps_is_the_unets_output(unet, x_T):
    """model(x, t) is unet(x, t - 1).sample exactly, for a scalar and a per-sample t."""
    model = DiffusersModel(unet, diffusers.DDPMScheduler())
    assert model.prediction == "eps" and model.schedule.T == 1000
    with torch.no_grad():
        t = torch.tensor([1.0, 700.0])
        assert torch.equal(model(x_T, t), unet(x_T, torch.tensor([0, 699])).sample)
        assert torch.equal(model(x_T, 500.0), unet(x_T, 499).sample)
        assert torch.equal(dm.predict(model, x_T, 500, model.schedule, "eps"), unet(x_T, 499).sample)


@pytest.mark.parametrize(("kind", "ours"), [("epsilon", "eps"), ("v_prediction", "v"), ("sample", "x0")])
def test_prediction_type_is_mapped(unet, kind, ours):
    assert DiffusersModel(unet, {"prediction_type": kind}).prediction == ours


def test_learned_variance_keeps_the_mean_part(x_T):
    """out_channels = 2 in_channels (variance_type learned_range): the first in_channels channels, as diffusers'
    DDPMScheduler splits them."""
    net = _unet(out_channels=2)
    model = DiffusersModel(net, diffusers.DDPMScheduler(variance_type="learned_range"))
    assert model.learned_variance
    with torch.no_grad():
        assert torch.equal(model(x_T, 10.0), net(x_T, 9).sample[:, :1])
        assert dm.sample(model, x_T, model.schedule.grid(4), model.schedule).shape == x_T.shape


def _close(ours, theirs, tol=1e-5):
    """|ours - theirs| <= tol max(1, |theirs|): absolute on states of size <= 1, relative beyond. A random eps-UNet is
    no denoiser: its x0_hat = (x - b eps) / a grows the state to ~500, where float32's spacing is 6e-5."""
    return (ours - theirs).abs().max().item() <= tol * max(1.0, theirs.abs().max().item())


def _diffusers_ddim(unet, sched, x, num_steps, cond=None):
    sched.set_timesteps(num_steps)
    with torch.no_grad():
        for k in sched.timesteps:
            out = unet(x, k).sample if cond is None else unet(x, k, encoder_hidden_states=cond).sample
            x = sched.step(out, k, x, eta=0.0).prev_sample
    return x


DDIM_CASES = [  # (options, the grid's last time): set_alpha_to_one ends at the data, else at diffusers' timestep 0
    ({"timestep_spacing": "leading", "set_alpha_to_one": True}, 0.0),
    ({"timestep_spacing": "trailing", "set_alpha_to_one": True}, 0.0),
    ({"timestep_spacing": "leading", "set_alpha_to_one": False, "steps_offset": 1}, 1.0),
]


@pytest.mark.parametrize(("kw", "end"), DDIM_CASES, ids=["leading", "trailing", "offset-no-alpha-one"])
@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_ddim_matches_diffusers_ddim_scheduler(unet, x_T, kw, end, kind):
    """diffmath's DDIM (eta 0, lesson 4, eq. 4.11) on the grid of diffusers' timesteps + 1 is DDIMScheduler's loop on
    the same UNet and x_T: float32 with diffusers' own float32 tables, to 1e-5 (relative where the state exceeds 1,
    :func:`_close`). Measured: 7e-7 to 1.0e-6 absolute on states of size 3 (v), 1.7e-7 to 2.2e-7 relative on states of
    size 200-540 (eps)."""
    sched = diffusers.DDIMScheduler(clip_sample=False, prediction_type=kind, **kw)
    theirs = _diffusers_ddim(unet, sched, x_T.clone(), 10)
    model = DiffusersModel(unet, sched)
    grid = grid_from_timesteps(sched.timesteps, end)
    ours = dm.sample(model, x_T, grid, model.schedule, eta=0.0)
    assert _close(ours, theirs)


def test_ddim_matches_diffusers_in_float64(unet, x_T):
    """With the UNet in float64 and diffusers handed diffmath's float64 alphas_cumprod (as tests/test_06_solvers.py
    does), the two loops agree to 1e-12: what is left at 1e-6 in float32 is diffusers' float32 tables."""
    net = _unet().double()
    sched = diffusers.DDIMScheduler(clip_sample=False)
    model = DiffusersModel(net, sched)
    sched.alphas_cumprod = model.schedule.coefficients(torch.arange(1, 1001, dtype=f64)).a ** 2
    theirs = _diffusers_ddim(net, sched, x_T.double(), 10)
    ours = dm.sample(model, x_T.double(), grid_from_timesteps(sched.timesteps), model.schedule)
    assert (ours - theirs).abs().max().item() < 1e-12


@pytest.fixture(scope="module")
def text():
    g = torch.Generator().manual_seed(3)
    return torch.randn(2, 3, 8, generator=g), torch.randn(1, 3, 8, generator=g)  # a prompt's embedding, the empty one


def test_classifier_free_guidance_is_diffusers_cfg(text):
    """ClassifierFree(model, w, null) through the adapter is diffusers' uncond + s (cond - uncond) with s = 1 + w
    (lesson 9, eq. 9.12), one UNet call on the batch of 2B; the whole guided DDIM run matches diffusers' loop."""
    net = _cond_unet()
    sched = diffusers.DDIMScheduler(clip_sample=False)
    model = DiffusersModel(net, sched)
    emb, empty = text
    w, x = 2.5, torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    guided = ClassifierFree(model, w, null=empty)
    with torch.no_grad():
        eps_c = net(x, 420, encoder_hidden_states=emb).sample
        eps_u = net(x, 420, encoder_hidden_states=empty.expand(2, -1, -1)).sample
        assert (guided(x, torch.full((2,), 421.0), emb) - (eps_u + (1 + w) * (eps_c - eps_u))).abs().max() < 1e-5

    sched.set_timesteps(8)
    theirs = x.clone()
    with torch.no_grad():
        for k in sched.timesteps:
            both = net(torch.cat([theirs] * 2), k, encoder_hidden_states=torch.cat([empty.expand(2, -1, -1), emb]))
            u, c = both.sample.chunk(2)
            theirs = sched.step(u + (1 + w) * (c - u), k, theirs, eta=0.0).prev_sample
    ours = dm.sample(guided, x, grid_from_timesteps(sched.timesteps), model.schedule, cond=emb)
    assert _close(ours, theirs)


def test_class_labels_and_the_null_class(x_T):
    """A UNet2DModel with num_class_embeds takes cond as class_labels; -1 becomes null_class, so CFG works."""
    net = _unet(num_class_embeds=4)
    model = DiffusersModel(net, diffusers.DDPMScheduler(), null_class=3)
    y = torch.tensor([0, 2])
    with torch.no_grad():
        assert torch.equal(model(x_T, 50.0, y), net(x_T, 49, class_labels=y).sample)
        assert torch.equal(
            model(x_T, 50.0, torch.tensor([-1, -1])), net(x_T, 49, class_labels=torch.tensor([3, 3])).sample
        )
        assert torch.equal(model(x_T, 50.0), net(x_T, 49, class_labels=torch.tensor([3, 3])).sample)
        out = dm.sample(ClassifierFree(model, 1.0), x_T, model.schedule.grid(4), model.schedule, cond=y)
    assert out.shape == x_T.shape


def test_other_conditioning_goes_through_cond_kwargs(x_T):
    """A condition the default routing does not know (here class_embed_type "timestep", float class_labels) reaches
    the UNet through cond_kwargs; fixed keyword arguments through unet_kwargs."""
    net = _unet(class_embed_type="timestep")
    model = DiffusersModel(net, {}, cond_kwargs=lambda c: {"class_labels": c}, unet_kwargs={"return_dict": True})
    c = torch.tensor([3.0, 250.0])
    with torch.no_grad():
        assert torch.equal(model(x_T, 8.0, c), net(x_T, 7, class_labels=c).sample)


@pytest.mark.parametrize(
    "run",
    [
        lambda m, x, g: dm.sample(m, x, g, m.schedule, eta=0.0),
        lambda m, x, g: dm.sample(m, x, g, m.schedule, eta=1.0, generator=torch.Generator().manual_seed(0)),
        lambda m, x, g: ode_sample(m, x, g, m.schedule, "dpm++2m"),
        lambda m, x, g: ode_sample(m, x, g, m.schedule, "heun", variable="sigma"),
    ],
    ids=["ddim", "ddpm", "dpm++2m", "heun-sigma"],
)
def test_every_sampler_runs_on_the_adapter(unet, x_T, run):
    model = DiffusersModel(unet, diffusers.DDPMScheduler(prediction_type="v_prediction"))
    out = run(model, x_T, model.schedule.grid(5))
    assert out.shape == x_T.shape and torch.isfinite(out).all()


def test_product_of_two_unets_runs(unet, x_T):
    """A multi-model method (a product of experts, lesson 9, eq. 9.13) on two adapters."""
    other = DiffusersModel(_unet(seed=5), diffusers.DDPMScheduler())
    model = DiffusersModel(unet, diffusers.DDPMScheduler())
    both = Combine([model, Conditioned(other, None)], [0.5, 0.5])
    out = dm.sample(both, x_T, model.schedule.grid(4), model.schedule)
    assert out.shape == x_T.shape


def test_dual_only_and_runs_on_adapted_unets(x_T):
    """Lesson 24's training-free AND (dual-only, eq. 24.8 with the discrete KL of eq. 24.11) on three adapted
    random UNets, unchanged: the multipliers stay on the simplex and the KL estimates are finite and non-negative."""
    from diffmath.guide.constrained import dual_only_and

    models = [DiffusersModel(_unet(seed=s), diffusers.DDPMScheduler()) for s in (0, 5, 7)]
    sched = models[0].schedule
    out = dual_only_and(
        models,
        sched,
        lambda i: torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(i)),
        sched.grid(4),
        iters=2,
        num_times=4,
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.allclose(out.history.sum(1), torch.ones(3, dtype=out.history.dtype))
    assert (out.history >= 0).all() and torch.isfinite(out.gradients).all() and (out.gradients >= 0).all()


def test_latents_sampled_then_decoded_once():
    """A latent model samples in the autoencoder's latent space; the decoder runs once, on z / scaling_factor."""
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
    ).eval()
    model = DiffusersModel(_cond_unet(), diffusers.DDIMScheduler(beta_schedule="scaled_linear"))
    z_T = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    emb = torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(3))
    z = dm.sample(model, z_T, model.schedule.grid(4), model.schedule, cond=emb)
    with torch.no_grad():
        images = decode_latents(vae, z)
        assert torch.equal(images, vae.decode(z / vae.config.scaling_factor).sample)
        assert images.shape == (2, 3, 16, 16)
        latents = encode_images(vae, images)
    assert latents.shape == (2, 4, 8, 8)


def test_bad_input_says_what_was_expected(unet, x_T, text):
    with pytest.raises(ValueError, match=r"unsupported beta_schedule 'sigmoid'.*'linear', 'scaled_linear'"):
        schedule_from_diffusers({"beta_schedule": "sigmoid"})
    with pytest.raises(ValueError, match="rescale_betas_zero_snr"):
        schedule_from_diffusers({"rescale_betas_zero_snr": True})
    with pytest.raises(TypeError, match="diffusers scheduler"):
        schedule_from_diffusers(3)
    with pytest.raises(ValueError, match=r"unsupported prediction_type 'flow'.*'epsilon'"):
        DiffusersModel(unet, {"prediction_type": "flow"})
    with pytest.raises(TypeError, match="UNet2DModel or UNet2DConditionModel"):
        DiffusersModel(torch.nn.Linear(2, 2), {})
    with pytest.raises(ValueError, match="2 \\* in_channels for a learned variance"):
        DiffusersModel(unet, {"variance_type": "learned"})
    with pytest.raises(ValueError, match="null_class must be a class index"):
        DiffusersModel(unet, {}, null_class=0)
    model = DiffusersModel(unet, {})
    with pytest.raises(ValueError, match="unconditional"):
        model(x_T, 5.0, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"t must lie in \[1, 1000\]"):
        model(x_T, 0.0)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, H, W\)"):
        model(torch.randn(2, 3, 8, 8), 5.0)
    with pytest.raises(TypeError, match=r"float64 but the model's parameters are torch\.float32"):
        model(x_T.double(), 5.0)
    cond_model = DiffusersModel(_cond_unet(), {})
    with pytest.raises(ValueError, match="encoder_hidden_states of shape"):
        cond_model(torch.randn(2, 4, 8, 8), 5.0)
    labelled = DiffusersModel(_unet(num_class_embeds=4), {})
    with pytest.raises(ValueError, match=r"class labels must lie in \[0, 4\)"):
        labelled(x_T, 5.0, torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match="integer class_labels of shape"):
        labelled(x_T, 5.0, torch.zeros(2))
    with pytest.raises(TypeError, match="AutoencoderKL"):
        decode_latents(unet, x_T)


def test_weights_from_a_local_folder(unet, x_T, tmp_path):
    """The guide's path (docs/guide-pretrained.md) on a tiny model saved to disk: from_pretrained(local_dir) of the
    UNet and the scheduler, DPM-Solver++ on a log-SNR grid, and DDIM on the timesteps diffusers' DDIMScheduler picks;
    the reloaded model is the saved one."""
    unet.save_pretrained(tmp_path / "unet")
    diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2").save_pretrained(tmp_path / "scheduler")
    net = diffusers.UNet2DModel.from_pretrained(tmp_path, subfolder="unet").eval()
    scheduler = diffusers.DDPMScheduler.from_pretrained(tmp_path, subfolder="scheduler")
    model = DiffusersModel(net, scheduler)
    schedule = model.schedule
    x_dpm = ode_sample(model, x_T, schedule.grid(6, "log-snr"), schedule, "dpm++2m")
    ddim = diffusers.DDIMScheduler.from_config(scheduler.config)
    ddim.set_timesteps(6)
    x_ddim = dm.sample(model, x_T, grid_from_timesteps(ddim.timesteps), schedule)
    assert torch.isfinite(x_dpm).all() and torch.isfinite(x_ddim).all()
    assert torch.equal(
        x_ddim, dm.sample(DiffusersModel(unet, scheduler), x_T, grid_from_timesteps(ddim.timesteps), schedule)
    )
