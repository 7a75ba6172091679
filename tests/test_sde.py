"""Reverse-SDE samplers on Gaussian targets with exact scores: moments, reproducibility, bad arguments."""

import pytest
import torch

from companion.schedules import VE, VPLinear
from companion.solvers.sde import euler_maruyama, langevin_corrector, predictor_corrector
from companion.targets import Gaussian

F64 = torch.float64
G = Gaussian([1.0, -2.0], [[0.5, 0.2], [0.2, 0.3]])


@pytest.mark.parametrize("s", [VPLinear(), VE()], ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("corrector", [0, 1])
def test_reverse_sde_moments(s, corrector):
    n, t_end = 10000, 1e-3
    x_T = G.sample_t(n, 1.0, s, generator=torch.Generator().manual_seed(0))
    ts = torch.linspace(1.0, t_end, 201, dtype=F64)
    x = predictor_corrector(
        G.model(s, "score"),
        x_T,
        s,
        ts,
        n_corrector_steps=corrector,
        generator=torch.Generator().manual_seed(1),
    )
    cov = G.cov_t(t_end, s)
    se = torch.sqrt(torch.diagonal(cov) / n)
    # mean within 4 standard errors plus the O(h) weak error of Euler-Maruyama
    assert bool(((x.mean(0) - G.mean_t(t_end, s)).abs() < 4 * se + 0.02).all())
    assert torch.allclose(torch.cov(x.T), cov, rtol=0.08, atol=0.02)


def test_langevin_leaves_target_invariant():
    s, t, n = VE(), 0.5, 20000
    x = G.sample_t(n, t, s, generator=torch.Generator().manual_seed(2))
    y = langevin_corrector(
        G.model(s, "score"), x, t, s, snr=0.16, n_steps=20, generator=torch.Generator().manual_seed(3)
    )
    assert torch.allclose(torch.cov(y.T), G.cov_t(t, s), rtol=0.05, atol=0.05)
    assert torch.allclose(
        y.mean(0), G.mean_t(t, s), atol=4 * float(G.cov_t(t, s).diagonal().max() / n) ** 0.5 + 0.01
    )


def test_langevin_contracts_towards_target():
    s, t = VPLinear(), 0.3
    x = 3.0 + torch.zeros(2000, 2, dtype=F64)
    y = langevin_corrector(
        G.model(s, "score"), x, t, s, snr=0.3, n_steps=200, generator=torch.Generator().manual_seed(4)
    )
    assert (y.mean(0) - G.mean_t(t, s)).abs().max() < 0.1


def test_reproducible_and_any_rank():
    s = VPLinear()
    g4 = Gaussian(torch.zeros(4, dtype=F64), 1.0)
    x_T = torch.randn(5, 2, 2, dtype=F64, generator=torch.Generator().manual_seed(5))
    ts = torch.linspace(1.0, 1e-3, 20, dtype=F64)
    a = euler_maruyama(g4.model(s, "score"), x_T, s, ts, generator=torch.Generator().manual_seed(6))
    b = euler_maruyama(g4.model(s, "score"), x_T, s, ts, generator=torch.Generator().manual_seed(6))
    assert a.shape == x_T.shape and torch.equal(a, b)
    c = predictor_corrector(
        g4.model(s, "score"), x_T.float(), s, ts, generator=torch.Generator().manual_seed(6)
    )
    assert c.dtype == torch.float32


def test_bad_arguments():
    s, x = VPLinear(), torch.zeros(3, 2, dtype=F64)
    sf = G.model(s, "score")
    with pytest.raises(ValueError, match="decreasing"):
        euler_maruyama(sf, x, s, torch.linspace(0.1, 1.0, 5))
    with pytest.raises(ValueError, match="timesteps"):
        euler_maruyama(sf, x, s, torch.linspace(2.0, 0.1, 5))
    with pytest.raises(ValueError, match="snr"):
        langevin_corrector(sf, x, 0.5, s, snr=-1.0)
    with pytest.raises(ValueError, match="n_corrector_steps"):
        predictor_corrector(sf, x, s, torch.linspace(1.0, 0.1, 5), n_corrector_steps=-1)


def test_forward_euler_maruyama_matches_closed_form_marginals():
    from companion.solvers.sde import forward_euler_maruyama

    s, n = VPLinear(), 20000
    x0 = torch.full((n, 2), 2.0, dtype=F64)
    x = forward_euler_maruyama(
        x0, s, torch.linspace(0.0, 0.5, 1001, dtype=F64), generator=torch.Generator().manual_seed(7)
    )
    a, sig = float(s.alpha(0.5)), float(s.sigma(0.5))
    assert torch.allclose(x.mean(0), torch.full((2,), 2.0 * a, dtype=F64), atol=4 * sig / n**0.5 + 2e-3)
    assert torch.allclose(x.var(0), torch.full((2,), sig**2, dtype=F64), rtol=0.04)
