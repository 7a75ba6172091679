"""Helpers for the solver tests: mixtures with exact eps (companion.targets), a float64 reference
integrator of the probability-flow ODE, and the fitted convergence order.

The reference integrates y = x / alpha in lambda, dy/dlambda = -e^{-lambda} eps(alpha y, t(lambda)), with
scipy's DOP853 (a stand-in until companion.reference lands).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.integrate import solve_ivp

import companion as cp


def mixture(d: int, spread: float, var_lo: float, var_hi: float, seed: int = 0) -> cp.targets.GaussianMixture:
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(3, d, generator=g, dtype=torch.float64) * spread
    var = var_lo + (var_hi - var_lo) * torch.rand(3, d, generator=g, dtype=torch.float64)
    return cp.targets.GaussianMixture(mu, var, torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64))


def reference(eps_model, schedule, x_T, t_start: float, t_end: float, rtol: float = 1e-12) -> torch.Tensor:
    t0, t1 = (
        torch.tensor(float(t_start), dtype=torch.float64),
        torch.tensor(float(t_end), dtype=torch.float64),
    )
    l0, l1 = float(schedule.lambda_(t0)), float(schedule.lambda_(t1))
    shape = x_T.shape
    y0 = (x_T.to(torch.float64) / schedule.alpha(t0)).reshape(-1).numpy()

    def rhs(lam, y):
        lt = torch.tensor(lam, dtype=torch.float64)
        t = schedule.t_of_lambda(lt)
        a = schedule.alpha(t)
        e = eps_model(a * torch.from_numpy(y).reshape(shape), t.expand(shape[0]))
        return (-torch.exp(-lt) * e).reshape(-1).numpy()

    sol = solve_ivp(rhs, (l0, l1), y0, method="DOP853", rtol=rtol, atol=rtol * 1e-2)
    return torch.from_numpy(sol.y[:, -1]).reshape(shape) * schedule.alpha(t1)


def fitted_order(steps, errors) -> float:
    """Least-squares slope of -log(error) against log(steps)."""
    return float(-np.polyfit(np.log(np.asarray(steps, float)), np.log(np.asarray(errors, float)), 1)[0])
