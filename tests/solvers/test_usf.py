"""The usf solver (per-step plans): a plan equal to a uniform DPM-Solver(++) multistep or UniPC run
reproduces that solver; mixed plans run; bad plans are refused by name."""

from __future__ import annotations

import math

import pytest
import torch

import companion as cp
from companion.solvers import multistep as ms
from companion.solvers.usf import Step, as_plan, uniform_plan

SCHED = cp.schedules.VPLinear()
GM = cp.targets.random_mixture(3, 1.0, 0.01, 0.05, seed=1)
X = torch.randn(32, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
LOF = cp.sampling._LOF[None]


def _grid(n: int, name: str = "logsnr") -> torch.Tensor:
    return cp.grids.get_grid(name, SCHED, n, 1.0, 1e-3)


def _run(prediction: str, t: torch.Tensor, **kw) -> torch.Tensor:
    return cp.sample(GM.model(SCHED, prediction), X, schedule=SCHED, prediction=prediction, timesteps=t, **kw)


def _dpm_plan(t, order, pred, corrector=None, lof=LOF):
    # The papers' multistep DPM-Solver(++): the midpoint rule at order 2 (= UniP-2 with B(h) = e^h - 1),
    # the exact Lagrange weights at order 3.
    orders = ms.step_orders(t.shape[0] - 1, order, SCHED.lambda_(t), lof)
    return [Step(p, pred, "bh2" if p == 2 else "lagrange", corrector) for p in orders]


@pytest.mark.parametrize("prediction", ["eps", "x0", "score"])
@pytest.mark.parametrize("n", [4, 7, 16])
@pytest.mark.parametrize("solver,pred", [("dpmsolver++", "x0"), ("dpmsolver", "eps")])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_plan_reproduces_dpm_solver_multistep(prediction, n, solver, pred, order):
    t = _grid(n, "time_quadratic")
    ref = _run(prediction, t, solver=solver, order=order)
    got = _run(prediction, t, solver="usf", plan=_dpm_plan(t, order, pred))
    assert (ref - got).abs().max().item() <= 1e-10
    heun = _run(prediction, t, solver=solver, order=2, variant="heun")  # exact Lagrange weights at order 2
    orders = ms.step_orders(n, 2, SCHED.lambda_(t), LOF)
    got = _run(prediction, t, solver="usf", plan=[Step(p, pred, "lagrange") for p in orders])
    assert (heun - got).abs().max().item() <= 1e-10


@pytest.mark.parametrize("n", [5, 12])
@pytest.mark.parametrize("corrector", ["bh1", "bh2"])
def test_plan_reproduces_dpm_solver_with_unic(n, corrector):
    t = _grid(n)
    ref = _run("eps", t, solver="dpmsolver++", order=3, corrector=corrector)
    got = _run("eps", t, solver="usf", plan=_dpm_plan(t, 3, "x0", corrector))
    assert (ref - got).abs().max().item() <= 1e-10


@pytest.mark.parametrize("prediction", ["eps", "x0"])
@pytest.mark.parametrize("n", [4, 9, 20])
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("pred", ["x0", "eps"])
@pytest.mark.parametrize("corrector", [True, False])
def test_plan_reproduces_unipc(prediction, n, order, variant, pred, corrector):
    t = _grid(n, "karras")
    ref = _run(prediction, t, solver="unipc", order=order, variant=variant, pred=pred, corrector=corrector)
    orders = ms.step_orders(n, order, SCHED.lambda_(t), math.inf)
    plan = [Step(p, pred, variant, variant if corrector else None) for p in orders]
    got = _run(prediction, t, solver="usf", plan=plan)
    assert (ref - got).abs().max().item() <= 1e-10


def test_default_plan_is_the_uniform_run_and_steps_count_nfe():
    calls = []

    def model(x, t):
        calls.append(1)
        return GM.eps(x, t, SCHED)

    a = cp.sample(model, X, schedule=SCHED, solver="usf", order=3, steps=8, t_end=1e-3)
    assert len(calls) == 8
    b = cp.sample(
        GM.model(SCHED), X, schedule=SCHED, solver="dpmsolver++", order=3, variant="heun", steps=8, t_end=1e-3
    )
    assert (a - b).abs().max().item() <= 1e-10  # order <= 2 steps use exact Lagrange weights too (heun)


def test_mixed_plan_matches_a_hand_rolled_run():
    """A plan that switches prediction type each step: the eps step after an x0 step uses the same
    evaluations converted, eps = (x - alpha x0)/sigma; checked against one step at a time."""
    t = _grid(3)
    plan = [Step(1, "x0"), Step(2, "eps", "lagrange"), Step(2, "x0", "bh1")]
    got = _run("eps", t, solver="usf", plan=plan)
    # step by step: DDIM, then a 2-point exponential integrator in eps, then in x0 (Lagrange = exact
    # integration of the line through the two latest evaluations).
    lam = SCHED.lambda_(t)
    alpha, sigma = SCHED.alpha(t), SCHED.sigma(t)
    x = X.clone()
    eps, x0 = [], []
    for i in range(3):
        e = GM.eps(x, t[i], SCHED)
        eps.insert(0, e)
        x0.insert(0, (x - sigma[i] * e) / alpha[i])
        h = lam[i + 1] - lam[i]
        if i == 0:
            x = sigma[1] / sigma[0] * x - alpha[1] * torch.expm1(-h) * x0[0]
            continue
        r = (lam[i - 1] - lam[i]) / h
        k = 1 if plan[i].pred == "eps" else -1
        m = eps if k == 1 else x0
        # int_0^h e^{k(h-u)} (m0 + (m1 - m0) u/(r h)) du
        e1 = k * torch.expm1(k * h)
        e2 = h * cp.solvers.base.phi(2, k * h)
        if k == 1:
            x = alpha[i + 1] / alpha[i] * x - sigma[i + 1] * (e1 * m[0] + e2 * (m[1] - m[0]) / r)
        else:
            # UniP-2 with B(h) = k h: E1 m0 + k B(h) rho (m1 - m0)/r, rho = 1/2 (Zhao et al. 2023)
            x = sigma[i + 1] / sigma[i] * x + alpha[i + 1] * (e1 * m[0] + h * 0.5 * (m[1] - m[0]) / r)
    assert (got - x).abs().max().item() <= 1e-12


def test_per_sample_timesteps_and_callback():
    t = _grid(5)
    tb = torch.stack([t, cp.grids.get_grid("time_uniform", SCHED, 5, 1.0, 1e-3)], 1)
    x = X[:2]
    plan = uniform_plan(5, 3, "x0", "bh2", "bh1")
    both = cp.sample(GM.model(SCHED), x, schedule=SCHED, timesteps=tb, solver="usf", plan=plan)
    for j in range(2):
        one = cp.sample(
            GM.model(SCHED), x[j : j + 1], schedule=SCHED, timesteps=tb[:, j], solver="usf", plan=plan
        )
        assert (one - both[j : j + 1]).abs().max().item() <= 1e-12
    seen = []
    cp.sample(GM.model(SCHED), x, schedule=SCHED, timesteps=t, solver="usf", plan=plan,
              callback=lambda i, tt, xx, d: seen.append(i))  # fmt: skip
    assert seen == list(range(5))


@pytest.mark.parametrize(
    "plan,match",
    [
        ([{"order": 2}], r"plan\[0\]: order 2 needs 2 model evaluations"),
        ([{"order": 1}, {"order": 1, "pred": "v"}], r"plan\[1\]: pred='v'"),
        ([{"order": 1, "predictor": "rk"}], r"plan\[0\]: predictor='rk'"),
        ([{"order": 1, "corrector": "implicit"}], r"plan\[0\]: corrector='implicit'"),
        ([{"order": 1, "bogus": 1}], r"plan\[0\] has unknown field"),
        ([], r"plan must have at least one step"),
    ],
)
def test_bad_plans_raise_naming_the_step(plan, match):
    with pytest.raises(ValueError, match=match):
        as_plan(plan)
    with pytest.raises(ValueError, match=r"\bplan\b"):
        cp.solvers.build("usf", plan=plan)


def test_bad_plan_types_and_lengths():
    with pytest.raises(TypeError, match="plan"):
        cp.solvers.build("usf", plan="x0")
    with pytest.raises(TypeError, match=r"plan\[0\] must be a Step or a dict"):
        as_plan([3])
    with pytest.raises(ValueError, match="plan has 2 steps but the grid has 5"):
        cp.sample(GM.model(SCHED), X, schedule=SCHED, solver="usf", plan=uniform_plan(2), steps=5, t_end=1e-3)
    s = cp.solvers.build("usf", plan=[{"order": 1}, Step(2, "eps")])
    assert s.plan == (Step(1), Step(2, "eps"))
