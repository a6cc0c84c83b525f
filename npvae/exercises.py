"""Student copies of the notebooks: every exercise's solution replaced by a stub.

The notebooks as stored keep each solution between nbgrader's markers, inside an exercise
cell that opens with ``# Exercise NN.k: ...``::

    def reparameterize(mu, logvar, eps):
        ### BEGIN SOLUTION
        return mu + xp.exp(0.5 * logvar) * eps
        ### END SOLUTION

and the code cell right after it is the exercise's grader (``npvae.grading``). The cell's
metadata says the same for tools: ``{"npvae": {"exercise": "02.1"}}``, and nbgrader's own
``{"nbgrader": {"solution": true, ...}}``, so teachers who use nbgrader can use the notebooks
as they are. (The planted wrong answers that the tests put in place of each solution, to see
its grader catch them, live in the tests, never in a notebook that nbgrader would release.)

``student_copy(nb)`` replaces every solution, markers included, by
``raise NotImplementedError("Exercise NN.k: ...")`` at the marker's indentation; nothing else
changes. ``npvae exercises DIR`` writes the student copies of all
notebooks into DIR; ``read_notebook`` refuses, in one line naming the file and the key, a file
that is not such a notebook, and every notebook is read and copied before any is written.
"""

from __future__ import annotations

import copy
import json
import os
import re
import stat
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


def setup_notebook():
    """What every notebook's setup cell does: turn npvae's textbook code on for the rest of the
    session (``npvae.textbook()``: the code you read is the code that runs, in ``npvae.fit``'s
    training too), print one line naming the array backend (``NPVAE_BACKEND``), and return its
    array namespace ``xp`` (NumPy, or array_api_strict)."""
    from . import backend, replaceable

    replaceable.textbook()
    active = backend.get_backend()
    print(f"npvae backend: {active.name} (the textbook code)")
    return active.xp


def student_copy(nb, only=None):
    """A copy of the notebook ``nb`` (nbformat) with every solution replaced by a stub; with
    ``only`` (exercise ids), only those exercises' solutions (a student who skipped them)."""
    nb = copy.deepcopy(nb)
    for i, cell in enumerate(nb.cells):
        try:
            ex = exercise_id(cell)
            solution_regions(cell.source)
        except ExerciseFormatError as exc:
            raise ExerciseFormatError(f"cells[{i}]: {exc}") from None
        if ex is None or (only is not None and ex not in only):
            continue
        cell.source = replace_solutions(cell.source, lambda indent, ex=ex: (
            f'raise NotImplementedError("Exercise {ex}: write your solution here")'))
    return nb


def with_answer(nb, exercise, answer):
    """A copy of ``nb`` whose exercise ``exercise`` has ``answer`` (code, indented as the
    solution is) in place of its solution, every other solution kept: what the tests run to see
    the grader catch a planted mistake."""
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        if exercise_id(cell) == exercise:
            cell.source = replace_solutions(cell.source, lambda indent: answer)
            return nb
    raise ValueError(f"exercise: no exercise {exercise!r} in this notebook")


def load(ids, folder="."):
    """{exercise: the function its exercise cell defines} for the exercises ``ids`` ("02.1", ...),
    each read from its notebook in ``folder`` (``NN_*.ipynb`` for exercise NN.k; the working
    folder by default, the notebooks' own when they run): the code a student saved, run on its
    own in a namespace with what the notebooks' setup cells import (npvae, dist, backend, math,
    np). A stub left in place raises its NotImplementedError when the function is called."""
    import math

    import numpy as np

    import npvae
    from npvae import backend, distributions

    found = {}
    for exercise in ids:
        paths = sorted(Path(folder).glob(f"{exercise.split('.')[0]}_*.ipynb"))
        cells = [c for p in paths for c in read_notebook(p).cells if exercise_id(c) == exercise]
        if not cells:
            raise ValueError(f"exercise {exercise}: no notebook in {folder} has it (expected "
                             f"{exercise.split('.')[0]}_*.ipynb with a cell '# Exercise {exercise}: ...')")
        name = re.search(r"^(?:def|class)\s+(\w+)", cells[0].source, re.M).group(1)
        namespace = {"npvae": npvae, "dist": distributions, "backend": backend, "math": math, "np": np}
        exec(compile(cells[0].source, f"<exercise {exercise}>", "exec"), namespace)
        found[exercise] = namespace[name]
    return found


def read_notebook(path):
    """The notebook file ``path`` (nbformat 4), or ValueError in one line naming the file and the
    key: a folder, a FIFO or an unreadable file; not JSON; ``nbformat`` not 4; ``cells`` not a
    list; a cell whose ``cell_type``, ``source``, ``metadata`` or ``metadata.npvae`` is missing or
    of the wrong type (what ``student_copy`` reads); what nbformat itself refuses."""
    import nbformat

    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            kind = "a folder" if os.path.isdir(path) else "something else (a FIFO, a device?)"
            raise ValueError(f"{path}: expected a notebook file, got {kind}")
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except FileNotFoundError:
        raise ValueError(f"{path}: expected a notebook file, got nothing there (a dangling link?)") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not JSON, not even UTF-8 text (byte {exc.start})") from None
    try:
        nb = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"{path}: not JSON ({exc})") from None

    def refuse(where, what, value):
        shown = repr(value) if isinstance(value, (str, int, float)) else ""
        got = "nothing" if value is _MISSING else shown if 0 < len(shown) <= 40 else type(value).__name__
        raise ValueError(f"{path}: {where}: expected {what}, got {got}")

    if not isinstance(nb, dict):
        refuse("the file", "a JSON object (a notebook)", nb)
    if nb.get("nbformat", _MISSING) != 4:
        refuse("nbformat", "4 (the notebook format npvae writes)", nb.get("nbformat", _MISSING))
    if not isinstance(nb.get("cells", _MISSING), list):
        refuse("cells", "a list of cells", nb.get("cells", _MISSING))
    if not isinstance(nb.get("metadata", _MISSING), dict):
        refuse("metadata", "a JSON object", nb.get("metadata", _MISSING))
    for i, cell in enumerate(nb["cells"]):
        if not isinstance(cell, dict):
            refuse(f"cells[{i}]", "a JSON object (a cell)", cell)
        if cell.get("cell_type", _MISSING) not in ("code", "markdown", "raw"):
            refuse(f"cells[{i}].cell_type", "'code', 'markdown' or 'raw'", cell.get("cell_type", _MISSING))
        source = cell.get("source", _MISSING)
        if not (isinstance(source, str) or isinstance(source, list) and all(isinstance(s, str) for s in source)):
            refuse(f"cells[{i}].source", "a string or a list of strings", source)
        if not isinstance(cell.get("metadata", _MISSING), dict):
            refuse(f"cells[{i}].metadata", "a JSON object", cell.get("metadata", _MISSING))
        if not isinstance(cell["metadata"].get("npvae", {}), dict):
            refuse(f"cells[{i}].metadata.npvae", "a JSON object", cell["metadata"]["npvae"])
    try:
        return nbformat.reads(text, as_version=4)
    except Exception as exc:  # nbformat's own checks (jsonschema's and others): one line, with the file
        raise ValueError(f"{path}: not a notebook nbformat can read ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else 'no details'})") from None


_MISSING = object()


def write_student_copies(notebooks, out_dir, overwrite=False) -> list[Path]:
    """Write the student copy of each notebook file into ``out_dir``; returns the paths written.

    A notebook already in ``out_dir`` (a student's work) is never overwritten unless
    ``overwrite``; the check is made for all of them, and every notebook is read (``read_notebook``)
    and copied, before anything is written."""
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
    copies = []
    for source, target in targets:  # every notebook read and copied before any is written
        try:
            copies.append((target, student_copy(read_notebook(source))))
        except ExerciseFormatError as exc:
            raise ExerciseFormatError(f"{source}: {exc}") from None
    os.makedirs(out_dir, exist_ok=True)
    for target, nb in copies:
        with atomic_open(target, "w") as f:
            nbformat.write(nb, f)
    return [t for t, _ in copies]
