r"""A small UNet with the one model interface, for images (lesson 20, sec. 20.2).

``UNet(C)(x, t, cond)`` takes a batch of images of shape (B, C, H, W), times on the schedule's scale and optional
labels, and returns a tensor of the shape of ``x`` that is a prediction of kind ``.prediction``, exactly as
:class:`~diffmath.nets.mlp.MLP` does for vectors: every sampler, solver and guidance method of the package takes it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffmath.core._validate import check_int
from diffmath.core.notation import check_prediction
from diffmath.nets.mlp import TimeEmbedding, _check_input, _check_labels, _check_times, _refuse_labels


def _norm(channels: int) -> nn.GroupNorm:
    groups = min(8, channels)
    while channels % groups:  # the largest group count <= 8 that divides the channels
        groups -= 1
    return nn.GroupNorm(groups, channels)


def _check_map(h: object, conv: nn.Conv2d) -> Tensor:
    """A feature map (B, C, H, W) with the channels and dtype of the convolution that reads it; no scan of its
    values (the blocks run inside every UNet call: the UNet checks its own input). Under autocast (bf16 training or
    :class:`~diffmath.core.device.Autocast`) the maps are in the autocast dtype, which is accepted too."""
    if not isinstance(h, Tensor) or (
        h.dtype != conv.weight.dtype
        and not (torch.is_autocast_enabled(h.device.type) and h.dtype == torch.get_autocast_dtype(h.device.type))
    ):
        got = f"dtype {h.dtype}" if isinstance(h, Tensor) else type(h).__name__
        raise TypeError(f"h must be a tensor of the block's dtype {conv.weight.dtype}, got {got}")
    if h.dim() != 4 or h.shape[1] != conv.in_channels:
        raise ValueError(f"h must have shape (B, {conv.in_channels}, H, W), got {tuple(h.shape)}")
    return h


def _int_tuple(value: object) -> tuple | None:
    """``value`` as a tuple (an int as a 1-tuple), or None if it is neither an int nor an iterable."""
    if isinstance(value, int):
        return (value,)
    try:
        return tuple(value)
    except TypeError:
        return None


def _is_int(v: object, low: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


class ResBlock(nn.Module):
    r"""Residual block with the time/label embedding added between two convolutions (lesson 20, eq. 20.5):
    $h + \mathrm{conv}\big(\mathrm{SiLU}(\mathrm{GN}(\mathrm{conv}(\mathrm{SiLU}(\mathrm{GN}\,h)) + W e))\big)$.

    Parameters
    ----------
    c_in, c_out : int
        Input and output channels (a 1x1 convolution matches them on the skip path when they differ).
    emb_dim : int
        Size of the embedding $e$ of time and labels.

    Raises
    ------
    ValueError
        If a size is not a positive integer.
    """

    def __init__(self, c_in: int, c_out: int, emb_dim: int) -> None:
        super().__init__()
        for name, v in (("c_in", c_in), ("c_out", c_out), ("emb_dim", emb_dim)):
            check_int(v, name)
        self.norm1, self.conv1 = _norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2, self.conv2 = _norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, h: Tensor, e: Tensor) -> Tensor:
        r"""The block's output (lesson 20, eq. 20.5).

        Parameters
        ----------
        h : Tensor, shape (B, c_in, H, W)
            Features.
        e : Tensor, shape (B, emb_dim)
            Time and label embedding.

        Returns
        -------
        Tensor, shape (B, c_out, H, W)

        Raises
        ------
        TypeError, ValueError
            If ``h`` is not a tensor of shape (B, c_in, H, W) in the block's dtype, or ``e`` not of shape
            (B, emb_dim).
        """
        _check_map(h, self.conv1)
        if not isinstance(e, Tensor) or e.shape != (h.shape[0], self.emb.in_features):
            got = tuple(e.shape) if isinstance(e, Tensor) else type(e).__name__
            raise ValueError(f"e must have shape (B, emb_dim) = ({h.shape[0]}, {self.emb.in_features}), got {got}")
        out = self.conv1(F.silu(self.norm1(h)))
        out = out + self.emb(e)[:, :, None, None]
        out = self.conv2(F.silu(self.norm2(out)))
        return self.skip(h) + out


class Attention(nn.Module):
    r"""Self-attention over the pixels of a low-resolution feature map, with a residual connection
    (lesson 20, eq. 20.6): $h + W_o\,\mathrm{softmax}(QK^\top/\sqrt{c})\,V$.

    Parameters
    ----------
    channels : int
        Feature channels (one head).

    Raises
    ------
    ValueError
        If ``channels`` is not a positive integer.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        check_int(channels, "channels")
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, h: Tensor) -> Tensor:
        r"""Attend over the $H W$ positions (lesson 20, eq. 20.6).

        Parameters
        ----------
        h : Tensor, shape (B, C, H, W)
            Features.

        Returns
        -------
        Tensor, shape (B, C, H, W)

        Raises
        ------
        TypeError, ValueError
            If ``h`` is not a tensor of shape (B, channels, H, W) in the block's dtype.
        """
        _check_map(h, self.qkv)
        B, C, H, W = h.shape
        q, k, v = self.qkv(self.norm(h)).reshape(B, 3, C, H * W).transpose(-1, -2).unbind(1)
        a = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        return h + self.out(a.transpose(-1, -2).reshape(B, C, H, W))


class UNet(nn.Module):
    r"""A small UNet predictor $f_\theta(x_t, t, y)$ for images (lesson 20, eqs. 20.4-20.6).

    A 3x3 convolution lifts the image to ``channels[0]`` features; each level has ``num_res_blocks`` residual
    blocks (eq. 20.5), optional self-attention (eq. 20.6) and a stride-2 convolution down to the next level; a middle
    block; the way up mirrors it with skip connections and nearest-neighbour upsampling; a zero-initialised 3x3
    convolution returns ``in_channels`` channels. Time features (:class:`~diffmath.nets.mlp.TimeEmbedding`) and one
    learned embedding per label, with a null token per label, are summed into the embedding $e$ (eq. 20.4) that every
    residual block adds to its features.

    Parameters
    ----------
    in_channels : int
        Channels $C$ of the images (inputs of shape (B, C, H, W), H and W divisible by $2^{L-1}$ for $L$ levels).
    channels : tuple of int
        Feature channels per resolution level.
    num_res_blocks : int
        Residual blocks per level (on the way down; one more on the way up takes the level's input skip).
    attention : tuple of bool
        Per level, whether to add self-attention after each residual block (cheap only at low resolution).
    prediction : {"eps", "x0", "score", "v", "velocity"}
        What the network is trained to output (declares its parameterisation to the samplers).
    t_max : float
        The schedule's $t_{\max}$ (T for discrete schedules), to normalise time.
    num_classes : int or tuple of int
        0: unconditional. An int $n > 0$: ``cond`` is one label per image, shape (B,). A tuple $(n_1, \dots, n_L)$:
        ``cond`` has shape (B, L), one label per attribute. Label ``-1`` (or ``cond=None``) is the null condition
        of classifier-free guidance, per label.
    time_dim : int
        Size of the sinusoidal time features.

    Raises
    ------
    TypeError
        If ``prediction`` is not a string.
    ValueError
        If ``in_channels`` or ``num_res_blocks`` is not a positive integer, ``channels`` is empty or holds a
        non-positive or non-integer entry, ``attention`` does not have one entry per level, ``num_classes`` holds
        a negative entry, ``prediction`` is unknown, ``time_dim`` is not an even integer >= 2, or ``t_max`` is not
        positive.
    """

    def __init__(
        self,
        in_channels: int,
        channels: tuple[int, ...] = (32, 64),
        num_res_blocks: int = 1,
        attention: tuple[bool, ...] | None = None,
        prediction: str = "eps",
        t_max: float = 1.0,
        num_classes: int | tuple[int, ...] = 0,
        time_dim: int = 32,
    ) -> None:
        super().__init__()
        for name, v in (("in_channels", in_channels), ("num_res_blocks", num_res_blocks)):
            check_int(v, name)
        given = channels
        channels = _int_tuple(channels) if not isinstance(channels, int) else None
        if not channels or not all(_is_int(c, 1) for c in channels):
            raise ValueError(f"channels must be a non-empty tuple of positive integers, got {given!r}")
        flags = (False,) * (len(channels) - 1) + (True,) if attention is None else _int_tuple(attention)
        if flags is None or len(flags) != len(channels) or not all(isinstance(a, bool) for a in flags):
            raise ValueError(f"attention needs one flag per level ({len(channels)} bools), got {attention!r}")
        attention = flags
        classes = _int_tuple(num_classes)
        if classes is None or isinstance(num_classes, bool) or not all(_is_int(n, 0) for n in classes):
            raise ValueError(f"num_classes must be an integer >= 0 or a tuple of them, got {num_classes!r}")
        self.prediction = check_prediction(prediction)
        self.in_channels, self.channels, self.attention = in_channels, channels, attention
        self.num_classes = num_classes
        self.label_sizes = tuple(n for n in classes if n > 0)
        emb = 4 * channels[0]
        self.time = TimeEmbedding(time_dim, t_max, "time_dim")
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.labels = nn.ModuleList(nn.Embedding(n + 1, emb) for n in self.label_sizes)  # index n: the null token
        # the null tokens' indices, moved with the net (not in its state_dict): no copy to the device per call
        self.register_buffer("null_index", torch.tensor(self.label_sizes, dtype=torch.long), persistent=False)
        self.inp = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        skips, c = [channels[0]], channels[0]
        for i, ch in enumerate(channels):
            for _ in range(num_res_blocks):
                self.down.append(self._block(c, ch, emb, attention[i]))
                c = ch
                skips.append(c)
            if i < len(channels) - 1:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skips.append(c)
        self.mid = nn.ModuleList([ResBlock(c, c, emb), Attention(c), ResBlock(c, c, emb)])
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i, ch in reversed(list(enumerate(channels))):
            for _ in range(num_res_blocks + 1):
                self.up.append(self._block(c + skips.pop(), ch, emb, attention[i]))
                c = ch
            if i > 0:
                self.upsample.append(nn.Conv2d(c, c, 3, padding=1))
        self.out = nn.Sequential(_norm(c), nn.SiLU(), nn.Conv2d(c, in_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)
        self._per_level = num_res_blocks

    @staticmethod
    def _block(c_in: int, c_out: int, emb: int, attend: bool) -> nn.ModuleList:
        return nn.ModuleList([ResBlock(c_in, c_out, emb)] + ([Attention(c_out)] if attend else []))

    def embed(self, t: Tensor, cond: Tensor | None, batch: int) -> Tensor:
        r"""The embedding $e = \mathrm{MLP}(\gamma(t)) + \sum_l E_l[y_l]$ of time and labels (lesson 20, eq. 20.4).

        Parameters
        ----------
        t : Tensor, shape (B,)
            Times on the schedule's scale.
        cond : Tensor of int, shape (B,) or (B, L), optional
            Labels; ``-1`` (or ``None``) selects the null token of a label.
        batch : int
            Batch size B.

        Returns
        -------
        Tensor, shape (B, 4 * channels[0])

        Raises
        ------
        ValueError
            If ``t`` is not of shape (B,) or not finite, ``cond`` is not an integer tensor, has the wrong shape or
            holds a label outside [-1, n) for its attribute's n classes.
        """
        e = self.time_mlp(self.time(t).to(next(self.time_mlp.parameters()).dtype))  # t may be wider than the net
        if not self.label_sizes:
            _refuse_labels(cond, "UNet")
            return e
        y = _check_labels(cond, batch, self.label_sizes, t.device)
        y = torch.where(y < 0, self.null_index, y)
        for k, table in enumerate(self.labels):
            e = e + table(y[:, k])
        return e

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        r"""The prediction $f_\theta(x_t, t, y)$ of kind ``self.prediction`` (lesson 20, eqs. 20.4-20.6).

        Parameters
        ----------
        x : Tensor, shape (B, C, H, W)
            Noisy images $x_t$.
        t : Tensor, shape () or (B,)
            Time(s), on the schedule's scale $[0, t_{\max}]$.
        cond : Tensor of int, shape (B,) or (B, L), optional
            Labels (``-1`` or ``None``: the null condition); an unconditional network accepts only these.

        Returns
        -------
        Tensor, shape (B, C, H, W)

        Raises
        ------
        TypeError
            If ``x`` is not a floating tensor in the network's dtype, or ``t`` is not a real number or tensor.
        ValueError
            If ``x`` is not of shape (B, in_channels, H, W) with H and W divisible by $2^{L-1}$ or holds NaN or
            infinity, ``t`` is not finite or not a scalar or of shape (B,), or ``cond`` is malformed (see
            :meth:`embed`).
        """
        x = _check_input(x, self.inp.weight.dtype)
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"UNet expects x of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        f = 2 ** (len(self.channels) - 1)
        if x.shape[2] % f or x.shape[3] % f:
            raise ValueError(
                f"UNet with {len(self.channels)} levels needs x with H and W divisible by {f}, got {tuple(x.shape)}"
            )
        B = x.shape[0]
        e = self.embed(_check_times(t, x), cond, B).to(x.dtype)
        h = self.inp(x)
        skips = [h]
        blocks = iter(self.down)
        for i in range(len(self.channels)):
            for _ in range(self._per_level):
                h = self._run(next(blocks), h, e)
                skips.append(h)
            if i < len(self.channels) - 1:
                h = self.downsample[i](h)
                skips.append(h)
        h = self.mid[2](self.mid[1](self.mid[0](h, e)), e)
        blocks = iter(self.up)
        for j in range(len(self.channels)):
            for _ in range(self._per_level + 1):
                h = self._run(next(blocks), torch.cat([h, skips.pop()], 1), e)
            if j < len(self.channels) - 1:
                h = self.upsample[j](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.out(h)

    @staticmethod
    def _run(block: nn.ModuleList, h: Tensor, e: Tensor) -> Tensor:
        h = block[0](h, e)
        return block[1](h) if len(block) > 1 else h


def num_parameters(model: nn.Module) -> int:
    """Number of parameters of ``model`` (lesson 20, sec. 20.2: the UNets of the recipes have 0.3-2 M).

    Parameters
    ----------
    model : nn.Module
        Any module.

    Returns
    -------
    int

    Raises
    ------
    TypeError
        If ``model`` is not a torch module.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return sum(p.numel() for p in model.parameters())
