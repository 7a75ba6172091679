"""The claims ledger: exact keys, atomic files, and a failed claim that fails loudly."""

import json

import numpy as np
import pytest
import torch

from companion.lab import claims


@pytest.fixture
def ledger(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPANION_CLAIMS_DIR", str(tmp_path / "claims"))
    monkeypatch.chdir(tmp_path)  # no book/expected_nonreproductions.json here
    claims.chapter("99_test")
    return tmp_path / "claims" / "99_test.json"


def test_record_writes_exactly_the_keys(ledger):
    claims.record(
        "a.b",
        paper="p",
        measured={"err": torch.tensor(1e-7, dtype=torch.float64), "n": np.int64(3)},
        holds=True,
        note="x",
    )
    rows = json.loads(ledger.read_text())
    assert [set(c) for c in rows] == [{"id", "paper", "measured", "holds", "note", "chapter"}]
    assert rows[0]["chapter"] == "99_test" and rows[0]["measured"] == {"err": 1e-7, "n": 3}


def test_rerecording_replaces_and_chapter_resets(ledger):
    claims.record("a", paper="p", measured=1.0, holds=True)
    claims.record("a", paper="p", measured=2.0, holds=True)
    assert [c["measured"] for c in json.loads(ledger.read_text())] == [2.0]
    claims.chapter("99_test")
    assert json.loads(ledger.read_text()) == []


def test_failed_claim_raises_unless_expected(ledger, tmp_path):
    with pytest.raises(claims.ClaimFailed, match="a.fail"):
        claims.record("a.fail", paper="p", measured=0.5, holds=False, note="criterion")
    # It is still written down: a failure is a finding.
    assert json.loads(ledger.read_text())[0]["holds"] is False
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "expected_nonreproductions.json").write_text(
        json.dumps({"a.fail": "needs CIFAR-10"})
    )
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "src" / "companion").mkdir(parents=True)
    assert claims.record("a.fail", paper="p", measured=0.5, holds=False)["holds"] is False


def test_not_reproducible_needs_a_reason(ledger):
    with pytest.raises(ValueError, match="needs the reason"):
        claims.record("a", paper="p", measured=None, holds=None)
    assert claims.record("a", paper="p", measured=None, holds=None, note="no GPU")["holds"] is None


@pytest.mark.parametrize(
    "kwargs, err",
    [
        ({"holds": "yes"}, TypeError),
        ({"holds": True, "paper": ""}, ValueError),
        ({"holds": True, "measured": object()}, TypeError),
        ({"holds": True, "note": 3}, TypeError),
    ],
)
def test_bad_input(ledger, kwargs, err):
    args = {"paper": "p", "measured": 1.0} | kwargs
    with pytest.raises(err):
        claims.record("a", **args)


def test_non_finite_measurements_are_kept_as_text(ledger):
    claims.record("a", paper="p", measured=[float("nan"), float("inf")], holds=None, note="diverged")
    assert json.loads(ledger.read_text())[0]["measured"] == ["nan", "inf"]


def test_record_needs_a_chapter(monkeypatch):
    monkeypatch.setattr(claims, "_current", None)
    with pytest.raises(RuntimeError, match="chapter"):
        claims.record("a", paper="p", measured=1, holds=True)


def test_bad_chapter_name():
    for bad in ["", "a/b", ".hidden", None]:
        with pytest.raises(ValueError):
            claims.chapter(bad)
