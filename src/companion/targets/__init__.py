"""Analytic targets with exact log-densities, scores, denoisers and (for one Gaussian) flow maps."""

from .gaussian import PREDICTIONS, ClassConditionalMixture, Gaussian, GaussianMixture, random_mixture

__all__ = ["GaussianMixture", "Gaussian", "ClassConditionalMixture", "PREDICTIONS", "random_mixture"]
