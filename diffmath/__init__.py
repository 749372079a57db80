"""diffmath: diffusion generative models derived, implemented and tested, from 2-D toys to images.

Every module implements a lesson of the course (lessons/NN-*.md); its docstrings name the equations.

Layers (used by every lesson)
    core        notation (five parameterisations, ``predict``), schedules, the model interface, devices   lesson 0
    exact       exact models: Gaussian mixtures, empirical data, stationary Gaussians, reference solves    lessons 0, 23
    sampling    the one sampler loop (``run``) and the DDIM family (``sample``, ``ddim``)                 lesson 4
    nets        MLP for toys, UNet for images                                                              lessons 3, 20
    adapters    diffusers UNets with their scheduler configs as diffmath models (optional extra)           lessons 0, 20
    train       the training loop (``train``, ``fit``), checkpoints that resume                            lesson 3
    guide       guidance and composition; AMDM, Z-Magic, Dig2DIG, constrained composition                  lessons 9, 21-24

Chapters
    ddpm 1-3 · sde 5 · ode, solvers 6 · variance 7-8 · udm, masking 10-11 · heat 12 · pfgm 13 · greens 14 · flows 15, 17
    w2bound 16 · scorematching 18 · gradflow 19 · recipes, metrics, fusion, compare 20-23 · plots (figures)

Conventions
    time        t = 0 is the data, t_max the noise; a discrete schedule counts 0..T (diffusers' timestep k is t = k + 1)
    arguments   model, x, then the grid (samplers) or the time (``predict``), then the schedule, then options;
                two exceptions, each for a reason: ``pfgm_sample(model, n, event_shape, grid, schedule)`` draws its
                own start on the prior plane at ``grid[0]``, and ``ode_log_likelihood(model, x0, schedule, t_start,
                t_end)`` solves adaptively, so it takes end times, not a grid
    solvers     ODE samplers default to Heun (``ode_sample``), except ``sample_flow`` (Euler: straight flows) and
                ``pfgm_sample`` (DPM-Solver++(2M): exact in ln z); each docstring says why
    models      any ``model(x, t, cond=None)`` with a ``prediction``; an unconditional network refuses real labels
    sampling    trained eps-models sample deterministically through ``ToyModel.clipped`` / ``ImageModel.clipped``
    progress    on by default where a call takes minutes (training, recipes, image statistics), off for samplers

Start with ``help(diffmath.sampling.loop)`` (how every sampler runs) and the README's "In five lines".
"""

# the layers (subpackages) first, then the chapter modules that read like the lessons
from diffmath import core, exact, guide, nets, sampling, train  # isort: skip
from diffmath import adapters, compare, ddpm, flows, gradflow, greens, heat, masking, metrics, ode, pfgm  # isort: skip
from diffmath import plots, recipes, scorematching, sde, solvers, udm, variance, w2bound  # isort: skip
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
    "adapters",
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
    "plots",
    "predict",
    "predict_pair",
    "recipes",
    "sample",
    "sampling",
    "scorematching",
    "sde",
    "solvers",
    "su_linear",
    "to_pair",
    "train",
    "udm",
    "variance",
    "w2bound",
]
