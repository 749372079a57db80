r"""Sample-quality metrics for comparing a batch of samples with data (lesson 0, sec. 0.7), and image metrics: an
attribute classifier that judges samples, a Frechet distance in its feature space, PSNR and SSIM (lesson 20)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from diffmath.core._validate import check_batch, check_finite, check_int, check_nonempty, check_positive
from diffmath.core.models import predict
from diffmath.exact.mixtures import GaussianMixture


def _pair(x: Tensor, y: Tensor, at_least: int = 1) -> tuple[Tensor, Tensor]:
    x, y = (check_nonempty(check_batch(v, name), name, at_least) for v, name in ((x, "x"), (y, "y")))
    if x.shape[1:] != y.shape[1:]:
        raise ValueError(f"x and y must have the same event shape, got {tuple(x.shape[1:])} and {tuple(y.shape[1:])}")
    return x.flatten(1).double(), y.flatten(1).double().to(x.device)  # computed where x is


def sliced_w1(x: Tensor, y: Tensor, num_projections: int = 256, generator: torch.Generator | None = None) -> float:
    r"""Sliced Wasserstein-1 distance between two samples (lesson 0, eq. 0.21).

    $\mathrm{SW}_1(p, q) = \mathbb E_{\theta\sim U(S^{d-1})}\, W_1(\theta^\top_\# p, \theta^\top_\# q)$, each 1-D
    $W_1$ computed exactly from quantiles (both samples are interpolated onto a common set of quantile levels).

    Parameters
    ----------
    x, y : Tensor, shape (N, ...) and (M, ...)
        The two samples, of the same event shape.
    num_projections : int
        Random directions, drawn from ``generator``.
    generator : torch.Generator, optional
        Source of the random directions.

    Returns
    -------
    float
        The Monte Carlo estimate of $\mathrm{SW}_1$.

    Raises
    ------
    TypeError
        If ``x`` or ``y`` is not a floating tensor.
    ValueError
        If ``x`` or ``y`` is empty, has fewer than 2 dimensions or holds NaN or infinity, their event shapes differ,
        or ``num_projections`` is not a positive integer.
    """
    x, y = _pair(x, y)
    check_int(num_projections, "num_projections")
    theta = torch.randn(x.shape[1], num_projections, generator=generator, dtype=torch.float64).to(x.device)
    theta = theta / theta.norm(dim=0, keepdim=True)  # drawn on the CPU: the same directions on every device
    px, _ = torch.sort(x @ theta, dim=0)
    py, _ = torch.sort(y @ theta, dim=0)
    n = max(x.shape[0], y.shape[0])
    q = (torch.arange(n, dtype=torch.float64, device=x.device) + 0.5) / n
    return (_quantile(px, q) - _quantile(py, q)).abs().mean().item()


def _quantile(sorted_proj: Tensor, q: Tensor) -> Tensor:
    n = sorted_proj.shape[0]
    pos = q * n - 0.5
    lo = pos.floor().clamp(0, n - 1).long()
    hi = (lo + 1).clamp(max=n - 1)
    frac = (pos - lo.double()).clamp(0, 1)[:, None]
    return sorted_proj[lo] * (1 - frac) + sorted_proj[hi] * frac


def mmd_rbf(x: Tensor, y: Tensor, bandwidth: float = 0.3) -> float:
    r"""Unbiased squared maximum mean discrepancy with the kernel $k(u,v) = e^{-\|u-v\|^2/(2h^2)}$ (lesson 0, eq. 0.22).

    Parameters
    ----------
    x, y : Tensor, shape (N, ...) and (M, ...), N, M >= 2
        The two samples, of the same event shape.
    bandwidth : float
        Kernel width $h$.

    Returns
    -------
    float
        $\widehat{\mathrm{MMD}}^2_u$ (can be slightly negative when the distributions agree).

    Raises
    ------
    TypeError
        If ``x`` or ``y`` is not a floating tensor.
    ValueError
        If ``x`` or ``y`` has fewer than 2 dimensions or holds NaN or infinity, or their event shapes differ,
        either has fewer than two samples, or ``bandwidth`` is not positive.
    """
    x, y = _pair(x, y, at_least=2)
    bandwidth = check_positive(bandwidth, "bandwidth")

    def k(u: Tensor, v: Tensor) -> Tensor:
        return torch.exp(-(torch.cdist(u, v) ** 2) / (2 * bandwidth**2))

    n, m = x.shape[0], y.shape[0]
    kxx = (k(x, x).sum() - n) / (n * (n - 1))
    kyy = (k(y, y).sum() - m) / (m * (m - 1))
    return (kxx + kyy - 2 * k(x, y).mean()).item()


def mode_weights(gmm: GaussianMixture, x: torch.Tensor) -> torch.Tensor:
    r"""Fraction of the samples ``x`` (shape (N, ...)) whose most probable component $\arg\max_k p(k\mid x_0)$ is each
    component $k$ of the mixture (lesson 0, eq. 0.19 at $a = 1, b = 0$); shape (K,).

    Parameters
    ----------
    gmm : GaussianMixture
        The mixture whose components are the modes.
    x : Tensor, shape (N, *event_shape)
        Samples.

    Returns
    -------
    Tensor, shape (K,), float64
        Fractions summing to one.

    Raises
    ------
    TypeError
        If ``gmm`` is not a :class:`~diffmath.exact.mixtures.GaussianMixture` or ``x`` is not a floating tensor.
    ValueError
        If ``x`` is empty, does not have the mixture's event shape or holds NaN or infinity.
    """
    if not isinstance(gmm, GaussianMixture):
        raise TypeError(f"gmm must be a GaussianMixture, got {type(gmm).__name__}")
    check_nonempty(check_batch(x, "x"), "x")
    k = gmm.component_posterior(x, 1.0, 0.0).argmax(1)
    return torch.bincount(k, minlength=gmm.K).double() / x.shape[0]


@dataclass(frozen=True)
class Outliers:
    r"""How far samples stray beyond the data (lesson 20, eq. 20.12): see :func:`outliers`.

    Parameters
    ----------
    fraction : float
        Share of the samples with $|x| > (1 + m) R$.
    max_radius : float
        $\max_i |x_i|$ over the samples.
    data_radius : float
        $R = \max_j |y_j|$ over the data.
    """

    fraction: float
    max_radius: float
    data_radius: float

    def __str__(self) -> str:
        return f"{100 * self.fraction:.2f}% beyond, max |x| = {self.max_radius:.2f} (data {self.data_radius:.2f})"


def outliers(x: Tensor, data: Tensor, margin: float = 0.1) -> Outliers:
    r"""The far outliers that sliced W1 and MMD hardly see (lesson 20, eq. 20.12): the share of samples outside the
    data's ball widened by ``margin``, $\frac1N\#\{i : |x_i| > (1 + m)\max_j |y_j|\}$, and the largest radius.

    A sampler that sends 0.2% of its points to $|x| \approx 50$ moves a sliced W1 of 0.05 by about 0.1 and an RBF
    MMD by nothing; this count sees it. Norms are over all non-batch dimensions.

    Parameters
    ----------
    x : Tensor, shape (N, ...)
        Samples.
    data : Tensor, shape (M, ...)
        Data of the same event shape.
    margin : float
        $m \ge 0$.

    Returns
    -------
    Outliers

    Raises
    ------
    TypeError
        If ``x`` or ``data`` is not a floating tensor.
    ValueError
        If either is empty, the event shapes differ, either holds NaN or infinity, or ``margin`` is not a finite
        number >= 0.
    """
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin < float("inf"):
        raise ValueError(f"margin must be a finite number >= 0, got {margin!r}")
    x, data = _pair(x, data)
    r, big_r = x.norm(dim=1), data.norm(dim=1).max().item()
    return Outliers((r > (1 + margin) * big_r).double().mean().item(), r.max().item(), big_r)


# ---------------------------------------------------------------------------------------------------------------------
# Image metrics (lesson 20): a classifier trained on real data judges samples; PSNR and SSIM compare with a reference.


class AttributeClassifier(nn.Module):
    r"""A small CNN with one linear head per attribute, trained on real images and used only to judge samples
    (lesson 20, eq. 20.1).

    Three 3x3 convolutions (``width``, ``2 width``, ``2 width`` channels; the last two with stride 2), each followed by
    GroupNorm and SiLU, global average pooling and a linear layer to ``features`` dimensions (SiLU) give
    :meth:`features`; the heads map those to each attribute's logits. About 66k parameters at the defaults.

    Parameters
    ----------
    in_channels : int
        Image channels $C$.
    size : int
        Image height and width the classifier was trained on (checked on input).
    attributes : dict of str to int
        Attribute name -> number of classes, e.g. ``{"shape": 3, "colour": 3}``.
    width : int
        Channels of the first convolution.
    features : int
        Dimension $F$ of the penultimate features (the space of :func:`frechet_distance`).
    coords : bool
        Append two channels holding each pixel's row and column (in [-1, 1]) to the input, so that position
        attributes (e.g. a quadrant) survive the global pooling.

    Raises
    ------
    ValueError
        If a size is not a positive integer, ``width`` is not a multiple of 8 (the GroupNorm groups), or
        ``attributes`` is not a non-empty dict of names to class counts >= 2.
    """

    def __init__(
        self,
        in_channels: int,
        size: int,
        attributes: dict[str, int],
        width: int = 32,
        features: int = 128,
        coords: bool = False,
    ) -> None:
        super().__init__()
        for name, v in (("in_channels", in_channels), ("size", size), ("width", width), ("features", features)):
            check_int(v, name)
        if width % 8:
            raise ValueError(f"width must be a multiple of 8 (GroupNorm with 8 groups), got {width}")
        if (
            not isinstance(attributes, dict)
            or not attributes
            or any(not isinstance(a, str) for a in attributes)
            or any(not isinstance(k, int) or isinstance(k, bool) or k < 2 for k in attributes.values())
        ):
            raise ValueError(f"attributes must map names to class counts >= 2, got {attributes!r}")
        if not isinstance(coords, bool):
            raise TypeError(f"coords must be a bool, got {type(coords).__name__}")
        self.in_channels, self.size, self.attributes, self.coords = in_channels, size, dict(attributes), coords
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(in_channels + 2 * coords, w, 3, padding=1),
            nn.GroupNorm(8, w),
            nn.SiLU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1),
            nn.GroupNorm(8, 2 * w),
            nn.SiLU(),
            nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1),
            nn.GroupNorm(8, 2 * w),
            nn.SiLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(2 * w, features),
            nn.SiLU(),
        )
        self.heads = nn.ModuleDict({name: nn.Linear(features, k) for name, k in self.attributes.items()})

    def _check(self, x: Tensor, name: str = "images") -> Tensor:
        x = check_batch(x, name, min_dim=4)
        if x.dim() != 4 or x.shape[1:] != (self.in_channels, self.size, self.size):
            raise ValueError(
                f"{name} must have shape (B, {self.in_channels}, {self.size}, {self.size}), got {tuple(x.shape)}"
            )
        p = next(self.parameters())
        return x.to(p.device, p.dtype)  # judged where the classifier is

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features of images ``x`` (lesson 20, eq. 20.1).

        Parameters
        ----------
        x : Tensor, shape (B, C, H, W)
            Images in [-1, 1].

        Returns
        -------
        Tensor, shape (B, F)
            The features on which the Frechet distance is computed.

        Raises
        ------
        TypeError
            If ``x`` is not a floating tensor.
        ValueError
            If ``x`` does not have the shape the classifier was built for, or holds NaN or infinity.
        """
        x = self._check(x)
        if self.coords:  # two channels holding each pixel's row and column in [-1, 1]: position survives the pooling
            g = torch.linspace(-1, 1, self.size, dtype=x.dtype, device=x.device)
            rows, cols = g[:, None].expand(self.size, self.size), g[None, :].expand(self.size, self.size)
            x = torch.cat([x, torch.stack([rows, cols]).expand(x.shape[0], 2, -1, -1)], 1)
        return self.body(x)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Logits of every attribute for images ``x`` (lesson 20, eq. 20.1).

        Parameters
        ----------
        x : Tensor, shape (B, C, H, W)
            Images in [-1, 1].

        Returns
        -------
        dict of str to Tensor
            Attribute name -> logits of shape (B, number of classes).

        Raises
        ------
        TypeError
            If ``x`` is not a floating tensor.
        ValueError
            If ``x`` does not have the shape the classifier was built for, or holds NaN or infinity.
        """
        h = self.features(x)
        return {name: head(h) for name, head in self.heads.items()}


class _AttributeLoss:
    """Sum of per-attribute cross-entropies; the labels arrive mixed-radix encoded in one integer (``train``'s cond).
    With ``shift`` > 0 each image is first translated by up to ``shift`` pixels each way (black fill)."""

    def __init__(self, attributes: dict[str, int], shift: int = 0) -> None:
        self.attributes, self.shift = dict(attributes), shift

    def encode(self, labels: dict[str, Tensor]) -> Tensor:
        code, base = 0, 1
        for name, k in self.attributes.items():
            code, base = code + labels[name] * base, base * k
        return code

    def __call__(self, model: nn.Module, x: Tensor, generator: torch.Generator, cond: Tensor | None = None) -> Tensor:
        if self.shift:
            B, (H, W), s = x.shape[0], x.shape[2:], self.shift
            crops = nn.functional.pad(x, (s, s, s, s), value=-1.0).unfold(2, H, 1).unfold(3, W, 1)
            dy, dx = torch.randint(0, 2 * s + 1, (2, B), generator=generator)
            x = crops[torch.arange(B), :, dy, dx]
        logits, total = model(x), 0.0
        for name, k in self.attributes.items():
            total = total + nn.functional.cross_entropy(logits[name], cond % k)
            cond = cond // k
        return total

    def __repr__(self) -> str:
        names = ", ".join(f"{a}:{k}" for a, k in self.attributes.items())
        return f"attribute_cross_entropy({names}; shift={self.shift})"


class _DenoisedAttributeLoss(_AttributeLoss):
    r"""The attribute cross-entropy on a diffusion model's denoised guess $\hat x_0(x_t, t)$ (lesson 22, eq. 22.8)
    instead of the clean image: $t \sim U(0, 0.999\,t_{\max})$, $x_t = a_t x_0 + b_t\varepsilon$, the
    denoiser's $\hat x_0$ clamped to $[-1, 1]$ and held fixed. A classifier trained this way reads the blurred
    guesses that guidance on $\hat x_0$ feeds it, and learns the prior where $\hat x_0$ carries no attribute."""

    def __init__(self, attributes: dict[str, int], denoiser, schedule) -> None:
        super().__init__(attributes, 0)
        self.denoiser, self.schedule = denoiser, schedule

    def __call__(self, model: nn.Module, x: Tensor, generator: torch.Generator, cond: Tensor | None = None) -> Tensor:
        s = self.schedule
        t = 0.999 * s.t_max * torch.rand(x.shape[0], generator=generator, dtype=torch.float64)  # a > 0 for any model
        c = s.coefficients(t)
        a, b = (v.to(x.device, x.dtype).view(-1, 1, 1, 1) for v in (c.a, c.b))
        xt = a * x + b * torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)  # CPU draws
        with torch.no_grad():
            x0 = predict(self.denoiser, xt, t.to(x.dtype), s, "x0").clamp(-1, 1)
        return super().__call__(model, x0, generator, cond)

    def __repr__(self) -> str:
        return "denoised_" + super().__repr__()


def _check_classifier(classifier: object) -> AttributeClassifier:
    if not isinstance(classifier, AttributeClassifier):
        raise TypeError(f"classifier must be an AttributeClassifier, got {type(classifier).__name__}")
    return classifier


@torch.no_grad()
def _in_chunks(fn, x: Tensor, chunk: int = 1000) -> list:
    return [fn(x[i : i + chunk]) for i in range(0, x.shape[0], chunk)]


def attribute_accuracy(
    classifier: AttributeClassifier, images: Tensor, labels: dict[str, Tensor], joint: bool = False
) -> dict[str, float]:
    r"""Fraction of ``images`` whose attributes the classifier reads as ``labels`` (lesson 20, eq. 20.1).

    For samples drawn conditionally on labels, this is how often the sample shows what was asked for; with ``joint``,
    also how often it shows all of it at once (lesson 21, sec. 21.7).

    Parameters
    ----------
    classifier : AttributeClassifier
        A classifier trained on real data (:func:`~diffmath.recipes.train_attribute_classifier`).
    images : Tensor, shape (B, C, H, W)
        Images in [-1, 1].
    labels : dict of str to Tensor
        Attribute name -> integer tensor of shape (B,) (a subset of the classifier's attributes).
    joint : bool
        Add ``"joint"``: the fraction of images whose every listed attribute is read right.

    Returns
    -------
    dict of str to float
        Attribute name -> accuracy in [0, 1] (and ``"joint"``).

    Raises
    ------
    TypeError
        If ``classifier`` is not an :class:`AttributeClassifier` or ``images`` is not a floating tensor.
    ValueError
        If ``labels`` is empty, names an attribute the classifier lacks, or its tensors are not integer of shape
        (B,) with valid classes; or ``images`` has the wrong shape or holds NaN or infinity.
    """
    classifier = _check_classifier(classifier)
    images = check_batch(images, "images", min_dim=4)
    if not isinstance(labels, dict) or not labels:
        raise ValueError("labels must be a non-empty dict attribute -> int tensor of shape (B,)")
    for name, lab in labels.items():
        if name not in classifier.attributes:
            raise ValueError(
                f"labels name unknown attribute {name!r}; the classifier knows {tuple(classifier.attributes)}"
            )
        if not isinstance(lab, Tensor) or lab.is_floating_point() or lab.shape != (images.shape[0],):
            raise ValueError(f"labels[{name!r}] must be an integer tensor of shape ({images.shape[0]},)")
        if lab.numel() and (lab.min() < 0 or lab.max() >= classifier.attributes[name]):
            raise ValueError(f"labels[{name!r}] must lie in [0, {classifier.attributes[name]})")
    logits = _in_chunks(classifier, images)
    right = {name: torch.cat([lg[name] for lg in logits]).argmax(1) == lab for name, lab in labels.items()}
    out = {name: r.double().mean().item() for name, r in right.items()}
    if joint:
        out["joint"] = torch.stack(list(right.values())).all(0).double().mean().item()
    return out


def gaussian_frechet(mu1: Tensor, cov1: Tensor, mu2: Tensor, cov2: Tensor) -> float:
    r"""Squared Frechet (2-Wasserstein) distance between $\mathcal N(\mu_1, \Sigma_1)$ and $\mathcal N(\mu_2,
    \Sigma_2)$ (lesson 20, eq. 20.1).

    $d^2 = \|\mu_1 - \mu_2\|^2 + \operatorname{tr}\Sigma_1 + \operatorname{tr}\Sigma_2
    - 2\operatorname{tr}(\Sigma_1^{1/2}\Sigma_2\Sigma_1^{1/2})^{1/2}$, the last trace from the eigenvalues of the
    symmetric matrix $\Sigma_1^{1/2}\Sigma_2\Sigma_1^{1/2}$ in float64 (negative round-off clipped to zero).

    Parameters
    ----------
    mu1, mu2 : Tensor, shape (F,)
        Means.
    cov1, cov2 : Tensor, shape (F, F)
        Covariances, symmetric positive semi-definite.

    Returns
    -------
    float
        $d^2 \ge 0$.

    Raises
    ------
    TypeError
        If an argument is not a real tensor.
    ValueError
        If the shapes do not agree, a value is NaN or infinite, or a covariance is not symmetric positive
        semi-definite.
    """
    named = {"mu1": mu1, "cov1": cov1, "mu2": mu2, "cov2": cov2}
    for name, v in named.items():
        if not isinstance(v, Tensor) or v.is_complex() or v.dtype == torch.bool:
            raise TypeError(f"{name} must be a real tensor, got {type(v).__name__}")
        check_finite(v, name)
    mu1, mu2, cov1, cov2 = (v.to(torch.float64) for v in (mu1, mu2, cov1, cov2))
    f = mu1.shape[0] if mu1.dim() == 1 else -1
    if f < 1:
        raise ValueError(f"mu1 must have shape (F,) with F >= 1, got {tuple(mu1.shape)}")
    for name, v, want in (("mu2", mu2, (f,)), ("cov1", cov1, (f, f)), ("cov2", cov2, (f, f))):
        if v.shape != want:
            raise ValueError(f"{name} must have shape {want} (F = {f} from mu1), got {tuple(v.shape)}")
    for name, cov in (("cov1", cov1), ("cov2", cov2)):
        scale = cov.abs().max().item()
        if (cov - cov.T).abs().max().item() > 1e-8 * max(scale, 1.0):
            raise ValueError(f"{name} must be symmetric")
        if torch.linalg.eigvalsh(cov).min().item() < -1e-8 * max(scale, 1.0):
            raise ValueError(f"{name} must be positive semi-definite (a covariance)")
    lam, vec = torch.linalg.eigh(0.5 * (cov1 + cov1.T))
    root1 = (vec * lam.clamp(min=0).sqrt()) @ vec.T
    middle = root1 @ cov2 @ root1
    cross = torch.linalg.eigvalsh(0.5 * (middle + middle.T)).clamp(min=0).sqrt().sum()
    d2 = (mu1 - mu2).square().sum() + cov1.trace() + cov2.trace() - 2 * cross
    return max(d2.item(), 0.0)


def frechet_distance(classifier: AttributeClassifier, x: Tensor, y: Tensor) -> float:
    r"""Squared Frechet distance between Gaussians fitted to the classifier features of two image sets (lesson 20,
    eq. 20.1).

    The FID recipe with the attribute classifier in place of Inception: features $\phi(x)$ of each set, their mean
    and (unbiased) covariance, then :func:`gaussian_frechet`. Its value between two halves of real data is the floor
    that sampling error alone gives; it shrinks as the sets grow, so compare values at equal sizes.

    Parameters
    ----------
    classifier : AttributeClassifier
        A classifier trained on real data.
    x, y : Tensor, shape (N, C, H, W) and (M, C, H, W), N, M >= 2
        The two image sets, in [-1, 1].

    Returns
    -------
    float
        $d^2 \ge 0$, symmetric in ``x`` and ``y`` (up to round-off).

    Raises
    ------
    TypeError
        If ``classifier`` is not an :class:`AttributeClassifier` or an image set is not a floating tensor.
    ValueError
        If a set has fewer than two images, the wrong shape, or holds NaN or infinity.
    """
    hx, hy = _set_features(classifier, x, y)
    return gaussian_frechet(hx.mean(0), torch.cov(hx.T), hy.mean(0), torch.cov(hy.T))


def _set_features(classifier: AttributeClassifier, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """The float64 classifier features of two checked image sets of at least two images each (eqs. 20.1-20.2)."""
    classifier = _check_classifier(classifier)
    out = []
    for name, images in (("x", x), ("y", y)):
        images = classifier._check(images, name)
        if images.shape[0] < 2:
            raise ValueError(f"{name} needs at least two images, got {images.shape[0]}")
        out.append(torch.cat(_in_chunks(classifier.features, images)).double())
    return out[0], out[1]


def kernel_mmd2(hx: Tensor, hy: Tensor, degree: int = 3) -> float:
    r"""Unbiased squared MMD with the polynomial kernel $k(a, b) = (a^\top b / F + 1)^{d}$ between two feature sets
    (lesson 20, eq. 20.10): the kernel distance (KID) when the features are a classifier's.

    $\widehat{\mathrm{MMD}}^2 = \frac{1}{n(n-1)}\sum_{i \ne j} k(x_i, x_j) + \frac{1}{m(m-1)}\sum_{i \ne j}
    k(y_i, y_j) - \frac{2}{nm}\sum_{i,j} k(x_i, y_j)$, in float64. Unlike the Frechet distance, whose plug-in
    estimate is biased upwards by $O(F/n)$ (so it can only be compared at equal sizes), its expectation is the
    population value: zero for two draws of one distribution, so single values can be negative.

    Parameters
    ----------
    hx, hy : Tensor, shape (N, F) and (M, F), N, M >= 2
        The two feature sets.
    degree : int
        Degree $d \ge 1$ of the kernel (3, as in KID).

    Returns
    -------
    float
        The unbiased estimate (may be slightly negative).

    Raises
    ------
    TypeError
        If a set is not a real tensor.
    ValueError
        If the shapes are not (N, F), (M, F) with N, M >= 2, a value is not finite, or ``degree`` is not an integer
        >= 1.
    """
    check_int(degree, "degree")
    for name, h in (("hx", hx), ("hy", hy)):
        if not isinstance(h, Tensor) or h.is_complex() or h.dtype == torch.bool:
            raise TypeError(f"{name} must be a real tensor, got {type(h).__name__}")
        if h.dim() != 2 or h.shape[0] < 2:
            raise ValueError(f"{name} must have shape (N, F) with N >= 2, got {tuple(h.shape)}")
        check_finite(h, name)
    if hx.shape[1] != hy.shape[1]:
        raise ValueError(f"hx and hy must have the same feature dimension, got {hx.shape[1]} and {hy.shape[1]}")
    hx, hy = hx.double(), hy.double()
    f = hx.shape[1]

    def k(a: Tensor, b: Tensor) -> Tensor:
        return (a @ b.T / f + 1) ** degree

    def within(h: Tensor) -> Tensor:
        g, n = k(h, h), h.shape[0]
        return (g.sum() - g.diagonal().sum()) / (n * (n - 1))

    return (within(hx) + within(hy) - 2 * k(hx, hy).mean()).item()


def kernel_distance(classifier: AttributeClassifier, x: Tensor, y: Tensor, degree: int = 3) -> float:
    r"""Kernel (KID-style) distance between two image sets in the classifier's features (lesson 20, eq. 20.10):
    :func:`kernel_mmd2` of $\phi(x)$ and $\phi(y)$, an unbiased estimate beside :func:`frechet_distance`'s biased one.

    Parameters
    ----------
    classifier : AttributeClassifier
        A classifier trained on real data.
    x, y : Tensor, shape (N, C, H, W) and (M, C, H, W), N, M >= 2
        The two image sets, in [-1, 1].
    degree : int
        Degree of the polynomial kernel.

    Returns
    -------
    float
        The unbiased squared MMD (zero in expectation for two draws of one distribution).

    Raises
    ------
    TypeError, ValueError
        As :func:`frechet_distance` and :func:`kernel_mmd2`.
    """
    return kernel_mmd2(*_set_features(classifier, x, y), degree=degree)


def _image_pair(x: Tensor, y: Tensor, data_range: float) -> tuple[Tensor, Tensor]:
    x, y = check_batch(x, "x", min_dim=4), check_batch(y, "y", min_dim=4)
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"x and y must have the same shape (B, C, H, W), got {tuple(x.shape)} and {tuple(y.shape)}")
    check_positive(data_range, "data_range")
    return x.double(), y.double()


def psnr(x: Tensor, y: Tensor, data_range: float = 2.0) -> Tensor:
    r"""Peak signal-to-noise ratio of each image, $10 \log_{10}(L^2 / \mathrm{MSE})$ in dB (lesson 20, eq. 20.2).

    Parameters
    ----------
    x, y : Tensor, shape (B, C, H, W)
        Images and their references.
    data_range : float
        $L$, the span of pixel values (2 for images in [-1, 1]).

    Returns
    -------
    Tensor, shape (B,), float64
        PSNR per image; ``inf`` where the images are identical.

    Raises
    ------
    TypeError
        If ``x`` or ``y`` is not a floating tensor.
    ValueError
        If the shapes differ or are not (B, C, H, W), a tensor holds NaN or infinity, or ``data_range`` is not
        positive.
    """
    x, y = _image_pair(x, y, data_range)
    mse = (x - y).square().mean((1, 2, 3))
    return 10 * torch.log10(data_range**2 / mse)


def ssim(x: Tensor, y: Tensor, data_range: float = 2.0, window: int = 7) -> Tensor:
    r"""Structural similarity of each image with its reference (Wang et al. 2004; lesson 20, eq. 20.3).

    In every ``window`` x ``window`` patch (uniform weights, valid positions only, each channel apart),
    $\mathrm{SSIM} = \frac{(2\mu_x\mu_y + C_1)(2\sigma_{xy} + C_2)}{(\mu_x^2 + \mu_y^2 + C_1)(\sigma_x^2 + \sigma_y^2
    + C_2)}$ with $C_1 = (0.01 L)^2$, $C_2 = (0.03 L)^2$ and population (1/n) moments; the map is averaged over
    positions and channels.

    Parameters
    ----------
    x, y : Tensor, shape (B, C, H, W)
        Images and their references.
    data_range : float
        $L$, the span of pixel values (2 for images in [-1, 1]).
    window : int
        Odd side of the patch, at most ``min(H, W)``.

    Returns
    -------
    Tensor, shape (B,), float64
        Mean SSIM per image, at most 1 (1 for identical images).

    Raises
    ------
    TypeError
        If ``x`` or ``y`` is not a floating tensor.
    ValueError
        If the shapes differ or are not (B, C, H, W), a tensor holds NaN or infinity, ``data_range`` is not
        positive, or ``window`` is not an odd integer >= 3 no larger than the images.
    """
    x, y = _image_pair(x, y, data_range)
    if not isinstance(window, int) or isinstance(window, bool) or window < 3 or window % 2 == 0:
        raise ValueError(f"window must be an odd integer >= 3, got {window!r}")
    if window > min(x.shape[2:]):
        raise ValueError(f"window {window} is larger than the images {tuple(x.shape[2:])}")
    B, C = x.shape[:2]

    def mean(t: Tensor) -> Tensor:
        return nn.functional.avg_pool2d(t.reshape(B * C, 1, *t.shape[2:]), window, stride=1)

    mx, my = mean(x), mean(y)
    vx, vy, cxy = mean(x * x) - mx**2, mean(y * y) - my**2, mean(x * y) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    smap = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return smap.reshape(B, C * smap.shape[-2] * smap.shape[-1]).mean(1)
