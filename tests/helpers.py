"""Plain helpers the test modules import (``pythonpath = ["tests"]`` in pyproject.toml); fixtures live in
conftest.py. Mixtures with exact eps come from ``companion.targets.random_mixture``."""

from __future__ import annotations

import numpy as np
import torch

import companion as cp


def reference(eps_model, schedule, x_T, t_start: float, t_end: float, rtol: float = 1e-12) -> torch.Tensor:
    """Float64 PF-ODE solution (companion.reference.solve_pf_ode, DOP853)."""
    return cp.reference.solve_pf_ode(eps_model, x_T, schedule, t_start, t_end, rtol=rtol, atol=rtol * 1e-2)


def fitted_order(steps, errors) -> float:
    """Least-squares slope of -log(error) against log(steps)."""
    return float(-np.polyfit(np.log(np.asarray(steps, float)), np.log(np.asarray(errors, float)), 1)[0])
