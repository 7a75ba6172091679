"""The log-density Fokker-Planck residual: zero for exact log-densities on every kind of schedule, exactly
c'(t) for u + c(t), and Hutchinson's Laplacian unbiased against the exact one (a z-test over seeds)."""

from __future__ import annotations

import math

import pytest
import torch

import companion as cp
from companion.fokker_planck import EXACT_MAX_DIM, residual
from companion.targets.gaussian import random_mixture

F64 = torch.float64
SCHEDULES = {
    "vp": cp.schedules.VPLinear(),
    "ve": cp.schedules.VE(sigma_min=0.01, sigma_max=50.0),
    "subvp": cp.schedules.SubVP(),
}


def mixture_2d():
    means = torch.tensor([[-2.0, 0.0], [1.0, 1.5], [0.5, -1.0]], dtype=F64)
    return cp.targets.GaussianMixture(means, torch.tensor([0.3, 0.1, 0.05], dtype=F64), [0.5, 0.3, 0.2])


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("d", [2, 5])
def test_exact_mixture_log_density_has_zero_residual(name, d):
    sched = SCHEDULES[name]
    gmm = mixture_2d() if d == 2 else random_mixture(d, 1.5, 0.05, 0.4, seed=3)
    g = torch.Generator().manual_seed(0)
    x = 2 * torch.randn(256, d, generator=g, dtype=F64)
    t = 0.02 + 0.96 * torch.rand(256, generator=g, dtype=F64)
    r = residual(lambda x, t: gmm.log_prob(x, t, sched), sched, x, t)
    # The terms of R are of order 1e2-1e4 at small t (VE: sigma_max^2 growth): the bound is relative to them.
    assert float(r.abs().max()) < 1e-6


def test_additive_function_of_time_gives_its_derivative():
    sched, gmm = SCHEDULES["vp"], mixture_2d()
    x = torch.randn(64, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    t = torch.linspace(0.05, 0.95, 64, dtype=F64)
    r = residual(lambda x, t: gmm.log_prob(x, t, sched) + torch.sin(3 * t), sched, x, t)
    torch.testing.assert_close(r, 3 * torch.cos(3 * t), atol=1e-9, rtol=0)


def test_hutchinson_is_unbiased():
    """Mean over 400 seeds of the one-probe estimate minus the exact residual: |z| < 4 at every point, and a
    wrong estimator (the probe's z^T H z without the 1/2 on g^2) is rejected at the same size."""
    d = EXACT_MAX_DIM + 4
    sched, gmm = SCHEDULES["vp"], random_mixture(d, 1.0, 0.1, 0.5, seed=4)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(8, d, generator=g, dtype=F64)
    t = torch.full((8,), 0.3, dtype=F64)

    def u(x, t):
        return gmm.log_prob(x, t, sched)

    exact = residual(u, sched, x, t, exact=True)
    draws = torch.stack(
        [residual(u, sched, x, t, generator=torch.Generator().manual_seed(s)) for s in range(400)]
    )
    z = (draws.mean(0) - exact) / (draws.std(0) / math.sqrt(400))
    assert float(z.abs().max()) < 4, z
    assert float(draws.std(0).min()) > 0  # the estimate is random above EXACT_MAX_DIM
    wrong = draws + 0.5 * sched.g2(t) * gmm.laplacian(x, t, sched)  # drops the Laplacian's share of R
    zw = (wrong.mean(0) - exact) / (wrong.std(0) / math.sqrt(400))
    assert float(zw.abs().max()) > 4


def test_same_seed_same_estimate_and_probes_average():
    d = EXACT_MAX_DIM + 1
    sched, gmm = SCHEDULES["vp"], random_mixture(d, 1.0, 0.1, 0.5, seed=5)
    x = torch.randn(4, d, dtype=F64, generator=torch.Generator().manual_seed(0))

    def u(x, t):
        return gmm.log_prob(x, t, sched)

    a = residual(u, sched, x, 0.5, generator=torch.Generator().manual_seed(7))
    b = residual(u, sched, x, 0.5, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    exact = residual(u, sched, x, 0.5, exact=True)
    many = residual(u, sched, x, 0.5, probes=512, generator=torch.Generator().manual_seed(8))
    one = torch.stack(
        [residual(u, sched, x, 0.5, generator=torch.Generator().manual_seed(s)) for s in range(32)]
    )
    assert float((many - exact).abs().max()) < float((one - exact).abs().mean(0).max())


def test_bad_arguments_are_named():
    sched, gmm = SCHEDULES["vp"], mixture_2d()

    def u(x, t):
        return gmm.log_prob(x, t, sched)

    x = torch.randn(4, 2, dtype=F64)
    with pytest.raises(TypeError, match="schedule"):
        residual(u, "vp", x, 0.5)
    with pytest.raises(ValueError, match="x must"):
        residual(u, sched, torch.randn(4, dtype=F64), 0.5)
    with pytest.raises(ValueError, match="t must"):
        residual(u, sched, x, torch.full((3,), 0.5, dtype=F64))
    with pytest.raises(ValueError, match="t must lie"):
        residual(u, sched, x, 1.5)
    with pytest.raises(ValueError, match="log_density must return"):
        residual(lambda x, t: x, sched, x, 0.5)
    with pytest.raises(ValueError, match="probes"):
        residual(u, sched, x, 0.5, exact=False, probes=0)
    with pytest.raises(TypeError, match="log_density"):
        residual(None, sched, x, 0.5)
