"""Small experiment helpers the chapters share: error against NFE, fitted orders, NFE to a matched error,
and divergence counts (ODE inversion is ``companion.invert``).

The error of a run is  RMS_i ||x_i - x_i^ref||  over the samples (each sample flattened), with x^ref a
float64 reference solution of the same ODE from the same x_T (:func:`companion.reference.solve_pf_ode`).
NFE is counted by wrapping the model, so it is what the solver really spent, whatever its steps mean.
These are reference tools for the book (host loops), not samplers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..sampling import sample
from ..schedules import Schedule

__all__ = [
    "Counter",
    "Curve",
    "rms_error",
    "run",
    "error_vs_nfe",
    "fit_order",
    "nfe_to_reach",
    "speedup",
    "error_at",
    "divergence_fraction",
]

Model = Callable[[Tensor, Tensor], Tensor]


class Counter:
    """Wraps a model and counts its calls (one call = one NFE for a batch)."""

    def __init__(self, model: Model):
        self.model, self.calls = model, 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.calls += 1
        return self.model(x, t)


@dataclass(frozen=True)
class Curve:
    """Errors of one solver at the NFE it actually spent (increasing)."""

    nfe: np.ndarray
    err: np.ndarray


def rms_error(x: Tensor, ref: Tensor) -> float:
    """sqrt(mean_i ||x_i - ref_i||^2), samples along dim 0; inf when any sample is not finite."""
    if x.shape != ref.shape:
        raise ValueError(f"x and ref must have one shape; got {tuple(x.shape)} and {tuple(ref.shape)}")
    d = (x.to(torch.float64) - ref.to(torch.float64)).reshape(x.shape[0], -1)
    return float(d.pow(2).sum(1).mean().sqrt())


def run(model: Model, x_T: Tensor, schedule: Schedule, spec: Mapping, steps: int, **kw) -> tuple[Tensor, int]:
    """``companion.sample`` with the options in ``spec`` (solver, order, method, ...) and ``kw``;
    returns the sample and the NFE it took."""
    counted = Counter(model)
    x = sample(counted, x_T, schedule=schedule, steps=steps, **{**kw, **spec})
    return x, counted.calls


def error_vs_nfe(
    model: Model,
    x_T: Tensor,
    ref: Tensor,
    schedule: Schedule,
    specs: Mapping[str, Mapping],
    steps: Sequence[int],
    **kw,
) -> dict[str, Curve]:
    """For each named solver spec, the RMS error against ``ref`` at each entry of ``steps`` (the solver's
    ``steps`` argument); a spec may carry ``"nfe_per_step"`` to divide the requested NFE into steps
    (e.g. 2 for Heun) so that all curves cover the same NFE range, and ``"nfe_multiple"`` to round the
    steps down to a multiple (e.g. 3 for singlestep order 3 with ``method="singlestep_fixed"``, so that
    every step has the full order)."""
    out = {}
    for name, spec in specs.items():
        spec = dict(spec)
        per = int(spec.pop("nfe_per_step", 1))
        mult = int(spec.pop("nfe_multiple", 1))
        rows = []
        for n in steps:
            k = (n // per // mult) * mult
            if k < 1:
                continue
            x, nfe = run(model, x_T, schedule, spec, k, **kw)
            rows.append((nfe, rms_error(x, ref)))
        rows.sort()
        a = np.array(rows, dtype=np.float64).reshape(-1, 2)
        out[name] = Curve(a[:, 0], a[:, 1])
    return out


def fit_order(nfe: Sequence[float], err: Sequence[float]) -> float:
    """The order p of err ~ C NFE^-p: minus the least-squares slope of log err against log NFE."""
    n, e = np.asarray(nfe, dtype=np.float64), np.asarray(err, dtype=np.float64)
    if n.shape != e.shape or n.size < 2:
        raise ValueError("nfe and err must be sequences of one length >= 2")
    if not (np.all(n > 0) and np.all(e > 0) and np.all(np.isfinite(e))):
        raise ValueError("nfe and err must be positive and finite")
    return float(-np.polyfit(np.log(n), np.log(e), 1)[0])


def nfe_to_reach(curve: Curve, target: float) -> float:
    """The (log-log interpolated) NFE at which ``curve`` first reaches error ``target``; nan if it never
    does within the measured range, its first NFE if it starts below (then the true value is at most that,
    and a speed-up computed from it is a lower bound)."""
    n, e = curve.nfe, curve.err
    if e[0] <= target:
        return float(n[0])
    for i in range(1, len(n)):
        if e[i] <= target:
            w = (math.log(target) - math.log(e[i - 1])) / (math.log(e[i]) - math.log(e[i - 1]))
            return float(math.exp(math.log(n[i - 1]) + w * (math.log(n[i]) - math.log(n[i - 1]))))
    return float("nan")


def error_at(curve: Curve, nfe: float) -> float:
    """The error of ``curve`` at ``nfe``, interpolated in log-log."""
    ln, le = np.log(curve.nfe), np.log(curve.err)
    if not ln[0] <= math.log(nfe) <= ln[-1]:
        raise ValueError(f"nfe={nfe} lies outside the measured range [{curve.nfe[0]}, {curve.nfe[-1]}]")
    return float(np.exp(np.interp(math.log(nfe), ln, le)))


def speedup(baseline: Curve, curve: Curve, at_nfe: float) -> float:
    """NFE ratio at matched error: the baseline's NFE ``at_nfe`` over the NFE ``curve`` needs to reach
    the baseline's error there (nan if it never does)."""
    return at_nfe / nfe_to_reach(curve, error_at(baseline, at_nfe))


def divergence_fraction(x: Tensor, radius: float) -> float:
    """The fraction of samples that are not finite or lie farther than ``radius`` from the origin."""
    flat = x.reshape(x.shape[0], -1).to(torch.float64)
    bad = ~torch.isfinite(flat).all(1) | (flat.norm(dim=1) > radius)
    return float(bad.double().mean())
