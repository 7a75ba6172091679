"""diffusers schedulers and UNets as companion schedules, grids and models (diffusers is not imported here).

* :func:`schedule_from_scheduler`: a scheduler's ``alphas_cumprod`` as a :class:`VPDiscrete` (step n at
  t = (n + 1)/N, as in the official DPM-Solver);
* :func:`times_from_sigmas`: a scheduler's sigma grid (sigma/alpha, after ``set_timesteps``) as times t, so
  that ``companion.sample(..., timesteps=...)`` walks the same grid (sigma = 0 maps to t = 0);
* :func:`times_from_timesteps`: integer timesteps (DDIM, PNDM) as times, with alpha = 1 appended;
* :func:`unet_model`: a diffusers UNet as ``model(x, t)``, fed the integer-scale timestep.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..schedules import VPDiscrete

__all__ = ["schedule_from_scheduler", "times_from_sigmas", "times_from_timesteps", "unet_model"]


def schedule_from_scheduler(scheduler) -> VPDiscrete:
    """The discrete VP schedule of a diffusers scheduler (its ``alphas_cumprod``, in float64)."""
    ac = getattr(scheduler, "alphas_cumprod", None)
    if ac is None:
        raise TypeError(f"{type(scheduler).__name__} has no alphas_cumprod (not a discrete DDPM scheduler)")
    return VPDiscrete(alphas_cumprod=torch.as_tensor(ac, dtype=torch.float64))


def times_from_sigmas(schedule: VPDiscrete, sigmas: Tensor) -> Tensor:
    """Times t with sigma(t)/alpha(t) = ``sigmas`` (diffusers' VE sigmas); sigma = 0 maps to t = 0.

    diffusers keeps sigmas in float32, which can put the first one an ulp past the last training step;
    the times are clamped to the schedule's domain.
    """
    s = torch.as_tensor(sigmas, dtype=torch.float64)
    t = schedule.t_of_lambda(-torch.log(torch.where(s > 0, s, torch.ones_like(s))))
    return torch.where(s > 0, t, torch.zeros_like(t)).clamp(schedule.t_min, schedule.t_max)


def times_from_timesteps(schedule: VPDiscrete, timesteps: Tensor, final_alpha_one: bool = True) -> Tensor:
    """Integer timesteps n (decreasing) as t = (n + 1)/N, followed by t = 0 (alpha = 1) or t = 1/N."""
    t = (torch.as_tensor(timesteps, dtype=torch.float64) + 1.0) / schedule.N
    last = torch.tensor([0.0 if final_alpha_one else 1.0 / schedule.N], dtype=torch.float64)
    return torch.cat([t, last])


def unet_model(unet, schedule: VPDiscrete, **kwargs) -> Callable[[Tensor, Tensor], Tensor]:
    """``model(x, t)`` for a diffusers UNet: calls ``unet(x, n, **kwargs).sample`` with the integer-scale
    timestep n = N t - 1 (a float for times between training steps). Pass the UNet's ``prediction_type``
    to ``companion.sample`` as ``prediction`` (epsilon, sample or v_prediction)."""

    def model(x: Tensor, t: Tensor) -> Tensor:
        return unet(x, schedule.discrete_timestep(t).to(x.dtype), **kwargs).sample

    return model
