"""The teaching notebooks in notebooks/: their conventions, and that each runs top to bottom.

Each notebook is executed headless with nbclient in a fresh ``python3`` kernel whose working
directory is notebooks/. The kernel inherits this process's environment, so
``NPVAE_BACKEND=strict pytest`` runs them on the strict backend. A cell that raises, including
a failed check cell, fails the test with nbclient's ``CellExecutionError``, which shows the
cell's source and its traceback.
"""

import re

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import NOTEBOOK_DIR, NOTEBOOKS, read_notebook

EXPECTED_COUNT = 10  # 01..08 in the order of Lecture 21, then 09 (the full-covariance posterior), 10 (IWAE)
CELL_TIMEOUT_S = 300
KERNEL = "python3"

by_name = pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])


def test_there_are_ten_notebooks():
    names = [p.name for p in NOTEBOOKS]
    assert len(names) == EXPECTED_COUNT, f"expected {EXPECTED_COUNT} notebooks in {NOTEBOOK_DIR}, got {names}"


@by_name
def test_notebook_follows_the_conventions(path):
    nb = read_notebook(path)
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == KERNEL, "kernelspec: expected name 'python3'"
    code = [c for c in nb.cells if c.cell_type == "code"]
    markdown = [c for c in nb.cells if c.cell_type == "markdown"]
    assert code, "expected at least one code cell"

    # Stored cleared of outputs, so that diffs show only what a person wrote.
    for i, cell in enumerate(code):
        assert cell.get("outputs", []) == [], f"code cell {i}: expected no stored outputs (clear them before committing)"
        assert cell.get("execution_count") is None, f"code cell {i}: expected execution_count None"

    # The first code cell imports npvae; every code cell opens with a comment saying what it does.
    assert "import npvae" in code[0].source or "from npvae" in code[0].source, \
        "the first code cell should import npvae"
    for i, cell in enumerate(code):
        lines = [line.strip() for line in cell.source.splitlines() if line.strip()]
        assert lines and lines[0].startswith("#"), \
            f"code cell {i}: expected a first line '# what this cell does', got {lines[:1]}"

    # Headings go down one level at a time (the book, `npvae book`, refuses H1 -> H3), and sections are numbered
    # in order ("## 1.", "## 2.", ...).
    level, numbers = 0, []
    for i, cell in enumerate(markdown):
        fenced = False
        for line in cell.source.splitlines():
            fenced ^= line.startswith("```")
            heading = re.match(r"(#+) (\d+\.)?", line)
            if heading and not fenced:
                assert len(heading.group(1)) <= level + 1, f"markdown cell {i}: heading jumps from H{level} to {line!r}"
                level = len(heading.group(1))
                if level == 2 and heading.group(2):
                    numbers.append(int(heading.group(2)[:-1]))
    assert numbers == list(range(1, len(numbers) + 1)), f"sections numbered {numbers}, expected 1, 2, 3, ..."

    # The lecture's equations are stated in LaTeX display math.
    assert sum(c.source.count("$$") for c in markdown) >= 2, "expected at least one $$ ... $$ equation"

    # It ends with a short exercise, "Try it", and after it at most a "Going further" section (the detours).
    going = [i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and c.source.startswith("## Going further")]
    assert len(going) <= 1, "expected at most one '## Going further' section"
    last = nb.cells[going[0] - 1] if going else nb.cells[-1]
    assert last.cell_type == "markdown" and "try it" in last.source.lower(), \
        "the last cell (before '## Going further', if any) should be a markdown 'Try it' exercise"


@pytest.mark.slow
@by_name
def test_notebook_runs(path):
    nb = read_notebook(path)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name=KERNEL,
                            resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    client.execute()  # raises CellExecutionError at the first cell that fails
