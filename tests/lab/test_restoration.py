"""The digits restoration helpers of chapter 08: degradations and image metrics."""

from __future__ import annotations

import pytest
import torch

from companion.lab import data, restoration


def test_degradations_do_what_they_say():
    x = data.digits("test")[0][:64]
    g = torch.Generator().manual_seed(0)
    noisy = restoration.degrade(x, "noise", g)
    assert abs(float((noisy - x).std()) - restoration.NOISE_STD) < 0.02
    blurred = restoration.degrade(x, "blur", g)
    k = restoration._blur_kernel(torch.float64)
    assert abs(float(k.sum()) - 1.0) < 1e-12
    # the blur of a constant image is that constant away from the (zero-padded) border
    ones = restoration.degrade(torch.ones(1, 1, 8, 8), "blur", g)
    assert torch.allclose(ones[..., 1:-1, 1:-1], torch.ones(1, 1, 6, 6))
    assert blurred.shape == x.shape
    holed = restoration.degrade(x + 2.0, "inpaint", g)  # no clean pixel is 0 after the shift
    assert ((holed == 0).flatten(1).sum(1) == 16).all()  # one 4x4 hole per image
    with pytest.raises(ValueError, match="kind"):
        restoration.degrade(x, "jpeg", g)


def test_psnr_and_ssim():
    x = data.digits("test")[0][:16].double()
    assert torch.allclose(restoration.ssim(x, x), torch.ones(16, dtype=torch.float64))
    noisy = x + 0.1
    # a constant offset of 0.1 on the range [-1, 1]: PSNR = 10 log10(4 / 0.01) (before clipping)
    assert torch.allclose(
        restoration.psnr(x * 0.5 + 0.1, x * 0.5), torch.full((16,), 26.0206, dtype=torch.float64), atol=1e-3
    )
    assert (restoration.ssim(noisy + 0.3 * torch.randn_like(x), x) < 1).all()
    s = restoration.schedule()
    assert s.T == 100 and s.sigma_inf == restoration.SIGMA_INF
