"""DPM-Solver (noise prediction, Lu et al. 2022) and DPM-Solver++ (data prediction, Lu et al. 2022b):
multistep (this module), singlestep (:mod:`.singlestep`) and adaptive (:mod:`.adaptive`).

The multistep third-order step. Expanding m around lambda_i and integrating (see :mod:`.base`) gives
    x_{i+1} = a x_i + c [E1 m_i + E2 D1 + 2 E3 D2],  D1 ~ h m',  D2 = h^2 m[i, i-1, i-2] ~ h^2 m''/2,
with E_n = h phi_n(k h). The official DPM-Solver, diffusers and k-diffusion ship E3 D2 (without the 2),
a local error O(h^3) and so a global order 2; ``variant="legacy"`` keeps that formula for parity.
The default is the exact Lagrange weights, which integrate a degree-2 m(lambda) exactly.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from . import multistep as ms
from .base import E, Points, lagrange_weights
from .problem import Problem
from .registry import OrderCheck, Solver, choice, number, register
from .unipc import unic_coefs

__all__ = ["DPMSolver", "DPMSolverPP", "dpm_weights", "dpm_coefs", "METHODS"]

#: ``multistep`` (1 NFE per step), ``singlestep`` (``steps`` = NFE, split as the official code),
#: ``singlestep_fixed`` (outer steps of the same order, the remainder as one lower-order step), ``adaptive``.
METHODS = ("multistep", "singlestep", "singlestep_fixed", "adaptive")


def dpm_weights(r: list[Tensor], h: Tensor, k: int, variant: str) -> list[Tensor]:
    """Weights w_j of a multistep DPM-Solver(++) step x_{i+1} = a x_i + c sum_j w_j m_{i-j}, with scaled
    nodes r_j = (lambda_{i-j} - lambda_i)/h, kernel sign k (-1 data, +1 noise prediction)."""
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
    return ms.coefs(pred, pts, orders, lambda h, r, k, ix: dpm_weights(r, h, k, variant))


class DPMSolver(Solver):
    """DPM-Solver in noise prediction (Lu et al. 2022); :class:`DPMSolverPP` is the data-prediction form.

    ``method="multistep"`` (1 NFE per step): order 2 ``midpoint`` (2M, Lu et al. 2022b Alg. 2) or ``heun``
    (the exact Lagrange weights, diffusers' "heun" / the official "taylor"); order 3 is the exact 3M
    (order 3) unless ``variant="legacy"`` (the shipped formula, order 2; see the module docstring).
    ``corrector="bh1"|"bh2"`` adds a UniC corrector after every step but the last (no extra NFE; order + 1).
    ``singlestep``/``singlestep_fixed``: :mod:`.singlestep` (``steps`` counts NFE); ``adaptive``:
    DPM-Solver-12/23 (:mod:`.adaptive`) with tolerances ``atol``/``rtol`` (defaults 0.0078 and 0.05).
    """

    pred: ClassVar[str] = "eps"

    order: int = choice(2, (1, 2, 3), "the order of the update (warm-up and final steps may be lower)")
    method: str = choice("multistep", METHODS, "how model evaluations are spent")
    variant: str = choice(
        "midpoint",
        ("midpoint", "heun", "legacy"),
        "midpoint (the papers' algorithms), heun (exact Lagrange "
        "weights) or legacy (the shipped 3M, order 3 multistep only)",
    )
    corrector: str | None = choice(None, (None, "bh1", "bh2"), "a UniC corrector after each multistep step")
    atol: float | None = number(None, 0.0, lo_open=True, optional=True, doc="adaptive: absolute tolerance")
    rtol: float | None = number(None, 0.0, lo_open=True, optional=True, doc="adaptive: relative tolerance")

    def validate(self) -> None:
        if self.variant == "legacy" and (self.order != 3 or self.method != "multistep"):
            self.fail(
                "variant 'legacy' is the shipped third-order multistep update: it needs order=3 and "
                f"method='multistep'; got order={self.order}, method={self.method!r}"
            )
        if self.corrector is not None and self.method != "multistep":
            self.fail(f"corrector={self.corrector!r} needs method='multistep'; got method={self.method!r}")
        if self.method == "adaptive":
            if self.order == 1:
                self.fail("method 'adaptive' is DPM-Solver-12 or -23: order must be 2 or 3; got order=1")
            if self.variant != "midpoint":
                self.fail(f"method 'adaptive' uses the midpoint stages; got variant={self.variant!r}")
        elif self.atol is not None or self.rtol is not None:
            self.fail(f"atol and rtol apply to method 'adaptive' only; got method={self.method!r}")

    @property
    def invertible(self) -> bool:
        return self.method != "adaptive"

    def order_check(self) -> OrderCheck:
        if self.method == "adaptive":
            return OrderCheck(
                None,
                reason="the adaptive method picks its own steps from atol/rtol; that its "
                "error falls with the tolerance is tested in tests/solvers/test_misc.py",
            )
        if self.variant == "legacy":
            return OrderCheck(2.0, reason="the shipped 3M: E3 where the expansion needs 2 E3 (order 2)")
        nominal = float(self.order + (self.corrector is not None))
        if self.method.startswith("singlestep") and self.order == 3 and self.pred == "x0":
            return OrderCheck(
                nominal,
                steps=(80, 161, 320, 641, 1280),
                reason="data prediction is "
                "pre-asymptotic below ~300 NFE (2-D local slopes 2.34, 2.60, 2.71, 2.86 from 20 "
                "to 320 NFE, fit 2.63 over 20-320, 2.87 over 80-1280; NFE = 2 mod 3, the "
                "official split [3, ..., 3, 2])",
            )
        if self.corrector is not None and self.order == 3 and self.pred == "x0":
            return OrderCheck(
                nominal,
                steps=(160, 320, 640),
                reason="UniC-corrected 3M in data prediction is "
                "pre-asymptotic over 20-320 steps (16-D fit 3.66, local slopes 3.22-3.98), as "
                "UniPC-3 (docs/findings/unipc3_order.md)",
            )
        return OrderCheck(nominal)

    def __call__(self, prob: Problem) -> Tensor:
        if self.method == "multistep":
            bh = self.corrector
            corr = None if bh is None else (lambda pts, o: unic_coefs(self.pred, pts, o, bh))
            return ms.solve(
                prob,
                self.pred,
                self.order,
                lambda pts, o: dpm_coefs(self.pred, pts, o, self.variant),
                corr,
                key=self,
            )
        if self.method in ("singlestep", "singlestep_fixed"):
            from .singlestep import run_singlestep

            return run_singlestep(prob, self.pred, self.order, self.method, self.variant)
        from .adaptive import run_adaptive

        atol = 0.0078 if self.atol is None else self.atol
        rtol = 0.05 if self.rtol is None else self.rtol
        return run_adaptive(prob, self.pred, self.order, atol, rtol)


register("dpmsolver", "DPM-Solver, noise prediction: multistep, singlestep(_fixed), adaptive")(DPMSolver)


@register("dpmsolver++", "DPM-Solver++, data prediction: multistep, singlestep(_fixed), adaptive")
class DPMSolverPP(DPMSolver):
    """DPM-Solver++ (Lu et al. 2022b): :class:`DPMSolver` in data prediction."""

    pred: ClassVar[str] = "x0"
