r"""A stationary Gaussian image prior, exact at every noise level (lesson 23, sec. 23.4).

A stationary Gaussian field has a covariance that depends only on the offset between two pixels, so the orthonormal
2-D Fourier transform diagonalises it: each frequency $f$ of each channel is an independent complex Gaussian of power
$P_f$ around the channel's mean $m$. Seen through $x_t = a_t x_0 + b_t\varepsilon$, the posterior mean is a Wiener
filter, frequency by frequency (lesson 23, eq. 23.8):

$$\hat x_0(x_t) = m + \mathcal F^{-1}\Big[\frac{a_t P_f}{a_t^2 P_f + b_t^2}\,\mathcal F(x_t - a_t m)_f\Big].$$

:class:`StationaryGaussian` is a model with the one interface (lesson 0, sec. 0.5), so every sampler runs on it
unchanged, and it has closed forms a learned image model lacks: its samples, and the expected reconstruction error
of a noised image (eq. 23.9), which gives the diffusion information gain of lesson 23 without Monte Carlo.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffmath.core._validate import as_tensor, check_batch, check_int, check_positive
from diffmath.core.notation import Pair, check_prediction, from_pair
from diffmath.core.schedules import Schedule


def _fft(x: Tensor) -> Tensor:
    return torch.fft.fft2(x, norm="ortho")


def _ifft(x: Tensor) -> Tensor:
    return torch.fft.ifft2(x, norm="ortho").real


class StationaryGaussian:
    r"""The exact model of a stationary Gaussian image prior (lesson 23, eq. 23.8).

    Parameters
    ----------
    power : Tensor, shape (C, H, W)
        $P_f > 0$, the prior's power at each frequency of each channel (in the layout of ``torch.fft.fft2`` with
        ``norm="ortho"``), symmetric under $f \to -f$ so that the field is real.
    mean : Tensor, shape (C,)
        The mean $m$ of each channel.
    schedule : Schedule
        The forward process; gives $a_t, b_t$ (and $\dot a_t, \dot b_t$) at the model's times.
    prediction : {"eps", "x0", "score", "v", "velocity"}
        What a call returns.

    Raises
    ------
    TypeError
        If ``schedule`` is not a Schedule or ``power``/``mean`` are not floating tensors.
    ValueError
        If ``power`` is not of shape (C, H, W) with positive finite entries, ``mean`` not of shape (C,), or
        ``prediction`` unknown; a call raises it if ``x`` is not of shape (B, C, H, W) or ``t`` is invalid.
    """

    def __init__(self, power: Tensor, mean: Tensor, schedule: Schedule, prediction: str = "eps") -> None:
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a diffmath Schedule, got {type(schedule).__name__}")
        power = check_batch(power, "power", min_dim=3)
        if power.dim() != 3 or not bool((power > 0).all()):
            raise ValueError(f"power must have shape (C, H, W) with positive entries, got {tuple(power.shape)}")
        mean = check_batch(mean, "mean", min_dim=1)
        if mean.shape != (power.shape[0],):
            raise ValueError(f"mean must have shape (C,) = ({power.shape[0]},), got {tuple(mean.shape)}")
        self.power, self.mean, self.schedule = power, mean, schedule
        self.prediction = check_prediction(prediction)

    @classmethod
    def fit(
        cls, images: Tensor, schedule: Schedule, prediction: str = "eps", floor: float = 1e-6
    ) -> StationaryGaussian:
        r"""The stationary Gaussian closest to a set of images: the channel means and the mean periodogram
        (lesson 23, sec. 23.4).

        Parameters
        ----------
        images : Tensor, shape (N, C, H, W)
            At least two images.
        schedule : Schedule
            The forward process.
        prediction : str
            What a call returns.
        floor : float
            Smallest power kept (a frequency the images never use would make the filter singular).

        Returns
        -------
        StationaryGaussian

        Raises
        ------
        TypeError, ValueError
            If ``images`` is not a floating tensor of shape (N, C, H, W) with N >= 2, or ``floor`` is not positive.
        """
        x = check_batch(images, "images", min_dim=4)
        if x.dim() != 4 or x.shape[0] < 2:
            raise ValueError(f"images must have shape (N, C, H, W) with N >= 2, got {tuple(x.shape)}")
        floor = check_positive(floor, "floor")
        x = x.double()
        mean = x.mean((0, 2, 3))
        power = _fft(x - mean[:, None, None]).abs().square().mean(0).clamp_min(floor)
        return cls(power, mean, schedule, prediction)

    @property
    def shape(self) -> tuple[int, int, int]:
        """The image shape (C, H, W)."""
        return tuple(self.power.shape)

    def _check(self, x: object) -> Tensor:
        x = check_batch(x, "x", min_dim=4)
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"x must have shape (B, {', '.join(map(str, self.shape))}), got {tuple(x.shape)}")
        return x

    def _filtered(self, x: Tensor, a: Tensor, b: Tensor) -> Tensor:
        a4, b4 = a.reshape(-1, 1, 1, 1), b.reshape(-1, 1, 1, 1)
        p, m = self.power.to(x.dtype), self.mean.to(x.dtype)[:, None, None]
        gain = a4 * p / (a4 * a4 * p + b4 * b4)
        return m + _ifft(gain * _fft(x - a4 * m))

    def posterior_mean(self, x: Tensor, t: Tensor | float) -> Tensor:
        r"""$\mathbb E[x_0 \mid x_t]$, the Wiener filter of eq. 23.8.

        Parameters
        ----------
        x : Tensor, shape (B, C, H, W)
            The noised images.
        t : float or Tensor of shape () or (B,)
            Their time.

        Returns
        -------
        Tensor, shape (B, C, H, W)

        Raises
        ------
        TypeError, ValueError
            On a bad ``x`` or ``t``.
        """
        x = self._check(x)
        c = self.schedule.coefficients(as_tensor(t, "t", x).expand(x.shape[0]))
        return self._filtered(x, c.a.to(x.dtype), c.b.to(x.dtype))

    def __call__(self, x: Tensor, t: Tensor | float, cond: Tensor | None = None) -> Tensor:
        x = self._check(x)
        t_ = as_tensor(t, "t", x)
        if t_.dim() > 1 or (t_.dim() == 1 and t_.shape[0] not in (1, x.shape[0])):
            raise ValueError(f"t must be a scalar or have shape (B,) = ({x.shape[0]},), got {tuple(t_.shape)}")
        c = self.schedule.coefficients(t_.expand(x.shape[0]))
        a, b = c.a.to(x.dtype), c.b.to(x.dtype)
        x0 = self._filtered(x, a, b)
        if self.prediction == "x0":
            return x0
        if not bool((b > 0).all()):
            raise ValueError("the exact eps is undefined where b_t = 0 (t = 0); use prediction='x0' there")
        eps = (x - a.reshape(-1, 1, 1, 1) * x0) / b.reshape(-1, 1, 1, 1)
        if self.prediction == "eps":
            return eps
        return from_pair(Pair(x0, eps), self.prediction, a.reshape(-1, 1, 1, 1), b.reshape(-1, 1, 1, 1), c.da, c.db)

    def sample(self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64) -> Tensor:
        r"""Exact draws from the prior: $m + \mathcal F^{-1}[\sqrt{P_f}\,\mathcal F(z)_f]$, $z$ white (sec. 23.4).

        Parameters
        ----------
        n : int
            Number of images.
        generator : torch.Generator, optional
            Source of randomness.
        dtype : torch.dtype
            Of the result.

        Returns
        -------
        Tensor, shape (n, C, H, W)
        """
        n = check_int(n, "n")
        z = torch.randn((n, *self.shape), generator=generator, dtype=torch.float64)
        x = self.mean[:, None, None] + _ifft(self.power.sqrt() * _fft(z))
        return x.to(dtype)

    def expected_error(self, c: Tensor, t: Tensor | float) -> Tensor:
        r"""$\mathbb E_\varepsilon \lVert \hat x_0(a_t c + b_t\varepsilon) - c\rVert^2$ per image, in closed form
        (lesson 23, eq. 23.9).

        With $s^2 = b_t^2/a_t^2$, $h_f = P_f/(P_f + s^2)$ and $C_f = \mathcal F(c - m)_f$, each frequency contributes
        $(1 - h_f)^2 |C_f|^2 + h_f^2 s^2$ (the orthonormal transform keeps white noise white).

        Parameters
        ----------
        c : Tensor, shape (B, C, H, W)
            Clean images (the fusion sources).
        t : float
            The time.

        Returns
        -------
        Tensor, shape (B,)
            The expected squared error summed over pixels and channels.
        """
        c = self._check(c).double()
        co = self.schedule.coefficients(as_tensor(t, "t", c).reshape(1))
        s2 = float(co.b[0] ** 2 / co.a[0] ** 2)
        h = self.power / (self.power + s2)
        coef = _fft(c - self.mean[:, None, None]).abs().square()
        return ((1 - h) ** 2 * coef + h**2 * s2).sum((1, 2, 3))

    def __repr__(self) -> str:
        return f"StationaryGaussian(shape={self.shape}, {self.schedule!r}, prediction={self.prediction!r})"
