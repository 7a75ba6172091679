"""Per-step solver overhead, ours vs the diffusers scheduler's ``step`` for the same algorithm, against a floor.

The model is excluded: it returns a precomputed tensor, so what is timed is everything a sampler does
around the network (coefficients, parameterization conversion, the update, bookkeeping). Both sides run in
the same process, interleaved (ours, theirs, ours, theirs, ...), and the **median** of ``--repeats`` runs is
kept, so that a shared machine's load hits both alike; the load average (``uptime``) is printed with them.

Beside each time the script prints

* the **memory floor** of a step: the bytes it must read and write (in state-sized tensors: DDIM reads x
  and the model output and writes x, 3; DPM-Solver++(2M) also reads the previous prediction and writes the
  new one, 5; UniPC-2 with its corrector reads x_{i-1}, the predicted x_i, the output and two predictions
  and writes the corrected x_i, x_{i+1} and the new prediction, 8) moved by ``copy_`` (a copy reads one
  state and writes one, so units/2 copies per step), timed in the same interleaved rotation;
* the **peak memory** a run adds, in state-sized tensors (Linux: the growth of the resident-set high-water
  mark VmHWM, reset through /proc/self/clear_refs before each run; memory the allocator reuses is not
  counted twice, so it is a lower bound on what the run allocates);
* the **set-up** before the first model call: ours with the coefficient cache cold (cleared) and warm
  (:mod:`companion.solvers.cache`), diffusers' ``set_timesteps`` and the first ``scale_model_input``.

k-diffusion, flow_matching and torchdiffeq implement none of these three algorithms with a per-step API
(flow_matching and torchdiffeq integrate a generic ODE; k-diffusion's DPM-Solver++(2M) is the same
algorithm but its package pins a dependency set we do not install, see notebooks/09_which_sampler.md), so
diffusers is the only overhead peer here. Usage:

    PYTHONPATH=src python benchmarks/solver_overhead.py [--steps 20] [--repeats 9] [--threads 1]
        [--shapes 64x3x64x64 4x3x64x64] [--json out.json]

The last line reads ``overhead ratio ours/diffusers: dpmpp2m=R1 unipc=R2 ddim=R3`` (the first shape).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import warnings

import torch

import companion as cp
from companion.adapters import diffusers as adapter
from companion.lab.bench import interleaved
from companion.solvers import cache

#: state-sized tensors a step must read + write (see the module docstring)
FLOOR_UNITS = {"dpmpp2m": 5, "unipc": 8, "ddim": 3}


def load() -> str:
    try:
        return "load average " + ", ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "load average n/a"


def _status(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def peak_bytes(fn) -> int | None:
    """Growth of the resident high-water mark while ``fn()`` runs (Linux), else None."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    base = _status("VmRSS")
    fn()
    top = _status("VmHWM")
    return None if base is None or top is None else max(top - base, 0)


def copy_bandwidth(x: torch.Tensor, repeats: int) -> float:
    """Bytes read + written per second by ``copy_`` of a tensor like ``x`` (median of ``repeats``)."""
    y = torch.empty_like(x)
    t = interleaved({"copy": lambda: y.copy_(x)}, max(repeats, 15))["copy"]
    return 2 * x.numel() * x.element_size() / t


def cases(diffusers):
    return {
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


def measure_shape(shape: list[int], n: int, repeats: int, diffusers) -> dict:
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(shape, generator=g)
    eps = torch.randn(shape, generator=g) * 0.1
    state_bytes = x_T.numel() * x_T.element_size()
    bw = copy_bandwidth(x_T, repeats)  # printed; the floor itself is timed beside each solver
    out = {"shape": list(shape), "state_bytes": state_bytes, "copy_bandwidth_GBps": bw / 1e9, "solvers": {}}
    for name, (sch, kw, step_kw) in cases(diffusers).items():
        sched = adapter.schedule_from_scheduler(sch)
        sch.set_timesteps(n, device="cpu")
        if name == "ddim":
            grid = adapter.times_from_timesteps(sch.timesteps, sched, final=0.0)
        else:
            grid = adapter.times_from_sigmas(sch.sigmas, sched)
        first: dict[str, float] = {}

        def model(x, t, first=first):  # the network is excluded: a precomputed output
            first.setdefault("t", time.perf_counter())
            return eps

        def ours(model=model, sched=sched, grid=grid, kw=kw):
            return cp.sample(model, x_T, schedule=sched, prediction="eps", timesteps=grid, **kw)

        def theirs(sch=sch, model=model, step_kw=step_kw):
            sch.set_timesteps(n, device="cpu")
            x = x_T * sch.init_noise_sigma
            for t in sch.timesteps:
                x = sch.scale_model_input(x, t)
                x = sch.step(model(x, t), t, x, **step_kw).prev_sample
            return x

        def setup_time(fn, clear: bool, first=first) -> float:
            vals = []
            for _ in range(max(3, repeats // 2)):
                if clear:
                    cache.clear()
                first.clear()
                t0 = time.perf_counter()
                fn()
                vals.append(first["t"] - t0)
            return statistics.median(vals)

        # The floor run moves a step's bytes n times with copy_ (units/2 copies of a state per step), in
        # the same rotation as the two samplers, so that it sees the same machine load.
        src, dst = x_T.clone(), torch.empty_like(x_T)
        copies = n * FLOOR_UNITS[name] / 2

        def floor_run(src=src, dst=dst, copies=copies):
            for _ in range(int(copies)):
                dst.copy_(src)
            if copies % 1:
                dst[: max(1, dst.shape[0] // 2)].copy_(src[: max(1, dst.shape[0] // 2)])

        med = interleaved({"ours": ours, "diffusers": theirs, "floor": floor_run}, repeats)
        floor = med["floor"] / n
        rec = {
            "ours_ms_per_step": 1e3 * med["ours"] / n,
            "diffusers_ms_per_step": 1e3 * med["diffusers"] / n,
            "ratio": med["ours"] / med["diffusers"],
            "floor_ms_per_step": 1e3 * floor,
            "floor_units": FLOOR_UNITS[name],
            "ours_over_floor": med["ours"] / n / floor,
            "diffusers_over_floor": med["diffusers"] / n / floor,
            "setup_ms_ours_cold": 1e3 * setup_time(ours, True),
            "setup_ms_ours_warm": 1e3 * setup_time(ours, False),
            "setup_ms_diffusers": 1e3 * setup_time(theirs, False),
        }
        p_ours, p_theirs = peak_bytes(ours), peak_bytes(theirs)
        rec["peak_states_ours"] = None if p_ours is None else p_ours / state_bytes
        rec["peak_states_diffusers"] = None if p_theirs is None else p_theirs / state_bytes
        out["solvers"][name] = rec
    return out


def fmt_peak(v) -> str:
    return "  n/a" if v is None else f"{v:5.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--shapes", nargs="+", default=["64x3x64x64", "4x3x64x64"])
    ap.add_argument("--json", default=None, help="write the measurements here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    import diffusers

    n = args.steps
    result = {
        "steps": n,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "load_before": load(),
        "shapes": [],
    }
    for spec in args.shapes:
        shape = [int(v) for v in spec.lower().split("x")]
        res = measure_shape(shape, n, args.repeats, diffusers)
        result["shapes"].append(res)
        print(
            f"shape {tuple(shape)} float32: copy bandwidth {res['copy_bandwidth_GBps']:.1f} GB/s "
            f"(read + write), one state {res['state_bytes'] / 2**20:.2f} MiB"
        )
        for name, r in res["solvers"].items():
            print(
                f"  {name:8s} per step: ours {r['ours_ms_per_step']:7.3f} ms  diffusers "
                f"{r['diffusers_ms_per_step']:7.3f} ms  ratio {r['ratio']:.3f} | floor {r['floor_ms_per_step']:.3f} ms "
                f"({r['floor_units']} states): ours {r['ours_over_floor']:.2f}x, diffusers "
                f"{r['diffusers_over_floor']:.2f}x | peak +states ours {fmt_peak(r['peak_states_ours'])} "
                f"diffusers {fmt_peak(r['peak_states_diffusers'])} | set-up ms ours cold "
                f"{r['setup_ms_ours_cold']:.2f} warm {r['setup_ms_ours_warm']:.2f} diffusers "
                f"{r['setup_ms_diffusers']:.2f}"
            )
    result["load_after"] = load()
    print(
        f"{n} steps, {result['threads']} thread(s), torch {torch.__version__}, diffusers {diffusers.__version__}; "
        f"{result['load_before']} before, {result['load_after']} after"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    ratios = {k: v["ratio"] for k, v in result["shapes"][0]["solvers"].items()}
    print("overhead ratio ours/diffusers: " + " ".join(f"{k}={v:.3f}" for k, v in ratios.items()))


if __name__ == "__main__":
    main()
