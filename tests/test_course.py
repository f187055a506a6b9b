"""The learner edition is generated from the solved one, is in step with it, and shows no answer."""

import json
import re

import pytest

from labkit.course import build as course
from labkit.course import checks

LEARNER = sorted(course.LEARNER_DIR.glob("*.ipynb"))
CODE_KEYS = checks.exercises(kind="code")


def _source_of(key: str):
    """The solved notebook an exercise key belongs to: "00b.to_bf16" -> 00b_*.ipynb, never 00_*.ipynb."""
    return next(p for p in course.sources() if p.name.split("_")[0] == key.split(".")[0])


def _code(path) -> str:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")


def test_committed_learner_edition_equals_what_the_generator_makes():
    assert course.stale() == [], "run `python -m labkit.course.build build` and commit notebooks/"


def test_every_source_has_a_learner_notebook_and_the_reverse():
    assert [p.name for p in course.sources()] == [p.name for p in LEARNER]


@pytest.mark.parametrize("path", LEARNER, ids=[p.stem.split("_")[0] for p in LEARNER])
def test_learner_edition_holds_no_solution_and_no_assert_on_a_check(path):
    code = _code(path)
    assert "BEGIN SOLUTION" not in code and "HIDDEN TESTS" not in code
    assert not re.search(r"^\s*assert checks\.check\(", code, re.M)


@pytest.mark.parametrize("key", CODE_KEYS)
def test_no_code_answer_is_visible_in_the_learner_edition(key):
    import ast
    import inspect
    import textwrap

    ref = textwrap.dedent(inspect.getsource(checks.solution(key)))
    start = ast.parse(ref).body[0].body[0].lineno  # the first line after the signature, however it is wrapped
    body = [ln.strip() for ln in ref.splitlines()[start - 1:]
            if ln.strip() and not ln.strip().startswith(("#", '"""'))]
    code = "\n".join(_code(p) for p in LEARNER)
    shown = [ln for ln in body if len(ln) > 25 and ln in code]
    assert not shown, f"{key}: the learner edition shows lines of the reference: {shown}"


@pytest.mark.parametrize("key", checks.exercises())
def test_every_exercise_is_checked_in_its_solved_notebook(key):
    nb = _source_of(key)
    # A design is measured against a speed budget on the machine: checked (and rerun by a grader), not asserted.
    call = "" if checks.get(key).kind == "design" else "assert "
    assert f'{call}checks.check("{key}"' in _code(nb), f"{nb.name} never asserts the check of {key}"


def test_solution_regions_become_stubs():
    src = "\n".join(["def f(x):", "    ### BEGIN SOLUTION", "    return x + 1", "    ### END SOLUTION",
                     "### BEGIN SOLUTION", "a, b = 1, 2", "c = a", "### END SOLUTION",
                     "### BEGIN HIDDEN TESTS", "assert f(1) == 2", "### END HIDDEN TESTS",
                     'assert checks.check("00.x", c)'])
    out = course.learner_source(src)
    assert out.splitlines() == ["def f(x):", "    # YOUR CODE HERE", "    ...", "# YOUR CODE HERE",
                                "a, b = ..., ...", "c = ...", 'checks.check("00.x", c)']


@pytest.mark.parametrize("src", ["### BEGIN SOLUTION\nx = 1", "x = 1\n### END SOLUTION",
                                 "### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION"])
def test_unbalanced_markers_are_a_clear_error(src):
    with pytest.raises(ValueError, match="SOLUTION"):
        course.learner_source(src, "nb, cell 3")


def test_check_command_names_a_stale_notebook(tmp_path, capsys, monkeypatch):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    (src / "00_x.ipynb").write_text(json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
        {"cell_type": "code", "id": "a", "metadata": {}, "execution_count": 3, "outputs": [],
         "source": "### BEGIN SOLUTION\nanswer = 42\n### END SOLUTION"}]}))
    course.build(src, out)
    assert course.stale(src, out) == []
    assert "answer = ..." in "".join(json.loads((out / "00_x.ipynb").read_text())["cells"][0]["source"])
    (out / "00_x.ipynb").write_text("{}")
    assert course.stale(src, out) == ["00_x.ipynb"]


def test_exercise_table_lists_every_exercise_with_its_hints():
    table = course.exercise_table()
    for key in checks.exercises():
        assert f"`{key}`" in table
    assert "no_clamp" in table  # a code exercise's targeted hints are named


@pytest.mark.parametrize("key", CODE_KEYS)
def test_every_code_exercise_then_runs_on_the_real_model(key):
    """After its check, a later cell hands the learner's function to labkit through `checks.use`."""
    nb = _source_of(key)
    cells = [c for c in json.loads(nb.read_text(encoding="utf-8"))["cells"] if c["cell_type"] == "code"]
    sources = ["".join(c["source"]) for c in cells]
    checked = next(i for i, s in enumerate(sources) if f'assert checks.check("{key}"' in s)
    assert any(f'checks.use("{key}"' in s for s in sources[checked:]), f"{nb.name} never plugs in {key}"


def test_at_least_two_code_exercises_in_each_technique_notebook():
    for nb in ("01", "02", "03", "04", "05"):
        assert len(checks.exercises(nb, kind="code")) >= 2, nb


def test_every_notebook_asks_for_the_kernel_the_readme_names():
    readme = (course.LEARNER_DIR.parent / "README.md").read_text()
    assert "the standard `python3` kernel" in readme
    for path in LEARNER + course.sources():
        spec = json.loads(path.read_text(encoding="utf-8"))["metadata"]["kernelspec"]
        assert spec["name"] == "python3", f"{path.name} asks for kernel {spec['name']!r}; the README says python3"


def _saved_cells():
    """(notebook, cell source) of every solved-edition code cell marked `#@save <module>` on its first line."""
    for path in course.sources():
        for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
            source = "".join(cell["source"])
            if cell["cell_type"] == "code" and source.startswith("#@save"):
                yield path.stem, source


SAVED = list(_saved_cells())


@pytest.mark.parametrize("notebook, source", SAVED, ids=[f"{n.split('_')[0]}-{i}" for i, (n, _) in enumerate(SAVED)])
def test_code_saved_from_a_lesson_is_the_packages_own(notebook, source):
    """A lesson's `#@save labkit.x.y` cell defines functions or classes that labkit.x.y keeps for later lessons:
    the package's source is the lesson's, character for character, so the lesson shows what the kit runs."""
    import ast
    import importlib
    import inspect
    import textwrap

    first, _, body = source.partition("\n")
    module = importlib.import_module(first.removeprefix("#@save").strip())
    tree = ast.parse(body)
    defs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    assert defs, f"{notebook}: a #@save cell defines no function or class"
    lines = body.splitlines()
    for node in defs:
        start = min([d.lineno for d in node.decorator_list] + [node.lineno]) - 1
        shown = "\n".join(lines[start:node.end_lineno])
        kept = textwrap.dedent(inspect.getsource(getattr(module, node.name))).rstrip()
        assert shown == kept, f"{notebook}: {node.name} differs from {module.__name__}.{node.name}"
    module_source = inspect.getsource(module)
    for node in tree.body:  # a constant the cell sets is the module's, line for line
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            shown = "\n".join(lines[node.lineno - 1:node.end_lineno])
            assert shown in module_source, f"{notebook}: {shown!r} is not in {module.__name__}"
