"""The linear multistep engine the exponential integrators share (DDIM, DPM-Solver(++) nM, DEIS, UniPC, and
the stochastic multistep samplers).

Each step is  x_{i+1} = a_i x_i + sum_j b_ij m_{i-j} (+ s_i z for a stochastic step), where m are the
model's predictions (x0 or eps) at the previous grid points. All a, b are computed in float64 before the
loop (each family's coefficients live in its own module: :mod:`.dpm_solver`, :mod:`.unipc`, :mod:`.deis`);
the loop in :func:`run` only forms linear combinations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .._device import host_to
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
    fused: dict = field(default_factory=dict, compare=False, repr=False)  # memo of :func:`_fused_tables`


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
    if draw is None and prep.s is None:
        tables = _fused_tables(ev, x, orders, prep)
        if tables is not None:
            return _loop_fused(ev, x, orders, prep, tables, hook)
    return _loop_terms(ev, x, orders, prep, draw, hook)


def _loop_terms(
    ev: Evaluator,
    x: Tensor,
    orders: list[int],
    prep: Prepared,
    draw: Callable[[int], Tensor] | None = None,
    hook: Callable[[int, Tensor], Tensor] | None = None,
) -> Tensor:
    """The general loop: each combination a chain of two-operand kernels (any coefficient rows, noise,
    a callback, autograd)."""
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


# --- The fused loop -------------------------------------------------------------------------------------
# A combination of k state-sized terms as a chain of eager kernels (mul_, add_, add_, ...) reads and writes
# about 3(k - 1) state-sized passes; the step's memory floor is k reads and one write. When every
# coefficient is a host scalar, the model's predictions live as the rows of one (R, numel) buffer (a ring,
# newest at slot i mod R) and each combination is a single BLAS call, x.addmm_(c, ring, beta=a): one read
# of each row and of x, one write of x. The row vectors c of every step are laid out before the loop
# (float64, cast once to x's dtype and moved in one copy), so the loop makes no host-device transfers.


def _scale(ev: Evaluator, point) -> float | None:
    """The factor c that :meth:`Evaluator.scaled_into` returns at ``point`` (m = c u), or None when it is
    not a host scalar."""
    cx, co = point[1], point[2]
    if not (isinstance(cx, float) and isinstance(co, float)):
        return None
    if ev.x0_fn is not None:
        return 1.0
    return co if (cx == 0.0 or co != 0.0) else 1.0


def _fused_tables(ev: Evaluator, x: Tensor, orders: list[int], prep: Prepared) -> tuple | None:
    """(R, scales, C_pred, C_corr) for :func:`_loop_fused`, or None when the run does not qualify: no
    history (the one-term fold is already at the floor), a per-sample coefficient, a dtype BLAS does not
    take, or a state that needs autograd."""
    K, corr = len(prep.b), prep.ac is not None
    if (K == 1 and not corr) or x.requires_grad or x.dtype not in (torch.float32, torch.float64):
        return None
    if x.device.type not in ("cpu", "cuda") or x.numel() == 0:
        return None
    key = (tuple(orders), x.dtype, x.device)
    if key in prep.fused:
        return prep.fused[key]
    rows_ = [prep.a, *prep.b] + ([prep.ac, *prep.bc] if corr else [])
    scales = [_scale(ev, pt) for pt in prep.plan]
    if any(c is None for c in scales) or not all(isinstance(v, float) for r in rows_ for v in r):
        return None
    n = len(orders)
    R = K + 1 if corr else K
    if not corr:
        c = torch.zeros(n, 1, R, dtype=torch.float64)
        for i in range(n):
            for j in range(orders[i]):
                c[i, 0, (i - j) % R] += prep.b[j][i] * scales[i - j]
        tables = (R, scales, host_to(c, x.device, x.dtype))
    else:
        # Rows (corrected x_i, predicted x_{i+1}) over the columns (x_{i-1} corrected, ring slots): the
        # predictor is written in terms of the step's inputs, so that one product makes both.
        c = torch.zeros(n, 2, 1 + R, dtype=torch.float64)
        for i in range(n):
            if i == 0:
                c[i, 0, 0] = 1.0
            else:
                p = orders[i - 1]
                c[i, 0, 0] = prep.ac[i - 1]
                for j in range(p):
                    c[i, 0, 1 + (i - 1 - j) % R] += prep.bc[j][i - 1] * scales[i - 1 - j]
                c[i, 0, 1 + i % R] += prep.bc[K][i - 1] * scales[i]
            c[i, 1] = prep.a[i] * c[i, 0]
            for j in range(orders[i]):
                c[i, 1, 1 + (i - j) % R] += prep.b[j][i] * scales[i - j]
        # On odd steps the corrected state sits after the ring ([ring; x_{i-1}]): its column moves last.
        c[1::2] = torch.cat([c[1::2, :, 1:], c[1::2, :, :1]], 2)
        tables = (R, scales, host_to(c, x.device, x.dtype))
    prep.fused[key] = tables
    return tables


class _Replay:
    """An evaluator whose first :meth:`scaled_into` returns a result already computed (the fused loop's
    first model call, when it finds the output needs autograd and hands the run to :func:`_loop_terms`)."""

    def __init__(self, ev: Evaluator, first: tuple):
        self._ev, self._first = ev, first

    def scaled_into(self, x, point, buf):
        if self._first is not None:
            first, self._first = self._first, None
            return first
        return self._ev.scaled_into(x, point, buf)

    def __getattr__(self, name):
        return getattr(self._ev, name)


def _loop_fused(
    ev: Evaluator,
    x: Tensor,
    orders: list[int],
    prep: Prepared,
    tables: tuple,
    hook: Callable[[int, Tensor], Tensor] | None = None,
) -> Tensor:
    """:func:`loop` with each combination one ``addmm``: predictor only, the state is updated in place;
    with a corrector (UniC) the corrected state is row 0 of the buffer [x_prev; ring], corrected in place,
    and the predictor writes the next model input into a state tensor of its own. A callback (``hook``)
    is shown a copy of the state, which it may keep; a tensor it returns is copied into the state, so a
    run with a callback that returns nothing equals the run without one bit for bit."""
    R, scales, coef = tables
    n, corr = len(orders), prep.ac is not None
    numel = x.numel()
    if corr:
        # [xc_A; ring; xc_B; P]: the corrected state alternates between xc_A and xc_B, so that each step's
        # input rows ([xc_A; ring] or [ring; xc_B]) and output rows (the other xc, and P) are both evenly
        # strided views, one matrix product apart.
        big = torch.zeros((R + 3, numel), dtype=x.dtype, device=x.device)
        ring = big[1 : R + 1]
        ins = (big[0 : R + 1], big[1 : R + 2])
        outs = (big[R + 1 : R + 3], big.as_strided((2, numel), ((R + 2) * numel, 1), big.storage_offset()))
        pred = big[R + 2].view(x.shape)
    else:
        ring = torch.zeros((R, numel), dtype=x.dtype, device=x.device)
    slots = [row.view(x.shape) for row in ring.unbind(0)]  # views made once, not per step
    rows_ = coef.unbind(0)
    x2 = None  # the predictor-only state as one row
    for i in range(n):
        slot = slots[i % R]
        u, c, fresh = ev.scaled_into(x, prep.plan[i], slot)
        if i == 0 and u.requires_grad:
            return _loop_terms(_Replay(ev, (u, c, fresh)), x, orders, prep, hook=hook)  # type: ignore[arg-type]
        if c != scales[i]:  # a host comparison: the tables were laid out for this factor
            raise RuntimeError(f"fused multistep loop: step {i} scale {c} differs from its table {scales[i]}")
        if u.data_ptr() != slot.data_ptr():
            slot.copy_(u)
        if corr:
            if i == 0:
                big[0].copy_(x.reshape(-1))
            torch.mm(rows_[i], ins[i % 2], out=outs[i % 2])
            x = pred
        else:
            if x2 is None:
                x = x.contiguous().clone()
                x2 = x.view(1, numel)
            x2.addmm_(rows_[i], ring, beta=prep.a[i])
        if hook is not None:
            # the callback may have changed its copy in place; no sync to find out
            x.copy_(hook(i, x.clone()))
    return x.clone() if corr else x


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
