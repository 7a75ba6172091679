"""Adaptive DPM-Solver-12 and -23 (Lu et al. 2022, Alg. 3 / Appendix C).

Each attempt from s takes a step h in lambda with a lower-order solution (DPM-Solver-1, or -2 with
r1 = 1/3) and a higher-order one that reuses its evaluations (DPM-Solver-2 with r1 = 1/2, or -3 with
r1, r2 = 1/3, 2/3): 2 or 3 NFE per attempt. The step is accepted when the scaled RMS difference
E = || (x_high - x_low) / max(atol, rtol max(|x_low|, |x_prev|)) || <= 1, and h <- min(theta h E^{-1/order},
lambda_end - lambda_s). The accept test is a host sync per attempt; the NFE is data dependent.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import E, Points, base_coefs, first_order, kernel, lincomb
from .problem import Problem

__all__ = ["run_adaptive"]


def _stages(pred: str, sched, s: Points, t: Points, order: int, r: tuple[float, ...]):
    """Inner points and stage rows (a, [b_0, ...]) of DPM-Solver-``order`` (midpoint type) from s to t;
    the last row is the solution at t."""
    k, h = kernel(pred), t.lam - s.lam
    inner = [Points.of(sched, sched.t_of_lambda(s.lam + rj * h)) for rj in r]
    a1, b1 = first_order(pred, s, inner[0] if inner else t)
    st = [(a1, [b1])]
    if order == 1:
        return inner, st
    if order == 3:  # x_{s2}: the second-order stage of the official DPM-Solver-3
        h2 = inner[1].lam - s.lam
        a2, c2 = base_coefs(pred, s, inner[1])
        q = r[1] / r[0]
        st.append((a2, [c2 * (E(1, h2, k) - q * E(2, h2, k)), c2 * q * E(2, h2, k)]))
    a, c = base_coefs(pred, s, t)
    e1, e2 = E(1, h, k), E(2, h, k)
    w = [e1 * (1 - 0.5 / r[0]), e1 * (0.5 / r[0])] if order == 2 else [e1 - e2 / r[1], 0 * h, e2 / r[1]]
    st.append((a, [c * wj for wj in w]))
    return inner, st


def _apply(row, x: Tensor, ms: list[Tensor]) -> Tensor:
    a, bs = row
    return lincomb([(float(a), x)] + [(float(b), m) for b, m in zip(bs, ms, strict=False)])


def run_adaptive(
    prob: Problem, pred: str, order: int, atol: float, rtol: float, h_init: float = 0.05, theta: float = 0.9
) -> Tensor:
    if order not in (2, 3):
        raise ValueError(f"order must be 2 or 3 for method 'adaptive' (DPM-Solver-12/23); got {order}")
    sched, x = prob.schedule, prob.x
    ends = prob.grid(1)
    if ends.dim() != 1:
        raise ValueError("method 'adaptive' needs one time grid for the whole batch (not per-sample times)")
    s = Points.of(sched, ends[0])
    lam_end = float(sched.lambda_(ends[-1]))
    if not math.isfinite(lam_end):
        raise ValueError("method 'adaptive' needs a finite log-SNR at t_end; use t_end > 0")
    ev = prob.evaluator(pred)
    # Lower-order partner: DPM-Solver-1, or DPM-Solver-2 at r1 = 1/3 sharing the first inner point.
    r_high, r_low = ((0.5,), ()) if order == 2 else ((1 / 3, 2 / 3), (1 / 3,))
    h, x_prev, it = h_init, x, 0
    while lam_end - float(s.lam) > 1e-5:
        t = Points.of(sched, sched.t_of_lambda(s.lam + min(h, lam_end - float(s.lam))))
        inner, high = _stages(pred, sched, s, t, order, r_high)
        low = _stages(pred, sched, s, t, order - 1, r_low)[1][-1]
        plan = ev.plan(torch.stack([s.t] + [q.t for q in inner]), x)
        ms = [ev(x, plan[0])]
        for j, row in enumerate(high[:-1]):
            ms.append(ev(_apply(row, x, ms), plan[j + 1]))
        xh, xl = _apply(high[-1], x, ms), _apply(low, x, ms)
        delta = torch.clamp(rtol * torch.maximum(xl.abs(), x_prev.abs()), min=atol)
        err = float(((xh - xl) / delta).reshape(x.shape[0], -1).pow(2).mean(-1).sqrt().max())  # host sync
        if err <= 1.0:
            x, x_prev, s = xh, xl, t
            if prob.callback is not None:
                x = prob.after_step(it, t.t, x, ev)
            it += 1
        h = min(theta * h * max(err, 1e-12) ** (-1.0 / order), lam_end - float(s.lam))
    return x
