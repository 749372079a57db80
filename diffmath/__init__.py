"""diffmath: diffusion generative models derived, implemented and tested, from 2-D toys to images."""

# the layers (subpackages) first, then the chapter modules that read like the lessons
from diffmath import core, exact, guide, nets, sampling, train  # isort: skip
from diffmath import compare, ddpm, flows, gradflow, greens, heat, masking, metrics, ode, pfgm  # isort: skip
from diffmath import recipes, scorematching, sde, udm, variance, w2bound  # isort: skip
from diffmath.core.models import Model, check_model, predict, predict_pair
from diffmath.core.notation import PREDICTIONS, Pair, convert, from_pair, to_pair
from diffmath.core.schedules import (
    SCHEDULES,
    VE,
    Coefficients,
    DiscreteSchedule,
    LinearPath,
    Schedule,
    VPCosine,
    VPLinear,
    cosine,
    get_schedule,
    ho_linear,
    su_linear,
)
from diffmath.exact.mixtures import EmpiricalData, ExactModel, GaussianMixture
from diffmath.sampling.samplers import SamplerStep, check_grid, ddim, ddim_coefficients, ddim_step, sample

__version__ = "0.1.0"

__all__ = [
    "PREDICTIONS",
    "SCHEDULES",
    "VE",
    "Coefficients",
    "DiscreteSchedule",
    "EmpiricalData",
    "ExactModel",
    "GaussianMixture",
    "LinearPath",
    "Model",
    "Pair",
    "SamplerStep",
    "Schedule",
    "VPCosine",
    "VPLinear",
    "check_grid",
    "check_model",
    "compare",
    "convert",
    "core",
    "cosine",
    "ddim",
    "ddim_coefficients",
    "ddim_step",
    "ddpm",
    "exact",
    "flows",
    "from_pair",
    "get_schedule",
    "gradflow",
    "greens",
    "guide",
    "heat",
    "ho_linear",
    "masking",
    "metrics",
    "nets",
    "ode",
    "pfgm",
    "predict",
    "predict_pair",
    "recipes",
    "sample",
    "sampling",
    "scorematching",
    "sde",
    "su_linear",
    "to_pair",
    "train",
    "udm",
    "variance",
    "w2bound",
]
