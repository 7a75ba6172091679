"""companion._device.host_to: the copy helper behind sync-free sampling loops (its CUDA path, pinned memory
and non_blocking=True, is exercised by benchmarks/gpu_readiness.py on a GPU machine)."""

import torch

from companion._device import host_to


def test_host_to_casts_on_the_host_and_keeps_values():
    t = torch.tensor([0.1, 1.0 / 3.0, 2.0], dtype=torch.float64)
    out = host_to(t, "cpu", torch.float32)
    assert out.dtype == torch.float32 and out.device.type == "cpu"
    assert torch.equal(out, t.to(torch.float32))
    same = host_to(t, torch.device("cpu"))
    assert same.dtype == torch.float64 and torch.equal(same, t)


def test_host_to_leaves_integer_tensors_exact():
    seeds = torch.tensor([0, 2**62, -(2**63)], dtype=torch.int64)
    assert torch.equal(host_to(seeds, "cpu"), seeds)
