"""The MR Sampler (MRS; Li, Fang, Zhao, Lu, Yang, Xu, ICLR 2025, arXiv 2502.07856): fast samplers of
mean-reverting diffusion, dx = theta_t (mu - x) dt + g_t dW (IR-SDE), from its PF-ODE and reverse SDE.

On y = x - mu the process is Gaussian (:class:`companion.schedules.MeanReverting`), so ``companion.sample(...,
mu=mu)`` runs these on y. With h = lambda_t - lambda_s > 0 and m the model's x0 (``pred="x0"``, data form,
the paper's default) or eps (``pred="eps"``, noise form) prediction on y, the exact solutions are

    ODE, x0:  y_t = (sigma_t/sigma_s) y_s + alpha_t int_0^h e^{-(h-u)} x0(lambda_s + u) du
    ODE, eps: y_t = (alpha_t/alpha_s) y_s - sigma_t int_0^h e^{+(h-u)} eps(lambda_s + u) du
    SDE, x0:  y_t = (sigma_t/sigma_s) e^{-h} y_s + alpha_t int_0^h 2 e^{-2(h-u)} x0 du + sigma_t sqrt(1 - e^{-2h}) z
    SDE, eps: y_t = (alpha_t/alpha_s) y_s - 2 sigma_t int_0^h e^{+(h-u)} eps du + sigma_t sqrt(e^{2h} - 1) z

and MRS expands m in lambda around the newest point (multistep, 1 NFE per step). The official code writes
the second-order term in Taylor form, D1 = (m_i - m_{i-1})/r with weight phi_2, which is the exact
integral of the linear interpolant: the Lagrange weights of :func:`.base.lagrange_weights`. So MRS-ODE is
DPM-Solver(++) multistep (the ``heun`` weights) on y, and MRS-SDE-1 in data form is the posterior
q(y_t | y_s, y_0) at the predicted y_0 (ancestral sampling). The official third-order ODE update puts phi_3
on D2 where the expansion needs 2 phi_3 (as the shipped DPM-Solver 3M): ``variant="legacy"`` keeps it; the
default ``"taylor"`` is the exact quadratic weights.

Warm-up steps are of order 1, 2, ... as in the official sampler; below 10 steps the official code lowers the
order of steps ``order .. M-1`` but not of the last step, while ``lower_order_final`` here lowers the last
ones (the two agree from 10 steps on, and with ``lower_order_final=False``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import multistep as ms
from .base import Points, lagrange_weights
from .dpm_solver import dpm_weights
from .problem import Problem
from .registry import OrderCheck, Solver, choice, register
from .reverse_sde import ReverseSDESolver, grid_points, run_noisy
from .sde_dpm_solver import sde_dpm_coefs

__all__ = ["MRS", "MRSSDE", "mrs_ode_coefs", "mrs_sde_coefs"]


def _weights(r: list[Tensor], h: Tensor, k: int, variant: str) -> list[Tensor]:
    if len(r) == 3 and variant == "legacy":
        return dpm_weights(r, h, k, "legacy")
    return lagrange_weights(r, h, k)


def mrs_ode_coefs(pred: str, pts: Points, orders: list[int], variant: str) -> tuple[Tensor, Tensor]:
    """A, B of an MRS-ODE run on ``pts`` (the y problem): x_{i+1} = A_i x_i + sum_j B_ij m_{i-j}."""
    return ms.coefs(pred, pts, orders, lambda h, r, k, ix: _weights(r, h, k, variant))


def mrs_sde_coefs(pred: str, pts: Points, orders: list[int]) -> tuple[Tensor, Tensor, Tensor]:
    """A, B, std of an MRS-SDE run on ``pts``. Data form: SDE-DPM-Solver++ with the exact linear weights.
    Noise form: A = alpha_t/alpha_s, the kernel e^{+(h-u)} times -2 sigma_t, std = sigma_t sqrt(e^{2h} - 1)
    (finite when t is clean data: sigma_t e^h = alpha_t e^{-lambda_s})."""
    if pred == "x0":
        return sde_dpm_coefs(pts, orders, "heun")
    n, K = len(orders), max(orders)
    s, t = pts[:-1], pts[1:]
    h = t.lam - s.lam
    fin = torch.isfinite(h)
    ehm1 = torch.where(
        fin, t.sigma * torch.expm1(h), t.alpha * torch.exp(-s.lam) - t.sigma
    )  # sigma_t (e^h - 1)
    var = torch.where(fin, t.sigma**2 * torch.expm1(2.0 * h), (t.alpha * torch.exp(-s.lam)) ** 2 - t.sigma**2)
    A = t.alpha / s.alpha
    B = torch.zeros((n, K) + tuple(pts.lam.shape[1:]), dtype=torch.float64)
    for i, p in enumerate(orders):
        if p == 1:
            B[i, 0] = -2.0 * ehm1[i]
            continue
        hi, r = ms.nodes(pts, i, p)
        for j, w in enumerate(lagrange_weights(r, hi, +1)):
            B[i, j] = -2.0 * t.sigma[i] * w
    return A[:n], B, torch.sqrt(var.clamp_min(0.0))


@register("mrs", "MR Sampler (MRS-ODE), multistep orders 1-3, data (x0) or noise (eps) form")
class MRS(Solver):
    """MRS-ODE (Li et al. 2025): the PF-ODE's semi-analytic solution, multistep, 1 NFE per step. Use with
    ``mu=`` and a :class:`~companion.schedules.MeanReverting` schedule (any Gaussian schedule works: mu = 0).

    ``pred="x0"`` (data form, default) or ``"eps"`` (noise form); ``variant="legacy"`` (order 3 only) is the
    official third-order update (phi_3 on D2), ``"taylor"`` the exact one. Equal to DPM-Solver(++) on y.
    """

    order: int = choice(2, (1, 2, 3), "the order of the update (warm-up and final steps may be lower)")
    pred: str = choice("x0", ("x0", "eps"), "data (x0) or noise (eps) form")
    variant: str = choice(
        "taylor", ("taylor", "legacy"), "taylor (exact polynomial weights) or legacy (official order 3)"
    )

    def validate(self) -> None:
        if self.variant == "legacy" and self.order != 3:
            self.fail(
                f"variant 'legacy' is the official third-order update: it needs order=3; got {self.order}"
            )

    def order_check(self) -> OrderCheck:
        if self.variant == "legacy":
            return OrderCheck(2.0, reason="the official 3rd-order update has phi_3 where 2 phi_3 is needed")
        return OrderCheck(float(self.order))

    def __call__(self, prob: Problem) -> Tensor:
        return ms.solve(
            prob, self.pred, self.order, lambda pts, o: mrs_ode_coefs(self.pred, pts, o, self.variant)
        )


@register("mrs-sde", "MR Sampler (MRS-SDE), multistep orders 1-2, data (x0) or noise (eps) form")
class MRSSDE(ReverseSDESolver):
    """MRS-SDE (Li et al. 2025): the reverse SDE's semi-analytic solution, multistep orders 1-2, 1 NFE per
    step; ``noise=`` as every stochastic solver. Order 1 in data form is the posterior step q(y_t | y_s, y_0)
    (ancestral sampling on the grid). Strong order 1 (the noise term limits it)."""

    order: int = choice(2, (1, 2), "the order of the drift's update")
    pred: str = choice("x0", ("x0", "eps"), "data (x0) or noise (eps) form")

    def order_check(self) -> OrderCheck:
        return OrderCheck(1.0, kind="strong")

    def __call__(self, prob: Problem) -> Tensor:
        pts = grid_points(prob)
        orders = ms.step_orders(pts.t.shape[0] - 1, self.order, pts.lam, prob.lower_order_final)
        A, B, std = mrs_sde_coefs(self.pred, pts, orders)
        return run_noisy(prob, self.pred, pts, orders, A, B, std)
