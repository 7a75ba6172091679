"""The exponential-integrator solvers as small frozen dataclasses: DDIM, DPM-Solver(++), DEIS, UniPC.

A solver is data (``order``, ``method``, ``variant``) plus ``__call__(problem) -> x``; the maths lives in
:mod:`.multistep` (linear multistep), :mod:`.singlestep` and :mod:`.adaptive`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from . import multistep as ms
from .problem import Problem

__all__ = ["DDIM", "DPMSolver", "DEIS", "UniPC"]


def _multistep(
    prob: Problem, pred: str, order: int, coefs, corrector_bh: str | None = None, lof: float | None = None
) -> Tensor:
    ev = prob.evaluator(pred)
    pts = prob.points(prob.grid(prob.steps))
    n = pts.t.shape[0] - 1
    orders = ms.step_orders(n, order, pts.lam, prob.lower_order_final if lof is None else lof)
    A, B = coefs(pts, orders)
    corr = ms.unic_coefs(pred, pts, orders, corrector_bh) if corrector_bh else None
    return ms.run(ev, prob.x, pts, orders, A, B, corrector=corr, callback=prob.callback)


@dataclass(frozen=True)
class DDIM:
    """DDIM (Song et al. 2021a, eq. 12): first order, 1 NFE per step; ``eta`` > 0 adds the DDIM noise."""

    eta: float = 0.0
    order: int = 1

    def __call__(self, prob: Problem) -> Tensor:
        if self.eta == 0.0:
            return _multistep(prob, "x0", 1, lambda pts, o: ms.dpm_coefs("x0", pts, o, "midpoint"))
        ev = prob.evaluator("x0")
        pts = prob.points(prob.grid(prob.steps))
        a, b, std = ms.ddim_noise_coefs(pts, self.eta)
        n = pts.t.shape[0] - 1
        return ms.run(
            ev,
            prob.x,
            pts,
            [1] * n,
            a,
            b[:, None],
            noise=std,
            draw=prob.noise_stream(pts.t, prob.x),
            callback=prob.callback,
        )


@dataclass(frozen=True)
class DPMSolver:
    """DPM-Solver (``pred="eps"``, Lu et al. 2022) and DPM-Solver++ (``pred="x0"``, Lu et al. 2022b).

    Multistep (1 NFE per step): order 2 ``midpoint`` (2M, Alg. 2) or ``heun`` (the exact Lagrange weights,
    diffusers' "heun" / official "taylor"); order 3 is the exact 3M (order 3) unless ``variant="legacy"``
    (the shipped formula, order 2; see the module docstring of :mod:`.multistep`). ``corrector="bh1"|"bh2"``
    adds a UniC corrector after every step but the last (no extra NFE).
    Singlestep and adaptive methods: :mod:`.singlestep`, :mod:`.adaptive`.
    """

    pred: str = "x0"
    order: int = 2
    method: str = "multistep"
    variant: str = "midpoint"
    corrector: str | None = None
    atol: float = 0.0078
    rtol: float = 0.05

    def __call__(self, prob: Problem) -> Tensor:
        if self.method == "multistep":
            return _multistep(
                prob,
                self.pred,
                self.order,
                lambda pts, o: ms.dpm_coefs(self.pred, pts, o, self.variant),
                self.corrector,
            )
        if self.method in ("singlestep", "singlestep_fixed"):
            from .singlestep import run_singlestep

            return run_singlestep(prob, self.pred, self.order, self.method, self.variant)
        from .adaptive import run_adaptive

        return run_adaptive(prob, self.pred, self.order, self.atol, self.rtol)


@dataclass(frozen=True)
class DEIS:
    """DEIS multistep (Zhang & Chen 2023), noise prediction, 1 NFE per step.

    ``variant="tab"``: tAB, Lagrange extrapolation of eps in t with the exponential integral done by
    Gauss-Legendre quadrature (exact to float64 for smooth schedules). ``variant="logrho"``: Lagrange in
    log rho = -lambda, integrated in closed form (diffusers' ``DEISMultistepScheduler``); that equals the
    exact (Lagrange) DPM-Solver multistep in noise prediction.
    """

    order: int = 2
    variant: str = "tab"
    corrector: str | None = None

    def __call__(self, prob: Problem) -> Tensor:
        if self.variant == "logrho":
            return _multistep(
                prob, "eps", self.order, lambda pts, o: ms.dpm_coefs("eps", pts, o, "heun"), self.corrector
            )
        t_of_lambda = prob.schedule.t_of_lambda
        return _multistep(
            prob, "eps", self.order, lambda pts, o: ms.deis_tab_coefs(pts, o, t_of_lambda), self.corrector
        )


@dataclass(frozen=True)
class UniPC:
    """UniPC (Zhao et al. 2023): UniP-p predictor + UniC corrector (order p + 1 after correction), 1 NFE per
    step, data prediction by default (``pred="eps"`` for noise prediction); B(h) = ``variant`` bh1 | bh2.
    ``lower_order_final`` lowers the last two steps at any step count, as the official UniPC and diffusers."""

    order: int = 2
    variant: str = "bh2"
    pred: str = "x0"
    corrector: bool = True

    def __call__(self, prob: Problem) -> Tensor:
        return _multistep(
            prob,
            self.pred,
            self.order,
            lambda pts, o: ms.unip_coefs(self.pred, pts, o, self.variant),
            self.variant if self.corrector else None,
            lof=math.inf if prob.lower_order_final else 0,
        )
