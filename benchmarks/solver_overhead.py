"""Per-step solver overhead, ours vs the diffusers scheduler's ``step`` for the same algorithm.

The model is excluded: it returns a precomputed tensor, so what is timed is everything a sampler does
around the network (coefficients, parameterization conversion, the update, bookkeeping). Batch
64x3x64x64 float32 on CPU; both sides run in the same process, interleaved, and the best of ``--repeats``
runs is kept. Usage:

    PYTHONPATH=src python benchmarks/solver_overhead.py [--steps 20] [--repeats 5] [--threads 1]

The last line reads ``overhead ratio ours/diffusers: dpmpp2m=R1 unipc=R2 ddim=R3``.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

import companion as cp
from companion.adapters import diffusers as adapter


def _time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--shape", type=int, nargs="+", default=[64, 3, 64, 64])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    import diffusers

    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(args.shape, generator=g)
    eps = torch.randn(args.shape, generator=g) * 0.1
    n = args.steps

    def model(x, t):  # the network is excluded: a precomputed output
        return eps

    def ours(**kw):
        def run():
            return cp.sample(model, x_T, schedule=sched, prediction="eps", timesteps=grid, **kw)

        return run

    def theirs(sch, **step_kw):
        def run():
            sch.set_timesteps(n, device="cpu")
            x = x_T * sch.init_noise_sigma
            for t in sch.timesteps:
                x = sch.scale_model_input(x, t)
                x = sch.step(eps, t, x, **step_kw).prev_sample
            return x

        return run

    cases = {
        "dpmpp2m": (
            diffusers.DPMSolverMultistepScheduler(beta_schedule="linear", solver_order=2),
            dict(solver="dpmsolver++", order=2, compat="diffusers"),
            {},
        ),
        "unipc": (
            diffusers.UniPCMultistepScheduler(beta_schedule="linear", solver_order=2),
            dict(solver="unipc", order=2, compat="diffusers"),
            {},
        ),
        "ddim": (
            diffusers.DDIMScheduler(beta_schedule="linear", clip_sample=False),
            dict(solver="ddim", order=1),
            {"eta": 0.0},
        ),
    }
    ratios = {}
    for name, (sch, kw, step_kw) in cases.items():
        sched = adapter.schedule_from_scheduler(sch)
        sch.set_timesteps(n, device="cpu")
        if name == "ddim":
            grid = adapter.times_from_timesteps(sch.timesteps, sched, final=0.0)
        else:
            grid = adapter.times_from_sigmas(sch.sigmas, sched)
        f_ours, f_theirs = ours(**kw), theirs(sch, **step_kw)
        f_ours(), f_theirs()  # warm-up
        t_ours, t_theirs = float("inf"), float("inf")
        for _ in range(args.repeats):  # interleaved, so that both see the same machine state
            t_ours = min(t_ours, _time(f_ours, 1))
            t_theirs = min(t_theirs, _time(f_theirs, 1))
        ratios[name] = t_ours / t_theirs
        print(
            f"{name:8s} per step: ours {1e3 * t_ours / n:7.3f} ms  diffusers {1e3 * t_theirs / n:7.3f} ms  "
            f"ratio {ratios[name]:.3f}"
        )
    print(
        f"shape {tuple(args.shape)} float32, {n} steps, {torch.get_num_threads()} thread(s), "
        f"torch {torch.__version__}, diffusers {diffusers.__version__}"
    )
    print("overhead ratio ours/diffusers: " + " ".join(f"{k}={v:.3f}" for k, v in ratios.items()))


if __name__ == "__main__":
    main()
