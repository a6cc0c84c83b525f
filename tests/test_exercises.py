"""The exercises: student copies (npvae exercises DIR), and graders that catch real mistakes.

For every notebook with exercises: the student copy stops at its first exercise with the
stub's NotImplementedError; and for every exercise, the notebook with that one solution
replaced by its stored wrong answer fails at that exercise's grader, with ExerciseFailed (not
before, and not by a crash elsewhere). These run the notebooks up to the cell that must fail,
on NumPy only (the notebooks as stored run on every backend in test_notebooks.py).
"""

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from npvae import cli
from npvae import exercises as ex
from conftest import EXPECTED_BACKEND, NOTEBOOK_DIR, NOTEBOOKS, read_notebook
from planted_answers import WRONG


def exercise_cells(nb):
    return [(i, c) for i, c in enumerate(nb.cells) if ex.exercise_id(c)]


ALL = [(p, ex.exercise_id(c)) for p in NOTEBOOKS for _, c in exercise_cells(read_notebook(p))]
WITH_EXERCISES = sorted({p for p, _ in ALL})
numpy_only = pytest.mark.skipif(EXPECTED_BACKEND != "numpy", reason="run once, on NumPy: the graders are backend-free")


# --- the machinery, on a small notebook made here ------------------------------------------------
def tiny_notebook():
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("# setup\nimport math"),
        nbformat.v4.new_code_cell(
            "# Exercise 01.1: a square\ndef square(a):\n    \"\"\"a^2\"\"\"\n    ### BEGIN SOLUTION\n"
            "    b = a * a\n    return b\n    ### END SOLUTION\n",
            metadata={"npvae": {"exercise": "01.1"}}),
        nbformat.v4.new_code_cell("# Grader for exercise 01.1\nassert square(3) == 9, 'Exercise 01.1: not a square'",
                                  metadata={"npvae": {"grader": "01.1"}}),
        nbformat.v4.new_markdown_cell("Try it"),
    ]
    return nb


def test_student_copy_replaces_only_the_solution():
    nb = tiny_notebook()
    student = ex.student_copy(nb)
    assert student.cells[1].source == ("# Exercise 01.1: a square\ndef square(a):\n    \"\"\"a^2\"\"\"\n"
                                       "    raise NotImplementedError(\"Exercise 01.1: write your solution here\")")
    for i in (0, 2, 3):
        assert student.cells[i] == nb.cells[i]
    assert "    b = a * a" in nb.cells[1].source  # the original is untouched
    wrong = ex.with_answer(nb, "01.1", "return a + a")
    assert "    return a + a" in wrong.cells[1].source and "### BEGIN" not in wrong.cells[1].source


@pytest.mark.parametrize("source, message", [
    ("# Exercise 01.1: x\n### BEGIN SOLUTION\n", "without '### END SOLUTION'"),
    ("# Exercise 01.1: x\n### END SOLUTION\n", "without '### BEGIN SOLUTION'"),
    ("# a cell\n### BEGIN SOLUTION\n### END SOLUTION\n", "must start with '# Exercise NN.k: title'"),
])
def test_malformed_exercise_cells_are_named(source, message):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source)]
    with pytest.raises(ex.ExerciseFormatError, match=message):
        ex.student_copy(nb)


def test_npvae_exercises_writes_copies_and_never_overwrites_a_students_work(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    nbformat.write(tiny_notebook(), str(src / "01_tiny.ipynb"))
    out = tmp_path / "students"
    assert cli.main(["exercises", str(out), "--notebooks", str(src)]) == 0
    copy = read_notebook(out / "01_tiny.ipynb")
    assert "NotImplementedError(\"Exercise 01.1" in copy.cells[1].source
    (out / "01_tiny.ipynb").write_text((out / "01_tiny.ipynb").read_text().replace("raise NotImplementedError", "pass #"))
    before = (out / "01_tiny.ipynb").read_text()
    assert cli.main(["exercises", str(out), "--notebooks", str(src)]) == 2
    assert "exists (a student's work?)" in capsys.readouterr().err
    assert (out / "01_tiny.ipynb").read_text() == before
    assert cli.main(["exercises", str(out), "--notebooks", str(src), "--overwrite"]) == 0
    assert cli.main(["exercises", str(src), "--notebooks", str(src), "--overwrite"]) == 2  # not over the originals
    assert "the folder of the notebooks themselves" in capsys.readouterr().err


# --- the notebooks' exercises --------------------------------------------------------------------
def test_there_are_at_least_eight_exercises_each_followed_by_its_grader():
    ids = [e for _, e in ALL]
    assert len(ids) >= 8 and len(set(ids)) == len(ids), ids
    for path in WITH_EXERCISES:
        nb = read_notebook(path)
        for i, cell in exercise_cells(nb):
            e = ex.exercise_id(cell)
            assert path.name.startswith(e.split(".")[0]), f"{path.name}: exercise {e} is numbered for another notebook"
            assert cell.metadata["npvae"] == {"exercise": e}  # no planted answer: nbgrader would release it
            assert WRONG[e].strip(), f"{e}: no planted wrong answer in tests/planted_answers.py"
            assert cell.metadata["nbgrader"]["solution"] is True
            grader = nb.cells[i + 1]
            assert grader.cell_type == "code" and grader.metadata["npvae"]["grader"] == e, f"{path.name}: {e}"
            assert grader.metadata["nbgrader"]["grade"] is True


def run_until_error(nb, stop_after):
    """Execute ``nb`` cell by cell up to cell ``stop_after``; returns (index, error) of the first
    cell that raised, or (None, None)."""
    client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    with client.setup_kernel():
        for i, cell in enumerate(nb.cells[: stop_after + 1]):
            if cell.cell_type != "code":
                continue
            try:
                client.execute_cell(cell, i)
            except CellExecutionError as err:
                return i, err
    return None, None


@pytest.mark.slow
@numpy_only
@pytest.mark.parametrize("path, exercise", ALL, ids=[e for _, e in ALL])
def test_a_wrong_answer_fails_at_its_own_grader(path, exercise):
    original = read_notebook(path)
    index_of = {ex.exercise_id(c): i for i, c in exercise_cells(original)}
    nb = ex.with_answer(original, exercise, WRONG[exercise])
    grader = index_of[exercise] + 1
    index, err = run_until_error(nb, grader)
    assert index == grader, f"expected the grader of {exercise} (cell {grader}) to fail, got cell {index}: {err}"
    assert err.ename == "ExerciseFailed" and f"Exercise {exercise}" in err.evalue, err.evalue
