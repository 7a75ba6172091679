"""``python -m companion.generate``: draw many samples, sharded over processes and machines by torchrun.

Two subcommands (``sample`` is the default)::

    python -m companion.generate sample --model digits-unet-eps --solver dpmsolver++ -O order=2 --steps 20 \\
        --num-samples 50000 --batch-size 256 --guidance 2 --out runs/digits
    torchrun --nproc_per_node=4 -m companion.generate --model digits-unet-eps ... --out runs/digits
    python -m companion.generate evaluate runs/digits

The console scripts ``companion-generate`` and ``companion.generate`` run the same :func:`main`.

How the work is laid out, and why a sample's value does not depend on who drew it:

* Sample ``i`` has its own seed ``seed * 2**32 + i``: its prior draw x_T and every normal a stochastic
  solver asks for come from :class:`companion.noise.PerSampleNoise` (a counter-based hash of the seed),
  its label (``--labels cycle``) is ``i mod num_classes``.
* Samples ``[k * shard_size, (k + 1) * shard_size)`` form shard ``k``. Ranks take the unfinished shards
  round-robin; a rank splits a shard into batches of ``--batch-size``.
* CPU and GPU kernels pick their algorithm (and so their rounding) by batch size, so the network is always
  evaluated on chunks of exactly ``--chunk`` rows (the last one padded): a sample's network outputs, and
  therefore the solver's arithmetic on it, are the same whatever the batch, its position in it, the
  rank or the world size. On CPU this makes shards byte-identical across world sizes and batch sizes
  (tested); on GPU it holds as far as the kernels are deterministic.
* A shard is written to a temporary file, flushed, then renamed: a crashed rank leaves at most a
  temporary file (removed by the next run), never a partial shard. Rank 0 keeps ``manifest.json``
  (written the same way) with the full configuration, the package version, the environment and each
  finished shard's SHA-256. A rerun with the same configuration verifies the recorded shards (spread
  over the ranks), redoes any that fail, and computes the rest; a different configuration is refused.

The configuration that names a set of samples is everything that changes their values: the model (and a
fingerprint of its weights), the solver and its options, every ``cp.sample`` argument, the sample count,
the seed, labels, guidance, shard size, chunk, dtype, device type and file format. The batch size and the
world size are not part of it: they change how fast, not what.

``module:function`` models: ``function()`` returns ``(model, schedule)`` or a dict with the keys
``model`` and ``schedule`` and optionally ``prediction``, ``shape`` and ``num_classes``. A conditional
model is called ``model(x, t, y)``, with label ``num_classes`` meaning "no label" (the convention of the
shipped models; classifier-free guidance uses it).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import importlib
import io
import json
import math
import os
import platform
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from . import grids
from . import solvers as S
from ._io import TMP_PREFIX as _TMP
from ._io import write_atomic as _write_atomic
from .noise import PerSampleNoise
from .parameterization import classifier_free_guidance, dynamic_threshold
from .sampling import _LOF
from .sampling import sample as cp_sample
from .schedules import Schedule

__all__ = ["GenerateError", "Job", "generate", "load", "evaluate", "main", "FORMAT"]

FORMAT = "companion.generate/1"
MANIFEST = "manifest.json"
EVALUATION = "evaluation.json"
_FORMATS = {"safetensors": ".safetensors", "pt": ".pt"}
_DTYPES = {"float32": torch.float32, "float64": torch.float64}
_SEED_LIMIT = 1 << 31
_INDEX_LIMIT = 1 << 32


class GenerateError(ValueError):
    """Bad input to the command: the message names the problem on one line."""


# --- the job ---------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Job:
    """What to draw. ``options`` are the solver's options; ``sample_kwargs`` the other ``cp.sample`` ones."""

    model: str
    n: int
    out: str
    solver: str = "dpmsolver++"
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    steps: int = 20
    grid: str = "logsnr"
    t_start: float | None = None
    t_end: float | None = 1e-3
    rho: float = 7.0
    lower_order_final: bool = True
    denoise_to_zero: bool = False
    compat: str | None = None
    seed: int = 0
    labels: str | None = None
    guidance: float = 1.0
    batch_size: int = 64
    shard_size: int = 1000
    chunk: int = 16
    dtype: str = "float32"
    device: str = "cpu"
    format: str = "safetensors"
    prediction: str | None = None
    shape: tuple[int, ...] | None = None
    timesteps: tuple[float, ...] | None = (
        None  # an explicit grid t_0 > ... > t_N (then steps, grid, t_* unused)
    )
    threshold: float | None = (
        None  # dynamic thresholding of x0 with this quantile ratio (DPM-Solver semantics)
    )
    threshold_max: float = 1.0  # its max_val


@dataclasses.dataclass
class _Model:
    """A resolved model: ``fn(x, t, y)`` (y None when unconditional) and what the run needs to know."""

    fn: Callable[[Tensor, Tensor, Tensor | None], Tensor]
    schedule: Schedule
    prediction: str
    shape: tuple[int, ...]
    num_classes: int
    fingerprint: str | None
    schedule_desc: Any


def _int(name: str, v: Any, lo: int, hi: int | None = None) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < lo or (hi is not None and v >= hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi})"
        raise GenerateError(f"{name} must be an int {rng}; got {v!r}")
    return v


def _tensor_digest(state: dict[str, Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        v = state[k].detach().to("cpu").contiguous()
        h.update(k.encode() + str(v.dtype).encode() + str(tuple(v.shape)).encode())
        h.update(v.view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()


def _conditional(model: Callable[..., Tensor], num_classes: int, guidance: float):
    """``fn(x, t, y)``: the unconditional model for ``y = None``, else the guided one (label ``num_classes``
    is "no label"; guidance 1 is the conditional model, one evaluation)."""

    def fn(x: Tensor, t: Tensor, y: Tensor | None) -> Tensor:
        if y is None:
            if not num_classes:
                return model(x, t)
            return model(x, t, torch.full((x.shape[0],), num_classes, dtype=torch.long, device=x.device))
        if guidance == 1.0:
            return model(x, t, y)
        return classifier_free_guidance(model, guidance, y, torch.full_like(y, num_classes))(x, t)

    return fn


_SHAPES = {"DigitsUNet": lambda c: (1, 8, 8), "MLPScore": lambda c: (int(c.get("dim", 2)),)}


def _shipped(name: str, job: Job, device: torch.device, dtype: torch.dtype) -> _Model:
    from .lab import models

    m = models.load(name, device=device).to(dtype=dtype)
    card = m.card
    if card["arch"] not in _SHAPES or m.schedule is None or m.prediction is None:
        raise GenerateError(
            f"model {name!r} is not a diffusion model the command can sample (its card has arch "
            f"{card['arch']!r}); shipped diffusion models: {_diffusion_models()}"
        )
    num_classes = int(getattr(m.net, "num_classes", 0) or 0)
    fn = _conditional(m, num_classes, job.guidance)

    return _Model(
        fn,
        m.schedule,
        m.prediction,
        _SHAPES[card["arch"]](card["config"]),
        num_classes,
        f"sha256:{card['sha256']}",
        card.get("schedule"),
    )


def _diffusion_models() -> list[str]:
    from .lab import models

    out = []
    for name in models.available():
        try:
            card = models.load_card(name)
        except models.WeightsError:
            continue
        if card.get("arch") in _SHAPES and card.get("prediction") and card.get("schedule"):
            out.append(name)
    return out


def _diffusers_dir(path: Path, job: Job, device: torch.device, dtype: torch.dtype) -> _Model:
    from .adapters import from_pretrained

    m = from_pretrained(str(path), device=device, dtype=dtype)
    cfg = m.unet.config
    size = cfg.sample_size if isinstance(cfg.sample_size, int) else tuple(cfg.sample_size)[0]
    shape = job.shape or (int(cfg.in_channels), int(size), int(size))
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file() and p.suffix in (".json", ".safetensors", ".bin"):
            h.update(str(p.relative_to(path)).encode())
            h.update(p.read_bytes())
    return _Model(
        lambda x, t, y: m(x, t),
        m.schedule,
        m.prediction,
        shape,
        0,
        f"sha256:{h.hexdigest()}",
        repr(m.schedule),
    )


def _function(spec: str, job: Job, device: torch.device, dtype: torch.dtype) -> _Model:
    mod_name, _, fn_name = spec.partition(":")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise GenerateError(f"model {spec!r}: cannot import module {mod_name!r} ({e})") from e
    factory = getattr(mod, fn_name, None)
    if not callable(factory):
        raise GenerateError(f"model {spec!r}: module {mod_name!r} has no function {fn_name!r}")
    got = factory()
    d = got if isinstance(got, dict) else dict(zip(("model", "schedule"), got, strict=True))
    model, schedule = d.get("model"), d.get("schedule")
    if not callable(model) or not isinstance(schedule, Schedule):
        raise GenerateError(
            f"model {spec!r}: the function must return (model, schedule) with a callable model and a "
            "companion Schedule"
        )
    shape = job.shape or d.get("shape")
    if shape is None:
        raise GenerateError(
            f"model {spec!r}: give the sample shape (--shape, or 'shape' in the returned dict)"
        )
    num_classes = int(d.get("num_classes", 0))
    if isinstance(model, torch.nn.Module):
        model = model.to(device=device, dtype=dtype).eval()
        fingerprint = f"state_dict:{_tensor_digest(model.state_dict())}"
    else:
        fingerprint = None

    fn = _conditional(model, num_classes, job.guidance)

    return _Model(
        fn,
        schedule,
        job.prediction or d.get("prediction") or "eps",
        tuple(int(s) for s in shape),
        num_classes,
        fingerprint,
        repr(schedule),
    )


def _resolve_model(job: Job, device: torch.device, dtype: torch.dtype) -> _Model:
    spec = job.model
    if not isinstance(spec, str) or not spec:
        raise GenerateError(
            f"model must be a shipped model name, a diffusers folder or module:function; got {spec!r}"
        )
    if Path(spec).is_dir():
        return _diffusers_dir(Path(spec), job, device, dtype)
    if ":" in spec:
        return _function(spec, job, device, dtype)
    names = _diffusion_models()
    if spec not in names:
        raise GenerateError(
            f"unknown model {spec!r}: not a shipped diffusion model ({', '.join(names)}), a diffusers model "
            "folder, or module:function"
        )
    return _shipped(spec, job, device, dtype)


def _labels_of(job: Job, num_classes: int) -> str | None:
    """The label rule: None (unconditional), 'cycle' (i mod num_classes) or one class 'k'."""
    lab = job.labels
    if lab is None:
        lab = "cycle" if num_classes else "none"
    if lab == "none":
        if job.guidance != 1.0:
            raise GenerateError("guidance needs labels: pass --labels cycle or a class index")
        return None
    if not num_classes:
        raise GenerateError(
            f"labels {lab!r} given but model {job.model!r} is unconditional (use --labels none)"
        )
    if lab == "cycle":
        return lab
    try:
        k = int(lab)
    except ValueError:
        raise GenerateError(f"labels must be 'cycle', 'none' or a class index; got {lab!r}") from None
    if not 0 <= k < num_classes:
        raise GenerateError(f"labels must be a class index in [0, {num_classes}); got {k}")
    return str(k)


def _labels_for(rule: str | None, idx: Tensor, num_classes: int) -> Tensor | None:
    if rule is None:
        return None
    if rule == "cycle":
        return idx % num_classes
    return torch.full_like(idx, int(rule))


def _environment(world: int, device: torch.device) -> dict[str, Any]:
    from . import __version__

    env = {
        "companion": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "world_size": world,
        "device": str(device),
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


@dataclasses.dataclass
class _Plan:
    job: Job
    model: _Model
    solver: S.Solver
    config: dict[str, Any]
    device: torch.device
    dtype: torch.dtype
    labels: str | None
    n_shards: int

    def shard_range(self, k: int) -> tuple[int, int]:
        return k * self.job.shard_size, min((k + 1) * self.job.shard_size, self.job.n)

    def shard_name(self, k: int) -> str:
        return f"shard-{k:06d}{_FORMATS[self.job.format]}"


def _plan(job: Job, local_rank: int = 0) -> _Plan:
    """Check every input and resolve the model; raises :class:`GenerateError` before anything is written."""
    _int("n", job.n, 1, _INDEX_LIMIT)
    _int("batch_size", job.batch_size, 1)
    _int("shard_size", job.shard_size, 1)
    _int("chunk", job.chunk, 1)
    _int("seed", job.seed, 0, _SEED_LIMIT)
    _int("steps", job.steps, 1)
    timesteps = None
    if job.timesteps is not None:
        try:
            timesteps = tuple(float(v) for v in job.timesteps)
        except (TypeError, ValueError):
            raise GenerateError(f"timesteps must be a sequence of numbers; got {job.timesteps!r}") from None
    if job.threshold is not None:
        for name, v in (("threshold", job.threshold), ("threshold_max", job.threshold_max)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise GenerateError(f"{name} must be a finite number; got {v!r}")
        if not 0.0 < job.threshold <= 1.0:
            raise GenerateError(f"threshold (a quantile ratio) must lie in (0, 1]; got {job.threshold!r}")
        if job.threshold_max <= 0:
            raise GenerateError(f"threshold_max must be positive; got {job.threshold_max!r}")
    if job.dtype not in _DTYPES:
        raise GenerateError(f"dtype must be one of {list(_DTYPES)}; got {job.dtype!r}")
    if job.format not in _FORMATS:
        raise GenerateError(f"format must be one of {list(_FORMATS)}; got {job.format!r}")
    if job.format == "safetensors":
        try:
            import safetensors.torch  # noqa: F401
        except ImportError:
            raise GenerateError(
                "format 'safetensors' needs safetensors: pip install 'companion[models]' (or --format pt)"
            ) from None
    if isinstance(job.guidance, bool) or not isinstance(job.guidance, (int, float)):
        raise GenerateError(f"guidance must be a real number; got {job.guidance!r}")
    if job.grid not in grids.GRIDS:
        raise GenerateError(f"unknown grid {job.grid!r}; available: {list(grids.GRIDS)}")
    if job.compat not in _LOF:
        raise GenerateError(f"compat must be one of {list(_LOF)}; got {job.compat!r}")
    if job.solver not in S.available():
        raise GenerateError(f"unknown solver {job.solver!r}; available: {S.available()}")
    try:
        solver = S.build(job.solver, **job.options)
    except (TypeError, ValueError) as e:
        raise GenerateError(str(e).splitlines()[0]) from None
    try:
        device = torch.device(job.device)
    except RuntimeError as e:
        raise GenerateError(f"device {job.device!r}: {e}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise GenerateError(f"device {job.device!r} asked for but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    dtype = _DTYPES[job.dtype]
    try:
        model = _resolve_model(job, device, dtype)
    except (OSError, ImportError, RuntimeError) as e:  # WeightsError is a RuntimeError
        raise GenerateError(f"model {job.model!r} could not be loaded: {str(e).splitlines()[0]}") from None
    try:
        if timesteps is None:
            grids.get_grid(job.grid, model.schedule, job.steps, job.t_start, job.t_end, job.rho)
        else:
            grids.check_timesteps(torch.tensor(timesteps, dtype=torch.float64), model.schedule)
    except (TypeError, ValueError) as e:
        raise GenerateError(str(e).splitlines()[0]) from None
    labels = _labels_of(job, model.num_classes)
    config = {
        "format": FORMAT,
        "model": job.model,
        "model_fingerprint": model.fingerprint,
        "schedule": model.schedule_desc,
        "prediction": model.prediction,
        "shape": list(model.shape),
        "solver": job.solver,
        # Every option with its value as built (defaults included): `-O order=2` names the default solver.
        "options": {f.name: getattr(solver, f.name) for f in dataclasses.fields(solver)},
        # An explicit grid replaces steps, grid, t_start, t_end and rho (recorded as None then).
        "timesteps": None if timesteps is None else list(timesteps),
        "steps": job.steps if timesteps is None else len(timesteps) - 1,
        "grid": job.grid if timesteps is None else None,
        "t_start": job.t_start if timesteps is None else None,
        "t_end": job.t_end if timesteps is None else None,
        "rho": job.rho if timesteps is None else None,
        "threshold": None if job.threshold is None else [float(job.threshold), float(job.threshold_max)],
        "lower_order_final": job.lower_order_final,
        "denoise_to_zero": job.denoise_to_zero,
        "compat": job.compat,
        "n": job.n,
        "seed": job.seed,
        "labels": labels,
        "num_classes": model.num_classes,
        "guidance": float(job.guidance),
        "shard_size": job.shard_size,
        "chunk": job.chunk,
        "dtype": job.dtype,
        "device_type": device.type,
        "file_format": job.format,
    }
    config = json.loads(json.dumps(config, default=repr))  # as the manifest will hold it, compared alike
    n_shards = -(-job.n // job.shard_size)
    return _Plan(job, model, solver, config, device, dtype, labels, n_shards)


# --- files -----------------------------------------------------------------------------------------
def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _encode(fmt: str, tensors: dict[str, Tensor]) -> bytes:
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    if fmt == "safetensors":
        from safetensors.torch import save

        return save(tensors)
    buf = io.BytesIO()
    torch.save(tensors, buf)
    return buf.getvalue()


def _decode(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def _read_manifest(out: Path) -> dict[str, Any] | None:
    p = out / MANIFEST
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise GenerateError(f"output folder {out} has an unreadable {MANIFEST} ({e})") from None


def _check_folder(out: Path, config: dict[str, Any]) -> dict[str, Any] | None:
    """The folder's manifest when it holds this configuration; None when the folder is new or empty."""
    if out.exists() and not out.is_dir():
        raise GenerateError(f"output {out} exists and is not a folder")
    manifest = _read_manifest(out) if out.is_dir() else None
    if manifest is None:
        if out.is_dir() and any(not p.name.startswith(_TMP) for p in out.iterdir()):
            raise GenerateError(f"output folder {out} is not empty and holds no {MANIFEST}; use a new folder")
        return None
    old = manifest.get("config", {})
    if old != config:
        keys = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
        raise GenerateError(
            f"output folder {out} holds another configuration (differs in {', '.join(keys)}); use a new folder"
        )
    return manifest


# --- distributed -----------------------------------------------------------------------------------
class _World:
    """torch.distributed when launched by torchrun (WORLD_SIZE > 1), else a world of one."""

    def __init__(self, device_type: str):
        self.size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.dist = None
        if self.size > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                if device_type == "cuda":
                    torch.cuda.set_device(self.local_rank)
                dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
            self.dist = dist

    def gather(self, obj: Any) -> list[Any]:
        if self.dist is None:
            return [obj]
        out: list[Any] = [None] * self.size
        self.dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.dist is not None:
            self.dist.barrier()

    def close(self) -> None:
        if self.dist is not None and self.dist.is_initialized():
            self.dist.destroy_process_group()


# --- sampling --------------------------------------------------------------------------------------
def _chunked(fn: Callable[..., Tensor], chunk: int, y: Tensor | None) -> Callable[[Tensor, Tensor], Tensor]:
    """``(x, t) -> fn(x, t, y)`` evaluated on row chunks of exactly ``chunk`` (the last one padded with
    copies of the first row), so that each row's output does not depend on the batch it came in."""

    def model(x: Tensor, t: Tensor) -> Tensor:
        b = x.shape[0]
        t = torch.as_tensor(t, device=x.device)
        t = t.expand(b) if t.dim() == 0 else t.reshape(b)
        pad = (-b) % chunk
        if pad:
            x = torch.cat([x, x[:1].expand(pad, *x.shape[1:])])
            t = torch.cat([t, t[:1].expand(pad)])
        yy = None if y is None else (torch.cat([y, y[:1].expand(pad)]) if pad else y)
        outs = [
            fn(x[s : s + chunk], t[s : s + chunk], None if yy is None else yy[s : s + chunk])
            for s in range(0, x.shape[0], chunk)
        ]
        return torch.cat(outs)[:b]

    return model


def _draw(plan: _Plan, lo: int, hi: int) -> tuple[Tensor, Tensor]:
    """Samples ``lo .. hi - 1`` (in batches of ``batch_size``) and their labels (-1: none)."""
    job, m = plan.job, plan.model
    xs, ys = [], []
    for s in range(lo, hi, job.batch_size):
        idx = torch.arange(s, min(s + job.batch_size, hi), dtype=torch.int64)
        noise = PerSampleNoise(job.seed * _INDEX_LIMIT + idx)
        x_T = noise.randn(*m.shape, dtype=plan.dtype, device=plan.device)
        y = _labels_for(plan.labels, idx, m.num_classes)
        y_dev = None if y is None else y.to(plan.device)
        x0_fn = None
        if job.threshold is not None:
            x0_fn = functools.partial(
                dynamic_threshold, ratio=float(job.threshold), max_val=float(job.threshold_max)
            )
        with torch.no_grad():
            x = cp_sample(
                _chunked(m.fn, job.chunk, y_dev),
                x_T,
                schedule=m.schedule,
                prediction=m.prediction,
                solver=plan.solver,
                steps=job.steps,
                grid=job.grid,
                t_start=job.t_start,
                t_end=job.t_end,
                timesteps=None if job.timesteps is None else torch.tensor(job.timesteps, dtype=torch.float64),
                x0_fn=x0_fn,
                rho=job.rho,
                lower_order_final=job.lower_order_final,
                denoise_to_zero=job.denoise_to_zero,
                compat=job.compat,
                noise=noise if plan.solver.stochastic else None,
            )
        xs.append(x.cpu())
        ys.append(torch.full_like(idx, -1) if y is None else y)
    return torch.cat(xs), torch.cat(ys)


class _Crash:
    """Fault injection for the tests: ``COMPANION_GENERATE_CRASH=k`` ends the process abruptly (no clean-up,
    like SIGKILL) when its k-th shard is on disk under its temporary name but not yet renamed."""

    def __init__(self) -> None:
        v = os.environ.get("COMPANION_GENERATE_CRASH")
        self.at = int(v) if v else 0
        self.count = 0

    def __call__(self) -> None:
        self.count += 1
        if self.at and self.count >= self.at:
            os._exit(70)


def _manifest(plan: _Plan, shards: dict[str, dict[str, Any]], world: _World, complete: bool) -> dict:
    return {
        "format": FORMAT,
        "config": plan.config,
        "complete": complete,
        "n_shards": plan.n_shards,
        "shards": dict(sorted(shards.items())),
        "environment": _environment(world.size, plan.device),
        "batch_size": plan.job.batch_size,
        "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    _write_atomic(out / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())


def generate(job: Job | None = None, /, *, progress: bool | None = None, **kwargs: Any) -> dict[str, Any]:
    """Run ``job`` (or ``Job(**kwargs)``) in this process's world and return the final manifest.

    Under torchrun every rank calls this; rank 0 writes the manifest and shows the progress bar. Raises
    :class:`GenerateError` on bad input before writing anything.
    """
    if job is None:
        job = Job(**kwargs)
    elif kwargs:
        raise TypeError("pass a Job or keyword arguments, not both")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    plan = _plan(job, int(os.environ.get("LOCAL_RANK", "0")) if world_size > 1 else 0)
    out = Path(job.out)
    manifest = _check_folder(out, plan.config)
    world = _World(plan.device.type)
    try:
        return _run(plan, out, manifest, world, progress)
    finally:
        world.close()


def _run(plan: _Plan, out: Path, manifest: dict | None, world: _World, progress: bool | None) -> dict:
    from tqdm.auto import tqdm

    rank, size = world.rank, world.size
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        for p in out.glob(f"{_TMP}*"):  # what a crashed run left: never a shard
            p.unlink(missing_ok=True)
    world.barrier()
    recorded = dict((manifest or {}).get("shards", {}))
    # Verify the recorded shards, spread over the ranks; anything else on disk is redone.
    names = sorted(recorded)
    mine = [n for i, n in enumerate(names) if i % size == rank]
    good = [n for n in mine if (out / n).is_file() and _sha256_file(out / n) == recorded[n]["sha256"]]
    verified = {n for part in world.gather(good) for n in part}
    done = {n: recorded[n] for n in names if n in verified}
    todo = [k for k in range(plan.n_shards) if plan.shard_name(k) not in done]
    if rank == 0:
        _write_manifest(out, _manifest(plan, done, world, complete=not todo))
    disable = (rank != 0) if progress is None else (rank != 0 or not progress)
    if os.environ.get("TQDM_DISABLE"):
        disable = True
    bar = tqdm(
        total=plan.job.n,
        initial=sum(r["stop"] - r["start"] for r in done.values()),
        unit="sample",
        desc="generate",
        disable=disable,
    )
    crash = _Crash()
    rounds = -(-len(todo) // size)
    for r in range(rounds):
        i = r * size + rank
        entry = None
        if i < len(todo):
            k = todo[i]
            lo, hi = plan.shard_range(k)
            x, y = _draw(plan, lo, hi)
            data = _encode(plan.job.format, {"samples": x, "labels": y, "index": torch.arange(lo, hi)})
            name = plan.shard_name(k)
            _write_atomic(out / name, data, crash)
            entry = (
                name,
                {"start": lo, "stop": hi, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)},
            )
        for e in world.gather(entry):
            if e is not None:
                done[e[0]] = e[1]
                bar.update(e[1]["stop"] - e[1]["start"])
        if rank == 0:
            _write_manifest(out, _manifest(plan, done, world, complete=len(done) == plan.n_shards))
    bar.close()
    world.barrier()
    return _manifest(plan, done, world, complete=len(done) == plan.n_shards)


# --- reading and evaluating ------------------------------------------------------------------------
def load(out: str | Path, *, verify: bool = True) -> tuple[Tensor, Tensor]:
    """All samples of a finished run, in index order, and their labels (-1: unconditional).

    Checks every shard's SHA-256 against the manifest (``verify``); raises :class:`GenerateError` when the
    run is unfinished or a shard is missing or corrupted.
    """
    out = Path(out)
    manifest = _read_manifest(out)
    if manifest is None:
        raise GenerateError(f"{out} holds no {MANIFEST}: not a companion.generate output folder")
    if not manifest.get("complete"):
        raise GenerateError(f"the run in {out} is unfinished: rerun the same command to complete it")
    xs, ys = [], []
    for name, rec in sorted(manifest["shards"].items(), key=lambda kv: kv[1]["start"]):
        p = out / name
        if not p.is_file():
            raise GenerateError(f"shard {p} is missing: rerun the same command to redo it")
        if verify and _sha256_file(p) != rec["sha256"]:
            raise GenerateError(
                f"shard {p} is corrupted (SHA-256 differs from the manifest): rerun to redo it"
            )
        d = _decode(p)
        xs.append(d["samples"])
        ys.append(d["labels"])
    return torch.cat(xs), torch.cat(ys)


def evaluate(out: str | Path, *, reference: str = "test") -> dict[str, Any]:
    """Statistics of the samples in ``out`` and, for 8x8 digits, the digits Frechet distance and accuracy.

    The Frechet distance uses the shipped digits classifier's features (:mod:`companion.lab.digits_metrics`)
    against scikit-learn's digits of split ``reference`` ("test": the 359 held-out digits the model cards
    use; "all"); it needs the ``data`` extra. The result is also written to ``evaluation.json``.
    """
    x, y = load(out)
    manifest = _read_manifest(Path(out))
    flat = x.double().flatten(1)
    finite = torch.isfinite(flat).all(1)
    f = flat[finite]
    res: dict[str, Any] = {
        "n": int(x.shape[0]),
        "shape": list(x.shape[1:]),
        "non_finite": int((~finite).sum()),
        "mean": float(f.mean()) if f.numel() else None,
        "std": float(f.std()) if f.numel() > 1 else None,
        "min": float(f.min()) if f.numel() else None,
        "max": float(f.max()) if f.numel() else None,
    }
    if list(x.shape[1:]) == [1, 8, 8]:
        from .lab import digits_metrics as dm
        from .lab.data import digits

        # The data lie in [-1, 1]: a pixel beyond 1.5 marks a sample off the data (as chapter 03 counts).
        res["fraction_beyond_1.5"] = float((f.abs() > 1.5).any(1).double().mean()) if f.numel() else None
        clf = dm.classifier()
        clf.net.float()  # as trained, whatever the caller's default dtype: the result must not depend on it
        ref, _ = digits(reference)
        xf = torch.nan_to_num(x.float())
        res["digits_fd"] = dm.digits_fd(xf, ref, clf)
        res["digits_fd_reference"] = f"scikit-learn digits, split {reference!r} ({ref.shape[0]} images)"
        if bool((y >= 0).all()):
            res["digits_accuracy"] = dm.class_accuracy(xf, y, clf)
    res["config"] = manifest["config"]
    _write_atomic(Path(out) / EVALUATION, (json.dumps(res, indent=1) + "\n").encode())
    return res


# --- the command -----------------------------------------------------------------------------------
def _value(s: str) -> Any:
    try:
        return json.loads(s)
    except ValueError:
        return s


def _option(s: str) -> tuple[str, Any]:
    key, eq, val = s.partition("=")
    if not eq or not key:
        raise argparse.ArgumentTypeError(f"solver option must be key=value; got {s!r}")
    return key, _value(val)


def _floats(s: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers; got {s!r}") from None


def _shape(s: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"shape must be comma-separated ints such as 1,8,8; got {s!r}"
        ) from None
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"shape must hold positive ints; got {s!r}")
    return shape


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit status 2, as for the checks after parsing
        raise GenerateError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="companion.generate", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    s = sub.add_parser("sample", help="draw samples into an output folder (the default subcommand)")
    s.add_argument(
        "--model", required=True, help="shipped model name, diffusers model folder, or module:function"
    )
    s.add_argument("--out", required=True, help="output folder (created; a rerun resumes it)")
    s.add_argument("--num-samples", dest="n", type=int, required=True, help="number of samples")
    s.add_argument("--solver", default="dpmsolver++", help="a name of companion.solvers.available()")
    s.add_argument(
        "-O",
        "--option",
        type=_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a solver option, e.g. -O order=3 -O method=multistep (values read as JSON when they parse)",
    )
    s.add_argument("--steps", type=int, default=20)
    s.add_argument("--grid", default="logsnr", help=f"one of {', '.join(grids.GRIDS)}")
    s.add_argument("--t-start", type=float, default=None)
    s.add_argument("--t-end", type=float, default=1e-3)
    s.add_argument("--rho", type=float, default=7.0)
    s.add_argument(
        "--timesteps",
        type=_floats,
        default=None,
        help="an explicit grid t_0 > ... > t_N, comma-separated (replaces --steps, --grid, --t-start/-end)",
    )
    s.add_argument(
        "--threshold",
        type=float,
        default=None,
        metavar="RATIO",
        help="dynamic thresholding of the predicted x0 at this quantile ratio, e.g. 0.995 (Saharia et al.)",
    )
    s.add_argument("--threshold-max", type=float, default=1.0, help="dynamic thresholding's max_val")
    s.add_argument("--no-lower-order-final", dest="lower_order_final", action="store_false")
    s.add_argument("--denoise-to-zero", action="store_true")
    s.add_argument("--compat", default=None, choices=["dpm-solver", "diffusers"])
    s.add_argument("--seed", type=int, default=0, help="sample i's seed is seed * 2**32 + i")
    s.add_argument(
        "--labels",
        default=None,
        help="cycle (i mod classes; default for conditional models), none, or a class",
    )
    s.add_argument(
        "--guidance", type=float, default=1.0, help="classifier-free guidance scale (1: conditional model)"
    )
    s.add_argument("--batch-size", type=int, default=64)
    s.add_argument("--shard-size", type=int, default=1000)
    s.add_argument(
        "--chunk", type=int, default=16, help="rows per network evaluation (fixed: batch-invariant output)"
    )
    s.add_argument("--dtype", default="float32", choices=list(_DTYPES))
    s.add_argument("--device", default="cpu", help="cpu, cuda (one GPU per local rank) or cuda:K")
    s.add_argument("--format", default="safetensors", choices=list(_FORMATS))
    s.add_argument(
        "--prediction", default=None, help="module:function models: what the model returns (default eps)"
    )
    s.add_argument(
        "--shape", type=_shape, default=None, help="module:function models: sample shape, e.g. 1,8,8"
    )
    s.add_argument("--no-progress", dest="progress", action="store_false")
    e = sub.add_parser("evaluate", help="verify an output folder and measure its samples")
    e.add_argument("out", help="an output folder of `sample`")
    e.add_argument("--reference", default="test", choices=["test", "all"], help="digits reference split")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("sample", "evaluate", "-h", "--help"):
        argv = ["sample", *argv]
    rank = int(os.environ.get("RANK", "0"))
    # SIGTERM (torchrun stopping the other ranks after a failure) runs the clean-up of temporary files.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        a = _parser().parse_args(argv)
        if a.command == "evaluate":
            print(json.dumps(evaluate(a.out, reference=a.reference), indent=1))
            return 0
        job = Job(
            model=a.model, n=a.n, out=a.out, solver=a.solver, options=dict(a.option), steps=a.steps,
            grid=a.grid, t_start=a.t_start, t_end=a.t_end, rho=a.rho, lower_order_final=a.lower_order_final,
            denoise_to_zero=a.denoise_to_zero, compat=a.compat, seed=a.seed, labels=a.labels,
            guidance=a.guidance, batch_size=a.batch_size, shard_size=a.shard_size, chunk=a.chunk,
            dtype=a.dtype, device=a.device, format=a.format, prediction=a.prediction, shape=a.shape,
            timesteps=a.timesteps, threshold=a.threshold, threshold_max=a.threshold_max,
        )  # fmt: skip
        m = generate(job, progress=a.progress)
    except GenerateError as err:
        # Every rank says it: under torchrun the first rank to exit gets the others stopped, rank 0 included.
        where = f" (rank {rank})" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
        print(f"companion.generate: error{where}: {err}", file=sys.stderr)
        return 2
    if rank == 0:
        n_done = sum(r["stop"] - r["start"] for r in m["shards"].values())
        print(
            f"companion.generate: {n_done} samples in {len(m['shards'])} shard(s) in {job.out}",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
