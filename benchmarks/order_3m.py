"""Is DPM-Solver(++)(3M) as shipped third order? Measures the shipped ("legacy") and the exact 3M.

1. one step from exact history on a quadratic data prediction x0(lambda) (non-uniform grid): the
   exact 3M has zero error up to rounding, the shipped one does not;
2. fitted global orders (float64, logSNR grid, VP linear, t = 1 -> 1e-3, 20..640 steps) on a 2-D and a
   16-D Gaussian mixture with exact eps, against a DOP853 reference at rtol 1e-12.

    PYTHONPATH=src python benchmarks/order_3m.py
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.integrate import quad

import companion as cp
from companion.lab.experiments import fit_order as fitted_order
from companion.solvers import dpm_solver
from companion.solvers import multistep as ms
from companion.solvers.base import Points

SCHED = cp.schedules.VPLinear()


def one_step_quadratic(variant: str, pred: str) -> float:
    lam = torch.tensor([-4.0, -3.1, -2.5, -1.4, -0.9, 0.3, 0.8, 2.0], dtype=torch.float64)
    pts = Points.of(SCHED, SCHED.t_of_lambda(lam))
    orders = ms.step_orders(len(lam) - 1, 3, pts.lam)
    A, B = dpm_solver.dpm_coefs(pred, pts, orders, variant)
    k = -1 if pred == "x0" else 1

    def f(v):
        return 0.7 - 1.3 * v + 0.45 * v * v

    worst = 0.0
    for i in range(2, len(orders)):
        s, t = pts[i], pts[i + 1]
        h = float(t.lam - s.lam)
        integral = quad(
            lambda u, h=h, ls=float(s.lam): np.exp(k * (h - u)) * f(ls + u), 0, h, epsabs=1e-15, epsrel=1e-14
        )[0]
        c = float(t.alpha) if pred == "x0" else -float(t.sigma)
        exact = float(A[i]) * 0.37 + c * integral
        got = float(A[i]) * 0.37 + sum(float(B[i, j]) * f(float(lam[i - j])) for j in range(3))
        worst = max(worst, abs(got - exact))
    return worst


def main() -> None:
    print("one step on a quadratic prediction, max abs error over steps:")
    for pred, name in (("x0", "DPM-Solver++(3M)"), ("eps", "DPM-Solver(3M)")):
        for variant in ("midpoint", "legacy"):
            label = "exact " if variant == "midpoint" else "legacy"
            print(f"  {name:17s} {label}: {one_step_quadratic(variant, pred):.2e}")
    steps = (20, 40, 80, 160, 320, 640)
    print("global error (RMS) and fitted order over 20-320 steps; last column: local slope 320 -> 640")
    for key, spec in {"2-D": (2, 1.0, 0.2, 0.5), "16-D": (16, 0.5, 0.2, 0.6)}.items():
        gm = cp.targets.random_mixture(*spec)
        x = torch.randn(16, spec[0], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        model = gm.model(SCHED, "eps")
        ref = cp.reference.solve_pf_ode(model, x, SCHED, 1.0, 1e-3, rtol=1e-12, atol=1e-14)
        for solver, variant in (
            ("dpmsolver++", None),
            ("dpmsolver++", "legacy"),
            ("dpmsolver", None),
            ("dpmsolver", "legacy"),
            ("unipc", None),
        ):
            kw = dict(corrector=False) if solver == "unipc" else ({"variant": variant} if variant else {})
            errs = []
            for n in steps:
                out = cp.sample(
                    model,
                    x,
                    schedule=SCHED,
                    solver=solver,
                    order=3,
                    steps=n,
                    t_start=1.0,
                    t_end=1e-3,
                    lower_order_final=False,
                    **kw,
                )
                errs.append(((out - ref) ** 2).mean().sqrt().item())
            name = f"{solver}-3M {'legacy' if variant else ('UniP-3' if solver == 'unipc' else 'exact')}"
            local = np.log(errs[-2] / errs[-1]) / np.log(2)
            print(
                f"  {key:4s} {name:22s} errors {' '.join(f'{e:.1e}' for e in errs)}  "
                f"order {fitted_order(steps[:5], errs[:5]):.2f}  local {local:.2f}"
            )


if __name__ == "__main__":
    main()
