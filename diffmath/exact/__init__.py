"""Models known in closed form, to test every learned model and sampler against (lesson 0, sec. 0.4).

``mixtures`` holds the Gaussian mixtures and empirical data with their exact denoisers; ``reference`` the
scipy solves of the probability-flow ODE used as ground truth."""

from diffmath.exact import mixtures, reference
from diffmath.exact.mixtures import EmpiricalData, ExactModel, GaussianMixture

__all__ = ["EmpiricalData", "ExactModel", "GaussianMixture", "mixtures", "reference"]
