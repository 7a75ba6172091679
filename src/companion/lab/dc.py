"""DC-Solver in the book (chapter 10): the two guided targets, the experiment helpers, and the shipped ratios.

Targets, both under classifier-free guidance on a time-uniform grid t = 1 -> 1e-3 (the official DC code's
``skip_type``), UniPC-bh2 order 2 with data prediction under DC (the official diffusers configuration):

* ``"mixture"``: the ten digit classes as one diagonal Gaussian each in 64-D (:mod:`.bench`'s fit), exact
  conditional and unconditional eps, references by DOP853;
* ``"unet"``: the shipped class-conditional digits UNet (``digits-unet-eps``), references by a fine
  DPM-Solver++(3M) run.

``python -m companion.lab.dc`` re-runs the searches (10 noises, 20 AdamW iterations per step, as the
official diffusers code) over NFE {5, 6, 8, 10} x guidance {1.5, 3, 5, 7.5, 9}, the held-out point
(NFE 7, guidance 6) and NFE 15, 20 at guidance 7.5, fits the cascade polynomial regression and writes ``dc_ratios.json`` next to this
module (package data, a few kB).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from .. import grids
from .._io import write_atomic
from ..dc import CPR, reference_states, search_ratios
from ..sampling import sample
from ..schedules import Schedule
from .bench import relative_rms

__all__ = [
    "SETTINGS",
    "SHIPPED",
    "Target",
    "target",
    "timesteps",
    "reference",
    "run",
    "misalignment",
    "best_constant",
    "search_table",
    "load_shipped",
    "V3_SHIPPED",
    "search_v3_digits",
    "load_v3_digits",
    "main",
]

#: The DC-Solver / UniPC configuration of chapter 10 (official diffusers: solver_order=2, bh2, dc_order=2).
SETTINGS = dict(order=2, variant="bh2", pred="x0", dc_order=2)
GRID, T_END = "time_uniform", 1e-3
SEARCH_BATCH, ITERS = 10, 20
NFES, GUIDANCES, HELD_OUT = (5, 6, 8, 10), (1.5, 3.0, 5.0, 7.5, 9.0), (7, 6.0)
#: searched besides the CPR's grid: the held-out point, and the chapter's longer runs at guidance 7.5
EXTRA = (HELD_OUT, (15, 7.5), (20, 7.5))
FINE = 20  # DPM-Solver++(3M) steps per grid segment of the UNet's reference trajectory
SHIPPED = Path(__file__).with_name("dc_ratios.json")
#: chapter 11's ratios: the digits UNet at guidance 4 on log-SNR grids (``python -m companion.lab.dc --v3``)
V3_SHIPPED = Path(__file__).with_name("results") / "dc_ratios_v3_digits.json"
V3_NFES = (5, 6, 8, 10, 15, 20)


class Target:
    """A guided model ``model(x, t) -> eps`` on ``schedule`` with labels ``i % 10``, and how to get its
    reference (``"dop853"`` or ``"fine"``)."""

    def __init__(self, name: str, model: Callable, schedule: Schedule, method: str, dtype: torch.dtype):
        self.name, self.model, self.schedule, self.method, self.dtype = name, model, schedule, method, dtype


def _mixture_classes():
    from .bench import _digits_classes

    return _digits_classes()


_UNET = {}


def target(name: str, guidance: float, batch: int) -> Target:
    """The ``"mixture"`` or ``"unet"`` target at classifier-free guidance ``guidance`` for ``batch`` samples
    (labels 0, 1, ..., 9, 0, ...)."""
    labels = torch.arange(batch) % 10
    if name == "mixture":
        from ..schedules import VPLinear
        from ..targets import ClassConditionalMixture

        if "ccm" not in _UNET:
            _UNET["ccm"] = ClassConditionalMixture(_mixture_classes())
        sched = VPLinear()
        return Target(
            name, _UNET["ccm"].model(sched, labels, "eps", guidance), sched, "dop853", torch.float64
        )
    if name == "unet":
        from .models import load

        if "unet" not in _UNET:
            _UNET["unet"] = load("digits-unet-eps").to(torch.float32)
        net = _UNET["unet"]
        return Target(name, net.cond(labels, guidance=guidance), net.schedule, "fine", torch.float32)
    raise ValueError(f"name must be 'mixture' or 'unet'; got {name!r}")


def noise(name: str, batch: int, seed: int) -> Tensor:
    """Starting noise of the target ``name`` (64-D vectors or 1x8x8 images)."""
    g = torch.Generator().manual_seed(seed)
    shape = (batch, 64) if name == "mixture" else (batch, 1, 8, 8)
    return torch.randn(shape, generator=g, dtype=torch.float64 if name == "mixture" else torch.float32)


def timesteps(tg: Target, nfe: int) -> Tensor:
    return grids.get_grid(GRID, tg.schedule, nfe, 1.0, T_END, 7.0)


def reference(tg: Target, x: Tensor, steps: int = 400) -> Tensor:
    """The end point at t = 1e-3: DOP853 (mixture) or ``steps`` DPM-Solver++(3M) steps (UNet)."""
    ts = torch.tensor([1.0, T_END], dtype=torch.float64)
    return reference_states(tg.model, x, schedule=tg.schedule, timesteps=ts, method=tg.method, fine=steps)[-1]


def run(tg: Target, x: Tensor, nfe: int, solver: str, **options) -> Tensor:
    """One sample of ``solver`` on the chapter's grid (no gradients)."""
    with torch.no_grad():
        return sample(
            tg.model, x, schedule=tg.schedule, timesteps=timesteps(tg, nfe), solver=solver, **options
        )


def misalignment(tg: Target, x: Tensor, nfe: int) -> list[float]:
    """What UniPC's free corrector leaves in its history, per corrected step i: the relative distance
    ||m(x^c_i) - m(x~_i)|| / ||m(x~_i)|| between the data prediction at the corrected state (never evaluated
    by the sampler) and the stored one at the predicted state, along a UniPC run with the chapter's options."""
    from ..solvers.base import lincomb
    from ..solvers.dc_solver import DCSolver, dc_tables
    from ..solvers.problem import Problem

    ts = timesteps(tg, nfe)
    prob = Problem(tg.model, tg.schedule, "eps", x, nfe, lambda _n: ts, None, math.inf, None)
    ev, orders, prep, _, _ = dc_tables(prob, DCSolver(**SETTINGS))
    K, hist, x_prev, out = len(prep.b), [], x, []
    with torch.no_grad():
        for i in range(nfe):
            m = ev(x, prep.plan[i])
            if i > 0:
                terms = [(prep.ac[i - 1], x_prev)] + [
                    (prep.bc[j][i - 1], hist[j]) for j in range(orders[i - 1])
                ]
                x = lincomb(terms + [(prep.bc[K][i - 1], m)])
                out.append(float((ev(x, prep.plan[i]) - m).norm() / m.norm()))
            hist = [m] + hist[: K - 1]
            x_prev = x
            x = lincomb([(prep.a[i], x)] + [(prep.b[j][i], hist[j]) for j in range(orders[i])])
    return out


def best_constant(
    tg: Target, x: Tensor, ref: Tensor, nfe: int, candidates: Sequence[float]
) -> tuple[float, dict[float, float]]:
    """The single ratio (the same on every step after the first ``dc_order``) with the smallest error on
    the search samples ``x`` (reference ``ref``), and every candidate's error."""
    errs = {}
    q = SETTINGS["dc_order"]
    for c in candidates:
        r = [1.0] * q + [float(c)] * (nfe - q)
        errs[float(c)] = relative_rms(run(tg, x, nfe, "dc-solver", ratios=r, **SETTINGS), ref)
    best = min(errs, key=errs.get)
    return best, errs


def search(tg: Target, x: Tensor, nfe: int, iters: int = ITERS, progress: bool = False):
    """Reference trajectory on the grid, then the greedy search; returns (SearchResult, reference, seconds
    of the reference)."""
    ts = timesteps(tg, nfe)
    t0 = time.perf_counter()
    ref = reference_states(tg.model, x, schedule=tg.schedule, timesteps=ts, method=tg.method, fine=FINE)
    t_ref = time.perf_counter() - t0
    res = search_ratios(
        tg.model, x, ref, schedule=tg.schedule, timesteps=ts, iters=iters, progress=progress, **SETTINGS
    )
    return res, ref, t_ref


def search_table(
    name: str,
    nfes: Sequence[int] = NFES,
    guidances: Sequence[float] = GUIDANCES,
    extra: Sequence[tuple[int, float]] = EXTRA,
    seed: int = 1,
    iters: int = ITERS,
    progress: bool = True,
) -> dict:
    """Searched ratios on ``SEARCH_BATCH`` noises (``seed``) for every (NFE, guidance), the CPR fitted to the
    grid (not to ``extra``), and the cost of each search, as the JSON-ready dict that is shipped."""
    from tqdm.auto import tqdm

    x = noise(name, SEARCH_BATCH, seed)
    cells = [(n, float(w)) for w in guidances for n in nfes] + [(n, float(w)) for n, w in extra]
    out: dict = {"searched": {}, "cost": {}, "loss": {}}
    for n, w in tqdm(
        cells, desc=f"dc search ({name})", disable=not progress or bool(os.environ.get("TQDM_DISABLE"))
    ):
        tg = target(name, w, SEARCH_BATCH)
        res, _, t_ref = search(tg, x, n, iters)
        key = f"{n}@{w:g}"
        out["searched"][key] = res.ratios
        out["cost"][key] = {
            "calls": res.calls,
            "seconds": round(res.seconds, 2),
            "reference_seconds": round(t_ref, 2),
        }
        # the search objective at rho = 1 and at the ratio found, on the searched steps (i >= dc_order)
        q = SETTINGS["dc_order"]
        out["loss"][key] = {
            k: [float(f"{v:.4g}") for v in vals[q:]]
            for k, vals in (("rho_one", res.loss_before), ("found", res.loss_after))
        }
    grid_table = {(n, float(w)): out["searched"][f"{n}@{float(w):g}"] for w in guidances for n in nfes}
    out["cpr"] = CPR.fit(grid_table, first=SETTINGS["dc_order"]).to_dict()
    out["settings"] = dict(
        SETTINGS,
        grid=GRID,
        t_end=T_END,
        search_batch=SEARCH_BATCH,
        search_seed=seed,
        iters=iters,
        lr=0.1,
        nfes=list(nfes),
        guidances=[float(w) for w in guidances],
        held_out=[list(e) for e in extra],
    )
    return out


def parse_key(key: str) -> tuple[int, float]:
    n, w = key.split("@")
    return int(n), float(w)


def load_shipped(path: str | Path | None = None) -> dict:
    """The shipped searches: ``{"mixture": ..., "unet": ...}``, each with ``searched`` ("NFE@guidance" ->
    ratios), ``cpr`` (:class:`companion.dc.CPR` as a dict), ``cost``, ``loss`` (the search objective at
    rho = 1 and at the found ratio, per searched step) and ``settings``."""
    return json.loads(Path(path or SHIPPED).read_text())


def search_v3_digits(
    nfes: Sequence[int] = V3_NFES,
    *,
    guidance: float = 4.0,
    batch: int = 10,
    iters: int = 15,
    fine: int = 20,
    seed: int = 6,
    t_start: float = 1.0,
    t_end: float = 1e-3,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> dict:
    """Chapter 11's DC-Solver ratios: the shipped digits UNet under classifier-free guidance ``guidance``
    (labels ``i % 10``), log-SNR grids from ``t_start`` to ``t_end`` (the grid its v3 comparison uses; a ratio
    moves an output along the grid's own times, so chapter 10's time-uniform ratios do not carry over),
    searched per NFE on ``batch`` noises (float32, ``torch.Generator().manual_seed(seed)``) against fine
    DPM-Solver++(3M) trajectories (``fine`` steps per grid segment), ``iters`` AdamW iterations per step,
    lower-order final steps below 15 steps as in sampling. Returns ``{"ratios": {nfe: [...]}, "calls",
    "seconds", "settings"}``."""
    from .models import load

    net = load("digits-unet-eps", device=device).to(torch.float32)
    g = torch.Generator().manual_seed(seed)
    x_T = torch.randn(batch, 1, 8, 8, generator=g, dtype=torch.float32).to(device)
    model = net.cond((torch.arange(batch) % 10).to(device), guidance=guidance)
    out: dict = {"ratios": {}, "calls": 0, "seconds": 0.0}
    for n in nfes:
        grid = grids.logsnr(net.schedule, t_start, t_end, n)
        ref = reference_states(
            model,
            x_T,
            schedule=net.schedule,
            timesteps=grid,
            prediction=net.prediction,
            method="fine",
            fine=fine,
        )
        res = search_ratios(
            model,
            x_T,
            ref,
            schedule=net.schedule,
            timesteps=grid,
            prediction=net.prediction,
            iters=iters,
            lower_order_final=n < 15,
            progress=progress,
        )
        out["ratios"][str(n)] = [float(r) for r in res.ratios]
        out["calls"] += res.calls + n * fine
        out["seconds"] += res.seconds
    out["settings"] = dict(
        guidance=guidance,
        batch=batch,
        iters=iters,
        fine=fine,
        seed=seed,
        t_start=t_start,
        t_end=t_end,
        grid="logsnr",
    )
    return out


def _write_json(path: Path, payload: dict) -> None:
    """Write ``payload`` to ``path`` whole (:func:`companion._io.write_atomic`)."""
    write_atomic(path, json.dumps(payload, indent=1, sort_keys=True) + "\n")


def load_v3_digits(path: str | Path | None = None) -> dict:
    """The shipped :func:`search_v3_digits` result (ratios keyed by NFE as a string)."""
    return json.loads(Path(path or V3_SHIPPED).read_text())


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m companion.lab.dc [--out PATH] [--targets mixture unet]``: re-run the searches and write
    the shipped file; ``--v3``: chapter 11's search instead (:func:`search_v3_digits`, to ``V3_SHIPPED``)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=None)
    ap.add_argument("--targets", nargs="+", default=["mixture", "unet"], choices=["mixture", "unet"])
    ap.add_argument("--v3", action="store_true", help="chapter 11's digits ratios on log-SNR grids")
    args = ap.parse_args(argv)
    if args.v3:
        payload = search_v3_digits()
        payload["command"] = "python -m companion.lab.dc --v3"
        out = Path(args.out or V3_SHIPPED)
        _write_json(out, payload)
        print(f"wrote {out}: {payload['calls']} model calls, {payload['seconds']:.0f} s")
        return
    args.out = args.out or str(SHIPPED)
    payload = {name: search_table(name) for name in args.targets}
    payload["command"] = "python -m companion.lab.dc"
    _write_json(Path(args.out), payload)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
