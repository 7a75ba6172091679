"""The linear multistep engine the exponential integrators share (DDIM, DPM-Solver(++) nM, DEIS, UniPC, and
the stochastic multistep samplers).

Each step is  x_{i+1} = a_i x_i + sum_j b_ij m_{i-j} (+ s_i z for a stochastic step), where m are the
model's predictions (x0 or eps) at the previous grid points. All a, b are computed in float64 before the
loop (each family's coefficients live in its own module: :mod:`.dpm_solver`, :mod:`.unipc`, :mod:`.deis`);
the loop in :func:`run` only forms linear combinations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from . import cache
from .base import Evaluator, Points, base_coefs, can_update, first_order, kernel, lincomb, rows
from .problem import Problem

__all__ = [
    "step_orders",
    "nodes",
    "by_order",
    "alloc",
    "coefs",
    "Prepared",
    "prepare",
    "run_key",
    "run",
    "loop",
    "solve",
]


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


@dataclass(frozen=True)
class Prepared:
    """Everything a multistep loop needs before its first model call: the evaluator's per-step plan and
    the step coefficients as rows (Python floats, or per-sample tensors on x's device)."""

    plan: list
    a: list
    b: list
    ac: list | None = None
    bc: list | None = None
    s: list | None = None


def prepare(
    ev: Evaluator,
    x: Tensor,
    pts: Points,
    A: Tensor,
    B: Tensor,
    corrector: tuple[Tensor, Tensor] | None = None,
    noise: Tensor | None = None,
) -> Prepared:
    """The loop's tables for grid ``pts`` and coefficients (A, B[, corrector][, noise std])."""
    K = B.shape[1]
    ac = bc = None
    if corrector is not None:
        ac, bc = rows(corrector[0], x), [rows(corrector[1][:, j], x) for j in range(K + 1)]
    return Prepared(
        ev.plan(pts.t[:-1], x),
        rows(A, x),
        [rows(B[:, j], x) for j in range(K)],
        ac,
        bc,
        rows(noise, x) if noise is not None else None,
    )


def run_key(prob: Problem, ev: Evaluator, t: Tensor, tag: object) -> tuple | None:
    """The cache key (by value, :mod:`.cache`) of a deterministic run's tables: ``tag`` (the solver and
    its options), the schedule, the grid ``t``, the model's prediction and the integrated one, whether
    ``x0_fn`` and the callback's denoised output are on, and x's dtype, device, batch size and rank."""
    sk = cache.value_key(prob.schedule)
    if sk is None:
        return None
    x = prob.x
    return (
        cache._value(tag),
        sk,
        cache._value(t),
        prob.prediction,
        ev.target,
        prob.x0_fn is not None,
        ev.keep_denoised,
        str(x.dtype),
        str(x.device),
        x.shape[0],
        x.dim(),
    )


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
    return loop(ev, x, orders, prepare(ev, x, pts, A, B, corrector, noise), draw, hook)


def loop(
    ev: Evaluator,
    x: Tensor,
    orders: list[int],
    prep: Prepared,
    draw: Callable[[int], Tensor] | None = None,
    hook: Callable[[int, Tensor], Tensor] | None = None,
) -> Tensor:
    """:func:`run` on tables from :func:`prepare` (possibly cached)."""
    n, K = len(orders), len(prep.b)
    plan, a_, b_, ac_, bc_, s_ = prep.plan, prep.a, prep.b, prep.ac, prep.bc, prep.s
    corrector = ac_
    hist: list[tuple[Tensor, object, bool]] = []  # (u, c, ours) with m = c u, newest first (Evaluator.scaled)
    spare: Tensor | None = None
    x_prev, own_prev = x, False
    fold = K == 1 and corrector is None  # no history: m = cx x + co out folds into the update itself
    # A state this loop allocated and nobody else holds is updated in place (one allocation and one cache
    # footprint fewer per step): never the caller's x, never with a callback (it may keep the x it is
    # shown); the model has returned by then, so only a model that stores its input tensor would notice.
    own = False
    for i in range(n):
        if fold:
            out, cx, co = ev.linear(x, plan[i])
            terms = [(a_[i] + b_[0][i] * cx, x), (b_[0][i] * co, out)]
            if s_ is not None:
                terms.append((s_[i], draw(i)))  # a companion.noise stream
            x = lincomb(terms, inplace=own and can_update(x, [v for _, v in terms[1:]]))
            own = hook is None
            if hook is not None:
                x = hook(i, x)
            continue
        # The prediction dropped from the history last step is ours and unused: u is written into it.
        u, c, fresh = ev.scaled_into(x, plan[i], spare)
        spare = None
        if corrector is not None and i > 0:
            # UniC: re-solve step i-1 with the new evaluation (taken at the predicted x_i, and kept). x_prev
            # (the corrected x_{i-1}) is needed no more, so it takes the result when this loop owns it.
            p = orders[i - 1]
            terms = [(ac_[i - 1], x_prev)] + [
                (bc_[j][i - 1] * cj, uj) for j, (uj, cj, _) in enumerate(hist[:p])
            ]
            terms = terms + [(bc_[K][i - 1] * c, u)]
            x = lincomb(terms, inplace=own_prev and can_update(x_prev, [v for _, v in terms[1:]] + [x]))
            own = hook is None
        if len(hist) == K and hist[-1][2] and K > 1:
            spare = hist[-1][0]
        hist = [(u, c, fresh)] + hist[: K - 1]
        x_prev, own_prev = x, own
        terms = [(a_[i], x)] + [(b_[j][i] * cj, uj) for j, (uj, cj, _) in enumerate(hist[: orders[i]])]
        if s_ is not None:
            terms.append((s_[i], draw(i)))  # a companion.noise stream
        # With a corrector x is also x_prev, which the next correction reads: then the result is fresh.
        upd = own and corrector is None and can_update(x, [v for _, v in terms[1:]])
        x = lincomb(terms, inplace=upd)
        own = hook is None
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
    key: object = None,
) -> Tensor:
    """A deterministic multistep run of ``prob`` on its grid: warm-up and final orders from
    :func:`step_orders`, coefficients ``make_coefs(points, orders)``, an optional corrector's
    ``(Ac, Bc)``; ``lower_order_final`` overrides the problem's threshold. ``key`` (the solver with its
    options; None: no caching) names the coefficient functions, so that the tables are reused from
    :mod:`.cache` by any later run with the same key, schedule values, grid, dtype, device and batch."""
    ev = prob.evaluator(pred)
    t = prob.grid(prob.steps)
    lof = prob.lower_order_final if lower_order_final is None else lower_order_final

    def build():
        pts = prob.points(t)
        orders = step_orders(pts.t.shape[0] - 1, order, pts.lam, lof)
        A, B = make_coefs(pts, orders)
        corr = corrector(pts, orders) if corrector is not None else None
        return orders, prepare(ev, prob.x, pts, A, B, corr)

    parts = None if key is None else run_key(prob, ev, t, ("multistep", key, pred, order, lof))
    orders, prep = cache.get_or_build(parts, build)
    return loop(ev, prob.x, orders, prep, hook=prob.step_hook(ev, torch.as_tensor(t, dtype=torch.float64)))
