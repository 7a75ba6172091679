"""Small helpers every chapter calls first: device choice, seeding, and the claims ledger."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import torch

from . import claims

__all__ = ["setup", "pick_device"]


def pick_device(device: str | torch.device | None = "") -> torch.device:
    """``""``/None: CUDA when available, else CPU; otherwise the named device, which must exist."""
    if device is None or device == "":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} asked for CUDA, but torch.cuda.is_available() is False")
    return dev


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(dev)})"
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def setup(
    chapter: str, device: str | torch.device | None = "", seed: int = 0, quick: bool = False
) -> torch.device:
    """Start a chapter: open its claims ledger (``quick``: at CI sizes), seed every generator, pick and
    record the device."""
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int; got {type(seed).__name__}")
    claims.chapter(chapter, quick=quick)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    dev = pick_device(device)
    # The run-times page reads the device each chapter ran on from here.
    d = claims.claims_dir().parent / "devices"
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{chapter}.json").write_text(json.dumps({"chapter": chapter, "device": _device_name(dev)}) + "\n")
    return dev
