"""DEIS multistep (Zhang & Chen 2023): exponential integrators with polynomial extrapolation of the noise
prediction, in t (tAB) or in log rho = -lambda (rho AB)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from . import multistep as ms
from .base import Points
from .dpm_solver import dpm_coefs
from .problem import Problem
from .registry import OrderCheck, Solver, choice, register
from .unipc import unic_coefs

__all__ = ["DEIS", "deis_tab_coefs"]


def deis_tab_coefs(pts: Points, orders: list[int], t_of_lambda, quad: int = 64) -> tuple[Tensor, Tensor]:
    """DEIS tAB (Zhang & Chen 2023, eq. 14) in noise prediction: eps is extrapolated by the Lagrange
    polynomial in t through the last p points and the exponential integral is done exactly up to
    float64 Gauss-Legendre quadrature in lambda (``quad`` nodes per step) instead of a Riemann sum."""
    xi, om = (torch.as_tensor(v, dtype=torch.float64) for v in np.polynomial.legendre.leggauss(quad))

    def weights(h, r, k, ix):
        shape = (-1,) + (1,) * h.dim()
        u = (h * (1 + xi.reshape(shape))) / 2  # nodes in lambda - lambda_s, shape (quad, ...)
        tq = t_of_lambda(pts.lam[ix] + u)
        kern = om.reshape(shape) * h / 2 * torch.exp(h - u)
        tn = [pts.t[ix - j] for j in range(len(r))]
        out = []
        for j in range(len(r)):
            L = torch.ones_like(tq)
            for m in range(len(r)):
                if m != j:
                    L = L * (tq - tn[m]) / (tn[j] - tn[m])
            out.append((kern * L).sum(0))
        return out

    return ms.coefs("eps", pts, orders, weights)


@register("deis", "DEIS: tAB (Lagrange in t) or log-rho AB, noise prediction")
class DEIS(Solver):
    """DEIS multistep (Zhang & Chen 2023), noise prediction, 1 NFE per step.

    ``variant="tab"``: tAB, Lagrange extrapolation of eps in t with the exponential integral done by
    Gauss-Legendre quadrature (exact to float64 for smooth schedules). ``variant="logrho"``: Lagrange in
    log rho = -lambda, integrated in closed form (diffusers' ``DEISMultistepScheduler``); that equals the
    exact (Lagrange) DPM-Solver multistep in noise prediction. ``corrector``: UniC after each step.
    """

    order: int = choice(2, (1, 2, 3), "the extrapolation order")
    variant: str = choice("tab", ("tab", "logrho"), "extrapolate in t (tab) or in log rho (logrho)")
    corrector: str | None = choice(None, (None, "bh1", "bh2"), "a UniC corrector after each step")

    def order_check(self) -> OrderCheck:
        return OrderCheck(float(self.order + (self.corrector is not None)))

    def __call__(self, prob: Problem) -> Tensor:
        bh = self.corrector
        corr = None if bh is None else (lambda pts, o: unic_coefs("eps", pts, o, bh))
        if self.variant == "logrho":
            return ms.solve(
                prob, "eps", self.order, lambda pts, o: dpm_coefs("eps", pts, o, "heun"), corr, key=self
            )
        t_of_lambda = prob.schedule.t_of_lambda
        return ms.solve(
            prob, "eps", self.order, lambda pts, o: deis_tab_coefs(pts, o, t_of_lambda), corr, key=self
        )
