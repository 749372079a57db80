"""toydata: data for diffmath, generated on the spot (2-D toys and exact mixtures); nothing is downloaded."""

from toydata.toys import (
    LABELLED,
    TOYS,
    checkerboard,
    eight_gaussians,
    eight_gaussians_mixture,
    moons,
    pinwheel,
    random_mixture,
    rings,
    sample,
    swiss_roll,
)

__all__ = [
    "LABELLED",
    "TOYS",
    "checkerboard",
    "eight_gaussians",
    "eight_gaussians_mixture",
    "moons",
    "pinwheel",
    "random_mixture",
    "rings",
    "sample",
    "swiss_roll",
]
