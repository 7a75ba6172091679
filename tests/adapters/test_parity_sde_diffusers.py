"""Peer parity: our stochastic samplers against diffusers' schedulers, same model, grid and injected noise."""

from __future__ import annotations

import pytest
import torch

import companion as cp
from companion.noise import InjectedNoise
from companion.targets import GaussianMixture

diffusers = pytest.importorskip("diffusers")

GMM = GaussianMixture([[-1.0, 0.5], [1.0, -0.5], [0.3, 1.2]], [0.05, 0.1, 0.08], [0.3, 0.5, 0.2])
B, D = 6, 2


def _setup(sch, steps: int):
    """Our VPDiscrete on diffusers' float32 alphas_cumprod, the exact eps model for both sides, the time
    grid matching the scheduler's timesteps (step n at t = (n + 1)/N, clean data at t = 0), and noise."""
    sched = cp.schedules.VPDiscrete(alphas_cumprod=sch.alphas_cumprod.to(torch.float64))
    model = GMM.model(sched, "eps")
    sch.set_timesteps(steps, device="cpu")
    ts = sch.timesteps.to(torch.float64)
    grid = torch.cat([(ts + 1) / sch.config.num_train_timesteps, torch.zeros(1, dtype=torch.float64)])
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(B, D, generator=g, dtype=torch.float64)
    z = torch.randn(steps, B, D, generator=g, dtype=torch.float64)

    def eps(x, k):
        return model(
            x, torch.full((B,), (float(k) + 1) / sch.config.num_train_timesteps, dtype=torch.float64)
        )

    return sched, model, grid, x_T, z, eps


@pytest.mark.parametrize("order,solver_type", [(1, "midpoint"), (2, "midpoint"), (2, "heun")])
@pytest.mark.parametrize("steps", [10, 20])
def test_sde_dpmsolver_pp_matches_diffusers(order, solver_type, steps):
    sch = diffusers.DPMSolverMultistepScheduler(
        beta_schedule="linear",
        algorithm_type="sde-dpmsolver++",
        solver_order=order,
        solver_type=solver_type,
        final_sigmas_type="zero",
    )
    sched, model, grid, x_T, z, eps = _setup(sch, steps)
    x = x_T.clone()
    for i, t in enumerate(sch.timesteps):
        x = sch.step(eps(x, t), t, x, variance_noise=z[i]).prev_sample
    ours = cp.sample(
        model, x_T, schedule=sched, solver="sde-dpmsolver++", order=order, variant=solver_type, timesteps=grid,
        noise=InjectedNoise(z), compat="diffusers",
    )  # fmt: skip
    assert float((ours - x).abs().max()) <= 1e-5


@pytest.mark.parametrize("variance", ["small", "large"])
def test_ddpm_matches_diffusers(variance):
    sch = diffusers.DDPMScheduler(
        beta_schedule="linear", clip_sample=False, variance_type=f"fixed_{variance}"
    )
    steps = 50
    sched, model, grid, x_T, _, eps = _setup(sch, steps)
    # DDPMScheduler draws its noise itself: replay the same generator's draws (none at the final step).
    g = torch.Generator().manual_seed(1)
    x = x_T.clone()
    for t in sch.timesteps:
        x = sch.step(eps(x, t), t, x, generator=g).prev_sample
    g = torch.Generator().manual_seed(1)
    z = torch.stack([torch.randn(B, D, generator=g, dtype=torch.float64) for _ in range(steps - 1)])
    z = torch.cat([z, torch.zeros(1, B, D, dtype=torch.float64)])
    ours = cp.sample(
        model,
        x_T,
        schedule=sched,
        solver="ancestral",
        variance=variance,
        timesteps=grid,
        noise=InjectedNoise(z),
    )
    assert float((ours - x).abs().max()) <= 1e-5


@pytest.mark.parametrize("solver,kw", [("ddim", {"order": 1, "eta": 1.0}), ("ancestral", {"eta": 1.0})])
def test_ddim_eta_one_matches_diffusers(solver, kw):
    sch = diffusers.DDIMScheduler(beta_schedule="linear", clip_sample=False, set_alpha_to_one=True)
    steps = 25
    sched, model, grid, x_T, z, eps = _setup(sch, steps)
    x = x_T.clone()
    for i, t in enumerate(sch.timesteps):
        x = sch.step(eps(x, t), t, x, eta=1.0, variance_noise=z[i]).prev_sample
    ours = cp.sample(model, x_T, schedule=sched, solver=solver, timesteps=grid, noise=InjectedNoise(z), **kw)
    assert float((ours - x).abs().max()) <= 1e-5
