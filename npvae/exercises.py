"""Student copies of the notebooks: every exercise's solution replaced by a stub.

The notebooks as stored keep each solution between nbgrader's markers, inside an exercise
cell that opens with ``# Exercise NN.k: ...``::

    def reparameterize(mu, logvar, eps):
        ### BEGIN SOLUTION
        return mu + xp.exp(0.5 * logvar) * eps
        ### END SOLUTION

and the code cell right after it is the exercise's grader (``npvae.grading``). The cell's
metadata says the same for tools: ``{"npvae": {"exercise": "02.1", "wrong": "..."}}`` (the
wrong answer is a plausible mistake the tests put in place of the solution, to check that the
grader catches it) and nbgrader's own ``{"nbgrader": {"solution": true, ...}}``, so teachers
who use nbgrader can use the notebooks as they are.

``student_copy(nb)`` replaces every solution, markers included, by
``raise NotImplementedError("Exercise NN.k: ...")`` at the marker's indentation and drops the
wrong answers; nothing else changes. ``npvae exercises DIR`` writes the student copies of all
notebooks into DIR.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
TITLE = re.compile(r"^#\s*Exercise\s+(\d\d\.\d+)\s*:")


class ExerciseFormatError(ValueError):
    """An exercise cell is malformed (no number, unbalanced markers); the message says where."""


def exercise_id(cell) -> str | None:
    """"02.1" for an exercise cell (its first line ``# Exercise 02.1: ...``), else None."""
    if cell.get("cell_type") != "code" or (BEGIN not in cell.source and END not in cell.source):
        return None
    first = cell.source.lstrip().splitlines()[0] if cell.source.strip() else ""
    match = TITLE.match(first)
    if not match:
        raise ExerciseFormatError(f"a cell with {BEGIN!r} must start with '# Exercise NN.k: title', got {first!r}")
    return match.group(1)


def solution_regions(source):
    """[(begin line, end line, indentation)] of the solution regions in ``source`` (0-based)."""
    lines, regions, start = source.splitlines(), [], None
    for i, line in enumerate(lines):
        if line.strip() == BEGIN:
            if start is not None:
                raise ExerciseFormatError(f"line {i + 1}: {BEGIN!r} inside another solution")
            start = i
        elif line.strip() == END:
            if start is None:
                raise ExerciseFormatError(f"line {i + 1}: {END!r} without {BEGIN!r}")
            regions.append((start, i, lines[start][: len(lines[start]) - len(lines[start].lstrip())]))
            start = None
    if start is not None:
        raise ExerciseFormatError(f"line {start + 1}: {BEGIN!r} without {END!r}")
    return regions


def replace_solutions(source, replacement):
    """``source`` with each solution region (markers included) replaced by ``replacement(indent)``
    (a string of lines without their indentation; it is indented like the marker)."""
    lines = source.splitlines()
    for start, end, indent in reversed(solution_regions(source)):
        new = [indent + line if line else line for line in replacement(indent).splitlines()]
        lines[start : end + 1] = new
    return "\n".join(lines)


def student_copy(nb):
    """A copy of the notebook ``nb`` (nbformat) with every solution replaced by a stub."""
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        ex = exercise_id(cell)
        if ex is None:
            continue
        cell.source = replace_solutions(cell.source, lambda indent, ex=ex: (
            f'raise NotImplementedError("Exercise {ex}: write your solution here")'))
        cell.metadata.get("npvae", {}).pop("wrong", None)
    return nb


def with_wrong_answer(nb, exercise):
    """A copy of ``nb`` whose exercise ``exercise`` has its stored wrong answer in place of the
    solution (every other solution kept): what the tests run to see the grader catch it."""
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        if exercise_id(cell) == exercise:
            wrong = cell.metadata["npvae"]["wrong"]
            cell.source = replace_solutions(cell.source, lambda indent: wrong)
            return nb
    raise ValueError(f"exercise: no exercise {exercise!r} in this notebook")


def write_student_copies(notebooks, out_dir, overwrite=False) -> list[Path]:
    """Write the student copy of each notebook file into ``out_dir``; returns the paths written.

    A notebook already in ``out_dir`` (a student's work) is never overwritten unless
    ``overwrite``; the check is made for all of them before anything is written."""
    import nbformat

    from .io import atomic_open

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"DIR: {out_dir} exists and is not a folder")
    targets = [(Path(p), out_dir / Path(p).name) for p in notebooks]
    for source, target in targets:
        if target.exists() and target.resolve() == source.resolve():
            raise ValueError(f"DIR: {out_dir} is the folder of the notebooks themselves; choose another folder")
    existing = [str(t) for _, t in targets if t.exists()]
    if existing and not overwrite:
        raise ValueError(f"DIR: {existing[0]} exists (a student's work?); choose an empty folder or pass --overwrite")
    copies = [(target, student_copy(nbformat.read(str(source), as_version=4))) for source, target in targets]
    os.makedirs(out_dir, exist_ok=True)
    for target, nb in copies:
        with atomic_open(target, "w") as f:
            nbformat.write(nb, f)
    return [t for t, _ in copies]
