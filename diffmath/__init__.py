"""diffmath: diffusion generative models derived, implemented and tested, from 2-D toys to images."""

from diffmath import ddpm, flows, greens, guidance, heat, metrics, nets, ode, pfgm, recipes, reference, sde, training, variance
from diffmath.exact import EmpiricalData, ExactModel, GaussianMixture
from diffmath.models import Model, check_model, predict, predict_pair
from diffmath.notation import PREDICTIONS, Pair, convert, from_pair, to_pair
from diffmath.samplers import SamplerStep, check_grid, ddim, ddim_coefficients, ddim_step, sample
from diffmath.schedules import (
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
    "convert",
    "cosine",
    "ddim",
    "ddim_coefficients",
    "ddim_step",
    "ddpm",
    "flows",
    "from_pair",
    "get_schedule",
    "greens",
    "guidance",
    "heat",
    "ho_linear",
    "metrics",
    "nets",
    "ode",
    "pfgm",
    "predict",
    "predict_pair",
    "recipes",
    "reference",
    "sample",
    "sde",
    "su_linear",
    "to_pair",
    "training",
    "variance",
]
