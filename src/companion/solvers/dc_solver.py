"""DC-Solver (Zhao et al. 2024, "DC-Solver: Improving Predictor-Corrector Diffusion Sampler via Dynamic
Compensation", arXiv 2409.03755): UniPC whose buffered model output is compensated before each predictor.

In UniPC the model output m_i kept for step i was evaluated at the *predicted* state x~_i, while sampling
continues from the *corrected* x_i; the misalignment grows with classifier-free guidance. DC-Solver
replaces m_i, before the predictor of step i, by the Lagrange polynomial through the last ``dc_order + 1``
buffered outputs (m_i, m_{i-1}, ..., in continuous time t) evaluated at

    t' = t_{i-1} + rho_i (t_i - t_{i-1}),                                 (paper eq. 9; official code)

and keeps the compensated value in the history. rho_i = 1 gives t' = t_i, i.e. UniPC itself; the per-step
ratios rho are searched against a reference trajectory (:mod:`companion.lab.dc`). The corrector of step
i - 1 still uses the raw m_i (it is computed before the compensation, as in the official code), so the
corrector costs no model call and DC none either: 1 NFE per step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from . import cache
from . import multistep as ms
from .base import lincomb, rows
from .problem import Problem
from .registry import Option, choice, option, register
from .unipc import UniPC, unic_coefs, unip_coefs

__all__ = ["DCSolver", "compensation_weights", "check_ratios", "dc_tables"]


def _is_ratio_seq(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, Tensor | np.ndarray):
        return v.ndim == 1 and not (v.dtype == torch.bool or v.dtype == np.bool_)
    if isinstance(v, list | tuple):
        return all(
            isinstance(r, int | float | np.floating | np.integer) and not isinstance(r, bool) for r in v
        )
    return False


def _finite_seq(v: Any) -> bool:
    if v is None:
        return True
    vals = v.tolist() if isinstance(v, Tensor | np.ndarray) else list(v)
    return len(vals) > 0 and all(math.isfinite(float(r)) for r in vals)


RATIOS = Option(
    "None (all 1: UniPC) or a non-empty 1-D sequence of finite real numbers, one per step",
    _is_ratio_seq,
    _finite_seq,
    ("1.0", (1.0, float("nan")), ()),
    "per-step compensation ratios rho_i (t' = t_{i-1} + rho_i (t_i - t_{i-1})); None: all 1",
)


def check_ratios(ratios: Sequence[float] | None, steps: int, dc_order: int) -> tuple[float, ...]:
    """The ratios as floats, checked against the run: one per step, finite, and 1 on the first
    ``dc_order`` steps (there the history holds too few outputs to interpolate). Raises ``ValueError``."""
    if ratios is None:
        return (1.0,) * steps
    r = tuple(float(v) for v in ratios)
    if len(r) != steps:
        raise ValueError(f"ratios must hold one ratio per step ({steps}); got {len(r)}")
    if not all(math.isfinite(v) for v in r):
        raise ValueError(f"ratios must be finite; got {list(r)}")
    early = [i for i in range(min(dc_order, steps)) if r[i] != 1.0]
    if early:
        raise ValueError(
            f"ratios[{early[0]}] = {r[early[0]]}: the first dc_order = {dc_order} ratios must be 1 "
            "(too few buffered outputs to interpolate there)"
        )
    return r


def compensation_weights(
    t_nodes: Sequence[Tensor], t_prev: Tensor, t_cur: Tensor, rho: Tensor
) -> list[Tensor]:
    """Lagrange weights w_j (m' = sum_j w_j m_j) of the nodes ``t_nodes`` = (t_i, t_{i-1}, ..., t_{i-q})
    evaluated at t' = t_prev + rho (t_cur - t_prev); differentiable in ``rho`` (the ratio search)."""
    tp = t_prev + rho * (t_cur - t_prev)
    w = []
    for j, tj in enumerate(t_nodes):
        term = torch.ones_like(tp)
        for m, tm in enumerate(t_nodes):
            if m != j:
                term = term * (tp - tm) / (tj - tm)
        w.append(term)
    return w


def dc_tables(prob: Problem, solver: DCSolver) -> tuple:
    """Per-run tables: the evaluator, the step orders, UniPC's prepared predictor/corrector rows, the compensation
    weights of each step (None where rho_i = 1) as rows, and the float64 grid t (for the hook)."""
    ev = prob.evaluator(solver.pred)
    t = prob.grid(prob.steps)
    n = t.shape[0] - 1
    ratios = check_ratios(solver.ratios, n, solver.dc_order)
    lof = math.inf if prob.lower_order_final else 0
    bh, pred = solver.variant, solver.pred

    def build():
        pts = prob.points(t)
        orders = ms.step_orders(n, solver.order, pts.lam, lof)
        A, B = unip_coefs(pred, pts, orders, bh)
        corr = unic_coefs(pred, pts, orders, bh) if solver.corrector else None
        prep = ms.prepare(ev, prob.x, pts, A, B, corr)
        q = solver.dc_order
        comp: list[list | None] = []
        for i, rho in enumerate(ratios):
            if rho == 1.0:
                comp.append(None)
                continue
            nodes = [pts.t[i - j] for j in range(q + 1)]
            w = compensation_weights(nodes, pts.t[i - 1], pts.t[i], torch.tensor(rho, dtype=torch.float64))
            comp.append([rows(wj.unsqueeze(0), prob.x)[0] for wj in w])
        return orders, prep, comp

    key = ms.run_key(prob, ev, t, ("dc-solver", solver))
    orders, prep, comp = cache.get_or_build(key, build)
    return ev, orders, prep, comp, torch.as_tensor(t, dtype=torch.float64)


@register(
    "dc-solver",
    "DC-Solver: UniPC with dynamic compensation of the buffered model output (per-step ratios)",
)
class DCSolver(UniPC):
    """DC-Solver (Zhao et al. 2024): UniPC (:class:`~companion.solvers.UniPC`, same options) whose newest
    buffered output m_i is replaced, before the predictor of step i, by the degree-``dc_order`` Lagrange
    interpolant of m_i, ..., m_{i-dc_order} at t' = t_{i-1} + rho_i (t_i - t_{i-1}); 1 NFE per step.
    ``ratios`` (one per step, the first ``dc_order`` equal to 1; None: all 1, which is UniPC) come from the
    search or the cascade polynomial regression of :mod:`companion.lab.dc`. The order check is UniPC's: it
    runs with the default ratios."""

    dc_order: int = choice(2, (1, 2), "degree of the compensating Lagrange interpolant (official: 2)")
    ratios: Any = option(None, RATIOS)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.ratios is not None:
            vals = self.ratios.tolist() if isinstance(self.ratios, Tensor | np.ndarray) else self.ratios
            object.__setattr__(self, "ratios", tuple(float(v) for v in vals))

    def __call__(self, prob: Problem) -> Tensor:
        ev, orders, prep, comp, t = dc_tables(prob, self)
        return dc_loop(ev, prob, self, orders, prep, comp, t)


def dc_loop(ev, prob: Problem, solver: DCSolver, orders, prep, comp, t) -> Tensor:
    """The sampling loop (one model call per step): evaluate m_i at the predicted x_i, correct step i - 1
    with the raw m_i (UniC), compensate m_i (DC) and predict x_{i+1} (UniP). As in UniPC's loop the
    callback sees the predicted x_{i+1}, and its replacement is what the next correction starts from."""
    hook = prob.step_hook(ev, t)
    x = prob.x
    n, K = len(orders), len(prep.b)
    keep = max(K, solver.dc_order + 1)
    hist: list[Tensor] = []  # model outputs m (compensated), newest first
    x_prev = x
    for i in range(n):
        m = ev(x, prep.plan[i])
        if prep.ac is not None and i > 0:
            p = orders[i - 1]
            terms = [(prep.ac[i - 1], x_prev)] + [(prep.bc[j][i - 1], hist[j]) for j in range(p)]
            x = lincomb(terms + [(prep.bc[K][i - 1], m)])
        hist = [m] + hist[: keep - 1]
        if comp[i] is not None:
            hist[0] = lincomb([(w, hist[j]) for j, w in enumerate(comp[i])])
        x_prev = x
        x = lincomb([(prep.a[i], x)] + [(prep.b[j][i], hist[j]) for j in range(orders[i])])
        if hook is not None:
            x = hook(i, x)
    return x
