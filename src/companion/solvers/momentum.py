"""Momentum on the PLMS / Adams-Bashforth family (Wizadwongsa et al. 2023, arXiv 2307.11118, Sec. 4):
Polyak's heavy ball (``"plms-hb"``) and generalized heavy ball with variable order (``"ghvb"``).

Both integrate the probability-flow ODE in the paper's variables xbar = x/alpha, sigmabar = sigma/alpha,
where it reads dxbar/dsigmabar = eps(x, t) (the DDIM ODE). With f_n the noise prediction at node n and a
step delta_n = sigmabar_{n+1} - sigmabar_n (< 0):

* heavy ball (paper eq. 14): v_{n+1} = (1 - beta) v_n + beta sum_i b_i f_{n-i} (the Adams-Bashforth
  combination of order r), xbar_{n+1} = xbar_n + delta_n v_{n+1}. First order for every beta < 1
  (paper Thm 1): v lags the slope by (1 - beta)/beta steps.
* GHVB (paper eqs. 16-19, Alg. 2): v_{n+1} = (1 - beta) v_n + beta f_n and
  xbar_{n+1} = xbar_n + delta_n sum_i w_i v_{n+1-i}. The paper's weights (``coefficients="fixed"``,
  uniform steps) come from multiplying the Adams-Bashforth backward-difference series by
  (beta + (1 - beta) nabla)/beta and truncating after r terms (:func:`ghvb_weights`); order r (Thm 2).
  The momentum number m gives r = ceil(m), beta = m - floor(m) (beta = 1 for integer m, plain
  Adams-Bashforth).

Variable steps (``coefficients="variable"``, the default). Every v_k is a known combination
sum_j a_kj f_j of the model outputs (the recursion fixes a), so the weights w of the last q momenta are
chosen to integrate every polynomial of degree < q in sigmabar exactly over the step: with nodes
u_j = (sigmabar_j - sigmabar_n)/delta_n, sum_i w_i sum_j a_{n+1-i,j} u_j^p = 1/(p + 1) for p < q. On
a uniform grid, after the momentum's start-up transient (1 - beta)^n has decayed, these are the paper's
weights (tested); with beta = 1 they are the variable-step Adams-Bashforth weights. The heavy ball's inner
combination uses the same variable-step Adams-Bashforth weights.

Starting values. ``start="multistep"`` (the official code's warm-up: v_0 = f_0 and orders 1, 2, ... while
the history fills) has a first-order first step, whose O(h^2) local error caps the global order at 2 for
r >= 3. ``start="rk4"`` takes the first r - 1 steps with classical Runge-Kutta 4 in (sigmabar, xbar)
(4 NFE each, local error O(h^5)), which keeps order r. NFE = steps (multistep) or steps + 3 (r - 1) (rk4).

The state is never reset by a callback: a tensor a callback returns replaces x, and the history of model
outputs is kept, as in every multistep solver of the package.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from .base import lincomb
from .problem import Problem
from .registry import OrderCheck, Solver, choice, number, register
from .time_shift import momentum_with_shift, time_shift_option

__all__ = ["GHVB", "PLMSHeavyBall", "ghvb_weights", "ab_weights", "split_momentum_number", "MomentumPlan"]

#: Adams-Bashforth backward-difference coefficients gamma_k = (-1)^k int_0^1 binom(-u, k) du
_GAMMA = (1.0, 1 / 2, 5 / 12, 3 / 8)


def split_momentum_number(m: float) -> tuple[int, float]:
    """(order, beta) of momentum number m > 0: order ceil(m), beta = m - floor(m), or 1 for integer m."""
    if not isinstance(m, (int, float)) or isinstance(m, bool) or not math.isfinite(m) or not 0 < m <= 4:
        raise ValueError(f"momentum number m must be a finite number in (0, 4]; got {m!r}")
    r = math.ceil(m)
    beta = m - math.floor(m)
    return r, (1.0 if beta == 0 else float(beta))


def ghvb_weights(order: int, beta: float) -> np.ndarray:
    """The paper's uniform-step GHVB weights on v_{n+1}, v_n, ... (float64): the backward-difference series
    sum_k gamma_k nabla^k times (beta + (1 - beta) nabla)/beta, truncated after ``order`` terms."""
    if order not in (1, 2, 3, 4):
        raise ValueError(f"order must be 1, 2, 3 or 4; got {order!r}")
    if not 0 < beta <= 1:
        raise ValueError(f"beta must lie in (0, 1]; got {beta!r}")
    c = [(_GAMMA[k] * beta + (_GAMMA[k - 1] if k else 0.0) * (1 - beta)) / beta for k in range(order)]
    w = np.zeros(order)
    for k, ck in enumerate(c):  # nabla^k v_{n+1} = sum_i (-1)^i binom(k, i) v_{n+1-i}
        for i in range(k + 1):
            w[i] += ck * (-1) ** i * math.comb(k, i)
    return w


def ab_weights(order: int) -> np.ndarray:
    """Uniform-step Adams-Bashforth weights on f_n, f_{n-1}, ... (GHVB with beta = 1)."""
    return ghvb_weights(order, 1.0)


def _solve_moments(mom: np.ndarray) -> np.ndarray:
    """w with sum_i w_i mom[i, p] = 1/(p + 1), p < q; ``mom`` has shape (q, q, *batch)."""
    q = mom.shape[0]
    rhs = np.broadcast_to((1.0 / np.arange(1, q + 1)).reshape((q,) + (1,) * (mom.ndim - 2)), mom.shape[1:])
    A = np.moveaxis(mom, (0, 1), (-1, -2))  # (*batch, p, i)
    b = np.moveaxis(rhs, 0, -1)[..., None]
    return np.moveaxis(np.linalg.solve(A, b)[..., 0], -1, 0)


class MomentumPlan:
    """The float64 weights of a momentum run, built node by node (so that a time shift may move each node
    once its sample is known). Nodes ``s`` are sigmabar values, floats or per-sample arrays.

    ``kind`` "ghvb": :meth:`step` returns the weights on v_{n+1}, v_n, ... (newest first); "hb": the
    weights on f_n, f_{n-1}, ... of the inner Adams-Bashforth combination. ``fixed``: the paper's
    uniform-step weights (orders min(r, n + 1) while the history fills); otherwise moment-matched.
    """

    def __init__(self, kind: str, order: int, beta: float, fixed: bool):
        self.kind, self.order, self.beta, self.fixed = kind, order, beta, fixed
        self.s: list[np.ndarray] = []  # nodes sigmabar_0..n
        self.a: list[np.ndarray] = []  # v_{k+1} = sum_j a[k][j] f_j (ghvb), or nothing (hb)

    def add_node(self, s) -> None:
        """Register node n (the time of the model output f_n) and, for GHVB, v_{n+1}'s combination."""
        self.s.append(np.asarray(s, dtype=np.float64))
        if self.kind == "ghvb":
            n = len(self.s) - 1
            row = np.zeros(n + 1)
            if n == 0:
                row[0] = 1.0  # v_0 = f_0, so v_1 = f_0
            else:
                row[:n] = (1 - self.beta) * self.a[-1]
                row[n] += self.beta
            self.a.append(row)

    def step(self, s_next, q: int | None = None) -> np.ndarray:
        """Weights of the step from the newest node to ``s_next`` using q history terms (default
        min(order, nodes)); shape (q, *batch)."""
        n = len(self.s) - 1
        q = min(self.order, n + 1) if q is None else q
        if self.fixed:
            w = ghvb_weights(q, self.beta if self.kind == "ghvb" else 1.0)
            return w.reshape((q,) + (1,) * np.ndim(self.s[-1]))
        s_n = self.s[-1]
        delta = np.asarray(s_next, dtype=np.float64) - s_n
        if self.kind == "hb" or self.beta == 1.0:
            # variable-step Adams-Bashforth: weights on f_n, ..., f_{n-q+1}
            u = np.stack([(self.s[n - i] - s_n) / delta for i in range(q)])
            mom = np.stack([u**p for p in range(q)], 1)
            return _solve_moments(mom)
        # v's weights on f_j decay like (1 - beta)^(n - j): nodes past 1e-17 of relative weight are dropped
        L = n + 1
        j0 = max(0, L - q - math.ceil(math.log(1e-17) / math.log1p(-self.beta)))
        u = np.stack([(self.s[j] - s_n) / delta for j in range(j0, L)])  # (L - j0, *batch)
        powers = np.stack([u**p for p in range(q)], 0)  # (q_p, L - j0, *batch)
        A = np.stack([np.pad(self.a[n - i], (0, i))[j0:] for i in range(q)])  # rows of v_{n+1-i}
        mom = np.einsum("il,pl...->ip...", A, powers)
        return _solve_moments(mom)


def _sbar(prob: Problem, t: Tensor) -> Tensor:
    """sigmabar = sigma/alpha = e^{-lambda} (float64)."""
    pts = prob.points(t)
    return pts.sigma / pts.alpha


class _Momentum(Solver):
    """What heavy ball and GHVB share: the (sigmabar, xbar) loop, the starting values, a time shift."""

    kind: ClassVar[str] = ""

    def __call__(self, prob: Problem) -> Tensor:
        ts = getattr(self, "time_shift", None)
        grid = prob.grid(prob.steps)
        if ts is not None and ts.active:
            return momentum_with_shift(self, prob, grid, ts)
        return run_momentum(self, prob, grid)


def _rows(w: np.ndarray, x: Tensor) -> list:
    """Weights as Python floats (shared by the batch) or per-sample tensors shaped for x."""
    if w.ndim == 1:
        return [float(v) for v in w]
    return [
        torch.as_tensor(v, dtype=x.dtype, device=x.device).reshape((-1,) + (1,) * (x.dim() - 1)) for v in w
    ]


def _col(v, x: Tensor):
    v = np.asarray(v, dtype=np.float64)
    if v.ndim == 0:
        return float(v)
    return torch.as_tensor(v, dtype=x.dtype, device=x.device).reshape((-1,) + (1,) * (x.dim() - 1))


def run_momentum(solver: _Momentum, prob: Problem, grid: Tensor, shift=None) -> Tensor:
    """The momentum loop on ``grid`` (1-D, or (n + 1, B)). ``shift(i, x, t_nominal) -> t`` (per-sample
    float64 times, shape (B,)) relabels the state's time before step i (the time-shift sampler)."""
    ev = prob.evaluator("eps")
    sched = prob.schedule
    n_steps = grid.shape[0] - 1
    x = prob.x
    rk = getattr(solver, "start", "multistep") == "rk4"
    n_rk = min(solver.order - 1, n_steps) if rk else 0
    plan = MomentumPlan(solver.kind, solver.order, solver.beta, solver.coefficients == "fixed")
    hook = prob.step_hook(ev, grid)
    B = x.shape[0]

    def tvec(t: Tensor) -> Tensor:
        t = torch.as_tensor(t, dtype=torch.float64)
        return t if t.dim() == 1 else t.expand(B)

    def eps_at(xx: Tensor, t: Tensor) -> Tensor:
        return ev(xx, ev.plan(tvec(t)[None], xx)[0])

    def sb(t: Tensor) -> np.ndarray:
        return (sched.sigma(t) / sched.alpha(t)).numpy()

    def al(t: Tensor):
        return _col(sched.alpha(t).numpy(), x)

    v: list[Tensor] = []  # ghvb: v_{n+1}, v_n, ... newest first; hb: v_n
    f: list[Tensor] = []  # f_n, f_{n-1}, ... newest first (hb inner combination)
    for i in range(n_steps):
        t_i = grid[i] if shift is None else shift(i, x, grid[i])
        t_next = grid[i + 1]
        s_i, s_next = sb(t_i), sb(t_next)
        e = eps_at(x, t_i)
        plan.add_node(s_i)
        xbar = lincomb([(1.0 / al(t_i), x)])
        if solver.kind == "ghvb":
            v = [e if not v else lincomb([(1 - solver.beta, v[0]), (solver.beta, e)])] + v[: solver.order - 1]
        f = [e] + f[: solver.order - 1]
        delta = _col(s_next - s_i, x)
        if i < n_rk:  # GHVB's RK4 starting values (heavy ball has no start option)
            xbar = _rk4(eps_at, sched, xbar, e, t_i, t_next, s_i, s_next, delta, x)
        else:
            q = len(v) if solver.kind == "ghvb" else len(f)
            w = _rows(plan.step(s_next, q), x)
            if solver.kind == "ghvb":
                xbar = lincomb([(1.0, xbar)] + [(wi * delta, vi) for wi, vi in zip(w, v, strict=True)])
            else:
                comb = lincomb([(wi, fi) for wi, fi in zip(w, f, strict=True)])
                v = [comb if not v else lincomb([(1 - solver.beta, v[0]), (solver.beta, comb)])]
                xbar = lincomb([(1.0, xbar), (delta, v[0])])
        x = lincomb([(al(t_next), xbar)])
        if hook is not None:
            x = hook(i, x)
    return x


def _rk4(eps_at, sched, xbar, e0, t_s, t_t, s_s, s_t, delta, like) -> Tensor:
    """One classical RK4 step of dxbar/dsigmabar = eps in sigmabar (midpoint times by t_of_lambda)."""
    s_mid = (s_s + s_t) / 2
    t_mid = sched.t_of_lambda(torch.as_tensor(-np.log(s_mid), dtype=torch.float64))
    a_mid = _col(sched.alpha(t_mid).numpy(), like)
    a_t = _col(sched.alpha(torch.as_tensor(t_t, dtype=torch.float64)).numpy(), like)
    k1 = e0
    k2 = eps_at(lincomb([(a_mid, xbar), (a_mid * delta / 2, k1)]), t_mid)
    k3 = eps_at(lincomb([(a_mid, xbar), (a_mid * delta / 2, k2)]), t_mid)
    k4 = eps_at(lincomb([(a_t, xbar), (a_t * delta, k3)]), torch.as_tensor(t_t, dtype=torch.float64))
    return lincomb([(1.0, xbar), (delta / 6, k1), (delta / 3, k2), (delta / 3, k3), (delta / 6, k4)])


_FIXED_REASON = (
    "the paper's fixed uniform-step weights on the logSNR grid (geometric steps in sigmabar) and the "
    "momentum's start-up transient (1 - beta)^n each leave an O(h^2) global error: order min(r, 2)"
)
_START_REASON = (
    "not checked here: the official warm-up (orders 1, 2, ... while the history fills) makes the first "
    "step first order, whose O(h^2) local error caps the global order at 2 asymptotically, but on the "
    "diffusion ODE that error is small (the first step is at high noise) and the 20-320 step window "
    "shows pre-asymptotic slopes near r (2.6 for r = 3); start='rk4' keeps order r, tested in "
    "tests/solvers/test_momentum.py"
)


@register(
    "ghvb",
    "GHVB (momentum on Adams-Bashforth): momentum number m (order ceil(m), beta = frac(m)); "
    "NFE = steps (+ 3 (order - 1) with start='rk4')",
)
class GHVB(_Momentum):
    """Generalized heavy ball with variable order (Wizadwongsa et al. 2023, eqs. 16-19, Alg. 2): order r
    (Thm 2) for every beta in (0, 1]; beta = 1 is Adams-Bashforth of order r (PLMS for r = 4). Give either
    the momentum number ``m`` (order ceil(m), beta = m - floor(m)) or ``order`` and ``beta``."""

    kind: ClassVar[str] = "ghvb"
    conformance: ClassVar[tuple[dict, ...]] = ({"order": 2, "beta": 0.5, "start": "rk4"},)

    order: int = choice(4, (1, 2, 3, 4), "the order r = ceil(m)")
    beta: float = number(0.8, 0.0, 1.0, lo_open=True, doc="the momentum beta = frac(m) (1: plain AB)")
    m: float | None = number(
        None, 0.0, 4.0, lo_open=True, optional=True, doc="the momentum number (sets order and beta)"
    )
    coefficients: str = choice("variable", ("variable", "fixed"), "moment-matched (any grid) or the paper's")
    start: str = choice("multistep", ("multistep", "rk4"), "official warm-up (caps at order 2) or RK4 steps")
    time_shift: object = time_shift_option()

    def __post_init__(self) -> None:
        if self.m is not None and not isinstance(self.m, bool) and isinstance(self.m, (int, float)):
            if math.isfinite(self.m) and 0 < self.m <= 4:
                r, beta = split_momentum_number(self.m)
                if (self.order, self.beta) not in ((4, 0.8), (r, beta)):
                    raise ValueError(
                        f"solver 'ghvb': give either m or order/beta; m={self.m!r} means order={r}, "
                        f"beta={beta!r}, but order={self.order!r}, beta={self.beta!r} were given"
                    )
                object.__setattr__(self, "order", r)
                object.__setattr__(self, "beta", beta)
        super().__post_init__()

    def order_check(self) -> OrderCheck:
        if self.coefficients == "fixed" and self.order > 2:
            return OrderCheck(2.0, reason=_FIXED_REASON)
        if self.start == "multistep" and self.order > 2:
            return OrderCheck(None, reason=_START_REASON)
        if self.order > 2:
            return OrderCheck(
                float(self.order),
                steps=(80, 160, 320, 640),
                reason="pre-asymptotic below 80 steps on the logSNR grid (order 4: local slopes 2.9, 3.5, "
                "3.7, 3.9 from 20 to 320 steps)",
            )
        return OrderCheck(float(self.order))


@register(
    "plms-hb",
    "PLMS / Adams-Bashforth with Polyak's heavy ball (beta; first order for beta < 1); NFE = steps",
)
class PLMSHeavyBall(_Momentum):
    """Heavy ball on the Adams-Bashforth combination of order ``order`` (Wizadwongsa et al. 2023, eq. 14):
    first order for beta < 1 (Thm 1); beta = 1 is variable-step Adams-Bashforth with the official warm-up
    (order min(r, 2), see :class:`GHVB`)."""

    kind: ClassVar[str] = "hb"
    conformance: ClassVar[tuple[dict, ...]] = ({"order": 2, "beta": 1.0},)

    order: int = choice(4, (1, 2, 3, 4), "the Adams-Bashforth order of the inner combination")
    beta: float = number(0.8, 0.0, 1.0, lo_open=True, doc="the heavy-ball beta (1: plain AB)")
    coefficients: str = choice(
        "variable", ("variable", "fixed"), "variable-step AB weights or the uniform ones"
    )
    time_shift: object = time_shift_option()

    def order_check(self) -> OrderCheck:
        if self.beta < 1:
            return OrderCheck(1.0)
        if self.coefficients == "fixed" and self.order > 2:
            return OrderCheck(2.0, reason=_FIXED_REASON)
        if self.order > 2:
            return OrderCheck(None, reason=_START_REASON)
        return OrderCheck(float(self.order))


def boundary_locus(kind: str, order: int, beta: float, n: int = 2001) -> np.ndarray:
    """The boundary locus z(theta) of the absolute-stability region (paper App. D, eqs. 40-47) on the test
    equation xbar' = lambda xbar with z = delta lambda and the paper's uniform-step weights.

    With x_n = zeta^n, v_n = V zeta^n: GHVB gives V (zeta - 1 + beta) = beta lambda, hence
    z = (zeta - 1)(zeta - 1 + beta) / (beta sum_i w_i zeta^{1-i}); heavy ball (inner Adams-Bashforth b)
    gives z = (zeta - 1)(zeta - 1 + beta) / (beta zeta sum_i b_i zeta^{-i}). zeta = e^{i theta}."""
    if kind not in ("ghvb", "hb"):
        raise ValueError(f"kind must be 'ghvb' or 'hb'; got {kind!r}")
    zeta = np.exp(1j * np.linspace(0.0, 2 * np.pi, n))
    if kind == "ghvb":
        w = ghvb_weights(order, beta)
        den = beta * sum(wi * zeta ** (1 - i) for i, wi in enumerate(w))
    else:
        b = ab_weights(order)
        den = beta * zeta * sum(bi * zeta ** (-i) for i, bi in enumerate(b))
    return (zeta - 1) * (zeta - 1 + beta) / den


def real_stability_interval(kind: str, order: int, beta: float) -> float:
    """The left end of the real stability interval [-a, 0]: the locus's leftmost crossing of the real
    axis near 0 (the crossing closest to the origin)."""
    z = boundary_locus(kind, order, beta, 200001)
    re = z.real[(np.abs(z.imag) < 1e-9 * np.maximum(1, np.abs(z))) | _crossings(z)]
    neg = re[re < -1e-9]
    return float(neg.max()) if neg.size else -math.inf


def _crossings(z: np.ndarray) -> np.ndarray:
    s = np.sign(z.imag)
    out = np.zeros(z.shape, dtype=bool)
    out[:-1] = s[:-1] * s[1:] < 0
    return out
