"""diffusers UNets and schedulers as companion models, schedules and time grids.

A diffusers UNet trained with a discrete DDPM scheduler of N steps takes an integer-scale timestep
n in [0, N-1] and predicts eps ("epsilon"), v ("v_prediction") or x0 ("sample"). companion works in
continuous time: :class:`~companion.schedules.VPDiscrete` puts step n at t_n = (n + 1)/N with
log alpha piecewise linear in t (as the official DPM-Solver's discrete noise schedule), so the wrapped
model evaluates ``unet(x, N t - 1)``. At the knots this is the scheduler's own alpha_bar, exactly;
between them the model sees fractional timesteps, which its sinusoidal embedding accepts.

diffusers is imported lazily: it is a peer for tests and an optional extra, never a core dependency.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..schedules import VPDiscrete

__all__ = [
    "DiffusersModel",
    "wrap",
    "from_pretrained",
    "schedule_from_scheduler",
    "prediction_from_config",
    "times_from_timesteps",
    "times_from_sigmas",
]

_PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}


def _config(scheduler: Any) -> Mapping[str, Any]:
    cfg = getattr(scheduler, "config", scheduler)
    if not isinstance(cfg, Mapping):
        raise TypeError(
            f"scheduler must be a diffusers scheduler or its config mapping; got {type(scheduler).__name__}"
        )
    return cfg


def prediction_from_config(scheduler: Any) -> str:
    """companion's prediction name ("eps", "v" or "x0") for a scheduler (config)'s ``prediction_type``."""
    p = _config(scheduler).get("prediction_type", "epsilon")
    try:
        return _PREDICTIONS[p]
    except KeyError:
        raise ValueError(f"prediction_type must be one of {sorted(_PREDICTIONS)}; got {p!r}") from None


def schedule_from_scheduler(scheduler: Any) -> VPDiscrete:
    """:class:`VPDiscrete` with the scheduler's ``alphas_cumprod`` (built by diffusers from a config).

    The scheduler's own float32 alpha_bar is used verbatim, so companion and diffusers agree at every
    integer timestep; a config mapping is first turned into a ``DDPMScheduler`` (the betas are the
    same for every diffusers discrete scheduler: ``beta_schedule``, ``beta_start``, ``beta_end``,
    ``trained_betas``, ``num_train_timesteps``).
    """
    ac = getattr(scheduler, "alphas_cumprod", None)
    if ac is None:
        from diffusers import DDPMScheduler

        cfg = dict(_config(scheduler))
        keys = (
            "num_train_timesteps",
            "beta_start",
            "beta_end",
            "beta_schedule",
            "trained_betas",
            "prediction_type",
        )
        ac = DDPMScheduler(**{k: cfg[k] for k in keys if k in cfg}).alphas_cumprod
    return VPDiscrete(alphas_cumprod=torch.as_tensor(ac).to(torch.float64))


def times_from_timesteps(timesteps: Tensor, schedule: VPDiscrete, final: float | None = None) -> Tensor:
    """companion times (float64) of diffusers integer timesteps: t = (n + 1)/N; ``final`` is appended.

    With diffusers' ``final_sigmas_type="sigma_min"`` the last step lands on timestep 0, i.e. ``final=1/N``.
    """
    t = (torch.as_tensor(timesteps).to(torch.float64) + 1.0) / schedule.N
    if final is not None:
        t = torch.cat([t, torch.tensor([final], dtype=torch.float64)])
    return t


def times_from_sigmas(sigmas: Tensor, schedule: VPDiscrete) -> Tensor:
    """companion times (float64) of diffusers' sigma grid (sigma/alpha, after ``set_timesteps``), so that
    ``companion.sample(..., timesteps=...)`` walks the same grid; sigma = 0 maps to t = 0.

    diffusers keeps sigmas in float32, which can put the first one an ulp past the last training step;
    the times are clamped to the schedule's domain.
    """
    s = torch.as_tensor(sigmas, dtype=torch.float64)
    t = schedule.t_of_lambda(-torch.log(torch.where(s > 0, s, torch.ones_like(s))))
    return torch.where(s > 0, t, torch.zeros_like(t)).clamp(schedule.t_min, schedule.t_max)


class DiffusersModel(nn.Module):
    """A diffusers ``UNet2DModel`` as a companion model ``(x, t) -> prediction``, t in [0, 1].

    ``schedule`` and ``prediction`` are what the solvers need next to it; ``class_labels`` is passed
    on to class-conditional UNets. Channels beyond the input's (learned variance) are dropped.
    """

    def __init__(
        self, unet: nn.Module, schedule: VPDiscrete, prediction: str, class_labels: Tensor | None = None
    ):
        super().__init__()
        if prediction not in _PREDICTIONS.values():
            raise ValueError(f"prediction must be one of {sorted(_PREDICTIONS.values())}; got {prediction!r}")
        if not isinstance(schedule, VPDiscrete):
            raise TypeError(f"schedule must be a VPDiscrete; got {type(schedule).__name__}")
        self.unet, self.schedule, self.prediction = unet, schedule, prediction
        self.class_labels = class_labels

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        t = torch.as_tensor(t, device=x.device)
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        # The integer-scale timestep in float64, then in the UNet's dtype: exact integers at the knots.
        n = self.schedule.discrete_timestep(t.to(torch.float64)).to(x.dtype)
        kwargs = {} if self.class_labels is None else {"class_labels": self.class_labels}
        out = self.unet(x, n, return_dict=False, **kwargs)[0]
        return out[:, : x.shape[1]]


def wrap(unet: nn.Module, scheduler: Any, class_labels: Tensor | None = None) -> DiffusersModel:
    """Wrap ``unet`` with the schedule and prediction type of ``scheduler`` (a scheduler or its config)."""
    return DiffusersModel(
        unet, schedule_from_scheduler(scheduler), prediction_from_config(scheduler), class_labels
    )


def from_pretrained(
    repo_id: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, **kwargs: Any
) -> DiffusersModel:
    """Download a pretrained ``UNet2DModel`` pipeline (e.g. ``"google/ddpm-cifar10-32"``) and wrap it.

    Looks for the UNet and scheduler in the ``unet``/``scheduler`` subfolders of a pipeline, then at
    the repository root. Needs internet and diffusers; ``kwargs`` go to ``from_pretrained``.
    """
    from diffusers import DDPMScheduler, UNet2DModel

    def first(load, subfolders):
        errors = []
        for sub in subfolders:
            try:
                return load(repo_id, subfolder=sub, **kwargs)
            except (OSError, ValueError) as e:  # diffusers raises OSError/EnvironmentError for missing files
                errors.append(f"{sub or '<root>'}: {e}")
        raise OSError(f"could not load from {repo_id!r}: " + "; ".join(errors))

    unet = first(UNet2DModel.from_pretrained, ("unet", None)).to(device=device, dtype=dtype).eval()
    scheduler = first(DDPMScheduler.from_pretrained, ("scheduler", None))
    return wrap(unet.requires_grad_(False), scheduler)
