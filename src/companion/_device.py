"""Host-to-device copies that never block the host.

A plain ``cpu_tensor.to("cuda")`` copies from pageable memory, which synchronises the host with the
device (``torch.cuda.set_sync_debug_mode("error")`` flags it). Staging through pinned memory with
``non_blocking=True`` queues the copy on the current stream instead; the caching host allocator keeps
the pinned buffer alive until the copy has run.
"""

from __future__ import annotations

import torch
from torch import Tensor


def host_to(t: Tensor, device: torch.device | str, dtype: torch.dtype | None = None) -> Tensor:
    """``t.to(device, dtype)`` without a host-device synchronisation when ``t`` is on the CPU and
    ``device`` is a CUDA device (the dtype cast happens on the host first)."""
    device = torch.device(device)
    if dtype is not None and t.dtype != dtype:
        t = t.to(dtype)
    if t.device.type == "cpu" and device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)
