"""Forward-SDE simulation: Euler-Maruyama on dx = f(t) x dt + g(t) dW, forward in time.

It knows only f and g^2 (derived from the schedule's alpha_t, sigma_t), so it checks the closed-form
marginals N(alpha_t x_0, sigma_t^2 I) against the SDE itself. The reverse-time samplers (Euler-Maruyama,
predictor-corrector, ...) are registry solvers in :mod:`companion.solvers.stochastic`, used through
``companion.sample(..., solver="euler-maruyama" | "pc" | ...)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._device import host_to
from ..schedules import Schedule

__all__ = ["forward_euler_maruyama"]


def forward_euler_maruyama(
    x_0: Tensor, schedule: Schedule, timesteps, *, generator: torch.Generator | None = None
) -> Tensor:
    """Euler-Maruyama on the forward SDE dx = f x dt + g dW (Song et al. 2021, eq. 5 with linear drift) over
    increasing ``timesteps``; returns x at the last time. Strong order 1 (additive noise), 0 NFE.
    """
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a companion.schedules.Schedule; got {type(schedule).__name__}")
    if not isinstance(x_0, Tensor) or not x_0.is_floating_point() or x_0.ndim < 1:
        raise TypeError("x_0 must be a floating-point tensor of shape (B, ...)")
    ts = torch.as_tensor(timesteps, dtype=torch.float64).detach().cpu()
    if ts.ndim != 1 or ts.numel() < 2:
        raise ValueError(f"timesteps must be a 1-D tensor of at least 2 times; got shape {tuple(ts.shape)}")
    if not bool((ts[1:] > ts[:-1]).all()):
        raise ValueError("timesteps must be strictly increasing (from data towards noise)")
    schedule.check_t(ts, "timesteps")
    h = ts[1:] - ts[:-1]
    keep = host_to(1.0 + h * schedule.f(ts[:-1]), x_0.device, x_0.dtype)
    noise = host_to(torch.sqrt(schedule.g2(ts[:-1]) * h), x_0.device, x_0.dtype)
    x = x_0
    for i in range(h.numel()):
        x = keep[i] * x + noise[i] * torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return x
