r"""Adapters to ``diffusers``: a pretrained ``UNet2DModel`` or ``UNet2DConditionModel`` with its scheduler config becomes
a diffmath model with the one interface (lesson 0, sec. 0.5), so every sampler, solver and multi-model method of the
package drives it unchanged.

Three facts make the adapter (lesson 0, secs. 0.1-0.3):

- **The schedule.** diffusers' ``betas`` are Ho's $\beta^{\mathrm{Ho}}_t$, so Su's per-step coefficients are
  $\alpha_t = \sqrt{1 - \beta^{\mathrm{Ho}}_t}$, $\beta_t = \sqrt{\beta^{\mathrm{Ho}}_t}$ (lesson 0, eq. 0.9) and
  diffusers' ``alphas_cumprod[k]`` is $a_t^2$ at $t = k + 1$. :func:`schedule_from_diffusers` rebuilds the betas in
  float64 from the config's formula (diffusers itself keeps them in float32).
- **The time map.** diffusers counts its timesteps $k = 0, \dots, T - 1$ with $k = 0$ already one step of noise;
  diffmath counts $t = 0, \dots, T$ with $t = 0$ the data. So $t = k + 1$: the network is called at $k = t - 1$, and
  ``scheduler.add_noise(x0, eps, k)`` is $a_t x_0 + b_t\varepsilon$ at $t = k + 1$ (lesson 0, eq. 0.1).
- **The parameterisation.** ``prediction_type`` ``"epsilon"``, ``"v_prediction"`` and ``"sample"`` are diffmath's
  ``"eps"``, ``"v"`` (lesson 0, eq. 0.3, the same $v = a_t\varepsilon - b_t x_0$) and ``"x0"``.

diffusers is an optional dependency (``pip install diffmath[bench]``): it is imported inside the functions that need
it, so ``import diffmath`` works without it. The networks themselves (lesson 20, sec. 20.2) are diffusers' own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from diffmath.core._validate import as_tensor, check_batch
from diffmath.core.models import dtype_mismatch
from diffmath.core.schedules import DiscreteSchedule, cosine, ho_linear

__all__ = [
    "BETA_SCHEDULES",
    "PREDICTION_TYPES",
    "DiffusersModel",
    "decode_latents",
    "encode_images",
    "grid_from_timesteps",
    "schedule_from_diffusers",
]

BETA_SCHEDULES: tuple[str, ...] = ("linear", "scaled_linear", "squaredcos_cap_v2")
"""The ``beta_schedule`` values of a diffusers scheduler config that :func:`schedule_from_diffusers` rebuilds."""

PREDICTION_TYPES: dict[str, str] = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
"""diffusers' ``prediction_type`` -> diffmath's ``prediction`` (lesson 0, sec. 0.2)."""


def _config(config_or_scheduler: object) -> Mapping:
    """The config mapping of a diffusers scheduler (its ``.config``) or the mapping itself."""
    config = getattr(config_or_scheduler, "config", config_or_scheduler)
    if not isinstance(config, Mapping):
        raise TypeError(
            "expected a diffusers scheduler (with a .config) or its config mapping (e.g. DDPMScheduler.load_config"
            f"(local_dir)), got {type(config_or_scheduler).__name__}"
        )
    return config


def schedule_from_diffusers(config_or_scheduler: object) -> DiscreteSchedule:
    r"""The discrete schedule of a diffusers scheduler config, its betas rebuilt in float64 (lesson 0, eqs. 0.9-0.12).

    diffusers' ``betas`` are Ho's $\beta^{\mathrm{Ho}}_t$ for $t = 1..T$ (its index $k = t - 1$); the schedule has
    $\alpha_t = \sqrt{1 - \beta^{\mathrm{Ho}}_t}$ and $\beta_t = \sqrt{\beta^{\mathrm{Ho}}_t}$, so
    $a_t^2$ is diffusers' ``alphas_cumprod[t - 1]``:

    - ``"linear"``: $\beta^{\mathrm{Ho}}$ linear from ``beta_start`` to ``beta_end``, :func:`~diffmath.ho_linear`
      (lesson 0, eq. 0.11);
    - ``"scaled_linear"`` (latent diffusion): $\beta_t = \sqrt{\beta^{\mathrm{Ho}}_t}$ linear from
      $\sqrt{\text{beta\_start}}$ to $\sqrt{\text{beta\_end}}$;
    - ``"squaredcos_cap_v2"``: the cosine schedule with $s = 0.008$ and the cap 0.999, :func:`~diffmath.cosine`
      (lesson 0, eq. 0.12; diffusers' ``betas_for_alpha_bar`` is the same formula);
    - ``trained_betas``, when the config has them, are used as they are (in float64).

    Parameters
    ----------
    config_or_scheduler : diffusers scheduler or Mapping
        A scheduler (``DDPMScheduler``, ``DDIMScheduler``, ...) or its ``config``, with ``num_train_timesteps``,
        ``beta_schedule``, ``beta_start``, ``beta_end`` (or ``trained_betas``).

    Returns
    -------
    DiscreteSchedule
        On $t = 0..T$ with $T$ = ``num_train_timesteps``.

    Raises
    ------
    TypeError
        If the argument is neither a scheduler nor a mapping.
    ValueError
        If ``beta_schedule`` is not one of :data:`BETA_SCHEDULES`, ``num_train_timesteps`` is not a positive integer,
        the betas are not in $(0, 1)$, or ``rescale_betas_zero_snr`` is set ($a_T = 0$ exactly: a schedule with
        $\alpha_T = 0$ is outside diffmath's discrete schedules, whose per-step $\alpha_t$ lie in $(0, 1)$).
    """
    config = _config(config_or_scheduler)
    if config.get("rescale_betas_zero_snr", False):
        raise ValueError(
            "rescale_betas_zero_snr=True makes alphas_cumprod[T-1] = 0 (alpha_T = 0), outside diffmath's discrete "
            "schedules (every per-step alpha_t in (0, 1)); only configs without it are supported"
        )
    trained = config.get("trained_betas")
    if trained is not None:
        beta_ho = torch.as_tensor(trained, dtype=torch.float64).flatten()
        if beta_ho.numel() < 1 or not ((beta_ho > 0) & (beta_ho < 1)).all():
            raise ValueError("trained_betas must be a non-empty sequence of numbers in (0, 1)")
        return DiscreteSchedule(
            torch.sqrt(1.0 - beta_ho), name=f"diffusers-trained(T={beta_ho.numel()})", betas=torch.sqrt(beta_ho)
        )
    T = config.get("num_train_timesteps", 1000)
    if not isinstance(T, int) or isinstance(T, bool) or T < 1:
        raise ValueError(f"num_train_timesteps must be a positive integer, got {T!r}")
    kind = config.get("beta_schedule", "linear")
    start, end = float(config.get("beta_start", 1e-4)), float(config.get("beta_end", 0.02))
    if kind == "linear":
        return ho_linear(T, start, end)
    if kind == "scaled_linear":
        if not 0 < start <= end < 1:
            raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {start}, {end}")
        betas = torch.linspace(math.sqrt(start), math.sqrt(end), T, dtype=torch.float64)
        return DiscreteSchedule(torch.sqrt((1.0 - betas) * (1.0 + betas)), name=f"scaled-linear(T={T})", betas=betas)
    if kind == "squaredcos_cap_v2":
        return cosine(T, 0.008, 0.999)
    raise ValueError(f"unsupported beta_schedule {kind!r}; expected one of {BETA_SCHEDULES} (or trained_betas)")


def grid_from_timesteps(timesteps: object, end: float = 0.0) -> Tensor:
    r"""A diffmath sampling grid from diffusers' timesteps: $t = k + 1$, then ``end`` (lesson 0, sec. 0.4).

    A scheduler's ``timesteps`` after ``set_timesteps`` are the times where it calls the network; the grid adds the
    time the last step reaches: the data (``end = 0``, DDIM's ``set_alpha_to_one=True``) or diffusers' timestep 0
    (``end = 1``, ``set_alpha_to_one=False``, whose last step stops at ``alphas_cumprod[0]``).

    Parameters
    ----------
    timesteps : Tensor or sequence of int
        diffusers' decreasing timesteps $k$.
    end : float
        The grid's last time.

    Returns
    -------
    Tensor, shape (K + 1,), float64

    Raises
    ------
    TypeError
        If ``timesteps`` is not a tensor or a sequence of numbers.
    ValueError
        If ``timesteps`` is not 1-D and non-empty.
    """
    if not isinstance(timesteps, Tensor):
        try:
            timesteps = torch.as_tensor(timesteps, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(
                f"timesteps must be a tensor or a sequence of ints, got {type(timesteps).__name__}"
            ) from err
    if timesteps.dim() != 1 or timesteps.numel() < 1:
        raise ValueError(f"timesteps must be 1-D and non-empty, got shape {tuple(timesteps.shape)}")
    return torch.cat([timesteps.to(torch.float64) + 1.0, torch.tensor([float(end)], dtype=torch.float64)])


CondKwargs = Callable[[Tensor | None], dict]
"""``cond_kwargs(cond) -> dict``: the UNet keyword arguments that carry a diffmath condition."""


class DiffusersModel(nn.Module):
    r"""A diffusers UNet as a diffmath model: ``model(x, t, cond)`` calls ``unet(x, t - 1, ...)`` (lesson 0, sec. 0.5).

    ``t`` is diffmath's time on :attr:`schedule` ($t = 1..T$; diffusers' timestep is $k = t - 1$, lesson 0, eq. 0.9);
    the output is the prediction of kind :attr:`prediction` (from ``prediction_type``). A learned-variance network
    (``out_channels = 2 * in_channels``, ``variance_type`` ``"learned"``/``"learned_range"``) returns its mean part,
    the first ``in_channels`` channels, as diffusers' schedulers split it. The samplers of lesson 4 (DDIM,
    eq. 4.8), lesson 6 (DPM-Solver++) and the guidance of lesson 9 (eq. 9.12) take it as they take diffmath's own
    UNet (lesson 20, sec. 20.2).

    The condition goes where the network takes one:

    - a ``UNet2DConditionModel``: ``cond`` is ``encoder_hidden_states``, shape ``(B, L, cross_attention_dim)``
      (a text encoder's output; the unconditional one for classifier-free guidance is that of the empty prompt);
    - a ``UNet2DModel`` built with ``num_class_embeds``: ``cond`` is integer ``class_labels``, shape ``(B,)``;
      diffmath's null label -1 (and ``cond=None``) becomes ``null_class`` when one is given;
    - any other conditioning (SDXL's ``added_cond_kwargs``, a ``class_embed_type`` of ``"timestep"``, ...): pass
      ``cond_kwargs``, a function from ``cond`` to the UNet's keyword arguments; arguments the same for every call
      go in ``unet_kwargs``.

    Parameters
    ----------
    unet : diffusers.UNet2DModel or diffusers.UNet2DConditionModel
        The network (any ``torch.nn.Module`` whose ``forward(sample, timestep, ...)`` returns a tensor or an object
        with ``.sample``, and which has a diffusers ``config``).
    scheduler : diffusers scheduler or Mapping
        Its scheduler or scheduler config: gives the schedule (:func:`schedule_from_diffusers`) and
        ``prediction_type``.
    null_class : int, optional
        The class index the network was trained with as "no class", used for diffmath's null label -1.
    cond_kwargs : callable, optional
        ``cond_kwargs(cond) -> dict`` of UNet keyword arguments, replacing the default routing of ``cond``.
    unet_kwargs : dict, optional
        Keyword arguments passed to the UNet on every call (e.g. ``cross_attention_kwargs``); tensors in it are
        passed as they are (a batch of 1 broadcasts in diffusers' embeddings; per-sample values belong in ``cond``).

    Attributes
    ----------
    schedule : DiscreteSchedule
        The schedule the network was trained on; sample on it.
    prediction : str
        ``"eps"``, ``"v"`` or ``"x0"``.
    learned_variance : bool
        Whether the network's output is split, keeping its mean part.

    Raises
    ------
    TypeError
        If ``unet`` is not a ``torch.nn.Module`` with a diffusers ``config``, ``cond_kwargs`` is not callable or
        ``unet_kwargs`` not a dict.
    ValueError
        If ``prediction_type`` is not one of :data:`PREDICTION_TYPES`, the schedule cannot be built
        (:func:`schedule_from_diffusers`), ``out_channels`` is neither ``in_channels`` nor twice it (or a learned
        ``variance_type`` comes without twice the channels), or ``null_class`` is given to a network without class
        embeddings or outside them. A call raises ``ValueError`` when ``cond`` does not fit the network (a condition
        given to an unconditional UNet, none to a conditional one, a wrong shape or label), ``x`` has another number
        of channels than the UNet takes, or (on CPU tensors) ``t`` lies outside $[1, T]$; ``TypeError`` when ``x`` is
        not in the UNet's dtype.

    Notes
    -----
    Value checks that read a tensor's entries (the range of ``t`` and of labels) run only on CPU tensors, where they
    are free; on a GPU a call checks shapes only, so a sampling step makes no host synchronisation.
    """

    def __init__(
        self,
        unet: nn.Module,
        scheduler: object,
        null_class: int | None = None,
        cond_kwargs: CondKwargs | None = None,
        unet_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(unet, nn.Module) or not isinstance(getattr(unet, "config", None), Mapping):
            raise TypeError(
                "unet must be a diffusers UNet2DModel or UNet2DConditionModel (a torch.nn.Module with a config), "
                f"got {type(unet).__name__}"
            )
        config = _config(scheduler)
        kind = config.get("prediction_type", "epsilon")
        if kind not in PREDICTION_TYPES:
            raise ValueError(f"unsupported prediction_type {kind!r}; expected one of {tuple(PREDICTION_TYPES)}")
        if cond_kwargs is not None and not callable(cond_kwargs):
            raise TypeError(f"cond_kwargs must be callable as cond_kwargs(cond) -> dict, got {cond_kwargs!r}")
        if unet_kwargs is not None and not isinstance(unet_kwargs, dict):
            raise TypeError(f"unet_kwargs must be a dict of UNet keyword arguments, got {type(unet_kwargs).__name__}")
        self.unet = unet
        self.schedule = schedule_from_diffusers(config)
        self.prediction = PREDICTION_TYPES[kind]
        c_in, c_out = unet.config.get("in_channels"), unet.config.get("out_channels")
        learned = str(config.get("variance_type", "")).startswith("learned")
        if c_out not in (c_in, 2 * c_in) or (learned and c_out != 2 * c_in):
            raise ValueError(
                f"the UNet has in_channels={c_in}, out_channels={c_out}: expected out_channels = in_channels, or "
                f"2 * in_channels for a learned variance (variance_type={config.get('variance_type')!r})"
            )
        self.in_channels, self.learned_variance = c_in, c_out == 2 * c_in
        self.conditional = unet.config.get("cross_attention_dim") is not None
        self.num_classes = unet.config.get("num_class_embeds") if unet.config.get("class_embed_type") is None else None
        if null_class is not None:
            n = self.num_classes
            if n is None or isinstance(null_class, bool) or not isinstance(null_class, int) or not 0 <= null_class < n:
                raise ValueError(f"null_class must be a class index in [0, {n}) of a UNet with num_class_embeds")
        self.null_class, self.cond_kwargs, self.unet_kwargs = null_class, cond_kwargs, dict(unet_kwargs or {})

    def _kwargs(self, cond: Tensor | None, x: Tensor, check: bool) -> dict:
        batch = x.shape[0]
        if self.cond_kwargs is not None:
            return dict(self.cond_kwargs(cond))
        if self.conditional:
            if not isinstance(cond, Tensor) or cond.dim() != 3 or cond.shape[0] != batch:
                got = tuple(cond.shape) if isinstance(cond, Tensor) else type(cond).__name__
                raise ValueError(
                    "a UNet2DConditionModel takes cond = encoder_hidden_states of shape (B, L, cross_attention_dim) "
                    f"= ({batch}, L, {self.unet.config.get('cross_attention_dim')}), got {got}"
                )
            return {"encoder_hidden_states": cond}
        if self.num_classes is not None:
            if cond is None and self.null_class is not None:
                cond = torch.full((batch,), -1, dtype=torch.long, device=x.device)
            if not isinstance(cond, Tensor) or cond.is_floating_point() or cond.shape != (batch,):
                got = f"{cond.dtype} of shape {tuple(cond.shape)}" if isinstance(cond, Tensor) else type(cond).__name__
                raise ValueError(f"this UNet takes cond = integer class_labels of shape ({batch},), got {got}")
            labels = cond.long() if self.null_class is None else torch.where(cond == -1, self.null_class, cond.long())
            if check and labels.numel() and ((labels < 0).any() or (labels >= self.num_classes).any()):
                raise ValueError(
                    f"class labels must lie in [0, {self.num_classes}) (-1 only with null_class), got "
                    f"[{labels.min().item()}, {labels.max().item()}]"
                )
            return {"class_labels": labels}
        if cond is not None:
            raise ValueError(
                "this UNet is unconditional (no cross-attention, no class embedding) but was given cond; pass "
                "cond=None, bind it away with Conditioned(model, None), or give cond_kwargs"
            )
        return {}

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        r"""The UNet's prediction at diffmath's time ``t``, i.e. at diffusers' timestep $k = t - 1$ (lesson 0, eq. 0.9).

        Parameters
        ----------
        x : Tensor, shape (B, C, H, W)
            Noisy batch $x_t$ (latents for a latent model), in the UNet's dtype and device.
        t : float or Tensor of shape () or (B,)
            diffmath times in $[1, T]$.
        cond : Tensor, optional
            The condition (see the class docstring).

        Returns
        -------
        Tensor, shape (B, C, H, W)
            The prediction of kind :attr:`prediction` (the mean part of a learned-variance output).

        Raises
        ------
        TypeError
            If ``x`` is not a floating tensor in the UNet's dtype, or ``t`` not a real number or tensor.
        ValueError
            If ``x`` is not (B, C, H, W) with the UNet's C, ``t`` has the wrong shape or (on CPU) lies outside
            $[1, T]$, or ``cond`` does not fit the network.
        """
        x = check_batch(x, "x", min_dim=4) if x.device.type == "cpu" else x
        param = next((p for p in self.unet.parameters() if p.is_floating_point()), None)
        if param is not None and x.dtype != param.dtype:
            raise TypeError(dtype_mismatch(x.dtype, param.dtype, "x", "model"))
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        B = x.shape[0]
        t_ = as_tensor(t, "t").to(x.device)  # t's own precision: diffusers embeds timesteps in float32
        if t_.dim() == 0:
            t_ = t_.expand(B)
        elif t_.shape != (B,):
            raise ValueError(f"t must be a scalar or have shape (B,) = ({B},), got {tuple(t_.shape)}")
        check = x.device.type == "cpu"
        if check and ((t_ < 1).any() or (t_ > self.schedule.T).any()):
            raise ValueError(
                f"t must lie in [1, {self.schedule.T}] (diffusers' timesteps k = t - 1 are 0..{self.schedule.T - 1}; "
                f"t = 0 is the data, where no network is called), got [{t_.min().item():g}, {t_.max().item():g}]"
            )
        out = self.unet(x, t_ - 1, **self._kwargs(cond, x, check), **self.unet_kwargs)
        out = getattr(out, "sample", out)
        return out[:, : self.in_channels] if self.learned_variance else out


def decode_latents(vae: nn.Module, z: Tensor) -> Tensor:
    r"""Images from a latent model's samples, decoded once: ``vae.decode(z / scaling_factor + shift_factor)``
    (lesson 20, sec. 20.2).

    A latent diffusion model samples in the autoencoder's latent space, scaled by ``scaling_factor`` to unit
    variance during training; every diffmath sampler runs there unchanged (the latents are its ``x``), and the
    decoder runs once, after the last step.

    Parameters
    ----------
    vae : diffusers.AutoencoderKL
        The autoencoder, with ``config.scaling_factor`` (and optionally ``config.shift_factor``).
    z : Tensor, shape (B, latent_channels, h, w)
        Scaled latents at the data end ($t = 0$).

    Returns
    -------
    Tensor, shape (B, C, H, W)
        The decoded images (in the autoencoder's range, usually $[-1, 1]$).

    Raises
    ------
    TypeError
        If ``vae`` has no ``decode`` and ``config.scaling_factor``.
    ValueError
        If ``z`` does not have ``latent_channels`` channels.
    """
    scale, shift = _vae_factors(vae)
    z = check_batch(z, "z", min_dim=4)
    channels = vae.config.get("latent_channels")
    if z.dim() != 4 or (channels is not None and z.shape[1] != channels):
        raise ValueError(f"z must have shape (B, {channels}, h, w), got {tuple(z.shape)}")
    out = vae.decode(z / scale + shift)
    return getattr(out, "sample", out)


def encode_images(vae: nn.Module, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
    r"""Scaled latents of images, ``(vae.encode(x) - shift_factor) * scaling_factor`` (lesson 20, sec. 20.2): the
    ``x0`` of a latent model, e.g. to noise an image to ``t`` for editing (lesson 0, eq. 0.1).

    Parameters
    ----------
    vae : diffusers.AutoencoderKL
        The autoencoder.
    images : Tensor, shape (B, C, H, W)
        Images in the autoencoder's range.
    generator : torch.Generator, optional
        Draws from the latent distribution; ``None`` takes its mode (the mean).

    Returns
    -------
    Tensor, shape (B, latent_channels, h, w)

    Raises
    ------
    TypeError
        If ``vae`` has no ``encode``/``decode`` and ``config.scaling_factor``.
    ValueError
        If ``images`` is not a finite batch of shape (B, C, H, W).
    """
    scale, shift = _vae_factors(vae)
    images = check_batch(images, "images", min_dim=4)
    if images.dim() != 4:
        raise ValueError(f"images must have shape (B, C, H, W), got {tuple(images.shape)}")
    dist = vae.encode(images).latent_dist
    z = dist.mode() if generator is None else dist.sample(generator=generator)
    return (z - shift) * scale


def _vae_factors(vae: object) -> tuple[float, float]:
    config = getattr(vae, "config", None)
    if not callable(getattr(vae, "decode", None)) or not isinstance(config, Mapping) or "scaling_factor" not in config:
        raise TypeError(
            f"vae must be a diffusers AutoencoderKL (decode and config.scaling_factor), got {type(vae).__name__}"
        )
    shift = config.get("shift_factor")
    return float(config["scaling_factor"]), 0.0 if shift is None else float(shift)
