"""The exercises as a course grades them (issue 18, item 7).

1. Every grader cell imports what it uses: in a kernel that ran only the notebook's setup cell
   (its first code cell), the exercise cell and the grader cell, the grader passes on the
   solution, as after a restart. No grader leans on a module an earlier grader cell imported.
2. Real nbgrader (the optional ``[course]`` extra) on a temporary course folder:
   ``generate_assignment`` makes a release with no solutions and no planted wrong answers;
   ``autograde`` gives the solutions (the source notebooks, submitted as they are) full points
   and an untouched release zero. Skipped when nbgrader is not installed, except under CI
   (``CI`` set), which installs the extra and must run it.
"""

import os

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from npvae import exercises as ex
from conftest import EXPECTED_BACKEND, NOTEBOOK_DIR, NOTEBOOKS, read_notebook

numpy_only = pytest.mark.skipif(EXPECTED_BACKEND != "numpy", reason="run once, on NumPy: the graders are backend-free")


def exercises_and_graders(nb):
    """[(exercise id, its exercise cell, its grader cell)] of the notebook ``nb``, found by the
    cells' metadata ({"npvae": {"exercise": ...}} and {"npvae": {"grader": ...}})."""
    graders = {c.metadata["npvae"]["grader"]: c for c in nb.cells if "grader" in c.metadata.get("npvae", {})}
    return [(c.metadata["npvae"]["exercise"], c, graders.get(c.metadata["npvae"]["exercise"]))
            for c in nb.cells if "exercise" in c.metadata.get("npvae", {})]


WITH_EXERCISES = [p for p in NOTEBOOKS if exercises_and_graders(read_notebook(p))]


# --- 1. each grader cell stands alone --------------------------------------------------------------
@pytest.mark.slow
@numpy_only
@pytest.mark.parametrize("path", WITH_EXERCISES, ids=[p.name[:2] for p in WITH_EXERCISES])
def test_each_grader_passes_after_a_restart(path):
    """One kernel per notebook; before each exercise ``%reset -f`` empties the namespace as a
    restart would (every name, imported modules' included), then the setup cell, the exercise
    cell and its grader cell run, nothing else."""
    nb = read_notebook(path)
    setup = next(c for c in nb.cells if c.cell_type == "code")
    found = exercises_and_graders(nb)
    assert found and all(grader is not None for _, _, grader in found), f"{path.name}: an exercise without its grader"
    client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    failures = []
    with client.setup_kernel():
        for exercise, cell, grader in found:
            for i, c in enumerate([setup, cell, grader]):
                run = nbformat.v4.new_code_cell(("%reset -f\n" if i == 0 else "") + c.source)
                try:
                    client.execute_cell(run, 0)
                except CellExecutionError as err:
                    failures.append(f"{exercise}: its {['setup', 'exercise', 'grader'][i]} cell raised {err.ename}: {err.evalue}")
                    break
    assert not failures, "\n".join(failures)
