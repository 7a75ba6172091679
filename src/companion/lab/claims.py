"""The claims ledger: what a chapter checked, stated before it is computed, and whether it held.

Three kinds of entry:

* ``"paper"``: a statement of a paper (a sentence, a table, a figure), quoted with its location. It needs a
  negative control: the same criterion computed on an input that must fail it (the baseline in place of the
  method, a perturbed solver or model, a budget known to be too small). The control must come out False.
* ``"finding"``: ours, about a paper's code or results (e.g. the shipped DPM-Solver++(3M) coefficient).
* ``"check"``: an identity or consistency test (e.g. the exact-divergence likelihood).

A chapter calls :func:`chapter` once (``companion.lab.chapter.setup`` does), :func:`state` for each claim
*before* the cells that compute it (the criterion fixed before the result is seen; a test checks the
order in every chapter), then :func:`record` with the measured numbers and the verdict::

    from companion.lab import claims
    claims.state("sde.pc_vs_predictor", kind="paper", paper=PAPER,
                 claim="At equal score evaluations, predictor-corrector beats the predictor alone.",
                 source="Sec. 4.2, Table 1: 'PC samplers generally outperform predictor-only ...'",
                 criterion="at matched NFE, MMD^2(PC) < MMD^2(predictor) by more than 2 standard errors")
    ...  # the computation
    claims.record("sde.pc_vs_predictor", measured={...}, holds=..., control=..., control_note="...")

The verdict (``holds``: True, False, or None where our scale cannot decide, with the reason in ``note``)
is data: ``book/verdicts.json`` holds the reviewed expected verdict of every claim, and :func:`record` raises
:class:`VerdictChanged` when a measured verdict differs from it, in either direction, or when a claim has
no reviewed entry; it raises :class:`ControlPassed` when a control comes out True. Either fails the
chapter, ``make book`` and ``make test``. In quick mode (CI) a chapter may shrink sizes, never power:
where the quick sizes cannot resolve a criterion it records None with that reason, and the file's
``"quick"`` entry says so. Outside a checkout (a chapter run alone, e.g. on Colab) there is no verdicts
file and only the control is enforced.

Claims land in ``build/claims/<chapter>.json`` (relative to the repository root, or to
``$COMPANION_CLAIMS_DIR``), a list of objects with exactly the keys :data:`KEYS`.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._io import write_atomic

__all__ = [
    "KINDS",
    "KEYS",
    "chapter",
    "state",
    "record",
    "load_claims",
    "expected_verdicts",
    "ClaimError",
    "VerdictChanged",
    "ControlPassed",
    "glue",
    "claims_dir",
    "is_quick",
]

KINDS = ("paper", "finding", "check")
KEYS = (
    "id",
    "kind",
    "paper",
    "claim",
    "source",
    "criterion",
    "measured",
    "holds",
    "control",
    "control_note",
    "note",
    "chapter",
    "mode",
)


class ClaimError(AssertionError):
    """A claim that cannot be recorded as it stands (the build fails)."""


class VerdictChanged(ClaimError):
    """A measured verdict differs from the reviewed expected one in book/verdicts.json (or has none)."""


class ControlPassed(ClaimError):
    """A negative control met the criterion: the criterion cannot tell the method from its control."""


_current: str | None = None
_quick = False
_stated: dict[str, dict[str, str]] = {}


def repo_root() -> Path:
    """The repository root: the first parent of the working directory holding ``pyproject.toml``."""
    here = Path.cwd().resolve()
    for p in (here, *here.parents):
        if (p / "pyproject.toml").is_file() and (p / "src" / "companion").is_dir():
            return p
    return here


def claims_dir() -> Path:
    env = os.environ.get("COMPANION_CLAIMS_DIR")
    return Path(env) if env else repo_root() / "build" / "claims"


def verdicts_path() -> Path:
    """``book/verdicts.json`` of the checkout, or ``$COMPANION_VERDICTS`` if set."""
    env = os.environ.get("COMPANION_VERDICTS")
    return Path(env) if env else repo_root() / "book" / "verdicts.json"


def expected_verdicts(path: str | Path | None = None) -> dict[str, dict] | None:
    """The reviewed expected verdicts, by claim id: ``{"kind": ..., "expected": true | false | null,
    "quick": <the same, when quick mode differs>, "reason": "...", "timing": true}`` (a reason is required
    for false and null; ``"timing": true`` marks a wall-clock claim, see :func:`record`). None when there is
    no file (a chapter run outside the checkout)."""
    p = Path(path) if path else verdicts_path()
    if not p.is_file():
        return None
    data = json.loads(p.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{p} must map claim ids to their expected verdicts")
    for cid, e in data.items():
        if not isinstance(e, dict) or e.get("kind") not in KINDS or "expected" not in e:
            raise ValueError(f"{p}: {cid!r} needs 'kind' (one of {list(KINDS)}) and 'expected'")
        for key in ("expected", "quick"):
            if key in e and e[key] not in (True, False, None):
                raise ValueError(f"{p}: {cid!r}: {key!r} must be true, false or null")
        if "timing" in e and e["timing"] is not True:
            raise ValueError(f"{p}: {cid!r}: 'timing' must be true when present")
        if (e["expected"] is not True or e.get("quick", True) is not True) and not str(
            e.get("reason", "")
        ).strip():
            raise ValueError(f"{p}: {cid!r}: a false or null expected verdict needs its 'reason'")
    return data


def is_quick() -> bool:
    """Whether the current chapter runs in quick mode (CI sizes)."""
    return _quick


def chapter(name: str, quick: bool = False) -> None:
    """Start a chapter's ledger: later :func:`record` calls land in ``<claims_dir>/<name>.json``.

    The file is emptied here, so re-running a chapter never keeps stale claims. ``quick``: the chapter runs
    at its quick (CI) sizes, whose expected verdicts may be None (``"quick"`` in book/verdicts.json).
    """
    global _current, _quick
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise ValueError(f"chapter name must be a non-empty file stem without '/'; got {name!r}")
    if not isinstance(quick, bool):
        raise TypeError(f"quick must be True or False; got {quick!r}")
    _current, _quick = name, quick
    _stated.clear()
    _write(name, [])


def _jsonable(x: Any) -> Any:
    """Turn numbers, tensors and arrays into plain JSON values; non-finite floats become strings."""
    if hasattr(x, "tolist"):
        x = x.tolist()
    if isinstance(x, bool) or x is None or isinstance(x, str) or isinstance(x, int):
        return x
    if isinstance(x, float):
        return x if math.isfinite(x) else repr(x)
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    raise TypeError(f"measured must be built of numbers, strings, lists and dicts; got {type(x).__name__}")


def _write(name: str, claims: list[dict]) -> None:
    d = claims_dir()
    d.mkdir(parents=True, exist_ok=True)
    write_atomic(d / f"{name}.json", json.dumps(claims, indent=2) + "\n")  # never half a ledger


def load_claims(name: str | None = None) -> list[dict]:
    """All claims of one chapter, or of every chapter when ``name`` is None."""
    d = claims_dir()
    files = [d / f"{name}.json"] if name else sorted(d.glob("*.json"))
    out: list[dict] = []
    for f in files:
        if f.is_file():
            out.extend(json.loads(f.read_text()))
    return out


def _text(value: Any, name: str, cid: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"claim {cid!r}: {name} must be a non-empty string; got {value!r}")
    return value


CLAIM_MAX = 160  # characters: one sentence a reader takes in at a glance (the report's first column)


def state(id: str, *, kind: str, paper: str, claim: str, criterion: str, source: str = "") -> None:
    """Declare a claim and its criterion before the cells that compute it.

    ``kind``: ``"paper"`` (``source`` is then the paper's statement, quoted, with its location), ``"finding"``
    or ``"check"``. ``claim``: what is claimed, in one plain sentence of at most :data:`CLAIM_MAX`
    characters ending with a full stop (the reproduction report shows it). ``criterion``: what will be
    computed and the threshold that decides, in words.
    """
    if _current is None:
        raise RuntimeError("call companion.lab.claims.chapter(<name>) before state()")
    _text(id, "id", str(id))
    if kind not in KINDS:
        raise ValueError(f"claim {id!r}: kind must be one of {list(KINDS)}; got {kind!r}")
    _text(paper, "paper", id)
    _text(criterion, "criterion", id)
    _text(claim, "claim", id)
    if len(claim) > CLAIM_MAX or not claim.rstrip().endswith(".") or claim.count(". ") > 0:
        raise ValueError(
            f"claim {id!r}: claim must be one sentence of at most {CLAIM_MAX} characters ending with '.'; "
            f"got {len(claim)} characters: {claim!r}"
        )
    if kind == "paper":
        _text(source, "source (the paper's statement, quoted, with its location)", id)
    elif not isinstance(source, str):
        raise TypeError(f"claim {id!r}: source must be a string; got {type(source).__name__}")
    _stated[id] = {"kind": kind, "paper": paper, "claim": claim, "source": source, "criterion": criterion}


def _verdict(value: Any, name: str, cid: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    if hasattr(value, "item") and isinstance(value.item(), bool):  # numpy / torch booleans
        return bool(value.item())
    raise TypeError(f"claim {cid!r}: {name} must be True, False or None; got {type(value).__name__}")


def record(
    id: str,
    *,
    measured: Any,
    holds: bool | None,
    control: bool | None = None,
    control_note: str = "",
    note: str = "",
) -> dict:
    """Record the verdict of the claim ``id`` stated earlier with :func:`state`, and return the entry.

    ``control``: the criterion evaluated on the negative control (required for a paper claim; it must be
    False), ``control_note`` says what the control is. Raises :class:`ControlPassed` when the control is
    True and :class:`VerdictChanged` when ``holds`` differs from book/verdicts.json; the entry is written
    to the ledger first, so the report shows what was measured.

    A claim marked ``"timing": true`` in book/verdicts.json is a wall-clock ratio whose verdict depends on
    the machine and its load (the project's rule: no timing asserts). Its measured verdict is recorded and
    shown as measured; where it differs from the reviewed runs' verdict, the note says so and a
    :class:`UserWarning` is issued instead of :class:`VerdictChanged`. The control is still enforced.
    """
    if _current is None:
        raise RuntimeError("call companion.lab.claims.chapter(<name>) before record()")
    if id not in _stated:
        raise ClaimError(f"claim {id!r} was not stated: call claims.state({id!r}, ...) before computing it")
    stated = _stated[id]
    holds = _verdict(holds, "holds", id)
    control = _verdict(control, "control", id)
    if not isinstance(note, str) or not isinstance(control_note, str):
        raise TypeError(f"claim {id!r}: note and control_note must be strings")
    if holds is None and not note.strip():
        raise ValueError(f"claim {id!r}: holds=None (not decidable at this scale) needs the reason in note")
    if stated["kind"] == "paper":
        if control is None and holds is not None:
            raise ClaimError(f"claim {id!r}: a paper claim needs its negative control (control=True/False)")
    if control is not None and not control_note.strip():
        raise ValueError(f"claim {id!r}: say what the control is in control_note")
    entry = {
        "id": id,
        **stated,
        "measured": _jsonable(measured),
        "holds": holds,
        "control": control,
        "control_note": control_note,
        "note": note,
        "chapter": _current,
        "mode": "quick" if _quick else "default",
    }
    entry = {k: entry[k] for k in KEYS}
    _write(_current, [c for c in load_claims(_current) if c["id"] != id] + [entry])
    if control is True:
        raise ControlPassed(
            f"claim {id!r}: the negative control ({control_note}) meets the criterion too, so the criterion "
            "cannot tell the method from the control; fix the criterion, never the control"
        )
    expected = expected_verdicts()
    if expected is not None:
        e = expected.get(id)
        if e is None:
            raise VerdictChanged(
                f"claim {id!r} has no reviewed expected verdict in {verdicts_path()}: add it (measured holds={holds})"
            )
        want = e.get("quick", e["expected"]) if _quick else e["expected"]
        if e["kind"] != stated["kind"]:
            raise VerdictChanged(
                f"claim {id!r}: kind {stated['kind']!r}, book/verdicts.json says {e['kind']!r}"
            )
        if holds is not want and e.get("timing") is True:
            entry["note"] = (
                f"{entry['note']} [wall-clock claim: this machine measured holds={holds}; the reviewed runs in "
                f"book/verdicts.json measured {want}]"
            ).strip()
            _write(_current, [c for c in load_claims(_current) if c["id"] != id] + [entry])
            warnings.warn(
                f"claim {id!r} (wall clock): measured holds={holds}, reviewed runs {want}; recorded as measured",
                stacklevel=2,
            )
        elif holds is not want:
            raise VerdictChanged(
                f"claim {id!r}: measured holds={holds} in {entry['mode']} mode, expected {want} "
                f"({e.get('reason', 'no reason given')}); measured {entry['measured']!r}. A changed verdict is a "
                "finding to review, never a reason to move a threshold"
            )
    return entry


def glue(name: str, value: Any, display: bool = False) -> None:
    """Glue a computed value into the chapter's prose ({glue:text}`name`), when myst-nb is present.

    On Colab without myst-nb it does nothing, so chapters run anywhere.
    """
    try:
        from myst_nb import glue as _glue
    except ImportError:  # pragma: no cover - only outside the book environment
        return
    # myst-nb formats glued numbers with Python's format spec, which numpy and torch scalars refuse.
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    _glue(name, value, display=display)
