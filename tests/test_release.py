"""The nbgrader release (labkit.course.release): cells marked as nbgrader reads them, nothing revealed in a graded
kernel, and three made-up submissions of a tiny lesson graded by nbgrader itself."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest

from labkit.core import settings
from labkit.course import checks, release
from labkit.course.exercises import PREDICTIONS, REGISTRY, WRITTEN

ROOT = Path(__file__).resolve().parents[1]

# A tiny lesson made the way solutions/ is: its setup cell registers its own exercises, so the test holds whatever
# the real notebooks' exercises become. The same source registers them in this process, for the release's points.
SETUP = '''import torch

from labkit.course import checks
from labkit.course.exercises import attempt, exercise, given, prediction, written


def _double_solution():
    def double(x):
        return 2 * x
    return double


@exercise("99.double", "double(x): a tensor twice x, same shape", _double_solution,
          {"wrong": "each entry should be twice the input's."}, kind="code")
def _check_double(fn):
    x = torch.arange(4.0)
    return None if torch.equal(torch.as_tensor(attempt(fn, x)), 2 * x) else "wrong"


@exercise("99.answer", "the answer, a number", lambda: 42, {"wrong": "six times seven."})
def _check_answer(value):
    return None if given(value) == 42 else "wrong"


prediction("99.guess", "how many times faster?", unit="x")
written("99.why", "why is it not faster?", points=3)'''

CELLS = [
    ("markdown", "intro", "# A tiny lesson\n\nWhat you will learn, in 2 minutes."),
    ("code", "setup", SETUP),
    ("code", "value", "### BEGIN SOLUTION\nanswer = 42\n### END SOLUTION\nassert checks.check(\"99.answer\", answer)"),
    ("code", "double", 'def double(x):\n    """2x"""\n    ### BEGIN SOLUTION\n    return 2 * x\n'
                       '    ### END SOLUTION\n\n\nassert checks.check("99.double", double)\n'
                       'mine = checks.use("99.double", double)\nprint(mine(torch.ones(2)))'),
    ("code", "guess", "# Predict before you run: how many times faster?\n### BEGIN SOLUTION\nprediction = 3.0\n"
                      '### END SOLUTION\nchecks.predict("99.guess", prediction)'),
    ("code", "measure", 'checks.measured("99.guess", 2.0)'),
    ("markdown", "ask", "**Written question (99.why).** Why is it not faster?"),
    ("markdown", "rubric", "### BEGIN SOLUTION\n*Rubric (3 points):* 3 points for the bytes moved.\n### END SOLUTION"),
]


def tiny_lesson() -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for kind, cid, source in CELLS:
        cell = nbformat.v4.new_code_cell(source) if kind == "code" else nbformat.v4.new_markdown_cell(source)
        cell.id = cid
        nb.cells.append(cell)
    return nb


@pytest.fixture
def tiny_registered():
    """The tiny lesson's exercises registered in this process, and removed after the test."""
    checks.exercises()  # every real module loaded first, so the restore below keeps them all
    saved = dict(REGISTRY), dict(PREDICTIONS), dict(WRITTEN)
    exec(compile(SETUP, "tiny-setup", "exec"), {})
    yield
    for registry, before in zip((REGISTRY, PREDICTIONS, WRITTEN), saved):
        registry.clear()
        registry.update(before)


def _marks(nb):
    return [(c.cell_type, c.metadata["nbgrader"]["grade_id"], c.metadata["nbgrader"]["solution"],
             c.metadata["nbgrader"]["grade"], c.metadata["nbgrader"].get("points")) for c in nb.cells]


def test_release_marks_answers_tests_predictions_written_answers_and_locks_the_rest(tiny_registered):
    nb = release.graded_notebook(tiny_lesson(), "tiny")
    assert _marks(nb) == [
        ("markdown", "locked-intro", False, False, None),
        ("code", "labkit-graded", False, False, None),
        ("code", "locked-setup", False, False, None),
        ("code", "answer-value", True, False, None),
        ("code", "check-99_answer", False, True, release.VALUE_POINTS),
        ("code", "answer-double", True, False, None),
        ("code", "check-99_double", False, True, release.CODE_POINTS),
        ("code", "locked-double-2", False, False, None),
        ("code", "answer-guess", True, False, None),
        ("code", "predict-99_guess", False, True, release.PREDICTION_POINTS),
        ("code", "locked-measure", False, False, None),
        ("markdown", "locked-ask", False, False, None),
        ("markdown", "written-99_why", True, True, 3),
    ]
    assert all(c.metadata["nbgrader"]["locked"] for c in nb.cells if not c.metadata["nbgrader"]["solution"])
    sources = [c.source for c in nb.cells]
    assert sources[4] == 'assert checks.check("99.answer", answer)'
    assert sources[9] == 'assert checks.predict("99.guess", prediction)'  # a number was predicted
    assert sources[7].startswith('mine = checks.use("99.double", double)')
    assert 'os.environ["LABKIT_GRADED"] = "1"' in sources[1]
    assert len({c.id for c in nb.cells}) == len(nb.cells)


def test_release_refuses_an_answer_region_without_a_written_question(tiny_registered):
    nb = tiny_lesson()
    del nb.cells[6]  # the rubric no longer follows a question
    with pytest.raises(ValueError, match="must follow a `\\*\\*Written question"):
        release.graded_notebook(nb, "tiny")


def test_release_refuses_an_unregistered_written_question(tiny_registered):
    with pytest.raises(ValueError, match="99.why is not registered"):
        release.graded_notebook(tiny_lesson(), "tiny", written_points={})


def test_every_solved_notebook_makes_an_nbgrader_source():
    for path in release.build.sources():
        nb = release.graded_notebook(nbformat.read(path, as_version=4), path.name)
        ids = [c.metadata["nbgrader"]["grade_id"] for c in nb.cells]
        assert len(ids) == len(set(ids)), path.name
        tests = [c for c in nb.cells if c.metadata["nbgrader"]["grade"] and c.cell_type == "code"]
        assert all(c.source.startswith("assert checks.") for c in tests), path.name
        # every solution region is in an answer cell, which nbgrader requires
        assert all(c.metadata["nbgrader"]["solution"] for c in nb.cells if release.build.BEGIN in c.source)


def test_a_graded_release_reveals_nothing_and_says_why(monkeypatch, capsys):
    monkeypatch.setenv("LABKIT_GRADED", "1")
    for call in (checks.reveal, checks.solution):
        with pytest.raises(checks.GradedRelease, match=r"graded release.*checks.hint\('02.symmetric_round'\)"):
            call("02.symmetric_round")
    with pytest.raises(checks.GradedRelease, match="reference stays with your teacher"):
        checks.use("02.symmetric_round", ...)
    assert "def " not in capsys.readouterr().out


def test_self_study_still_reveals(monkeypatch, capsys):
    monkeypatch.delenv("LABKIT_GRADED", raising=False)
    checks.reveal("02.symmetric_round")
    assert "def " in capsys.readouterr().out
    assert settings.graded({"LABKIT_GRADED": "yes"}) and not settings.graded({})
    with pytest.raises(ValueError, match="LABKIT_GRADED='maybe'"):
        settings.graded({"LABKIT_GRADED": "maybe"})


def _answer(nb, grade_id: str, source: str) -> None:
    cell = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)
    cell.source = source


@pytest.mark.slow
def test_nbgrader_grades_a_blank_a_partly_right_and_an_all_right_submission(tmp_path, tiny_registered):
    pytest.importorskip("nbgrader")
    from nbgrader.api import Gradebook

    course = tmp_path / "course"
    (tmp_path / "solved").mkdir()
    nbformat.write(tiny_lesson(), tmp_path / "solved" / "99_tiny.ipynb")
    release.write_source(course, "lesson", source_dir=tmp_path / "solved")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "LABKIT_USER_DIR": str(tmp_path / "user"), "HF_HUB_OFFLINE": "1", "JUPYTER_PLATFORM_DIRS": "1"}
    env.pop("LABKIT_GRADED", None)
    release.nbgrader("release", course, "lesson", env)
    released = nbformat.read(course / "release" / "lesson" / "99_tiny.ipynb", as_version=4)
    answers = {c.metadata["nbgrader"]["grade_id"]: c.source for c in released.cells
               if c.metadata["nbgrader"]["solution"]}
    assert answers["answer-value"] == "# YOUR CODE HERE\nraise NotImplementedError()"
    assert "return 2 * x" not in answers["answer-double"] and "NotImplementedError" in answers["answer-double"]
    assert answers["written-99_why"] == "YOUR ANSWER HERE" and "Rubric" not in nbformat.writes(released)

    partly, right = nbformat.from_dict(released), nbformat.from_dict(released)
    _answer(partly, "answer-value", "answer = 42")
    _answer(partly, "answer-double", 'def double(x):\n    """2x"""\n    return x + 1')
    _answer(right, "answer-value", "answer = 6 * 7")
    _answer(right, "answer-double", 'def double(x):\n    """2x"""\n    return x + x')
    _answer(right, "answer-guess", "prediction = 2.5")
    _answer(right, "written-99_why", "Because the bytes moved do not shrink.")
    for student, nb in [("blank", released), ("partly", partly), ("right", right)]:
        folder = course / "submitted" / student / "lesson"
        folder.mkdir(parents=True)
        nbformat.write(nb, folder / "99_tiny.ipynb")
    release.nbgrader("autograde", course, "lesson", env)
    release.nbgrader("feedback", course, "lesson", env)

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        scores = {s: gb.find_submission_notebook("99_tiny", "lesson", s).code_score
                  for s in ("blank", "partly", "right")}
        top = gb.find_notebook("99_tiny", "lesson").max_code_score
    assert top == release.VALUE_POINTS + release.CODE_POINTS + release.PREDICTION_POINTS
    assert 0 == scores["blank"] < scores["partly"] < scores["right"] == top, scores
    feedback = (course / "feedback" / "partly" / "lesson" / "99_tiny.html").read_text()
    assert "99.double" in feedback and "99.guess" in feedback  # the failed check and the missing prediction
