"""Data sets: digits in [-1, 1] with a disjoint stratified split; toy sets reproducible from a generator."""

from __future__ import annotations

import pytest
import torch

from companion.lab import data


def test_digits_range_shapes_and_split():
    x, y = data.digits("all")
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    # pixel values 0..16 map to multiples of 1/8
    torch.testing.assert_close((x + 1) * 8, torch.round((x + 1) * 8))
    train_idx, test_idx = data.digits_split(x.shape[0], y)
    assert set(train_idx.tolist()).isdisjoint(test_idx.tolist())
    assert train_idx.numel() + test_idx.numel() == 1797
    counts = torch.bincount(y[test_idx], minlength=10).double() / torch.bincount(y, minlength=10)
    assert bool(((counts - 0.2).abs() < 0.01).all())  # stratified: 20% of every class held out
    xt, yt = data.digits("test")
    torch.testing.assert_close(xt, x[test_idx])
    assert data.digits("train")[0].shape[0] == train_idx.numel()
    with pytest.raises(ValueError, match="split"):
        data.digits("val")


@pytest.mark.parametrize("name", sorted(data.TOY_SETS))
def test_toy_sets_are_reproducible_and_centred(name):
    a = data.sample_toy(name, 4000, torch.Generator().manual_seed(3))
    b = data.sample_toy(name, 4000, torch.Generator().manual_seed(3))
    c = data.sample_toy(name, 4000, torch.Generator().manual_seed(4))
    assert a.shape == (4000, 2) and a.dtype == torch.float32
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)
    assert bool((a.abs() < 4).all()) and bool((a.mean(0).abs() < 0.5).all())


def test_checkerboard_occupies_only_black_squares():
    p = data.checkerboard(5000, torch.Generator().manual_seed(0))
    cell = torch.floor(p + 2).long()  # 4x4 grid of unit squares on [-2, 2]^2
    assert bool(((cell[:, 0] + cell[:, 1]) % 2 == 0).all())


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="toy data set"):
        data.sample_toy("spiral", 10)
    with pytest.raises(ValueError, match="n must"):
        data.two_moons(0)
    with pytest.raises(TypeError, match="generator"):
        data.eight_gaussians(5, generator=0)
