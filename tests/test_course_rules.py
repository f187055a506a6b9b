"""The exercise rules of the course (issue: exercises that make learners think): no hint holds a line of its
reference; every code exercise has three graduated hints; every notebook records two predictions and asks one written question; six code exercises ask for eight
or more lines of the learner's own torch. Each rule is a function checked here on a small synthetic case first."""

from __future__ import annotations

import inspect
import io
import re
import textwrap
import tokenize

import nbformat
import pytest

from labkit.course import build, checks, release
from labkit.course.exercises import Exercise

NOTEBOOKS = {p.name.split("_")[0]: p for p in build.sources()}
MIN_LINE = 8  # a shorter line ("x = 0", "return w") says nothing a hint may not say


def code_lines(source: str) -> list[str]:
    """The lines of `source` that hold code, stripped, with their comments removed (docstrings are not code)."""
    source = textwrap.dedent(source)
    keep: dict[int, list[tuple[int, int]]] = {}
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
    previous = None
    for tok in tokens:
        lone_string = tok.type == tokenize.STRING and previous in (None, tokenize.NEWLINE, tokenize.INDENT,
                                                                    tokenize.DEDENT, tokenize.NL)
        if tok.type not in skip and not lone_string and tok.start[0] == tok.end[0]:
            keep.setdefault(tok.start[0], []).append((tok.start[1], tok.end[1]))
        if tok.type not in (tokenize.COMMENT, tokenize.NL):
            previous = tok.type
    lines = source.split("\n")
    out = []
    for n, spans in sorted(keep.items()):
        out.append(lines[n - 1][min(s for s, _ in spans):max(e for _, e in spans)].strip())
    return out


def reference_source(ex: Exercise) -> str:
    """The source of an exercise's reference: the function it returns for code, else its solution function."""
    answer = ex.solution()
    return inspect.getsource(answer if callable(answer) else ex.solution)


def leaked_lines(ex: Exercise) -> list[tuple[str, str]]:
    """(hint, reference line) for each code line of 8 or more characters of the reference found in a hint;
    spaces do not count (`2**bits - 1` in a hint is the reference's `2 ** bits - 1`)."""
    texts = list(ex.hints.values()) + list(ex.ladder)
    return [(text, line) for line in code_lines(reference_source(ex)) if len(line) >= MIN_LINE
            for text in texts if _squeezed(line) in _squeezed(text)]


def _squeezed(text: str) -> str:
    return re.sub(r"\s+", "", text)


def own_lines(fn) -> int:
    """Lines of a reference function's body: code, not blank, not a comment, not the signature or docstring."""
    lines = code_lines(inspect.getsource(fn))
    body = [ln for ln in lines if not ln.startswith(("def ", "@"))]
    return len(body)


def recorded_predictions(nb: nbformat.NotebookNode) -> set[str]:
    """Keys whose `checks.predict(key, ...)` comes in a cell before their `checks.measured(key, ...)`."""
    predicted: dict[str, int] = {}
    found = set()
    for i, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        for key in re.findall(r"checks\.predict\(\s*[\"']([^\"']+)[\"']", cell.source):
            predicted.setdefault(key, i)
        for key in re.findall(r"checks\.measured\(\s*[\"']([^\"']+)[\"']", cell.source):
            if key in predicted and predicted[key] < i:
                found.add(key)
    return found


def written_with_answers(nb: nbformat.NotebookNode) -> set[str]:
    """Keys of the written questions asked in a markdown cell and followed by a markdown answer cell (a rubric)."""
    found = set()
    for cell, after in zip(nb.cells, nb.cells[1:]):
        asked = release.WRITTEN_QUESTION.match(cell.source) if cell.cell_type == "markdown" else None
        if asked and after.cell_type == "markdown" and after.source.strip().startswith(build.BEGIN) \
                and after.source.strip().endswith(build.END):
            found.add(asked.group(1))
    return found


# The rules on a small synthetic case: each catches what it must and passes what it may.

def _tiny_exercise(hints: dict[str, str], ladder=()) -> Exercise:
    def _solution():
        def scale_of(lo, hi, bits):
            """the step between two codes"""
            levels = 2 ** bits - 1  # the codes
            return (hi - lo) / levels
        return scale_of
    return Exercise("99.scale", "q", lambda a: None, _solution, hints, kind="code", ladder=tuple(ladder))


def test_a_hint_that_holds_a_reference_line_is_caught_and_an_idea_is_not():
    leaking = _tiny_exercise({"wrong": "use levels = 2**bits - 1 then divide"})
    assert [line for _, line in leaked_lines(leaking)] == ["levels = 2 ** bits - 1"]
    in_ladder = _tiny_exercise({"wrong": "count the steps"}, ladder=("a", "b", "return (hi - lo) / levels"))
    assert [line for _, line in leaked_lines(in_ladder)] == ["return (hi - lo) / levels"]
    fine = _tiny_exercise({"wrong": "the range is split into one step fewer than there are codes"},
                          ladder=("the idea", "the codes, counted", "with 2 bits and a range of 3: a step of 1"))
    assert leaked_lines(fine) == []
    assert own_lines(fine.solution()) == 2  # the docstring and the comment are not lines the learner writes


def test_predictions_and_written_questions_are_found_in_a_synthetic_notebook():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell('checks.predict("99.a", prediction)'),
                nbformat.v4.new_code_cell('checks.measured("99.a", speedup)\nchecks.measured("99.b", 2)'),
                nbformat.v4.new_code_cell('checks.predict("99.b", prediction)'),
                nbformat.v4.new_markdown_cell("**Written question (99.why).** Why?"),
                nbformat.v4.new_markdown_cell(f"{build.BEGIN}\n*Rubric (2 points):* ...\n{build.END}"),
                nbformat.v4.new_markdown_cell("**Written question (99.lost).** Asked, with no answer cell.")]
    assert recorded_predictions(nb) == {"99.a"}  # 99.b is predicted after it is measured
    assert written_with_answers(nb) == {"99.why"}


# The rules on the course itself.

@pytest.mark.parametrize("notebook", sorted(NOTEBOOKS))
def test_no_hint_holds_a_line_of_its_reference(notebook):
    leaks = [f"{key}: {line!r} in {text!r}" for key in checks.exercises(notebook)
             for text, line in leaked_lines(checks.get(key))]
    assert not leaks, "a hint gives the line to type; say what is wrong and why instead:\n" + "\n".join(leaks)


@pytest.mark.parametrize("notebook", sorted(NOTEBOOKS))
def test_every_code_exercise_has_a_ladder_of_three_hints(notebook):
    bare = [key for key in checks.exercises(notebook, kind="code") if len(checks.get(key).ladder) != 3]
    assert not bare, f"code exercises without graduated hints (concept, step, smaller case): {bare}"


@pytest.mark.parametrize("notebook", sorted(NOTEBOOKS))
def test_every_notebook_records_two_predictions(notebook):
    nb = nbformat.read(NOTEBOOKS[notebook], as_version=4)
    used = recorded_predictions(nb) & set(checks.predictions(notebook))
    assert len(used) >= 2, f"{notebook}: registered predictions predicted before they are measured: {sorted(used)}"


@pytest.mark.parametrize("notebook", sorted(NOTEBOOKS))
def test_every_notebook_asks_a_written_question_with_its_answer_cell(notebook):
    nb = nbformat.read(NOTEBOOKS[notebook], as_version=4)
    asked = written_with_answers(nb) & set(checks.written_questions(notebook))
    assert asked, f"{notebook}: no registered written question followed by its rubric cell"


def test_six_code_exercises_ask_for_eight_lines_or_more():
    long = {key: own_lines(checks.get(key).solution()) for key in checks.exercises(kind="code")}
    long = {k: n for k, n in long.items() if n >= 8}
    assert len(long) >= 6, f"code exercises with references of 8 or more lines: {long}"


# No exercise question in a comment: code comments stay English in the Chinese edition, so a question asked only
# there cannot be read by a learner who reads the notebook in Chinese. The question belongs in the markdown cell
# before the exercise; the code may keep short comments that ask nothing.
ASKS = re.compile(r"\?\s*$|^(Exercise\b|Predict before you run:|\d\d[a-z]?\.\w+:)")


def questions_in_comments(nb: nbformat.NotebookNode) -> list[tuple[str, str]]:
    """(cell id, comment) for each comment that asks a question in a cell holding an exercise (a solution block or a
    `checks.predict`): a comment ending in "?", or starting with "Exercise", "Predict before you run:" or an exercise
    key followed by ":". Comments inside the solution block are the reference's: the learner edition drops them."""
    found = []
    for cell in nb.cells:
        if cell.cell_type != "code" or not (build.BEGIN in cell.source or "checks.predict(" in cell.source):
            continue
        inside = False
        for tok in tokenize.generate_tokens(io.StringIO(_magics_out(cell.source)).readline):
            if tok.type != tokenize.COMMENT:
                continue
            text = tok.string.lstrip("#").strip()
            if tok.string.startswith((build.BEGIN, build.END)):
                inside = tok.string.startswith(build.BEGIN)
            elif not inside and ASKS.search(text):
                found.append((cell.get("id", "?"), tok.string))
    return found


def _magics_out(source: str) -> str:
    """The cell with its IPython lines (`%matplotlib`, `!pip`) blanked, so that tokenize reads it as Python."""
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.split("\n"))


def test_a_question_in_a_comment_is_caught_and_a_note_is_not():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(f"# 99.pick: which format wins?\n{build.BEGIN}\nanswer = 'csr'  # why? fewer "
                                          f"bytes?\n{build.END}\nassert checks.check('99.pick', answer)"),
                nbformat.v4.new_code_cell("# Predict before you run: the speed-up at batch 32\n"
                                          f"{build.BEGIN}\nprediction = 2.0\n{build.END}\n"
                                          "checks.predict('99.speedup', prediction)"),
                nbformat.v4.new_code_cell("# Exercise 2 (a number). Two snippets pruned together\n"
                                          f"{build.BEGIN}\nanswer = 3\n{build.END}"),
                nbformat.v4.new_code_cell("# Your prediction (the question is in the text above)\n"
                                          f"{build.BEGIN}\nprediction = 2.0  # is it?\n{build.END}\n"
                                          "checks.predict('99.speedup', prediction)  # printed beside the measurement"),
                nbformat.v4.new_code_cell("x = 1  # does this cell ask anything? no exercise here")]
    for i, c in enumerate(nb.cells):
        c.id = f"c{i}"
    assert [cid for cid, _ in questions_in_comments(nb)] == ["c0", "c1", "c2"]


@pytest.mark.parametrize("notebook", sorted(NOTEBOOKS))
def test_no_exercise_question_is_asked_in_a_comment(notebook):
    asked = questions_in_comments(nbformat.read(NOTEBOOKS[notebook], as_version=4))
    assert not asked, (f"{notebook}: questions asked in code comments, which the Chinese edition cannot translate; "
                       "ask them in the markdown cell before the exercise:\n"
                       + "\n".join(f"cell {cid}: {text}" for cid, text in asked))
