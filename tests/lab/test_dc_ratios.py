"""companion.lab.dc: the shipped DC-Solver ratios load, cover every searched cell, respect the solver's rules,
carry the CPR fitted to their own grid, are small, and travel as package data."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from companion.dc import CPR
from companion.lab import dc as labdc
from companion.solvers.dc_solver import check_ratios

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def shipped():
    return labdc.load_shipped()


def test_shipped_file_is_small_and_packaged():
    assert labdc.SHIPPED.is_file() and labdc.SHIPPED.stat().st_size < 64 * 1024
    line = re.search(r"^companion = \[(.*)\]$", (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    data = re.findall(r'"([^"]+)"', line)  # [tool.setuptools.package-data] companion = [...]
    rel = labdc.SHIPPED.relative_to(ROOT / "src" / "companion").as_posix()
    assert any(Path(rel).match(g) for g in data), f"{rel} is not matched by package-data {data}"


@pytest.mark.parametrize("name", ["mixture", "unet"])
def test_shipped_cells_and_cpr(shipped, name):
    rec = shipped[name]
    st = rec["settings"]
    cells = [(n, w) for w in st["guidances"] for n in st["nfes"]] + [tuple(e) for e in st["held_out"]]
    for n, w in cells:
        r = rec["searched"][f"{n}@{float(w):g}"]
        assert check_ratios(r, n, st["dc_order"]) == tuple(r)
        assert set(rec["cost"][f"{n}@{float(w):g}"]) == {"calls", "seconds", "reference_seconds"}
        loss = rec["loss"][f"{n}@{float(w):g}"]
        assert len(loss["rho_one"]) == len(loss["found"]) == n - st["dc_order"]
    grid = {(n, float(w)): rec["searched"][f"{n}@{float(w):g}"] for w in st["guidances"] for n in st["nfes"]}
    refit = CPR.fit(grid, first=st["dc_order"])
    cpr = CPR.from_dict(rec["cpr"])
    for n, w in [(5, 7.5), (7, 6.0), (10, 1.5)]:
        assert np.allclose(cpr.predict(n, w), refit.predict(n, w), atol=1e-9)
    assert shipped["command"] == "python -m companion.lab.dc"


def test_target_rejects_unknown_name():
    with pytest.raises(ValueError, match="name"):
        labdc.target("cifar", 7.5, 4)


def test_misalignment_is_the_corrected_minus_the_stored_prediction():
    tg = labdc.target("mixture", 3.0, 4)
    x = labdc.noise("mixture", 4, 0)
    mis = labdc.misalignment(tg, x, 5)
    assert len(mis) == 4 and all(v >= 0 and v == v for v in mis)  # one per corrected step, finite
    # without guidance the ODE is a true PF-ODE of a smooth mixture and the misalignment is small
    assert max(labdc.misalignment(labdc.target("mixture", 1.0, 4), x, 5)) < max(
        labdc.misalignment(labdc.target("mixture", 7.5, 4), x, 5)
    )
