"""Solver search (S^3 / USF, Liu et al. 2024): an evolutionary search over per-step plans of the ``usf``
solver and their timesteps, with a fitness on a search set and re-scoring on a held-out set.

A :class:`Candidate` is a grid (``timesteps``, decreasing, NFE + 1 points) and a plan (one
:class:`companion.solvers.usf.Step` per step); ``candidate.sample(model, x_T, schedule)`` is
``companion.sample(model, x_T, timesteps=..., solver="usf", plan=...)``. Found candidates are saved as small
JSON files (:func:`save`, :func:`load`); the book's are package data (:func:`shipped`).

:func:`evolve` follows the released search of ``thu-nics/USF`` (``search.py``, ``evo_search.yml``), which is
plain evolution with no predictor (the paper describes a predictor-based multi-stage search; the released
code has none, and neither has this): parents drawn from the top ``top`` (15), crossover with probability
0.3, each decision mutated with probability 0.3, timesteps multiplied by 1 + N(0, 0.08). Unlike the
release it searches at one fixed NFE (no insertion or deletion of steps), seeds its first population with
the baseline plans it is given, and keeps the best ``population`` of parents and children (elitist).
``timesteps_only=True`` is the equal-budget control: only the grid evolves, the seed's plan stays.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .. import grids
from .._io import write_atomic
from ..sampling import sample
from ..schedules import Schedule
from ..solvers import multistep as ms
from ..solvers.usf import CORRECTORS, PREDICTORS, PREDS, Step, as_plan
from .experiments import rms_error

__all__ = [
    "Candidate",
    "Objective",
    "SearchResult",
    "BASELINE_SOLVERS",
    "BASELINE_GRIDS",
    "baseline_plan",
    "baseline",
    "baselines",
    "evolve",
    "save",
    "load",
    "shipped",
    "BOOK_TARGETS",
    "T_REF",
    "book_target",
    "book_problem",
    "run_book_search",
]

#: The package's multistep solvers the grid baseline tunes over, as plan builders: (order, predictor,
#: corrector, lower_order_final threshold); DPM-Solver++'s order-2 steps use the midpoint rule (= bh2).
BASELINE_SOLVERS: dict[str, tuple[int, str, str | None, float]] = {
    "dpmsolver++ 2M": (2, "bh2", None, 15),
    "dpmsolver++ 3M (correct)": (3, "lagrange", None, 15),
    "unipc-2 bh1": (2, "bh1", "bh1", math.inf),
    "unipc-2 bh2": (2, "bh2", "bh2", math.inf),
    "unipc-3 bh1": (3, "bh1", "bh1", math.inf),
    "unipc-3 bh2": (3, "bh2", "bh2", math.inf),
}
#: The grids of the baseline: name -> (grid, rho).
BASELINE_GRIDS: dict[str, tuple[str, float]] = {
    "logSNR": ("logsnr", 7.0),
    "time-uniform": ("time_uniform", 7.0),
    "quadratic": ("time_quadratic", 7.0),
    "EDM rho=7": ("karras", 7.0),
}


@dataclass(frozen=True)
class Candidate:
    """A point of the search space: ``timesteps`` (decreasing floats, NFE + 1) and ``plan`` (NFE Steps)."""

    timesteps: tuple[float, ...]
    plan: tuple[Step, ...]

    def __post_init__(self) -> None:
        t = tuple(float(v) for v in self.timesteps)
        if len(t) < 2 or any(not b < a for a, b in zip(t[:-1], t[1:], strict=True)):
            raise ValueError(f"timesteps must be strictly decreasing with >= 2 points; got {t}")
        plan = as_plan(self.plan)
        if len(plan) != len(t) - 1:
            raise ValueError(f"plan has {len(plan)} steps but timesteps has {len(t) - 1} intervals")
        object.__setattr__(self, "timesteps", t)
        object.__setattr__(self, "plan", plan)

    @property
    def nfe(self) -> int:
        return len(self.plan)

    def grid(self) -> Tensor:
        return torch.tensor(self.timesteps, dtype=torch.float64)

    def sample(self, model, x_T: Tensor, schedule: Schedule, prediction: str = "eps", **kw) -> Tensor:
        """``companion.sample(model, x_T, timesteps=self.grid(), solver="usf", plan=self.plan)``."""
        return sample(
            model, x_T, schedule=schedule, prediction=prediction, timesteps=self.grid(), solver="usf",
            plan=self.plan, **kw,
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {"timesteps": list(self.timesteps), "plan": [s.to_dict() for s in self.plan]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Candidate:
        return cls(tuple(d["timesteps"]), tuple(Step(**s) for s in d["plan"]))


@dataclass
class Objective:
    """Fitness of a candidate: the RMS error of its samples from ``x_T`` against ``ref`` (inf when any
    sample is not finite); ``evaluations`` counts calls."""

    model: Callable[[Tensor, Tensor], Tensor]
    schedule: Schedule
    x_T: Tensor
    ref: Tensor
    prediction: str = "eps"
    evaluations: int = 0

    def __call__(self, cand: Candidate) -> float:
        self.evaluations += 1
        with torch.no_grad():
            x = cand.sample(self.model, self.x_T, self.schedule, self.prediction)
        if not bool(torch.isfinite(x).all()):
            return math.inf
        return rms_error(x, self.ref)


def baseline_plan(solver: str, timesteps: Tensor, schedule: Schedule) -> tuple[Step, ...]:
    """The plan that makes ``usf`` run the baseline ``solver`` (a key of :data:`BASELINE_SOLVERS`) on
    ``timesteps`` exactly as the package's solver does (tests/lab/test_search.py checks it to 1e-10)."""
    order, predictor, corrector, lof = BASELINE_SOLVERS[solver]
    t = torch.as_tensor(timesteps, dtype=torch.float64)
    orders = ms.step_orders(t.shape[0] - 1, order, schedule.lambda_(t), lof)
    # DPM-Solver++ multistep takes its order-2 steps (the 3M's warm-up) with the midpoint rule.
    dpm = solver.startswith("dpmsolver++")
    return tuple(Step(p, "x0", "bh2" if dpm and p == 2 else predictor, corrector) for p in orders)


def baseline(
    solver: str, grid: str, nfe: int, schedule: Schedule, t_end: float, t_start: float = 1.0
) -> Candidate:
    """The baseline ``solver`` on the grid ``grid`` (keys of :data:`BASELINE_SOLVERS`, :data:`BASELINE_GRIDS`)."""
    name, rho = BASELINE_GRIDS[grid]
    t = grids.get_grid(name, schedule, nfe, t_start, t_end, rho)
    return Candidate(tuple(t.tolist()), baseline_plan(solver, t, schedule))


def baselines(
    nfe: int, schedule: Schedule, t_ends: Sequence[float] = (1e-3, 1e-4), t_start: float = 1.0
) -> dict[tuple[str, str, float], Candidate]:
    """Every (solver, grid, t_end) baseline of one NFE."""
    return {
        (s, g, te): baseline(s, g, nfe, schedule, te, t_start)
        for s in BASELINE_SOLVERS
        for g in BASELINE_GRIDS
        for te in t_ends
    }


@dataclass
class SearchResult:
    """The best candidate, its search-set fitness, the best fitness after each evaluation, and the number
    of evaluations spent (rejected children, e.g. with repeated times, are not evaluated)."""

    best: Candidate
    fitness: float
    history: list[float] = field(default_factory=list)
    evaluations: int = 0


def _uniform(g: torch.Generator) -> float:
    return float(torch.rand((), generator=g, dtype=torch.float64))


def _pick(values: Sequence[Any], g: torch.Generator) -> Any:
    return values[int(torch.randint(len(values), (), generator=g))]


def _repair(t: list[float], schedule: Schedule, min_dlam: float) -> tuple[float, ...] | None:
    """Times sorted decreasing, or None when two are closer than ``min_dlam`` in log-SNR (a repeated
    lambda makes the multistep system singular)."""
    t = sorted(t, reverse=True)
    lam = schedule.lambda_(torch.tensor(t, dtype=torch.float64))
    if not bool((lam[1:] - lam[:-1] > min_dlam).all()):
        return None
    return tuple(t)


def _random_step(i: int, g: torch.Generator) -> Step:
    return Step(
        _pick(range(1, min(3, i + 1) + 1), g), _pick(PREDS, g), _pick(PREDICTORS, g), _pick(CORRECTORS, g)
    )


def _mutate_step(s: Step, i: int, p: float, g: torch.Generator) -> Step:
    d = s.to_dict()
    choices = {
        "order": range(1, min(3, i + 1) + 1),
        "pred": PREDS,
        "predictor": PREDICTORS,
        "corrector": CORRECTORS,
    }
    for k, vals in choices.items():
        if _uniform(g) < p:
            d[k] = _pick(vals, g)
    return Step(**d)


def evolve(
    objective: Callable[[Candidate], float],
    seeds: Iterable[Candidate],
    budget: int,
    *,
    generator: torch.Generator,
    schedule: Schedule,
    population: int = 30,
    top: int = 15,
    p_cross: float = 0.3,
    p_mut: float = 0.3,
    t_sigma: float = 0.08,
    t_end_range: tuple[float, float] = (1e-4, 1e-3),
    timesteps_only: bool = False,
    min_dlam: float = 1e-3,
    progress: bool = True,
) -> SearchResult:
    """Evolutionary search (see the module docstring) with ``budget`` fitness evaluations, randomness from
    ``generator`` only. The first population is the ``seeds`` (all of one NFE), then mutants of them; each
    child takes two parents from the ``top`` best, crosses them per step with probability ``p_cross``
    (each step's time and decisions from either parent), and mutates each interior time (factor
    1 + N(0, t_sigma)), t_end (within ``t_end_range``) and, unless ``timesteps_only``, each decision
    with probability ``p_mut``; t_start stays."""
    from tqdm.auto import tqdm

    for name, v in (("budget", budget), ("population", population), ("top", top)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive int; got {v!r}")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator; got {type(generator).__name__}")
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds must hold at least one Candidate")
    nfe = seeds[0].nfe
    if any(s.nfe != nfe for s in seeds):
        raise ValueError(f"seeds must share one NFE; got {[s.nfe for s in seeds]}")
    lo, hi = t_end_range

    def mutate(c: Candidate) -> Candidate | None:
        t = list(c.timesteps)
        for j in range(1, nfe):
            if _uniform(g) < p_mut:
                t[j] *= 1.0 + t_sigma * float(torch.randn((), generator=g, dtype=torch.float64))
        if _uniform(g) < p_mut:
            t[-1] = min(hi, max(lo, t[-1] * math.exp(0.5 * float(torch.randn((), generator=g)))))
        if not all(t[-1] < v < t[0] for v in t[1:-1]):
            return None
        tt = _repair(t, schedule, min_dlam)
        if tt is None:
            return None
        plan = c.plan if timesteps_only else tuple(_mutate_step(s, i, p_mut, g) for i, s in enumerate(c.plan))
        return Candidate(tt, plan)

    def cross(a: Candidate, b: Candidate) -> Candidate | None:
        take = [_uniform(g) < 0.5 for _ in range(nfe)]
        t = [a.timesteps[0]] + [(a if k else b).timesteps[j + 1] for j, k in enumerate(take)]
        plan = a.plan if timesteps_only else tuple((a if k else b).plan[j] for j, k in enumerate(take))
        tt = _repair(t, schedule, min_dlam)
        return None if tt is None else Candidate(tt, plan)

    g = generator
    scored: list[tuple[float, int, Candidate]] = []
    history: list[float] = []
    best = math.inf
    # Without ``progress`` the bar is off; with it, tqdm's defaults apply (TQDM_DISABLE=1 silences it).
    bar = tqdm(total=budget, desc=f"search NFE {nfe}", leave=False, **({} if progress else {"disable": True}))

    def score(c: Candidate) -> None:
        nonlocal best
        f = objective(c)
        scored.append((f, len(history), c))
        best = min(best, f)
        history.append(best)
        bar.update(1)

    queue = seeds[:budget]
    for c in queue:
        score(c)
    tries = 0
    while len(history) < min(population, budget) and tries < 100 * population:
        tries += 1
        child = mutate(seeds[len(history) % len(seeds)])
        if child is not None:
            score(child)
    while len(history) < budget:
        ranked = sorted(scored, key=lambda r: (r[0], r[1]))[:population]
        parents = [c for _, _, c in ranked[:top]]
        a = parents[int(torch.randint(len(parents), (), generator=g))]
        child: Candidate | None = a
        if _uniform(g) < p_cross:
            b = parents[int(torch.randint(len(parents), (), generator=g))]
            child = cross(a, b)
        child = mutate(child) if child is not None else None
        if child is not None:
            score(child)
        scored = sorted(scored, key=lambda r: (r[0], r[1]))[:population]
    bar.close()
    f, _, c = min(scored, key=lambda r: (r[0], r[1]))
    return SearchResult(c, f, history, len(history))


def save(path: str | Path, cand: Candidate, **meta: Any) -> Path:
    """Write ``cand`` and ``meta`` (JSON-able: fitness, NFE, how it was found, the command) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(
        path, json.dumps({"candidate": cand.to_dict(), "meta": meta}, separators=(",", ":")) + "\n"
    )


def load(path: str | Path) -> tuple[Candidate, dict[str, Any]]:
    """(candidate, meta) from a file written by :func:`save` (floats round-trip exactly)."""
    d = json.loads(Path(path).read_text())
    return Candidate.from_dict(d["candidate"]), d["meta"]


def shipped(name: str) -> Path:
    """The path of a shipped search result ``<name>.json`` (package data in ``companion/lab/searched``)."""
    p = Path(str(resources.files("companion.lab") / "searched" / f"{name}.json"))
    if not p.is_file():
        raise ValueError(f"no shipped search result {name!r} ({p})")
    return p


# --- the book's experiments (notebooks/13_solver_search.md): shared by the chapter and the command that
# regenerates the shipped results, ``python -m companion.lab.search --out src/companion/lab/searched``.

#: The end time of the reference: every sampler's output is compared with the PF-ODE solution at T_REF,
#: so that t_end (1e-3 or 1e-4 for the baselines, free in [1e-4, 1e-3] for the search) is part of the error.
T_REF = 1e-4
#: Exact-score targets (``random_mixture`` arguments): a curved 2-D mixture of narrow components, a 64-D one,
#: and for the control a second 2-D mixture drawn from another seed.
BOOK_TARGETS: dict[str, dict[str, Any]] = {
    "2d": dict(d=2, spread=1.0, var_lo=0.0025, var_hi=0.04, seed=1, weights=(0.3, 0.3, 0.2, 0.2)),
    "64d": dict(d=64, spread=0.5, var_lo=0.005, var_hi=0.05, seed=1, weights=(0.3, 0.3, 0.2, 0.2)),
    "2d-other": dict(d=2, spread=1.0, var_lo=0.0025, var_hi=0.04, seed=2, weights=(0.3, 0.3, 0.2, 0.2)),
}
BOOK_NFE = (4, 5, 6, 8, 20)
SEARCH_SEED, HELDOUT_SEED = 1000, 2000


def book_target(name: str):
    """The mixture ``name`` of :data:`BOOK_TARGETS` (float64, exact scores)."""
    from ..targets import random_mixture

    return random_mixture(**BOOK_TARGETS[name])


def book_problem(name: str, n: int, seed: int, schedule: Schedule | None = None):
    """(model, x_T, reference) of target ``name``: ``n`` noises from ``seed`` and their PF-ODE solutions at
    :data:`T_REF`. Mixtures (float64, exact eps): DPM-Solver++(3M), 1000 log-SNR steps (within ~1e-6 of
    2000 steps). ``"digits"``: the shipped class-conditional digits UNet in float32, labels 0-9 in turn,
    no guidance, reference UniPC-3 with 200 log-SNR steps."""
    from ..schedules import VPLinear

    schedule = VPLinear() if schedule is None else schedule
    g = torch.Generator().manual_seed(seed)
    if name == "digits":
        from . import models

        net = models.load("digits-unet-eps").to(torch.float32)
        model = net.cond(torch.arange(n) % 10, guidance=1.0)
        x = torch.randn(n, 1, 8, 8, generator=g, dtype=torch.float32)
        with torch.no_grad():
            ref = sample(model, x, schedule=net.schedule, solver="unipc", order=3, steps=200, t_end=T_REF)
        return model, x, ref
    gm = book_target(name)
    model = gm.model(schedule, "eps")
    x = torch.randn(n, gm.dim, dtype=torch.float64, generator=g)
    ref = sample(model, x, schedule=schedule, solver="dpmsolver++", order=3, steps=1000, t_end=T_REF)
    return model, x, ref


def run_book_search(
    objective: Objective,
    schedule: Schedule,
    nfe: int,
    budget: int,
    seed: int,
    progress: bool = True,
) -> dict[str, Any]:
    """The chapter's search at one NFE: score every baseline on the search set, evolve from the five best
    (full space) and, with the same budget, the grid alone from the best one (timestep-only control)."""
    bl = baselines(nfe, schedule)
    fits = {k: objective(c) for k, c in bl.items()}
    ranked = sorted(fits, key=lambda k: fits[k])
    seeds = [bl[k] for k in ranked[:5]]
    full = evolve(objective, seeds, budget, generator=torch.Generator().manual_seed(seed), schedule=schedule,
                  progress=progress)  # fmt: skip
    tonly = evolve(objective, seeds[:1], budget, generator=torch.Generator().manual_seed(seed + 1),
                   schedule=schedule, timesteps_only=True, progress=progress)  # fmt: skip
    return {"baseline": ranked[0], "baseline_fitness": fits[ranked[0]], "full": full, "timesteps_only": tonly}


def _history(r: SearchResult, points: int = 40) -> list[list[float]]:
    n = len(r.history)
    idx = sorted({min(n - 1, round(math.exp(i * math.log(n) / (points - 1))) - 1) for i in range(points)})
    return [[i + 1, r.history[i]] for i in idx]


def main(argv: Sequence[str] | None = None) -> None:
    import argparse
    import time

    from ..schedules import VPLinear

    ap = argparse.ArgumentParser(
        description="Rerun the chapter's solver searches and write their JSON files."
    )
    ap.add_argument("--out", default="src/companion/lab/searched")
    ap.add_argument("--targets", nargs="+", default=["2d", "64d"])
    ap.add_argument("--nfe", nargs="+", type=int, default=list(BOOK_NFE))
    ap.add_argument("--budget", type=int, default=1000)
    ap.add_argument("--search-size", type=int, default=512)
    args = ap.parse_args(argv)
    sched = VPLinear()
    cmd = "python -m companion.lab.search " + " ".join(argv if argv is not None else sys.argv[1:])
    for name in args.targets:
        model, x, ref = book_problem(name, args.search_size, SEARCH_SEED, sched)
        for nfe in args.nfe:
            obj = Objective(model, sched, x, ref)
            t0 = time.perf_counter()
            out = run_book_search(obj, sched, nfe, args.budget, seed=nfe)
            secs = time.perf_counter() - t0
            for kind in ("full", "timesteps_only"):
                r: SearchResult = out[kind]
                save(
                    Path(args.out) / f"{name}-nfe{nfe}-{kind}.json", r.best,
                    target=name, nfe=nfe, kind=kind, fitness=r.fitness, evaluations=r.evaluations,
                    search_size=args.search_size, search_seed=SEARCH_SEED, budget=args.budget,
                    baseline=list(out["baseline"]), baseline_fitness=out["baseline_fitness"],
                    seconds_both_searches=secs, history=_history(r), command=cmd.strip(),
                )  # fmt: skip
            print(f"{name} NFE {nfe}: baseline {out['baseline_fitness']:.4g}, full {out['full'].fitness:.4g}, "
                  f"timesteps only {out['timesteps_only'].fitness:.4g} ({secs:.0f} s)")  # fmt: skip


if __name__ == "__main__":
    main()
