"""Stochastic samplers through companion.sample: weak accuracy, strong order, noise invariants, the
interpolant family, exactness on point masses and polynomial data predictions."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from helpers import gaussian_path_solution
from torch import Tensor

import companion as cp
from companion.lab import metrics
from companion.noise import BrownianPath, InjectedNoise, PerSampleNoise
from companion.targets import Gaussian, GaussianMixture

VP = cp.schedules.VPLinear()
T_END = 1e-3


def _mixture(d: int) -> GaussianMixture:
    g = torch.Generator().manual_seed(d)
    means = 1.5 * torch.randn(3, d, generator=g, dtype=torch.float64)
    var = 0.05 + 0.3 * torch.rand(3, d, generator=g, dtype=torch.float64)
    return GaussianMixture(means, var, [0.3, 0.5, 0.2])


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _slope(ns, errs) -> float:
    return float(-np.polyfit(np.log(ns), np.log(errs), 1)[0])


# --- weak accuracy ---------------------------------------------------------------------------------
N_WEAK, N_MMD = 20_000, 2_000
_ANCESTRAL_BIAS = (
    "first-order weak bias: holding x0 = E[x0 | x_s] over a step drops the O(h^2) variance of x0 given x_s "
    "per step. With 200k samples the 2-D variance is -5.4/-2.6/-1.4/-0.6 % off at 100/200/400/800 logSNR "
    "steps (-6.5/-3.6/-1.7/-0.7 % on the Karras grid): about 2.6 standard errors of this 20k-sample test in "
    "expectation, 4.3 to 6.6 at its seed; it shrinks like h (test_weak_order_of_variance_on_gaussian). DDPM's "
    "other variance (variance 'large', sigma^2 = beta) adds the term back for standard normal data and passes"
)
_MMD_16D = (
    "first-order weak bias seen by the MMD in 16-D at 200 logSNR steps (moments pass): MMD^2 about 4x the floor "
    "3.7e-5 (Euler-Maruyama, SDE-DPM-Solver++(2M), DDPM with sigma^2 = beta); SDE-DPM-Solver++(2M) at 400 steps "
    "is inside the floor, and so is each of them on the Karras grid at 200 steps (the logSNR grid takes few, "
    "long steps at high noise, where g^2 is largest)"
)


def _xfail(reason):
    return pytest.mark.xfail(strict=True, reason=reason)


# (d, solver, options, grid). The logSNR grid is cp.sample's default (the ODE solvers' grid); the Karras
# grid (rho = 7, Karras et al. 2022) is the one EDM uses for its stochastic sampler.
WEAK = [
    (2, "euler-maruyama", {}, "logsnr"),
    pytest.param(2, "ancestral", {}, "logsnr", marks=_xfail(_ANCESTRAL_BIAS)),
    (2, "sde-dpmsolver++", {"order": 2}, "logsnr"),
    (2, "pc", {}, "logsnr"),
    pytest.param(16, "euler-maruyama", {}, "logsnr", marks=_xfail(_MMD_16D)),
    pytest.param(16, "ancestral", {}, "logsnr", marks=_xfail(_ANCESTRAL_BIAS)),
    pytest.param(16, "sde-dpmsolver++", {"order": 2}, "logsnr", marks=_xfail(_MMD_16D)),
    (16, "pc", {}, "logsnr"),
    (2, "ancestral", {"variance": "large"}, "logsnr"),
    pytest.param(16, "ancestral", {"variance": "large"}, "logsnr", marks=_xfail(_MMD_16D)),
    (2, "euler-maruyama", {}, "karras"),
    pytest.param(2, "ancestral", {}, "karras", marks=_xfail(_ANCESTRAL_BIAS)),
    (2, "sde-dpmsolver++", {"order": 2}, "karras"),
    (2, "pc", {}, "karras"),
    (16, "euler-maruyama", {}, "karras"),
    pytest.param(16, "ancestral", {}, "karras", marks=_xfail(_ANCESTRAL_BIAS)),
    (16, "sde-dpmsolver++", {"order": 2}, "karras"),
    (16, "pc", {}, "karras"),
    (2, "ancestral", {"variance": "large"}, "karras"),
    (16, "ancestral", {"variance": "large"}, "karras"),
]


def _block_mmd2(x: Tensor, y: Tensor, h: float) -> float:
    """Unbiased MMD^2 averaged over aligned blocks of N_MMD samples: uses every sample at O(n N_MMD) cost."""
    return sum(metrics.mmd2(x[i : i + N_MMD], y[i : i + N_MMD], h) for i in range(0, len(x), N_MMD)) / (
        len(x) // N_MMD
    )


@functools.cache
def _weak_setup(d: int) -> dict:
    gmm = _mixture(d)
    exact = gmm.sample_t(N_WEAK, T_END, VP, generator=_gen(2))
    m, C = gmm.mean_t(T_END, VP), gmm.cov_t(T_END, VP)
    dev = exact - m
    h = metrics.median_bandwidth(exact)
    g = _gen(3)
    null = [
        _block_mmd2(
            gmm.sample_t(N_WEAK, T_END, VP, generator=g), gmm.sample_t(N_WEAK, T_END, VP, generator=g), h
        )
        for _ in range(6)
    ]
    return {
        "gmm": gmm,
        "x_T": gmm.sample_t(N_WEAK, 1.0, VP, generator=_gen(1)),
        "exact": exact,
        "m": m,
        "C": C,
        "se_m": (C.diag() / N_WEAK).sqrt(),
        "se_C": (dev[:, :, None] * dev[:, None, :]).std(0) / math.sqrt(N_WEAK),
        "h": h,
        "floor": float(torch.tensor(null).square().mean().sqrt()),
    }


@pytest.mark.slow
def _kw_id(v):
    if not isinstance(v, dict):
        return None
    return "-".join(f"{k}={x}" for k, x in v.items()) or "default"


@pytest.mark.parametrize("d,solver,kw,grid", WEAK, ids=_kw_id)
def test_weak_accuracy_moments_and_mmd(d, solver, kw, grid, request, report):
    """20k samples at 200 steps, exact scores, 2-D and 16-D mixtures: mean and covariance within 4 standard
    errors of p_{t_end}'s; MMD^2 (block-averaged over all 20k) within 2x the two-sample noise floor, the
    RMS of the same estimator between independent exact sample sets of the same size."""
    S = _weak_setup(d)
    model = S["gmm"].model(VP, "eps")
    x = cp.sample(
        model,
        S["x_T"],
        schedule=VP,
        solver=solver,
        steps=200,
        t_end=T_END,
        grid=grid,
        generator=_gen(4),
        **kw,
    )
    zm = float(((x.mean(0) - S["m"]) / S["se_m"]).abs().max())
    zC = float(((torch.cov(x.T, correction=0) - S["C"]) / S["se_C"]).abs().max())
    mmd = _block_mmd2(x, S["exact"], S["h"])
    case = request.node.callspec.id
    report("weak accuracy (200 steps): max |z| of the mean", case, zm)
    report("weak accuracy (200 steps): max |z| of the covariance", case, zC)
    report("weak accuracy (200 steps): MMD^2 / noise floor", case, mmd / S["floor"])
    assert zm < 4 and zC < 4, (solver, zm, zC)
    assert mmd < 2 * S["floor"], (solver, mmd, S["floor"])


# --- strong order ----------------------------------------------------------------------------------
# Every stochastic solver's declared strong order is fitted by tests/solvers/test_conformance.py; here the
# derived strong order 0 of predictor-corrector sampling, which declares none.
NS = [40, 80, 160, 320]
N_FINE = 5120
MU, C0, B = 0.3, 0.25, 128


def _g2half(t):
    return VP.g2(t) / 2


@pytest.fixture(scope="module")
def gaussian_path():
    tgt = Gaussian(torch.full((2,), MU, dtype=torch.float64), C0)
    path = BrownianPath(range(B), cp.grids.logsnr(VP, 1.0, T_END, N_FINE))
    x_T = tgt.sample_t(B, 1.0, VP, generator=_gen(0))
    return tgt.model(VP, "eps"), path, x_T


_REF: dict = {}


def _strong_errors(gaussian_path, solver, kw, eps_fn):
    model, path, x_T = gaussian_path
    if eps_fn not in _REF:
        _REF[eps_fn] = gaussian_path_solution(VP, path, x_T, eps_fn, MU, C0)
    ref = _REF[eps_fn]
    errs = []
    for n in NS:
        x = cp.sample(model, x_T, schedule=VP, solver=solver, steps=n, t_end=T_END, noise=path, **kw)
        errs.append(float((x - ref).square().sum(1).mean().sqrt()))
    return errs


def test_predictor_corrector_is_not_pathwise_convergent(gaussian_path, report):
    """Derived strong order 0: the Langevin corrector's noise is independent of the Brownian path, so the
    error does not fall with the step count (it grows as more corrector moves accumulate)."""
    errs = _strong_errors(gaussian_path, "pc", {"final_noise": True}, _g2half)
    report("strong order (40-320 steps)", "pc (derived 0)", _slope(NS, errs))
    assert _slope(NS, errs) < 0.25, errs


@pytest.mark.parametrize("solver", ["euler-maruyama", "ancestral", "interpolant"])
def test_weak_order_of_variance_on_gaussian(solver):
    """Data N(MU, C0): the one-step solvers are linear, x_{i+1} = A x_i + B m(x_i) + std z, so the law of
    their output is Gaussian with variance  v_{i+1} = (A + B dm/dx)^2 v_i + std^2  (no sampling). Its error
    against alpha^2 C0 + sigma^2 at t_end falls like 1/N: weak order 1."""
    from companion.solvers.base import Points
    from companion.solvers.ddim import ddim_noise_coefs
    from companion.solvers.euler_maruyama import em_coefs
    from companion.solvers.interpolant import interpolant_coefs

    errs = []
    for n in NS:
        pts = Points.of(VP, cp.grids.logsnr(VP, 1.0, T_END, n))
        a2c = pts.alpha**2 * C0
        k = pts.alpha * C0 / (a2c + pts.sigma**2)  # d x0 / dx
        if solver == "euler-maruyama":
            A, Bm, std = em_coefs(VP, pts, final_noise=True)
            dm = (1 - pts.alpha * k) / pts.sigma  # d eps / dx
        elif solver == "ancestral":
            A, Bm, std = ddim_noise_coefs(pts, 1.0)
            dm = k
        else:
            A, Bm, std = interpolant_coefs(VP, pts, 0.5)
            dm = k
        v = a2c[0] + pts.sigma[0] ** 2
        for i in range(n):
            v = (A[i] + Bm.reshape(n)[i] * dm[i]) ** 2 * v + std[i] ** 2
        errs.append(float(abs(v - (a2c[-1] + pts.sigma[-1] ** 2))))
    assert abs(_slope(NS, errs) - 1.0) < 0.25, errs


@pytest.mark.parametrize(
    "schedule,t_end", [(VP, T_END), (cp.schedules.VPCosine(), T_END), (cp.schedules.EDM(), 0.002)], ids=str
)
@pytest.mark.parametrize("steps", [1, 3, 10])
def test_ancestral_large_variance_is_exact_for_standard_normal_data(schedule, t_end, steps):
    """x0 ~ N(0, I): Cov[x0 | x_s] = sigma_s^2/(alpha_s^2 + sigma_s^2) I, so the step's law is exact when it adds
    back b^2 times that (variance "large"): the Gaussian recursion of the variance (no sampling) lands on
    alpha^2 + sigma^2 at every grid point, for any step count; the "small" variance falls short. (A final
    step onto sigma = 0 returns the mean, DDPM's convention, and is not exact; the grid here ends before.)"""
    from companion.solvers.ancestral import ancestral_coefs
    from companion.solvers.base import Points

    t = cp.grids.get_grid("karras", schedule, steps, None, t_end, 7.0)
    pts = Points.of(schedule, t)
    a, b, std = ancestral_coefs(pts, 1.0, "large")
    exact = pts.alpha**2 + pts.sigma**2
    k = pts.alpha / exact  # d E[x0 | x] / dx
    v = exact[0]
    for i in range(steps):
        v = (a[i] + b[i] * k[i]) ** 2 * v + std[i] ** 2
        assert abs(float(v / exact[i + 1] - 1)) < 1e-12, (i, float(v), float(exact[i + 1]))
    a, b, std = ancestral_coefs(pts, 1.0, "small")
    v = exact[0]
    for i in range(steps):
        v = (a[i] + b[i] * k[i]) ** 2 * v + std[i] ** 2
    assert float(v / exact[-1]) < 1 - 1e-3


def test_ancestral_large_variance_rejects_eta_below_one():
    with pytest.raises(ValueError, match="eta = 1"):
        cp.sample(
            lambda x, t: x,
            torch.zeros(2, 2),
            schedule=VP,
            solver="ancestral",
            variance="large",
            eta=0.5,
            t_end=T_END,
        )


# --- noise invariants ------------------------------------------------------------------------------
ALL = [
    ("euler-maruyama", {}),
    ("ancestral", {}),
    ("ancestral", {"variance": "large"}),
    ("ddim", {"order": 1, "eta": 0.7}),
    ("sde-dpmsolver++", {"order": 2}),
    ("sde-dpmsolver++", {"order": 3}),
    ("pc", {}),
    ("pc", {"predictor": "ancestral", "corrector_steps": 2}),
    ("interpolant", {"diffusion": 0.5}),
]


@pytest.mark.parametrize("solver,kw", ALL)
def test_batch_invariance_bit_for_bit(solver, kw):
    gmm = _mixture(3)
    model = gmm.model(VP, "eps")
    seeds = [7, 1, 99, 5, 123456789, 0, 31]
    noise = PerSampleNoise(seeds)
    x_T = noise.randn(3, dtype=torch.float64)
    out = cp.sample(model, x_T, schedule=VP, solver=solver, steps=12, t_end=T_END, noise=noise, **kw)
    for i, s in enumerate(seeds):
        alone = PerSampleNoise([s])
        x1 = cp.sample(
            model, alone.randn(3, dtype=torch.float64), schedule=VP, solver=solver, steps=12, t_end=T_END,
            noise=alone, **kw,
        )  # fmt: skip
        assert torch.equal(out[i], x1[0]), (solver, i)


@pytest.mark.parametrize("solver,kw", ALL)
def test_same_seed_same_result_other_seed_other_result(solver, kw):
    gmm = _mixture(2)
    model = gmm.model(VP, "eps")
    x_T = torch.randn(5, 2, generator=_gen(0), dtype=torch.float64)

    def run(**noise):
        return cp.sample(model, x_T, schedule=VP, solver=solver, steps=8, t_end=T_END, **kw, **noise)

    assert torch.equal(run(noise=PerSampleNoise(range(5))), run(noise=PerSampleNoise(range(5))))
    assert torch.equal(run(generator=_gen(3)), run(generator=_gen(3)))
    a, b = run(noise=PerSampleNoise(range(5))), run(noise=PerSampleNoise(range(5, 10)))
    assert not torch.isclose(a, b).any()
    assert not torch.isclose(run(generator=_gen(3)), run(generator=_gen(4))).any()


# --- the interpolant family ------------------------------------------------------------------------
N_INT = 2000


@pytest.fixture(scope="module")
def interpolant_setup():
    gmm = _mixture(2)
    out = {"gmm": gmm, "x_T": gmm.sample_t(N_INT, 1.0, VP, generator=_gen(10))}
    for t_end in (0.5, T_END):
        exact = gmm.sample_t(N_INT, t_end, VP, generator=_gen(11))
        h = metrics.median_bandwidth(exact)
        floor = metrics.mmd2_noise_floor(
            lambda k, g, t_end=t_end: gmm.sample_t(k, t_end, VP, generator=g), N_INT, 8, _gen(12), h
        )
        out[t_end] = (exact, h, float(floor.square().mean().sqrt()))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("eps", [0.0, 0.5, 1.0, 2.0])
def test_interpolant_family_keeps_the_marginals(interpolant_setup, eps):
    """For every diffusion eps >= 0 the samples at t = 0.5 and at t_end match p_t (MMD^2 < 3x floor)."""
    S = interpolant_setup
    model = S["gmm"].model(VP, "eps")
    for t_end in (0.5, T_END):
        exact, h, floor = S[t_end]
        x = cp.sample(
            model, S["x_T"], schedule=VP, solver="interpolant", diffusion=eps, steps=200, t_end=t_end,
            noise=PerSampleNoise(range(N_INT)),
        )  # fmt: skip
        assert metrics.mmd2(x, exact, h) < 3 * floor, (eps, t_end)


def test_interpolant_reduces_to_ddim_and_ancestral():
    gmm = _mixture(2)
    model = gmm.model(VP, "eps")
    x_T = torch.randn(6, 2, generator=_gen(0), dtype=torch.float64)
    z = InjectedNoise(torch.randn(10, 6, 2, generator=_gen(1), dtype=torch.float64))

    def run(solver, **kw):
        return cp.sample(model, x_T, schedule=VP, solver=solver, steps=10, t_end=T_END, noise=z, **kw)

    torch.testing.assert_close(run("interpolant", diffusion=0.0), run("ddim", order=1), rtol=0, atol=1e-12)
    torch.testing.assert_close(run("interpolant", diffusion=_g2half), run("ancestral"), rtol=0, atol=1e-10)
    torch.testing.assert_close(run("sde-dpmsolver++", order=1), run("ancestral"), rtol=0, atol=1e-12)
    torch.testing.assert_close(run("ddim", order=1, eta=1.0), run("ancestral"), rtol=0, atol=1e-12)


# --- exactness -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "solver,kw", [("ancestral", {}), ("sde-dpmsolver++", {"order": 2}), ("interpolant", {"diffusion": 1.0})]
)
def test_point_mass_no_residual_noise_at_few_steps(solver, kw):
    """On a point mass the data prediction is exact, so these samplers draw p_{t_end} = N(alpha x*, sigma^2)
    exactly at any step count: at 5 steps the residual noise is sigma_{t_end}, not the g sqrt(dt) of EM."""
    n, atom = 20_000, torch.tensor([[0.7, -1.2]], dtype=torch.float64)
    pm = GaussianMixture.point_masses(atom)
    x_T = torch.randn(n, 2, generator=_gen(0), dtype=torch.float64)
    x = cp.sample(
        pm.model(VP, "eps"), x_T, schedule=VP, solver=solver, steps=5, t_end=0.01, generator=_gen(1), **kw
    )
    a, s = float(VP.alpha(torch.tensor(0.01))), float(VP.sigma(torch.tensor(0.01)))
    assert (x.mean(0) - a * atom[0]).abs().max() < 4 * s / math.sqrt(n)
    assert (x.std(0) / s - 1).abs().max() < 4 / math.sqrt(2 * n)


def _sde_step_exact(x, s, t, poly):
    """Noise-free part of the reverse SDE's solution over one step when x0(lambda) = poly(lambda):
    (sigma_t/sigma_s) e^{-h} x + alpha_t int_0^h 2 e^{-2(h-u)} poly(lambda_s + u) du (Gauss-Legendre)."""
    xg, wg = (torch.as_tensor(v, dtype=torch.float64) for v in np.polynomial.legendre.leggauss(40))
    ls, lt = VP.lambda_(s), VP.lambda_(t)
    h = lt - ls
    u = h / 2 * (xg + 1)
    integral = (wg * h * torch.exp(-2 * (h - u)) * poly(ls + u)).sum()
    return VP.sigma(t) / VP.sigma(s) * torch.exp(-h) * x + VP.alpha(t) * integral


@pytest.mark.parametrize("order,variant,exact_degree", [(2, "heun", 1), (3, "midpoint", 2), (3, "legacy", 1)])
def test_sde_dpmsolver_steps_integrate_polynomial_data_predictions(order, variant, exact_degree):
    """A step of the exact k-step method integrates any degree-(k-1) x0(lambda) exactly; the legacy 3M
    (E3(2h) where 2 E3(2h) is needed) only degree 1."""
    from companion.solvers.base import Points
    from companion.solvers.sde_dpm_solver import sde_dpm_coefs

    grid = cp.grids.logsnr(VP, 1.0, 0.01, 12) ** 1.1  # a non-uniform lambda grid
    pts = Points.of(VP, grid)
    orders = [min(order, i + 1) for i in range(12)]
    A, B, _ = sde_dpm_coefs(pts, orders, variant)
    x = torch.tensor(0.37, dtype=torch.float64)
    for deg in (1, 2):
        c = [0.3, -0.8, 0.25][: deg + 1]

        def poly(lam, c=c):
            return sum(ck * lam**k for k, ck in enumerate(c))

        err = max(
            float((A[i] * x + sum(B[i, j] * poly(pts.lam[i - j]) for j in range(order)) - _sde_step_exact(
                x, grid[i], grid[i + 1], poly)).abs())
            for i in range(order - 1, 12)
        )  # fmt: skip
        assert (err < 1e-12) == (deg <= exact_degree), (deg, err)


# --- argument checks -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "solver,kw,match",
    [
        ("ancestral", {"eta": 1.5}, "eta"),
        ("interpolant", {"diffusion": -1.0}, "diffusion"),
        ("interpolant", {"diffusion": lambda t: t - 0.5}, "diffusion"),
        ("pc", {"snr": 0.0}, "snr"),
        ("pc", {"predictor": "heun"}, "predictor"),
        ("pc", {"corrector_steps": -1}, "corrector_steps"),
        ("euler-maruyama", {"order": 2}, "order"),
        ("sde-dpmsolver++", {"variant": "taylor"}, "variant"),
        ("sde-dpmsolver++", {"order": 2, "variant": "legacy"}, "order=3"),
    ],
)
def test_bad_arguments(solver, kw, match):
    x = torch.zeros(2, 2)
    with pytest.raises(ValueError, match=match):
        cp.sample(lambda x, t: x, x, schedule=VP, solver=solver, steps=3, t_end=T_END, **kw)


def test_noise_and_generator_are_exclusive():
    with pytest.raises(ValueError, match="not both"):
        cp.sample(
            lambda x, t: x, torch.zeros(1, 2), schedule=VP, solver="ancestral", steps=3, t_end=T_END,
            noise=PerSampleNoise([0]), generator=_gen(0),
        )  # fmt: skip
