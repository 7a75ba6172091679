"""Runge-Kutta baselines on the probability-flow ODE: Euler (1 NFE/step, order 1) and Heun (2 NFE/step,
order 2; a step onto sigma = 0 is an Euler step, as in Karras et al. 2022, Alg. 1).

``variable="t"`` integrates dx/dt = u(x, t), the velocity in the schedule's own time (for
:class:`~companion.schedules.RectifiedFlow` the flow-matching Euler/Heun). ``variable="rho"`` integrates
y = x/alpha in rho = sigma/alpha, dy/drho = eps (Karras et al. 2022, eq. 4 with their sigma = rho;
diffusers' ``EulerDiscreteScheduler``/``HeunDiscreteScheduler``, k-diffusion); there Euler is DDIM.
Both are linear in (x, m):  x_p = a x + b m_i,  x_{i+1} = a x + (b/2)(m_i + m_p).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import lincomb, rows
from .problem import Problem
from .registry import Solver, choice, register

__all__ = ["Euler", "Heun", "rk_solve"]

_VARIABLE = choice("t", ("t", "rho"), "integrate dx/dt in t, or x/alpha in rho = sigma/alpha")


@register("euler", "Euler (1 NFE per step) on the PF-ODE in t, or on x/alpha in sigma/alpha (= DDIM)")
class Euler(Solver):
    """Euler's method on the probability-flow ODE, 1 NFE per step, order 1 (``variable`` as above)."""

    order: int = choice(1, (1,), "first order only")
    variable: str = _VARIABLE

    def __call__(self, prob: Problem) -> Tensor:
        return rk_solve(prob, False, self.variable)


@register("heun", "Heun (2 NFE per step) on the PF-ODE in t, or on x/alpha in sigma/alpha (Karras et al.)")
class Heun(Solver):
    """Heun's method (the explicit trapezoidal rule) on the probability-flow ODE, 2 NFE per step, order 2."""

    order: int = choice(2, (2,), "second order only")
    variable: str = _VARIABLE

    def __call__(self, prob: Problem) -> Tensor:
        return rk_solve(prob, True, self.variable)


def rk_solve(prob: Problem, heun: bool, variable: str) -> Tensor:
    """Euler (``heun=False``) or Heun on the grid of ``prob``, in ``variable`` t or rho."""
    x = prob.x
    pts = prob.points(prob.grid(prob.steps))
    s, t = pts[:-1], pts[1:]
    if variable == "t":
        target, a, b = "velocity", torch.ones_like(s.t), t.t - s.t
    else:
        target, a = "eps", t.alpha / s.alpha
        b = t.alpha * (torch.exp(-t.lam) - torch.exp(-s.lam))
    # Heun needs the slope at t_{i+1}; where that is clean data (lambda = inf) it takes an Euler step.
    second = [heun and bool(torch.isfinite(t.lam[i]).all()) for i in range(len(a))]
    ev = prob.evaluator(target)
    at = ev.plan(pts.t, x)
    hook = prob.step_hook(ev, pts.t)
    a_, b_, h_ = rows(a, x), rows(b, x), rows(b / 2, x)
    for i in range(len(a_)):
        m = ev(x, at[i])
        xp = lincomb([(a_[i], x), (b_[i], m)])
        if second[i]:
            mp = ev(xp, at[i + 1])
            xp = lincomb([(a_[i], x), (h_[i], m), (h_[i], mp)])
        x = xp if hook is None else hook(i, xp)
    return x
