"""Euler-Maruyama: on the reverse-time SDE (a registered sampler) and on the forward SDE (a simulator of the
noising process, for checking closed-form marginals against the SDE itself)."""

from __future__ import annotations

import torch
from torch import Tensor

from .._device import host_to
from ..schedules import Schedule
from .base import Points
from .problem import Problem
from .registry import OrderCheck, choice, flag, register
from .reverse_sde import ReverseSDESolver, grid_points, run_noisy

__all__ = ["EulerMaruyama", "em_coefs", "forward_euler_maruyama"]

_DENOISE = (
    "final_noise=False returns the last step's mean: the dropped last increment g sqrt(dt), about "
    "0.06/sqrt(n) on the test problem against 1.9/n for the rest, makes the strong order 1/2 only past "
    "~5000 steps (fits 0.96-0.98 over 40-320); final_noise=True is checked at order 1"
)


def em_coefs(schedule, pts: Points, final_noise: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Euler-Maruyama on the reverse SDE in t with the noise prediction (score = -eps/sigma):
    x_{i+1} = (1 - f_i dt) x_i - (g_i^2 dt / sigma_i) eps_i + g_i sqrt(dt) z_i, dt = t_i - t_{i+1}."""
    t0, t1 = pts.t[:-1], pts.t[1:]
    dt = t0 - t1
    g2 = schedule.g2(t0)
    A = 1.0 - schedule.f(t0) * dt
    B = -g2 * dt / pts.sigma[:-1]
    std = torch.sqrt(g2 * dt)
    if not final_noise:
        std[-1] = 0.0
    return A, B[:, None], std


@register("euler-maruyama", "Euler-Maruyama on the reverse SDE; strong order 1 (additive noise)")
class EulerMaruyama(ReverseSDESolver):
    """Euler-Maruyama on the reverse SDE dx = [f x - g^2 grad log p_t] dt + g dW_bar (Song et al. 2021,
    eq. 6). 1 NFE per step; strong order 1 (additive noise), weak order 1.
    ``final_noise=False`` (default) returns the last step's mean, as Song et al.'s code (``denoise``): the
    last increment g sqrt(dt) is noise the sampler has no step left to remove."""

    order: int = choice(1, (1,), "first order only")
    final_noise: bool = flag(False, "add the last step's noise (False: return the last step's mean)")

    def order_check(self) -> OrderCheck:
        if self.final_noise:
            return OrderCheck(1.0, kind="strong")
        return OrderCheck(None, kind="strong", reason=_DENOISE)

    def __call__(self, prob: Problem) -> Tensor:
        pts = grid_points(prob)
        A, B, std = em_coefs(prob.schedule, pts, self.final_noise)
        return run_noisy(prob, "eps", pts, [1] * len(A), A, B, std)


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
