"""companion: tested PyTorch solvers for fast diffusion-model sampling.

``import companion`` loads the solver core only: schedules, grids, parameterizations, noise, the solver
registry, ``sample``/``invert``, analytic targets, the float64 reference integrators (scipy is imported when
one runs) and the adapters (diffusers is imported when one is used). The book's own machinery (claims
ledger, chapter helpers, experiments, metrics, training, data sets, trained models) is
:mod:`companion.lab`, imported on first use (``cp.lab``) or explicitly. ARCHITECTURE.md draws the layers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from . import (
    adapters,
    dc,
    fokker_planck,
    gaussian_score,
    grids,
    interpolants,
    mean_reverting,
    noise,
    parameterization,
    paths,
    reference,
    schedules,
    solvers,
    targets,
)
from .sampling import invert, sample

if TYPE_CHECKING:
    from . import lab

__version__ = "0.1.0"
__all__ = [
    "adapters",
    "dc",
    "fokker_planck",
    "gaussian_score",
    "grids",
    "interpolants",
    "invert",
    "lab",
    "mean_reverting",
    "noise",
    "parameterization",
    "paths",
    "reference",
    "sample",
    "schedules",
    "solvers",
    "targets",
    "__version__",
]


def __getattr__(name: str):
    # The lab (matplotlib-free, but torch-heavy helpers, sklearn data, safetensors weights) loads on first use.
    if name == "lab":
        return importlib.import_module(".lab", __name__)
    raise AttributeError(f"module 'companion' has no attribute {name!r}")
