"""Singlestep DPM-Solver(++) of orders 1-3 (Lu et al. 2022, Alg. 1, 4, 5; Lu et al. 2022b, Alg. 1).

An outer step s -> t of order p evaluates the model at s and at p - 1 inner points s_1, s_2 and combines
the results; every stage is linear in (x_s, m_0, ..., m_{p-1}):

    x_{s1} = DPM-Solver-1 from s to s1,
    x_{s2} = a x_s + c [E1 m_0 + (r2/r1) E2 (m_1 - m_0)]                  (E_n over r2 h),
    x_t    = a x_s + c sum_j w_j m_j,

with ``midpoint`` weights (the papers' DPM-Solver-2/3: w = E1 [1 - 1/(2 r1), 1/(2 r1)] and
E1 m_0 + E2/r2 (m_2 - m_0)) or ``heun`` weights (exact integration of the interpolating polynomial through
the stages, the official "taylor"). NFE: ``steps`` in total, split as the official code does.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import E, Points, base_coefs, first_order, kernel, lagrange_weights, lincomb, rows
from .problem import Problem

__all__ = ["INNER_POINTS", "singlestep_orders", "diffusers_orders", "run_singlestep"]

#: inner points of a singlestep step of order 2 and 3, as fractions of h (the official defaults)
INNER_POINTS = {2: (0.5,), 3: (1.0 / 3.0, 2.0 / 3.0)}


def singlestep_orders(steps: int, order: int, method: str) -> list[int]:
    """Orders of the outer steps for ``steps`` NFE, split as the official
    ``get_orders_and_timesteps_for_singlestep_solver``; ``singlestep_fixed`` spends the remainder on one
    lower-order final step, so that NFE = steps always."""
    if method == "singlestep_fixed":
        return [order] * (steps // order) + ([steps % order] if steps % order else [])
    if order == 3:
        k = steps // 3 + 1
        tail = {0: [2, 1], 1: [1], 2: [2]}[steps % 3]
        return [3] * (k - 1 - (steps % 3 == 0)) + tail
    if order == 2:
        return [2] * (steps // 2) + ([1] if steps % 2 else [])
    return [1] * steps


def diffusers_orders(steps: int, order: int, final_zero: bool) -> list[int]:
    """The outer-step orders of diffusers' ``DPMSolverSinglestepScheduler.get_order_list`` (with
    ``lower_order_final``, which ``set_timesteps`` switches on), grouped: [1, 2, 3, 1, 2] -> [3, 2]."""
    if order == 3:
        per = {0: [1, 2, 3] * (steps // 3 - 1) + [1, 2] + [1], 1: [1, 2, 3] * (steps // 3) + [1]}
        flat = per.get(steps % 3, [1, 2, 3] * (steps // 3) + [1, 2])
    elif order == 2:
        flat = [1, 2] * (steps // 2 - 1) + [1, 1] if steps % 2 == 0 else [1, 2] * (steps // 2) + [1]
    else:
        flat = [1] * steps
    if final_zero:
        flat[-1] = 1
    groups: list[int] = []
    for o in flat:
        if o == 1:
            groups.append(1)
        else:
            groups[-1] = o
    return groups


def _split_final(orders: list[int], lam_end: Tensor) -> list[int]:
    # A step that ends at clean data (sigma = 0, lambda = inf) cannot place inner points: make it first order.
    if orders[-1] > 1 and not bool(torch.isfinite(lam_end).all()):
        return orders[:-1] + [orders[-1] - 1, 1]
    return orders


def _stage_weights(p: int, r: tuple[Tensor, ...], h: Tensor, k: int, variant: str) -> list[Tensor]:
    nodes = [torch.zeros_like(h)] + list(r)
    if variant == "heun":
        return lagrange_weights(nodes, h, k)
    e1 = E(1, h, k)
    if p == 2:
        return [e1 * (1 - 0.5 / r[0]), e1 * (0.5 / r[0])]
    e2 = E(2, h, k)
    return [e1 - e2 / r[1], torch.zeros_like(h), e2 / r[1]]


def run_singlestep(prob: Problem, pred: str, order: int, method: str, variant: str) -> Tensor:
    x, steps = prob.x, prob.steps
    diffusers = prob.compat == "diffusers"
    if method == "singlestep_fixed" and steps < order:  # checked before any model call
        raise ValueError(f"steps must be >= order ({order}) for method 'singlestep_fixed'; got steps={steps}")
    if diffusers or prob.grid_name is None or prob.grid_name != "logsnr":
        fine = prob.grid(steps)
        final_zero = not bool(torch.isfinite(prob.schedule.lambda_(fine[-1])).all())
        orders = (
            diffusers_orders(steps, order, final_zero)
            if diffusers
            else singlestep_orders(steps, order, method)
        )
        orders = _split_final(orders, prob.schedule.lambda_(fine[-1]))
        idx = [0]
        for o in orders:
            idx.append(idx[-1] + o)
        outer = fine[idx]
    else:
        orders = singlestep_orders(steps, order, method)
        outer, fine = prob.grid(len(orders)), None
    pts = prob.points(outer)
    k = kernel(pred)

    # Stage times and, per outer step, the coefficient rows of each stage (float64, before the loop).
    times, stages = [], []
    for i, p in enumerate(orders):
        s, t = pts[i], pts[i + 1]
        h = t.lam - s.lam
        if fine is not None and diffusers:
            r = tuple((prob.schedule.lambda_(fine[idx[i] + j]) - s.lam) / h for j in range(1, p))
        else:
            r = tuple(torch.full_like(h, v) for v in INNER_POINTS.get(p, ()))
        inner = [Points.of(prob.schedule, prob.schedule.t_of_lambda(s.lam + rj * h)) for rj in r]
        if fine is not None and diffusers:
            inner = [Points.of(prob.schedule, fine[idx[i] + j]) for j in range(1, p)]
        times += [s.t] + [q.t for q in inner]
        rows_i = []
        if p == 1:
            a, b = first_order(pred, s, t)
            rows_i.append((a, [b]))
        else:
            a1, b1 = first_order(pred, s, inner[0])
            rows_i.append((a1, [b1]))
            if p == 3:
                a2, c2 = base_coefs(pred, s, inner[1])
                h2 = inner[1].lam - s.lam
                v2 = variant if diffusers else "heun"
                w2 = _stage_weights(2, (r[0] / r[1],), h2, k, v2)
                rows_i.append((a2, [c2 * w for w in w2]))
            a, c = base_coefs(pred, s, t)
            rows_i.append((a, [c * w for w in _stage_weights(p, r, h, k, variant)]))
        stages.append(rows_i)

    ev = prob.evaluator(pred)
    plan = iter(ev.plan(torch.stack(times), x))
    hook = prob.step_hook(ev, outer)
    coef = [[(rows(a[None], x)[0], [rows(b[None], x)[0] for b in bs]) for a, bs in st] for st in stages]
    for i, st in enumerate(coef):
        xs, ms = x, []
        for a, bs in st:
            ms.append(ev(x, next(plan)))
            x = lincomb([(a, xs)] + list(zip(bs, ms, strict=True)))
        if hook is not None:
            x = hook(i, x)
    return x
