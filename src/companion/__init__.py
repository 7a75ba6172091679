"""companion: tested PyTorch solvers for fast diffusion-model sampling.

See the book (``make book``) for the derivations; the public API is documented in README.md.
"""

from . import book, metrics, reference, repro, schedules, solvers, targets

__version__ = "0.1.0"
__all__ = ["book", "schedules", "repro", "targets", "reference", "metrics", "solvers", "__version__"]
