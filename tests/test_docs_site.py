"""The documentation site: a strict build, then three pages checked in headless Chromium, offline.

The site is built with ``mkdocs build --strict`` into a temporary folder and served on 127.0.0.1. Playwright for
Python drives the system's Chromium (never a downloaded browser) through the notation lesson, its notebook and one API
page. Every request that leaves 127.0.0.1 is blocked and recorded. Each page must have its mathematics typeset by the
bundled KaTeX (no render error, no raw TeX left in the text, KaTeX's own font loaded), make no remote request, no
failed request and no JavaScript error; the notebook page must show its stored figures, the API page its documented
functions. A screenshot of each page goes to ``build/docs-site/``.

Without Playwright or Chromium the browser tests skip (``.ci/run`` installs Debian's ``chromium``, so CI runs them);
the strict build always runs.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
import threading
from html import unescape
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "build" / "docs-site"
CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "/usr/bin/chromium", "/usr/lib/chromium/chromium")

# name -> path on the site
PAGES = {
    "lesson": "lessons/00-notation/",
    "notebook": "notebooks/00-notation/",
    "api": "api/notation/",
}
API_FUNCTIONS = ["diffmath.core.notation.convert", "diffmath.core.schedules.su_linear"]
SCREENSHOT_AT = {"notebook": 'img[src^="data:image/png"]'}  # else the top of the page

# A Sphinx role that the site should have turned into a link (docs/hooks/sphinx_roles.py).
SPHINX_ROLE = r":(?:py:)?(?:func|meth|class|mod|attr|obj|data|exc):"
# Text that KaTeX should have replaced: a TeX control word, $$, \( or \[, or a $...$ span holding TeX syntax.
RAW_TEX = r"\\[A-Za-z]+|\$\$|\\\(|\\\[|\$[^$\s][^$]*[\\^_{}][^$]*\$"

INSPECT_JS = """
([rawTex, sphinxRole]) => {
  const re = new RegExp(rawTex);
  const role = new RegExp(sphinxRole);
  const skip = "pre, code, script, style, textarea, noscript, .katex, .katex-display, .clipboard-copy-txt";
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const raw = [];
  const roles = [];
  while (walker.nextNode()) {
    const node = walker.currentNode;
    if (!node.parentElement || node.parentElement.closest(skip)) continue;
    if (re.test(node.textContent)) raw.push(node.textContent.trim().slice(0, 160));
    if (role.test(node.textContent)) roles.push(node.textContent.trim().slice(0, 160));
  }
  const imgs = [...document.querySelectorAll("img")];
  return {
    katex: document.querySelectorAll(".katex").length,
    display: document.querySelectorAll(".katex-display").length,
    tags: document.querySelectorAll(".katex-display .tag, .katex-display .katex-tag").length,
    errors: [...document.querySelectorAll(".katex-error")].map((e) => e.getAttribute("title") || e.textContent),
    raw: raw,
    roles: roles,
    mathInCode: document.querySelectorAll("pre .katex, code .katex, .clipboard-copy-txt .katex").length,
    pngFigures: imgs.filter((i) => i.src.startsWith("data:image/png") && i.complete && i.naturalWidth > 0).length,
    brokenImages: imgs.filter((i) => !(i.complete && i.naturalWidth > 0)).map((i) => i.src.slice(0, 80)),
    katexFonts: [...document.fonts]
      .filter((f) => f.family.replace(/["']/g, "") === "KaTeX_Main" && f.status === "loaded").length,
    ids: [...document.querySelectorAll("[id]")].map((e) => e.id),
    downloads: [...document.querySelectorAll("a[download]")].map((a) => a.href),
  };
}
"""


def _find_chromium() -> str | None:
    for name in (os.environ.get("DIFFMATH_CHROMIUM"), *CHROMIUM_CANDIDATES):
        if name and (found := shutil.which(name)):
            return found
    return None


@pytest.fixture(scope="module")
def built_site(tmp_path_factory):
    """``mkdocs build --strict`` into a temporary folder: (completed process, site folder)."""
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return proc, out


def test_site_builds_strict(built_site):
    proc, out = built_site
    problems = [line for line in proc.stderr.splitlines() if not line.startswith("INFO")]
    assert proc.returncode == 0, "mkdocs build --strict failed:\n" + "\n".join(problems)
    for page in PAGES.values():
        assert (out / page / "index.html").is_file(), f"the site has no {page}"


STRIP_BEFORE_TEXT_CHECK = re.compile(
    r"<(pre|code|script|style)\b.*?</\1>|<(span|div) class=\"arithmatex\">.*?</\2>", flags=re.DOTALL
)


# In a text node, what KaTeX's auto-render typesets at view time (same delimiters as docs/javascripts/katex-init.js).
AUTO_RENDERED = re.compile(r"\$\$.+?\$\$|\\\[.+?\\\]|\\\(.+?\\\)|\$.+?\$", flags=re.DOTALL)


def test_markdown_pages_leave_no_broken_formula(built_site):
    """Lessons, API pages and the home page as built (no browser): no ``$`` or TeX command left outside a formula.

    Formulas reach these pages as arithmatex spans, or as ``$...$`` inside one text node (typeset at view time). A
    lone ``$`` or TeX command means Markdown split a formula first: e.g. a docstring line inside ``$...$`` that
    starts with ``+ `` becomes a list item. Notebook pages are left to the browser test.
    """
    _, out = built_site
    pages = [out / "index.html", *sorted((out / "lessons").glob("*/index.html"))]
    pages += sorted((out / "api").glob("*/index.html"))
    bad = []
    for page in pages:
        html = page.read_text(encoding="utf-8")
        article = STRIP_BEFORE_TEXT_CHECK.sub("<gap>", html[html.find("<article") : html.find("</article>")])
        for node in re.split(r"<[^>]+>", article):
            text = AUTO_RENDERED.sub(" ", unescape(node))
            if re.search(r"\$|\\[A-Za-z]+", text):
                bad.append(f"{page.parent.relative_to(out)}/: {' '.join(unescape(node).split())[:200]}")
    assert not bad, f"{len(bad)} broken formula(s), TeX left as text:\n  " + "\n  ".join(bad[:10])


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@pytest.fixture(scope="module")
def served_site(built_site):
    """The built site on http://127.0.0.1:<free port>/."""
    _, out = built_site
    if not (out / "index.html").is_file():
        pytest.skip("the site did not build (see test_site_builds_strict)")
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(out)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="Playwright for Python is not installed (pip install -e '.[docs]')"
    )
    chromium = _find_chromium()
    if chromium is None:
        pytest.skip(
            "no Chromium found (looked for chromium, chromium-browser, /usr/bin/chromium; or set DIFFMATH_CHROMIUM): "
            "install the system package, e.g. `apt-get install chromium` on Debian; .ci/run does"
        )
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def _visit(browser, url: str, shot: Path, scroll_to: str | None = None) -> dict:
    """Open one page with every non-local request blocked; record requests, failures, errors and the DOM checks."""
    rec = {"requests": [], "remote": [], "failed": [], "errors": []}

    # Playwright passes (route, request) to a two-argument handler: keep the handlers one-argument closures.
    def route(r):
        if urlsplit(r.request.url).hostname == "127.0.0.1":
            r.continue_()
        else:
            rec["remote"].append(r.request.url)
            r.abort()

    def failed(q):
        if q.url not in rec["remote"]:
            rec["failed"].append(f"{q.url}: {q.failure}")

    def response(s):
        if s.status >= 400:
            rec["failed"].append(f"{s.url}: HTTP {s.status}")

    def console(m):
        if m.type == "error":
            rec["errors"].append(f"console: {m.text}")

    context = browser.new_context(viewport={"width": 1280, "height": 900}, service_workers="block")
    try:
        context.route("**/*", route)
        page = context.new_page()
        page.set_default_timeout(15_000)
        page.on("request", lambda q: rec["requests"].append(q.url))
        page.on("requestfailed", failed)
        page.on("response", response)
        page.on("pageerror", lambda e: rec["errors"].append(str(e)))
        page.on("console", console)
        page.goto(url, wait_until="load")
        try:
            page.wait_for_function("document.querySelector('.katex') !== null", timeout=5_000)
        except Exception:
            pass  # reported by the test as "no math typeset"
        page.evaluate("document.fonts.ready.then(() => true)")
        page.wait_for_load_state("networkidle")
        rec["dom"] = page.evaluate(INSPECT_JS, [RAW_TEX, SPHINX_ROLE])
        rec["download_status"] = [
            page.evaluate("(u) => fetch(u).then((r) => r.status)", u) for u in rec["dom"]["downloads"]
        ]
        if scroll_to and page.locator(scroll_to).count():
            page.locator(scroll_to).first.scroll_into_view_if_needed()
        page.screenshot(path=str(shot))
    finally:
        context.close()
    return rec


@pytest.fixture(scope="module")
def visits(browser, served_site):
    """Each page of PAGES opened once, in its own browser context."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    return {
        name: _visit(browser, served_site + path, SHOTS / f"{name}.png", SCREENSHOT_AT.get(name))
        for name, path in PAGES.items()
    }


@pytest.mark.parametrize("name", list(PAGES))
def test_page_offline_with_typeset_math(visits, name):
    rec = visits[name]
    dom = rec["dom"]
    problems = []
    if dom["katex"] == 0:
        problems.append("no math typeset: no .katex element (is javascripts/katex-init.js loaded?)")
    if dom["errors"]:
        problems.append(f"{len(dom['errors'])} KaTeX render error(s): {dom['errors'][:5]}")
    if dom["raw"]:
        problems.append(f"{len(dom['raw'])} text node(s) still hold raw TeX: {dom['raw'][:5]}")
    if dom["roles"]:
        problems.append(f"{len(dom['roles'])} Sphinx role(s) left as text: {dom['roles'][:5]}")
    if dom["mathInCode"]:
        problems.append(f"{dom['mathInCode']} formula(s) typeset inside code (a $ in code must stay as typed)")
    if dom["katexFonts"] == 0:
        problems.append("the KaTeX_Main font was not loaded from assets/katex/fonts")
    if rec["remote"]:
        problems.append(f"{len(rec['remote'])} remote request(s) (blocked): {rec['remote'][:5]}")
    if rec["failed"]:
        problems.append(f"failed request(s): {rec['failed'][:5]}")
    if rec["errors"]:
        problems.append(f"JavaScript error(s): {rec['errors'][:5]}")
    if dom["brokenImages"]:
        problems.append(f"image(s) not shown: {dom['brokenImages'][:5]}")
    if not any(re.search(r"/assets/katex/fonts/KaTeX_Main-Regular\.woff2$", u) for u in rec["requests"]):
        problems.append("KaTeX_Main-Regular.woff2 was not requested from the site")
    assert not problems, f"{PAGES[name]}:\n  " + "\n  ".join(problems)


def test_lesson_equations_are_numbered(visits):
    dom = visits["lesson"]["dom"]
    assert dom["display"] > 0, "no display equation typeset on the notation lesson"
    assert dom["tags"] > 0, r"no equation number (\tag) typeset on the notation lesson"


def test_notebook_shows_its_figures_and_offers_its_download(visits):
    rec = visits["notebook"]
    assert rec["dom"]["pngFigures"] > 0, "the notebook page shows no stored data:image/png figure"
    assert [u.rsplit("/", 1)[-1] for u in rec["dom"]["downloads"]] == ["00-notation.ipynb"], "no download link"
    assert rec["download_status"] == [200], f"the notebook download gave HTTP {rec['download_status']}"


def test_api_page_lists_documented_functions(visits):
    ids = set(visits["api"]["dom"]["ids"])
    missing = [f for f in API_FUNCTIONS if f not in ids]
    assert not missing, f"the API page has no entry for {missing}"
