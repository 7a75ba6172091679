"""Time grids: spacing, exact endpoints, per-sample shapes, validation, and new schedules' inverses."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import companion as cp
from companion import grids

VP = cp.schedules.VPLinear()


def test_logsnr_is_uniform_in_lambda():
    t = grids.logsnr(VP, 1.0, 1e-3, 10)
    lam = VP.lambda_(t)
    d = lam[1:] - lam[:-1]
    assert torch.allclose(d, d.mean().expand_as(d), atol=1e-10)
    assert t[0] == 1.0 and t[-1] == 1e-3


def test_time_uniform_and_quadratic():
    assert torch.allclose(
        grids.time_uniform(1.0, 0.0, 4), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64)
    )
    tq = grids.time_quadratic(1.0, 1e-3, 5)
    r = tq.sqrt()
    assert torch.allclose(r[1:] - r[:-1], (r[1] - r[0]).expand(5), atol=1e-12)


@pytest.mark.parametrize(
    "schedule", [VP, cp.schedules.EDM(), cp.schedules.VE(), cp.schedules.VPDiscrete.linear()]
)
def test_karras_formula(schedule):
    t0, t1 = schedule.t_max * 0.99, max(schedule.t_max * 1e-3, 2e-3)
    t = grids.karras(schedule, t0, t1, 8, rho=7.0)
    s = torch.exp(-schedule.lambda_(t))  # sigma / alpha
    r = s ** (1 / 7)
    assert torch.allclose(r[1:] - r[:-1], (r[1] - r[0]).expand(8), rtol=1e-8, atol=1e-12)


def test_per_sample_grid_shape():
    t0 = torch.tensor([1.0, 0.5], dtype=torch.float64)
    for name in ("logsnr", "time_uniform", "time_quadratic", "karras"):
        g = grids.get_grid(name, VP, 6, t0, 1e-3)
        assert g.shape == (7, 2) and torch.equal(g[0], t0), name


def test_logsnr_needs_finite_ends():
    with pytest.raises(ValueError, match="finite log-SNR"):
        grids.get_grid("logsnr", VP, 5, 1.0, 0.0)


def test_discrete_maps_integer_steps():
    s = cp.schedules.VPDiscrete.linear()
    t = grids.discrete(s, 10, "trailing", final="sigma_min")
    assert t[0] == 1.0 and t[-1] == 1.0 / 1000
    with pytest.raises(TypeError, match="VPDiscrete"):
        grids.discrete(VP, 10)
    with pytest.raises(ValueError, match="spacing"):
        grids.discrete(s, 10, "uniform")


def test_check_timesteps():
    with pytest.raises(ValueError, match="strictly decreasing"):
        grids.check_timesteps(torch.tensor([1.0, 0.5, 0.5]))
    with pytest.raises(ValueError, match="finite"):
        grids.check_timesteps(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="must lie in"):
        grids.check_timesteps(torch.tensor([1.5, 0.5]), VP)


@pytest.mark.parametrize("schedule", [cp.schedules.EDM(), cp.schedules.RectifiedFlow()])
def test_new_schedules_invert_lambda(schedule):
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64) * schedule.t_max
    assert torch.allclose(schedule.t_of_lambda(schedule.lambda_(t)), t, rtol=1e-12, atol=1e-14)
    # d log alpha / dt and d log sigma / dt match autograd
    tt = t.clone().requires_grad_(True)
    (ga,) = torch.autograd.grad(schedule.log_alpha(tt).sum(), tt)
    (gs,) = torch.autograd.grad(schedule.log_sigma(tt).sum(), tt)
    assert torch.allclose(ga, schedule.d_log_alpha(t), rtol=1e-10, atol=1e-12)
    assert torch.allclose(gs, schedule.d_log_sigma(t), rtol=1e-10)


def test_rectified_flow_velocity_euler_is_exact_for_point_mass():
    """Straight paths: one Euler step in t of the velocity model lands on the data point."""
    rf = cp.schedules.RectifiedFlow()
    mu = torch.tensor([[0.3, -1.0]], dtype=torch.float64)

    def velocity(x, t):  # u = eps - x0 with x0 = mu, eps = (x - (1 - t) mu) / t
        tt = t.reshape(-1, 1).double()
        return (x - (1 - tt) * mu) / tt - mu

    x = torch.randn(4, 2, dtype=torch.float64)
    out = cp.sample(
        velocity,
        x,
        schedule=rf,
        prediction="velocity",
        solver="euler",
        order=1,
        steps=1,
        grid="time_uniform",
        t_start=1.0,
        t_end=0.0,
    )
    assert torch.allclose(out, mu.expand(4, 2), atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 60),
    a=st.floats(0.05, 1.0),
    frac=st.floats(1e-3, 0.9),
    name=st.sampled_from(["logsnr", "time_uniform", "time_quadratic", "karras"]),
)
def test_grids_strictly_decrease(n, a, frac, name):
    g = grids.get_grid(name, VP, n, a, a * frac)
    assert g.shape == (n + 1,) and bool((g[1:] < g[:-1]).all())
    grids.check_timesteps(g, VP)
