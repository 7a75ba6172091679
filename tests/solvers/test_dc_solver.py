"""DC-Solver (companion.solvers.dc_solver): ratios of 1 are UniPC; the compensation and the whole loop match a
transcription of the official code (wl-zhao/DC-Solver, stable-diffusion/ldm/models/diffusion/dc_solver/
dc_solver.py: ``dynamic_compensation``, ``multistep_uni_pc_bh_update``, ``sample``); bad ratios are refused;
the greedy search (companion.dc.search_ratios) recovers ratios planted in a reference trajectory."""

from __future__ import annotations

import math

import pytest
import torch

import companion as cp
from companion.solvers.dc_solver import DCSolver, compensation_weights
from companion.targets.gaussian import random_mixture

VP = cp.schedules.VPLinear()
GM = random_mixture(2, 1.0, 0.2, 0.5, seed=3)
EPS = GM.model(VP, "eps")


def _x(batch=16, seed=0, d=2):
    return torch.randn(batch, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --- a transcription of the official ldm code (float64, scalar times), used only as a test oracle ---------
def _x0(x, t):
    a, s = VP.alpha(t), VP.sigma(t)
    return (x - s * EPS(x, t.expand(x.shape[0]))) / a


def _official_dc(model_prev_list, t_prev_list, ratio, dc_order):
    t_prev, t = t_prev_list[-2], t_prev_list[-1]
    t_ = t * ratio + t_prev * (1 - ratio)
    model_t_dc = torch.zeros_like(model_prev_list[-1])
    for i in range(dc_order + 1):
        term = model_prev_list[-(i + 1)]
        for j in range(dc_order + 1):
            if i != j:
                coeff = (t_ - t_prev_list[-(j + 1)]) / (t_prev_list[-(i + 1)] - t_prev_list[-(j + 1)])
                term = term * coeff
        model_t_dc = model_t_dc + term
    return model_t_dc


def _official_update(x, model_prev_list, t_prev_list, t, order, variant, use_corrector=True):
    lam = VP.lambda_
    t_prev_0 = t_prev_list[-1]
    lambda_prev_0, lambda_t = lam(t_prev_0), lam(t)
    model_prev_0 = model_prev_list[-1]
    sigma_prev_0, sigma_t = VP.sigma(t_prev_0), VP.sigma(t)
    alpha_t = VP.alpha(t)
    h = lambda_t - lambda_prev_0
    rks, D1s = [], []
    for i in range(1, order):
        t_prev_i = t_prev_list[-(i + 1)]
        model_prev_i = model_prev_list[-(i + 1)]
        rk = (lam(t_prev_i) - lambda_prev_0) / h
        rks.append(rk)
        D1s.append((model_prev_i - model_prev_0) / rk)
    rks.append(torch.tensor(1.0, dtype=torch.float64))
    rks = torch.stack(rks)
    hh = -h
    h_phi_1 = torch.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    factorial_i = 1
    B_h = hh if variant == "bh1" else torch.expm1(hh)
    R, b = [], []
    for i in range(1, order + 1):
        R.append(torch.pow(rks, i - 1))
        b.append(h_phi_k * factorial_i / B_h)
        factorial_i *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial_i
    R, b = torch.stack(R), torch.stack(b)
    pred_res = 0
    if D1s:
        rhos_p = (
            torch.tensor([0.5], dtype=torch.float64)
            if order == 2
            else torch.linalg.solve(R[:-1, :-1], b[:-1])
        )
        pred_res = sum(r * d for r, d in zip(rhos_p, D1s, strict=True))
    x_t_ = sigma_t / sigma_prev_0 * x - alpha_t * h_phi_1 * model_prev_0
    x_t = x_t_ - alpha_t * B_h * pred_res
    model_t = None
    if use_corrector:
        rhos_c = torch.tensor([0.5], dtype=torch.float64) if order == 1 else torch.linalg.solve(R, b)
        model_t = _x0(x_t, t)
        corr_res = sum(r * d for r, d in zip(rhos_c[:-1], D1s, strict=True)) if D1s else 0
        x_t = x_t_ - alpha_t * B_h * (corr_res + rhos_c[-1] * (model_t - model_prev_0))
    return x_t, model_t


def _official_sample(x, timesteps, order, variant, dc_order, dc_ratios):
    """The official ``sample(method='multistep', lower_order_final=True)``; returns the final x and the
    (corrected) state at every grid time."""
    steps = len(timesteps) - 1
    dc_ratios = list(dc_ratios)
    states = [x]
    model_prev_list = [_x0(x, timesteps[0])]
    t_prev_list = [timesteps[0]]
    for init_order in range(1, order):
        dc_ratio = dc_ratios.pop(0)
        if dc_ratio != 1.0:
            model_prev_list[-1] = _official_dc(model_prev_list, t_prev_list, dc_ratio, dc_order)
        t = timesteps[init_order]
        x, model_x = _official_update(x, model_prev_list, t_prev_list, t, init_order, variant)
        states.append(x)
        model_prev_list.append(model_x)
        t_prev_list.append(t)
    for step in range(order, steps + 1):
        dc_ratio = dc_ratios.pop(0)
        if dc_ratio != 1.0:
            model_prev_list[-1] = _official_dc(model_prev_list, t_prev_list, dc_ratio, dc_order)
        t = timesteps[step]
        step_order = min(order, steps + 1 - step)
        x, model_x = _official_update(
            x, model_prev_list, t_prev_list, t, step_order, variant, use_corrector=step != steps
        )
        states.append(x)
        for i in range(order - 1):
            t_prev_list[i] = t_prev_list[i + 1]
            model_prev_list[i] = model_prev_list[i + 1]
        t_prev_list[-1] = t
        if step < steps:
            model_prev_list[-1] = model_x
    return x, torch.stack(states)


def _grid(n):
    return torch.linspace(1.0, 1e-3, n + 1, dtype=torch.float64)


# --- tests --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("pred", ["x0", "eps"])
@pytest.mark.parametrize("corrector", [True, False])
def test_ratios_one_is_unipc(order, variant, pred, corrector):
    x = _x()
    opts = dict(order=order, variant=variant, pred=pred, corrector=corrector)
    for steps in (3, 6, 11):
        kw = dict(schedule=VP, steps=steps, t_end=1e-3)
        ref = cp.sample(EPS, x, solver="unipc", **kw, **opts)
        for ratios in (None, [1.0] * steps):
            out = cp.sample(EPS, x, solver="dc-solver", ratios=ratios, **kw, **opts)
            assert (out - ref).abs().max().item() < 1e-12
    # control: a ratio other than 1 moves the sample
    out = cp.sample(
        EPS, x, solver="dc-solver", ratios=[1, 1, 1, 0.8, 1, 1], schedule=VP, steps=6, t_end=1e-3, **opts
    )
    assert (
        out - cp.sample(EPS, x, solver="unipc", schedule=VP, steps=6, t_end=1e-3, **opts)
    ).abs().max() > 1e-6


def test_compensation_weights_match_official_formula():
    g = torch.Generator().manual_seed(1)
    for dc_order in (1, 2, 3):
        t = torch.sort(torch.rand(dc_order + 1, generator=g, dtype=torch.float64), descending=True).values
        t_prev_list = list(t.flip(0))  # oldest first, as the official buffer
        m = [torch.randn(5, generator=g, dtype=torch.float64) for _ in range(dc_order + 1)]
        for rho in (0.3, 1.0, 1.7):
            want = _official_dc(m, t_prev_list, rho, dc_order)
            nodes = [t_prev_list[-(j + 1)] for j in range(dc_order + 1)]  # newest first
            w = compensation_weights(
                nodes, t_prev_list[-2], t_prev_list[-1], torch.tensor(rho, dtype=torch.float64)
            )
            got = sum(wj * m[-(j + 1)] for j, wj in enumerate(w))
            assert torch.allclose(got, want, rtol=0, atol=1e-13)
    # Lagrange interpolation reproduces a polynomial of degree dc_order at t' (here a quadratic, dc_order = 2)
    nodes = [torch.tensor(v, dtype=torch.float64) for v in (0.5, 0.7, 0.9)]
    w = compensation_weights(nodes, nodes[1], nodes[0], torch.tensor(1.4, dtype=torch.float64))
    p = lambda s: 2 - 3 * s + 5 * s**2  # noqa: E731
    tp = 0.7 + 1.4 * (0.5 - 0.7)
    assert abs(sum(wj * p(n) for wj, n in zip(w, nodes, strict=True)) - p(tp)) < 1e-13


@pytest.mark.parametrize(
    "order,dc_order,variant", [(3, 2, "bh1"), (3, 2, "bh2"), (2, 1, "bh2"), (3, 1, "bh1")]
)
def test_loop_matches_official_transcription(order, dc_order, variant):
    x, steps = _x(8, seed=2), 8
    ts = _grid(steps)
    ratios = [1.0] * dc_order + [0.6 + 0.1 * k for k in range(steps - dc_order)]
    want, _ = _official_sample(x, ts, order, variant, dc_order, ratios)
    got = cp.sample(
        EPS,
        x,
        schedule=VP,
        timesteps=ts,
        solver="dc-solver",
        order=order,
        variant=variant,
        dc_order=dc_order,
        ratios=ratios,
    )
    assert (got - want).abs().max().item() < 1e-11
    unipc = cp.sample(EPS, x, schedule=VP, timesteps=ts, solver="unipc", order=order, variant=variant)
    assert (got - unipc).abs().max().item() > 1e-4  # control: the planted ratios matter


@pytest.mark.parametrize(
    "ratios,match",
    [
        ([1.0] * 4, "one ratio per step"),
        ([1.0] * 6, "one ratio per step"),
        ([1.0, 1.0, float("nan"), 1.0, 1.0], "ratios"),
        ([1.0, 1.0, float("inf"), 1.0, 1.0], "ratios"),
        ([1.0, 0.9, 1.0, 1.0, 1.0], r"ratios\[1\]"),
        ([], "ratios"),
        ("1.0", "ratios"),
        ([1.0, "a", 1.0, 1.0, 1.0], "ratios"),
        (torch.ones(5, 1), "ratios"),
    ],
)
def test_bad_ratios_raise(ratios, match):
    with pytest.raises((ValueError, TypeError), match=match):
        cp.sample(EPS, _x(), schedule=VP, steps=5, t_end=1e-3, solver="dc-solver", ratios=ratios)


def test_ratios_accept_arrays_and_are_hashable():
    import numpy as np

    a = DCSolver(ratios=np.array([1.0, 1.0, 0.9]))
    b = DCSolver(ratios=torch.tensor([1.0, 1.0, 0.9], dtype=torch.float64))
    c = DCSolver(ratios=[1, 1, 0.9])
    assert a == b == c and a.ratios == (1.0, 1.0, 0.9) and hash(a) == hash(c)


def test_callback_sees_every_step():
    seen = []
    cp.sample(
        EPS,
        _x(),
        schedule=VP,
        steps=6,
        t_end=1e-3,
        solver="dc-solver",
        ratios=[1, 1, 0.9, 0.9, 0.9, 0.9],
        callback=lambda i, t, x, d: seen.append(i),
    )
    assert seen == list(range(6))


def test_search_recovers_planted_ratios():
    from companion.dc import search_ratios

    x, steps, order, dc_order = _x(8, seed=4), 6, 3, 2
    ts = _grid(steps)
    planted = [1.0, 1.0, 0.7, 1.3, 0.8, 1.1]
    _, states = _official_sample(x, ts, order, "bh2", dc_order, planted)
    res = search_ratios(
        EPS,
        x,
        states,
        schedule=VP,
        timesteps=ts,
        prediction="eps",
        order=order,
        variant="bh2",
        dc_order=dc_order,
        iters=300,
        lr=0.02,
        progress=False,
    )
    assert res.ratios[:2] == [1.0, 1.0]
    assert max(abs(a - b) for a, b in zip(res.ratios, planted, strict=True)) < 2e-2
    assert all(math.isnan(v) for v in res.loss_before[:2])
    assert all(a <= b for a, b in zip(res.loss_after[2:], res.loss_before[2:], strict=True))
    assert res.calls > 0 and res.seconds >= 0
