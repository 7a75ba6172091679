"""companion.lab.experiments: the helpers behind the chapters' error-vs-NFE, speed-up and inversion figures."""

import math

import numpy as np
import pytest
import torch

import companion as cp
from companion.lab import experiments as ex
from companion.targets import Gaussian

SCHED = cp.schedules.VPLinear(beta_min=0.1, beta_max=20.0)


def test_rms_error_and_divergence():
    x = torch.zeros(4, 2, 3, dtype=torch.float64)
    ref = torch.ones(4, 2, 3, dtype=torch.float64)
    assert ex.rms_error(x, ref) == pytest.approx(math.sqrt(6))
    x[0, 0, 0] = float("nan")
    x[1] = 100.0
    assert ex.divergence_fraction(x, radius=10.0) == 0.5
    with pytest.raises(ValueError, match="one shape"):
        ex.rms_error(x, ref[:2])


def test_fit_order_recovers_power_law():
    n = np.array([10.0, 20, 40, 80])
    assert ex.fit_order(n, 3.0 * n**-2.5) == pytest.approx(2.5)
    with pytest.raises(ValueError):
        ex.fit_order([1.0], [1.0])
    with pytest.raises(ValueError):
        ex.fit_order([1.0, 2.0], [1.0, 0.0])


def test_nfe_to_reach_and_speedup_on_power_laws():
    n = np.array([10.0, 20, 40, 80, 160])
    base, fast = ex.Curve(n, 1.0 / n), ex.Curve(n, 1.0 / n**2)
    assert ex.nfe_to_reach(fast, 1e-3) == pytest.approx(math.sqrt(1e3))  # exact for a power law in log-log
    assert math.isnan(ex.nfe_to_reach(base, 1e-4))
    assert ex.nfe_to_reach(fast, 1.0) == 10.0
    # base reaches 1/160 at 160 NFE; fast reaches it at sqrt(160) NFE.
    assert ex.speedup(base, fast, 160) == pytest.approx(160 / math.sqrt(160))
    assert ex.error_at(base, 20 * math.sqrt(2)) == pytest.approx(1 / (20 * math.sqrt(2)))
    with pytest.raises(ValueError, match="outside"):
        ex.speedup(base, fast, 1000)


def test_error_vs_nfe_counts_real_nfe_and_ddim_is_first_order():
    """On one Gaussian the PF-ODE flow map is closed form; DDIM's error against it halves with the step."""
    g = Gaussian(torch.tensor([0.5, -0.5]), torch.tensor([0.3, 0.1]))
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = g.flow_map(x_T, 1.0, 1e-3, SCHED)
    specs = {
        "ddim": {"solver": "ddim", "order": 1},
        "dpm3": {"solver": "dpmsolver", "order": 3, "method": "singlestep_fixed", "nfe_multiple": 3},
    }
    curves = ex.error_vs_nfe(
        g.model(SCHED, "eps"),
        x_T,
        ref,
        SCHED,
        specs,
        [20, 40, 80, 160],
        t_start=1.0,
        t_end=1e-3,
        lower_order_final=False,
    )
    assert curves["ddim"].nfe.tolist() == [20, 40, 80, 160]
    assert curves["dpm3"].nfe.tolist() == [18, 39, 78, 159]  # singlestep: steps = NFE, rounded to 3k
    assert abs(ex.fit_order(curves["ddim"].nfe, curves["ddim"].err) - 1.0) < 0.15
    assert abs(ex.fit_order(curves["dpm3"].nfe[-2:], curves["dpm3"].err[-2:]) - 3.0) < 0.3
