"""MMD: unbiased (centred on zero for equal laws), positive for different laws, bandwidth rule, bad input."""

import math

import pytest
import torch

from companion.lab.metrics import binned_kl, median_bandwidth, mmd2, mmd2_noise_floor

F64 = torch.float64


def normal(shift):
    return lambda n, g: torch.randn(n, 2, generator=g, dtype=F64) + shift


def test_equal_laws_centred_on_zero_and_shift_detected():
    g = torch.Generator().manual_seed(0)
    floor = mmd2_noise_floor(normal(0.0), 400, 20, g, bandwidth=1.0)
    # unbiased: the mean over repetitions is within 4 standard errors of zero
    assert abs(float(floor.mean())) < 4 * float(floor.std()) / 20**0.5
    shifted = mmd2(normal(0.5)(400, g), normal(0.0)(400, g), bandwidth=1.0)
    assert shifted > float(floor.mean()) + 5 * float(floor.std())


def test_closed_form_for_point_sets():
    # x = {0, 0}, y = {1, 1} in 1-D with h = 1: k_xx = k_yy = 1, k_xy = exp(-1/2)
    x, y = torch.zeros(2, 1, dtype=F64), torch.ones(2, 1, dtype=F64)
    assert mmd2(x, y, 1.0) == pytest.approx(2 - 2 * math.exp(-0.5), rel=1e-12)


def test_median_bandwidth_and_any_rank():
    y = torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]], dtype=F64)
    assert median_bandwidth(y) == pytest.approx(5.0)
    x = torch.randn(10, 2, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    assert mmd2(x, x.reshape(10, 4) + 0.0) == pytest.approx(mmd2(x.reshape(10, 4), x.reshape(10, 4)))


def test_bad_input():
    with pytest.raises(ValueError, match="same event size"):
        mmd2(torch.zeros(3, 2), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="bandwidth"):
        mmd2(torch.zeros(3, 2), torch.zeros(3, 2), bandwidth=0.0)
    with pytest.raises(ValueError, match="x must"):
        mmd2(torch.zeros(1, 2), torch.zeros(3, 2))


def test_binned_kl_recovers_a_gaussian_shift():
    """KL(N(m, 1) || N(0, 1)) = m^2 / 2; the plug-in estimate on fine bins with many samples is within a few
    bias floors of it, and on exact samples it is of the order of the floor."""
    g = torch.Generator().manual_seed(0)
    edges = torch.linspace(-6, 6, 121, dtype=torch.float64)

    def cdf(e):
        return 0.5 * (1 + torch.erf(e / 2**0.5))

    exact = torch.randn(200_000, 1, generator=g, dtype=torch.float64)
    kl0, floor = binned_kl(exact, cdf, edges)
    assert abs(kl0) <= 3 * floor
    kl, floor = binned_kl(exact + 0.5, cdf, edges)
    assert abs(kl - 0.125) <= 5 * floor + 2e-3
    with pytest.raises(ValueError, match="edges"):
        binned_kl(exact, cdf, torch.tensor([1.0, 0.0]))
