"""Linear multistep exponential integrators: DDIM, DPM-Solver(++) 1-3M, DEIS (log-rho tAB), UniPC.

Each step is  x_{i+1} = a_i x_i + sum_j b_ij m_{i-j} (+ s_i z for DDIM with eta > 0), where m are the
model's predictions (x0 or eps) at the previous grid points. All a, b are computed here in float64 before
the loop; the loop in :func:`run` only forms linear combinations.

The third-order step. Expanding m around lambda_i and integrating (see base.py) gives
    x_{i+1} = a x_i + c [E1 m_i + E2 D1 + 2 E3 D2],  D1 ~ h m',  D2 = h^2 m[i, i-1, i-2] ~ h^2 m''/2,
with E_n = h phi_n(k h). The official DPM-Solver, diffusers and k-diffusion ship E3 D2 (without the 2),
a local error O(h^3) and so a global order 2; ``variant="legacy"`` keeps that formula for parity.
The default is the exact Lagrange weights, which integrate a degree-2 m(lambda) exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from .base import E, Evaluator, Points, base_coefs, first_order, kernel, lagrange_weights, lincomb, phi, rows

__all__ = [
    "step_orders",
    "dpm_coefs",
    "unip_coefs",
    "unic_coefs",
    "deis_tab_coefs",
    "ddim_noise_coefs",
    "run",
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


def _nodes(pts: Points, i: Tensor, p: int) -> tuple[Tensor, list[Tensor]]:
    """h of steps i (an index tensor) and their scaled nodes r_j = (lambda_{i-j} - lambda_i)/h, j < p."""
    h = pts.lam[i + 1] - pts.lam[i]
    return h, [(pts.lam[i - j] - pts.lam[i]) / h for j in range(p)]


def _by_order(orders: list[int], last: bool = True) -> dict[int, Tensor]:
    """Step indices grouped by order, so that each group's coefficients are computed at once."""
    groups: dict[int, list[int]] = {}
    for i, p in enumerate(orders if last else orders[:-1]):
        groups.setdefault(p, []).append(i)
    return {p: torch.tensor(ix) for p, ix in groups.items()}


def _alloc(pts: Points, n: int, K: int) -> tuple[Tensor, Tensor]:
    shape = tuple(pts.lam.shape[1:])
    return torch.zeros((n,) + shape, dtype=torch.float64), torch.zeros((n, K) + shape, dtype=torch.float64)


def _coefs(pred: str, pts: Points, orders: list[int], weights) -> tuple[Tensor, Tensor]:
    """A (N, ...) and B (N, K, ...) of x_{i+1} = A_i x_i + sum_j B_ij m_{i-j}. First-order steps are
    DPM-Solver-1; a step of order p is a x_i + c sum_j w_j m_{i-j} with w = weights(h, r, k, i)."""
    A, B = _alloc(pts, len(orders), max(orders))
    k = kernel(pred)
    for p, ix in _by_order(orders).items():
        s, t = pts[ix], pts[ix + 1]
        if p == 1:
            A[ix], B[ix, 0] = first_order(pred, s, t)
            continue
        h, r = _nodes(pts, ix, p)
        A[ix], c = base_coefs(pred, s, t)
        for j, w in enumerate(weights(h, r, k, ix)):
            B[ix, j] = c * w
    return A, B


def dpm_weights(r: list[Tensor], h: Tensor, k: int, variant: str) -> list[Tensor]:
    """Weights w_j (x_{i+1} = a x_i + c sum_j w_j m_{i-j}) of a multistep DPM-Solver(++) step."""
    p = len(r)
    if p == 2 and variant in ("midpoint", "legacy"):
        # DPM-Solver++(2M), Lu et al. 2022b Alg. 2: D = m_i + (m_i - m_{i-1}) / (2 r).
        e1 = E(1, h, k)
        return [e1 * (1 + 0.5 / -r[1]), e1 * (0.5 / r[1])]
    w = lagrange_weights(r, h, k)
    if p == 3 and variant == "legacy":
        # The shipped 3M puts E3 where the expansion has 2 E3 on D2 = (D1_0 - D1_1)/(r0 + r1):
        # subtract E3 D2 written on (m_i, m_{i-1}, m_{i-2}).
        r0, r1 = -r[1], r[1] - r[2]  # h_{i}/h and h_{i-1}/h as positive ratios
        d2 = [1 / (r0 * (r0 + r1)), -(1 / r0 + 1 / r1) / (r0 + r1), 1 / (r1 * (r0 + r1))]
        e3 = E(3, h, k)
        w = [wj - e3 * dj for wj, dj in zip(w, d2, strict=True)]
    return w


def dpm_coefs(pred: str, pts: Points, orders: list[int], variant: str) -> tuple[Tensor, Tensor]:
    """A (N, ...) and B (N, K, ...) of a DPM-Solver(++) multistep run on the grid ``pts``."""
    return _coefs(pred, pts, orders, lambda h, r, k, ix: dpm_weights(r, h, k, variant))


def _unipc_rhs(p: int, hh: Tensor, bh: str) -> tuple[Tensor, Tensor]:
    """B(h) and b_n = n! hh phi_{n+1}(hh) / B(h), n = 1..p (Zhao et al. 2023, eq. 8 / Alg. 1)."""
    B_h = hh if bh == "bh1" else torch.expm1(hh)
    b = [math.factorial(n) * hh * phi(n + 1, hh) / B_h for n in range(1, p + 1)]
    return B_h, torch.stack(b, -1)


def _unipc_rho(r: list[Tensor], b: Tensor, simple: float | None) -> Tensor:
    """Solve R rho = b with R[n, j] = r_j^n (or the paper's rho = 1/2 for the 2-point case)."""
    if simple is not None:
        return torch.full(b.shape[:-1] + (1,), simple, dtype=torch.float64)
    rr = torch.stack(torch.broadcast_tensors(*r), -1)
    R = torch.stack([rr**n for n in range(len(r))], -2)
    return torch.linalg.solve(R, b[..., : len(r)].unsqueeze(-1)).squeeze(-1)


def unipc_weights(r: list[Tensor], h: Tensor, k: int, bh: str, corrector: bool) -> list[Tensor]:
    """UniP (predictor) or UniC (corrector) weights on m_i, m_{i-1}, ..., [m_{i+1}] (Zhao et al. 2023).

    x = a x_i + c [E1 m_i + k B(h) sum_j rho_j (m_j - m_i)/r_j], nodes r_j (j >= 1) and, for UniC, r = 1
    at the new point; hh = k h, B(h) = hh (bh1) or expm1(hh) (bh2); k = -1 data, +1 noise prediction.
    """
    hh = k * h
    p = len(r)
    e1 = E(1, h, k)
    rs = r[1:] + ([torch.ones_like(h)] if corrector else [])
    if not rs:
        return [e1]
    B_h, b = _unipc_rhs(len(rs), hh, bh)
    if corrector:
        rho = _unipc_rho(rs, b, 0.5 if p == 1 else None)
    else:
        rho = _unipc_rho(rs, b, 0.5 if p == 2 else None)
    w_rest = [k * B_h * rho[..., j] / rs[j] for j in range(len(rs))]
    return [e1 - sum(w_rest)] + w_rest


def unip_coefs(pred: str, pts: Points, orders: list[int], bh: str) -> tuple[Tensor, Tensor]:
    """Predictor (A, B) of UniPC (UniP-p with B(h) = ``bh``)."""
    return _coefs(pred, pts, orders, lambda h, r, k, ix: unipc_weights(r, h, k, bh, corrector=False))


def unic_coefs(pred: str, pts: Points, orders: list[int], bh: str) -> tuple[Tensor, Tensor]:
    """UniC corrector after any multistep predictor: Bc[i, :p] weighs m_i..m_{i-p+1} and Bc[i, K] the new
    evaluation m_{i+1}; it re-solves step i from x_i (p = that step's order, as in diffusers)."""
    K = max(orders)
    Ac, Bc = _alloc(pts, len(orders), K + 1)
    k = kernel(pred)
    for p, ix in _by_order(orders, last=False).items():  # no evaluation follows the last step
        h, r = _nodes(pts, ix, p)
        Ac[ix], c = base_coefs(pred, pts[ix], pts[ix + 1])
        wc = unipc_weights(r, h, k, bh, corrector=True)
        for j, w in enumerate(wc[:-1]):
            Bc[ix, j] = c * w
        Bc[ix, K] = c * wc[-1]
    return Ac, Bc


def deis_tab_coefs(pts: Points, orders: list[int], t_of_lambda, quad: int = 64) -> tuple[Tensor, Tensor]:
    """DEIS tAB (Zhang & Chen 2023, eq. 14) in noise prediction: eps is extrapolated by the Lagrange
    polynomial in t through the last p points and the exponential integral is done exactly up to
    float64 Gauss-Legendre quadrature in lambda (``quad`` nodes per step) instead of a Riemann sum."""
    xi, om = (torch.as_tensor(v, dtype=torch.float64) for v in np.polynomial.legendre.leggauss(quad))

    def weights(h, r, k, ix):
        shape = (-1,) + (1,) * h.dim()
        u = (h * (1 + xi.reshape(shape))) / 2  # nodes in lambda - lambda_s, shape (quad, ...)
        tq = t_of_lambda(pts.lam[ix] + u)
        kern = om.reshape(shape) * h / 2 * torch.exp(h - u)
        tn = [pts.t[ix - j] for j in range(len(r))]
        out = []
        for j in range(len(r)):
            L = torch.ones_like(tq)
            for m in range(len(r)):
                if m != j:
                    L = L * (tq - tn[m]) / (tn[j] - tn[m])
            out.append((kern * L).sum(0))
        return out

    return _coefs("eps", pts, orders, weights)


def ddim_noise_coefs(pts: Points, eta: float) -> tuple[Tensor, Tensor, Tensor]:
    """DDIM (Song et al. 2021a, eq. 12 and 16) in data prediction: x_t = a x_s + b x0 + s z with
    s = eta sigma_t sqrt(1 - e^{-2h}) (the posterior std times eta), a = sqrt(sigma_t^2 - s^2)/sigma_s,
    b = alpha_t - a alpha_s. eta = 0 is DPM-Solver++(1); eta = 1 is ancestral sampling."""
    s, t = pts[:-1], pts[1:]
    h = t.lam - s.lam
    std = eta * t.sigma * torch.sqrt(-torch.expm1(-2 * h))
    a = torch.sqrt(torch.clamp(t.sigma**2 - std**2, min=0.0)) / s.sigma
    return a, t.alpha - a * s.alpha, std


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
    callback=None,
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
            if callback is not None:
                callback(i, x)
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
        if callback is not None:
            callback(i, x)
    return x
