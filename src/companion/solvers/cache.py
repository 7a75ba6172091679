"""A bounded cache of the coefficient tables a fixed-grid run computes before its first model call.

A multistep run spends its set-up (schedule quantities on the grid, float64 step coefficients, the
evaluator's per-step conversion factors, and their transfer to the device) before the first model call;
on a GPU with a fast model that set-up is a sizeable part of a 20-step run (docs/findings/gpu_readiness.md).
Calls with the same schedule, grid, solver and options, on the same dtype, device and batch size, reuse it.

Keys are built **by value**, never by object identity: the schedule's class and every attribute it holds
(tensors by their bytes, numbers, strings), the grid's float64 bytes, the solver's class and options, and
everything else the tables depend on. A schedule mutated in place therefore gets a new key (no stale
tables), and two schedule objects with equal parameters share one entry. A schedule holding anything
else (a callable, an arbitrary object) has no value key, and such runs are not cached.
The cache is a least-recently-used dict of at most :func:`set_maxsize` entries (default 32). The time
tensors a cached run hands the model are shared with later runs: a model must not modify its ``t`` in place
(``set_maxsize(0)`` turns the cache off).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["clear", "info", "set_maxsize", "value_key", "get_or_build"]

_lock = threading.Lock()
_store: OrderedDict[tuple, Any] = OrderedDict()
_stats = {"hits": 0, "misses": 0, "uncacheable": 0}
_maxsize = 32


class _NoKey(Exception):
    pass


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _value(v: Any, depth: int = 0) -> Any:
    """A hashable stand-in for ``v`` that is equal exactly when the values are equal (tensors by dtype,
    shape and bytes). Raises _NoKey for anything without such a stand-in."""
    if depth > 4:
        raise _NoKey
    if v is None or isinstance(v, bool | int | str):
        return v
    if isinstance(v, float):
        return ("float", v) if not math.isnan(v) else ("float", "nan")
    if isinstance(v, Tensor):
        c = v.detach().to("cpu").contiguous()
        raw = c.reshape(-1).view(torch.uint8)  # flat first: a 0-dim tensor cannot be viewed as bytes
        return ("tensor", str(c.dtype), tuple(c.shape), _digest(raw.numpy().tobytes()))
    if isinstance(v, np.ndarray):
        c = np.ascontiguousarray(v)
        return ("ndarray", str(c.dtype), c.shape, _digest(c.tobytes()))
    if isinstance(v, np.generic):
        return ("np", str(v.dtype), v.item())
    if isinstance(v, tuple | list):
        return (type(v).__name__,) + tuple(_value(u, depth + 1) for u in v)
    if isinstance(v, dict):
        return ("dict",) + tuple(sorted((str(k), _value(u, depth + 1)) for k, u in v.items()))
    if isinstance(v, torch.dtype | torch.device):
        return str(v)
    if dataclasses.is_dataclass(v) and not isinstance(v, type):  # a solver: its class and options
        fields = [(f.name, _value(getattr(v, f.name), depth + 1)) for f in dataclasses.fields(v)]
        return (type(v).__module__, type(v).__qualname__, tuple(fields))
    raise _NoKey


def value_key(obj: Any) -> tuple | None:
    """The by-value key of a schedule (or any object of plain attributes): its class and every attribute,
    or None when one of them has no value key."""
    try:
        attrs = vars(obj)
    except TypeError:
        return None
    try:
        return (type(obj).__module__, type(obj).__qualname__, _value(dict(attrs)))
    except _NoKey:
        return None


def set_maxsize(n: int) -> None:
    """Bound the cache to ``n`` entries (0 disables it); the least recently used entries go first."""
    global _maxsize
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"n must be a non-negative int; got {n!r}")
    with _lock:
        _maxsize = n
        while len(_store) > n:
            _store.popitem(last=False)


def clear() -> None:
    """Empty the cache and reset its counters."""
    with _lock:
        _store.clear()
        _stats.update(hits=0, misses=0, uncacheable=0)


def info() -> dict[str, int]:
    """{"hits", "misses", "uncacheable", "size", "maxsize"}."""
    with _lock:
        return dict(_stats, size=len(_store), maxsize=_maxsize)


def get_or_build(parts: tuple | None, build: Callable[[], Any]) -> Any:
    """``build()``'s value, reused from an earlier call with equal ``parts`` (a tuple of hashable values,
    see :func:`value_key`; None: not cacheable, always built)."""
    if parts is None or _maxsize == 0:
        with _lock:
            _stats["uncacheable"] += 1
        return build()
    with _lock:
        if parts in _store:
            _store.move_to_end(parts)
            _stats["hits"] += 1
            return _store[parts]
    value = build()
    with _lock:
        _stats["misses"] += 1
        _store[parts] = value
        _store.move_to_end(parts)
        while len(_store) > _maxsize:
            _store.popitem(last=False)
    return value
