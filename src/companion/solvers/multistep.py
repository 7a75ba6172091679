"""The linear multistep engine the exponential integrators share (DDIM, DPM-Solver(++) nM, DEIS, UniPC, and
the stochastic multistep samplers).

Each step is  x_{i+1} = a_i x_i + sum_j b_ij m_{i-j} (+ s_i z for a stochastic step), where m are the
model's predictions (x0 or eps) at the previous grid points. All a, b are computed in float64 before the
loop (each family's coefficients live in its own module: :mod:`.dpm_solver`, :mod:`.unipc`, :mod:`.deis`);
the loop in :func:`run` only forms linear combinations.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .base import Evaluator, Points, base_coefs, first_order, kernel, lincomb, rows
from .problem import Problem

__all__ = ["step_orders", "nodes", "by_order", "alloc", "coefs", "run", "solve"]


def step_orders(n: int, order: int, lam: Tensor, lower_order_final: float = 0) -> list[int]:
    """Per-step orders: warm-up 1, 2, ..., then ``order``; steps ending or starting at an infinite
    log-SNR (sigma = 0 or alpha = 0) are first order; ``lower_order_final`` = the step count below which
    the last steps drop to orders ..., 2, 1 (10 in the official DPM-Solver, 15 in diffusers, 0: never)."""
    finite = torch.isfinite(lam).reshape(lam.shape[0], -1).all(1).tolist()
    out = []
    for i in range(n):
        p = min(order, i + 1)
        if n < lower_order_final:
            p = min(p, n - i)
        if not (finite[i] and finite[i + 1]):
            p = 1
        out.append(p)
    return out


def nodes(pts: Points, i: Tensor, p: int) -> tuple[Tensor, list[Tensor]]:
    """h of steps i (an index tensor) and their scaled nodes r_j = (lambda_{i-j} - lambda_i)/h, j < p."""
    h = pts.lam[i + 1] - pts.lam[i]
    return h, [(pts.lam[i - j] - pts.lam[i]) / h for j in range(p)]


def by_order(orders: list[int], last: bool = True) -> dict[int, Tensor]:
    """Step indices grouped by order, so that each group's coefficients are computed at once."""
    groups: dict[int, list[int]] = {}
    for i, p in enumerate(orders if last else orders[:-1]):
        groups.setdefault(p, []).append(i)
    return {p: torch.tensor(ix) for p, ix in groups.items()}


def alloc(pts: Points, n: int, K: int) -> tuple[Tensor, Tensor]:
    shape = tuple(pts.lam.shape[1:])
    return torch.zeros((n,) + shape, dtype=torch.float64), torch.zeros((n, K) + shape, dtype=torch.float64)


def coefs(pred: str, pts: Points, orders: list[int], weights: Callable) -> tuple[Tensor, Tensor]:
    """A (N, ...) and B (N, K, ...) of x_{i+1} = A_i x_i + sum_j B_ij m_{i-j}. First-order steps are
    DPM-Solver-1; a step of order p is a x_i + c sum_j w_j m_{i-j} with w = weights(h, r, k, i)."""
    A, B = alloc(pts, len(orders), max(orders))
    k = kernel(pred)
    for p, ix in by_order(orders).items():
        s, t = pts[ix], pts[ix + 1]
        if p == 1:
            A[ix], B[ix, 0] = first_order(pred, s, t)
            continue
        h, r = nodes(pts, ix, p)
        A[ix], c = base_coefs(pred, s, t)
        for j, w in enumerate(weights(h, r, k, ix)):
            B[ix, j] = c * w
    return A, B


def run(
    ev: Evaluator,
    x: Tensor,
    pts: Points,
    orders: list[int],
    A: Tensor,
    B: Tensor,
    corrector: tuple[Tensor, Tensor] | None = None,
    noise: Tensor | None = None,
    draw: Callable[[int], Tensor] | None = None,
    hook: Callable[[int, Tensor], Tensor] | None = None,
) -> Tensor:
    """The multistep loop: one model call per step, history kept in an explicit list (newest first)."""
    n, K = len(orders), B.shape[1]
    plan = ev.plan(pts.t[:-1], x)
    a_, b_ = rows(A, x), [rows(B[:, j], x) for j in range(K)]
    if corrector is not None:
        ac_, bc_ = rows(corrector[0], x), [rows(corrector[1][:, j], x) for j in range(K + 1)]
    s_ = rows(noise, x) if noise is not None else None
    hist: list[tuple[Tensor, object]] = []  # (u, c) with m = c u, newest first (see Evaluator.scaled)
    x_prev = x
    fold = K == 1 and corrector is None  # no history: m = cx x + co out folds into the update itself
    for i in range(n):
        if fold:
            out, cx, co = ev.linear(x, plan[i])
            terms = [(a_[i] + b_[0][i] * cx, x), (b_[0][i] * co, out)]
            if s_ is not None:
                terms.append((s_[i], draw(i)))  # a companion.noise stream
            x = lincomb(terms)
            if hook is not None:
                x = hook(i, x)
            continue
        u, c = ev.scaled(x, plan[i])
        if corrector is not None and i > 0:
            # UniC: re-solve step i-1 with the new evaluation (taken at the predicted x_i, and kept).
            p = orders[i - 1]
            terms = [(ac_[i - 1], x_prev)] + [(bc_[j][i - 1] * cj, uj) for j, (uj, cj) in enumerate(hist[:p])]
            x = lincomb(terms + [(bc_[K][i - 1] * c, u)])
        hist = [(u, c)] + hist[: K - 1]
        x_prev = x
        terms = [(a_[i], x)] + [(b_[j][i] * cj, uj) for j, (uj, cj) in enumerate(hist[: orders[i]])]
        if s_ is not None:
            terms.append((s_[i], draw(i)))  # a companion.noise stream
        x = lincomb(terms)
        if hook is not None:
            x = hook(i, x)
    return x


def solve(
    prob: Problem,
    pred: str,
    order: int,
    make_coefs: Callable[[Points, list[int]], tuple[Tensor, Tensor]],
    corrector: Callable[[Points, list[int]], tuple[Tensor, Tensor]] | None = None,
    lower_order_final: float | None = None,
) -> Tensor:
    """A deterministic multistep run of ``prob`` on its grid: warm-up and final orders from
    :func:`step_orders`, coefficients ``make_coefs(points, orders)``, an optional corrector's
    ``(Ac, Bc)``; ``lower_order_final`` overrides the problem's threshold."""
    ev = prob.evaluator(pred)
    pts = prob.points(prob.grid(prob.steps))
    n = pts.t.shape[0] - 1
    lof = prob.lower_order_final if lower_order_final is None else lower_order_final
    orders = step_orders(n, order, pts.lam, lof)
    A, B = make_coefs(pts, orders)
    corr = corrector(pts, orders) if corrector is not None else None
    return run(ev, prob.x, pts, orders, A, B, corrector=corr, hook=prob.step_hook(ev, pts.t))
