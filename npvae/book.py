"""``npvae book DIR``: the notebooks, executed, as a static website (Sphinx + myst-nb + the book theme).

The site lands in ``DIR/html`` (open ``DIR/html/index.html``, or serve the folder from any static
host). Its index page is notebooks/README.md's lecture map, then one page per notebook. Each
notebook runs top to bottom in a fresh kernel, one at a time; the outputs are cached in
``DIR/.jupyter_cache``, so a rebuild runs only the notebooks whose code changed. A cell that raises
or any Sphinx warning fails the build. Nothing is loaded from another host: the theme's assets
come in its wheel and MathJax 3 in sphinx-mathjax-offline's, copied into ``DIR/html/_static``.
The tools are the optional ``[book]`` extra: ``pip install -e ".[book]"``.
"""

import importlib.util
import os
import re
import shutil
import time
from pathlib import Path

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
# module -> the package that brings it: what `npvae book` needs beyond npvae itself
NEEDS = {"sphinx": "sphinx", "myst_nb": "myst-nb", "sphinx_book_theme": "sphinx-book-theme",
         "sphinx-mathjax-offline": "sphinx-mathjax-offline", "ipykernel": "ipykernel"}
CELL_TIMEOUT_S = 300
# MathJax's other combined entry points: the pages load only tex-chtml.js (and what it loads itself)
UNUSED_MATHJAX = ["tex-mml-chtml.js", "tex-chtml-full.js", "tex-chtml-full-speech.js", "tex-svg.js",
                  "tex-svg-full.js", "tex-mml-svg.js", "mml-chtml.js", "mml-svg.js", "node-main.js", "latest.js"]  # as tests/test_notebooks.py

CONF = '''\
# Written by `npvae book`; every build writes it anew.
project = "npvae: Variational Autoencoders from scratch (CS7015 Lecture 21)"
author = "npvae"
extensions = ["myst_nb", "sphinx-mathjax-offline"]  # MathJax 3 from the wheel, not from a CDN
root_doc = "index"
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
myst_enable_extensions = ["dollarmath", "amsmath"]
nb_execution_mode = "cache"
nb_execution_cache_path = {cache!r}
nb_execution_raise_on_error = True
nb_execution_timeout = {timeout}
nb_execution_show_tb = True
html_theme = "sphinx_book_theme"
html_title = "npvae · CS7015 Lecture 21"
html_theme_options = {{"use_download_button": True, "show_toc_level": 2}}
html_static_path = ["_static"]
html_css_files = ["npvae.css"]


def alt_text_from_the_cell(app, doctree):
    """A figure without alt text (cell metadata mystnb.image.alt) gets its cell's opening comment,
    which says what the cell does (tests/test_notebooks.py asks every code cell for one)."""
    from docutils import nodes

    for cell in doctree.findall(nodes.container):
        if "cell" not in cell["classes"]:
            continue
        code = next(iter(cell.findall(nodes.literal_block)), None)
        first = code.astext().lstrip().splitlines()[0] if code is not None and code.astext().strip() else ""
        if first.startswith("#"):
            for image in cell.findall(nodes.image):
                image.setdefault("alt", first.lstrip("#").strip())


def setup(app):
    app.set_html_assets_policy("always")  # MathJax on every page: the sidebar's titles hold math
    app.connect("doctree-read", alt_text_from_the_cell)
'''

# A display equation wider than the text column scrolls in its own box (MathJax's container),
# never the page: the column keeps its width on a phone too.
CSS = """\
mjx-container[display="true"], div.math { max-width: 100%; overflow-x: auto; overflow-y: hidden; }
"""


def missing() -> list:
    """The packages of the [book] extra that are not installed."""
    return [pkg for module, pkg in NEEDS.items() if importlib.util.find_spec(module) is None]


def index_page(readme: str, notebooks: list) -> str:
    """The index page: notebooks/README.md up to its second section (the intro, the lecture map and
    the notation), links to the .ipynb files turned into links to their pages, then the table of
    contents."""
    head = re.split(r"^## ", readme, maxsplit=1, flags=re.M)[0]
    head = re.sub(r"^# .*$", "# npvae: Variational Autoencoders from scratch\n\n"
                  "*The notebooks of CS7015 Lecture 21, executed.*", head, count=1, flags=re.M)
    toc = "\n".join(Path(p).stem for p in notebooks)
    return f"{head.rstrip()}\n\n```{{toctree}}\n:maxdepth: 1\n:caption: Notebooks\n\n{toc}\n```\n"


def build(out_dir, notebooks_dir=None, log=print) -> Path:
    """Build the site into ``out_dir/html``; returns the path of its index.html. Raises ValueError
    (one line) when the [book] extra is missing, there are no notebooks, or the build fails (a cell
    error or a Sphinx warning, shown above it by Sphinx)."""
    absent = missing()
    if absent:
        raise ValueError(f"needs {', '.join(absent)}: pip install 'npvae[book]' "
                         "(or, in a checkout, pip install -e \".[book]\")")
    folder = Path(notebooks_dir) if notebooks_dir else NOTEBOOK_DIR
    notebooks = sorted(folder.glob("*.ipynb"))
    if not notebooks:
        raise ValueError(f"no notebooks (*.ipynb) in {folder}")
    out = Path(out_dir).resolve()
    src = out / "source"  # the notebooks copied beside a generated conf.py and index.md
    if src.exists():
        shutil.rmtree(src)
    (src / "_static").mkdir(parents=True)
    for nb in notebooks:
        shutil.copy2(nb, src / nb.name)
    readme = folder / "README.md"
    (src / "index.md").write_text(index_page(readme.read_text(encoding="utf-8") if readme.exists()
                                             else "# Notebooks\n", notebooks), encoding="utf-8")
    (src / "conf.py").write_text(CONF.format(cache=str(out / ".jupyter_cache"), timeout=CELL_TIMEOUT_S),
                                 encoding="utf-8")
    (src / "_static" / "npvae.css").write_text(CSS, encoding="utf-8")

    from sphinx.cmd.build import build_main

    start = time.perf_counter()
    # -W: a warning fails the build; --keep-going: after listing them all; -E: read every page anew
    status = build_main(["-b", "html", "-W", "--keep-going", "-E", "-q",
                         "-d", str(out / ".doctrees"), str(src), str(out / "html")])
    if status != 0:
        raise ValueError(f"the book did not build (Sphinx exit status {status}: a cell error or a "
                         "warning, shown above)")
    for name in UNUSED_MATHJAX:  # 13 MB of the 24 that sphinx-mathjax-offline copies
        (out / "html" / "_static" / "mathjax" / name).unlink(missing_ok=True)
    index = out / "html" / "index.html"
    log(f"built {len(notebooks)} notebooks into {index} in {time.perf_counter() - start:.0f} s")
    return index
