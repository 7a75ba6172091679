"""Heavy ball and GHVB (Wizadwongsa et al. 2023) and the time-shift option (Li et al. 2023).

Theory first: the paper's weights in closed form, beta = 1 is Adams-Bashforth, the moment-matched weights
reduce to the paper's on a uniform grid, fitted orders with exact starting values (float64), and the
time shift with window 0 is the plain sampler bit for bit.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import fitted_order

import companion as cp
from companion.solvers.momentum import MomentumPlan, ab_weights, ghvb_weights, split_momentum_number

VP = cp.schedules.VPLinear()
T0, T1 = 1.0, 1e-3


def _gaussian():
    return cp.targets.Gaussian(
        torch.tensor([0.5, -0.3], dtype=torch.float64),
        torch.tensor([[0.3, 0.1], [0.1, 0.05]], dtype=torch.float64),
    )


def _x(B=8, d=2, seed=0):
    return torch.randn(B, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --- weights -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("beta", [0.1, 0.5, 0.8, 1.0])
def test_ghvb_weights_are_the_papers_closed_forms(beta):
    b = beta
    np.testing.assert_allclose(ghvb_weights(1, b), [1.0], rtol=0, atol=1e-15)
    np.testing.assert_allclose(ghvb_weights(2, b), np.array([2 + b, -(2 - b)]) / (2 * b), atol=1e-14)
    np.testing.assert_allclose(
        ghvb_weights(3, b), np.array([18 + 5 * b, -(24 - 8 * b), 6 - b]) / (12 * b), atol=1e-13
    )
    np.testing.assert_allclose(
        ghvb_weights(4, b),
        np.array([46 + 9 * b, -(78 - 19 * b), 42 - 5 * b, -(10 - b)]) / (24 * b),
        atol=1e-13,
    )
    for r in (1, 2, 3, 4):
        assert abs(ghvb_weights(r, b).sum() - 1.0) < 1e-13  # consistency: a constant slope is integrated


def test_beta_one_weights_are_adams_bashforth():
    ab = {1: [1.0], 2: [1.5, -0.5], 3: [23 / 12, -16 / 12, 5 / 12], 4: [55 / 24, -59 / 24, 37 / 24, -9 / 24]}
    for r, w in ab.items():
        np.testing.assert_allclose(ab_weights(r), w, atol=1e-15)


@pytest.mark.parametrize("r,beta", [(2, 0.5), (3, 0.8), (4, 0.3), (4, 1.0)])
def test_moment_matched_weights_reduce_to_the_papers_on_a_uniform_grid(r, beta):
    plan = MomentumPlan("ghvb", r, beta, fixed=False)
    s = np.linspace(10.0, 0.0, 201)  # uniform in sigmabar; the start-up transient (1 - beta)^n decays
    for n in range(200):
        plan.add_node(s[n])
        w = plan.step(s[n + 1])
    np.testing.assert_allclose(w, ghvb_weights(r, beta), atol=1e-9)


def test_momentum_number_splits_into_order_and_beta():
    assert split_momentum_number(3.8) == (4, pytest.approx(0.8))
    assert split_momentum_number(0.5) == (1, 0.5)
    assert split_momentum_number(2) == (2, 1.0)
    s = cp.solvers.build("ghvb", m=2.5)
    assert (s.order, s.beta) == (3, 0.5)
    for bad in (0, -1.0, 4.5, float("nan")):
        with pytest.raises(ValueError, match="m"):
            cp.solvers.build("ghvb", m=bad)
    with pytest.raises(ValueError, match="either m or order/beta"):
        cp.solvers.build("ghvb", m=2.5, order=2)


# --- beta = 1 is Adams-Bashforth -------------------------------------------------------------------------
def _adams_bashforth(model, x, sched, ts, r):
    """Textbook Adams-Bashforth of order r in (sigmabar, xbar) with uniform-step weights, warm-up
    orders 1, 2, ..., written independently of the package's loop."""
    a, s = sched.alpha(ts), sched.sigma(ts)
    sb = s / a
    xbar, hist = x / a[0], []
    for i in range(len(ts) - 1):
        hist = [model(a[i] * xbar, ts[i].expand(x.shape[0]))] + hist[: r - 1]
        w = ab_weights(len(hist))
        xbar = xbar + (sb[i + 1] - sb[i]) * sum(float(c) * f for c, f in zip(w, hist, strict=True))
    return a[-1] * xbar


@pytest.mark.parametrize("r", [1, 2, 3, 4])
def test_ghvb_with_beta_one_is_adams_bashforth(r):
    g = _gaussian()
    model, x = g.model(VP, "eps"), _x()
    # a grid uniform in sigmabar, where the uniform-step weights are the exact AB method
    t8 = torch.tensor(0.8, dtype=torch.float64)
    sb = torch.linspace(float(VP.sigma(t8) / VP.alpha(t8)), 0.05, 16, dtype=torch.float64)
    ts = VP.t_of_lambda(-torch.log(sb))
    ref = _adams_bashforth(model, x, VP, ts, r)
    for coef in ("fixed", "variable"):
        y = cp.sample(
            model, x, schedule=VP, timesteps=ts, solver="ghvb", order=r, beta=1.0, coefficients=coef
        )
        assert (y - ref).abs().max() < 1e-12, coef
    hb = cp.sample(model, x, schedule=VP, timesteps=ts, solver="plms-hb", order=r, beta=1.0)
    assert (hb - ref).abs().max() < 1e-12
    # control: beta < 1 is a different method
    y8 = cp.sample(model, x, schedule=VP, timesteps=ts, solver="ghvb", order=r, beta=0.8)
    assert (y8 - ref).abs().max() > 1e-6


# --- orders ------------------------------------------------------------------------------------------------
ORDER_STEPS = (160, 320, 640, 1280)


def _errors(m, steps, start="multistep", exact=True):
    g = _gaussian()
    model, x = g.model(VP, "eps"), _x()
    ref = g.flow_map(x, T0, T1, VP)
    r = math.ceil(m)
    errs = []
    for n in steps:
        ts = cp.grids.get_grid("logsnr", VP, n, T0, T1, 7.0)

        def exact_start(i, t, xx, d):  # exact starting values x_1 .. x_{r-1}; the history is kept
            return g.flow_map(x, T0, float(t), VP) if i < r - 1 else None

        y = cp.sample(
            model, x, schedule=VP, timesteps=ts, solver="ghvb", m=m, start=start,
            callback=exact_start if exact else None,
        )  # fmt: skip
        errs.append(float((y - ref).norm(dim=1).mean()))
    return errs


@pytest.mark.parametrize("m", [0.5, 1.5, 2.5, 3.5])
def test_ghvb_order_is_ceil_m_with_exact_starting_values(m, report):
    p = fitted_order(ORDER_STEPS, _errors(m, ORDER_STEPS))
    report("fitted order (ghvb, exact start, logSNR grid)", f"m={m}", p)
    assert abs(p - math.ceil(m)) <= 0.15, p


def test_rk4_starting_values_keep_order_four(report):
    p = fitted_order(ORDER_STEPS, _errors(3.5, ORDER_STEPS, start="rk4", exact=False))
    report("fitted order (ghvb, exact start, logSNR grid)", "m=3.5 rk4 start", p)
    assert abs(p - 4) <= 0.15, p


# --- time shift ---------------------------------------------------------------------------------------------
TS = cp.solvers.TimeShift


@pytest.mark.parametrize(
    "solver,opts",
    [
        ("ddim", {}),
        ("ddim", {"eta": 0.5}),
        ("ancestral", {}),
        ("ghvb", {"m": 3.8}),
        ("plms-hb", {"beta": 0.8}),
    ],
)
@pytest.mark.parametrize("window", [0.0, 0.0009])
def test_window_zero_is_the_plain_sampler_bit_for_bit(solver, opts, window):
    g = _gaussian()
    model, x = g.model(VP, "eps"), _x().float()
    kw = dict(schedule=VP, solver=solver, steps=10, t_end=1e-3, **opts)
    plain = cp.sample(model, x, noise=cp.noise.PerSampleNoise(range(8)), **kw)
    shifted = cp.sample(
        model, x, noise=cp.noise.PerSampleNoise(range(8)), time_shift=TS(window=window, cutoff=0.3), **kw
    )
    assert torch.equal(plain, shifted)
    # control: a real window moves the samples
    moved = cp.sample(
        model, x, noise=cp.noise.PerSampleNoise(range(8)), time_shift=TS(window=0.2, cutoff=0.0), **kw
    )
    assert not torch.equal(plain, moved)


def test_the_shift_picks_the_time_whose_variance_matches():
    ts = TS(window=0.4, cutoff=0.0, resolution=1e-3)
    t_true = torch.tensor([0.35, 0.5, 0.62], dtype=torch.float64)
    var = VP.sigma(t_true) ** 2
    d = 4096
    z = torch.randn(3, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    z = (z - z.mean(1, keepdim=True)) / z.std(1, unbiased=False, keepdim=True)
    x = z * var.sqrt()[:, None]  # per-sample pixel variance exactly sigma(t_true)^2
    got = ts.shift(VP, x, torch.tensor(0.5, dtype=torch.float64), torch.tensor(0.0), torch.tensor(1.0))
    assert torch.allclose(got, t_true, atol=1.5e-3)
    # the signal target adds alpha^2 signal_var: with signal_var = 0 it is the paper's target
    sig0 = TS(window=0.4, target="signal", signal_var=0.0)
    got0 = sig0.shift(VP, x, torch.tensor(0.5, dtype=torch.float64), torch.tensor(0.0), torch.tensor(1.0))
    assert torch.equal(got, got0)
    # below the cutoff, no shift
    late = TS(window=0.4, cutoff=0.6).shift(VP, x, torch.tensor(0.5), torch.tensor(0.0), torch.tensor(1.0))
    assert torch.equal(late, torch.full((3,), 0.5, dtype=torch.float64))


def test_bad_time_shift_options_raise_clear_errors():
    with pytest.raises(ValueError, match="window"):
        TS(window=-0.1)
    with pytest.raises(TypeError, match="cutoff"):
        TS(cutoff="0.3")
    with pytest.raises(ValueError, match="target"):
        TS(window=0.01, target="bogus")
    with pytest.raises(ValueError, match="signal_var"):
        TS(window=0.01, target="signal")
    with pytest.raises(ValueError, match="signal_var"):
        TS(window=0.01, signal_var=0.5)
    with pytest.raises(ValueError, match="resolution"):
        TS(window=0.01, resolution=0.0)
    for solver in ("ddim", "ancestral", "ghvb", "plms-hb"):
        with pytest.raises(TypeError, match="time_shift"):
            cp.solvers.build(solver, time_shift={"window": 0.01})


# --- stability ----------------------------------------------------------------------------------------------
def test_real_stability_intervals_of_adams_bashforth_and_momentum():
    from companion.solvers.momentum import real_stability_interval as a

    # Adams-Bashforth 1-4 (beta = 1): the textbook intervals [-2, 0], [-1, 0], [-6/11, 0], [-3/10, 0]
    for r, want in ((1, -2.0), (2, -1.0), (3, -6 / 11), (4, -0.3)):
        assert a("ghvb", r, 1.0) == pytest.approx(want, abs=1e-6)
    # heavy ball on Euler: v' = (1 - b) v + b lambda x, x' = x + delta v' has the interval [-2(2 - b)/b, 0]
    for b in (0.25, 0.5, 0.8):
        assert a("hb", 1, b) == pytest.approx(-2 * (2 - b) / b, abs=1e-6)
    # momentum enlarges it: GHVB 3.8 and 3.5 against AB4
    assert a("ghvb", 4, 1.0) > a("ghvb", 4, 0.8) > a("ghvb", 4, 0.5)


def test_the_official_warm_up_caps_the_order_at_two_and_rk4_starting_values_do_not(report):
    # Started at t = 0.3 on a narrow Gaussian, where the warm-up's first-order first step is not negligible
    # (from t = 1 the cap shows only far beyond 1280 steps).
    g = cp.targets.Gaussian(
        torch.tensor([0.5, -0.3], dtype=torch.float64),
        torch.tensor([[0.03, 0.01], [0.01, 0.005]], dtype=torch.float64),
    )
    model, t0 = g.model(VP, "eps"), torch.tensor(0.3, dtype=torch.float64)
    x = _x() * VP.sigma(t0) + VP.alpha(t0) * g.mean()
    ref = g.flow_map(x, 0.3, T1, VP)
    steps = (160, 320, 640, 1280)
    fits = {}
    for start in ("multistep", "rk4"):
        errs = []
        for n in steps:
            ts = cp.grids.get_grid("logsnr", VP, n, 0.3, T1, 7.0)
            y = cp.sample(model, x, schedule=VP, timesteps=ts, solver="ghvb", m=3.5, start=start)
            errs.append(float((y - ref).norm(dim=1).mean()))
        fits[start] = fitted_order(steps, errs)
        report(
            "fitted order (ghvb, exact start, logSNR grid)", f"m=3.5 from t=0.3, start={start}", fits[start]
        )
    assert abs(fits["multistep"] - 2) <= 0.3, fits
    assert abs(fits["rk4"] - 4) <= 0.15, fits


def test_time_shift_refuses_inversion_and_per_sample_grids():
    g = _gaussian()
    model, x = g.model(VP, "eps"), _x()
    ts = TS(window=0.02)
    for solver in ("ddim", "ghvb"):
        with pytest.raises(ValueError, match="noise to data"):
            cp.invert(model, x, schedule=VP, solver=solver, steps=5, t_end=1e-3, time_shift=ts)
        grid = torch.stack([torch.linspace(1.0, 1e-3, 6, dtype=torch.float64)] * x.shape[0], 1)
        with pytest.raises(ValueError, match="one grid"):
            cp.sample(model, x, schedule=VP, solver=solver, timesteps=grid, time_shift=ts)
