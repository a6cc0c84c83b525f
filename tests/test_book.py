"""`npvae book`: the notebooks, executed, as a website, checked in headless Chromium.

The site is built once (every notebook executed, about 80 s on 2 cores) into NPVAE_BOOK_DIR or a
pytest temporary folder, then served on 127.0.0.1 only. Every page is loaded in headless Chromium
(Debian's `chromium`, driven by its own command line: `--dump-dom` and `--screenshot`, no driver
package) with a proxy that is this test's own server: every request for another host goes to it,
is refused and recorded, so nothing leaves 127.0.0.1 and any such load fails the test. A small
script that the server adds to each page waits for MathJax and writes what it finds into the page,
which --dump-dom returns: formulas left as raw TeX, images that did not load, figures without alt
text, display equations wider than the text column at 1280 px (each must fit: a line break or
`aligned` does it). Screenshots of the index and of a page with
equations and figures are written beside the site, and their paths printed.

With CI=true a missing tool (the [book] extra, chromium) fails the test; elsewhere it skips.
"""

import contextlib
import html
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from npvae import book, cli

CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")  # as tests/test_nbgrader.py
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
PAGE_TIMEOUT_S = 120
WIDTH = 1280  # a laptop's window; the text column is about 800 px of it

# Added at the top of <head>: records every load the page attempts from another host, which the
# server's Content-Security-Policy header (only 127.0.0.1 itself) blocks.
WATCH = """<script>window.npvaeOutside = [];
document.addEventListener('securitypolicyviolation', e => npvaeOutside.push(e.blockedURI));</script>"""
# Only this origin; inline scripts and styles and data: URIs (the theme's icons) are the page's own.
CSP = "default-src 'self' 'unsafe-inline' 'unsafe-eval' data: blob:"

# Added before </body> of every page served: waits for MathJax and the images, then writes its findings.
CHECKER = """<script>
(async () => {
  const out = {};
  if (document.readyState !== 'complete') await new Promise(r => addEventListener('load', r));
  try { if (window.MathJax) await MathJax.startup.promise; } catch (e) { out.mathjax_error = String(e); }
  const math = [...document.querySelectorAll('.math')];
  out.math = math.length;
  out.raw = math.filter(m => !m.querySelector('mjx-container')).map(m => m.textContent.slice(0, 80));
  out.tex_errors = document.querySelectorAll('mjx-merror').length;
  const imgs = [...document.images];
  await Promise.all(imgs.map(i => i.complete ? 0 : new Promise(r => { i.onload = i.onerror = r; })));
  out.images = imgs.length;
  out.broken = imgs.filter(i => !i.naturalWidth).map(i => i.getAttribute('src'));
  out.no_alt = imgs.filter(i => !i.alt || i.alt.endsWith(i.getAttribute('src').split('/').pop()))
                   .map(i => i.getAttribute('src'));
  const tex = c => { try { return MathJax.startup.document.getMathItemsWithin(c)[0].math; } catch (e) { return '?'; } };
  out.wide = [...document.querySelectorAll('mjx-container[display="true"]')]
    .filter(c => c.scrollWidth > c.clientWidth + 1)
    .map(c => ({tex: tex(c).trim().slice(0, 100), px: c.scrollWidth, column: c.clientWidth}));
  out.outside = window.npvaeOutside || ['the watch script did not run'];
  out.page_overflow = document.documentElement.scrollWidth > window.innerWidth + 1;
  const pre = document.createElement('pre');
  pre.id = 'npvae-check';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
})();
</script>"""


def say(request, text):
    """Print past pytest's capture, so that the figures and the screenshots' paths show in any run."""
    with request.config.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
        print(text)


def needs(what):
    """Fail in CI, where .ci/run installs the tools so that the test runs; skip elsewhere."""
    if CI:
        pytest.fail(f"needs {what}, and CI is set: .ci/run installs it so that this test runs")
    pytest.skip(f"needs {what}")


class Server(SimpleHTTPRequestHandler):
    """Serves the site with a Content-Security-Policy that blocks any load from another host (the
    pages record what it blocked); as the browser's proxy, refuses every request for another host
    (Chromium's own: its clock, its updates), so that nothing leaves the machine."""

    site = None
    served, outside = [], []

    def log_message(self, *args):
        pass

    def do_CONNECT(self):
        self.outside.append(f"CONNECT {self.path}")
        self.send_error(403)

    def do_GET(self):
        if not self.path.startswith("/"):  # a proxy request: an absolute URL of another host
            self.outside.append(f"GET {self.path}")
            return self.send_error(403)
        path = unquote(urlsplit(self.path).path)
        file = self.site / path.lstrip("/")
        self.served.append((path, file.is_file() or (file / "index.html").is_file()))
        if path.endswith(".html") and file.is_file():
            body = file.read_bytes().replace(b"<head>", b"<head>" + WATCH.encode(), 1)
            body = body.replace(b"</body>", CHECKER.encode() + b"</body>")
            self.send_response(200)
            self.send_header("Content-Security-Policy", CSP)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()


def tools():
    """Fail or skip (see needs) unless the [book] extra and chromium are installed."""
    if book.missing():
        needs(f"the [book] extra ({', '.join(book.missing())}): pip install -e '.[book]'")
    if CHROMIUM is None:
        needs("chromium (Debian: apt-get install chromium)")


@contextlib.contextmanager
def serve(html_dir, profile):
    """Serve html_dir on 127.0.0.1; yield (base URL, the chromium command that browses it)."""
    Server.site = Path(html_dir)
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Server, directory=str(html_dir)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    chromium = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-extensions", "--no-default-browser-check", f"--user-data-dir={profile}",
                f"--proxy-server=http://127.0.0.1:{port}",  # other hosts: to Server, which refuses them
                f"--window-size={WIDTH},1600", "--hide-scrollbars", "--virtual-time-budget=60000"]
    try:
        yield f"http://127.0.0.1:{port}/", chromium
    finally:
        server.shutdown()
        server.server_close()


def check_page(chromium, url):
    """What CHECKER found on the page at url (a dict), or None if it did not finish."""
    dom = subprocess.run(chromium + ["--dump-dom", url], capture_output=True, text=True,
                         timeout=PAGE_TIMEOUT_S).stdout
    match = re.search(r'<pre id="npvae-check"[^>]*>(.*?)</pre>', dom, re.S)
    return json.loads(html.unescape(match.group(1))) if match else None


@pytest.fixture(scope="module")
def site(request, tmp_path_factory):
    """Build the book once; serve it on 127.0.0.1; yield (html folder, base URL, chromium command, build folder)."""
    tools()
    out = Path(os.environ.get("NPVAE_BOOK_DIR") or tmp_path_factory.mktemp("book"))
    start = time.perf_counter()
    book.build(out)
    built_s = time.perf_counter() - start
    html_dir = out / "html"
    size = sum(f.stat().st_size for f in html_dir.rglob("*") if f.is_file())
    say(request, f"\nbook: built in {built_s:.0f} s, {size / 2**20:.1f} MB in {html_dir}")
    with serve(html_dir, tmp_path_factory.mktemp("chromium-profile")) as (base, chromium):
        yield html_dir, base, chromium, out


def test_without_the_book_extra_npvae_book_says_in_one_line_what_to_install(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(book.NEEDS, "npvae_no_such_module", "no-such-package")
    assert cli.main(["book", str(tmp_path / "site")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("npvae book: error: needs ") \
        and "no-such-package" in err and "pip install 'npvae[book]'" in err, err
    assert not (tmp_path / "site").exists()


@pytest.mark.parametrize("ci, outcome", [(False, pytest.skip.Exception), (True, pytest.fail.Exception)])
def test_a_missing_tool_fails_under_ci_and_skips_elsewhere(monkeypatch, ci, outcome):
    monkeypatch.setattr(sys.modules[__name__], "CI", ci)
    with pytest.raises(outcome, match="needs chromium"):
        needs("chromium")


@pytest.mark.slow
def test_the_browser_check_sees_a_cdn_load_raw_tex_and_a_broken_image(tmp_path):
    """The check itself can fail: a page that loads MathJax from a CDN, shows raw TeX and a missing
    image, without alt text, is caught on each count (and the CDN is never reached)."""
    tools()
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "page.html").write_text(
        '<html><head><script src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-chtml.js"></script></head>'
        '<body><span class="math">\\(x^2\\)</span><img src="_images/none.png"></body></html>')
    with serve(tmp_path / "site", tmp_path / "profile") as (base, chromium):
        r = check_page(chromium, base + "page.html")
    assert r is not None, "the check script did not finish"
    assert r["outside"] and "cdn.jsdelivr.net" in r["outside"][0], r
    assert r["raw"] == ["\\(x^2\\)"] and r["broken"] == ["_images/none.png"] and r["no_alt"] == ["_images/none.png"], r


def pages(html_dir):
    return sorted(p.name for p in html_dir.glob("*.html"))


@pytest.mark.slow
def test_every_notebook_has_a_page_and_the_index_links_them(site):
    html_dir = site[0]
    index = (html_dir / "index.html").read_text(encoding="utf-8")
    for nb in sorted(book.NOTEBOOK_DIR.glob("*.ipynb")):
        assert (html_dir / f"{nb.stem}.html").is_file(), f"no page for {nb.name}"
        assert f'href="{nb.stem}.html"' in index, f"the index does not link {nb.stem}.html"
    assert "How they map onto the lecture" in index, "the index should hold the README's lecture map"


@pytest.mark.slow
def test_every_local_link_resolves(site):
    html_dir = site[0]
    ids = {name: set(re.findall(r'\sid="([^"]+)"', (html_dir / name).read_text(encoding="utf-8")))
           for name in pages(html_dir)}
    bad = []
    for name in pages(html_dir):
        for href in re.findall(r'\shref="([^"]+)"', (html_dir / name).read_text(encoding="utf-8")):
            href = html.unescape(href)
            if re.match(r"[a-z]+:", href):  # http:, mailto: ... : a link out is not a load
                continue
            target, _, anchor = href.partition("#")
            target = urlsplit(target).path or name
            if not (html_dir / unquote(target)).exists():
                bad.append(f"{name}: {href} (no such file)")
            elif anchor and target in ids and anchor not in ids[target]:
                bad.append(f"{name}: {href} (no such anchor)")
    assert not bad, f"{len(bad)} local links do not resolve: {bad[:10]}"


@pytest.mark.slow
def test_every_page_in_chromium_math_typeset_images_loaded_nothing_from_another_host(site, request):
    html_dir, base, chromium, out = site
    Server.served.clear()
    Server.outside.clear()
    found, failures = {}, []
    start = time.perf_counter()
    for name in pages(html_dir):
        r = check_page(chromium, base + name)
        if r is None:
            failures.append(f"{name}: the check script did not finish")
            continue
        found[name] = r
        for key in ("raw", "broken", "outside", "no_alt", "wide"):  # wide: a display equation scrolls in the column
            if r[key]:
                failures.append(f"{name}: {len(r[key])} {key}: {r[key][:3]}")
        if r["tex_errors"] or "mathjax_error" in r:
            failures.append(f"{name}: {r['tex_errors']} TeX errors {r.get('mathjax_error', '')}")
        if r["page_overflow"]:
            failures.append(f"{name}: the page scrolls sideways at {WIDTH} px")
    browse_s = time.perf_counter() - start
    missing = sorted({path for path, ok in Server.served if not ok and path != "/favicon.ico"})  # the browser asks itself
    shots = {}
    with_figures = max((n for n in found if n != "index.html"),
                       key=lambda n: min(found[n]["math"], 40) * found[n]["images"], default=None)
    for name in ("index.html", with_figures):
        if name:
            shot = out / f"screenshot-{Path(name).stem}.png"
            subprocess.run(chromium + ["--window-size=1280,2400", f"--screenshot={shot}", base + name],
                           capture_output=True, timeout=PAGE_TIMEOUT_S)
            shots[name] = shot
    total = {k: sum(r[k] if isinstance(r[k], int) else len(r[k]) for r in found.values())
             for k in ("math", "images", "raw", "broken", "no_alt", "wide", "outside")}
    report = [f"\nbook in chromium: {len(found)} pages in {browse_s:.0f} s, {total['math']} formulas "
          f"({total['raw']} left raw), {total['images']} images ({total['broken']} broken, "
          f"{total['no_alt']} without alt text), {total['wide']} display equations wider than the column, "
          f"{len(Server.served)} requests to 127.0.0.1 ({len(missing)} missing), {total['outside']} loads from other hosts blocked (the browser's own requests refused: "
              f"{len(Server.outside)})"]
    for name, r in found.items():
        for w in r["wide"]:
            report.append(f"  wide equation: {name}: {w['px']} px in {w['column']} px: {w['tex']}")
        if r["no_alt"]:
            report.append(f"  no alt text: {name}: {len(r['no_alt'])} figures")
    for name, shot in shots.items():
        report.append(f"  screenshot of {name}: {shot}")
    say(request, "\n".join(report))
    assert len(found) == len(pages(html_dir)) and total["math"] > 0 and total["images"] > 0
    assert not missing, f"requested but not in the site: {missing[:10]}"
    assert not failures, "; ".join(failures[:10])
    assert all(s.is_file() and s.stat().st_size > 10_000 for s in shots.values()), f"no screenshots: {shots}"
