"""Solver search: a saved schedule reproduces its fitness, the baseline plans are the package's solvers, the
evolution is seeded and never loses its seeds, and the shipped results load and re-score."""

from __future__ import annotations

import json

import pytest
import torch

import companion as cp
from companion.lab import search as S
from companion.solvers.usf import Step

SCHED = cp.schedules.VPLinear()


@pytest.fixture(scope="module")
def small():
    gm = cp.targets.random_mixture(2, 1.0, 0.0025, 0.04, seed=3, weights=(0.3, 0.3, 0.2, 0.2))
    model = gm.model(SCHED, "eps")
    x = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ref = cp.sample(model, x, schedule=SCHED, solver="dpmsolver++", order=3, steps=400, t_end=S.T_REF)
    return model, x, ref


SOLVER_OF = {
    "dpmsolver++ 2M": dict(solver="dpmsolver++", order=2),
    "dpmsolver++ 3M (correct)": dict(solver="dpmsolver++", order=3),
    "unipc-2 bh1": dict(solver="unipc", order=2, variant="bh1"),
    "unipc-2 bh2": dict(solver="unipc", order=2, variant="bh2"),
    "unipc-3 bh1": dict(solver="unipc", order=3, variant="bh1"),
    "unipc-3 bh2": dict(solver="unipc", order=3, variant="bh2"),
}


@pytest.mark.parametrize("nfe", [4, 6, 20])
@pytest.mark.parametrize("solver", list(S.BASELINE_SOLVERS))
def test_baseline_plans_are_the_package_solvers(small, solver, nfe):
    model, x, _ = small
    for grid in S.BASELINE_GRIDS:
        c = S.baseline(solver, grid, nfe, SCHED, 1e-3)
        ref = cp.sample(model, x, schedule=SCHED, timesteps=c.grid(), **SOLVER_OF[solver])
        assert (c.sample(model, x, SCHED) - ref).abs().max().item() <= 1e-10, (solver, grid)


def test_saved_schedule_reproduces_its_fitness(small, tmp_path):
    model, x, ref = small
    obj = S.Objective(model, SCHED, x, ref)
    seeds = [S.baseline("unipc-2 bh2", "quadratic", 5, SCHED, 1e-3)]
    r = S.evolve(obj, seeds, 40, generator=torch.Generator().manual_seed(0), schedule=SCHED, progress=False)
    path = S.save(tmp_path / "found.json", r.best, fitness=r.fitness)
    cand, meta = S.load(path)
    assert cand == r.best and meta["fitness"] == r.fitness
    assert obj(cand) == r.fitness  # exactly: the times round-trip through JSON bit for bit
    # and through cp.sample with the found grid and plan
    x_out = cp.sample(model, x, schedule=SCHED, timesteps=cand.grid(), solver="usf", plan=cand.plan)
    assert cp.lab.experiments.rms_error(x_out, ref) == r.fitness


def test_evolution_is_seeded_elitist_and_counts_its_budget(small):
    model, x, ref = small
    obj = S.Objective(model, SCHED, x, ref)
    seeds = [S.baseline(s, "logSNR", 6, SCHED, 1e-3) for s in ("dpmsolver++ 2M", "unipc-3 bh2")]
    runs = [
        S.evolve(obj, seeds, 30, generator=torch.Generator().manual_seed(k), schedule=SCHED, progress=False)
        for k in (5, 5, 6)
    ]
    assert runs[0].best == runs[1].best and runs[0].fitness == runs[1].fitness
    assert runs[0].best != runs[2].best
    seed_fit = min(obj(s) for s in seeds)
    for r in runs:
        assert r.evaluations == 30 and len(r.history) == 30
        assert r.fitness <= seed_fit and r.history == sorted(r.history, reverse=True)
    t_only = S.evolve(obj, seeds[:1], 30, generator=torch.Generator().manual_seed(1), schedule=SCHED,
                      timesteps_only=True, progress=False)  # fmt: skip
    assert t_only.best.plan == seeds[0].plan


def test_bad_arguments():
    c = S.baseline("dpmsolver++ 2M", "logSNR", 4, SCHED, 1e-3)
    with pytest.raises(ValueError, match="budget"):
        S.evolve(lambda c: 0.0, [c], 0, generator=torch.Generator(), schedule=SCHED)
    with pytest.raises(TypeError, match="generator"):
        S.evolve(lambda c: 0.0, [c], 5, generator=0, schedule=SCHED)
    with pytest.raises(ValueError, match="one NFE"):
        S.evolve(lambda c: 0.0, [c, S.baseline("dpmsolver++ 2M", "logSNR", 5, SCHED, 1e-3)], 5,
                 generator=torch.Generator(), schedule=SCHED)  # fmt: skip
    with pytest.raises(ValueError, match="plan has 1 steps but timesteps has 2"):
        S.Candidate((1.0, 0.5, 0.1), (Step(1),))
    with pytest.raises(ValueError, match="strictly decreasing"):
        S.Candidate((1.0, 1.0), (Step(1),))
    with pytest.raises(ValueError, match="no shipped search result"):
        S.shipped("nonexistent")


def test_shipped_results_load_and_reproduce_their_fitness():
    """Every shipped search result is a valid candidate of its NFE; one per target re-scores to its saved
    search-set fitness exactly (same noises, same reference)."""
    folder = S.shipped("2d-nfe4-full").parent
    files = sorted(folder.glob("*.json"))
    assert files and sum(f.stat().st_size for f in files) < 64 * 1024
    for f in files:
        cand, meta = S.load(f)
        assert cand.nfe == meta["nfe"] and json.loads(f.read_text())["meta"]["fitness"] == meta["fitness"]
    cand, meta = S.load(S.shipped("2d-nfe4-full"))
    model, x, ref = S.book_problem("2d", meta["search_size"], meta["search_seed"], SCHED)
    assert S.Objective(model, SCHED, x, ref)(cand) == meta["fitness"]


def test_the_regeneration_command_writes_loadable_results(tmp_path):
    """``python -m companion.lab.search`` (what FULL=True runs) at a tiny budget: both searches are written,
    load back, record their command, and never score worse than the baseline they started from."""
    S.main(["--out", str(tmp_path), "--targets", "2d", "--nfe", "4", "--budget", "6", "--search-size", "16"])
    for kind in ("full", "timesteps_only"):
        cand, meta = S.load(tmp_path / f"2d-nfe4-{kind}.json")
        assert cand.nfe == 4 and meta["evaluations"] == 6 and meta["kind"] == kind
        assert "--budget 6" in meta["command"]
        assert meta["fitness"] <= meta["baseline_fitness"]
