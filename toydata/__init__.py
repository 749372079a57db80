"""toydata: data for diffmath, generated on the spot or bundled with installed packages (2-D toys, exact mixtures,
small labelled images); nothing is downloaded."""

from toydata.images import (
    ATTRIBUTES,
    GLYPH_FONTS,
    IMAGE_DATASETS,
    ImageBatch,
    digits,
    glyphs,
    image_dataset,
    shapes,
)
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
    "ATTRIBUTES",
    "GLYPH_FONTS",
    "IMAGE_DATASETS",
    "LABELLED",
    "TOYS",
    "ImageBatch",
    "checkerboard",
    "digits",
    "eight_gaussians",
    "eight_gaussians_mixture",
    "glyphs",
    "image_dataset",
    "moons",
    "pinwheel",
    "random_mixture",
    "rings",
    "sample",
    "shapes",
    "swiss_roll",
]
