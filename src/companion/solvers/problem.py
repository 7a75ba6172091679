"""The sampling problem a solver receives: model, schedule, grid builder and the run's options."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..noise import NoiseSource, NoiseStream, resolve
from ..schedules import Schedule
from .base import Evaluator, Points


@dataclass(frozen=True)
class Problem:
    model: Callable[[Tensor, Tensor], Tensor]
    schedule: Schedule
    prediction: str
    x: Tensor
    steps: int
    #: grid(n) -> float64 times of shape (n + 1,) or (n + 1, B); explicit timesteps ignore n.
    grid: Callable[[int], Tensor]
    grid_name: str | None  # None when the caller passed explicit timesteps
    lower_order_final: float  # step count below which final steps lower their order (0: never)
    compat: str | None
    x0_fn: Callable[[Tensor], Tensor] | None = None
    generator: torch.Generator | None = None
    callback: Callable[[int, Tensor], None] | None = None
    # --- stochastic solvers (companion.noise) ---
    noise: NoiseSource | None = None

    def noise_stream(self, grid: Tensor, x: Tensor) -> NoiseStream:
        """The step normals of a stochastic run on ``grid``: from ``noise``, else ``generator``."""
        src = self.noise if self.noise is not None else resolve(None, self.generator)
        return src.stream(grid, x)

    def evaluator(self, target: str) -> Evaluator:
        return Evaluator(self.model, self.schedule, self.prediction, target, self.x, self.x0_fn)

    def points(self, t: Tensor) -> Points:
        return Points.of(self.schedule, t)
