"""Helpers for the solver tests: mixtures with exact eps (companion.targets), the float64 reference
integrator of the probability-flow ODE (companion.reference), and the fitted convergence order."""

from __future__ import annotations

import numpy as np
import torch

import companion as cp


def mixture(d: int, spread: float, var_lo: float, var_hi: float, seed: int = 0) -> cp.targets.GaussianMixture:
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(3, d, generator=g, dtype=torch.float64) * spread
    var = var_lo + (var_hi - var_lo) * torch.rand(3, d, generator=g, dtype=torch.float64)
    return cp.targets.GaussianMixture(mu, var, torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64))


def reference(eps_model, schedule, x_T, t_start: float, t_end: float, rtol: float = 1e-12) -> torch.Tensor:
    """Float64 PF-ODE solution (companion.reference.solve_pf_ode, DOP853)."""
    return cp.reference.solve_pf_ode(eps_model, x_T, schedule, t_start, t_end, rtol=rtol, atol=rtol * 1e-2)


def fitted_order(steps, errors) -> float:
    """Least-squares slope of -log(error) against log(steps)."""
    return float(-np.polyfit(np.log(np.asarray(steps, float)), np.log(np.asarray(errors, float)), 1)[0])
