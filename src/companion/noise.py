"""Reproducible noise for stochastic samplers: per-sample seeds and Brownian paths.

A stochastic solver asks its noise source for a :class:`NoiseStream` on its time grid, before the loop,
and then calls ``stream(i)`` for the standard normal of step i (from ``grid[i]`` to ``grid[i + 1]``) and
``stream(i, k)``, k >= 1, for extra independent normals of that step (a Langevin corrector's). Every
draw has the shape and dtype of the solver's state x (B, ...).

Sources:

* :class:`PerSampleNoise` (``seeds``, one per sample): sample b's normals are a pure function of
  (seeds[b], i, k, element index), computed by a counter-based hash (splitmix64; Steele et al. 2014) and
  Box-Muller. A sample's result therefore does not depend on the batch size or its position, on CPU and
  GPU alike, and needs no generator state.
* :class:`BrownianPath` (``seeds``, fine time grid): one Brownian motion W(t) per sample, given by its
  increments on the fine grid (each a per-sample counter-based normal times sqrt(dt)). ``stream(i)`` is
  (W(t_i) - W(t_{i+1})) / sqrt(t_i - t_{i+1}), the *sum* of the fine increments inside the step, so runs on
  any grid whose points lie on the fine grid see the same Brownian motion (what strong-order tests need).
* :class:`GeneratorNoise` (a ``torch.Generator``): ``torch.randn`` in call order. Reproducible for a fixed
  batch, but *not* batch-size or position invariant.
* :class:`InjectedNoise` (explicit normals per step): replays given noise, e.g. diffusers' ``variance_noise``.

The same objects serve every SDE sampler of the package (ancestral, SDE-DPM-Solver++, predictor-corrector,
interpolant SDEs, mean-reverting samplers): they only see a grid and the state's shape.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from ._device import host_to

__all__ = [
    "NoiseSource",
    "NoiseStream",
    "PerSampleNoise",
    "BrownianPath",
    "GeneratorNoise",
    "InjectedNoise",
    "counter_normal",
    "resolve",
]

#: A step's noise: ``stream(i, k=0) -> Tensor`` shaped like the solver state.
NoiseStream = Callable[..., Tensor]


@runtime_checkable
class NoiseSource(Protocol):
    def stream(self, grid: Tensor, like: Tensor) -> NoiseStream:
        """The normals of a run on ``grid`` (float64, (N + 1,) or (N + 1, B)) for a state like ``like``."""
        ...


# --- counter-based normals -------------------------------------------------------------------------
def _i64(v: int) -> int:
    """An unsigned 64-bit constant as the int64 with the same bits."""
    return v - (1 << 64) if v >= 1 << 63 else v


_GOLDEN = _i64(0x9E3779B97F4A7C15)
_M1, _M2 = _i64(0xBF58476D1CE4E5B9), _i64(0x94D049BB133111EB)
_PRIOR, _PATH = -1, -2  # reserved step counters: the prior draw, the Brownian increments


def _srl(x: Tensor, s: int) -> Tensor:
    """Logical right shift of int64 bits (torch's >> is arithmetic)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def _mix(x: Tensor) -> Tensor:
    """splitmix64's finalizer: a bijection of 64-bit words with full avalanche (int64 arithmetic wraps)."""
    x = (x ^ _srl(x, 30)) * _M1
    x = (x ^ _srl(x, 27)) * _M2
    return x ^ _srl(x, 31)


_U64 = (1 << 64) - 1


def _mix_int(c: int) -> int:
    """``_mix(c * golden + golden)`` for one counter, in Python integers (no tensor, so no host-to-device
    copy inside a sampling loop); bit-identical to the int64 tensor arithmetic."""
    x = (c * _GOLDEN + _GOLDEN) & _U64
    x = ((x ^ (x >> 30)) * (_M1 & _U64)) & _U64
    x = ((x ^ (x >> 27)) * (_M2 & _U64)) & _U64
    return _i64(x ^ (x >> 31))


def _key(seeds: Tensor, *counters: Tensor | int) -> Tensor:
    k = _mix(seeds * _GOLDEN + 0x632BE59BD9B4E019)
    for c in counters:
        k = _mix(k ^ (_mix_int(c) if isinstance(c, int) else _mix(c * _GOLDEN + _GOLDEN)))
    return k


def counter_normal(keys: Tensor, n: int, dtype: torch.dtype) -> Tensor:
    """n standard normals per key (shape keys.shape + (n,)): splitmix64 outputs of the counters
    key + j * golden, two 53-bit uniforms per Box-Muller pair, in float64, cast to ``dtype``."""
    pairs = (n + 1) // 2
    j = torch.arange(1, 2 * pairs + 1, device=keys.device, dtype=torch.int64)
    bits = _mix(keys[..., None] + j * _GOLDEN)
    u = (_srl(bits, 11).to(torch.float64) + 0.5) * 2.0**-53  # in (0, 1): log is finite
    u1, u2 = u[..., 0::2], u[..., 1::2]
    r = torch.sqrt(-2.0 * torch.log(u1))
    th = (2.0 * math.pi) * u2
    z = torch.stack((r * torch.cos(th), r * torch.sin(th)), -1).flatten(-2)
    return z[..., :n].to(dtype)


def _seeds(seeds: Sequence[int] | Tensor, name: str = "seeds") -> Tensor:
    if isinstance(seeds, int) or (isinstance(seeds, Tensor) and seeds.dim() == 0):
        raise TypeError(f"{name} must be a sequence of ints (one per sample); got a single int")
    try:
        s = torch.as_tensor(seeds)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"{name} must be a sequence of ints (one per sample)") from exc
    if s.dim() != 1 or s.numel() < 1 or s.is_floating_point() or s.is_complex() or s.dtype == torch.bool:
        raise TypeError(f"{name} must be a 1-D sequence of ints (one per sample); got {seeds!r}")
    return s.to(device="cpu", dtype=torch.int64)


class _SeededNoise:
    def __init__(self, seeds: Sequence[int] | Tensor):
        self.seeds = _seeds(seeds)

    def _check(self, like: Tensor) -> None:
        if not isinstance(like, Tensor) or like.dim() < 1:
            raise TypeError("like must be a tensor of shape (B, ...)")
        if like.shape[0] != self.seeds.numel():
            raise ValueError(
                f"the noise has {self.seeds.numel()} seeds but the batch has {like.shape[0]} samples"
            )

    def _normal(self, seeds: Tensor, like: Tensor, *counters) -> Tensor:
        n = math.prod(like.shape[1:])
        return counter_normal(_key(seeds, *counters), n, like.dtype).reshape(like.shape)

    def randn(self, *shape: int, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
        """The prior draw x_T of shape (B, *shape): standard normals from each sample's own seed."""
        like = torch.empty((self.seeds.numel(), *shape), dtype=dtype, device=device)
        return self._normal(host_to(self.seeds, like.device), like, _PRIOR)


class PerSampleNoise(_SeededNoise):
    """Normals that are a pure function of (sample seed, step, draw, element): batch-invariant.

    ``PerSampleNoise([s_0, ..., s_{B-1}])``; ``randn(*shape)`` gives the matching prior x_T. Sample b
    drawn in any batch, at any position, gets bit-identical noise (same device and dtype).
    """

    def stream(self, grid: Tensor, like: Tensor) -> NoiseStream:
        self._check(like)
        seeds = host_to(self.seeds, like.device)

        def draw(i: int, k: int = 0) -> Tensor:
            return self._normal(seeds, like, i, k)

        return draw


class BrownianPath(_SeededNoise):
    """A Brownian motion W(t) per sample, sampled exactly on a fine time grid ``times``.

    The increment over fine interval j (between the j-th and (j+1)-th sorted times) is sqrt(dt_j) times a
    counter-based normal of (seed, j): the path is fixed by the seeds, batch-invariant, and never stored.
    A run's step normal is (W(t_i) - W(t_{i+1})) / sqrt(t_i - t_{i+1}), summed from those increments, so
    every grid made of points of ``times`` sees the same path. Grid points must lie on ``times`` (to 1e-9
    of its spacing); one shared grid (1-D) per run. Cost per run: one normal per fine interval and element.
    """

    def __init__(self, seeds: Sequence[int] | Tensor, times: Tensor | Sequence[float]):
        super().__init__(seeds)
        t = torch.as_tensor(times, dtype=torch.float64).detach().cpu().reshape(-1)
        if t.numel() < 2 or not bool(torch.isfinite(t).all()):
            raise ValueError("times must hold at least two finite times")
        t = torch.sort(t).values
        if not bool((t[1:] > t[:-1]).all()):
            raise ValueError("times must be distinct")
        self.times = t

    def index(self, t: Tensor) -> Tensor:
        """Indices of the fine-grid points equal (to 1e-9 of the local spacing) to the times ``t``."""
        t = torch.as_tensor(t, dtype=torch.float64).cpu().contiguous()
        j = torch.searchsorted(self.times, t).clamp(1, self.times.numel() - 1)
        lo, hi = self.times[j - 1], self.times[j]
        j = torch.where((t - lo).abs() <= (hi - t).abs(), j - 1, j)
        gap = torch.diff(self.times).min()
        if not bool(((self.times[j] - t).abs() <= 1e-9 * gap).all()):
            raise ValueError(
                "every grid time must be a point of the BrownianPath's times; build the path on a grid "
                "that refines every grid you sample on"
            )
        return j

    def increments(self, j0: int, j1: int, like: Tensor) -> Tensor:
        """W(times[j1]) - W(times[j0]) for j0 <= j1, shaped like ``like`` (float64 sums, cast)."""
        self._check(like)
        return self._increments(j0, j1, like, *self._on(like.device))

    def _on(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """(seeds, sqrt of the fine steps) on ``device``: copied once per run, before the loop."""
        return host_to(self.seeds, device), host_to(torch.diff(self.times).sqrt(), device)

    def _increments(self, j0: int, j1: int, like: Tensor, seeds: Tensor, sqrt_dt: Tensor) -> Tensor:
        if j1 == j0:
            return torch.zeros_like(like)
        n = math.prod(like.shape[1:])
        j = torch.arange(j0, j1, device=like.device, dtype=torch.int64)
        z = counter_normal(_key(seeds[:, None], _PATH, j[None, :]), n, torch.float64)  # (B, j1 - j0, n)
        w = (z * sqrt_dt[j0:j1][None, :, None]).sum(1)
        return w.reshape(like.shape).to(like.dtype)

    def fine_increments(self, like: Tensor) -> Tensor:
        """All fine increments W(times[j + 1]) - W(times[j]), shape (n_fine, *like.shape), float64."""
        self._check(like)
        seeds, sqrt_dt = self._on(like.device)
        j = torch.arange(sqrt_dt.numel(), device=like.device, dtype=torch.int64)
        z = counter_normal(_key(seeds[None, :], _PATH, j[:, None]), math.prod(like.shape[1:]), torch.float64)
        return (z * sqrt_dt[:, None, None]).reshape((-1,) + tuple(like.shape))

    def stream(self, grid: Tensor, like: Tensor) -> NoiseStream:
        self._check(like)
        g = torch.as_tensor(grid, dtype=torch.float64).cpu()
        if g.dim() != 1:
            raise ValueError("BrownianPath needs one shared time grid per run (shape (N + 1,))")
        idx = self.index(g).tolist()  # before the loop: no host sync per step
        scale = (g[:-1] - g[1:]).abs().rsqrt().tolist()
        seeds, sqrt_dt = self._on(like.device)

        def draw(i: int, k: int = 0) -> Tensor:
            if k:
                return self._normal(seeds, like, i, k)
            a, b = sorted((idx[i], idx[i + 1]))
            # Reverse time: the step from t_i down to t_{i+1} uses W(t_i) - W(t_{i+1}).
            dw = self._increments(a, b, like, seeds, sqrt_dt)
            return dw * scale[i] if idx[i] > idx[i + 1] else dw * -scale[i]

        return draw


class GeneratorNoise:
    """``torch.randn`` from one ``torch.Generator`` (None: torch's global generator), in call order.

    Reproducible for a fixed batch and call sequence, but a sample's noise depends on the batch size and
    its position; use :class:`PerSampleNoise` for batch invariance.
    """

    def __init__(self, generator: torch.Generator | None = None):
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None; got {type(generator).__name__}")
        self.generator = generator

    def stream(self, grid: Tensor, like: Tensor) -> NoiseStream:
        def draw(i: int, k: int = 0) -> Tensor:
            return torch.randn(like.shape, generator=self.generator, device=like.device, dtype=like.dtype)

        return draw


class InjectedNoise:
    """Replays given normals: ``noise[i]`` (shape of x) for step i; extra draws (k >= 1) come from
    ``extra[k - 1][i]`` when given, else raise."""

    def __init__(self, noise: Sequence[Tensor] | Tensor, extra: Sequence[Sequence[Tensor] | Tensor] = ()):
        self.noise, self.extra = noise, tuple(extra)

    def stream(self, grid: Tensor, like: Tensor) -> NoiseStream:
        n = torch.as_tensor(grid).shape[0] - 1
        for name, seq in [("noise", self.noise)] + [(f"extra[{k}]", e) for k, e in enumerate(self.extra)]:
            if len(seq) < n:
                raise ValueError(f"{name} holds {len(seq)} draws; the run has {n} steps")
            if tuple(seq[0].shape) != tuple(like.shape):
                raise ValueError(f"{name} draws must have the shape of x {tuple(like.shape)}")

        def draw(i: int, k: int = 0) -> Tensor:
            if k > len(self.extra):
                raise ValueError(f"InjectedNoise has no extra draw {k}; pass extra=")
            src = self.noise if k == 0 else self.extra[k - 1]
            return src[i].to(like.device, like.dtype)

        return draw


def resolve(noise: NoiseSource | None, generator: torch.Generator | None) -> NoiseSource:
    """The noise a stochastic solver uses: ``noise`` if given, else the ``generator`` (None: global RNG)."""
    if noise is not None and generator is not None:
        raise ValueError("pass either noise= or generator=, not both")
    if noise is None:
        return GeneratorNoise(generator)
    if not isinstance(noise, NoiseSource):
        raise TypeError(
            "noise must be a companion.noise source (PerSampleNoise, BrownianPath, GeneratorNoise, "
            f"InjectedNoise, or any object with .stream(grid, like)); got {type(noise).__name__}"
        )
    return noise
