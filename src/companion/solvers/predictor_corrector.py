"""Predictor-corrector sampling (Song et al. 2021): Langevin corrector moves between predictor steps."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import lincomb, rows
from .ddim import ddim_noise_coefs
from .euler_maruyama import em_coefs
from .problem import Problem
from .registry import OrderCheck, choice, flag, integer, number, register
from .reverse_sde import ReverseSDESolver, grid_points

__all__ = ["PredictorCorrector"]


@register("pc", "predictor-corrector: Langevin corrector (snr) + Euler-Maruyama or ancestral predictor")
class PredictorCorrector(ReverseSDESolver):
    """Predictor-corrector sampling (Song et al. 2021, Alg. 1 and 4-5), VP and VE alike.

    Each step: ``corrector_steps`` Langevin moves at t_i,  x <- x + e s + sqrt(2 e) z  with score s, then the
    predictor step t_i -> t_{i+1}: ``euler-maruyama`` or ``ancestral``. Song et al. take
    e = 2 a_i (snr |z| / |s|)^2 with norms averaged over the batch (a_i = 1 - beta_i for VP, 1 for VE);
    since |z|^2 ~ d and |s|^2 ~ d / sigma_t^2 on noised data we use e = 2 a_i snr^2 sigma_t^2 with
    a_i = (alpha_{t_i}/alpha_{t_{i+1}})^2: batch-invariant (no batch statistics), and free of the blow-up
    of per-sample norms where one sample's |s| nearly vanishes (likely in low dimension).
    1 + corrector_steps NFE per step. Weakly accurate; strong order 0 (the corrector's noise is not the
    SDE's Brownian path). ``final_noise=False`` returns the last predictor step's mean (Song's ``denoise``).
    """

    order: int = choice(1, (1,), "first order only")
    snr: float = number(0.16, 0.0, lo_open=True, doc="the Langevin signal-to-noise ratio")
    corrector_steps: int = integer(1, 0, "Langevin moves per step")
    predictor: str = choice("euler-maruyama", ("euler-maruyama", "ancestral"), "the predictor step")
    final_noise: bool = flag(False, "add the last predictor step's noise")

    def order_check(self) -> OrderCheck:
        return OrderCheck(
            None,
            kind="strong",
            reason="not pathwise convergent (strong order 0): the corrector's "
            "noise is not the SDE's Brownian path; tests/solvers/test_stochastic.py checks that "
            "its error does not fall with the step count, and its weak accuracy",
        )

    def __call__(self, prob: Problem) -> Tensor:
        pts = grid_points(prob)
        n = pts.t.shape[0] - 1
        x = prob.x
        if self.predictor == "euler-maruyama":
            pred, (A, B, std) = "eps", em_coefs(prob.schedule, pts, self.final_noise)
            B = B[:, 0]
        else:
            pred, (A, B, std) = "x0", ddim_noise_coefs(pts, 1.0)
            if not self.final_noise:
                std = std.clone()
                std[-1] = 0.0
        ev = prob.evaluator(pred)
        score = prob.evaluator("eps")  # the score is -eps/sigma
        plan, splan = ev.plan(pts.t[:-1], x), score.plan(pts.t[:-1], x)
        a_, b_, s_ = rows(A, x), rows(B, x), rows(std, x)
        inv_sigma = rows(-1.0 / pts.sigma[:-1], x)
        step = 2.0 * (pts.alpha[:-1] / pts.alpha[1:]) ** 2 * self.snr**2 * pts.sigma[:-1] ** 2
        e_, noise_ = rows(step, x), rows(torch.sqrt(2.0 * step), x)
        draw = prob.noise_stream(pts.t, x)
        hook = prob.step_hook(ev, pts.t)
        for i in range(n):
            for j in range(self.corrector_steps):
                s = score(x, splan[i])  # eps; the score is -eps / sigma_i
                x = lincomb([(1.0, x), (e_[i] * inv_sigma[i], s), (noise_[i], draw(i, 1 + j))])
            m = ev(x, plan[i])
            x = lincomb([(a_[i], x), (b_[i], m), (s_[i], draw(i))])
            if hook is not None:
                x = hook(i, x)
        return x
