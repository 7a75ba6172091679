"""Mean-reverting restoration of sklearn's 8x8 digits (chapter 08): degradations, the MR schedule the
restoration nets learn, and image metrics (PSNR, SSIM).

Degradations of images in [-1, 1] (each a fixed operator plus, for ``noise``, fresh Gaussian noise):

* ``noise``:   mu = x + 0.3 z (additive Gaussian noise, std 0.3 = 15% of the pixel range);
* ``blur``:    mu = K * x, K the normalised 3x3 Gaussian kernel of std 1 pixel (zero padding);
* ``inpaint``: mu = x with a random 4x4 square (inside the 8x8 image) set to 0, the mid-grey.

The nets learn the IR-SDE's discrete cosine tables (``MeanReverting.irsde``, T = 100, eps = 0.005) with
sigma_inf = :data:`SIGMA_INF`, times t ~ U(0, 1) (the schedule interpolates between its knots).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from ..schedules import MeanReverting

__all__ = ["DEGRADATIONS", "SIGMA_INF", "schedule", "degrade", "psnr", "ssim"]

DEGRADATIONS = ("noise", "blur", "inpaint")
SIGMA_INF = 0.5
NOISE_STD = 0.3


def schedule() -> MeanReverting:
    """The restoration nets' schedule: IR-SDE cosine tables, T = 100, eps = 0.005, sigma_inf = 0.5."""
    return MeanReverting.irsde(sigma_inf=SIGMA_INF, T=100, theta="cosine", eps=0.005)


def _blur_kernel(dtype=torch.float32) -> Tensor:
    g = torch.exp(-0.5 * torch.tensor([-1.0, 0.0, 1.0], dtype=dtype) ** 2)
    k = g[:, None] * g[None, :]
    return (k / k.sum()).reshape(1, 1, 3, 3)


def degrade(x: Tensor, kind: str, generator: torch.Generator) -> Tensor:
    """The degraded images mu of clean digits ``x`` (B, 1, 8, 8) for degradation ``kind``."""
    if kind not in DEGRADATIONS:
        raise ValueError(f"kind must be one of {DEGRADATIONS}; got {kind!r}")
    if kind == "noise":
        return x + NOISE_STD * torch.randn(x.shape, generator=generator, dtype=x.dtype)
    if kind == "blur":
        return F.conv2d(x, _blur_kernel(x.dtype), padding=1)
    b = x.shape[0]
    r = torch.randint(0, 5, (b,), generator=generator)
    c = torch.randint(0, 5, (b,), generator=generator)
    rows = torch.arange(8)[None, :, None]
    cols = torch.arange(8)[None, None, :]
    hole = ((rows >= r[:, None, None]) & (rows < r[:, None, None] + 4)) & (
        (cols >= c[:, None, None]) & (cols < c[:, None, None] + 4)
    )
    return torch.where(hole[:, None], torch.zeros((), dtype=x.dtype), x)


def psnr(x: Tensor, ref: Tensor) -> Tensor:
    """Per-image PSNR in dB for images in [-1, 1] (peak-to-peak range 2), after clipping x to [-1, 1]."""
    mse = (x.clamp(-1, 1) - ref).square().flatten(1).mean(1)
    return 10 * torch.log10(4.0 / mse)


def ssim(x: Tensor, ref: Tensor) -> Tensor:
    """Per-image SSIM (Wang et al. 2004) with a 3x3 uniform window (the images are 8x8), data range 2,
    C1 = (0.01 * 2)^2, C2 = (0.03 * 2)^2, on x clipped to [-1, 1]; mean over the valid 6x6 windows."""
    x = x.clamp(-1, 1).to(torch.float64)
    y = ref.to(torch.float64)
    c1, c2 = (0.01 * 2) ** 2, (0.03 * 2) ** 2
    w = torch.full((1, 1, 3, 3), 1 / 9, dtype=torch.float64)
    mx, my = F.conv2d(x, w), F.conv2d(y, w)
    vx = F.conv2d(x * x, w) - mx**2
    vy = F.conv2d(y * y, w) - my**2
    cxy = F.conv2d(x * y, w) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)
