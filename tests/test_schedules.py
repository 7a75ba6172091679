"""Schedules: inverse and derivatives against autograd, property-based over parameters; bad arguments."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from companion.schedules import VE, SubVP, VPCosine, VPDiscrete, VPLinear, get_schedule

FAST = settings(max_examples=25, deadline=None)

vp_params = st.tuples(st.floats(0.01, 2.0), st.floats(0.0, 30.0)).map(lambda p: (p[0], p[0] + p[1]))
ve_params = st.tuples(st.floats(1e-3, 1.0), st.floats(2.0, 1e4)).map(lambda p: (p[0], p[0] * p[1]))


def schedules_from(draw_kind, p):
    if draw_kind == "vp":
        return VPLinear(*p)
    if draw_kind == "subvp":
        return SubVP(*p)
    if draw_kind == "ve":
        return VE(*p)
    if draw_kind == "cosine":
        return VPCosine(s=p[0] * 0.05, t_max=0.9946)
    return VPDiscrete.linear(n=int(50 + 100 * p[0]), beta_start=1e-4, beta_end=0.01 + 0.01 * p[0])


@st.composite
def schedule_strategy(draw):
    kind = draw(st.sampled_from(["vp", "subvp", "ve", "cosine", "discrete"]))
    p = draw(ve_params if kind == "ve" else vp_params)
    return schedules_from(kind, p)


def interior(s, n=64):
    lo, hi = s.t_min, s.t_max
    return torch.linspace(lo + 0.01 * (hi - lo), hi, n, dtype=torch.float64)


@FAST
@given(schedule_strategy())
def test_t_of_lambda_round_trip(s):
    t = interior(s)
    back = s.t_of_lambda(s.lambda_(t))
    assert torch.allclose(back, t, rtol=1e-9, atol=1e-11), (s, (back - t).abs().max())


@FAST
@given(schedule_strategy())
def test_lambda_strictly_decreasing(s):
    lam = s.lambda_(interior(s, 200))
    assert bool((lam[1:] < lam[:-1]).all())


@FAST
@given(schedule_strategy())
def test_derivatives_match_autograd(s):
    t = interior(s).requires_grad_(True)
    for value, deriv in [(s.log_alpha, s.d_log_alpha), (s.log_sigma, s.d_log_sigma), (s.lambda_, s.d_lambda)]:
        (auto,) = torch.autograd.grad(value(t).sum(), t)
        assert torch.allclose(deriv(t.detach()), auto, rtol=1e-8, atol=1e-10), (s, value.__name__)


@FAST
@given(schedule_strategy())
def test_g2_nonnegative_and_consistent(s):
    t = interior(s)
    g2 = s.g2(t)
    assert bool((g2 >= 0).all())
    # g^2 = d sigma^2/dt - 2 f sigma^2, with d sigma^2 / dt by autograd.
    tg = t.clone().requires_grad_(True)
    (ds2,) = torch.autograd.grad((s.sigma(tg) ** 2).sum(), tg)
    assert torch.allclose(g2, ds2 - 2 * s.f(t) * s.sigma(t) ** 2, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("s", [VPLinear(), SubVP(), VPCosine(), VPDiscrete.linear()])
def test_g2_finite_at_t0(s):
    # sigma(0) = 0 makes -2 sigma^2 dlambda/dt a 0 * inf; the VP identities give the limit.
    g2 = s.g2(torch.tensor(0.0, dtype=torch.float64))
    assert math.isfinite(float(g2)) and float(g2) >= 0


def test_subvp_diffusion_below_vp():
    t = torch.linspace(0.01, 1, 50, dtype=torch.float64)
    assert bool((SubVP().g2(t) < VPLinear().g2(t)).all())


def test_marginal_formulas():
    t = torch.tensor([0.3], dtype=torch.float64)
    vp = VPLinear(0.1, 20.0)
    integral = 0.1 * 0.3 + 0.5 * 19.9 * 0.09  # int_0^t beta
    assert torch.allclose(vp.alpha(t), torch.exp(torch.tensor(-0.5 * integral, dtype=torch.float64)))
    assert torch.allclose(SubVP().sigma(t), 1 - vp.alpha(t) ** 2)
    assert torch.allclose(VE(0.01, 50).sigma(t), torch.tensor(0.01 * 5000**0.3, dtype=torch.float64))


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: VPLinear(beta_min=-1.0), "beta_min"),
        (lambda: VPLinear(beta_min=0.0), "beta_min"),
        (lambda: VPLinear(beta_min=2.0, beta_max=1.0), "beta_max"),
        (lambda: VE(sigma_min=0.0), "sigma_min"),
        (lambda: VE(sigma_min=1.0, sigma_max=0.5), "sigma_max"),
        (lambda: VPCosine(t_max=1.0), "t_max"),
        (lambda: VPDiscrete(), "betas"),
        (lambda: VPDiscrete(betas=[0.1, 1.5]), "betas"),
        (lambda: get_schedule("vp_quadratic"), "unknown schedule"),
    ],
)
def test_bad_arguments(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_check_t_names_argument():
    with pytest.raises(ValueError, match="t_end"):
        VPLinear().check_t(1.5, "t_end")
    with pytest.raises(ValueError, match="t"):
        VPLinear().check_t(float("nan"))
    with pytest.raises(TypeError, match="name"):
        get_schedule(3)
