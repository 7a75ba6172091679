"""Conversions between eps / x0 / v / score / velocity, guidance wrappers and dynamic thresholding."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import companion as cp
from companion import parameterization as P

SCHEDULES = {
    "vp_linear": cp.schedules.VPLinear(),
    "vp_cosine": cp.schedules.VPCosine(),
    "ve": cp.schedules.VE(),
    "edm": cp.schedules.EDM(),
    "rectified_flow": cp.schedules.RectifiedFlow(),
    "vp_discrete": cp.schedules.VPDiscrete.linear(),
}


def _t(schedule, frac):
    lo, hi = max(schedule.t_min, 1e-3 * schedule.t_max), min(schedule.t_max, 0.999 * schedule.t_max)
    return torch.as_tensor(lo + frac * (hi - lo), dtype=torch.float64)


@pytest.mark.parametrize("name", list(SCHEDULES))
@pytest.mark.parametrize("src", P.PREDICTIONS)
@pytest.mark.parametrize("dst", P.PREDICTIONS)
def test_round_trip(name, src, dst):
    sched = SCHEDULES[name]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, generator=g, dtype=torch.float64)
    out = torch.randn(4, 3, generator=g, dtype=torch.float64)
    t = torch.stack([_t(sched, f) for f in (0.1, 0.4, 0.7, 0.95)])
    back = P.convert(P.convert(out, x, src, dst, sched, t), x, dst, src, sched, t)
    assert (back - out).abs().max().item() <= 1e-12 * max(1.0, out.abs().max().item()) * 1e3


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_definitions(name):
    """Each prediction of an (x0, eps) pair, computed from the definitions, converts to the others."""
    sched = SCHEDULES[name]
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(2, 5, generator=g, dtype=torch.float64)
    t = _t(sched, 0.5)
    a, s = sched.alpha(t), sched.sigma(t)
    da, ds = a * sched.d_log_alpha(t), s * sched.d_log_sigma(t)
    x = a * x0 + s * eps
    preds = {"eps": eps, "x0": x0, "v": a * eps - s * x0, "score": -eps / s, "velocity": da * x0 + ds * eps}
    for src, vs in preds.items():
        for dst, vd in preds.items():
            got = P.convert(vs, x, src, dst, sched, t)
            assert torch.allclose(got, vd, rtol=1e-10, atol=1e-10), (src, dst)


def test_same_trajectory_whichever_parameterization():
    """A Gaussian-data model expressed as eps, x0, v, score or velocity gives the same samples."""
    sched = cp.schedules.VPLinear()
    gm = cp.targets.Gaussian(torch.tensor([0.5, -0.2]), torch.tensor([0.3, 0.6]))
    eps_model = gm.model(sched, "eps")
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    outs = {}
    for pred in P.PREDICTIONS:

        def model(x, t, pred=pred):
            return P.convert(eps_model(x, t), x, "eps", pred, sched, t)

        outs[pred] = cp.sample(model, x, schedule=sched, prediction=pred, order=3, steps=10, t_end=1e-3)
    for pred, out in outs.items():
        assert (out - outs["eps"]).abs().max().item() <= 1e-10, pred


def test_aliases():
    assert (
        P.canonical("epsilon") == "eps"
        and P.canonical("sample") == "x0"
        and P.canonical("v_prediction") == "v"
    )
    with pytest.raises(ValueError, match="unknown prediction"):
        P.canonical("noise_prediction")
    with pytest.raises(TypeError):
        P.canonical(3)


def test_classifier_free_guidance_convention():
    def model(x, t, c):
        return x * c.reshape(-1, 1)

    x, t = torch.ones(2, 3), torch.zeros(2)
    cond, uncond = torch.tensor([2.0, 2.0]), torch.tensor([0.5, 0.5])
    for batched in (True, False):
        g = P.classifier_free_guidance(model, 3.0, cond, uncond, batched=batched)
        assert torch.allclose(g(x, t), 0.5 + 3.0 * (2.0 - 0.5) * torch.ones(2, 3))
    assert torch.equal(P.classifier_free_guidance(model, 1.0, cond, uncond)(x, t), model(x, t, cond))


def test_classifier_guidance_is_eps_minus_s_sigma_grad():
    sched = cp.schedules.VPLinear()
    x = torch.randn(3, 2, dtype=torch.float64)
    t = torch.full((3,), 0.4, dtype=torch.float64)

    def eps(x, t):
        return 0.3 * x

    def grad(x, t):
        return torch.ones_like(x)

    for pred in ("eps", "x0", "v"):

        def model(x, t, pred=pred):
            return P.convert(eps(x, t), x, "eps", pred, sched, t)

        g = P.classifier_guidance(model, grad, 2.0, sched, pred)
        got = P.convert(g(x, t), x, pred, "eps", sched, t)
        want = eps(x, t) - 2.0 * sched.sigma(t)[:, None] * grad(x, t)
        assert torch.allclose(got, want, atol=1e-12), pred


def test_dynamic_threshold_semantics():
    x0 = torch.tensor([[0.5, -3.0, 2.0, 0.1], [0.2, 0.3, -0.4, 0.1]], dtype=torch.float64)
    s = torch.quantile(x0.abs(), 0.9, dim=1)
    dpm = P.dynamic_threshold(x0, ratio=0.9, max_val=1.0, semantics="dpm-solver")
    dif = P.dynamic_threshold(x0, ratio=0.9, max_val=1.5, semantics="diffusers")
    s_dpm = torch.maximum(s, torch.ones_like(s))  # max(quantile, max_val)
    s_dif = s.clamp(1.0, 1.5)  # clamp(quantile, 1, sample_max_value)
    assert torch.allclose(dpm, torch.clamp(x0, -s_dpm[:, None], s_dpm[:, None]) / s_dpm[:, None])
    assert torch.allclose(dif, torch.clamp(x0, -s_dif[:, None], s_dif[:, None]) / s_dif[:, None])
    assert not torch.allclose(dpm, dif)
    with pytest.raises(ValueError, match="semantics"):
        P.dynamic_threshold(x0, semantics="imagen")


def test_x0_fn_reaches_every_prediction():
    sched = cp.schedules.VPLinear()
    x = 3 * torch.randn(4, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    model = cp.targets.Gaussian(torch.zeros(8), 4.0).model(sched, "eps")
    for solver in ("dpmsolver++", "dpmsolver", "unipc"):
        seen = []

        def fn(x0, seen=seen):
            seen.append(x0)
            return P.dynamic_threshold(x0, 0.9, 1.0)

        kw = dict(solver=solver, steps=8, t_end=1e-3, denoise_to_zero=True, x0_fn=fn)
        out = cp.sample(model, x, schedule=sched, **kw)
        assert len(seen) == 9 and out.abs().max().item() <= 1.0 + 1e-12, solver


@settings(max_examples=40, deadline=None)
@given(
    frac=st.floats(0.0, 1.0),
    src=st.sampled_from(P.PREDICTIONS),
    dst=st.sampled_from(P.PREDICTIONS),
    name=st.sampled_from(list(SCHEDULES)),
)
def test_coefficients_compose(frac, src, dst, name):
    """Converting src -> x0 -> dst equals src -> dst directly (linear maps compose)."""
    sched = SCHEDULES[name]
    t = _t(sched, frac)
    a, s = sched.alpha(t), sched.sigma(t)
    da, ds = a * sched.d_log_alpha(t), s * sched.d_log_sigma(t)
    cx1, co1 = P.coefficients(src, "x0", a, s, da, ds)
    cx2, co2 = P.coefficients("x0", dst, a, s, da, ds)
    cx, co = P.coefficients(src, dst, a, s, da, ds)
    scale = max(1.0, float(abs(cx)), float(abs(co)))
    assert abs(float(cx2 + co2 * cx1 - cx)) <= 1e-9 * scale
    assert abs(float(co2 * co1 - co)) <= 1e-9 * scale
