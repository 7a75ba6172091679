"""The diffusers bridge: schedule conversion is exact at the knots, and sampling a UNet2DModel through
the bridge reproduces diffusers' own DPMSolverMultistepScheduler loop (DPM-Solver++(2M)).

The UNet is tiny and randomly initialised from a config (no download); its outputs are arbitrary but
deterministic, which is all a parity test needs. Tolerance 1e-5 relative to the sample's largest
entry (float32): diffusers computes its coefficients in float32 from sigma = sqrt((1 - alpha_bar)/alpha_bar),
companion in float64 from log alpha. A random eps-network is far from x/sigma, so its x0 prediction at
t = 999 is (x - sigma eps)/alpha with alpha = 0.0064 and the samples reach |x| ~ 700: there float32
spacing alone is 6e-5, and an absolute 1e-5 would test rounding, not the solver.
"""

from __future__ import annotations

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

import companion as cp  # noqa: E402
from companion.adapters import diffusers as db  # noqa: E402

STEPS = 20  # >= 15: diffusers' lower_order_final does not apply, so every step after the first is 2nd order


def _tiny_unet(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    unet = diffusers.UNet2DModel(
        sample_size=8,
        in_channels=2,
        out_channels=2,
        layers_per_block=1,
        block_out_channels=(8, 16),
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    )
    return unet.eval().requires_grad_(False)


def _scheduler(prediction_type: str, beta_schedule: str = "linear"):
    return diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=1000,
        beta_schedule=beta_schedule,
        prediction_type=prediction_type,
        algorithm_type="dpmsolver++",
        solver_order=2,
        final_sigmas_type="sigma_min",
    )


@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_schedule_matches_scheduler_at_integer_timesteps(beta_schedule):
    sch = _scheduler("epsilon", beta_schedule)
    sched = db.schedule_from_scheduler(sch)
    from_config = db.schedule_from_scheduler(dict(sch.config))
    n = torch.arange(1000)
    t = db.times_from_timesteps(n, sched)
    ac = sch.alphas_cumprod.double()
    torch.testing.assert_close(sched.alpha(t) ** 2, ac, rtol=1e-12, atol=0)
    torch.testing.assert_close(sched.sigma(t) ** 2, 1 - ac, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(from_config.alphas_cumprod, sched.alphas_cumprod, rtol=0, atol=0)
    torch.testing.assert_close(sched.discrete_timestep(t), n.double(), rtol=0, atol=1e-9)


@pytest.mark.parametrize(
    ("prediction_type", "expected"), [("epsilon", "eps"), ("v_prediction", "v"), ("sample", "x0")]
)
def test_prediction_from_config(prediction_type, expected):
    assert db.prediction_from_config(_scheduler(prediction_type)) == expected
    assert db.prediction_from_config({"prediction_type": prediction_type}) == expected


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="prediction_type"):
        db.prediction_from_config({"prediction_type": "flow"})
    with pytest.raises(TypeError, match="scheduler"):
        db.prediction_from_config(3)
    with pytest.raises(ValueError, match="prediction"):
        db.DiffusersModel(_tiny_unet(), db.schedule_from_scheduler(_scheduler("epsilon")), "epsilon")


def test_model_evaluates_unet_at_the_integer_timestep():
    unet, sch = _tiny_unet(), _scheduler("epsilon")
    model = db.wrap(unet, sch)
    x = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    n = torch.tensor([999, 500, 0])
    t = db.times_from_timesteps(n, model.schedule)
    torch.testing.assert_close(model(x, t), unet(x, n).sample, rtol=0, atol=0)
    torch.testing.assert_close(model(x, t[1]), unet(x, n[1]).sample, rtol=0, atol=0)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_dpmsolverpp_2m_matches_diffusers_loop(prediction_type):
    unet, sch = _tiny_unet(), _scheduler(prediction_type)
    x_T = torch.randn(4, 2, 8, 8, generator=torch.Generator().manual_seed(0))

    sch.set_timesteps(STEPS)
    x = x_T * sch.init_noise_sigma
    with torch.no_grad():
        for n in sch.timesteps:
            x = sch.step(unet(x, n).sample, n, x).prev_sample
    reference = x

    model = db.wrap(unet, sch)
    times = db.times_from_timesteps(sch.timesteps, model.schedule, final=1.0 / model.schedule.N)
    with torch.no_grad():
        ours = cp.sample(
            model,
            x_T,
            schedule=model.schedule,
            prediction=model.prediction,
            solver="dpmsolver++",
            order=2,
            method="multistep",
            timesteps=times,
        )
    assert ours.dtype == torch.float32
    err, scale = (ours - reference).abs().max(), reference.abs().max().clamp_min(1.0)
    assert err <= 1e-5 * scale, f"max |companion - diffusers| = {err:.3g} at sample scale {scale:.3g}"
