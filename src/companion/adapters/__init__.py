"""Adapters from other libraries' models and schedules to companion's ``model(x, t)`` convention."""

from .diffusers import (
    DiffusersModel,
    from_pretrained,
    prediction_from_config,
    schedule_from_scheduler,
    times_from_sigmas,
    times_from_timesteps,
    wrap,
)

__all__ = [
    "DiffusersModel",
    "wrap",
    "from_pretrained",
    "schedule_from_scheduler",
    "prediction_from_config",
    "times_from_timesteps",
    "times_from_sigmas",
]
