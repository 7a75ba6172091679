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


def test_chapter_11_ratios_are_shipped_valid_and_packaged():
    """Chapter 11's digits ratios (log-SNR grids, guidance 4): one valid ratio per step for every NFE the
    chapter uses, their search cost and settings recorded, and matched by package-data."""
    v3 = labdc.load_v3_digits()
    assert labdc.V3_SHIPPED.stat().st_size < 16 * 1024 and v3["command"] == "python -m companion.lab.dc --v3"
    assert sorted(int(n) for n in v3["ratios"]) == sorted(labdc.V3_NFES)
    for n, r in v3["ratios"].items():
        assert check_ratios(r, int(n), 2) == tuple(r)
    assert v3["calls"] > 0 and v3["seconds"] > 0 and v3["settings"]["grid"] == "logsnr"
    line = re.search(r"^companion = \[(.*)\]$", (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    rel = labdc.V3_SHIPPED.relative_to(ROOT / "src" / "companion").as_posix()
    assert any(Path(rel).match(g) for g in re.findall(r'"([^"]+)"', line))


def test_chapter_11_search_is_reproducible_at_a_tiny_size():
    """What `python -m companion.lab.dc --v3` runs, at a tiny size: the same call gives the same ratios."""
    kw = dict(batch=2, iters=2, fine=2)
    a, b = labdc.search_v3_digits((5,), **kw), labdc.search_v3_digits((5,), **kw)
    assert a["ratios"] == b["ratios"] and len(a["ratios"]["5"]) == 5
    assert a["settings"]["batch"] == 2 and a["calls"] > 0
