"""companion.noise: counter-based per-sample normals and Brownian paths."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from companion import noise as N

GRID = torch.linspace(1.0, 0.0, 11, dtype=torch.float64)


def _splitmix_ref(x: int) -> int:
    m = (1 << 64) - 1
    x &= m
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & m
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & m
    return x ^ (x >> 31)


def test_mix_is_splitmix64_with_wrapping_int64():
    xs = [0, 1, 12345, 2**62 + 7, -5, -(2**63)]
    got = N._mix(torch.tensor(xs, dtype=torch.int64))
    assert [int(g) & ((1 << 64) - 1) for g in got] == [_splitmix_ref(x) for x in xs]


def test_per_sample_normals_are_standard_and_independent():
    like = torch.zeros(4000, 8, dtype=torch.float64)
    z = N.PerSampleNoise(range(4000)).stream(GRID, like)(3).reshape(-1)
    assert stats.kstest(z.numpy(), "norm").pvalue > 1e-3
    assert abs(float(z.mean())) < 4 / math.sqrt(z.numel())
    zz = z.reshape(4000, 8)
    c = torch.corrcoef(zz.T) - torch.eye(8, dtype=torch.float64)
    assert float(c.abs().max()) < 4 / math.sqrt(4000)
    # different steps and draws are independent streams
    st = N.PerSampleNoise(range(4000)).stream(GRID, like)
    a, b, c2 = st(3).reshape(-1), st(4).reshape(-1), st(3, 1).reshape(-1)
    for u in (b, c2):
        assert abs(float(torch.corrcoef(torch.stack([a, u]))[0, 1])) < 4 / math.sqrt(a.numel())


def test_per_sample_noise_is_batch_and_position_invariant():
    seeds = [11, 5, 7, 3, 99, 0, 42]
    like = torch.zeros(7, 2, 3, dtype=torch.float32)
    batch = N.PerSampleNoise(seeds).stream(GRID, like)
    for b, s in enumerate(seeds):
        alone = N.PerSampleNoise([s]).stream(GRID, like[:1])
        for i, k in [(0, 0), (5, 0), (2, 3)]:
            assert torch.equal(batch(i, k)[b], alone(i, k)[0])
    assert torch.equal(N.PerSampleNoise(seeds).randn(2, 3)[4], N.PerSampleNoise([99]).randn(2, 3)[0])


def test_same_seed_same_noise_different_seed_different_noise():
    like = torch.zeros(3, 5)
    a = N.PerSampleNoise([1, 2, 3]).stream(GRID, like)(0)
    assert torch.equal(a, N.PerSampleNoise([1, 2, 3]).stream(GRID, like)(0))
    b = N.PerSampleNoise([4, 5, 6]).stream(GRID, like)(0)
    assert not torch.isclose(a, b).any()


def test_brownian_path_coarse_increments_are_sums_of_fine_ones():
    fine = torch.linspace(1.0, 0.0, 65, dtype=torch.float64)
    path = N.BrownianPath([3, 8], fine)
    like = torch.zeros(2, 4, dtype=torch.float64)
    dw = path.fine_increments(like)  # ascending time: dw[j] = W(times[j+1]) - W(times[j])
    W = torch.cat([torch.zeros(1, 2, 4, dtype=torch.float64), dw.cumsum(0)])
    for n in (1, 4, 16, 64):
        grid = fine[:: 64 // n]
        st = path.stream(grid, like)
        for i in range(n):
            ja, jb = 64 - 64 // n * i, 64 - 64 // n * (i + 1)  # times index (ascending) of grid[i], grid[i+1]
            expect = (W[ja] - W[jb]) / math.sqrt(float(grid[i] - grid[i + 1]))
            torch.testing.assert_close(st(i), expect, rtol=1e-12, atol=1e-12)


def test_brownian_path_has_brownian_increments_and_is_batch_invariant():
    fine = torch.linspace(0.0, 2.0, 201, dtype=torch.float64)
    like = torch.zeros(3000, 1, dtype=torch.float64)
    path = N.BrownianPath(range(3000), fine)
    w = path.increments(0, 200, like)  # W(2) - W(0) ~ N(0, 2)
    assert stats.kstest((w / math.sqrt(2.0)).reshape(-1).numpy(), "norm").pvalue > 1e-3
    w1 = path.increments(0, 50, like)  # independent of the later piece
    assert abs(float(torch.corrcoef(torch.cat([w1, w - w1], 1).T)[0, 1])) < 4 / math.sqrt(3000)
    alone = N.BrownianPath([1234 % 3000], fine).increments(0, 200, like[:1])
    assert torch.equal(alone[0], w[1234])


def test_brownian_path_rejects_off_grid_times_and_per_sample_grids():
    path = N.BrownianPath([0, 1], torch.linspace(1.0, 0.0, 11, dtype=torch.float64))
    like = torch.zeros(2, 1)
    with pytest.raises(ValueError, match="BrownianPath"):
        path.stream(torch.tensor([1.0, 0.55, 0.0], dtype=torch.float64), like)
    with pytest.raises(ValueError, match="one shared time grid"):
        path.stream(torch.ones(3, 2, dtype=torch.float64), like)
    with pytest.raises(ValueError, match="seeds"):
        path.stream(GRID, torch.zeros(3, 1))


def test_generator_and_injected_noise():
    like = torch.zeros(2, 3, dtype=torch.float64)
    a = N.GeneratorNoise(torch.Generator().manual_seed(0)).stream(GRID, like)
    assert torch.equal(
        a(0), torch.randn(2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    )
    zs = torch.randn(10, 2, 3, dtype=torch.float64)
    inj = N.InjectedNoise(zs).stream(GRID, like)
    assert torch.equal(inj(4), zs[4])
    with pytest.raises(ValueError, match="extra"):
        inj(4, 1)
    with pytest.raises(ValueError, match="draws"):
        N.InjectedNoise(zs[:3]).stream(GRID, like)


def test_bad_arguments():
    with pytest.raises(TypeError, match="seeds"):
        N.PerSampleNoise(3)
    with pytest.raises(TypeError, match="seeds"):
        N.PerSampleNoise([0.5, 1.5])
    with pytest.raises(TypeError, match="generator"):
        N.GeneratorNoise(0)
    with pytest.raises(ValueError, match="not both"):
        N.resolve(N.PerSampleNoise([1]), torch.Generator())
    with pytest.raises(TypeError, match="noise must be"):
        N.resolve(object(), None)
    with pytest.raises(ValueError, match="times"):
        N.BrownianPath([1], [0.0, 0.0])


def test_integer_counter_mixing_matches_tensor_arithmetic():
    # Step counters are mixed in Python integers (no host-to-device copy per step); the bits must equal
    # the int64 tensor arithmetic that tensor counters (Brownian interval indices) go through.
    from companion.noise import _GOLDEN, _mix, _mix_int

    cs = [0, 1, -1, -2, 7, 199, 2**40, -(2**62), 2**63 - 1, -(2**63)]
    as_tensor = _mix(torch.tensor(cs, dtype=torch.int64) * _GOLDEN + _GOLDEN)
    assert as_tensor.tolist() == [_mix_int(c) for c in cs]
