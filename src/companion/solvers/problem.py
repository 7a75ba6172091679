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
    #: callback(i, t, x, denoised) after step i; a tensor it returns replaces x (see companion.sample)
    callback: Callable[[int, Tensor, Tensor, Tensor], Tensor | None] | None = None
    # --- stochastic solvers (companion.noise) ---
    noise: NoiseSource | None = None

    def noise_stream(self, grid: Tensor, x: Tensor) -> NoiseStream:
        """The step normals of a stochastic run on ``grid``: from ``noise``, else ``generator``."""
        src = self.noise if self.noise is not None else resolve(None, self.generator)
        return src.stream(grid, x)

    def evaluator(self, target: str) -> Evaluator:
        """The model as the prediction ``target`` a solver integrates; it keeps the latest data prediction
        for the callback when there is one."""
        return Evaluator(
            self.model, self.schedule, self.prediction, target, self.x, self.x0_fn, self.callback is not None
        )

    def after_step(self, i: int, t: Tensor, x: Tensor, ev: Evaluator) -> Tensor:
        """Call ``callback(i, t, x, denoised)`` (``x`` now at time ``t``); a tensor it returns, which must be
        like ``x``, becomes the state."""
        out = self.callback(i, t, x, ev.denoised)
        if out is None:
            return x
        if (
            not isinstance(out, Tensor)
            or out.shape != x.shape
            or out.dtype != x.dtype
            or out.device != x.device
        ):
            got = (
                f"{tuple(out.shape)} {out.dtype} on {out.device}"
                if isinstance(out, Tensor)
                else type(out).__name__
            )
            raise ValueError(
                f"callback must return None or a tensor like x ({tuple(x.shape)} {x.dtype} on {x.device}); got {got}"
            )
        return out

    def step_hook(self, ev: Evaluator, times: Tensor) -> Callable[[int, Tensor], Tensor] | None:
        """``hook(i, x) -> x`` for a loop whose step i ends at ``times[i + 1]`` (:meth:`after_step`); None
        when there is no callback, so a loop without one pays nothing."""
        if self.callback is None:
            return None
        return lambda i, x: self.after_step(i, times[i + 1], x, ev)

    def points(self, t: Tensor) -> Points:
        return Points.of(self.schedule, t)
