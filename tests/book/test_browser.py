"""The built book as a reader sees it: every page in headless Chromium, served on 127.0.0.1, no network.

`make test` builds the book (quick mode) into _build/html first. The checks live in
scripts/check_book.py; here they run over every page, and over copies of the book broken on purpose
(a missing figure, raw TeX, a dead link and anchor, a CDN script, a wrong Colab link, MathJax removed)
to show that each check fails when it should. Without Chromium or a built book (a developer machine)
the module is skipped with one line saying why; with CI=true that is an error instead.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import check_book as cb  # noqa: E402

pytestmark = pytest.mark.browser

BOOK = cb.HTML
PAGES = cb.html_pages(BOOK) if (BOOK / "index.html").is_file() else []
KNOWN_WORD = "solver"  # in the intro's first paragraph


def _why_not() -> str | None:
    return cb.browser_unavailable() or (
        None if PAGES else f"no built book in {BOOK} (`make test` builds it: scripts/build_book.py --quick)"
    )


# One plain line in the summary on a machine that cannot run them; under CI a failure instead.
if (_WHY := _why_not()) is not None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI must run the browser tests, but {_WHY}", pytrace=False)
    pytest.skip(f"browser tests skipped: {_WHY}", allow_module_level=True)


@pytest.fixture(scope="module")
def browser():
    with cb.chromium() as b:
        yield b


@pytest.fixture(scope="module")
def book():
    with cb.serve(BOOK) as base:
        yield base


@pytest.fixture(scope="module")
def timing(request):
    """Prints the pages checked and the wall time of the page checks at the end of the module."""
    log: list[tuple[str, float]] = []
    t0 = time.perf_counter()
    yield log
    if log:
        lines = [
            f"browser tests: {len(log)} pages checked; {time.perf_counter() - t0:.1f} s from the first page check to the end of the module"
        ]
        lines += [f"  {page:40s} {sec:5.1f} s" for page, sec in log]
        capman = request.config.pluginmanager.get_plugin("capturemanager")
        with capman.global_and_fixture_disabled():  # shown in the run's output, not captured
            print("\n" + "\n".join(lines), flush=True)


def _report(rep: cb.PageReport) -> str:
    return f"{rep.path} ({rep.final_url}):\n  " + "\n  ".join(rep.problems)


def test_the_book_is_built_with_a_page_for_every_toc_entry():
    import yaml

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]] + [c["file"] for p in toc.get("parts", []) for c in p.get("chapters", [])]
    missing = [f for f in files if f"{f}.html" not in PAGES]
    assert not missing, f"TOC entries without an HTML page: {missing}"
    assert {"index.html", "search.html"} <= set(PAGES)


@pytest.mark.parametrize("rel", PAGES)
def test_page_reads_offline(rel, browser, book, timing):
    """No console errors or off-machine requests; images load; math typeset; links resolve; Colab ok."""
    rep = cb.check_page(browser, book, BOOK, rel)
    timing.append((rel, rep.seconds))
    assert not rep.problems, _report(rep)
    if rel.startswith("book/chapters/"):
        assert rep.colab.endswith(rel.removesuffix(".html") + ".ipynb"), "chapter without its Colab button"


def test_math_is_there_to_check():
    """The math checks are not vacuous: the built book has TeX for MathJax, served from _static."""
    with_math = [p for p in PAGES if 'class="math' in (BOOK / p).read_text()]
    assert with_math, "no page of the book has math"
    for p in with_math:
        html = (BOOK / p).read_text()
        assert re.search(r'<script[^>]+src="[./]*_static/mathjax/tex-mml-chtml\.js', html), p
    assert (BOOK / "_static" / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2").is_dir()


def test_search_finds_a_known_word(browser, book):
    hits, problems = cb.search(browser, book, KNOWN_WORD)
    assert not problems
    assert "book/intro.html" in hits, f"search for {KNOWN_WORD!r} found {hits}"
    # and a word the book does not contain finds nothing (the wait above is for real results)
    hits, problems = cb.search(browser, book, "zqxjvwk")
    assert hits == [] and not problems


def test_screenshots(browser, book, tmp_path):
    """post_build's screenshots: the pages it names exist and come out as small 1200x900 PNGs."""
    import post_build

    shots = post_build.pages_to_shoot()
    assert shots["intro.png"] in PAGES and shots.get("chapter.png") in PAGES
    for name, page in shots.items():
        png = cb.screenshot(browser, book, BOOK, page, tmp_path / name, post_build.SIZE)
        head = png.read_bytes()[:24]
        assert head[:8] == b"\x89PNG\r\n\x1a\n"
        assert struct.unpack(">II", head[16:24]) == post_build.SIZE
        assert png.stat().st_size < 400_000


# --- the same checks on copies of the book broken on purpose: each must report the breakage -------


@pytest.fixture
def broken(tmp_path, book):
    """A private copy of the built book, to break one thing in."""
    root = tmp_path / "html"
    shutil.copytree(BOOK, root)
    return root


def _check_copy(browser, root: Path, rel: str) -> cb.PageReport:
    with cb.serve(root) as base:
        return cb.check_page(browser, base, root, rel)


def _edit(file: Path, old: str, new: str) -> None:
    text = file.read_text()
    assert old in text, f"{old!r} not in {file}"
    file.write_text(text.replace(old, new, 1))


H1_END = 'title="Link to this heading">#</a></h1>'  # the end of a page's own title, in its article


def _page_with(pattern: str) -> str:
    for p in PAGES:
        if re.search(pattern, (BOOK / p).read_text()):
            return p
    pytest.fail(f"no page of the book matches {pattern!r}")


def test_detects_a_missing_figure(browser, broken):
    page = _page_with(r'<img[^>]+src="[./]*_images/')
    src = re.search(r'<img[^>]+src="([./]*_images/[^"]+)"', (broken / page).read_text()).group(1)
    (broken / page).parent.joinpath(src).resolve().unlink()
    rep = _check_copy(browser, broken, page)
    assert any(p.startswith("image did not load") and src in p for p in rep.problems), rep.problems


def test_detects_math_left_untypeset_without_the_vendored_mathjax(browser, broken):
    (broken / "_static" / "mathjax" / "tex-mml-chtml.js").unlink()
    rep = _check_copy(browser, broken, "book/intro.html")
    assert any(p.startswith("math not typeset") for p in rep.problems), rep.problems
    assert any("tex-mml-chtml.js" in p and "404" in p for p in rep.problems), rep.problems


# page, text to find, what to put there, what the checks must then report
INJECTIONS = {
    # as if a `$$` had not been parsed as math (MyST marks the prose sections mathjax_ignore)
    "raw-tex": (
        "book/intro.html",
        H1_END,
        H1_END + "<p>Unparsed: $$x^2$$ here.</p>",
        ["raw TeX in the page text: 'Unparsed: $$x^2$$ here.'"],
    ),
    # what MyST makes of `$$a$$` in the middle of a paragraph: `$` + inline math + `$`
    "stray-dollars": (
        "book/intro.html",
        H1_END,
        H1_END + '<p>See $<span class="math notranslate">\\(a\\)</span>$.</p>',
        ["stray $ next to typeset math"],
    ),
    "dead-link-and-anchor": (
        "book/report.html",
        H1_END,
        H1_END + '<p><a href="no-such-page.html">a</a> <a href="intro.html#no-such-anchor">b</a></p>',
        [
            "dead link 'no-such-page.html': no file book/no-such-page.html",
            "dead link 'intro.html#no-such-anchor': no anchor #no-such-anchor in book/intro.html",
        ],
    ),
    # the default Sphinx set-up, MathJax from a CDN: blocked (the network is unplugged) and reported
    "off-machine-request": (
        "book/runtimes.html",
        "</head>",
        '<script src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"></script></head>',
        ["off-machine request (blocked): https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"],
    ),
    # a figure or table laid out wider than the column, with no box of its own that scrolls
    "wide-element": (
        "book/intro.html",
        H1_END,
        H1_END + '<div id="too-wide" style="width: 1500px">wide</div>',
        ["at 1280 px: div#too-wide spans", "at 390 px: the page scrolls sideways"],
    ),
    # the same inside a box that scrolls by itself: allowed (tables and display math do this)
    "wide-element-in-a-scroll-box": (
        "book/intro.html",
        H1_END,
        H1_END + '<div style="overflow-x: auto"><div id="too-wide" style="width: 1500px">wide</div></div>',
        [],
    ),
    "console-error": (
        "book/runtimes.html",
        "</body>",
        "<script>console.error('boom')</script></body>",
        ["console error: boom"],
    ),
}


@pytest.mark.parametrize("case", INJECTIONS)
def test_detects_an_injected_breakage(case, browser, broken):
    page, old, new, wanted = INJECTIONS[case]
    _edit(broken / page, old, new)
    rep = _check_copy(browser, broken, page)
    for want in wanted:
        assert any(want in p for p in rep.problems), f"{want!r} not among {rep.problems}"
    if not wanted:
        assert not rep.problems, rep.problems


def test_detects_display_math_wider_than_the_column_without_its_scroll_box(browser, broken):
    """Display math scrolls in its own box (the theme's mjx-container, overflow auto). Without that box the
    wider equations of the DPM-Solver chapter stick out of the phone's column, and the theme's div.math
    (overflow hidden) would cut them off: the check must say so."""
    (broken / "_static" / "companion.css").write_text("mjx-container { overflow: visible !important; }\n")
    page = "book/chapters/02_dpm_solver.html"
    rep = _check_copy(browser, broken, page)
    assert any(p.startswith("at 390 px: mjx-container") for p in rep.problems), rep.problems


def test_report_rows_fit_a_phone_and_link_to_their_sections(browser, book):
    """The report at 390 px: one row per claim stacked in the column; every row's section link resolves."""
    assert "book/report.html" in PAGES
    with cb.open_page(browser, book, cb.WIDTHS["phone"]) as (page, w):
        cb.load(page, w, book + "book/report.html", BOOK, "book/report.html")
        rows = page.eval_on_selector_all(
            ".claim-row:not(.claims-head)",
            "rs => rs.map(r => ({w: r.getBoundingClientRect().width, cols: getComputedStyle(r).gridTemplateColumns,"
            " link: (r.querySelector('a.claim-where') || {}).href || ''}))",
        )
        assert rows and not cb.overflow(page) and not w.problems()
    assert all(len(r["cols"].split()) == 1 and r["w"] <= 390 for r in rows), rows  # stacked on a phone
    assert all("#" in r["link"] for r in rows), [r for r in rows if "#" not in r["link"]]


def test_detects_a_colab_link_to_another_notebook(browser, broken):
    page = _page_with(r'href="https://colab\.research\.google\.com/')
    text = (broken / page).read_text()
    url = re.search(r'href="(https://colab\.research\.google\.com/[^"]+)"', text).group(1)
    _edit(broken / page, url, url.removesuffix(".ipynb") + ".md")
    rep = _check_copy(browser, broken, page)
    assert any(p.startswith("Colab link") for p in rep.problems), rep.problems


# --- the vendored MathJax: only the pinned package, only from the book ---------------------------


def test_vendor_refuses_a_tarball_that_is_not_the_pinned_one(tmp_path, monkeypatch):
    import vendor_mathjax as vm

    monkeypatch.setattr(vm, "CACHE", tmp_path)
    fake = tmp_path / f"mathjax-{vm.VERSION}.tgz"
    fake.write_bytes(b"not the package")
    with pytest.raises(RuntimeError, match="is not the pinned"):
        vm.fetch_tarball()
    assert not fake.exists(), "a tarball that failed the check must not stay in the cache"


@pytest.mark.parametrize(
    "path", ["https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js", "//cdn/x.js"]
)
def test_vendor_refuses_a_mathjax_path_off_the_machine(path):
    from types import SimpleNamespace

    import vendor_mathjax as vm
    from sphinx.errors import ExtensionError

    with pytest.raises(ExtensionError, match="loads MathJax from the network"):
        vm._on_config(None, SimpleNamespace(mathjax_path=path, html_static_path=[]))
