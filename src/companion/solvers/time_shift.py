"""The time-shift sampler (Li et al. 2023, arXiv 2305.15583): relabel the state's time by its variance.

Exposure bias: a sampler's state at nominal time t is not distributed like the forward process's x_t (the
network's errors have accumulated), and its per-sample pixel variance tells which noise level it resembles.
Before each step with nominal time t > ``cutoff``, the sampler computes the per-sample variance
v = Var_pix(x) (over all non-batch dimensions) and picks, among the candidate times
tau in [t - window/2, t + window/2] on a lattice of spacing ``resolution`` (the paper's 1000-step grid),
the one whose forward variance is nearest:

* ``target="paper"``: |v - sigma_tau^2| (the paper's 1 - alphabar_tau for VP; the signal is ignored);
* ``target="signal"``: |v - (sigma_tau^2 + alpha_tau^2 signal_var)|, the forward variance including the
  data's per-sample pixel variance ``signal_var`` (E Var_pix(x_0)).

``offset`` moves the window's centre to t + offset; with ``window=0`` it is the deterministic shift
t -> t + offset (for t > cutoff), the baseline the paper's rule must beat.

The state keeps its values and takes the chosen time t_s: the model is evaluated at t_s and the step goes
from t_s to the next grid time (both the network's time input and the transfer coefficients move; the
multistep solvers enter t_s into their history, so their coefficients see the true node). Candidates
are kept strictly between the next grid time and the previous node, so steps never reverse.

Where this departs from the four official implementations (`Mingxiao-Li/TS-DPM`, `tingyu215/TS-DPM-ADM`;
see the book's chapter 12): PNDM shifts the transfer target only and the model sees the nominal t; ADM
centres the window on the current t but compares with ``flip(alphas_cumprod)`` (1 - alphabar only for a
cosine schedule) and sets alphabar at t_s minus the stride; the DPM-Solver port takes the variance of the
last eps prediction, not of x; DEIS shifts the network's time input only. None has the signal term.
``window=0`` is the plain sampler, bit for bit (the solver takes its ordinary path).
The variance is read on the host once per shifted step (one device sync per step).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .base import Points, lincomb
from .problem import Problem
from .registry import Option, option

__all__ = ["TimeShift", "shifted_first_order", "momentum_with_shift", "time_shift_option"]

_TARGETS = ("paper", "signal")


def _real(name: str, v, lo: float, open_lo: bool = False) -> float:
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        raise TypeError(f"TimeShift: {name} must be a number; got {type(v).__name__}")
    if not math.isfinite(v) or v < lo or (open_lo and v == lo):
        raise ValueError(
            f"TimeShift: {name} must be a finite number {'>' if open_lo else '>='} {lo}; got {v!r}"
        )
    return float(v)


@dataclass(frozen=True)
class TimeShift:
    """Options of the time-shift sampler (see the module docstring). ``window`` and ``cutoff`` are in the
    schedule's time (the paper's w = 6, c = 300 on 1000 steps are ``window=0.006, cutoff=0.3``)."""

    window: float = 0.0
    cutoff: float = 0.0
    offset: float = 0.0
    target: str = "paper"
    signal_var: float | None = None
    resolution: float = 1e-3

    def __post_init__(self):
        _real("window", self.window, 0.0)
        _real("cutoff", self.cutoff, 0.0)
        if not isinstance(self.offset, (int, float)) or isinstance(self.offset, bool):
            raise TypeError(f"TimeShift: offset must be a number; got {type(self.offset).__name__}")
        if not math.isfinite(self.offset):
            raise ValueError(f"TimeShift: offset must be finite; got {self.offset!r}")
        _real("resolution", self.resolution, 0.0, open_lo=True)
        if not isinstance(self.target, str) or self.target not in _TARGETS:
            raise ValueError(f"TimeShift: target must be one of {list(_TARGETS)}; got {self.target!r}")
        if self.target == "signal":
            if self.signal_var is None:
                raise ValueError("TimeShift: target='signal' needs signal_var (the data's mean Var_pix(x_0))")
            _real("signal_var", self.signal_var, 0.0)
        elif self.signal_var is not None:
            raise ValueError("TimeShift: signal_var is used by target='signal' only; leave it None")

    @property
    def active(self) -> bool:
        """False for ``window`` below one lattice step and no offset (then the sampler is the plain one)."""
        return math.floor(self.window / 2 / self.resolution + 1e-9) >= 1 or self.offset != 0

    def target_variance(self, schedule, tau: Tensor) -> Tensor:
        var = schedule.sigma(tau) ** 2
        if self.target == "signal":
            var = var + schedule.alpha(tau) ** 2 * self.signal_var
        return var

    def shift(self, schedule, x: Tensor, t: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
        """Per-sample shifted times (float64, shape (B,)) for the state ``x`` at nominal time ``t``;
        candidates strictly inside (lo, hi) (per sample or shared); t itself where t <= cutoff."""
        B = x.shape[0]
        t = torch.as_tensor(t, dtype=torch.float64)
        if float(t) <= self.cutoff:
            return t.expand(B).clone()
        K = math.floor(self.window / 2 / self.resolution + 1e-9)
        tau = t + self.offset + self.resolution * torch.arange(-K, K + 1, dtype=torch.float64)  # (C,)
        var = x.detach().reshape(B, -1).to(torch.float64).var(dim=1, unbiased=False).cpu()  # (B,)
        dist = (var[:, None] - self.target_variance(schedule, tau)[None, :]).abs()
        ok = (tau[None, :] > torch.as_tensor(lo, dtype=torch.float64).reshape(-1, 1)) & (
            tau[None, :] < torch.as_tensor(hi, dtype=torch.float64).reshape(-1, 1)
        )
        dist = torch.where(ok, dist, torch.full_like(dist, math.inf))
        dist = torch.cat([dist, torch.full_like(dist[:, :1], 1e308)], 1)  # nominal t: the fallback
        tau = torch.cat([tau, t[None]])
        return tau[dist.argmin(dim=1)]


def _check_grid(grid: Tensor) -> None:
    if grid.dim() != 1:
        raise ValueError("time_shift needs one grid for the whole batch (1-D timesteps)")
    if grid.shape[0] > 1 and not bool(grid[1] < grid[0]):
        raise ValueError("time_shift runs from noise to data only (decreasing times); not with invert")


def _col(v: Tensor, x: Tensor) -> Tensor:
    return v.to(device=x.device, dtype=x.dtype).reshape((-1,) + (1,) * (x.dim() - 1))


def shifted_first_order(
    prob: Problem, ts: TimeShift, coefs: Callable[[Points], tuple[Tensor, Tensor, Tensor]], stochastic: bool
) -> Tensor:
    """DDIM / ancestral steps x_{i+1} = a x + b x0(x, t_s) + std z from the shifted time t_s of each state
    to the next grid time; ``coefs(points)`` gives (a, b, std) on points of shape (2, B)."""
    grid = prob.grid(prob.steps)
    _check_grid(grid)
    x = prob.x
    B = x.shape[0]
    ev = prob.evaluator("x0")
    draw = prob.noise_stream(grid, x) if stochastic else None
    hook = prob.step_hook(ev, grid)
    prev = grid[0].expand(B) + ts.resolution  # the start time itself is a candidate
    for i in range(grid.shape[0] - 1):
        t_s = ts.shift(prob.schedule, x, grid[i], grid[i + 1], prev)
        prev = t_s
        pts = prob.points(torch.stack([t_s, grid[i + 1].expand(B)]))
        a, b, std = coefs(pts)
        x0 = ev(x, ev.plan(t_s[None], x)[0])
        terms = [(_col(a[0], x), x), (_col(b[0], x), x0)]
        if stochastic:
            terms.append((_col(std[0], x), draw(i)))
        x = lincomb(terms)
        if hook is not None:
            x = hook(i, x)
    return x


def momentum_with_shift(solver, prob: Problem, grid: Tensor, ts: TimeShift) -> Tensor:
    """Heavy ball / GHVB (:mod:`.momentum`) with each node's time shifted (its history keeps t_s)."""
    from .momentum import run_momentum

    _check_grid(grid)
    B = prob.x.shape[0]
    state = {"prev": grid[0].expand(B) + ts.resolution}

    def shift(i: int, x: Tensor, t: Tensor) -> Tensor:
        t_s = ts.shift(prob.schedule, x, t, grid[i + 1], state["prev"])
        state["prev"] = t_s
        return t_s

    return run_momentum(solver, prob, grid, shift=shift)


def time_shift_option():
    """The solver option ``time_shift``: None (plain sampler) or a :class:`TimeShift`."""
    return option(
        None,
        Option(
            "None or a companion.solvers.TimeShift",
            lambda v: v is None or isinstance(v, TimeShift),
            lambda v: True,
            ("shift", 3),
            "the time-shift sampler (Li et al. 2023): relabel each state's time by its pixel variance",
        ),
    )
