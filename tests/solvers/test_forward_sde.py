"""Reverse-SDE registry solvers on Gaussian targets with exact scores (VE and VP, the Langevin corrector on
its own, any rank and dtype), and the forward-SDE simulator against the closed-form marginals.

Complements tests/test_stochastic.py (VP mixtures, strong/weak orders, noise invariants)."""

import pytest
import torch

import companion as cp
from companion.schedules import VE, VPLinear
from companion.solvers import forward_euler_maruyama
from companion.targets import Gaussian

F64 = torch.float64
G = Gaussian([1.0, -2.0], [[0.5, 0.2], [0.2, 0.3]])


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("s", [VPLinear(), VE()], ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("solver", ["euler-maruyama", "pc"])
def test_reverse_sde_moments(s, solver):
    n, t_end = 10000, 1e-3
    x_T = G.sample_t(n, 1.0, s, generator=_gen(0))
    ts = torch.linspace(1.0, t_end, 201, dtype=F64)
    x = cp.sample(G.model(s, "score"), x_T, schedule=s, prediction="score", solver=solver, timesteps=ts,
                  generator=_gen(1))  # fmt: skip
    cov = G.cov_t(t_end, s)
    se = torch.sqrt(torch.diagonal(cov) / n)
    # mean within 4 standard errors plus the O(h) weak error of Euler-Maruyama
    assert bool(((x.mean(0) - G.mean_t(t_end, s)).abs() < 4 * se + 0.02).all())
    assert torch.allclose(torch.cov(x.T), cov, rtol=0.08, atol=0.02)


def _langevin(s, x, t, snr, n_steps, seed):
    """Only the corrector: one PC step over [t, t - 1e-9] with ``n_steps`` Langevin moves at t; the
    predictor's mean step over 1e-9 is the identity up to O(1e-9)."""
    ts = torch.tensor([t, t - 1e-9], dtype=F64)
    return cp.sample(G.model(s, "score"), x, schedule=s, prediction="score", solver="pc", timesteps=ts,
                     snr=snr, corrector_steps=n_steps, generator=_gen(seed))  # fmt: skip


def test_langevin_leaves_target_invariant():
    # Unadjusted Langevin with e = 2 snr^2 sigma_t^2 on a Gaussian of variance v keeps the variance up to
    # the factor 1 / (1 - e / (2 v)) <= 1 / (1 - snr^2) ~ 1.026 (v >= sigma_t^2): inside rtol 0.05.
    s, t, n = VE(), 0.5, 20000
    x = G.sample_t(n, t, s, generator=_gen(2))
    y = _langevin(s, x, t, 0.16, 20, 3)
    assert torch.allclose(torch.cov(y.T), G.cov_t(t, s), rtol=0.05, atol=0.05)
    assert torch.allclose(
        y.mean(0), G.mean_t(t, s), atol=4 * float(G.cov_t(t, s).diagonal().max() / n) ** 0.5 + 0.01
    )


def test_langevin_contracts_towards_target():
    s, t = VPLinear(), 0.3
    x = 3.0 + torch.zeros(2000, 2, dtype=F64)
    y = _langevin(s, x, t, 0.3, 200, 4)
    assert (y.mean(0) - G.mean_t(t, s)).abs().max() < 0.1


@pytest.mark.parametrize("solver", ["euler-maruyama", "pc"])
def test_any_rank_and_dtype(solver):
    s = VPLinear()
    g4 = Gaussian(torch.zeros(4, dtype=F64), 1.0)
    x_T = torch.randn(5, 2, 2, dtype=F64, generator=_gen(5))

    def run(x):
        # the target is 4-D; the model sees (B, 2, 2) states and reshapes
        def model(x, t):
            return g4.model(s, "score")(x.reshape(len(x), 4), t).reshape(x.shape)

        return cp.sample(model, x, schedule=s, prediction="score", solver=solver, steps=19, t_end=1e-3,
                         generator=_gen(6))  # fmt: skip

    a = run(x_T)
    assert a.shape == x_T.shape and a.dtype == F64
    assert torch.equal(a, run(x_T))
    c = run(x_T.float())
    # (float32 draws another normal stream from the same generator, so only shape, dtype, finiteness)
    assert c.dtype == torch.float32 and c.shape == x_T.shape and bool(torch.isfinite(c).all())


def test_forward_euler_maruyama_matches_closed_form_marginals():
    s, n = VPLinear(), 20000
    x0 = torch.full((n, 2), 2.0, dtype=F64)
    x = forward_euler_maruyama(x0, s, torch.linspace(0.0, 0.5, 1001, dtype=F64), generator=_gen(7))
    a, sig = float(s.alpha(0.5)), float(s.sigma(0.5))
    assert torch.allclose(x.mean(0), torch.full((2,), 2.0 * a, dtype=F64), atol=4 * sig / n**0.5 + 2e-3)
    assert torch.allclose(x.var(0), torch.full((2,), sig**2, dtype=F64), rtol=0.04)


def test_forward_euler_maruyama_bad_arguments():
    s, x = VPLinear(), torch.zeros(3, 2, dtype=F64)
    with pytest.raises(ValueError, match="increasing"):
        forward_euler_maruyama(x, s, torch.linspace(1.0, 0.1, 5))
    with pytest.raises(ValueError, match="timesteps"):
        forward_euler_maruyama(x, s, torch.linspace(0.1, 2.0, 5))
    with pytest.raises(TypeError, match="x_0"):
        forward_euler_maruyama(torch.zeros(3, 2, dtype=torch.int64), s, torch.linspace(0.1, 1.0, 5))
