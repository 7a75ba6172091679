"""companion.gaussian_score: the closed-form Gaussian PF-ODE trajectory against solve_ivp, teleportation
(zero skipped steps is the ordinary sampler bit for bit), and the explained variance."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

import companion as cp
from companion import gaussian_score as G

F64 = torch.float64
SCHEDULES = [cp.schedules.VPLinear(), cp.schedules.VPCosine(), cp.paths.CondOT(), cp.schedules.VE()]


def gaussian(d=6, rank=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(d, rank or d, generator=g, dtype=F64)
    cov = A @ A.T / d + (0.0 if rank else 0.05 * torch.eye(d, dtype=F64))
    return cp.targets.Gaussian(torch.randn(d, generator=g, dtype=F64), cov, allow_singular=rank is not None)


def pf_ode_ivp(gauss, x, schedule, times):
    """solve_ivp (DOP853, rtol = atol = 1e-13) of dx/dt = f x - g^2 score / 2 with the Gaussian score."""
    mu, C = gauss.mean(), gauss.cov()
    d = mu.shape[0]

    def rhs(t, y):
        tt = torch.tensor(t, dtype=F64)
        a, s = cp.schedules.Schedule.alpha(schedule, tt), schedule.sigma(tt)
        S = a**2 * C + s**2 * torch.eye(d, dtype=F64)
        yy = torch.from_numpy(y).reshape(-1, d)
        score = -torch.linalg.solve(S, (yy - a * mu).T).T
        return (schedule.f(tt) * yy - 0.5 * schedule.g2(tt) * score).reshape(-1).numpy()

    ts = times.numpy()
    sol = solve_ivp(
        rhs, (ts[0], ts[-1]), x.reshape(-1).numpy(), method="DOP853", rtol=1e-13, atol=1e-13, t_eval=ts
    )
    return torch.from_numpy(np.ascontiguousarray(sol.y.T)).reshape(len(ts), *x.shape)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("rank", [None, 3], ids=["full", "rank3"])
def test_trajectory_matches_solve_ivp(schedule, rank):
    gauss = gaussian(rank=rank)
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(1), dtype=F64) * 2
    t_hi = min(schedule.t_max, 0.999)
    times = torch.linspace(t_hi, 0.02, 9, dtype=F64)
    closed = G.trajectory(gauss, x, times, schedule)
    ref = pf_ode_ivp(gauss, x, schedule, times)
    scale = float(ref.abs().max())
    assert float((closed - ref).abs().max()) <= 1e-8 * scale


def test_trajectory_off_the_span_is_the_noise_ratio():
    """Directions outside the span of Sigma scale by sigma_t / sigma_s (alpha-scaled: the point-mass map)."""
    gauss = gaussian(rank=3)
    sched = cp.schedules.VPLinear()
    U = gauss.eigvecs[0][:, gauss.eigvals[0] <= 1e-12]  # the null space of Sigma
    x = (sched.alpha(torch.tensor(1.0, dtype=F64)) * gauss.mean() + 1.5 * U[:, 0])[None]
    t0, t1 = torch.tensor(1.0, dtype=F64), torch.tensor(0.1, dtype=F64)
    y = G.trajectory(gauss, x, torch.stack([t0, t1]), sched)[-1]
    expect = sched.alpha(t1) * gauss.mean() + 1.5 * sched.sigma(t1) / sched.sigma(t0) * U[:, 0]
    assert torch.allclose(y[0], expect, atol=1e-12)


SOLVERS = [
    dict(solver="dpmsolver++", order=2),
    dict(solver="unipc", order=3),
    dict(solver="heun"),
    dict(solver="ddim"),
    dict(solver="dpmsolver", order=3, method="singlestep"),
    dict(solver="euler-maruyama"),
    dict(solver="sde-dpmsolver++", order=2),
]


@pytest.mark.parametrize("spec", SOLVERS, ids=lambda s: f"{s['solver']}-{s.get('order', '')}")
def test_teleport_with_zero_skip_is_the_sampler_bit_for_bit(spec):
    mix = cp.targets.random_mixture(4, 1.0, 0.2, 0.5, seed=2)
    sched = cp.schedules.VPLinear()
    model = mix.model(sched, "eps")
    gauss = G.fit(mix.sample(500, generator=torch.Generator().manual_seed(0)))
    x_T = torch.randn(16, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float32)
    kw = dict(schedule=sched, steps=10, t_end=1e-3, **spec)
    a = G.teleport(model, x_T, gauss, skip=0, generator=torch.Generator().manual_seed(4), **kw)
    b = cp.sample(model, x_T, generator=torch.Generator().manual_seed(4), **kw)
    assert torch.equal(a, b)


def test_teleport_is_exact_for_gaussian_data():
    """With the exact Gaussian model the skipped steps cost nothing: teleporting k of 12 DPM-Solver++(2M)
    steps lands at least as close to the exact endpoint as the full run (closer: fewer steps err)."""
    gauss = gaussian()
    sched = cp.schedules.VPLinear()
    model = gauss.model(sched, "eps")
    x_T = torch.randn(32, 6, generator=torch.Generator().manual_seed(0), dtype=F64)
    exact = gauss.flow_map(x_T, 1.0, 1e-3, sched)
    errs = [
        float(
            (
                G.teleport(
                    model,
                    x_T,
                    gauss,
                    schedule=sched,
                    skip=k,
                    steps=12,
                    t_end=1e-3,
                    solver="dpmsolver++",
                    lower_order_final=False,
                )
                - exact
            )
            .abs()
            .max()
        )
        for k in (0, 4, 8, 11)
    ]
    assert (
        errs[0] > 1e-6
        and all(b <= a * 1.01 for a, b in zip(errs, errs[1:], strict=False))
        and errs[-1] < errs[0] / 20
    )


def test_explained_variance():
    sched = cp.schedules.VPLinear()
    gauss = gaussian()
    data = gauss.sample(4000, generator=torch.Generator().manual_seed(0))
    ev, rel = G.explained_variance(
        gauss.model(sched, "eps"), gauss, data, 0.3, sched, generator=torch.Generator().manual_seed(1)
    )
    assert ev == pytest.approx(1.0, abs=1e-12) and rel == pytest.approx(0.0, abs=1e-12)
    mix = cp.targets.random_mixture(6, 2.0, 0.05, 0.1, seed=3)
    data = mix.sample(4000, generator=torch.Generator().manual_seed(0))
    fitted = G.fit(data)
    evs = [
        G.explained_variance(
            mix.model(sched, "x0"),
            fitted,
            data,
            t,
            sched,
            prediction="x0",
            generator=torch.Generator().manual_seed(1),
        )[0]
        for t in (0.05, 0.3, 0.9)
    ]
    assert evs[0] < evs[1] < evs[2] and evs[2] > 0.99 and evs[0] < 0.9


def test_errors_name_the_argument():
    gauss = gaussian()
    sched = cp.schedules.VPLinear()
    x = torch.zeros(2, 6, dtype=F64)
    with pytest.raises(ValueError, match="skip"):
        G.teleport(gauss.model(sched), x, gauss, schedule=sched, skip=-1)
    with pytest.raises(ValueError, match="skip"):
        G.teleport(gauss.model(sched), x, gauss, schedule=sched, skip=5, steps=5, t_end=1e-3)
    with pytest.raises(TypeError, match="gaussian"):
        G.trajectory(cp.targets.random_mixture(6, 1.0, 0.1, 0.2), x, torch.tensor([1.0, 0.5]), sched)
    with pytest.raises(ValueError, match="data"):
        G.fit(torch.zeros(1, 3))
