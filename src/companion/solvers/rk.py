"""Runge-Kutta baselines on the probability-flow ODE: Euler (1 NFE/step, order 1) and Heun (2 NFE/step,
order 2; a step onto sigma = 0 is an Euler step, as in Karras et al. 2022, Alg. 1).

``variable="t"`` integrates dx/dt = u(x, t), the velocity in the schedule's own time (for
:class:`~companion.schedules.RectifiedFlow` the flow-matching Euler/Heun). ``variable="rho"`` integrates
y = x/alpha in rho = sigma/alpha, dy/drho = eps (Karras et al. 2022, eq. 4 with their sigma = rho;
diffusers' ``EulerDiscreteScheduler``/``HeunDiscreteScheduler``, k-diffusion); there Euler is DDIM.
Both are linear in (x, m):  x_p = a x + b m_i,  x_{i+1} = a x + (b/2)(m_i + m_p).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .base import lincomb, rows
from .problem import Problem

__all__ = ["RK"]


@dataclass(frozen=True)
class RK:
    heun: bool = False
    variable: str = "t"

    @property
    def order(self) -> int:
        return 2 if self.heun else 1

    def __call__(self, prob: Problem) -> Tensor:
        x = prob.x
        pts = prob.points(prob.grid(prob.steps))
        s, t = pts[:-1], pts[1:]
        if self.variable == "t":
            target, a, b = "velocity", torch.ones_like(s.t), t.t - s.t
        else:
            target, a = "eps", t.alpha / s.alpha
            b = t.alpha * (torch.exp(-t.lam) - torch.exp(-s.lam))
        # Heun needs the slope at t_{i+1}; where that is clean data (lambda = inf) it takes an Euler step.
        second = [self.heun and bool(torch.isfinite(t.lam[i]).all()) for i in range(len(a))]
        ev = prob.evaluator(target)
        at = ev.plan(pts.t, x)
        a_, b_, h_ = rows(a, x), rows(b, x), rows(b / 2, x)
        for i in range(len(a_)):
            m = ev(x, at[i])
            xp = lincomb([(a_[i], x), (b_[i], m)])
            if second[i]:
                mp = ev(xp, at[i + 1])
                xp = lincomb([(a_[i], x), (h_[i], m), (h_[i], mp)])
            x = xp
            if prob.callback is not None:
                prob.callback(i, x)
        return x
