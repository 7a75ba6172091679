"""companion: tested PyTorch solvers for fast diffusion-model sampling.

See the book (``make book``) for the derivations; the public API is documented in README.md.
"""

from . import (
    adapters,
    book,
    data,
    digits_metrics,
    grids,
    metrics,
    models,
    noise,
    parameterization,
    reference,
    repro,
    schedules,
    solvers,
    targets,
)
from .sampling import sample

__version__ = "0.1.0"
__all__ = [
    "adapters",
    "book",
    "data",
    "digits_metrics",
    "grids",
    "metrics",
    "models",
    "noise",
    "parameterization",
    "reference",
    "repro",
    "sample",
    "schedules",
    "solvers",
    "targets",
    "__version__",
]
