"""Fitted convergence orders in float64 on a 2-D and a 16-D Gaussian mixture with exact eps.

logSNR grid from t = 1 to 1e-3 (VP linear), 20 to 320 steps, against a DOP853 reference at rtol 1e-12;
the error is the RMS over a batch of 16. The slope must lie within 0.3 of the nominal order.
"""

from __future__ import annotations

import sys

import pytest
import torch
from helpers import fitted_order, reference

import companion as cp

SCHED = cp.schedules.VPLinear()
STEPS = (20, 40, 80, 160, 320)
STEPS_3S = (20, 41, 80, 161, 320)  # = 2 mod 3: singlestep-3 splits them as [3, ..., 3, 2]
ORDERS: dict[str, float] = {}
MIXTURES = {"2d": (2, 1.0, 0.2, 0.5), "16d": (16, 0.5, 0.2, 0.6)}


@pytest.fixture(scope="module", params=list(MIXTURES))
def problem(request):
    gm = cp.targets.random_mixture(*MIXTURES[request.param])
    d = MIXTURES[request.param][0]
    x = torch.randn(16, d, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    model = gm.model(SCHED, "eps")
    return model, x, reference(model, SCHED, x, 1.0, 1e-3)


# (id, sample kwargs, NFE/steps, nominal order). UniPC-p with its UniC corrector is order p + 1
# (Zhao et al. 2023, Thm. 3.3).
CASES = [
    ("ddim", dict(solver="ddim", order=1), STEPS, 1),
    ("dpmsolver-2-singlestep", dict(solver="dpmsolver", order=2, method="singlestep"), STEPS, 2),
    ("dpmsolver-3-singlestep", dict(solver="dpmsolver", order=3, method="singlestep"), STEPS_3S, 3),
    ("dpmsolver++-2M", dict(solver="dpmsolver++", order=2), STEPS, 2),
    ("dpmsolver++-3M", dict(solver="dpmsolver++", order=3), STEPS, 3),
    ("dpmsolver++-3M-legacy", dict(solver="dpmsolver++", order=3, variant="legacy"), STEPS, 2),
    ("dpmsolver-3M", dict(solver="dpmsolver", order=3), STEPS, 3),
    ("deis-2", dict(solver="deis", order=2), STEPS, 2),
    ("deis-3", dict(solver="deis", order=3), STEPS, 3),
    ("unipc-2", dict(solver="unipc", order=2), STEPS, 3),
    ("unipc-3", dict(solver="unipc", order=3), STEPS, 4),
    ("unipc-2-eps", dict(solver="unipc", order=2, pred="eps"), STEPS, 3),
    ("unipc-3-eps", dict(solver="unipc", order=3, pred="eps"), STEPS, 4),
]
# Over 20-320 steps UniPC-3 fits 3.74 (2-D) and 3.66 (16-D); on six mixtures of each kind 3.40-3.86. The
# cause is not the warm-up: refining the first (or the last) step 16-fold changes no fitted digit. The
# local slopes dip to about 3.1 between 40 and 80 steps and then climb to 3.88 (2-D) / 3.95 (16-D) at
# 320 -> 640 steps: the order-4 term dominates only past ~200 steps (test_unipc3_asymptotic_order). In noise
# prediction the same UniPC-3 fits 3.74 / 3.80 here (3.64-4.10 on the twelve mixtures), and a fit over this
# window strays by up to 0.8 from the nominal order on those mixtures even for DPM-Solver(3M) (2.75-3.82):
# benchmarks/order_unipc3.py, docs/findings/unipc3_order.md.
_UNIPC3_16D = (
    "UniPC-3 fits 3.66 over 20-320 steps on the 16-D mixture (pre-asymptotic; see the comment above)"
)


def slope(problem, kwargs, steps) -> float:
    model, x, ref = problem
    errs = []
    for n in steps:
        out = cp.sample(
            model, x, schedule=SCHED, steps=n, t_start=1.0, t_end=1e-3, lower_order_final=False, **kwargs
        )
        errs.append(((out - ref) ** 2).mean().sqrt().item())
    return fitted_order(steps, errs)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_order(problem, case, request):
    _, kwargs, steps, nominal = case
    if case[0] == "unipc-3" and request.node.callspec.id.startswith("16d"):
        request.applymarker(pytest.mark.xfail(strict=True, reason=_UNIPC3_16D))
    p = slope(problem, kwargs, steps)
    ORDERS[f"{request.node.callspec.id} (nominal {nominal})"] = p
    assert abs(p - nominal) <= 0.3, f"{case[0]}: fitted order {p:.2f}, nominal {nominal}"


def test_unipc3_asymptotic_order(problem, request):
    """UniPC-3 (UniP-3 + UniC-3) is order 4: the slope fitted over 160, 320 and 640 steps is within 0.3 of 4
    (2-D 3.80, 16-D 3.92). The per-step order is also checked exactly in test_solvers_exactness."""
    p = slope(problem, dict(solver="unipc", order=3), (160, 320, 640))
    ORDERS[f"{request.node.callspec.id}-unipc-3 over 160-640 (nominal 4)"] = p
    assert abs(p - 4.0) <= 0.3, p


@pytest.fixture(scope="module", autouse=True)
def report_orders():
    """Prints the fitted orders once the module is done (visible with -s)."""
    yield
    for k, v in sorted(ORDERS.items()):
        print(f"fitted order {k:44s} {v:.2f}", file=sys.__stdout__)
