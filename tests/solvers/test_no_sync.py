"""No host-device synchronisation inside sampling loops, checked on the CPU.

A GPU run syncs the host when it reads a device value (``.item()``, ``if tensor:``) or copies host memory
to the device from pageable memory (``cpu_tensor.to("cuda")``, ``torch.as_tensor(3, device="cuda")``).
Here the whole run happens on the ``meta`` device, whose tensors carry no data, under two interception modes
that count (a) reads of a meta tensor's value and (b) host-to-device copies. A loop is sync-free when (a) is
zero and (b) does not grow with the number of steps: the copies made once, before the loop, are fine.
The same property is measured on a real GPU by benchmarks/gpu_readiness.py (torch.cuda sync debug mode).
"""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import companion as cp

ATEN = torch.ops.aten
META = torch.device("meta")


class _Dispatch(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.reads = self.copies = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is ATEN._local_scalar_dense.default and args[0].device == META:
            self.reads += 1
        if func is ATEN._to_copy.default and args[0].device.type == "cpu":
            self.copies += str(kwargs.get("device", "cpu")) == "meta"
        if func is ATEN.copy_.default and args[1].device.type == "cpu" and args[0].device == META:
            self.copies += 1
        return func(*args, **kwargs)


class _Function(TorchFunctionMode):
    """Python scalars or lists sent to a device by a factory (a host buffer, then a copy)."""

    def __init__(self) -> None:
        super().__init__()
        self.copies = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.as_tensor, torch.tensor) and args and not isinstance(args[0], torch.Tensor):
            self.copies += str(kwargs.get("device", "cpu")) == "meta"
        return func(*args, **kwargs)


def _count(run) -> tuple[int, int]:
    d, f = _Dispatch(), _Function()
    with d, f:
        out = run()
    assert out.device == META
    return d.reads, d.copies + f.copies


def _noise():
    return cp.noise.PerSampleNoise(range(4))


CONFIGS = [
    dict(solver="dpmsolver++", order=2),
    dict(solver="dpmsolver++", order=3),
    dict(solver="dpmsolver++", order=2, method="singlestep"),
    dict(solver="dpmsolver", order=3, method="singlestep"),
    dict(solver="unipc", order=2),
    dict(solver="unipc", order=3, variant="bh1"),
    dict(solver="deis", order=3),
    dict(solver="ddim"),
    dict(solver="euler"),
    dict(solver="heun"),
    dict(solver="pndm"),
    dict(solver="euler-maruyama", noise=_noise),
    dict(solver="ancestral", noise=_noise),
    dict(solver="ancestral", variance="large", noise=_noise),
    dict(solver="ddim", eta=1.0, noise=_noise),
    dict(solver="sde-dpmsolver++", order=2, noise=_noise),
    dict(solver="sde-dpmsolver++", order=3, noise=_noise),
    dict(solver="pc", noise=_noise),
    dict(solver="interpolant", noise=_noise),
    dict(solver="dpmsolver++", order=2, x0_fn=cp.parameterization.dynamic_threshold),
]


def _id(kw: dict) -> str:
    named = [f"{v}" for k, v in kw.items() if k not in ("noise", "x0_fn")]
    return "-".join(named + ["seeded"] * ("noise" in kw) + ["thresholding"] * ("x0_fn" in kw))


@pytest.mark.parametrize("kw", CONFIGS, ids=_id)
def test_sampling_loop_makes_no_host_sync(kw):
    schedule = cp.schedules.VPDiscrete.linear()
    x = torch.empty(4, 3, 2, device=META)

    def model(x, t):
        return 0.5 * torch.tanh(x)

    def run(n):
        opts = {k: (v() if k == "noise" else v) for k, v in kw.items()}
        return cp.sample(model, x, schedule=schedule, steps=n, t_end=1e-3, **opts)

    (r6, c6), (r12, c12) = _count(lambda: run(6)), _count(lambda: run(12))
    assert r6 == r12 == 0, f"{kw}: the loop reads device values ({r6}, {r12} reads)"
    assert c6 == c12, f"{kw}: host-to-device copies grow with the steps ({c6} at 6 steps, {c12} at 12)"


def test_guided_trained_network_makes_no_host_sync():
    """Classifier-free guidance on a shipped UNet with labels given on the host: copied once, not per step."""
    net = cp.lab.models.load("digits-unet-eps", device=META).to(torch.float32)
    x = torch.empty(4, 1, 8, 8, device=META)

    def run(n):
        guided = net.cond(torch.arange(4) % 10, guidance=4.0)
        return cp.sample(guided, x, schedule=net.schedule, prediction=net.prediction, steps=n, t_end=1e-3)

    (r6, c6), (r12, c12) = _count(lambda: run(6)), _count(lambda: run(12))
    assert r6 == r12 == 0 and c6 == c12, (r6, c6, r12, c12)
