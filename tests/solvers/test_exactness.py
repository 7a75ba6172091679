"""Exactness on closed-form problems (float64).

* Point-mass data: the data prediction is constant, so every data-prediction exponential integrator
  reproduces the exact flow x_t = alpha_t mu + (sigma_t/sigma_s)(x_s - alpha_s mu).
* Gaussian data: the reference integrator matches the closed-form PF-ODE flow map.
* A k-step multistep method integrates a prediction that is a polynomial of degree k - 1 in lambda
  exactly (one step from exact history); UniC-p does so for degree p. The shipped 3M ("legacy") does not.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import reference
from scipy.integrate import quad

import companion as cp
from companion.solvers import deis, dpm_solver, unipc
from companion.solvers import multistep as ms
from companion.solvers.base import Points

SCHED = cp.schedules.VPLinear()

DATA_PREDICTION = [
    dict(solver="ddim", order=1),
    *[dict(solver="dpmsolver++", order=o) for o in (1, 2, 3)],
    dict(solver="dpmsolver++", order=2, variant="heun"),
    dict(solver="dpmsolver++", order=3, variant="legacy"),
    dict(solver="dpmsolver++", order=3, corrector="bh2"),
    *[dict(solver="dpmsolver++", order=o, method="singlestep") for o in (1, 2, 3)],
    dict(solver="dpmsolver++", order=3, method="singlestep", variant="heun"),
    dict(solver="dpmsolver++", order=3, method="singlestep_fixed"),
    dict(solver="dpmsolver++", order=2, method="adaptive"),
    dict(solver="dpmsolver++", order=3, method="adaptive"),
    *[dict(solver="unipc", order=o, variant=v) for o in (1, 2, 3) for v in ("bh1", "bh2")],
]


@pytest.mark.parametrize("kw", DATA_PREDICTION, ids=lambda kw: "-".join(str(v) for v in kw.values()))
@pytest.mark.parametrize("prediction", ["x0", "eps"])
def test_point_mass_exact(kw, prediction):
    mu = torch.tensor([[0.3, -0.5, 1.2]], dtype=torch.float64)
    gm = cp.targets.GaussianMixture.point_masses(mu)
    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = cp.sample(
        gm.model(SCHED, prediction),
        x,
        schedule=SCHED,
        prediction=prediction,
        steps=12,
        t_start=1.0,
        t_end=1e-3,
        **kw,
    )
    s, t = torch.tensor(1.0, dtype=torch.float64), torch.tensor(1e-3, dtype=torch.float64)
    exact = SCHED.alpha(t) * mu + SCHED.sigma(t) / SCHED.sigma(s) * (x - SCHED.alpha(s) * mu)
    assert (out - exact).abs().max().item() <= 1e-10


def test_reference_matches_gaussian_flow_map():
    gm = cp.targets.Gaussian(torch.tensor([0.4, -1.0]), torch.tensor([[0.5, 0.2], [0.2, 0.3]]))
    x = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    ref = reference(gm.model(SCHED, "eps"), SCHED, x, 1.0, 1e-3)
    assert (ref - gm.flow_map(x, 1.0, 1e-3, SCHED)).abs().max().item() <= 1e-8


# --- one step from exact history on a polynomial prediction -----------------------------------------

LAM = torch.tensor([-4.0, -3.1, -2.5, -1.4, -0.9, 0.3, 0.8, 2.0], dtype=torch.float64)  # non-uniform
COEF = torch.tensor([0.7, -1.3, 0.45, 0.2], dtype=torch.float64)


def grid_points() -> Points:
    return Points.of(SCHED, SCHED.t_of_lambda(LAM))


def poly(lam: torch.Tensor, degree: int) -> torch.Tensor:
    return sum(COEF[n] * lam**n for n in range(degree + 1))


def exact_step(pred: str, pts: Points, i: int, x: float, f) -> float:
    """x_{i+1} from x_i for the prediction m(lambda) = f(lambda), by adaptive quadrature."""
    s, t = pts[i], pts[i + 1]
    h = float(t.lam - s.lam)
    k = -1 if pred == "x0" else 1
    integral = quad(lambda u: np.exp(k * (h - u)) * f(float(s.lam) + u), 0.0, h, epsabs=1e-15, epsrel=1e-14)[
        0
    ]
    if pred == "x0":
        return float(t.sigma / s.sigma) * x + float(t.alpha) * integral
    return float(t.alpha / s.alpha) * x - float(t.sigma) * integral


def one_step_errors(pred, A, B, orders, degree, pts, nodes_lam=None):
    lam = pts.lam if nodes_lam is None else nodes_lam
    f = lambda v: float(poly(torch.tensor(v, dtype=torch.float64), degree))  # noqa: E731
    errs = []
    for i, p in enumerate(orders):
        if p < degree + 1:
            continue
        x = 0.37
        got = float(A[i]) * x + sum(float(B[i, j]) * float(poly(lam[i - j], degree)) for j in range(p))
        errs.append(abs(got - exact_step(pred, pts, i, x, f)))
    assert errs, "no step of the required order on the grid"
    return max(errs)


@pytest.mark.parametrize("pred", ["x0", "eps"])
@pytest.mark.parametrize("k,variant", [(1, "midpoint"), (2, "heun"), (3, "midpoint")])
def test_multistep_polynomial_exact(pred, k, variant):
    pts = grid_points()
    orders = ms.step_orders(len(LAM) - 1, k, pts.lam)
    A, B = dpm_solver.dpm_coefs(pred, pts, orders, variant)
    assert one_step_errors(pred, A, B, orders, k - 1, pts) <= 1e-12


def test_legacy_3m_is_not_exact_on_quadratics():
    """The shipped 3M misses half of the second-difference term: visibly wrong on a quadratic."""
    pts = grid_points()
    orders = ms.step_orders(len(LAM) - 1, 3, pts.lam)
    A, B = dpm_solver.dpm_coefs("x0", pts, orders, "legacy")
    assert one_step_errors("x0", A, B, orders, 2, pts) > 1e-3


@pytest.mark.parametrize("bh", ["bh1", "bh2"])
def test_unip3_polynomial_exact(bh):
    pts = grid_points()
    orders = ms.step_orders(len(LAM) - 1, 3, pts.lam)
    A, B = unipc.unip_coefs("x0", pts, orders, bh)
    assert one_step_errors("x0", A, B, orders, 2, pts) <= 1e-12


@pytest.mark.parametrize("pred", ["x0", "eps"])
@pytest.mark.parametrize("p", [2, 3])
@pytest.mark.parametrize("bh", ["bh1", "bh2"])
def test_unic_raises_order(pred, p, bh):
    """UniC after a p-step predictor uses p + 1 values and integrates degree-p polynomials exactly."""
    pts = grid_points()
    orders = ms.step_orders(len(LAM) - 1, p, pts.lam)
    Ac, Bc = unipc.unic_coefs(pred, pts, orders, bh)
    K = max(orders)
    f = lambda v: float(poly(torch.tensor(v, dtype=torch.float64), p))  # noqa: E731
    errs = []
    for i, q in enumerate(orders[:-1]):
        if q < p:
            continue
        x = -0.8
        got = float(Ac[i]) * x + sum(float(Bc[i, j]) * float(poly(pts.lam[i - j], p)) for j in range(q))
        got += float(Bc[i, K]) * float(poly(pts.lam[i + 1], p))
        errs.append(abs(got - exact_step(pred, pts, i, x, f)))
    assert max(errs) <= 1e-12


@pytest.mark.parametrize("k", [1, 2, 3])
def test_deis_tab_polynomial_in_t_exact(k):
    """DEIS tAB extrapolates eps in t: exact for eps(t) a polynomial of degree k - 1 in t."""
    pts = grid_points()
    orders = ms.step_orders(len(LAM) - 1, k, pts.lam)
    A, B = deis.deis_tab_coefs(pts, orders, SCHED.t_of_lambda)

    def q(t):
        return sum(float(COEF[n]) * t**n for n in range(k))

    errs = []
    for i, p in enumerate(orders):
        if p < k:
            continue
        x = 0.5
        got = float(A[i]) * x + sum(float(B[i, j]) * q(float(pts.t[i - j])) for j in range(p))
        f = lambda v: q(float(SCHED.t_of_lambda(torch.tensor(v, dtype=torch.float64))))  # noqa: E731
        errs.append(abs(got - exact_step("eps", pts, i, x, f)))
    assert max(errs) <= 1e-11
