"""The shipped DPM-Solver-v3 statistics of the digits UNet (companion.lab.ems): they load, fit the model's
samples and its sampling interval, are small, say how they were made, and run."""

from __future__ import annotations

import pytest
import torch

import companion as cp
from companion.lab import ems

pytest.importorskip("safetensors")

SHIPPED = [("digits-unet-eps", 4.0)]


@pytest.mark.parametrize("name,guidance", SHIPPED)
def test_shipped_statistics_load_and_cover_the_sampling_interval(name, guidance):
    st = ems.load(name, guidance)
    assert st.shape == (1, 8, 8)
    sched = cp.lab.models.load(name).schedule
    lo, hi = st.lam_range
    lam = sched.lambda_(torch.tensor(ems.T_RANGE, dtype=torch.float64))
    assert lo <= float(lam.min()) + 1e-6 and hi >= float(lam.max()) - 1e-6
    assert st.l_se is not None and bool((st.l_se >= 0).all())
    # l falls from about 1 at the noise end towards 0 at the data end (the paper's Fig. 2)
    assert float(st.l[0].mean()) > 0.9 and float(st.l[-1].mean()) < 0.5
    assert st.meta["model"] == name and st.meta["guidance"] == guidance
    assert st.meta["command"].startswith("python -m companion.lab.ems")


def test_shipped_statistics_are_small():
    total = sum(p.stat().st_size for p in ems.shipped_dir().glob("*.safetensors"))
    assert 0 < total <= 150 * 1024, f"{total / 1024:.0f} kB"


def test_shipped_statistics_run_the_solver():
    net = cp.lab.models.load("digits-unet-eps")
    st = ems.load("digits-unet-eps", 4.0)
    y = torch.arange(4)
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = cp.sample(net.cond(y, guidance=4.0), x, schedule=net.schedule, prediction=net.prediction,
                        solver="dpmsolver-v3", statistics=st, steps=6, t_end=1e-3)  # fmt: skip
    assert out.shape == x.shape and bool(torch.isfinite(out).all())


def test_missing_statistics_name_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m companion.lab.ems digits-unet-eps --guidance 7.5"):
        ems.load("digits-unet-eps", 7.5, root=tmp_path)
