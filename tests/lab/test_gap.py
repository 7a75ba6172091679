"""W2 between sample sets on Gaussians where it is known; the ODE-SDE gap of the exact score is within the
two-sample noise floor, and a non-conservative perturbation k J x of the score (J a rotation) opens a gap
that grows with k; the potential network's eps is -sigma grad u; the bound's pieces on closed forms."""

from __future__ import annotations

import math

import pytest
import torch

import companion as cp
from companion.lab import gap
from companion.lab.metrics import W2_EXACT_MAX, w2_squared
from companion.lab.models import PotentialMLP

F64 = torch.float64
SCHED = cp.schedules.VPLinear()


def gaussians(n, g):
    """N(0, I) and N(m, diag(s^2)) samples in 2-D; W2^2 = |m|^2 + sum (1 - s)^2 = 0.5 + 0.25 = 0.75."""
    m, s = torch.tensor([0.5, -0.5], dtype=F64), torch.tensor([1.0, 1.5], dtype=F64)
    return torch.randn(n, 2, generator=g, dtype=F64), m + s * torch.randn(n, 2, generator=g, dtype=F64)


def test_exact_w2_of_a_translation_is_the_shift():
    x = torch.randn(500, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    assert w2_squared(x, x + torch.tensor([0.3, -0.4], dtype=F64)) == pytest.approx(0.25, rel=1e-9)


def test_exact_and_histogram_w2_on_gaussians_within_the_noise_floor():
    g = torch.Generator().manual_seed(1)
    exact = [w2_squared(*gaussians(2000, g)) for _ in range(4)]
    floor = [w2_squared(gaussians(2000, g)[0], gaussians(2000, g)[0]) for _ in range(4)]
    # The empirical W2^2 overshoots the true 0.75 by about the same-law floor (two-sample noise).
    assert abs(sum(exact) / 4 - 0.75) < 2 * max(floor)
    x, y = gaussians(20_000, g)
    hist = w2_squared(x, y, "histogram", bins=64, lim=6.0)
    assert abs(hist - 0.75) < 0.05  # bin width 3/16, quantisation of order width^2 / 6 per axis


def test_sliced_w2_closed_form_for_a_shift():
    """Sliced W2^2 of N(0, I) vs N(m, I): E_theta (theta . m)^2 = |m|^2 / d."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(20_000, 2, generator=g, dtype=F64)
    m = torch.tensor([1.0, 1.0], dtype=F64)
    y = torch.randn(20_000, 2, generator=g, dtype=F64) + m
    assert w2_squared(x, y, "sliced", projections=512, generator=g) == pytest.approx(1.0, abs=0.05)


def test_w2_bad_arguments():
    x = torch.randn(10, 2, dtype=F64)
    with pytest.raises(ValueError, match="method"):
        w2_squared(x, x, "nope")
    with pytest.raises(ValueError, match="same event size"):
        w2_squared(x, torch.randn(10, 3, dtype=F64))
    with pytest.raises(ValueError, match="at most"):
        big = torch.zeros(W2_EXACT_MAX + 1, 2, dtype=F64)
        w2_squared(big, x)
    with pytest.raises(ValueError, match="generator"):
        w2_squared(x, x, "sliced")
    with pytest.raises(ValueError, match="2-D"):
        w2_squared(torch.randn(10, 3), torch.randn(10, 3), "histogram")


def _mixture():
    means = torch.tensor([[-1.5, 0.0], [1.5, 0.5], [0.0, -1.5]], dtype=F64)
    return cp.targets.GaussianMixture(means, torch.full((3,), 0.1, dtype=F64))


def _gap(model, n, seed):
    g = torch.Generator().manual_seed(seed)
    x_T = torch.randn(n, 2, generator=g, dtype=F64)
    out = gap.sample_pair(model, x_T, SCHED, steps=100, generator=g)
    return w2_squared(out["ode"], out["sde"])


def test_exact_score_closes_the_gap():
    """W2^2(ODE, SDE) with the exact score is within 1.5x the two-sample floor W2^2(p_0, p_0') at n = 2000
    (the discretisations' bias at 100 steps is far below it)."""
    gmm = _mixture()
    g = torch.Generator().manual_seed(3)
    floor = (
        sum(w2_squared(gmm.sample(2000, generator=g), gmm.sample(2000, generator=g)) for _ in range(3)) / 3
    )
    assert _gap(gmm.model(SCHED, "eps"), 2000, 0) < 1.5 * floor


def test_a_rotational_perturbation_opens_a_gap_that_grows_with_k():
    """s_k = s + k J x with J the rotation by pi/2 (divergence-free, not a gradient): common random numbers
    across k, so the gaps are compared on the same noise."""
    gmm = _mixture()
    J = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=F64)
    exact = gmm.model(SCHED, "eps")

    def perturbed(k):
        # eps = -sigma s, so s + k J x is eps - sigma k J x
        return lambda x, t: exact(x, t) - k * SCHED.sigma(t)[:, None].to(x.dtype) * x @ J.T

    gaps = [_gap(perturbed(k), 2000, 0) for k in (0.0, 0.5, 1.0, 2.0)]
    assert all(a < b for a, b in zip(gaps, gaps[1:], strict=False)), gaps
    assert gaps[-1] > 5 * gaps[0]


def test_potential_eps_is_minus_sigma_grad_u():
    net = PotentialMLP(hidden=16, depth=2).double().eval()
    x = torch.randn(6, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    t = torch.linspace(0.01, 0.9, 6, dtype=F64)
    xg = x.clone().requires_grad_(True)
    (grad_u,) = torch.autograd.grad(net.potential(xg, t).sum(), xg)
    torch.testing.assert_close(net(x, t), -net.sigma(t)[:, None] * grad_u)
    torch.testing.assert_close(net.sigma(t), SCHED.sigma(t))
    with torch.no_grad():
        assert not net(x, t).requires_grad  # sampling builds no graph


def test_kde_score_and_hessian_on_closed_forms():
    g = torch.Generator().manual_seed(4)
    centres = torch.randn(20_000, 2, generator=g, dtype=F64)
    x = torch.tensor([[0.5, -0.5], [1.0, 0.0]], dtype=F64)
    # N(0, I) smoothed by N(0, h^2 I): score -x / (1 + h^2)
    torch.testing.assert_close(gap.kde_score(centres, x, 0.3), -x / 1.09, atol=0.05, rtol=0)
    lam = gap.hessian_max_eig(lambda x, t: -(x * torch.tensor([1.0, 3.0], dtype=F64) * x).sum(1), x, 0.5)
    torch.testing.assert_close(lam, torch.full((2,), -2.0, dtype=F64))


def test_bound_sees_a_score_that_is_not_the_samples_score():
    """On samples of p_t, ||delta_t|| with the exact score of p_t is the KDE's own error; with the score
    plus 2 J x (J a rotation) it is larger at every time, and so is the right-hand side."""
    gmm = _mixture()
    g = torch.Generator().manual_seed(5)
    J = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=F64)
    times = [1.0, 0.75, 0.5, 0.25, 0.1]
    path = [gmm.sample_t(4000, t, SCHED, generator=g) for t in times]

    def run(k):
        return gap.bound(
            lambda x, t: gmm.log_prob(x, t, SCHED),
            lambda x, t: gmm.score(x, t, SCHED) + k * x @ J.T,
            SCHED,
            times,
            path,
            path,
            bandwidth=lambda t: 0.5 * float(SCHED.sigma(torch.tensor(t))),
        )

    exact, rotated = run(0.0), run(2.0)
    assert all(math.isfinite(v) and v >= 0 for v in exact["delta"])
    assert all(a < b for a, b in zip(exact["delta"], rotated["delta"], strict=True))
    assert exact["rhs"] < rotated["rhs"]
