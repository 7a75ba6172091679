"""Adapters from other libraries' models and schedules to companion's ``model(x, t)`` convention."""

from . import diffusers
from .diffusers import *  # noqa: F403 -- the public names are diffusers.__all__, listed once there

__all__ = list(diffusers.__all__)
