"""Plain helpers the test modules import (``pythonpath = ["tests"]`` in pyproject.toml); fixtures live in
conftest.py. Mixtures with exact eps come from ``companion.targets.random_mixture``."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

import companion as cp


def reference(eps_model, schedule, x_T, t_start: float, t_end: float, rtol: float = 1e-12) -> torch.Tensor:
    """Float64 PF-ODE solution (companion.reference.solve_pf_ode, DOP853)."""
    return cp.reference.solve_pf_ode(eps_model, x_T, schedule, t_start, t_end, rtol=rtol, atol=rtol * 1e-2)


def fitted_order(steps, errors) -> float:
    """Least-squares slope of -log(error) against log(steps)."""
    return float(-np.polyfit(np.log(np.asarray(steps, float)), np.log(np.asarray(errors, float)), 1)[0])


def gaussian_path_solution(
    schedule, path: cp.noise.BrownianPath, x_T: Tensor, eps_fn, mu: float, c0: float
) -> Tensor:
    """The exact solution of dx = [f x - (g^2/2 + eps) score] dt + sqrt(2 eps) dW_bar on data N(mu, c0 I)
    along the Brownian ``path`` (backwards in t). It is linear in z = x - alpha mu:
    dz = (v'/(2v) + eps/v) z dt + sqrt(2 eps) dW_bar with v = alpha^2 c0 + sigma^2. Exact decay factors per
    fine step; the Ito integral of each fine step by its integrand at the midpoint times the fine increment
    (O(dt^{3/2}) per step, far below the solvers' errors at the path's resolution)."""
    t = path.times.flip(0)  # decreasing
    al, sg = schedule.alpha(t), schedule.sigma(t)
    v = al**2 * c0 + sg**2
    m = (t[:-1] + t[1:]) / 2
    vm = schedule.alpha(m) ** 2 * c0 + schedule.sigma(m) ** 2
    em = eps_fn(m)
    dt = t[:-1] - t[1:]
    decay = torch.exp(-(0.5 * torch.log(v[:-1] / v[1:]) + em / vm * dt))
    kick = torch.exp(-(0.5 * torch.log(vm / v[1:]) + em / vm * dt / 2)) * torch.sqrt(2 * em)
    dw = path.fine_increments(x_T).flip(0)  # dw[k] = W(t_k) - W(t_{k+1})
    z = x_T - al[0] * mu
    for k in range(dt.numel()):
        z = decay[k] * z + kick[k] * dw[k]
    return z + al[-1] * mu
