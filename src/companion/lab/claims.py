"""The claims ledger: how a chapter records what it checked of a paper, and whether it held.

A chapter calls :func:`chapter` once, then :func:`record` for each claim::

    from companion.lab import claims
    claims.chapter("01_sde")
    claims.record("sde.hutchinson", paper="Song et al. 2021", measured={"z": 1.3}, holds=True,
                 note="Hutchinson estimate within 4 standard errors of the exact divergence")

Claims land in ``build/claims/<chapter>.json`` (relative to the repository root, or to
``$COMPANION_CLAIMS_DIR``) as a list of objects with exactly the keys ``id, paper, measured, holds,
note, chapter``. ``holds`` is ``True``, ``False``, or ``None`` for "not reproducible at this scale"
(the reason goes in ``note``). A claim with ``holds=False`` raises ``ClaimFailed`` -- which fails the
chapter, ``make book`` and ``make test`` -- unless its id is listed, with a reason, in
``book/expected_nonreproductions.json``: a paper claim that does not reproduce here is a finding
to record, not a reason to weaken the check.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "chapter",
    "record",
    "load_claims",
    "expected_nonreproductions",
    "ClaimFailed",
    "glue",
    "claims_dir",
]

KEYS = ("id", "paper", "measured", "holds", "note", "chapter")


class ClaimFailed(AssertionError):
    """A paper claim that the chapter checked did not hold and is not an expected non-reproduction."""


_current: str | None = None


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


def expected_nonreproductions(path: str | Path | None = None) -> dict[str, str]:
    """Claim ids that are known not to reproduce at our scale, mapped to the reason."""
    p = Path(path) if path else repo_root() / "book" / "expected_nonreproductions.json"
    if not p.is_file():
        return {}
    data = json.loads(p.read_text())
    if not isinstance(data, dict) or not all(isinstance(v, str) and v.strip() for v in data.values()):
        raise ValueError(f"{p} must map claim ids to non-empty reason strings")
    return data


def chapter(name: str) -> None:
    """Start a chapter's ledger: later :func:`record` calls land in ``<claims_dir>/<name>.json``.

    The file is emptied here, so re-running a chapter never keeps stale claims.
    """
    global _current
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise ValueError(f"chapter name must be a non-empty file stem without '/'; got {name!r}")
    _current = name
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
    # Write to a temporary file and rename, so a crash never leaves half a ledger.
    fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{name}.", suffix=".json")
    with os.fdopen(fd, "w") as fh:
        json.dump(claims, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, d / f"{name}.json")


def load_claims(name: str | None = None) -> list[dict]:
    """All claims of one chapter, or of every chapter when ``name`` is None."""
    d = claims_dir()
    files = [d / f"{name}.json"] if name else sorted(d.glob("*.json"))
    out: list[dict] = []
    for f in files:
        if f.is_file():
            out.extend(json.loads(f.read_text()))
    return out


def record(
    id: str,
    *,
    paper: str,
    measured: Any,
    holds: bool | None,
    note: str = "",
) -> dict:
    """Record one claim of the current chapter and return it.

    Raises ``ClaimFailed`` when ``holds`` is False and the id is not an expected non-reproduction.
    """
    if _current is None:
        raise RuntimeError("call companion.lab.claims.chapter(<name>) before record()")
    if not isinstance(id, str) or not id:
        raise ValueError(f"id must be a non-empty string; got {id!r}")
    if not isinstance(paper, str) or not paper:
        raise ValueError(f"paper must be a non-empty string; got {paper!r}")
    if holds is not None and not isinstance(holds, bool):
        # numpy / torch booleans are accepted, anything else is a mistake.
        if hasattr(holds, "item") and isinstance(holds.item(), bool):
            holds = bool(holds.item())
        else:
            raise TypeError(f"holds must be True, False or None; got {type(holds).__name__}")
    if not isinstance(note, str):
        raise TypeError(f"note must be a string; got {type(note).__name__}")
    if holds is None and not note.strip():
        raise ValueError(
            f"claim {id!r}: holds=None (not reproducible at this scale) needs the reason in note"
        )
    claim = {
        "id": id,
        "paper": paper,
        "measured": _jsonable(measured),
        "holds": holds,
        "note": note,
        "chapter": _current,
    }
    claims = [c for c in load_claims(_current) if c["id"] != id] + [claim]
    _write(_current, claims)
    if holds is False:
        expected = expected_nonreproductions()
        if id not in expected:
            raise ClaimFailed(
                f"claim {id!r} did not hold (measured {claim['measured']!r}); if this is a genuine "
                "non-reproduction at our scale, list it with its reason in book/expected_nonreproductions.json"
            )
    return claim


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
