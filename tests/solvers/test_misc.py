"""DDIM noise, the UniC corrector on another predictor, Euler/Heun variables, guidance in a run, adaptive tolerances."""

from __future__ import annotations

import pytest
import torch
from helpers import fitted_order, reference

import companion as cp

SCHED = cp.schedules.VPLinear()


def test_ddim_eta_zero_is_dpmsolverpp1_and_eta_uses_the_generator():
    gm = cp.targets.random_mixture(3, 1.0, 0.2, 0.5)
    model = gm.model(SCHED, "eps")
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    kw = dict(schedule=SCHED, steps=10, t_end=1e-3)
    a = cp.sample(model, x, solver="ddim", order=1, **kw)
    b = cp.sample(model, x, solver="dpmsolver++", order=1, **kw)
    assert (a - b).abs().max().item() <= 1e-14
    runs = [
        cp.sample(model, x, solver="ddim", order=1, eta=1.0, generator=torch.Generator().manual_seed(s), **kw)
        for s in (1, 1, 2)
    ]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_ddim_eta_one_converges_in_distribution():
    """eta = 1 is strided ancestral sampling with the posterior mean for x0: biased at coarse steps (the
    variance shrinks), first order in the weak sense. For N(0.7, 0.25) data: variance 0.202 at 50 steps,
    0.245 at 800."""
    gm = cp.targets.Gaussian(torch.tensor([0.7]), torch.tensor([[0.25]]))
    x = torch.randn(20000, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    err = []
    for n in (50, 800):
        out = cp.sample(
            gm.model(SCHED, "eps"),
            x,
            schedule=SCHED,
            solver="ddim",
            order=1,
            eta=1.0,
            steps=n,
            t_end=1e-4,
            denoise_to_zero=True,
            generator=torch.Generator().manual_seed(1),
        )
        assert abs(out.mean().item() - 0.7) < 0.02
        err.append(abs(out.var().item() - 0.25))
    assert err[1] < 0.01 and err[1] < err[0] / 4


def test_unic_after_dpmsolverpp_raises_its_order():
    gm = cp.targets.random_mixture(2, 1.0, 0.2, 0.5)
    model = gm.model(SCHED, "eps")
    x = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ref = reference(model, SCHED, x, 1.0, 1e-3)
    steps = (20, 40, 80, 160)
    errs = {}
    for corr in (None, "bh2"):
        errs[corr] = []
        for n in steps:
            out = cp.sample(
                model,
                x,
                schedule=SCHED,
                solver="dpmsolver++",
                order=2,
                steps=n,
                t_start=1.0,
                t_end=1e-3,
                lower_order_final=False,
                corrector=corr,
            )
            errs[corr].append(((out - ref) ** 2).mean().sqrt().item())
    assert abs(fitted_order(steps, errs[None]) - 2) <= 0.3
    assert abs(fitted_order(steps, errs["bh2"]) - 3) <= 0.3


def test_rho_variable_euler_is_ddim():
    model = cp.targets.random_mixture(2, 1.0, 0.2, 0.5).model(SCHED, "eps")
    x = torch.randn(4, 2, dtype=torch.float64)
    kw = dict(schedule=SCHED, steps=7, t_end=1e-3, grid="karras")
    a = cp.sample(model, x, solver="euler", order=1, variable="rho", **kw)
    b = cp.sample(model, x, solver="ddim", order=1, **kw)
    assert (a - b).abs().max().item() <= 1e-12


def test_guided_model_runs_through_sample():
    gm = cp.targets.random_mixture(2, 1.0, 0.2, 0.5)
    base = gm.model(SCHED, "eps")

    def model(x, t, c):
        return base(x, t) + 0.1 * c.reshape(-1, 1)

    guided = cp.parameterization.classifier_free_guidance(model, 2.0, torch.ones(3), torch.zeros(3))
    x = torch.randn(3, 2, dtype=torch.float64)
    out = cp.sample(guided, x, schedule=SCHED, steps=5, t_end=1e-3)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("order", [2, 3])
def test_adaptive_error_falls_with_the_tolerance(order):
    """DPM-Solver-12/23 pick their steps from atol/rtol: tightening both 10x and 100x spends more NFE and
    lowers the error against the float64 reference."""
    gm = cp.targets.random_mixture(2, 1.0, 0.2, 0.5)
    model = gm.model(SCHED, "eps")
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = reference(model, SCHED, x, 1.0, 1e-3)
    errs, nfes = [], []
    for tol in (1.0, 0.1, 0.01):
        counted = cp.lab.experiments.Counter(model)
        out = cp.sample(counted, x, schedule=SCHED, solver="dpmsolver++", order=order, method="adaptive",
                        atol=0.0078 * tol, rtol=0.05 * tol, t_end=1e-3)  # fmt: skip
        errs.append(float((out - ref).square().mean().sqrt()))
        nfes.append(counted.calls)
    assert nfes[0] < nfes[1] < nfes[2], nfes
    assert errs[0] > errs[1] > errs[2], errs
