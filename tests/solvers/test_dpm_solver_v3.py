"""DPM-Solver-v3 (companion.solvers.dpm_solver_v3): reduction to DPM-Solver++(3M), exactness with the exact
statistics of Gaussian data, the Rademacher estimate of l against the exact Hessian diagonal, the
half-corrector's placement, and refusal of bad statistics. Conformance (orders, prediction types, options)
is in test_conformance.py."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import reference

import companion as cp
from companion.solvers.dpm_solver_v3 import ModelStatistics, estimate_statistics

VP = cp.schedules.VPLinear()
T_END = 1e-3


pytestmark = pytest.mark.usefixtures("one_thread")


def _mixture_problem(d=2, seed=1):
    gm = cp.targets.random_mixture(d, 1.0, 0.2, 0.5)
    x = torch.randn(16, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return gm, gm.model(VP, "eps"), x


@pytest.mark.parametrize("steps", [5, 6, 8, 10, 20])
def test_degenerate_statistics_are_the_correct_3m_and_not_the_legacy_one(steps, report):
    """statistics=None (l = 1, s = b = 0) is DPM-Solver++(3M) with exact weights (variant 'heun': every
    step, warm-up included, uses the Lagrange weights) to 5e-4 (measured: rounding), and the shipped 3M
    ('legacy', E3 where 2 E3 belongs) is more than 1e-2 away: the negative control."""
    _, model, x = _mixture_problem()
    kw = dict(schedule=VP, steps=steps, t_end=T_END, lower_order_final=False)
    v3 = cp.sample(model, x, solver="dpmsolver-v3", order=3, corrector=None, **kw)
    correct = cp.sample(model, x, solver="dpmsolver++", order=3, variant="heun", **kw)
    legacy = cp.sample(model, x, solver="dpmsolver++", order=3, variant="legacy", **kw)
    diff, far = float((v3 - correct).abs().max()), float((v3 - legacy).abs().max())
    report("dpmsolver-v3", f"degenerate v3 vs correct 3M, {steps} steps (max abs)", diff)
    report("dpmsolver-v3", f"degenerate v3 vs legacy 3M, {steps} steps (max abs)", far)
    assert diff <= 5e-4
    assert far > 1e-2


def test_explicit_degenerate_statistics_equal_none():
    _, model, x = _mixture_problem()
    lam = VP.lambda_(torch.tensor([1.0, T_END], dtype=torch.float64))
    stats = ModelStatistics(
        torch.linspace(float(lam[0]) - 0.5, float(lam[1]) + 0.5, 40, dtype=torch.float64),
        torch.ones(40, 2), torch.zeros(40, 2), torch.zeros(40, 2),
    )  # fmt: skip
    kw = dict(schedule=VP, steps=8, t_end=T_END, solver="dpmsolver-v3")
    a = cp.sample(model, x, statistics=stats, **kw)
    b = cp.sample(model, x, **kw)
    assert float((a - b).abs().max()) < 1e-12


def _gaussian_stats(mean, var):
    """Exact statistics of N(mean, diag(var)): l = 1/(1 + var e^{2 lambda}) (sigma d eps/dx), f = -l mean,
    so f' = (l'/l) f: s = d log l / d lambda = -2 (1 - l), b = 0 (g is constant: first order is exact)."""

    def l_fn(lam):
        return 1.0 / (1.0 + var[None] * torch.exp(2 * lam)[:, None])

    def s_fn(lam):
        return -2.0 * (1.0 - l_fn(lam))

    lo, hi = (float(v) for v in VP.lambda_(torch.tensor([1.0, T_END], dtype=torch.float64)))
    return ModelStatistics.analytic((lo, hi), l_fn, s_fn, shape=(mean.shape[0],))


def test_first_order_with_exact_statistics_is_exact_on_gaussian_data(report):
    """On N(mu, diag(var)) the exact l, s, b make g constant, so the first-order step is exact (1e-10)
    at any step count; DDIM (= v3 with degenerate statistics) is not (control)."""
    mean = torch.tensor([0.7, -1.2, 0.3], dtype=torch.float64)
    var = torch.tensor([0.05, 0.4, 2.0], dtype=torch.float64)
    g = cp.targets.Gaussian(mean, var)
    model = g.model(VP, "eps")
    x = torch.randn(32, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    exact = g.flow_map(x, 1.0, T_END, VP)
    stats = _gaussian_stats(mean, var)
    for steps in (1, 3, 10):
        kw = dict(schedule=VP, steps=steps, t_end=T_END, solver="dpmsolver-v3", order=1, corrector=None)
        y = cp.sample(model, x, statistics=stats, **kw)
        err = float((y - exact).abs().max())
        report("dpmsolver-v3", f"first order, exact Gaussian statistics, {steps} steps (max abs)", err)
        assert err < 1e-10
        ddim = cp.sample(model, x, **kw)
        assert float((ddim - exact).abs().max()) > 1e-3


def test_estimated_l_matches_the_exact_hessian_diagonal(report):
    """l = E[diag(sigma d eps/dx)] = E[-sigma^2 diag(Hess log p_lambda)]: the Rademacher/JVP estimate (4096
    samples) against the exact diagonal (hvp with unit vectors) averaged over 2^16 samples of q_lambda;
    every entry within 4 combined standard errors (14 entries: a false alarm has probability < 1e-3).
    Power: the same estimate misses the exact l of a mixture with 1.5x wider components by more than that."""
    gm = cp.targets.random_mixture(2, 1.0, 0.05, 0.3, seed=3)
    wide = cp.targets.GaussianMixture(gm.means, gm.covariances() * 1.5, gm.weights)
    model = gm.model(VP, "eps")
    gen = torch.Generator().manual_seed(5)
    est = estimate_statistics(
        model, VP, lambda n, g: gm.sample(n, generator=g), lam_range=(-3.0, 3.0), points=7,
        samples=4096, batch=4096, generator=gen, progress=False, smooth=1,
    )  # fmt: skip

    def exact_l(target, lam, n=2**16):
        t = VP.t_of_lambda(torch.tensor(lam, dtype=torch.float64))
        x = target.sample_t(n, float(t), VP, generator=torch.Generator().manual_seed(11))
        s2 = float(VP.sigma(t)) ** 2
        cols = []
        for k in range(2):
            e = torch.zeros_like(x)
            e[:, k] = 1.0
            cols.append(-s2 * target.hvp(x, float(t), VP, e)[:, k])
        d = torch.stack(cols, 1)
        return d.mean(0), d.std(0) / math.sqrt(n)

    worst, power = 0.0, 0.0
    for i, lam in enumerate(est.lam.tolist()):
        ex, ex_se = exact_l(gm, lam)
        wd, wd_se = exact_l(wide, lam)
        se = torch.sqrt(est.l_se[i] ** 2 + ex_se**2)
        z = ((est.l[i] - ex) / se).abs().max()
        worst = max(worst, float(z))
        power = max(power, float(((est.l[i] - wd) / torch.sqrt(est.l_se[i] ** 2 + wd_se**2)).abs().max()))
    report("dpmsolver-v3", "estimated l vs exact Hessian diagonal (max |z|)", worst)
    report("dpmsolver-v3", "estimated l vs a 1.5x wider mixture's l (max |z|, control)", power)
    assert worst < 4.0
    assert power > 4.0
    # l falls from about 1 (noise) towards 0 (data), as the paper's Fig. 2
    assert float(est.l[0].min()) > 0.9 and float(est.l[-1].max()) < 0.3


def test_estimated_statistics_on_gaussian_data_make_first_order_accurate():
    """Estimated l, s, b of Gaussian data (f' = s f exactly) bring first-order v3 at 5 steps within a
    small fraction of DDIM's error (the statistics carry the curvature the update integrates)."""
    mean = torch.tensor([0.7, -1.2], dtype=torch.float64)
    var = torch.tensor([0.05, 0.4], dtype=torch.float64)
    g = cp.targets.Gaussian(mean, var)
    model = g.model(VP, "eps")
    lo, hi = (float(v) for v in VP.lambda_(torch.tensor([1.0, T_END], dtype=torch.float64)))
    est = estimate_statistics(
        model, VP, lambda n, gen: g.sample(n, generator=gen), lam_range=(lo, hi), points=200, samples=512,
        batch=512, generator=torch.Generator().manual_seed(0), progress=False,
    )  # fmt: skip
    x = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    exact = g.flow_map(x, 1.0, T_END, VP)
    kw = dict(schedule=VP, steps=5, t_end=T_END, solver="dpmsolver-v3", order=1, corrector=None)
    e_est = float((cp.sample(model, x, statistics=est, **kw) - exact).square().mean().sqrt())
    e_ddim = float((cp.sample(model, x, **kw) - exact).square().mean().sqrt())
    assert e_est < 0.1 * e_ddim, (e_est, e_ddim)


def test_half_corrector_acts_only_where_t_is_at_most_one_half():
    """half=True is the paper's placement: on a grid with every t > 0.5 it equals no corrector; on one with
    every corrected point at t <= 0.5 it equals the full corrector (the official code does the opposite)."""
    _, model, x = _mixture_problem()
    for t_start, t_end, same_as in ((1.0, 0.6, None), (0.5, T_END, "pseudo")):
        kw = dict(schedule=VP, steps=6, t_start=t_start, t_end=t_end, solver="dpmsolver-v3")
        half = cp.sample(model, x, corrector="pseudo", half=True, **kw)
        want = cp.sample(model, x, corrector=same_as, **kw)
        other = cp.sample(model, x, corrector="pseudo" if same_as is None else None, **kw)
        assert float((half - want).abs().max()) < 1e-14
        assert float((half - other).abs().max()) > 1e-6


def test_corrector_lowers_the_error_at_matched_nfe():
    """The full corrector costs no model call and lowers the error of the 3M predictor at 10-20 steps."""
    _, model, x = _mixture_problem(d=16)
    ref = reference(model, VP, x, 1.0, T_END)
    for steps in (10, 20):
        kw = dict(schedule=VP, steps=steps, t_end=T_END, solver="dpmsolver-v3", lower_order_final=False)
        e_p = float((cp.sample(model, x, corrector=None, **kw) - ref).square().mean().sqrt())
        e_c = float((cp.sample(model, x, corrector="full", **kw) - ref).square().mean().sqrt())
        assert e_c < e_p, (steps, e_c, e_p)


# --- statistics objects --------------------------------------------------------------------------------
def _stats(n=10, shape=(2,), lo=-8.0, hi=8.0):
    return ModelStatistics(torch.linspace(lo, hi, n), torch.ones((n,) + shape), torch.zeros((n,) + shape),
                           torch.zeros((n,) + shape))  # fmt: skip


def test_wrong_shape_is_refused_with_the_shapes():
    _, model, x = _mixture_problem()
    with pytest.raises(ValueError, match=r"statistics: per-sample shape \(3,\).*\(2,\)"):
        cp.sample(
            model, x, schedule=VP, steps=5, t_end=T_END, solver="dpmsolver-v3", statistics=_stats(shape=(3,))
        )


def test_grid_not_covering_the_sampling_interval_is_refused():
    _, model, x = _mixture_problem()
    lam_end = float(VP.lambda_(torch.tensor(T_END)))
    short = _stats(lo=-8.0, hi=lam_end - 1.0)
    with pytest.raises(ValueError, match="does not cover the sampling interval"):
        cp.sample(model, x, schedule=VP, steps=5, t_end=T_END, solver="dpmsolver-v3", statistics=short)
    # the same statistics run where they cover the interval (control)
    cp.sample(model, x, schedule=VP, steps=5, t_end=0.05, solver="dpmsolver-v3", statistics=short)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(lam=torch.zeros(1)), "at least 2"),
        (dict(lam=torch.tensor([0.0, 1.0, 0.5])), "strictly increasing"),
        (dict(lam=torch.tensor([0.0, float("nan")])), "strictly increasing"),
        (dict(l=torch.ones(3, 2)), r"l must have shape \(N, \*sample_shape\)"),
        (dict(s=torch.zeros(2, 3)), "same shape"),
        (dict(b=torch.full((2, 2), float("inf"))), "b must be finite"),
    ],
)
def test_bad_tables_are_refused(kwargs, match):
    args = dict(lam=torch.tensor([0.0, 1.0]), l=torch.ones(2, 2), s=torch.zeros(2, 2), b=torch.zeros(2, 2))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ModelStatistics(**args)


def test_statistics_must_be_tensors():
    with pytest.raises(TypeError, match="lam must be a tensor"):
        ModelStatistics([0.0, 1.0], torch.ones(2), torch.zeros(2), torch.zeros(2))
    with pytest.raises(TypeError, match="statistics"):
        cp.solvers.build("dpmsolver-v3", statistics={"l": 1})


def test_save_and_load_round_trip(tmp_path):
    pytest.importorskip("safetensors")
    st = _stats(n=7)
    st.l_se = None
    st.meta = {"made": "test"}
    p = st.save(tmp_path / "ems.safetensors")
    back = ModelStatistics.load(p)
    assert torch.equal(back.lam, st.lam) and torch.equal(back.l, st.l) and back.meta == {"made": "test"}
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ModelStatistics.load(tmp_path / "none.safetensors")


def test_invert_runs_the_grid_upwards():
    """cp.invert runs the same update up the noise levels (h < 0): with degenerate statistics it equals the
    inversion by the correct 3M, and sampling then inverting returns close to the start (control: 4x fewer
    steps are further)."""
    _, model, x = _mixture_problem()
    kw = dict(schedule=VP, t_end=T_END)
    y = cp.sample(model, x, solver="dpmsolver-v3", steps=80, **kw)
    z = cp.invert(model, y, solver="dpmsolver-v3", corrector=None, steps=80, **kw)
    z3 = cp.invert(model, y, solver="dpmsolver++", order=3, variant="heun", steps=80, **kw)
    assert float((z - z3).abs().max()) < 1e-10
    back = float((cp.invert(model, y, solver="dpmsolver-v3", steps=80, **kw) - x).abs().max())
    coarse = cp.invert(model, cp.sample(model, x, solver="dpmsolver-v3", steps=20, **kw), solver="dpmsolver-v3",
                       steps=20, **kw)  # fmt: skip
    assert back < 1e-3 < float((coarse - x).abs().max())


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(), "exactly one of lam_range and t_range"),
        (dict(lam_range=(0.0, 1.0), t_range=(1.0, 0.1)), "exactly one of lam_range and t_range"),
        (dict(lam_range=(1.0, 1.0)), "two different finite"),
        (dict(lam_range=(0.0, 1.0), points=1), "points must be an int >= 2"),
        (dict(lam_range=(0.0, 1.0), samples=1), "samples must be an int >= 2"),
    ],
)
def test_estimation_refuses_bad_arguments(kwargs, match):
    g = cp.targets.Gaussian(torch.zeros(2, dtype=torch.float64), 1.0)
    with pytest.raises(ValueError, match=match):
        estimate_statistics(g.model(VP, "eps"), VP, g.sample(8), progress=False, **kwargs)
