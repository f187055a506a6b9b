"""A class graded with nbgrader 0.9: `python -m labkit.course.release source|release|autograde|feedback`.

`solutions/` is nbgrader's source. `source` writes an nbgrader course folder (default build/nbgrader/) holding
`source/<assignment>/NN_*.ipynb` and `nbgrader_config.py`, each cell carrying nbgrader's metadata:
- a code cell with a solution region is an "autograded answer" (nbgrader replaces the region with its stub);
- each `assert checks.check(...)` statement moves into an "autograder tests" cell of its own, worth
  CODE_POINTS for a function the learner writes, VALUE_POINTS for a value;
- each `checks.predict(key, prediction)` statement moves into a test cell that asserts a number was predicted
  (PREDICTION_POINTS: the prediction counts, not its distance from the measurement);
- the markdown cell after a `**Written question (NN.key).**` cell, a rubric between solution markers, is a
  "manually graded answer" worth the points `written(key, question, points)` registered;
- every other cell is locked (nbgrader restores it before grading);
- a first, locked cell sets LABKIT_GRADED=1, so that `checks.reveal`, `checks.solution` and `checks.use`'s
  fallback refuse in the learner's kernel (labkit.core.settings.graded).
`release`, `autograde` and `feedback` run `nbgrader generate_assignment`, `autograde` and `generate_feedback`
there; submissions go to `<course>/submitted/<student>/<assignment>/NN_*.ipynb`.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import nbformat

from labkit.core import settings
from labkit.course import build, checks

COURSE_DIR = build.ROOT / "build" / "nbgrader"
ASSIGNMENT = "labkit"
CODE_POINTS, VALUE_POINTS, PREDICTION_POINTS = 2, 1, 1
SCHEMA_VERSION = 3  # nbgrader 0.9's cell metadata
WRITTEN_QUESTION = re.compile(r"^\s*\*\*Written question \(([0-9a-z]+\.\w+)\)\.\*\*")
GRADED_CELL = ("import os\n\n"
               "# A graded release: checks.reveal, checks.solution and checks.use's fallback refuse in this kernel.\n"
               'os.environ["LABKIT_GRADED"] = "1"')
CONFIG = '''# nbgrader's settings for labkit's course folder (written by `python -m labkit.course.release source`).
c = get_config()  # noqa: F821 (nbgrader defines it)
c.CourseDirectory.course_id = "labkit"
c.CourseDirectory.root = {root!r}
# A notebook's cells train and measure a model: minutes, not nbgrader's default 30 seconds per cell.
c.Execute.timeout = 1800
# One stub for every answer cell; the checks read a function that raises NotImplementedError as "not attempted".
c.ClearSolutions.code_stub = {{"python": "# YOUR CODE HERE\\nraise NotImplementedError()"}}
c.ClearSolutions.text_stub = {text_stub!r}
'''


def grade_id(kind: str, name: str) -> str:
    """nbgrader's id of a cell: letters, digits, _ and - only ("check-02_linear_quantize")."""
    return f"{kind}-" + re.sub(r"[^A-Za-z0-9_-]", "_", name)


def _meta(gid: str, *, solution: bool = False, grade: bool = False, locked: bool = False,
          points: int | None = None) -> dict:
    meta = {"schema_version": SCHEMA_VERSION, "grade_id": gid, "solution": solution, "grade": grade,
            "locked": locked, "task": False}
    if grade:
        meta["points"] = points
    return meta


def _special(stmt: ast.stmt) -> tuple[str, str] | None:
    """The exercise key of an `assert checks.check(key, ...)` ("check") or a `checks.predict(key, ...)`
    ("predict") statement, as (kind, key); None for any other statement."""
    call = stmt.test if isinstance(stmt, ast.Assert) else stmt.value if isinstance(stmt, ast.Expr) else None
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
            and isinstance(call.func.value, ast.Name) and call.func.value.id == "checks" and call.args
            and isinstance(call.args[0], ast.Constant) and isinstance(call.args[0].value, str)):
        return None
    if isinstance(stmt, ast.Assert) and call.func.attr == "check":
        return ("check", call.args[0].value)
    if isinstance(stmt, ast.Expr) and call.func.attr == "predict":
        return ("predict", call.args[0].value)
    return None


def split_code(source: str, where: str = "a cell") -> list[tuple[str, str | None, str]]:
    """A code cell's source cut into (kind, key, source) pieces in order: kind "check" or "predict" for each
    check or prediction statement (key its exercise), "code" (key None) for the lines between them."""
    # IPython's magics and shell lines are not Python: commented out for the parser, line numbers kept.
    parsable = "\n".join("#" + ln if ln.lstrip().startswith(("%", "!")) else ln for ln in source.split("\n"))
    try:
        tree = ast.parse(parsable)
    except SyntaxError as err:
        raise ValueError(f"{where}: not valid Python ({err.msg}, line {err.lineno}); the release cannot split it.")
    lines = source.split("\n")
    pieces: list[tuple[str, str | None, str]] = []
    start = 0
    for stmt in tree.body:
        found = _special(stmt)
        if found is None:
            continue
        pieces.append(("code", None, "\n".join(lines[start:stmt.lineno - 1])))
        pieces.append((found[0], found[1], "\n".join(lines[stmt.lineno - 1:stmt.end_lineno])))
        start = stmt.end_lineno
    pieces.append(("code", None, "\n".join(lines[start:])))
    return [(kind, key, text.strip("\n")) for kind, key, text in pieces if text.strip()]


def _points(key: str) -> int:
    return CODE_POINTS if checks.get(key).kind == "code" else VALUE_POINTS


def graded_notebook(nb: nbformat.NotebookNode, name: str = "notebook",
                    written_points: Mapping[str, int] | None = None) -> nbformat.NotebookNode:
    """nbgrader's source notebook made from a solved one: cells split and marked as the module says.

    `written_points`: each written question's points by key (default: those registered with `written`)."""
    if written_points is None:
        written_points = {k: checks.WRITTEN[k].points for k in checks.written_questions()}
    nb = nbformat.from_dict(nb)
    cells: list[nbformat.NotebookNode] = []
    graded_cell_added = False
    question: str | None = None  # the key of the written question the previous cell asked

    def add(cell: nbformat.NotebookNode, meta: dict, cell_id: str) -> None:
        cell = nbformat.from_dict(cell)
        cell.id = cell_id[:64]
        cell.metadata = {k: v for k, v in cell.metadata.items() if k != "nbgrader"}
        cell.metadata["nbgrader"] = meta
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        cells.append(cell)

    for i, cell in enumerate(nb.cells):
        where, cid = f"{name}, cell {i}", str(cell.get("id") or f"cell{i}")
        if cell.cell_type == "code":
            if not graded_cell_added:
                add(nbformat.v4.new_code_cell(GRADED_CELL), _meta("labkit-graded", locked=True), "labkit-graded")
                graded_cell_added = True
            for n, (kind, key, text) in enumerate(split_code(cell.source, where)):
                piece = nbformat.from_dict({**cell, "source": text})
                piece_id = cid if n == 0 else f"{cid}-{n}"
                if kind == "check":
                    add(piece, _meta(grade_id("check", key), grade=True, locked=True, points=_points(key)), piece_id)
                elif kind == "predict":
                    piece.source = "assert " + text  # True once a number is predicted, False for `...`
                    meta = _meta(grade_id("predict", key), grade=True, locked=True, points=PREDICTION_POINTS)
                    add(piece, meta, piece_id)
                elif build.BEGIN in text:
                    add(piece, _meta(grade_id("answer", piece_id), solution=True), piece_id)
                else:
                    add(piece, _meta(grade_id("locked", piece_id), locked=True), piece_id)
            question = None
            continue
        if cell.cell_type == "markdown" and build.BEGIN in cell.source:
            if question is None:
                raise ValueError(f"{where}: a markdown answer region must follow a `**Written question (NN.key).**` "
                                 "cell.")
            if question not in written_points:
                raise ValueError(f"{where}: written question {question} is not registered: add written({question!r}, "
                                 "question, points) to its exercises module.")
            points = written_points[question]
            add(cell, _meta(grade_id("written", question), solution=True, grade=True, points=points), cid)
            question = None
            continue
        asked = WRITTEN_QUESTION.match(cell.source) if cell.cell_type == "markdown" else None
        question = asked.group(1) if asked else None
        add(cell, _meta(grade_id("locked", cid), locked=True), cid)
    nb.cells = cells
    return nb


def write_source(course_dir: Path = COURSE_DIR, assignment: str = ASSIGNMENT, notebooks: list[str] | None = None,
                 source_dir: Path = build.SOURCE_DIR, written_points: Mapping[str, int] | None = None) -> list[Path]:
    """nbgrader's course folder from `source_dir`: the marked notebooks (all, or those whose names start with one
    of `notebooks`, e.g. ["00", "02"]) under source/<assignment>/, and nbgrader_config.py. Returns the notebooks."""
    course_dir = Path(course_dir).resolve()
    chosen = [p for p in build.sources(source_dir)
              if not notebooks or any(p.name.startswith(f"{n}_") for n in notebooks)]
    if not chosen:
        raise ValueError(f"no notebook in {source_dir} matches {notebooks}.")
    target = course_dir / "source" / assignment
    target.mkdir(parents=True, exist_ok=True)
    for old in target.glob("*.ipynb"):  # a notebook left from an earlier, wider release would be released again
        old.unlink()
    written = []
    for path in chosen:
        nb = graded_notebook(nbformat.read(path, as_version=4), path.name, written_points)
        out = target / path.name
        nbformat.write(nb, out)
        written.append(out)
    (course_dir / "nbgrader_config.py").write_text(CONFIG.format(root=str(course_dir), text_stub=build.ANSWER_STUB))
    return written


STEPS = {"release": "generate_assignment", "autograde": "autograde", "feedback": "generate_feedback"}


def nbgrader(step: str, course_dir: Path = COURSE_DIR, assignment: str = ASSIGNMENT,
             env: Mapping[str, str] | None = None, extra: list[str] | None = None) -> subprocess.CompletedProcess:
    """Run nbgrader's `step` ("release", "autograde" or "feedback") on `assignment` in `course_dir`."""
    # nbgrader runs `alembic` (its database migrations) by name: this Python's scripts folder comes first on the
    # PATH, set through env(1) so that the rest of the environment passes as it is.
    path = os.pathsep.join([str(Path(sys.executable).parent), settings.raw("PATH", env) or ""])
    command = ["env", f"PATH={path}", sys.executable, "-m", "nbgrader", STEPS[step], assignment, "--force",
               *(extra or [])]
    return subprocess.run(command, cwd=course_dir, env=None if env is None else dict(env), check=True)


def main(argv: list[str] | None = None) -> int:
    """`source [NN ...]` writes the course folder; `release`, `autograde`, `feedback` run nbgrader's step on it."""
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "source":
        for path in write_source(notebooks=args[1:] or None):
            shown = path.relative_to(build.ROOT) if path.is_relative_to(build.ROOT) else path
            print(f"wrote {shown}")
        return 0
    if len(args) == 1 and args[0] in STEPS:
        if not (COURSE_DIR / "nbgrader_config.py").is_file():
            print("no course folder yet: run `python -m labkit.course.release source` (or `make release`) first.",
                  file=sys.stderr)
            return 1
        return nbgrader(args[0]).returncode
    print("usage: python -m labkit.course.release source [NN ...] | release | autograde | feedback", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
