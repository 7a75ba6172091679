"""The shipped time-shift tuning of chapter 12 and its mapping to solver options."""

from __future__ import annotations

import pytest

import companion as cp
from companion.lab import momentum_ts


def test_the_shipped_tuning_is_small_complete_and_names_its_command():
    assert momentum_ts.TUNING_FILE.stat().st_size < 20_000
    t = momentum_ts.load_tuning()
    assert t["command"] == "python -m companion.lab.momentum_ts"
    assert t["setup"] == momentum_ts.SETUP  # tuned under the protocol the chapter states
    assert set(t["best"]) == {"plain", "offset", "paper", "signal"}
    for kind, best in t["best"].items():
        same = [e["fd"] for e in t["candidates"] if e["kind"] == kind]
        assert best["fd"] == min(same)


def test_tuning_entries_become_time_shift_options():
    TS = cp.solvers.TimeShift
    assert momentum_ts.time_shift_of({"kind": "plain"}) is None
    assert momentum_ts.time_shift_of({"kind": "offset", "offset": 0.02, "cutoff": 0.3}) == TS(
        offset=0.02, cutoff=0.3
    )
    assert momentum_ts.time_shift_of({"kind": "paper", "window": 0.04, "cutoff": 0.2}) == TS(
        window=0.04, cutoff=0.2
    )
    got = momentum_ts.time_shift_of({"kind": "signal", "window": 0.01, "cutoff": 0.3}, signal_var=0.5)
    assert got == TS(window=0.01, cutoff=0.3, target="signal", signal_var=0.5)
    with pytest.raises(ValueError, match="signal_var"):
        momentum_ts.time_shift_of({"kind": "signal", "window": 0.01, "cutoff": 0.3})
