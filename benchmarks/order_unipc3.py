"""Where does UniPC-3 (UniP-3 + UniC-3, nominal order 4) reach its order? Float64, logSNR grid, VP linear,
t = 1 -> 1e-3, exact eps of the 2-D and 16-D test mixtures (tests/solvers/test_conformance.py), DOP853 reference
at rtol 1e-12. Prints

1. the RMS error at 20..640 steps and the local slopes between neighbours;
2. the slope fitted over 20-320 steps (the issue's window) and over 160-640;
3. the same fits when the first or the last step is split into 16 equal logSNR sub-steps: if the
   one-evaluation warm-up (order 2 locally) or the final predictor-only step limited the order, this would
   move the fit;
4. the 20-320 fit on six mixtures of each kind (seeds 0-5), for UniPC-3 in data prediction (the default,
   as in the official code and diffusers) and in noise prediction, next to the third-order multistep
   DPM-Solver(3M) and DPM-Solver++(3M): how far a fit over this window strays from the nominal order on
   mixtures of the same kind.

    PYTHONPATH=src python benchmarks/order_unipc3.py
"""

from __future__ import annotations

import numpy as np
import torch

import companion as cp
from companion.lab.experiments import fit_order as fitted_order

SCHED = cp.schedules.VPLinear()
MIXTURES = {"2d": (2, 1.0, 0.2, 0.5), "16d": (16, 0.5, 0.2, 0.6)}
STEPS = [20, 28, 40, 57, 80, 113, 160, 226, 320, 640]
WINDOW = (20, 40, 80, 160, 320)


def setup(name: str, seed: int = 0):
    d = MIXTURES[name][0]
    gm = cp.targets.random_mixture(*MIXTURES[name], seed=seed)
    x = torch.randn(16, d, dtype=torch.float64, generator=torch.Generator().manual_seed(1 + seed))
    model = gm.model(SCHED, "eps")
    return model, x, cp.reference.solve_pf_ode(model, x, SCHED, 1.0, 1e-3, rtol=1e-12, atol=1e-14)


def grid(n: int, split: str | None) -> torch.Tensor:
    """The logSNR grid with its first or last interval split into 16 equal logSNR sub-steps."""
    t = cp.grids.logsnr(SCHED, 1.0, 1e-3, n)
    if split is None:
        return t
    lam = SCHED.lambda_(t)
    a, b = (0, 1) if split == "first" else (-2, -1)
    fine = torch.linspace(float(lam[a]), float(lam[b]), 17, dtype=torch.float64)
    lam = torch.cat([fine, lam[2:]]) if split == "first" else torch.cat([lam[:-2], fine])
    out = SCHED.t_of_lambda(lam)
    out[0], out[-1] = 1.0, 1e-3
    return out


UNIPC3 = dict(solver="unipc", order=3)
ACROSS = {
    "UniPC-3, data prediction (nominal 4)": UNIPC3,
    "UniPC-3, noise prediction (nominal 4)": dict(UNIPC3, pred="eps"),
    "DPM-Solver(3M), noise (nominal 3)": dict(solver="dpmsolver", order=3),
    "DPM-Solver++(3M), data (nominal 3)": dict(solver="dpmsolver++", order=3),
}


def errors(problem, steps, split=None, solver=UNIPC3) -> list[float]:
    model, x, ref = problem
    out = []
    for n in steps:
        y = cp.sample(model, x, schedule=SCHED, timesteps=grid(n, split), lower_order_final=False, **solver)
        out.append(((y - ref) ** 2).mean().sqrt().item())
    return out


def main() -> None:
    for name in MIXTURES:
        prob = setup(name)
        e = errors(prob, STEPS)
        local = [np.log(e[i] / e[i + 1]) / np.log(STEPS[i + 1] / STEPS[i]) for i in range(len(e) - 1)]
        print(f"{name} steps  " + " ".join(f"{n:8d}" for n in STEPS))
        print(f"{name} error  " + " ".join(f"{v:8.2e}" for v in e))
        print(f"{name} local slope      " + " ".join(f"{v:8.2f}" for v in local))
        win = [e[STEPS.index(n)] for n in WINDOW]
        tail = [e[STEPS.index(n)] for n in (160, 320, 640)]
        print(
            f"{name} fit 20-320 {fitted_order(WINDOW, win):.2f}  fit 160-640 {fitted_order((160, 320, 640), tail):.2f}"
        )
        for split in ("first", "last"):
            print(
                f"{name} fit 20-320, {split} step split 16x: {fitted_order(WINDOW, errors(prob, WINDOW, split)):.2f}"
            )
        probs = [prob] + [setup(name, s) for s in range(1, 6)]
        for label, solver in ACROSS.items():
            fits = [fitted_order(WINDOW, errors(p, WINDOW, solver=solver)) for p in probs]
            print(
                f"{name} fit 20-320, seeds 0-5, {label:38s}: "
                + " ".join(f"{v:.2f}" for v in fits)
                + f"  (range {min(fits):.2f}-{max(fits):.2f})"
            )


if __name__ == "__main__":
    main()
