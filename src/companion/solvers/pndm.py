"""PNDM's pseudo linear multistep method, PLMS (Liu et al. 2022, eq. 11-12), as diffusers runs it with
``skip_prk_steps=True``.

The transfer from s to t is the DDIM map with a combined noise prediction e' (PNDM eq. 9 is DDIM for VP),
    x_t = (alpha_t/alpha_s) x_s - sigma_t (e^h - 1) e',
with e' the 4-step Adams-Bashforth combination (55 e_i - 59 e_{i-1} + 37 e_{i-2} - 9 e_{i-3})/24 for equal
steps, lower AB orders during warm-up, and a Heun-type first step (two evaluations). NFE = steps + 1.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .base import first_order, lincomb, rows
from .problem import Problem

__all__ = ["PLMS"]

_AB = {1: (1.0,), 2: (1.5, -0.5), 3: (23 / 12, -16 / 12, 5 / 12), 4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


@dataclass(frozen=True)
class PLMS:
    order: int = 4

    def __call__(self, prob: Problem) -> Tensor:
        x = prob.x
        pts = prob.points(prob.grid(prob.steps))
        a, b = first_order("eps", pts[:-1], pts[1:])
        ev = prob.evaluator("eps")
        at = ev.plan(pts.t, x)
        a_, b_ = rows(a, x), rows(b, x)
        hist: list[Tensor] = []
        for i in range(len(a_)):
            e = ev(x, at[i])
            if i == 0:  # Heun start: predict with e_0, re-solve with the mean of both slopes
                xp = lincomb([(a_[0], x), (b_[0], e)])
                ep = ev(xp, at[1])
                hist = [e]
                x = lincomb([(a_[0], x), (b_[0] * 0.5, e), (b_[0] * 0.5, ep)])
            else:
                hist = [e] + hist[:3]
                ab = _AB[min(len(hist), self.order)]
                x = lincomb([(a_[i], x)] + [(b_[i] * c, m) for c, m in zip(ab, hist, strict=False)])
            if prob.callback is not None:
                prob.callback(i, x)
        return x
