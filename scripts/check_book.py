"""The built book checked as a reader sees it: every HTML page in headless Chromium, with no network.

Each page is served from 127.0.0.1 and loaded in Debian's Chromium (driven by Playwright, no browser
download). Every request that would leave the machine is aborted and reported, so what passes here
renders offline. Per page: no console or script errors, no failed or 4xx/5xx same-origin request, every
<img> loaded, every math element typeset by MathJax with no TeX error and no raw `$$`, `\\(` or `\\[`
left in the text, every internal link and #anchor resolves, the Colab button (on executed-notebook
pages) points at that page's own notebook, and at 1280 and at 390 px (a phone) nothing is wider than the
text column (wide tables and equations may scroll inside their own box, never the page). The search page must find a known word.

The same functions are used by tests/book/test_browser.py (on the real book and on deliberately broken
copies) and by scripts/post_build.py (screenshots).

    python scripts/check_book.py [_build/html]    # prints one line per page; exit 1 on any problem
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import re
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "_build" / "html"
# Flags for Debian's Chromium on this closed network: no sandbox as root, no GPU, and none of the
# background connections (updates, sync, QUIC probes) that would otherwise be refused at every start.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
COLAB = "https://colab.research.google.com/github/"
# Text that is TeX MathJax never typeset: display/inline delimiters and environments left in the prose,
# and `$...$` holding a TeX command or ^ _ { } (plain dollar amounts in prose do not match).
RAW_TEX = re.compile(
    r"\$\$|\\\(|\\\)|\\\[|\\\]|\\begin\{|\$(?=[^\s$])[^$\n]*?(?:\\[a-zA-Z]+|[\^_{}])[^$\n]*?(?<=[^\s$])\$"
)
TIMEOUT_MS = 30_000


def find_chromium() -> str | None:
    """Debian's Chromium, or $COMPANION_CHROMIUM when set (to another path, or to '' for none)."""
    if "COMPANION_CHROMIUM" in os.environ:
        cands = [os.environ["COMPANION_CHROMIUM"]]
    else:
        cands = ["/usr/bin/chromium", shutil.which("chromium")]
    return next((c for c in cands if c and os.path.isfile(c) and os.access(c, os.X_OK)), None)


def browser_unavailable() -> str | None:
    """Why the browser checks cannot run here, or None when they can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the Python package playwright is not installed (it is in requirements.lock: run `make setup`)"
    if find_chromium() is None:
        return (
            f"no Chromium executable at {os.environ.get('COMPANION_CHROMIUM', '/usr/bin/chromium')!r} (install Debian's packages: "
            "`apt-get install chromium chromium-driver`; .ci/run does this)"
        )
    return None


def html_pages(root: Path) -> list[str]:
    """Every page of the built book, as paths relative to its root (theme templates in _static excluded)."""
    skip = {"_static", "_sources", "_images"}
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.html") if not skip & set(p.parts))


@dataclass(frozen=True)
class Repo:
    """Where the Colab button must point: from _config.yml's `repository`."""

    org: str
    name: str
    branch: str
    path_to_book: str

    @classmethod
    def from_config(cls, config: Path = ROOT / "_config.yml") -> Repo:
        import yaml

        repo = yaml.safe_load(config.read_text())["repository"]
        org, name = urlsplit(repo["url"]).path.strip("/").removesuffix(".git").split("/")[:2]
        return cls(org, name, repo.get("branch", "master"), (repo.get("path_to_book") or "").strip("/"))


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # the test output is the report; no access log
        pass


@contextlib.contextmanager
def serve(root: Path) -> Iterator[str]:
    """Serve `root` on 127.0.0.1 at a free port; yields the base URL (ending in '/')."""
    handler = functools.partial(_Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@contextlib.contextmanager
def chromium() -> Iterator:
    """A headless Debian Chromium driven by Playwright (never a downloaded browser)."""
    from playwright.sync_api import sync_playwright

    exe = find_chromium()
    if exe is None:
        raise RuntimeError(browser_unavailable())
    with sync_playwright() as pw:
        # Besides the per-request guard (open_page), no host name resolves: nothing reaches off-machine
        # even if it slipped past Playwright's routing.
        args = [*CHROMIUM_ARGS, "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]
        browser = pw.chromium.launch(executable_path=exe, args=args, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class PageReport:
    path: str
    problems: list[str] = field(default_factory=list)
    final_url: str = ""
    images: int = 0
    math: int = 0
    links: int = 0
    colab: str = ""
    seconds: float = 0.0


class _Anchors(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.refresh: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"])
        if tag == "a" and a.get("name"):
            self.ids.add(a["name"])
        if tag == "meta" and (a.get("http-equiv") or "").lower() == "refresh":
            m = re.search(r"url=(.+)$", a.get("content") or "", re.I)
            self.refresh = m.group(1).strip().strip("'\"") if m else None


@functools.lru_cache(maxsize=512)
def _parse(file: Path, mtime: float) -> _Anchors:
    p = _Anchors()
    p.feed(file.read_text(encoding="utf-8", errors="replace"))
    return p


def parsed(file: Path) -> _Anchors:
    return _parse(file, file.stat().st_mtime)


def resolve_internal(root: Path, base_url: str, url: str) -> str | None:
    """Why an absolute same-origin URL does not resolve in the built book (None when it does)."""
    parts = urlsplit(url)
    rel = unquote(parts.path)[len(urlsplit(base_url).path) :]
    target = root / rel
    if rel == "" or rel.endswith("/"):
        target = target / "index.html"
    if not target.is_file():
        return f"no file {rel or '/'}"
    frag = unquote(parts.fragment)
    if frag and target.suffix == ".html" and frag not in parsed(target).ids:
        return f"no anchor #{frag} in {target.relative_to(root).as_posix()}"
    return None


_READY_JS = r"""async () => {
  const imgs = Array.from(document.images);
  await Promise.all(imgs.map(img => {
    img.loading = 'eager';  // lazy images below the fold must load too
    if (img.complete) return null;
    return new Promise(r => {
      img.addEventListener('load', r, {once: true});
      img.addEventListener('error', r, {once: true});
      setTimeout(r, 15000);
    });
  }));
  if (window.MathJax && window.MathJax.startup && window.MathJax.startup.promise) {
    await window.MathJax.startup.promise;
  }
  await document.fonts.ready;
}"""

_INSPECT_JS = r"""() => {
  const images = Array.from(document.images).map(img => ({
    src: img.getAttribute('src') || '', ok: img.complete && img.naturalWidth > 0}));
  const sources = Array.from(document.querySelectorAll('.math'));
  const unrendered = sources.filter(e => !e.querySelector('mjx-container'))
    .map(e => e.textContent.trim().slice(0, 60));
  const texErrors = Array.from(document.querySelectorAll('mjx-merror'))
    .map(e => (e.getAttribute('data-mjx-error') || e.textContent).slice(0, 80));
  // `$$a$$` inside a paragraph is parsed by MyST as `$` + inline math + `$`: stray dollars at the edges
  const stray = sources.filter(e =>
      (e.previousSibling && e.previousSibling.nodeType === 3 && /\$\s*$/.test(e.previousSibling.nodeValue)) ||
      (e.nextSibling && e.nextSibling.nodeType === 3 && /^\s*\$/.test(e.nextSibling.nodeValue)))
    .map(e => e.textContent.trim().slice(0, 60));
  const skip = 'script,style,pre,code,textarea,kbd,samp,mjx-container,.highlight';
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const texts = [];
  while (walker.nextNode()) {
    const n = walker.currentNode;
    if (n.parentElement && !n.parentElement.closest(skip)) texts.push(n.nodeValue);
  }
  const links = Array.from(document.querySelectorAll(
      'a[href], link[href][rel~="next"], link[href][rel~="prev"], link[href][rel~="index"], link[href][rel~="search"]'))
    .map(a => ({raw: a.getAttribute('href'), abs: a.href}));
  return {images, math: sources.length, rendered: document.querySelectorAll('mjx-container').length,
          unrendered, stray, texErrors, texts, links};
}"""


# Widths a reader brings: a laptop and a phone. At each, no element of the page may stick out of the text
# column (the article), and the page itself may not scroll sideways; an element inside a box that scrolls on
# its own (overflow-x auto/scroll/hidden, e.g. a wide table or display equation) is fine if that box fits.
WIDTHS = {"laptop": {"width": 1280, "height": 900}, "phone": {"width": 390, "height": 844}}

_OVERFLOW_JS = r"""() => {
  const out = [];
  const doc = document.documentElement;
  if (doc.scrollWidth > doc.clientWidth + 1)
    out.push(`the page scrolls sideways: ${doc.scrollWidth} px of content in a ${doc.clientWidth} px window`);
  const col = document.querySelector('article.bd-article') || document.querySelector('main');
  if (!col) return out;
  const c = col.getBoundingClientRect();
  const name = el => el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') +
    (typeof el.className === 'string' && el.className.trim() ? '.' + el.className.trim().split(/\s+/).slice(0, 2).join('.') : '');
  const scrolls = el => ['auto', 'scroll'].includes(getComputedStyle(el).overflowX);
  const clips = el => ['hidden', 'clip'].includes(getComputedStyle(el).overflowX);
  const fits = r => r.left >= c.left - 1 && r.right <= c.right + 1;
  const hidden = el => {
    for (let p = el; p && p !== col; p = p.parentElement) {
      const st = getComputedStyle(p);
      if ((st.clip && st.clip !== 'auto') || (st.clipPath && st.clipPath !== 'none')) return true;
    }
    return false;
  };
  const flagged = new Set();
  for (const el of col.querySelectorAll('*')) {
    const r = el.getBoundingClientRect();
    if (r.width === 0 || r.height === 0 || fits(r)) continue;
    if (getComputedStyle(el).visibility === 'hidden' || getComputedStyle(el).position === 'fixed') continue;
    if (hidden(el)) continue;  // clipped for screen readers only (MathJax's assistive MathML)
    let p = el.parentElement, contained = false, reported = false, cut = null;
    while (p && p !== col) {
      if (flagged.has(p)) { reported = true; break; }
      if (scrolls(p)) { contained = fits(p.getBoundingClientRect()); break; }
      if (clips(p)) {  // a box that hides what sticks out of it: the reader never sees that part
        const pr = p.getBoundingClientRect();
        if (r.left < pr.left - 1 || r.right > pr.right + 1) cut = p;
        else contained = fits(pr);
        break;
      }
      p = p.parentElement;
    }
    if (contained || reported) continue;
    flagged.add(el);
    const text = (el.textContent || '').trim().replace(/\s+/g, ' ').slice(0, 50);
    const where = cut ? `is cut off by ${name(cut)} (overflow hidden)` :
      `spans ${Math.round(r.left)}..${Math.round(r.right)} px, the column ${Math.round(c.left)}..${Math.round(c.right)} px`;
    out.push(`${name(el)} ${where}: ${JSON.stringify(text)}`);
  }
  return out;
}"""


def overflow(page) -> list[str]:
    """Everything on the loaded page that is wider than its column, or a page that scrolls sideways."""
    return page.evaluate(_OVERFLOW_JS)


def _guard(context, base_url: str, offsite: list[str]) -> None:
    """Allow only requests to the local server; abort and record everything else (no route off-machine)."""

    def handle(route):
        url = route.request.url
        if url.startswith(base_url) or url.startswith("data:"):
            route.continue_()
        else:
            offsite.append(url)
            route.abort()

    context.route("**/*", handle)


@dataclass
class Watch:
    """What one page did on the wire and in its console."""

    console: list[str] = field(default_factory=list)
    pageerror: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    offsite: list[str] = field(default_factory=list)
    inflight: dict = field(default_factory=dict)

    def problems(self) -> list[str]:
        return (
            [f"off-machine request (blocked): {u}" for u in self.offsite]
            + [f"console error: {m}" for m in self.console]
            + [f"script error: {m}" for m in self.pageerror]
            + [f"request failed: {m}" for m in self.failed]
        )


@contextlib.contextmanager
def open_page(browser, base_url: str, viewport: dict | None = None) -> Iterator[tuple]:
    """A fresh context and page on the local server; yields (page, Watch)."""
    context = browser.new_context(viewport=viewport or {"width": 1200, "height": 900})
    w = Watch()
    _guard(context, base_url, w.offsite)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.on("console", lambda m: m.type == "error" and w.console.append(m.text))
    page.on("pageerror", lambda e: w.pageerror.append(str(e)))
    page.on("request", lambda r: w.inflight.__setitem__(r, r.url))
    page.on("requestfinished", lambda r: w.inflight.pop(r, None))

    def failed(r):
        w.inflight.pop(r, None)
        w.failed.append(f"{r.url} ({r.failure})")

    page.on("requestfailed", failed)
    page.on("response", lambda r: r.status >= 400 and w.failed.append(f"{r.url} (HTTP {r.status})"))
    try:
        yield page, w
    finally:
        context.close()


def settle(page, w: Watch, quiet_s: float = 0.3, cap_s: float = 15.0) -> None:
    """Wait until no request has been in flight for `quiet_s` (late fonts, MathJax extensions); a request
    still open after `cap_s` is an error. (Playwright's networkidle was seen to hang on a cached page.)"""
    end = time.monotonic() + cap_s
    quiet_since = None
    while time.monotonic() < end:
        if w.inflight:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_s:
            return
        page.wait_for_timeout(50)  # lets Playwright deliver the request events
    raise TimeoutError(f"requests still open after {cap_s:.0f} s: {sorted(w.inflight.values())}")


def load(page, w: Watch, url: str, root: Path, rel: str) -> None:
    """Go to a page and wait until it is what a reader sees: images loaded, math typeset, fonts in."""
    refresh = parsed(root / rel).refresh
    page.goto(url, wait_until="load")
    if refresh:  # index.html only redirects: wait for the page it sends the reader to
        page.wait_for_url(url.rsplit("/", 1)[0] + "/" + refresh, wait_until="load")
    page.evaluate(_READY_JS)
    settle(page, w)


def check_colab(rep: PageReport, root: Path, links: list[dict], repo: Repo) -> None:
    """On an executed-notebook page, the Colab button must open that page's own notebook."""
    docname = rep.path.removesuffix(".html")
    is_notebook = (root / "_sources" / f"{docname}.ipynb").is_file()
    colab = sorted({ln["abs"] for ln in links if ln["abs"].startswith("https://colab.research.google.com")})
    if is_notebook and not colab:
        rep.problems.append("notebook page has no Colab button")
    prefix = f"{COLAB}{repo.org}/{repo.name}/blob/{repo.branch}/"
    want = "/".join(p for p in (repo.path_to_book, f"{docname}.ipynb") if p)
    for url in colab:
        rep.colab = url
        if not is_notebook:
            rep.problems.append(f"Colab link on a page that is not a notebook (Colab cannot open it): {url}")
        elif url != prefix + want:
            rep.problems.append(f"Colab link {url} is not {prefix + want}")
        elif not (ROOT / want).is_file():
            rep.problems.append(f"Colab link names {want}, which the build did not produce")


def check_page(browser, base_url: str, root: Path, rel: str, repo: Repo | None = None) -> PageReport:
    """Load one page as a reader would and list everything that is broken on it."""
    repo = repo or Repo.from_config()
    rep = PageReport(rel)
    t0 = time.perf_counter()
    with open_page(browser, base_url, WIDTHS["laptop"]) as (page, w):
        try:
            load(page, w, base_url + rel, root, rel)
            info = page.evaluate(_INSPECT_JS)
            rep.problems += [f"at {WIDTHS['laptop']['width']} px: {p}" for p in overflow(page)]
        except Exception as exc:  # a page that does not load or settle is itself the failure
            rep.problems.append(f"did not load: {type(exc).__name__}: {str(exc).splitlines()[0]}")
            info = None
        rep.final_url = page.url
        rep.problems += w.problems()  # reported even when the page never settled
    if info is not None:
        with open_page(browser, base_url, WIDTHS["phone"]) as (page, w):
            try:
                load(page, w, base_url + rel, root, rel)
                rep.problems += [f"at {WIDTHS['phone']['width']} px: {p}" for p in overflow(page)]
            except Exception as exc:
                rep.problems.append(
                    f"did not load at phone width: {type(exc).__name__}: {str(exc).splitlines()[0]}"
                )
            rep.problems += w.problems()
    rep.seconds = time.perf_counter() - t0
    if info is None:
        return rep
    rep.images = len(info["images"])
    rep.problems += [f"image did not load: {i['src']}" for i in info["images"] if not i["ok"]]
    rep.math = info["math"]
    rep.problems += [f"math not typeset: {t!r}" for t in info["unrendered"]]
    rep.problems += [f"TeX error: {t!r}" for t in info["texErrors"]]
    rep.problems += [f"stray $ next to typeset math (inline $$...$$?): {t!r}" for t in info["stray"]]
    for text in info["texts"]:
        m = RAW_TEX.search(text)
        if m:
            s = max(m.start() - 30, 0)
            rep.problems.append(f"raw TeX in the page text: {text[s : m.end() + 30].strip()!r}")
    final_rel = rep.final_url[len(base_url) :].split("#")[0].split("?")[0]
    seen = set()
    for ln in info["links"]:
        url = ln["abs"]
        if not url.startswith(base_url) or url in seen:
            continue
        seen.add(url)
        why = resolve_internal(root, base_url, url)
        if why:
            rep.problems.append(f"dead link {ln['raw']!r}: {why}")
    rep.links = len(seen)
    if final_rel == rel:  # a redirect page (index.html) is judged by the page it leads to, checked itself
        check_colab(rep, root, info["links"], repo)
    return rep


_SEARCH_DONE_JS = r"""() => {
  const box = document.getElementById('search-results');
  return box !== null && /Search finished|did not match/.test(box.textContent);
}"""


def search(browser, base_url: str, word: str) -> tuple[list[str], list[str]]:
    """Run the book's own search page for `word`; returns (result page paths, problems)."""
    problems: list[str] = []
    with open_page(browser, base_url) as (page, w):
        try:
            page.goto(f"{base_url}search.html?q={word}", wait_until="load")
            page.wait_for_function(_SEARCH_DONE_JS)
            hits = page.eval_on_selector_all(
                "#search-results ul.search li a", "as => as.map(a => a.href.split('#')[0].split('?')[0])"
            )
        except Exception as exc:
            problems.append(f"search did not finish: {type(exc).__name__}: {str(exc).splitlines()[0]}")
            hits = []
        problems += w.problems()
    return sorted({h[len(base_url) :] for h in hits if h.startswith(base_url)}), problems


def screenshot(
    browser, base_url: str, root: Path, rel: str, out: Path, size=(1200, 900), scroll_to: str | None = None
) -> Path:
    """A viewport screenshot of one page as a reader sees it (at the top, or scrolled so that the first
    element matching the CSS selector `scroll_to` is at the top), written atomically to `out`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    with open_page(browser, base_url, {"width": size[0], "height": size[1]}) as (page, w):
        load(page, w, base_url + rel, root, rel)
        if scroll_to:  # instantly: the theme scrolls smoothly, which a screenshot would catch half-way
            page.eval_on_selector(scroll_to, "e => e.scrollIntoView({behavior: 'instant', block: 'start'})")
            page.wait_for_timeout(200)
        page.screenshot(path=str(tmp))
        bad = w.problems()
    if bad:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"{rel}: not screenshotting a broken page: {bad}")
    os.replace(tmp, out)
    return out


def check_book(root: Path = HTML, word: str = "solver") -> tuple[list[PageReport], list[str]]:
    """Every page checked, plus the search for `word`; returns (page reports, search problems)."""
    repo = Repo.from_config()
    with serve(root) as base, chromium() as browser:
        reports = [check_page(browser, base, root, rel, repo) for rel in html_pages(root)]
        hits, problems = search(browser, base, word)
    if not hits:
        problems.append(f"search for {word!r} found nothing")
    return reports, problems


def main(argv: list[str]) -> int:
    root = Path(argv[0]).resolve() if argv else HTML
    if not (root / "index.html").is_file():
        print(f"no built book in {root}: run `make book` (or scripts/build_book.py --quick) first")
        return 2
    why = browser_unavailable()
    if why:
        print(f"browser checks not run: {why}")
        return 2
    t0 = time.perf_counter()
    reports, search_problems = check_book(root)
    for r in reports:
        status = "ok" if not r.problems else f"{len(r.problems)} problem(s)"
        print(
            f"{r.path:40s} {status:14s} img={r.images:<3d} math={r.math:<4d} links={r.links:<4d} {r.seconds:5.1f} s"
        )
        for p in r.problems:
            print(f"    - {p}")
    for p in search_problems:
        print(f"search: {p}")
    bad = sum(bool(r.problems) for r in reports) + bool(search_problems)
    print(f"{len(reports)} pages checked in {time.perf_counter() - t0:.1f} s; {bad} with problems")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
