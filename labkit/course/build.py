"""The learner edition, generated from the solved one: `python -m labkit.course.build build` (or `check`).

`solutions/` holds one source notebook per lesson, with every answer in place and marked the way nbgrader
marks it. The learner edition in `notebooks/` is made from it:
- the lines between `### BEGIN SOLUTION` and `### END SOLUTION` become a stub: `...` inside a function,
  `name = ...` for each name the solution assigns at the top level of a cell;
- the lines between `### BEGIN HIDDEN TESTS` and `### END HIDDEN TESTS` are dropped;
- a markdown cell's lines between the same markers (a written question's rubric) become ANSWER_STUB, nbgrader's
  own text for a written answer;
- `assert checks.check(...)` loses its `assert`: the solved edition must pass every check, the learner
  edition runs to the end with nothing answered, each check saying "not attempted yet";
- outputs and execution counts are cleared.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat

from labkit.course import checks

ROOT = Path(__file__).resolve().parents[2]  # the repository: labkit/course/ is two levels down
SOURCE_DIR, LEARNER_DIR = ROOT / "solutions", ROOT / "notebooks"
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
STUB_NOTE = "# YOUR CODE HERE"
ANSWER_STUB = "YOUR ANSWER HERE"
_ASSIGNED = re.compile(r"^([A-Za-z_]\w*(?:\s*,\s*[A-Za-z_]\w*)*)\s*=[^=]")


def _stub(region: list[str], indent: str) -> list[str]:
    """What a learner sees in place of a solution region."""
    if indent:  # inside a function: an empty body that returns None, which the checks read as "not attempted"
        return [f"{indent}{STUB_NOTE}", f"{indent}..."]
    names: list[str] = []
    for line in region:
        m = _ASSIGNED.match(line)
        if m and m.group(1) not in names:
            names.append(m.group(1))
    stubs = [f"{n} = " + ", ".join("..." for _ in n.split(",")) for n in names] or ["..."]
    return [STUB_NOTE] + stubs


def learner_source(source: str, where: str = "a cell") -> str:
    """One code cell's source with its solution regions stubbed and its hidden tests removed."""
    out: list[str] = []
    region: list[str] | None = None
    hidden = False
    indent = ""
    for line in source.split("\n"):
        mark = line.strip()
        if mark == BEGIN:
            if region is not None or hidden:
                raise ValueError(f"{where}: {BEGIN} inside another region; close it with {END} first.")
            region, indent = [], line[: len(line) - len(line.lstrip())]
        elif mark == END:
            if region is None:
                raise ValueError(f"{where}: {END} without a {BEGIN} before it.")
            out.extend(_stub(region, indent))
            region = None
        elif mark == BEGIN_HIDDEN:
            hidden = True
        elif mark == END_HIDDEN:
            hidden = False
        elif region is not None:
            region.append(line)
        elif not hidden:
            out.append(re.sub(r"^assert (checks\.check\()", r"\1", line))
    if region is not None or hidden:
        raise ValueError(f"{where}: a region is not closed; add {END if region is not None else END_HIDDEN}.")
    return "\n".join(out)


def learner_markdown(source: str, where: str = "a cell") -> str:
    """One markdown cell's source with its solution region (a written answer's rubric) replaced by ANSWER_STUB."""
    out: list[str] = []
    inside = False
    for line in source.split("\n"):
        mark = line.strip()
        if mark == BEGIN:
            if inside:
                raise ValueError(f"{where}: {BEGIN} inside another region; close it with {END} first.")
            inside = True
            out.append(ANSWER_STUB)
        elif mark == END:
            if not inside:
                raise ValueError(f"{where}: {END} without a {BEGIN} before it.")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{where}: a region is not closed; add {END}.")
    return "\n".join(out)


def learner_edition(nb: nbformat.NotebookNode, name: str = "notebook") -> nbformat.NotebookNode:
    """A copy of a solved notebook with answers stubbed and outputs cleared."""
    nb = nbformat.from_dict(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            cell.source = learner_source(cell.source, f"{name}, cell {i}")
            cell.outputs, cell.execution_count = [], None
        elif cell.cell_type == "markdown":
            cell.source = learner_markdown(cell.source, f"{name}, cell {i}")
    return nb


def _render(path: Path) -> str:
    nb = nbformat.read(path, as_version=4)
    return nbformat.writes(learner_edition(nb, path.name)) + "\n"


def sources(source_dir: Path = SOURCE_DIR) -> list[Path]:
    """The solved notebooks the learner edition is made from."""
    return sorted(source_dir.glob("*.ipynb"))


def build(source_dir: Path = SOURCE_DIR, out_dir: Path = LEARNER_DIR) -> list[Path]:
    """Write the learner edition of every source notebook; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for src in sources(source_dir):
        target = out_dir / src.name
        tmp = target.with_suffix(".tmp")
        tmp.write_text(_render(src), encoding="utf-8")
        tmp.replace(target)  # atomic: a half-written notebook never replaces a good one
        written.append(target)
    return written


def stale(source_dir: Path = SOURCE_DIR, out_dir: Path = LEARNER_DIR) -> list[str]:
    """Learner notebooks that differ from what `build` would write, or that have no source (empty when in step)."""
    names = {p.name for p in sources(source_dir)}
    bad = [p.name for p in sources(source_dir)
           if not (out_dir / p.name).is_file() or (out_dir / p.name).read_text(encoding="utf-8") != _render(p)]
    bad += [p.name for p in sorted(out_dir.glob("*.ipynb")) if p.name not in names]
    return bad


def exercise_table() -> str:
    """Every exercise as a markdown table: notebook, key, kind, what the learner writes, its targeted hints."""
    rows = ["| notebook | key | kind | the learner writes | targeted hints |", "| --- | --- | --- | --- | --- |"]
    for key in checks.exercises():
        ex = checks.get(key)
        hints = ", ".join(h for h in ex.hints if h != "wrong")
        question = ex.question.replace("|", "\\|")  # a bar inside a cell would end it
        rows.append(f"| {key.split('.')[0]} | `{key}` | {ex.kind} | {question} | {hints} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """`build` writes notebooks/ from solutions/; `check` exits 1 naming any learner notebook out of step;
    `exercises` prints the table of every exercise and its hints (for a teacher's plan)."""
    args = sys.argv[1:] if argv is None else argv
    if args == ["exercises"]:
        print(exercise_table())
        return 0
    if args == ["build"]:
        for path in build():
            print(f"wrote {path.relative_to(ROOT)}")
        return 0
    if args == ["check"]:
        bad = stale()
        for name in bad:
            print(f"notebooks/{name} is out of step with solutions/{name}: run `python -m labkit.course.build build`.")
        return 1 if bad else 0
    print("usage: python -m labkit.course.build build|check|exercises", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
