"""DDIM (Song et al. 2021a): the first-order exponential integrator in data prediction, with DDIM's
eta family of stochastic steps."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from . import cache
from . import multistep as ms
from .base import Points, first_order
from .problem import Problem
from .registry import OrderCheck, Solver, choice, number, register
from .time_shift import shifted_first_order, time_shift_option

__all__ = ["DDIM", "ddim_noise_coefs"]


def ddim_noise_coefs(pts: Points, eta: float) -> tuple[Tensor, Tensor, Tensor]:
    """DDIM (Song et al. 2021a, eq. 12 and 16) in data prediction: x_t = a x_s + b x0 + s z with
    s = eta sigma_t sqrt(1 - e^{-2h}) (the posterior std times eta), a = sqrt(sigma_t^2 - s^2)/sigma_s,
    b = alpha_t - a alpha_s. eta = 0 is DPM-Solver++(1); eta = 1 is ancestral sampling."""
    s, t = pts[:-1], pts[1:]
    h = t.lam - s.lam
    std = eta * t.sigma * torch.sqrt(-torch.expm1(-2 * h))
    a = torch.sqrt(torch.clamp(t.sigma**2 - std**2, min=0.0)) / s.sigma
    return a, t.alpha - a * s.alpha, std


@register("ddim", "DDIM (eta in [0, 1]); eta = 0 is DPM-Solver++(1), eta = 1 ancestral sampling")
class DDIM(Solver):
    """DDIM (Song et al. 2021a, eq. 12): first order, 1 NFE per step; ``eta`` > 0 adds the DDIM noise
    (eta = 1: the posterior q(x_t | x_s, x0) at the predicted x0, i.e. ancestral sampling)."""

    #: extra configurations the conformance tests run (tests/solvers/test_conformance.py): the stochastic form
    conformance: ClassVar[tuple[dict, ...]] = ({"eta": 0.5},)

    order: int = choice(1, (1,), "first order only")
    eta: float = number(0.0, 0.0, 1.0, doc="the fraction of the posterior standard deviation injected")
    time_shift: object = time_shift_option()

    @property
    def stochastic(self) -> bool:
        return self.eta > 0

    def sde_diffusion(self, schedule):
        # The step's noise variance eta^2 sigma_t^2 (1 - e^{-2h}) ~ eta^2 g^2 dt: the eps-family member
        # with eps = eta^2 g^2 / 2 (eta = 1: the reverse SDE).
        eta2 = self.eta**2
        return (lambda t: eta2 * schedule.g2(t) / 2) if self.eta > 0 else None

    def order_check(self) -> OrderCheck:
        return OrderCheck(1.0, kind="strong" if self.eta > 0 else "ode")

    def __call__(self, prob: Problem) -> Tensor:
        if self.time_shift is not None and self.time_shift.active:
            return shifted_first_order(
                prob, self.time_shift, lambda pts: ddim_noise_coefs(pts, self.eta), self.eta > 0
            )
        ev = prob.evaluator("x0")
        if self.eta == 0.0:
            t = prob.grid(prob.steps)

            def build():
                pts = prob.points(t)
                a, b = first_order("x0", pts[:-1], pts[1:])
                return ms.prepare(ev, prob.x, pts, a, b[:, None])

            prep = cache.get_or_build(ms.run_key(prob, ev, t, ("ddim", self)), build)
            hook = prob.step_hook(ev, torch.as_tensor(t, dtype=torch.float64))
            return ms.loop(ev, prob.x, [1] * (t.shape[0] - 1), prep, hook=hook)
        pts = prob.points(prob.grid(prob.steps))
        n = pts.t.shape[0] - 1
        hook = prob.step_hook(ev, pts.t)
        a, b, std = ddim_noise_coefs(pts, self.eta)
        return ms.run(
            ev,
            prob.x,
            pts,
            [1] * n,
            a,
            b[:, None],
            noise=std,
            draw=prob.noise_stream(pts.t, prob.x),
            hook=hook,
        )
