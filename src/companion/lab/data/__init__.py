"""Data sets the project trains on: sklearn's 8x8 digits and 2-D toy distributions.

Every generator takes an explicit ``torch.Generator`` (or a seed) so a training run is reproducible.
"""

from .digits import digits, digits_split
from .toy2d import (
    TOY_SETS,
    checkerboard,
    eight_gaussians,
    nine_gaussians,
    sample_toy,
    swiss_roll,
    two_moons,
    two_rings,
)

__all__ = [
    "digits",
    "digits_split",
    "TOY_SETS",
    "sample_toy",
    "two_moons",
    "eight_gaussians",
    "nine_gaussians",
    "two_rings",
    "checkerboard",
    "swiss_roll",
]
