"""The one place that converts model outputs between parameterizations, plus guidance and thresholding.

For a forward process  x = alpha x0 + sigma eps  every parameterization is a linear function of (x, x0, eps):

    eps       noise prediction                        eps
    x0        data prediction (denoiser)             x0
    v         Salimans & Ho (2022) "v-prediction"     v = alpha eps - sigma x0
    score     grad log p_t(x)                         s = -eps / sigma
    velocity  flow-matching velocity dx/dt            u = alpha' x0 + sigma' eps

so a conversion of a model output ``out`` into another one is  ``dst = cx * x + co * out``  with
coefficients that depend on (alpha, sigma) and, for ``velocity``, on their time derivatives.
:func:`coefficients` returns that pair (float64 in, float64 out); :func:`convert` applies it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .schedules import Schedule

__all__ = [
    "PREDICTIONS",
    "canonical",
    "coefficients",
    "convert",
    "classifier_free_guidance",
    "classifier_guidance",
    "dynamic_threshold",
]

PREDICTIONS = ("eps", "x0", "v", "score", "velocity")
_ALIASES = {
    "eps": "eps",
    "epsilon": "eps",
    "noise": "eps",
    "x0": "x0",
    "sample": "x0",
    "data": "x0",
    "x_start": "x0",
    "v": "v",
    "v_prediction": "v",
    "score": "score",
    "velocity": "velocity",
    "flow": "velocity",
}


def canonical(prediction: str, name: str = "prediction") -> str:
    """The canonical name of a prediction type (``epsilon`` -> ``eps``, ``sample`` -> ``x0``, ...)."""
    if not isinstance(prediction, str):
        raise TypeError(f"{name} must be a str; got {type(prediction).__name__}")
    try:
        return _ALIASES[prediction]
    except KeyError:
        raise ValueError(
            f"unknown {name} {prediction!r}; available: {list(PREDICTIONS)} "
            f"(aliases: {sorted(set(_ALIASES) - set(PREDICTIONS))})"
        ) from None


def coefficients(
    src: str,
    dst: str,
    alpha: Tensor,
    sigma: Tensor,
    d_alpha: Tensor | None = None,
    d_sigma: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """(cx, co) such that the ``dst`` prediction is ``cx * x + co * out`` for a ``src`` output ``out``.

    ``d_alpha``/``d_sigma`` (d alpha/dt, d sigma/dt) are needed only when either side is ``velocity``.
    """
    src, dst = canonical(src, "src"), canonical(dst, "dst")
    one, zero = torch.ones_like(alpha), torch.zeros_like(alpha)
    if src == dst:
        return zero, one
    if "velocity" in (src, dst) and (d_alpha is None or d_sigma is None):
        raise ValueError("converting from or to 'velocity' needs d_alpha and d_sigma")
    # (x0, eps) as linear maps of (x, out): x0 = ax * x + ao * out, eps = ex * x + eo * out.
    if src == "eps":
        ax, ao, ex, eo = 1 / alpha, -sigma / alpha, zero, one
    elif src == "x0":
        ax, ao, ex, eo = zero, one, 1 / sigma, -alpha / sigma
    elif src == "score":
        ax, ao, ex, eo = 1 / alpha, sigma**2 / alpha, zero, -sigma
    elif src == "v":
        n = alpha**2 + sigma**2
        ax, ao, ex, eo = alpha / n, -sigma / n, sigma / n, alpha / n
    else:  # velocity
        det = alpha * d_sigma - sigma * d_alpha
        ax, ao, ex, eo = d_sigma / det, -sigma / det, -d_alpha / det, alpha / det
    if dst == "x0":
        return ax, ao
    if dst == "eps":
        return ex, eo
    if dst == "score":
        return -ex / sigma, -eo / sigma
    if dst == "v":
        return alpha * ex - sigma * ax, alpha * eo - sigma * ao
    return d_alpha * ax + d_sigma * ex, d_alpha * ao + d_sigma * eo


def _bcast(c: Tensor, x: Tensor) -> Tensor:
    """A coefficient of shape () or (B,) broadcast against x of shape (B, ...)."""
    c = torch.as_tensor(c, dtype=torch.float64)
    if c.dim() == 0:
        return c.to(x.device, x.dtype)
    return c.to(x.device, x.dtype).reshape(c.shape + (1,) * (x.dim() - c.dim()))


def convert(out: Tensor, x: Tensor, src: str, dst: str, schedule: Schedule, t: float | Tensor) -> Tensor:
    """Convert a model output ``out`` at (x, t) from the ``src`` to the ``dst`` parameterization.

    ``t`` is a float, a 0-d tensor or a tensor of shape (B,) (one time per sample).
    """
    t64 = torch.as_tensor(t, dtype=torch.float64)
    alpha, sigma = schedule.alpha(t64), schedule.sigma(t64)
    cx, co = coefficients(
        src, dst, alpha, sigma, alpha * schedule.d_log_alpha(t64), sigma * schedule.d_log_sigma(t64)
    )
    return _bcast(cx, x) * x + _bcast(co, x) * out


# --- guidance ----------------------------------------------------------------------------------


def classifier_free_guidance(
    model: Callable[..., Tensor],
    scale: float,
    cond: object,
    uncond: object,
    *,
    batched: bool = True,
) -> Callable[[Tensor, Tensor], Tensor]:
    """Classifier-free guidance (Ho & Salimans 2022) as a model ``(x, t) -> out``.

    Convention: ``uncond + scale * (cond - uncond)`` (as the official DPM-Solver; ``scale = 1`` is the
    conditional model and skips the unconditional pass). flow_matching's ``(1 + w) cond - w uncond``
    is the same with ``scale = 1 + w``. ``model(x, t, c)`` is called once on the concatenated batch
    when ``batched`` (``cond``/``uncond`` must then be tensors), else twice.
    """
    scale = float(scale)

    def guided(x: Tensor, t: Tensor) -> Tensor:
        if scale == 1.0:
            return model(x, t, cond)
        if batched:
            tt = torch.cat([t, t]) if t.dim() == 1 else t
            out_u, out_c = model(torch.cat([x, x]), tt, torch.cat([uncond, cond])).chunk(2)
        else:
            out_u, out_c = model(x, t, uncond), model(x, t, cond)
        return torch.lerp(out_u, out_c, scale)

    return guided


def classifier_guidance(
    model: Callable[[Tensor, Tensor], Tensor],
    grad_log_prob: Callable[[Tensor, Tensor], Tensor],
    scale: float,
    schedule: Schedule,
    prediction: str = "eps",
) -> Callable[[Tensor, Tensor], Tensor]:
    """Classifier guidance (Dhariwal & Nichol 2021): the score gains ``scale * grad log p(c | x_t)``.

    In noise prediction that is  eps - scale * sigma_t * grad  (DPM-Solver's ``model_wrapper``); the
    wrapped model returns the same ``prediction`` type as ``model``.
    """
    prediction = canonical(prediction)

    def guided(x: Tensor, t: Tensor) -> Tensor:
        out = model(x, t)
        score = convert(out, x, prediction, "score", schedule, t)
        score = score + scale * grad_log_prob(x, t)
        return convert(score, x, "score", prediction, schedule, t)

    return guided


# --- thresholding ------------------------------------------------------------------------------


def dynamic_threshold(
    x0: Tensor, ratio: float = 0.995, max_val: float = 1.0, semantics: str = "dpm-solver"
) -> Tensor:
    """Dynamic thresholding (Saharia et al. 2022): clamp x0 to [-s, s] and divide by s, per sample.

    ``s`` is the ``ratio`` quantile of |x0|, then
      * ``semantics="dpm-solver"`` (official DPM-Solver):  s = max(s, max_val);
      * ``semantics="diffusers"``:                          s = clamp(s, 1, max_val) (``sample_max_value``).
    """
    if semantics not in ("dpm-solver", "diffusers"):
        raise ValueError(f"semantics must be 'dpm-solver' or 'diffusers'; got {semantics!r}")
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"ratio must lie in (0, 1]; got {ratio!r}")
    dtype = x0.dtype
    flat = x0.reshape(x0.shape[0], -1)
    if flat.dtype in (torch.float16, torch.bfloat16):
        flat = flat.float()  # quantile is not implemented for half types
    s = torch.quantile(flat.abs(), ratio, dim=1)
    if semantics == "dpm-solver":
        s = torch.clamp(s, min=max_val)
    else:
        s = torch.clamp(s, min=1.0, max=max_val)
    s = s.reshape((-1,) + (1,) * (x0.dim() - 1))
    return (torch.clamp(flat.reshape(x0.shape), -s, s) / s).to(dtype)
