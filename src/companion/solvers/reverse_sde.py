"""What the reverse-time SDE samplers share: the family of SDEs they integrate and the noisy multistep run.

Every stochastic solver (Euler-Maruyama, ancestral / DDIM eta, SDE-DPM-Solver++, predictor-corrector, the
stochastic-interpolant family) integrates, from t_start down to t_end, a member of one family of reverse-time SDEs whose
marginals are the forward process's p_t (Song et al. 2021, eq. 6 and 13; Albergo, Boffi & Vanden-Eijnden
2023, arXiv 2303.08797, Sec. 2: the backward SDE with drift b_B = b - eps s, b the probability-flow velocity;
equation number not checked here, the statement is re-derived from the Fokker-Planck equation in the book):

    dx = [f(t) x - (g^2(t)/2 + eps(t)) grad log p_t(x)] dt + sqrt(2 eps(t)) dW_bar,   eps(t) >= 0,

eps = 0 being the probability-flow ODE and eps = g^2/2 the reverse SDE. Brownian coupling: a step from
t_i to t_{i+1} uses the normal z_i = (W(t_i) - W(t_{i+1})) / sqrt(t_i - t_{i+1}) of a :mod:`companion.noise`
source, in the schedule's time t.

Strong orders (the noise is additive: g, eps depend on t only). A scheme whose drift has local error
O(dt^2) and whose noise term is c_i z_i with c_i^2 the exact variance of the step's Ito integral
int phi(u) dW (or phi(t_i) dt^{1/2}) has local error int (phi - c_i/sqrt(dt)) dW of variance
O(phi'^2 dt^3), independent across steps, so the global strong error is O(dt): strong order 1 for
Euler-Maruyama (Kloeden & Platen 1992, Ch. 10: with additive noise it coincides with Milstein's scheme),
ancestral / DDIM(eta), SDE-DPM-Solver++ of every order (the higher orders improve the drift only) and the
interpolant integrator. Higher strong order would need int u dW, which an increment does not carry.
The predictor-corrector sampler is not pathwise convergent (strong order 0): its Langevin corrector
moves the state with noise that is independent of the SDE's Brownian path, by steps that do not shrink
with dt; it is weakly accurate only.
"""

from __future__ import annotations

from torch import Tensor

from . import multistep as ms
from .base import Points
from .problem import Problem
from .registry import Solver

__all__ = ["ReverseSDESolver", "grid_points", "run_noisy", "reverse_sde"]


def grid_points(prob: Problem) -> Points:
    """Schedule quantities on the problem's grid."""
    return prob.points(prob.grid(prob.steps))


def run_noisy(prob: Problem, pred: str, pts: Points, orders: list[int], A, B, std) -> Tensor:
    """The shared multistep loop x_{i+1} = A_i x_i + sum_j B_ij m_{i-j} + std_i z_i (:func:`multistep.run`)."""
    ev = prob.evaluator(pred)
    draw = prob.noise_stream(pts.t, prob.x)
    return ms.run(ev, prob.x, pts, orders, A, B, noise=std, draw=draw, hook=prob.step_hook(ev, pts.t))


def reverse_sde(schedule):
    """eps(t) = g^2(t)/2: the reverse SDE of Song et al. 2021, eq. 6, as a member of the family above."""
    return lambda t: schedule.g2(t) / 2


class ReverseSDESolver(Solver):
    """Base of the samplers of the reverse SDE itself (eps = g^2/2): stochastic, so not invertible."""

    @property
    def stochastic(self) -> bool:
        return True

    def sde_diffusion(self, schedule):
        return reverse_sde(schedule)
