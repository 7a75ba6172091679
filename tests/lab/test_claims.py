"""The claims ledger: claims stated before they are computed, kinds, negative controls, and verdicts as reviewed
data: the build fails when a control passes or a verdict changes in either direction."""

import json

import numpy as np
import pytest
import torch

from companion.lab import claims


def _verdicts(path, **entries):
    path.write_text(json.dumps(entries))
    return path


@pytest.fixture
def ledger(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPANION_CLAIMS_DIR", str(tmp_path / "claims"))
    monkeypatch.setenv("COMPANION_VERDICTS", str(tmp_path / "verdicts.json"))
    _verdicts(
        tmp_path / "verdicts.json",
        **{
            "p.holds": {"kind": "paper", "expected": True},
            "p.fails": {"kind": "paper", "expected": False, "reason": "needs CIFAR-10 scale"},
            "p.quick": {"kind": "paper", "expected": True, "quick": None, "reason": "quick sizes too small"},
            "c.check": {"kind": "check", "expected": True},
            "t.wall": {"kind": "check", "expected": None, "reason": "loaded machine", "timing": True},
        },
    )
    claims.chapter("99_test")
    return tmp_path / "claims" / "99_test.json"


def _paper(cid="p.holds"):
    claims.state(
        cid, kind="paper", paper="p", claim="It works.", source="Sec. 1: 'it works'", criterion="error < 1"
    )


def test_record_writes_exactly_the_keys(ledger):
    _paper()
    claims.record(
        "p.holds",
        measured={"err": torch.tensor(1e-7, dtype=torch.float64), "n": np.int64(3)},
        holds=True,
        control=False,
        control_note="the baseline in place of the method",
        note="x",
    )
    rows = json.loads(ledger.read_text())
    assert [tuple(c) for c in rows] == [claims.KEYS]
    c = rows[0]
    assert c["chapter"] == "99_test" and c["measured"] == {"err": 1e-7, "n": 3} and c["kind"] == "paper"
    assert c["source"] == "Sec. 1: 'it works'" and c["criterion"] == "error < 1" and c["control"] is False
    assert c["mode"] == "default"


def test_a_claim_must_be_stated_before_it_is_recorded(ledger):
    with pytest.raises(claims.ClaimError, match="was not stated"):
        claims.record("p.holds", measured=1, holds=True, control=False, control_note="c")


def test_a_paper_claim_needs_its_source_and_a_control(ledger):
    with pytest.raises(ValueError, match="source"):
        claims.state("p.holds", kind="paper", paper="p", claim="It works.", criterion="error < 1")
    _paper()
    with pytest.raises(claims.ClaimError, match="needs its negative control"):
        claims.record("p.holds", measured=1, holds=True)
    with pytest.raises(ValueError, match="control_note"):
        claims.record("p.holds", measured=1, holds=True, control=False)


def test_a_control_that_passes_fails_the_build_but_is_written_down(ledger):
    _paper()
    with pytest.raises(claims.ControlPassed, match="cannot tell the method from the control"):
        claims.record("p.holds", measured=1, holds=True, control=True, control_note="the baseline")
    assert json.loads(ledger.read_text())[0]["control"] is True


@pytest.mark.parametrize("cid,measured_holds", [("p.holds", False), ("p.holds", None), ("p.fails", True)])
def test_a_changed_verdict_fails_the_build_in_either_direction(ledger, cid, measured_holds):
    _paper(cid)
    with pytest.raises(claims.VerdictChanged, match=f"claim '{cid}': measured holds={measured_holds}"):
        claims.record(cid, measured=0.5, holds=measured_holds, control=False, control_note="c", note="why")
    assert json.loads(ledger.read_text())[0]["holds"] is measured_holds  # a failure is a finding: kept


def test_expected_verdicts_pass_including_an_expected_false(ledger):
    _paper("p.fails")
    assert (
        claims.record("p.fails", measured=0.5, holds=False, control=False, control_note="c")["holds"] is False
    )
    claims.state("c.check", kind="check", paper="p", claim="It works.", criterion="identity to 1e-12")
    assert claims.record("c.check", measured=1e-13, holds=True)["control"] is None


def test_quick_mode_has_its_own_expected_verdict(ledger):
    claims.chapter("99_test", quick=True)
    _paper("p.quick")
    with pytest.raises(claims.VerdictChanged, match="in quick mode, expected None"):
        claims.record("p.quick", measured=1, holds=True, control=False, control_note="c")
    entry = claims.record("p.quick", measured=1, holds=None, control=None, note="quick sizes too small")
    assert entry["mode"] == "quick" and entry["holds"] is None


def test_an_unreviewed_claim_or_a_wrong_kind_fails(ledger):
    claims.state("p.new", kind="check", paper="p", claim="It works.", criterion="c")
    with pytest.raises(claims.VerdictChanged, match="no reviewed expected verdict"):
        claims.record("p.new", measured=1, holds=True)
    claims.state("c.check", kind="finding", paper="p", claim="It works.", criterion="c")
    with pytest.raises(claims.VerdictChanged, match="kind 'finding', book/verdicts.json says 'check'"):
        claims.record("c.check", measured=1, holds=True)


def test_without_a_verdicts_file_only_the_control_is_enforced(ledger, monkeypatch, tmp_path):
    monkeypatch.setenv("COMPANION_VERDICTS", str(tmp_path / "absent.json"))
    _paper("p.other")
    assert claims.record("p.other", measured=1, holds=True, control=False, control_note="c")["holds"] is True


@pytest.mark.parametrize(
    "entry",
    [
        {"kind": "paper", "expected": False},  # no reason
        {"kind": "paper", "expected": True, "quick": None},  # no reason
        {"kind": "claim", "expected": True},
        {"kind": "paper", "expected": "yes", "reason": "r"},
        {"kind": "paper"},
        {"kind": "check", "expected": True, "timing": "yes"},
    ],
)
def test_verdicts_file_is_validated(tmp_path, entry):
    with pytest.raises(ValueError):
        claims.expected_verdicts(_verdicts(tmp_path / "v.json", a=entry))


def test_rerecording_replaces_and_chapter_resets(ledger):
    claims.state("c.check", kind="check", paper="p", claim="It works.", criterion="c")
    claims.record("c.check", measured=1.0, holds=True)
    claims.record("c.check", measured=2.0, holds=True)
    assert [c["measured"] for c in json.loads(ledger.read_text())] == [2.0]
    claims.chapter("99_test")
    assert json.loads(ledger.read_text()) == []
    with pytest.raises(claims.ClaimError, match="was not stated"):  # statements reset with the chapter
        claims.record("c.check", measured=1.0, holds=True)


def test_not_decidable_needs_a_reason(ledger):
    claims.state("c.check", kind="check", paper="p", claim="It works.", criterion="c")
    with pytest.raises(ValueError, match="needs the reason"):
        claims.record("c.check", measured=None, holds=None)


@pytest.mark.parametrize(
    "kwargs, err",
    [
        ({"holds": "yes"}, TypeError),
        ({"holds": True, "measured": object()}, TypeError),
        ({"holds": True, "note": 3}, TypeError),
        ({"holds": True, "control": "no"}, TypeError),
    ],
)
def test_bad_input(ledger, kwargs, err):
    claims.state("c.check", kind="check", paper="p", claim="It works.", criterion="c")
    args = {"measured": 1.0} | kwargs
    with pytest.raises(err):
        claims.record("c.check", **args)


@pytest.mark.parametrize(
    "kwargs",
    [dict(kind="claim", paper="p", claim="It works.", criterion="c"),
     dict(kind="check", paper="", claim="It works.", criterion="c"),
     dict(kind="check", paper="p", claim="It works.", criterion=" "),
     dict(kind="check", paper="p", claim=" ", criterion="c"),
     dict(kind="check", paper="p", claim="It works. And it is fast.", criterion="c"),  # two sentences
     dict(kind="check", paper="p", claim="It works", criterion="c"),  # no full stop
     dict(kind="check", paper="p", claim="x" * 160 + ".", criterion="c")],  # too long for a glance
)  # fmt: skip
def test_bad_statements(ledger, kwargs):
    with pytest.raises(ValueError):
        claims.state("c.check", **kwargs)


def test_non_finite_measurements_are_kept_as_text(ledger):
    claims.state("c.check", kind="check", paper="p", claim="It works.", criterion="c")
    with pytest.raises(claims.VerdictChanged):
        claims.record("c.check", measured=[float("nan"), float("inf")], holds=None, note="diverged")
    assert json.loads(ledger.read_text())[0]["measured"] == ["nan", "inf"]


def test_state_and_record_need_a_chapter(monkeypatch):
    monkeypatch.setattr(claims, "_current", None)
    with pytest.raises(RuntimeError, match="chapter"):
        claims.state("a", kind="check", paper="p", claim="It works.", criterion="c")
    with pytest.raises(RuntimeError, match="chapter"):
        claims.record("a", measured=1, holds=True)


def test_bad_chapter_name():
    for bad in ["", "a/b", ".hidden", None]:
        with pytest.raises(ValueError):
            claims.chapter(bad)
    with pytest.raises(TypeError):
        claims.chapter("01_x", quick="yes")


@pytest.mark.parametrize("measured_holds", [True, False])
def test_a_wall_clock_claim_is_reported_as_measured_not_enforced(ledger, measured_holds):
    """A "timing" claim's verdict depends on the machine: a difference is recorded and warned about, and the
    note says what the reviewed runs measured; a matching verdict leaves the note alone."""
    claims.state("t.wall", kind="check", paper="p", claim="Fast.", criterion="ratio < 2")
    with pytest.warns(UserWarning, match=f"measured holds={measured_holds}, reviewed runs None"):
        e = claims.record("t.wall", measured=1.3, holds=measured_holds, note="one thread")
    assert e["holds"] is measured_holds
    written = json.loads(ledger.read_text())[0]
    assert written["holds"] is measured_holds
    assert "this machine measured holds=" in written["note"] and written["note"].startswith("one thread")
    e = claims.record("t.wall", measured=2.0, holds=None, note="undecided")
    assert e["note"] == "undecided"


def test_a_wall_clock_claim_still_enforces_its_control(ledger):
    claims.state("t.wall", kind="check", paper="p", claim="Fast.", criterion="ratio < 2")
    with pytest.raises(claims.ControlPassed):
        claims.record(
            "t.wall", measured=1.3, holds=True, control=True, control_note="the peer against itself"
        )
