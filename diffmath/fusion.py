r"""Image fusion without diffusion (lesson 23): the fusion metrics of sec. 23.6 (eq. 23.10) and the classical
baselines a diffusion fuser is compared with, local-variance selection (eq. 23.11), Mertens exposure fusion
(eq. 23.12) and the plain average.

Conventions. Images are float tensors of shape (B, C, H, W) with values in [-1, 1]; the K sources come as a tensor
of shape (K, B, C, H, W) or as a sequence of K such images. Every metric is computed on the luminance, the mean over
channels (so a 1-channel infrared source and a 3-channel visible one are scored together), on the 8-bit scale of the
fusion literature, $v = 127.5\,(x + 1) \in [0, 255]$: the histogram metrics (EN, MI) round $v$ to the 256 integer
levels 0..255 (values outside [-1, 1] fall into levels 0 and 255), the others (SD, SF, AG, EI, CC, Qabf) use $v$
itself, so SD of a natural image is about 60, as in the papers. Metrics return one float64 value per image, shape (B,).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import Tensor
from torch.nn.functional import conv2d, interpolate, pad

from diffmath.core._validate import check_batch, check_int, check_nonempty, check_positive
from diffmath.metrics import psnr, ssim

_LEVELS = 256
# Petrovic-Xydeas constants: (Gamma, kappa, sigma) of the edge-strength and of the orientation sigmoids
_QABF_STRENGTH = (0.9994, -15.0, 0.5)
_QABF_ORIENTATION = (0.9879, -22.0, 0.8)
_TIE = 1e-10  # local variances (on [-1, 1] values, float64) closer than this to the largest count as ties


# ---------------------------------------------------------------------------------------------------------------------
# Input checks


def _image(x: object, name: str, min_size: int = 1) -> Tensor:
    x = check_nonempty(check_batch(x, name, min_dim=4), name)
    if x.dim() != 4:
        raise ValueError(f"{name} must have shape (B, C, H, W), got {tuple(x.shape)}")
    if min(x.shape[2:]) < min_size:
        raise ValueError(f"{name} must be at least {min_size} x {min_size} pixels, got {tuple(x.shape[2:])}")
    return x


def _sources(
    sources: object, like: Tensor | None = None, at_least: int = 1, same_channels: bool = False, min_size: int = 1
) -> list[Tensor]:
    """The K source images, checked to share the batch size and image size of ``like`` (or of the first source)
    and, with ``same_channels``, the channel count."""
    if isinstance(sources, Tensor):
        if sources.dim() != 5:
            raise ValueError(
                "sources must be a tensor of shape (K, B, C, H, W) or a sequence of (B, C, H, W) tensors, "
                f"got shape {tuple(sources.shape)}"
            )
        items = list(sources.unbind(0))
    elif isinstance(sources, (list, tuple)):
        items = list(sources)
    else:
        raise TypeError(
            "sources must be a tensor of shape (K, B, C, H, W) or a sequence of (B, C, H, W) tensors, "
            f"got {type(sources).__name__}"
        )
    if len(items) < at_least:
        raise ValueError(f"sources must hold at least {at_least} image{'s' * (at_least > 1)}, got {len(items)}")
    items = [_image(s, f"sources[{k}]", min_size) for k, s in enumerate(items)]
    ref, ref_name = (like, "F") if like is not None else (items[0], "sources[0]")
    for k, s in enumerate(items):
        _check_match(s, f"sources[{k}]", ref, ref_name, same_channels)
    return items


def _check_match(x: Tensor, name: str, ref: Tensor, ref_name: str, same_channels: bool) -> None:
    if x.shape[0] != ref.shape[0] or x.shape[2:] != ref.shape[2:] or (same_channels and x.shape[1] != ref.shape[1]):
        what = "shape" if same_channels else "batch size and image size (B, *, H, W)"
        raise ValueError(f"{name} has shape {tuple(x.shape)}; expected the {what} of {ref_name}, {tuple(ref.shape)}")


# ---------------------------------------------------------------------------------------------------------------------
# The 8-bit luminance and its histograms


def _scale(x: Tensor) -> Tensor:
    """Luminance on the 8-bit scale, $127.5 (x + 1)$ of the channel mean; float64, shape (B, H, W)."""
    return 127.5 * (x.double().mean(1) + 1)


def _levels(x: Tensor) -> Tensor:
    """The 256 integer levels 0..255 of the luminance; long, shape (B, H W)."""
    return _scale(x).round().clamp(0, _LEVELS - 1).long().flatten(1)


def _histogram_entropy(idx: Tensor, bins: int) -> Tensor:
    """Shannon entropy in bits of the histogram of each row of the bin indices ``idx`` (shape (B, N))."""
    n = idx.shape[0]
    offsets = torch.arange(n, device=idx.device)[:, None] * bins
    counts = torch.bincount((idx + offsets).flatten(), minlength=n * bins).reshape(n, bins)
    p = counts.double() / idx.shape[1]
    return -torch.special.xlogy(p, p).sum(1) / math.log(2)


def _sobel(v: Tensor) -> tuple[Tensor, Tensor]:
    """Horizontal and vertical Sobel responses of ``v`` (shape (B, H, W)), valid positions only: (B, H-2, W-2)."""
    k = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=v.dtype, device=v.device)
    g = conv2d(v[:, None], torch.stack([k, k.T])[:, None])
    return g[:, 0], g[:, 1]


# ---------------------------------------------------------------------------------------------------------------------
# No-reference metrics (lesson 23, eq. 23.10)


def entropy(F: Tensor) -> Tensor:
    r"""Entropy EN of each fused image (lesson 23, eq. 23.10): $\mathrm{EN} = -\sum_{l=0}^{255} p_l \log_2 p_l$.

    $p_l$ is the fraction of pixels whose luminance falls on the 8-bit level $l$ (the luminance $127.5\,(x + 1)$ of
    the channel mean, rounded to 0..255). More bits: more grey levels in use, more information (and more noise).

    Parameters
    ----------
    F : Tensor, shape (B, C, H, W)
        Fused images in [-1, 1].

    Returns
    -------
    Tensor, shape (B,), float64
        EN in bits, between 0 (a constant image) and 8 (every level equally often).

    Raises
    ------
    TypeError
        If ``F`` is not a floating tensor.
    ValueError
        If ``F`` is empty, not of shape (B, C, H, W) or holds NaN or infinity.
    """
    return _histogram_entropy(_levels(_image(F, "F")), _LEVELS)


def std_dev(F: Tensor) -> Tensor:
    r"""Standard deviation SD of each fused image (lesson 23, eq. 23.10): $\mathrm{SD} = \sqrt{\frac{1}{HW}\sum_{ij}
    (v_{ij} - \bar v)^2}$ (population form), a proxy for contrast.

    $v = 127.5\,(x + 1)$ is the luminance (channel mean) on the 8-bit scale 0..255, not rounded.

    Parameters
    ----------
    F : Tensor, shape (B, C, H, W)
        Fused images in [-1, 1].

    Returns
    -------
    Tensor, shape (B,), float64
        SD on the 0..255 scale (127.5 at most, for half black and half white).

    Raises
    ------
    TypeError
        If ``F`` is not a floating tensor.
    ValueError
        If ``F`` is empty, not of shape (B, C, H, W) or holds NaN or infinity.
    """
    return _scale(_image(F, "F")).flatten(1).std(1, correction=0)


def spatial_frequency(F: Tensor) -> Tensor:
    r"""Spatial frequency SF of each fused image (lesson 23, eq. 23.10): $\mathrm{SF} = \sqrt{\mathrm{RF}^2 +
    \mathrm{CF}^2}$.

    $\mathrm{RF}^2 = \frac{1}{H(W-1)}\sum (v_{i,j} - v_{i,j-1})^2$ averages the squared horizontal (along-row) first
    differences, $\mathrm{CF}^2 = \frac{1}{(H-1)W}\sum (v_{i,j} - v_{i-1,j})^2$ the vertical ones, each over the
    differences that exist; $v = 127.5\,(x + 1)$ is the luminance on the 8-bit scale.

    Parameters
    ----------
    F : Tensor, shape (B, C, H, W), H, W >= 2
        Fused images in [-1, 1].

    Returns
    -------
    Tensor, shape (B,), float64
        SF on the 0..255 scale.

    Raises
    ------
    TypeError
        If ``F`` is not a floating tensor.
    ValueError
        If ``F`` is empty, not of shape (B, C, H, W), smaller than 2 x 2 or holds NaN or infinity.
    """
    v = _scale(_image(F, "F", min_size=2))
    rf2 = (v[:, :, 1:] - v[:, :, :-1]).square().mean((1, 2))
    cf2 = (v[:, 1:, :] - v[:, :-1, :]).square().mean((1, 2))
    return (rf2 + cf2).sqrt()


def average_gradient(F: Tensor) -> Tensor:
    r"""Average gradient AG of each fused image (lesson 23, eq. 23.10): $\mathrm{AG} = \frac{1}{(H-1)(W-1)}
    \sum_{i<H-1,\, j<W-1} \sqrt{(G_x^2 + G_y^2)/2}$.

    $G_x = v_{i,j+1} - v_{i,j}$ and $G_y = v_{i+1,j} - v_{i,j}$ are forward differences on the common
    $(H-1)\times(W-1)$ grid of the luminance $v = 127.5\,(x + 1)$ on the 8-bit scale: the sharper, the larger.

    Parameters
    ----------
    F : Tensor, shape (B, C, H, W), H, W >= 2
        Fused images in [-1, 1].

    Returns
    -------
    Tensor, shape (B,), float64
        AG on the 0..255 scale.

    Raises
    ------
    TypeError
        If ``F`` is not a floating tensor.
    ValueError
        If ``F`` is empty, not of shape (B, C, H, W), smaller than 2 x 2 or holds NaN or infinity.
    """
    v = _scale(_image(F, "F", min_size=2))
    gx = v[:, :-1, 1:] - v[:, :-1, :-1]
    gy = v[:, 1:, :-1] - v[:, :-1, :-1]
    return ((gx.square() + gy.square()) / 2).sqrt().mean((1, 2))


def edge_intensity(F: Tensor) -> Tensor:
    r"""Edge intensity EI of each fused image (lesson 23, eq. 23.10): the mean Sobel gradient magnitude
    $\mathrm{EI} = \frac{1}{(H-2)(W-2)}\sum \sqrt{s_x^2 + s_y^2}$.

    $s_x = v * \begin{psmallmatrix}-1&0&1\\-2&0&2\\-1&0&1\end{psmallmatrix}$ and $s_y$ (its transpose) are taken at
    the valid positions only (no padding, so the border adds no edges), on the luminance $v = 127.5\,(x + 1)$ on the
    8-bit scale.

    Parameters
    ----------
    F : Tensor, shape (B, C, H, W), H, W >= 3
        Fused images in [-1, 1].

    Returns
    -------
    Tensor, shape (B,), float64
        EI on the 0..255 scale (a black-to-white step gives $4 \cdot 255$ on the two columns beside it).

    Raises
    ------
    TypeError
        If ``F`` is not a floating tensor.
    ValueError
        If ``F`` is empty, not of shape (B, C, H, W), smaller than 3 x 3 or holds NaN or infinity.
    """
    sx, sy = _sobel(_scale(_image(F, "F", min_size=3)))
    return (sx.square() + sy.square()).sqrt().mean((1, 2))


# ---------------------------------------------------------------------------------------------------------------------
# Metrics against the sources (lesson 23, eq. 23.10)


def mutual_information(F: Tensor, sources: Tensor | Sequence[Tensor]) -> Tensor:
    r"""Mutual information MI between each fused image and its sources (lesson 23, eq. 23.10):
    $\mathrm{MI} = \sum_k \mathrm{MI}(F, c_k)$ with $\mathrm{MI}(F, c) = \sum_{l,m} p_{lm}\log_2
    \frac{p_{lm}}{p_l\, p_m} = \mathrm{EN}(F) + \mathrm{EN}(c) - \mathrm{EN}(F, c)$.

    $p_{lm}$ is the 256 x 256 joint histogram of the 8-bit luminance levels of $F$ and $c$ (as in :func:`entropy`).
    The plug-in estimate is biased upwards by about $(n_F - 1)(n_c - 1) / (2 N \ln 2)$ bits for $n_F$, $n_c$ levels in
    use and $N$ pixels, so small images of independent noise do not score 0.

    Parameters
    ----------
    F : Tensor, shape (B, C, H, W)
        Fused images in [-1, 1].
    sources : Tensor, shape (K, B, C_k, H, W), or a sequence of K tensors of shape (B, C_k, H, W)
        The source images; their channel counts may differ from ``F``'s and from each other's.

    Returns
    -------
    Tensor, shape (B,), float64
        MI in bits, summed over the K sources; $\mathrm{MI}(F, F) = \mathrm{EN}(F)$.

    Raises
    ------
    TypeError
        If ``F`` or a source is not a floating tensor, or ``sources`` is neither a tensor nor a sequence.
    ValueError
        If an image is empty, not of shape (B, C, H, W) or holds NaN or infinity, a source does not share ``F``'s
        batch and image size, or there is no source.
    """
    F = _image(F, "F")
    lf = _levels(F)
    en_f = _histogram_entropy(lf, _LEVELS)
    total = torch.zeros(F.shape[0], dtype=torch.float64, device=F.device)
    for c in _sources(sources, like=F):
        lc = _levels(c)
        total = total + en_f + _histogram_entropy(lc, _LEVELS) - _histogram_entropy(lf * _LEVELS + lc, _LEVELS**2)
    return total


def correlation(F: Tensor, sources: Tensor | Sequence[Tensor]) -> Tensor:
    r"""Correlation coefficient CC of each fused image with its sources (lesson 23, eq. 23.10):
    $\mathrm{CC} = \frac{1}{K}\sum_k r(F, c_k)$ with Pearson's $r(F, c) = \frac{\sum (v_F - \bar v_F)(v_c - \bar v_c)}
    {\sqrt{\sum (v_F - \bar v_F)^2 \sum (v_c - \bar v_c)^2}}$ over the pixels of the luminances.

    Invariant to an affine change $a v + b$ ($a > 0$) of either image; NaN where an image is constant ($r$ is
    undefined there).

    Parameters
    ----------
    F : Tensor, shape (B, C, H, W)
        Fused images in [-1, 1].
    sources : Tensor, shape (K, B, C_k, H, W), or a sequence of K tensors of shape (B, C_k, H, W)
        The source images; their channel counts may differ from ``F``'s and from each other's.

    Returns
    -------
    Tensor, shape (B,), float64
        CC in [-1, 1], the mean over the K sources.

    Raises
    ------
    TypeError
        If ``F`` or a source is not a floating tensor, or ``sources`` is neither a tensor nor a sequence.
    ValueError
        If an image is empty, not of shape (B, C, H, W) or holds NaN or infinity, a source does not share ``F``'s
        batch and image size, or there is no source.
    """
    F = _image(F, "F")
    cs = _sources(sources, like=F)

    def centred(x: Tensor) -> Tensor:
        v = _scale(x).flatten(1)
        return v - v.mean(1, keepdim=True)

    f = centred(F)
    r = [(f * c).sum(1) / (f.square().sum(1) * c.square().sum(1)).sqrt() for c in map(centred, cs)]
    return torch.stack(r).mean(0)


def _edges(x: Tensor) -> tuple[Tensor, Tensor]:
    r"""Sobel strength $g$ and orientation $\alpha = \arctan(s_y / s_x)$ ($\pi/2$ where $s_x = 0$)."""
    sx, sy = _sobel(_scale(x))
    zero = sx == 0
    alpha = torch.where(zero, math.pi / 2, torch.atan(sy / torch.where(zero, 1.0, sx)))
    return (sx.square() + sy.square()).sqrt(), alpha


def _preservation(g: Tensor, alpha: Tensor, g_f: Tensor, alpha_f: Tensor) -> Tensor:
    r"""$Q^{SF} = Q_g Q_\alpha$, how well the fused image keeps the edge of a source at each pixel."""
    same = g == g_f
    strength = torch.where(same, 1.0, torch.minimum(g, g_f) / torch.where(same, 1.0, torch.maximum(g, g_f)))
    orientation = 1 - (alpha - alpha_f).abs() / (math.pi / 2)
    (gg, kg, sg), (ga, ka, sa) = _QABF_STRENGTH, _QABF_ORIENTATION
    return gg / (1 + torch.exp(kg * (strength - sg))) * ga / (1 + torch.exp(ka * (orientation - sa)))


def qabf(F: Tensor, A: Tensor, B: Tensor) -> Tensor:
    r"""Petrovic-Xydeas edge-preservation index $Q^{AB/F}$ of each fused image of two sources (lesson 23,
    eq. 23.10): $Q^{AB/F} = \frac{\sum_{ij} Q^{AF}_{ij} w^A_{ij} + Q^{BF}_{ij} w^B_{ij}}{\sum_{ij} w^A_{ij} +
    w^B_{ij}}$.

    Sobel responses $s_x, s_y$ (valid positions, luminance on the 8-bit scale) give each image an edge strength
    $g = \sqrt{s_x^2 + s_y^2}$ and orientation $\alpha = \arctan(s_y / s_x)$. Against a source $S$, the relative
    strength $G^{SF} = \min(g_S, g_F) / \max(g_S, g_F)$ and orientation $A^{SF} = 1 - |\alpha_S - \alpha_F| / (\pi/2)$
    pass through sigmoids, $Q^{SF} = \frac{\Gamma_g}{1 + e^{\kappa_g (G^{SF} - \sigma_g)}}
    \frac{\Gamma_a}{1 + e^{\kappa_a (A^{SF} - \sigma_a)}}$, with the standard constants $\Gamma_g = 0.9994$,
    $\kappa_g = -15$, $\sigma_g = 0.5$, $\Gamma_a = 0.9879$, $\kappa_a = -22$, $\sigma_a = 0.8$, and the weights
    are $w^S = g_S^L$, $L = 1$.

    Divisions by zero follow the Python evaluation code that many image-fusion papers share: $\alpha = \pi/2$ where
    $s_x = 0$; where $g_S = g_F$ (both 0 included) the strength ratio is set apart, here to 1 (that code sets it to
    $g_F$, which changes only pixels of zero weight or, for equal nonzero strengths, moves $Q_g(1) = 0.99885$
    towards $\Gamma_g$); and a pair of flat sources ($\sum w = 0$) gives NaN. That code also filters with zero
    padding ("same"), which counts the image border as an edge; here only valid positions count.
    The best possible score, $F$ keeping every edge of both sources, is $Q_g(1)\, Q_a(1) \approx 0.9748$.

    Parameters
    ----------
    F : Tensor, shape (B, C, H, W), H, W >= 3
        Fused images in [-1, 1].
    A, B : Tensor, shape (B, C_k, H, W)
        The two sources (any channel counts).

    Returns
    -------
    Tensor, shape (B,), float64
        $Q^{AB/F}$ in [0, 0.9748]; NaN where both sources are flat.

    Raises
    ------
    TypeError
        If an image is not a floating tensor.
    ValueError
        If an image is empty, not of shape (B, C, H, W), smaller than 3 x 3 or holds NaN or infinity, or a source
        does not share ``F``'s batch and image size.
    """
    F = _image(F, "F", min_size=3)
    g_f, alpha_f = _edges(F)
    num, den = 0.0, 0.0
    for s, name in ((A, "A"), (B, "B")):
        _check_match(_image(s, name, min_size=3), name, F, "F", same_channels=False)
        g, alpha = _edges(s)
        num = num + (_preservation(g, alpha, g_f, alpha_f) * g).sum((1, 2))
        den = den + g.sum((1, 2))
    return num / den


def fusion_scores(F: Tensor, sources: Tensor | Sequence[Tensor], target: Tensor | None = None) -> dict[str, Tensor]:
    r"""Every fusion metric of lesson 23, eq. 23.10, of each fused image: the table of sec. 23.6.

    EN, SD, SF, AG, EI (no reference), MI and CC (against the sources), Qabf (only for K = 2 sources) and, when a
    ground-truth ``target`` is known (a synthetic fusion task), PSNR and SSIM against it (lesson 20, eqs. 20.2-20.3;
    data range 2, SSIM window 7).

    Parameters
    ----------
    F : Tensor, shape (B, C, H, W), H, W >= 3 (>= 7 with a target)
        Fused images in [-1, 1].
    sources : Tensor, shape (K, B, C_k, H, W), or a sequence of K tensors of shape (B, C_k, H, W)
        The source images.
    target : Tensor, shape (B, C, H, W), optional
        The ideal fused images.

    Returns
    -------
    dict of str to Tensor
        ``"EN"``, ``"SD"``, ``"SF"``, ``"AG"``, ``"EI"``, ``"MI"``, ``"CC"``, then ``"Qabf"`` if K = 2 and
        ``"PSNR"``, ``"SSIM"`` if ``target`` is given; each of shape (B,), float64.

    Raises
    ------
    TypeError
        If an image is not a floating tensor, or ``sources`` is neither a tensor nor a sequence.
    ValueError
        If an image is empty, not of shape (B, C, H, W), smaller than 3 x 3 or holds NaN or infinity, a source does
        not share ``F``'s batch and image size, there is no source, or ``target`` does not have ``F``'s shape or is
        smaller than the SSIM window.
    """
    cs = _sources(sources, like=_image(F, "F", min_size=3))
    scores = {
        "EN": entropy(F),
        "SD": std_dev(F),
        "SF": spatial_frequency(F),
        "AG": average_gradient(F),
        "EI": edge_intensity(F),
        "MI": mutual_information(F, cs),
        "CC": correlation(F, cs),
    }
    if len(cs) == 2:
        scores["Qabf"] = qabf(F, *cs)
    if target is not None:
        scores["PSNR"], scores["SSIM"] = psnr(F, target), ssim(F, target)
    return scores


def region_psnr(F: Tensor, target: Tensor, mask: Tensor, data_range: float = 2.0) -> Tensor:
    r"""PSNR of each fused image over the pixels of a region only, $10\log_{10}(L^2/\mathrm{MSE}_R)$ (lesson 23,
    sec. 23.6; lesson 20, eq. 20.2): e.g. the region where a task's oracle picks one source.

    Parameters
    ----------
    F, target : Tensor, shape (B, C, H, W)
        Fused images and their truth.
    mask : Tensor, shape (B, 1, H, W) or (B, C, H, W)
        The region: pixels where ``mask > 0.5``.
    data_range : float
        $L$ (2 for images in [-1, 1]).

    Returns
    -------
    Tensor, shape (B,), float64
        ``nan`` for an image whose region is empty, ``inf`` where it is reproduced exactly.

    Raises
    ------
    TypeError, ValueError
        If the images are not floating (B, C, H, W) tensors of one shape, or ``mask`` does not broadcast to them.
    """
    F, target = _image(F, "F"), _image(target, "target")
    _check_match(target, "target", F, "F", same_channels=True)
    if not isinstance(mask, Tensor) or mask.dim() != 4 or mask.shape[0] != F.shape[0] or mask.shape[2:] != F.shape[2:]:
        raise ValueError(f"mask must have shape (B, 1 or C, H, W) matching F {tuple(F.shape)}")
    region = (mask > 0.5).expand_as(F).double()
    count = region.flatten(1).sum(1)
    mse = ((F.double() - target.double()).square() * region).flatten(1).sum(1) / count
    return 10 * torch.log10(data_range**2 / mse)


# ---------------------------------------------------------------------------------------------------------------------
# Classical baselines


def gaussian_blur(x: Tensor, sd: float) -> Tensor:
    r"""Separable Gaussian smoothing over the last two axes, reflect padding, the kernel cut at
    $\lceil 3\,\mathrm{sd}\rceil$ pixels (or one pixel short of the image) and normalised (lesson 23, eq. 23.4):
    the smoothing of the gain maps, and the blur of the multi-focus task (sec. 23.5). ``sd = 0`` returns ``x``.

    Parameters
    ----------
    x : Tensor, shape (..., H, W)
        The maps or images.
    sd : float
        Standard deviation in pixels, >= 0.

    Returns
    -------
    Tensor, shape (..., H, W)

    Raises
    ------
    ValueError
        If ``sd`` is negative or not a finite number.
    """
    sd = check_positive(sd, "sd", allow_zero=True)
    if sd == 0:
        return x
    h, w = x.shape[-2:]
    r = min(math.ceil(3 * sd), h - 1, w - 1)
    u = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (u / sd) ** 2)
    k = k / k.sum()
    y = pad(x.reshape(-1, 1, h, w), (r, r, r, r), mode="reflect")
    y = conv2d(conv2d(y, k.reshape(1, 1, 1, -1)), k.reshape(1, 1, -1, 1))
    return y.reshape(x.shape)


def _box_mean(x: Tensor, window: int) -> Tensor:
    """Mean over a ``window`` x ``window`` box around each pixel of ``x`` (N, 1, H, W), reflected at the border."""
    p = window // 2
    k = torch.full((1, 1, window, window), 1.0 / window**2, dtype=x.dtype, device=x.device)
    return conv2d(pad(x, (p, p, p, p), mode="reflect"), k)


def _select(score: Tensor) -> Tensor:
    """One-hot weights over the first axis for the largest ``score``; ties (within ``_TIE``) share equally."""
    best = (score >= score.amax(0, keepdim=True) - _TIE).to(score.dtype)
    return best / best.sum(0, keepdim=True)


def _odd_window(window: object, name: str, size: tuple[int, ...]) -> int:
    if isinstance(window, bool) or not isinstance(window, int) or window < 3 or window % 2 == 0:
        raise ValueError(f"{name} must be an odd integer >= 3, got {window!r}")
    if window > min(size):
        raise ValueError(f"{name} {window} is larger than the images {tuple(size)}")
    return window


def _variance_weights(cs: list[Tensor], window: object, smooth: object) -> Tensor:
    """The float64 decision map of eq. 23.11 for checked sources ``cs``, shape (K, B, 1, H, W)."""
    K, (n, _, H, W) = len(cs), cs[0].shape
    window = _odd_window(window, "window", (H, W))
    if smooth != 0:
        smooth = _odd_window(smooth, "smooth", (H, W))
    y = torch.stack(cs).double().mean(2, keepdim=True).reshape(K * n, 1, H, W)
    var = (_box_mean(y * y, window) - _box_mean(y, window).square()).clamp_min(0)
    w = _select(var.reshape(K, n, 1, H, W))
    if smooth:
        w = _select(_box_mean(w.reshape(K * n, 1, H, W), smooth).reshape(K, n, 1, H, W))
    return w


def local_variance_weights(sources: Tensor | Sequence[Tensor], window: int = 7, smooth: int = 0) -> Tensor:
    r"""Decision map of multi-focus fusion by local variance (lesson 23, eq. 23.11): at each pixel the weight 1 goes
    to the source whose luminance varies most in the ``window`` x ``window`` box around it, $w_k = [k =
    \arg\max_j \sigma^2_j]$.

    $\sigma^2_j = \overline{y_j^2} - \bar y_j^2$ are box means (uniform weights, reflected at the border) of the
    luminance $y_j$ (channel mean) of source $j$: a blurred, out-of-focus region has little local variance. Ties
    (local variances within $10^{-10}$ of the largest, e.g. where every source is flat) share the weight equally.
    With ``smooth`` > 0 the map then takes a majority vote (consistency check): each weight is replaced by its mean
    over a ``smooth`` x ``smooth`` box and the largest wins again, which removes isolated wrong decisions.

    Parameters
    ----------
    sources : Tensor, shape (K, B, C, H, W), or a sequence of K >= 2 tensors of shape (B, C, H, W)
        The source images in [-1, 1].
    window : int
        Odd side (>= 3) of the variance box, at most ``min(H, W)``.
    smooth : int
        Odd side (>= 3) of the majority box, at most ``min(H, W)``, or 0 for none.

    Returns
    -------
    Tensor, shape (K, B, 1, H, W)
        One-hot weights (1/m for each of m tied sources) summing to 1 over the sources, in the sources' dtype.

    Raises
    ------
    TypeError
        If a source is not a floating tensor, or ``sources`` is neither a tensor nor a sequence.
    ValueError
        If there are fewer than 2 sources, a source is empty, not of shape (B, C, H, W) or holds NaN or infinity,
        the sources' shapes differ, or ``window`` or ``smooth`` is not as described.
    """
    cs = _sources(sources, at_least=2, same_channels=True)
    return _variance_weights(cs, window, smooth).to(cs[0].dtype)


def local_variance_fusion(sources: Tensor | Sequence[Tensor], window: int = 7, smooth: int = 0) -> Tensor:
    r"""Multi-focus fusion by local-variance selection (lesson 23, eq. 23.11): $F = \sum_k w_k c_k$ with the
    one-hot decision map $w$ of :func:`local_variance_weights`, so each pixel is copied from the sharpest source.

    Parameters
    ----------
    sources : Tensor, shape (K, B, C, H, W), or a sequence of K >= 2 tensors of shape (B, C, H, W)
        The source images in [-1, 1].
    window : int
        Odd side (>= 3) of the variance box, at most ``min(H, W)``.
    smooth : int
        Odd side (>= 3) of the majority box on the decision map, or 0 for none.

    Returns
    -------
    Tensor, shape (B, C, H, W)
        The fused images.

    Raises
    ------
    TypeError
        If a source is not a floating tensor, or ``sources`` is neither a tensor nor a sequence.
    ValueError
        If there are fewer than 2 sources, a source is empty, not of shape (B, C, H, W) or holds NaN or infinity,
        the sources' shapes differ, or ``window`` or ``smooth`` is not as described.
    """
    cs = _sources(sources, at_least=2, same_channels=True)
    x = torch.stack(cs)
    return (_variance_weights(cs, window, smooth).to(x.dtype) * x).sum(0)


def average_fusion(sources: Tensor | Sequence[Tensor]) -> Tensor:
    r"""The naive baseline of lesson 23 (sec. 23.6): the pixel-wise mean $F = \frac{1}{K}\sum_k c_k$ of the
    sources (it halves the contrast of what only one source shows).

    Parameters
    ----------
    sources : Tensor, shape (K, B, C, H, W), or a sequence of K >= 2 tensors of shape (B, C, H, W)
        The source images in [-1, 1].

    Returns
    -------
    Tensor, shape (B, C, H, W)
        The fused images.

    Raises
    ------
    TypeError
        If a source is not a floating tensor, or ``sources`` is neither a tensor nor a sequence.
    ValueError
        If there are fewer than 2 sources, a source is empty, not of shape (B, C, H, W) or holds NaN or infinity,
        or the sources' shapes differ.
    """
    return torch.stack(_sources(sources, at_least=2, same_channels=True)).mean(0)


_BINOMIAL = (1.0, 4.0, 6.0, 4.0, 1.0)


def _blur(x: Tensor) -> Tensor:
    """Separable 5-tap binomial filter [1 4 6 4 1] / 16 of ``x`` (N, C, H, W), border replicated."""
    n, c, h, w = x.shape
    k = torch.tensor(_BINOMIAL, dtype=x.dtype, device=x.device) / 16
    y = pad(x.reshape(n * c, 1, h, w), (2, 2, 2, 2), mode="replicate")
    return conv2d(conv2d(y, k.reshape(1, 1, 1, 5)), k.reshape(1, 1, 5, 1)).reshape(n, c, h, w)


def _upsample(x: Tensor, size: tuple[int, int]) -> Tensor:
    return interpolate(x, size=size, mode="bilinear", align_corners=False)


def _gaussian_pyramid(x: Tensor, levels: int) -> list[Tensor]:
    pyr = [x]
    for _ in range(levels - 1):
        pyr.append(_blur(pyr[-1])[:, :, ::2, ::2])  # ceil(H / 2) x ceil(W / 2): odd sizes keep their last row
    return pyr


def _laplacian_pyramid(x: Tensor, levels: int) -> list[Tensor]:
    g = _gaussian_pyramid(x, levels)
    return [fine - _upsample(coarse, fine.shape[2:]) for fine, coarse in pairwise(g)] + [g[-1]]


def mertens_fusion(
    sources: Tensor | Sequence[Tensor],
    levels: int | None = None,
    contrast: float = 1.0,
    saturation: float = 1.0,
    exposedness: float = 1.0,
    sigma: float = 0.2,
) -> Tensor:
    r"""Exposure fusion of Mertens, Kautz and Van Reeth (2007) (lesson 23, eq. 23.12): each source gets a per-pixel
    quality weight $W_k = C_k^{\omega_c} S_k^{\omega_s} E_k^{\omega_e}$, normalised over the sources, and the
    Laplacian pyramids of the sources are blended with the Gaussian pyramids of the weights,
    $\mathcal L_l\{F\} = \sum_k \mathcal G_l\{\hat W_k\}\, \mathcal L_l\{c_k\}$, then collapsed.

    On the sources' values $u = (x + 1)/2 \in [0, 1]$: the contrast $C$ is the absolute response of the 3x3
    Laplacian filter (border replicated) to the grayscale (channel mean); the saturation $S$ is the standard
    deviation across the colour channels (taken as 1 for 1-channel sources, so it drops out); the well-exposedness
    is $E = \prod_c \exp(-(u_c - 1/2)^2 / (2\sigma^2))$. The weights are $\hat W_k = (W_k + 10^{-12}) / \sum_j
    (W_j + 10^{-12})$. Pyramids use the 5-tap binomial filter, subsample by 2 (an odd side $n$ gives $\lceil n/2
    \rceil$) and expand by bilinear interpolation to the exact finer size, so a pyramid collapses back to its image
    exactly (and identical sources fuse to themselves).

    Parameters
    ----------
    sources : Tensor, shape (K, B, C, H, W), or a sequence of K >= 2 tensors of shape (B, C, H, W)
        The exposures, in [-1, 1].
    levels : int, optional
        Pyramid levels, between 1 (a per-pixel weighted mean) and $\lfloor\log_2 \min(H, W)\rfloor + 1$ (a 1-pixel
        top); by default $\lfloor\log_2 \min(H, W)\rfloor - 1$ (at least 1), one fewer than the authors' code, so
        that the top level keeps 4 to 8 pixels a side (on images of 8 or more): on small images a 1- or 2-pixel top
        blends the sources' overall brightness with nearly equal weights and pulls the result towards the badly
        exposed source.
    contrast, saturation, exposedness : float
        The exponents $\omega_c$, $\omega_s$, $\omega_e \ge 0$ (0 switches a measure off).
    sigma : float
        Width $\sigma > 0$ of the well-exposedness Gaussian, on the [0, 1] scale.

    Returns
    -------
    Tensor, shape (B, C, H, W)
        The fused images, clipped to [-1, 1], in the sources' dtype.

    Raises
    ------
    TypeError
        If a source is not a floating tensor, or ``sources`` is neither a tensor nor a sequence.
    ValueError
        If there are fewer than 2 sources, a source is empty, not of shape (B, C, H, W) or holds NaN or infinity,
        the sources' shapes differ, ``levels`` is outside its range, an exponent is negative or ``sigma`` is not
        positive.
    """
    cs = _sources(sources, at_least=2, same_channels=True)
    K, (n, C, H, W) = len(cs), cs[0].shape
    top = min(H, W).bit_length() - 1  # floor(log2(min(H, W)))
    if levels is None:
        levels = max(top - 1, 1)
    elif check_int(levels, "levels") > top + 1:
        raise ValueError(f"levels must be at most {top + 1} for {H} x {W} images, got {levels}")
    wc, ws, we = (
        check_positive(v, name, allow_zero=True)
        for v, name in ((contrast, "contrast"), (saturation, "saturation"), (exposedness, "exposedness"))
    )
    sigma = check_positive(sigma, "sigma")

    u = (torch.stack(cs).double().reshape(K * n, C, H, W) + 1) / 2
    lap = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], dtype=u.dtype, device=u.device)
    quality = conv2d(pad(u.mean(1, keepdim=True), (1, 1, 1, 1), mode="replicate"), lap[None, None]).abs() ** wc
    if C > 1:
        quality = quality * u.std(1, correction=0, keepdim=True) ** ws
    quality = quality * torch.exp(-(u - 0.5).square() / (2 * sigma**2)).prod(1, keepdim=True) ** we
    weights = (quality + 1e-12).reshape(K, n, 1, H, W)
    weights = (weights / weights.sum(0, keepdim=True)).reshape(K * n, 1, H, W)

    blended = [
        (gw.reshape(K, n, 1, *gw.shape[2:]) * lu.reshape(K, n, C, *lu.shape[2:])).sum(0)
        for gw, lu in zip(_gaussian_pyramid(weights, levels), _laplacian_pyramid(u, levels), strict=True)
    ]
    out = blended[-1]
    for detail in reversed(blended[:-1]):
        out = detail + _upsample(out, detail.shape[2:])
    return (2 * out - 1).clamp(-1, 1).to(cs[0].dtype)
