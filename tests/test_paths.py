"""Gaussian paths, the data separation function, kinetic energy and the KO path (companion.paths).

Theory first: closed forms (Cond-OT on N(0, I) data, perfectly separated data), the KO energy 2 - 2 cos Phi,
Monte Carlo against quadrature within stated standard errors, the KO path as a valid Schedule, and solvers
running along it.
"""

import math

import pytest
import torch

import companion as cp
from companion import paths as P

ONE = lambda s: torch.ones_like(torch.as_tensor(s, dtype=torch.float64))  # noqa: E731  perfectly separated


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def anisotropic_mixture():
    """Four narrow components in 2-D, normalised to E||x_0||^2 = d = 2."""
    means = torch.tensor([[-2.0, -0.5], [0.0, 0.8], [2.0, -0.5], [0.5, -1.2]], dtype=torch.float64)
    g = cp.targets.GaussianMixture(means, torch.full((4,), 0.05))
    c = math.sqrt(2.0 / float((g.mean() ** 2).sum() + torch.diagonal(g.cov()).sum()))
    return cp.targets.GaussianMixture(means * c, torch.full((4,), 0.05 * c * c))


# --- closed forms -------------------------------------------------------------------------------------------


def test_condot_on_gaussian_data_is_two_minus_half_pi():
    assert P.kinetic_energy(P.CondOT(), P.gaussian_separation) == pytest.approx(2 - math.pi / 2, abs=1e-9)
    assert P.profile(P.gaussian_separation).condot_energy == pytest.approx(2 - math.pi / 2, abs=1e-6)


def test_perfect_separation_gives_two_and_condot_is_the_ko_path():
    assert P.kinetic_energy(P.CondOT(), ONE) == pytest.approx(2.0, abs=1e-9)
    ko = P.kinetic_optimal(ONE)
    assert ko.Phi == pytest.approx(math.pi / 2, abs=1e-9) and ko.energy == pytest.approx(2.0, abs=1e-9)
    t = torch.linspace(0.0, 1.0, 101, dtype=torch.float64)[1:-1]
    assert torch.allclose(ko.alpha(t), 1 - t, atol=1e-9) and torch.allclose(ko.sigma(t), t, atol=1e-9)


def test_gaussian_data_ko_path_has_zero_energy_on_the_unit_circle():
    ko = P.kinetic_optimal(P.gaussian_separation)
    assert ko.energy < 1e-10 and P.kinetic_energy(ko, P.gaussian_separation) < 1e-9
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    assert torch.allclose(ko.alpha(t) ** 2 + ko.sigma(t) ** 2, torch.ones_like(t), atol=1e-9)


@pytest.mark.parametrize("data", ["mixture", "points"])
def test_ko_energy_is_two_minus_two_cos_phi_and_below_other_paths(data):
    x = anisotropic_mixture() if data == "mixture" else P.normalize(torch.randn(40, 16, generator=gen(3)))
    lam = P.estimate_separation(x, gen(1), samples=1024)
    prof = P.profile(lam)
    ko = P.KineticOptimal(prof)
    # The chord's energy, from the path's own derivatives by quadrature, against the closed form.
    assert P.kinetic_energy(ko, lam) == pytest.approx(2 - 2 * math.cos(prof.Phi), rel=1e-6)
    assert P.kinetic_energy(P.CondOT(), lam) == pytest.approx(prof.condot_energy, rel=1e-5)
    for other in (P.CondOT(), cp.schedules.VPLinear(), cp.schedules.VPCosine()):
        t_min = None if isinstance(other, P.CondOT) else 1e-3
        assert ko.energy <= P.kinetic_energy(other, lam, t_min=t_min)


def test_direct_minimisation_agrees_with_the_one_dimensional_solution():
    lam = P.estimate_separation(anisotropic_mixture(), gen(1), samples=1024)
    prof = P.profile(lam)
    res = P.minimize_kinetic_energy(prof, knots=50)
    assert res.success
    # Every piecewise-linear path is admissible, so the discrete minimum lies above the KO energy.
    assert prof.ko_energy <= res.energy <= 1.01 * prof.ko_energy
    assert res.alpha[0] == 1 and res.sigma[-1] == 1


def test_direct_minimisation_energy_is_exact_for_condot():
    # One segment from (1, 0) to (0, 1) is Cond-OT: the discrete energy must be its exact energy.
    prof = P.profile(P.gaussian_separation)
    al = torch.tensor([1.0, 0.0], dtype=torch.float64)
    sg = torch.tensor([0.0, 1.0], dtype=torch.float64)
    G = prof.G_at(torch.atan2(al, sg))
    c = al[0] * sg[1] - al[1] * sg[0]
    assert float(2.0 - c * (G[0] - G[1])) == pytest.approx(2 - math.pi / 2, abs=1e-6)


# --- separation functions -----------------------------------------------------------------------------------


def test_gaussian_separation_closed_form_against_monte_carlo():
    s = torch.tensor([0.1, 0.5, 1.0, 2.0, 5.0], dtype=torch.float64)
    # N(0, I) in d = 100 with its exact denoiser, plain Monte Carlo: per-sample errors average over d.
    g = cp.targets.Gaussian(torch.zeros(100), torch.eye(100))
    lam, se = P.separation(g, s, gen(0), samples=2000, control_variate=False, return_error=True)
    assert bool((se < 0.005).all())
    assert torch.allclose(lam, P.gaussian_separation(s), atol=4 * float(se.max()))
    # 1-D "Gaussian data" as points: the N(0, 1) quantiles, through the exact posterior over the points.
    u = (torch.arange(4000, dtype=torch.float64) + 0.5) / 4000
    pts = P.normalize((math.sqrt(2) * torch.erfinv(2 * u - 1))[:, None], center=False)
    lam, se = P.separation(pts, s, gen(0), samples=4000, return_error=True)
    assert bool((se < 1e-3).all())
    assert torch.allclose(lam, P.gaussian_separation(s), atol=4 * float(se.max()) + 1e-3)


def test_control_variate_agrees_with_plain_monte_carlo_and_reduces_variance():
    x = P.normalize(torch.randn(50, 8, generator=gen(2)))
    s = torch.tensor([0.05, 0.3, 1.0, 3.0], dtype=torch.float64)
    a, se_a = P.separation(x, s, gen(0), samples=4000, return_error=True)
    b, se_b = P.separation(x, s, gen(1), samples=4000, control_variate=False, return_error=True)
    assert bool(((a - b).abs() <= 4 * torch.sqrt(se_a**2 + se_b**2)).all())
    assert float(se_a[0]) < 0.2 * float(se_b[0])


def test_separation_limits_and_bounds():
    x = P.normalize(torch.randn(30, 20, generator=gen(4)))
    s = torch.tensor([0.0, 0.5, 2.0, 50.0], dtype=torch.float64)
    lam = P.separation(x, s, gen(0), samples=600)
    assert float(lam[0]) == pytest.approx(0.0, abs=1e-12)  # centred data: xhat = mean = 0 at s = 0
    assert float(lam[-1]) == pytest.approx(1.0, abs=1e-4)  # separated points at high SNR
    # MMSE <= the linear estimator's, whose rank-n bound is 1 - Lambda <= 1 / (1 + s^2 d / n).
    assert bool((1 - lam[1:] <= 1 / (1 + s[1:] ** 2 * 20 / 30) + 1e-2).all())
    assert bool((lam >= P.gaussian_separation(s) - 1e-2).all())


def test_separation_is_the_same_for_a_mixture_of_point_masses_and_the_points():
    pts = P.normalize(torch.randn(6, 3, generator=gen(5)))
    gm = cp.targets.GaussianMixture.point_masses(pts)
    s = torch.tensor([0.3, 1.0, 3.0], dtype=torch.float64)
    a, se_a = P.separation(pts, s, gen(0), samples=3000, return_error=True)
    b, se_b = P.separation(gm, s, gen(1), samples=3000, return_error=True)
    assert bool(((a - b).abs() <= 4 * torch.sqrt(se_a**2 + se_b**2) + 1e-9).all())


# --- Monte Carlo kinetic energy against quadrature ------------------------------------------------------------


@pytest.mark.parametrize("which", ["condot", "ko", "vp"])
def test_monte_carlo_energy_matches_quadrature(which):
    gmm = anisotropic_mixture()
    lam = P.estimate_separation(gmm, gen(1), samples=4096)
    path = {"condot": P.CondOT(), "ko": P.kinetic_optimal(lam), "vp": cp.schedules.VPLinear()}[which]
    t_min = 1e-3 if which == "vp" else None
    quad = P.kinetic_energy(path, lam, t_min=t_min)
    mc, se = P.kinetic_energy_mc(path, gmm, gen(2), samples=512, t_min=t_min)
    # The quadrature carries the separation function's Monte Carlo error too (about 1e-3 relative here).
    assert abs(mc - quad) <= 4 * se + 5e-3 * quad


def test_monte_carlo_energy_of_condot_on_gaussian_data():
    g = cp.targets.Gaussian(torch.zeros(200), torch.eye(200))
    mc, se = P.kinetic_energy_mc(P.CondOT(), g, gen(0), samples=64)
    assert se < 2e-3 and abs(mc - (2 - math.pi / 2)) <= 4 * se


# --- the KO path as a Schedule --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ko_digitsish():
    return P.kinetic_optimal(
        P.estimate_separation(P.normalize(torch.randn(64, 32, generator=gen(6))), gen(0))
    )


def test_ko_path_is_a_valid_schedule(ko_digitsish):
    ko = ko_digitsish
    t = torch.linspace(1e-4, 1 - 1e-4, 400, dtype=torch.float64)
    lam = ko.lambda_(t)
    assert bool((lam.diff() < 0).all()), "lambda strictly decreasing"
    assert torch.allclose(ko.t_of_lambda(lam), t, atol=1e-10, rtol=0)
    assert float(ko.alpha(torch.tensor(0.0, dtype=torch.float64))) == pytest.approx(1.0, abs=1e-12)
    assert float(ko.sigma(torch.tensor(0.0, dtype=torch.float64))) == pytest.approx(0.0, abs=1e-12)
    assert float(ko.alpha(torch.tensor(1.0, dtype=torch.float64))) == pytest.approx(0.0, abs=1e-9)
    assert float(ko.sigma(torch.tensor(1.0, dtype=torch.float64))) == pytest.approx(1.0, abs=1e-12)


def test_ko_path_derivatives_match_finite_differences(ko_digitsish):
    ko = ko_digitsish
    t = torch.linspace(0.05, 0.95, 37, dtype=torch.float64)
    h = 1e-6
    for f, df in ((ko.log_alpha, ko.d_log_alpha), (ko.log_sigma, ko.d_log_sigma)):
        fd = (f(t + h) - f(t - h)) / (2 * h)
        assert torch.allclose(df(t), fd, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("solver", [dict(solver="euler", order=1, variable="t"), dict(solver="heun", order=2),
                                    dict(solver="dpmsolver++", order=2), dict(solver="unipc", order=3),
                                    dict(solver="ddim", order=1)], ids=lambda d: d["solver"])  # fmt: skip
@pytest.mark.parametrize("which", ["condot", "ko"])
def test_solvers_sample_along_condot_and_ko(solver, which, ko_digitsish):
    gmm = anisotropic_mixture()
    path = P.CondOT() if which == "condot" else ko_digitsish
    ts, te = (float(path.t_of_lambda(torch.tensor(v, dtype=torch.float64))) for v in (-4.0, 5.0))
    x_T = path.sigma(ts) * torch.randn(256, 2, generator=gen(0), dtype=torch.float64)
    grid = "time_uniform" if solver.get("variable") == "t" else "logsnr"
    out = {
        steps: cp.sample(
            gmm.model(path, "x0"),
            x_T,
            schedule=path,
            prediction="x0",
            steps=steps,
            grid=grid,
            t_start=ts,
            t_end=te,
            **solver,
        )  # fmt: skip
        for steps in (20, 80)
    }
    ref = cp.reference.solve_pf_ode(gmm, x_T, path, ts, te)
    errs = [float(((out[k] - ref) ** 2).sum(1).mean().sqrt()) for k in (20, 80)]
    assert all(math.isfinite(e) for e in errs) and errs[1] < errs[0]


def test_exponential_integrators_give_the_same_samples_on_every_path_at_equal_log_snr(ko_digitsish):
    # The PF-ODE of two Gaussian paths differ by the scale r(lambda) only; on a log-SNR grid DPM-Solver++ is
    # equivariant to it, so both paths give the same sample up to that scale.
    gmm = anisotropic_mixture()
    outs = []
    for path in (P.CondOT(), ko_digitsish):
        ts, te = (float(path.t_of_lambda(torch.tensor(v, dtype=torch.float64))) for v in (-4.0, 5.0))
        y = torch.randn(64, 2, generator=gen(0), dtype=torch.float64)
        r_s = math.hypot(float(path.alpha(ts)), float(path.sigma(ts)))
        x = cp.sample(gmm.model(path, "x0"), r_s * y, schedule=path, prediction="x0", solver="dpmsolver++",
                      order=2, steps=10, t_start=ts, t_end=te)  # fmt: skip
        outs.append(x / math.hypot(float(path.alpha(te)), float(path.sigma(te))))
    assert torch.allclose(outs[0], outs[1], atol=1e-7)


# --- arguments ------------------------------------------------------------------------------------------------


def test_bad_arguments_name_themselves():
    with pytest.raises(TypeError, match="points"):
        P.separation([[1.0]], 1.0)
    with pytest.raises(ValueError, match="points"):
        P.separation(torch.ones(3), 1.0)
    with pytest.raises(ValueError, match="s must"):
        P.separation(torch.ones(3, 2), -1.0)
    with pytest.raises(TypeError, match="generator"):
        P.separation(torch.ones(3, 2), 1.0, generator=0)
    with pytest.raises(TypeError, match="samples"):
        P.separation(torch.ones(3, 2), 1.0, samples=2.5)
    with pytest.raises(TypeError, match="lam"):
        P.kinetic_energy(P.CondOT(), 1.0)
    with pytest.raises(TypeError, match="path"):
        P.kinetic_energy("condot", ONE)
    with pytest.raises(ValueError, match="t_min"):
        P.kinetic_energy(P.CondOT(), ONE, t_min=0.5, t_max=0.2)
    with pytest.raises(ValueError, match="floor"):
        P.kinetic_optimal(ONE, floor=0.0)
    with pytest.raises(ValueError, match="vectorised"):
        P.kinetic_energy(P.CondOT(), lambda s: 1.0 + 0 * s[:1])
    with pytest.raises(TypeError, match="data"):
        P.kinetic_energy_mc(P.CondOT(), "digits")
