"""Samplers. The registry lives here once the solver family lands; for now the SDE samplers."""

from . import sde

__all__ = ["sde"]
