"""Shared fixtures, and the measured-numbers report printed at the end of every run.

A test that measures something worth reading (a fitted order, a parity difference, a precision) asserts on
it and also hands it to the ``report`` fixture: ``report("fitted order", "2d-ddim (nominal 1)", 0.98)``.
The entries travel with the test's report (``user_properties``), so they reach the terminal summary from
pytest-xdist workers too; the summary prints each section's keys with the largest value reported under
that key (a parity test reports each comparison; the summary keeps the worst). Plain helpers are in
``helpers.py``.
"""

from __future__ import annotations

from collections import defaultdict

import pytest
import torch

import companion as cp

_REPORT_KEY = "companion-report"
_MEASURED: dict[str, dict[str, float]] = defaultdict(dict)


@pytest.fixture
def report(request):
    """``report(section, key, value)``: a measured number for the end-of-run summary."""

    def add(section: str, key: str, value: float) -> None:
        request.node.user_properties.append((_REPORT_KEY, (section, key, float(value))))

    return add


def pytest_runtest_logreport(report):
    # Every phase: a fixture may report in its teardown (each phase's report carries the lines so far;
    # keeping the largest value per key makes the repeats harmless).
    for name, entry in report.user_properties:
        if name == _REPORT_KEY:
            section, key, value = entry
            seen = _MEASURED[section]
            seen[key] = max(seen.get(key, value), value)


def pytest_terminal_summary(terminalreporter):
    if not _MEASURED:
        return
    terminalreporter.section("measured (companion)")
    for section in sorted(_MEASURED):
        terminalreporter.write_line(f"{section}:")
        width = max(len(k) for k in _MEASURED[section])
        for key, value in sorted(_MEASURED[section].items()):
            terminalreporter.write_line(f"  {key:{width}s}  {value:.3g}")


@pytest.fixture(scope="session")
def vp():
    """The VP-linear schedule (beta_min 0.1, beta_max 20) most tests sample with."""
    return cp.schedules.VPLinear()


@pytest.fixture(scope="session")
def mixture_2d():
    """A float64 2-D mixture of three diagonal Gaussians with exact scores (seed 0)."""
    return cp.targets.random_mixture(2, 1.0, 0.2, 0.5)


@pytest.fixture(scope="session")
def mixture_16d():
    """A float64 16-D mixture of three diagonal Gaussians with exact scores (seed 0)."""
    return cp.targets.random_mixture(16, 0.5, 0.2, 0.6)


@pytest.fixture
def gen():
    """``gen(seed)``: a CPU torch.Generator seeded with ``seed``."""
    return lambda seed: torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread while a module runs (restored after); modules use it with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``. Their tensors are small, and on a busy machine
    (pytest-xdist workers, other jobs) torch's thread pool made, for example, the Brownian-path draws of the
    strong-order fits 30-60x slower (28.8 s against 0.47 s for one fit)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
