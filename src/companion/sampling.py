"""``companion.sample``: one call from noise to data with any registered solver."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor

from . import grids
from . import parameterization as P
from . import solvers as S
from .noise import NoiseSource
from .noise import resolve as resolve_noise
from .schedules import Schedule
from .solvers.base import Evaluator

__all__ = ["sample"]

#: Step counts below which ``lower_order_final`` lowers the last steps' orders, per compat mode.
_LOF = {None: 15, "dpm-solver": 10, "diffusers": 15}


def sample(
    model: Callable[[Tensor, Tensor], Tensor],
    x_T: Tensor,
    *,
    schedule: Schedule,
    prediction: str = "eps",
    solver: str = "dpmsolver++",
    order: int | None = None,
    method: str = "multistep",
    steps: int = 20,
    grid: str = "logsnr",
    t_start: float | Tensor | None = None,
    t_end: float | Tensor | None = None,
    timesteps: Tensor | None = None,
    rho: float = 7.0,
    variant: str | None = None,
    lower_order_final: bool = True,
    denoise_to_zero: bool = False,
    compat: str | None = None,
    x0_fn: Callable[[Tensor], Tensor] | None = None,
    generator: torch.Generator | None = None,
    callback: Callable[[int, Tensor], None] | None = None,
    noise: NoiseSource | None = None,
    **options,
) -> Tensor:
    """Integrate from ``x_T`` at ``t_start`` down to ``t_end`` and return the sample.

    ``order`` defaults to 2 where the solver has it (else its only order, 4 for PLMS).
    ``model(x, t)`` returns a ``prediction`` (eps | x0 | v | score | velocity, or diffusers' names); ``t``
    reaches it as a tensor of shape (B,). ``steps`` counts model evaluations for singlestep and adaptive
    methods (as the official DPM-Solver) and steps for multistep ones. ``timesteps`` (1-D decreasing, or
    (N + 1, B) for one grid per sample) replaces ``grid``/``steps``/``t_start``/``t_end``, which may also
    be tensors of shape (B,).

    ``lower_order_final`` drops the last steps to orders ..., 2, 1 below 15 steps; ``compat`` picks a peer's
    final-step rules: ``"dpm-solver"`` (below 10 steps, the official code) or ``"diffusers"`` (below 15,
    and diffusers' per-scheduler rules). ``denoise_to_zero`` adds one evaluation that returns the data
    prediction at ``t_end`` (none when sigma(t_end) = 0). ``x0_fn`` corrects every data prediction
    (e.g. dynamic thresholding).
    Solver options (``eta``, ``corrector``, ``atol``, ...) go in ``options``; see ``solvers.available()``.
    Stochastic solvers draw their normals from ``noise`` (a :mod:`companion.noise` source: per-sample
    seeds, a Brownian path, injected noise) or else from ``generator`` (not batch-invariant).
    """
    if not isinstance(x_T, Tensor) or not x_T.is_floating_point() or x_T.dim() < 1:
        raise TypeError("x_T must be a floating-point tensor of shape (B, ...)")
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a companion.schedules.Schedule; got {type(schedule).__name__}")
    prediction = P.canonical(prediction)
    entry = S.get(solver)
    order = entry.default_order if order is None else order
    if not isinstance(order, int) or isinstance(order, bool) or order not in entry.orders:
        raise ValueError(f"order must be one of {list(entry.orders)} for solver {solver!r}; got {order!r}")
    if method not in entry.methods:
        raise ValueError(f"method must be one of {list(entry.methods)} for solver {solver!r}; got {method!r}")
    if variant not in entry.variants:
        raise ValueError(
            f"variant must be one of {list(entry.variants)} for solver {solver!r}; got {variant!r}"
        )
    unknown = set(options) - set(entry.options)
    if unknown:
        raise TypeError(
            f"unknown option(s) {sorted(unknown)} for solver {solver!r}; allowed: {list(entry.options)}"
        )
    if compat not in _LOF:
        raise ValueError(f"compat must be one of {list(_LOF)}; got {compat!r}")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive int; got {steps!r}")

    if timesteps is not None:
        ts = grids.check_timesteps(timesteps, schedule)
        steps = ts.shape[0] - 1

        def make_grid(n: int) -> Tensor:
            return ts

        grid_name = None
    else:
        if grid not in grids.GRIDS:
            raise ValueError(f"unknown grid {grid!r}; available: {list(grids.GRIDS)}")

        @functools.lru_cache(maxsize=4)
        def make_grid(n: int) -> Tensor:
            return grids.get_grid(grid, schedule, n, t_start, t_end, rho)

        grid_name = grid
    # Validates t_start / t_end before any model call; the grid most solvers use, so it is built once.
    first = make_grid(steps)
    per_sample = first.dim() == 2
    if per_sample and first.shape[1] != x_T.shape[0]:
        raise ValueError(f"per-sample times must have B = {x_T.shape[0]} columns; got {first.shape[1]}")
    if method == "singlestep_fixed" and steps < order:
        raise ValueError(f"steps must be >= order ({order}) for method 'singlestep_fixed'; got steps={steps}")

    prob = S.Problem(
        model=model,
        schedule=schedule,
        prediction=prediction,
        x=x_T,
        steps=steps,
        grid=make_grid,
        grid_name=grid_name,
        lower_order_final=_LOF[compat] if lower_order_final else 0,
        compat=compat,
        x0_fn=x0_fn,
        generator=generator,
        callback=callback,
        noise=resolve_noise(noise, generator),
    )
    x = entry.build(order=order, method=method, variant=variant, **options)(prob)
    t_last = make_grid(steps)[-1]
    if denoise_to_zero and bool((schedule.sigma(t_last) > 0).all()):  # at sigma = 0, x is already clean
        ev = Evaluator(model, schedule, prediction, "x0", x, x0_fn)
        x = ev(x, ev.plan(t_last[None], x)[0])
    return x
