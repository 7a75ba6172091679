"""What every solver shares: schedule quantities on a grid, phi functions, the model evaluator, and the
fused linear combinations a step is made of.

Conventions (Lu et al. 2022, 2022b). lambda = log(alpha/sigma) increases along a sampling run, h > 0 is a
step in lambda. A solver integrates either the data prediction x0 ("++", ``pred="x0"``) or the noise
prediction eps (``pred="eps"``); their exact solutions from s to t are

    x0:   x_t = (sigma_t/sigma_s) x_s + alpha_t int_0^h e^{-(h - u)} x0(lambda_s + u) du,
    eps:  x_t = (alpha_t/alpha_s) x_s - sigma_t int_0^h e^{+(h - u)} eps(lambda_s + u) du,

i.e. x_t = a x_s + c_t int_0^h e^{k (h - u)} m(u) du with kernel sign k = -1 (x0) or +1 (eps). The
Taylor moments  int_0^h e^{k(h-u)} u^n/n! du = h^{n+1} phi_{n+1}(k h)  use phi_1(z) = (e^z - 1)/z,
phi_{n+1}(z) = (phi_n(z) - 1/n!)/z, and ``E(n, h, k) = h phi_n(k h)`` below (E(1) = k expm1(k h)).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .. import parameterization as P
from .._device import host_to
from ..schedules import Schedule

__all__ = ["Points", "phi", "E", "Evaluator", "lincomb", "can_update", "rows", "kernel", "lagrange_weights"]

Coef = float | Tensor


@dataclass(frozen=True)
class Points:
    """Schedule quantities (float64, CPU) at times ``t`` of any shape."""

    t: Tensor
    alpha: Tensor
    sigma: Tensor
    lam: Tensor

    @classmethod
    def of(cls, schedule: Schedule, t: Tensor) -> Points:
        t = torch.as_tensor(t, dtype=torch.float64)
        return cls(t, schedule.alpha(t), schedule.sigma(t), schedule.lambda_(t))

    def __getitem__(self, i) -> Points:
        return Points(self.t[i], self.alpha[i], self.sigma[i], self.lam[i])


def phi(n: int, z: Tensor) -> Tensor:
    """phi_n(z) = sum_k z^k/(k + n)!: the series for |z| < 1 (the recursion cancels there), else recursion.

    Evaluated in numpy float64: these are a few scalars per step, where torch's per-op overhead dominates.
    """
    zz = torch.as_tensor(z, dtype=torch.float64).detach().cpu().numpy()
    small = np.abs(zz) < 1.0
    zs = np.where(small, zz, 0.0)
    series = np.zeros_like(zz)
    for k in range(18, -1, -1):  # Horner; the next term is below 1e-17 for |z| < 1
        series = series * zs + 1.0 / math.factorial(k + n)
    zl = np.where(small, 1.0, zz)
    with np.errstate(over="ignore", invalid="ignore"):
        rec = np.expm1(zl) / zl
        for m in range(1, n):
            rec = (rec - 1.0 / math.factorial(m)) / zl
    return torch.from_numpy(np.where(small, series, rec))


def E(n: int, h: Tensor, k: int) -> Tensor:
    """h phi_n(k h): the weight of the (n-1)-th Taylor term over a step h with kernel sign k."""
    if n == 1:
        return k * torch.expm1(k * h)
    return h * phi(n, k * h)


def kernel(pred: str) -> int:
    return -1 if pred == "x0" else 1


def base_coefs(pred: str, s: Points, t: Points) -> tuple[Tensor, Tensor]:
    """(a, c) of x_t = a x_s + c * sum_j w_j m_j: a = sigma_t/sigma_s, c = alpha_t (x0) or
    a = alpha_t/alpha_s, c = -sigma_t (eps)."""
    if pred == "x0":
        return t.sigma / s.sigma, t.alpha
    return t.alpha / s.alpha, -t.sigma


def first_order(pred: str, s: Points, t: Points) -> tuple[Tensor, Tensor]:
    """(a, b) of DDIM / DPM-Solver-1, x_t = a x_s + b m_s (Lu et al. 2022 eq. 3.7; 2022b eq. 5),
    finite also when t is clean data (sigma_t = 0, h = inf)."""
    h = t.lam - s.lam
    if pred == "x0":
        return t.sigma / s.sigma, -t.alpha * torch.expm1(-h)
    # sigma_t (e^h - 1) = alpha_t e^{-lambda_s} - sigma_t, the form that stays finite as h -> inf.
    b = torch.where(torch.isfinite(h), t.sigma * torch.expm1(h), t.alpha * torch.exp(-s.lam) - t.sigma)
    return t.alpha / s.alpha, -b


def lagrange_weights(r: Sequence[Tensor], h: Tensor, k: int) -> list[Tensor]:
    """w_j = int_0^h e^{k(h-u)} L_j(u) du for the Lagrange basis on nodes u_j = r_j h (r_0 = 0).

    Exact for every polynomial of degree < len(r): the moments of (u/h)^p give sum_j w_j r_j^p = p! E(p + 1),
    a Vandermonde system in the scaled nodes r_j = O(1).
    """
    n = len(r)
    rr = torch.stack(torch.broadcast_tensors(*[torch.as_tensor(x, dtype=torch.float64) for x in r]), -1)
    V = torch.stack([rr**p for p in range(n)], -2)  # V[..., p, j] = r_j^p
    mom = torch.stack([math.factorial(p) * E(p + 1, h, k) for p in range(n)], -1)  # h^{-p} int e^{..} u^p du
    mom = mom.expand(rr.shape)
    w = torch.linalg.solve(V, mom.unsqueeze(-1)).squeeze(-1)
    return list(w.unbind(-1))


def rows(c: Tensor, x: Tensor) -> list[Coef]:
    """Per-step coefficients ready for the loop: Python floats when they are scalars (no device traffic,
    fused ``alpha=`` kernels), otherwise tensors on x's device shaped to broadcast against x."""
    c = torch.as_tensor(c, dtype=torch.float64)
    if c.dim() <= 1:
        return c.reshape(-1).tolist()
    out = host_to(c, x.device, x.dtype).reshape(c.shape + (1,) * (x.dim() - 1))
    return list(out.unbind(0))


def can_update(x: Tensor, others: Sequence[Tensor]) -> bool:
    """Whether ``x`` may be overwritten by a step that also reads ``others``: no autograd graph is involved
    and no other operand shares its memory (a model may return its input, or a view of it)."""
    if x.requires_grad or any(v.requires_grad for v in others):
        return False
    ptr = x.untyped_storage().data_ptr()
    return all(v.untyped_storage().data_ptr() != ptr for v in others)


def lincomb(terms: Sequence[tuple[Coef, Tensor]], inplace: bool = False) -> Tensor:
    """sum_k c_k T_k, one fused kernel per term; zero float terms are skipped. A fresh tensor, or with
    ``inplace`` the first term's tensor updated in place (the caller owns it, see :func:`can_update`):
    an in-place update skips an allocation and keeps one operand fewer in cache, about a third faster
    on a memory-bound step (benchmarks/solver_overhead.py)."""
    dtype = functools.reduce(torch.promote_types, [v.dtype for _, v in terms])
    first = terms[0][1]
    kept = [(c, v) for c, v in terms if not (isinstance(c, float) and c == 0.0)]
    if not kept:
        return torch.zeros_like(terms[0][1], dtype=dtype)
    if inplace and (kept[0][1] is not first or first.dtype != dtype):
        inplace = False  # the first term vanished or is promoted: nothing to update in place
    terms = kept
    (c0, v0), rest = terms[0], terms[1:]
    if inplace:
        out = v0 if isinstance(c0, float) and c0 == 1.0 else v0.mul_(c0)
    else:
        v0 = v0 if v0.dtype == dtype else v0.to(dtype)  # a low-precision model output never sets the dtype
        out = v0 * c0 if not (isinstance(c0, float) and c0 == 1.0) else v0.clone()
    for c, v in rest:
        if isinstance(c, float):
            out.add_(v, alpha=c)
        else:
            out.addcmul_(v, c)
    return out


class Evaluator:
    """Calls ``model(x, t)`` and returns the prediction ``target`` ("x0" or "eps") a solver integrates.

    Times reach the model as a tensor of shape (B,). The output shape is checked once, on the first call.
    ``x0_fn`` (e.g. dynamic thresholding) is applied to the data prediction before any conversion.
    With ``keep_denoised`` the data prediction of the latest call is kept in :attr:`denoised` (for the
    sampling callback; one extra linear combination per call).
    """

    def __init__(
        self,
        model: Callable[[Tensor, Tensor], Tensor],
        schedule: Schedule,
        prediction: str,
        target: str,
        x: Tensor,
        x0_fn: Callable[[Tensor], Tensor] | None = None,
        keep_denoised: bool = False,
    ):
        self.model, self.schedule = model, schedule
        self.prediction, self.target = P.canonical(prediction), target
        self.x0_fn = x0_fn
        self.batch, self.device, self.dtype = x.shape[0], x.device, x.dtype
        self.t_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        self.calls = 0
        self._checked = False
        self.keep_denoised = keep_denoised
        self.denoised: Tensor | None = None

    def plan(self, t: Tensor, x: Tensor) -> list:
        """Everything the loop needs at times ``t`` (shape (M,) or (M, B)), computed once before it."""
        t = torch.as_tensor(t, dtype=torch.float64)
        s = self.schedule
        alpha, sigma = s.alpha(t), s.sigma(t)
        d_alpha, d_sigma = alpha * s.d_log_alpha(t), sigma * s.d_log_sigma(t)
        mid = "x0" if self.x0_fn is not None else self.target
        cx, co = P.coefficients(self.prediction, mid, alpha, sigma, d_alpha, d_sigma)
        if mid != self.target:
            bx, bo = P.coefficients("x0", self.target, alpha, sigma)
        else:
            bx, bo = torch.zeros_like(cx), torch.ones_like(cx)
        tm = host_to(t if t.dim() == 2 else t[:, None].expand(-1, self.batch), self.device, self.t_dtype)
        cols = [tm.unbind(0), rows(cx, x), rows(co, x), rows(bx, x), rows(bo, x)]
        if self.keep_denoised:
            dx, do = P.coefficients(self.prediction, "x0", alpha, sigma, d_alpha, d_sigma)
            cols += [rows(dx, x), rows(do, x)]
        return list(zip(*cols, strict=True))

    def linear(self, x: Tensor, point) -> tuple[Tensor, Coef, Coef]:
        """Call the model and return (out, cx, co) with the prediction m = cx x + co out (float64 rows as
        Python floats, or per-sample tensors); with ``x0_fn`` the corrected m itself, as (m, 0, 1)."""
        t, cx, co, bx, bo = point[:5]
        out = self.model(x, t)
        self.calls += 1
        if not self._checked:
            if not isinstance(out, Tensor) or out.shape != x.shape:
                got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise ValueError(f"model output must have the shape of x {tuple(x.shape)}; got {got}")
            self._checked = True
        if self.x0_fn is None:
            if self.keep_denoised:
                self.denoised = (
                    out.to(x.dtype) if self.prediction == "x0" else lincomb([(point[6], out), (point[5], x)])
                )
            return out, cx, co
        m = out if self.prediction == "x0" else lincomb([(co, out.to(x.dtype)), (cx, x)])
        m = self.x0_fn(m)
        if self.keep_denoised:
            self.denoised = m
        if self.target != "x0":
            m = lincomb([(bo, m), (bx, x)])
        return m, 0.0, 1.0

    def scaled(self, x: Tensor, point) -> tuple[Tensor, Coef]:
        """The prediction as a pair (u, c) with m = c u, in one pass over memory: u = out + (cx/co) x and
        c = co, so that a solver folds c into its own coefficients and touches u once."""
        out, cx, co = self.linear(x, point)
        if isinstance(cx, float) and cx == 0.0:
            return (out if out.dtype == x.dtype else out.to(x.dtype)), co
        if isinstance(co, float) and co != 0.0:
            return torch.add(out, x, alpha=cx / co), co  # out may be fp16/bf16: the sum has x's dtype
        return lincomb([(cx, x), (co, out)]), 1.0

    def scaled_into(self, x: Tensor, point, buf: Tensor | None) -> tuple[Tensor, Coef, bool]:
        """:meth:`scaled`, writing u into ``buf`` (a tensor like x that nobody else holds) when u is a new
        tensor; returns (u, c, fresh), ``fresh`` when u is a tensor of ours (``buf`` or a new one) that the
        caller may reuse once it is done with it, rather than the model's own output."""
        out, cx, co = self.linear(x, point)
        if isinstance(cx, float) and cx == 0.0:
            if out.dtype == x.dtype:
                return out, co, False
            return out.to(x.dtype), co, True
        if isinstance(co, float) and co != 0.0:
            if buf is not None and not (out.requires_grad or x.requires_grad) and buf.shape == x.shape:
                return torch.add(out, x, alpha=cx / co, out=buf), co, True
            return torch.add(out, x, alpha=cx / co), co, True
        return lincomb([(cx, x), (co, out)]), 1.0, True

    def __call__(self, x: Tensor, point) -> Tensor:
        """The prediction m at (x, t) as a tensor."""
        u, c = self.scaled(x, point)
        return u if isinstance(c, float) and c == 1.0 else u * c
