"""The exercise machinery: every exercise accepts its solution, says "not attempted yet" to a stub, and its
targeted hints are each reached by the mistake they name (the per-notebook tables in test_exercises_nb*.py)."""

import importlib
from pathlib import Path

import pandas as pd
import pytest

from labkit.course import checks
from labkit.course.exercises import GENERIC_HINTS, exercise

NOTEBOOKS = sorted({k.split(".")[0] for k in checks.exercises()})


@pytest.fixture(autouse=True)
def private_progress(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_USER_DIR", str(tmp_path))


# A design exercise is measured on the machine against a speed budget: its reference is tested for its form
# (test_exercises_nb07.py), not for a timing a busy machine may miss.
@pytest.mark.parametrize("key", [k for k in checks.exercises() if checks.get(k).kind != "design"])
def test_every_exercise_accepts_its_solution(key):
    assert checks.diagnose(key, checks.solution(key)) is None


@pytest.mark.parametrize("key", checks.exercises())
@pytest.mark.parametrize("stub", [..., None], ids=["ellipsis", "none"])
def test_a_stub_is_not_attempted_and_raises_nothing(key, stub, capsys):
    verdict = checks.check(key, stub)
    assert not verdict and "not attempted yet" in capsys.readouterr().out
    from IPython.core.formatters import DisplayFormatter

    assert DisplayFormatter().format(verdict) == ({}, {})  # a notebook shows no "Out: False" under the message


@pytest.mark.parametrize("key", checks.exercises(kind="code"))
def test_a_function_left_as_its_stub_is_not_attempted(key):
    def stub(*args, **kwargs):
        ...
    assert checks.diagnose(key, stub) == checks.NOT_ATTEMPTED


@pytest.mark.parametrize("key", checks.exercises(kind="code"))
def test_code_exercises_have_two_targeted_hints(key):
    own = set(checks.hints(key)) - {"wrong"}
    assert len(own) >= 2, f"{key} has only {sorted(own)}"


def _mistake_tables() -> list[tuple]:
    rows = []
    for path in sorted(Path(__file__).parent.glob("test_exercises_nb*.py")):
        rows += importlib.import_module(path.stem).MISTAKES
    return rows


@pytest.mark.parametrize("key, hint, answer", _mistake_tables(), ids=[f"{k}-{h}" for k, h, _ in _mistake_tables()])
def test_each_listed_mistake_gets_its_hint(key, hint, answer):
    assert checks.diagnose(key, answer()).startswith(checks.get(key).hint(hint))


def test_every_targeted_hint_is_reached_by_a_listed_mistake():
    covered = {(key, hint) for key, hint, _ in _mistake_tables()}
    missing = [(k, h) for k in checks.exercises() for h in checks.hints(k) if h != "wrong" and (k, h) not in covered]
    assert not missing, f"hints no test reaches: {missing}"


def test_every_notebook_with_exercises_has_a_mistake_table():
    tables = {p.stem.removeprefix("test_exercises_nb") for p in Path(__file__).parent.glob("test_exercises_nb*.py")}
    assert set(NOTEBOOKS) <= tables


def test_code_raising_inside_gets_a_one_line_hint_not_a_traceback(capsys):
    assert not checks.check("02.symmetric_round", lambda w, bits: w.no_such_thing)
    out = capsys.readouterr().out
    assert "AttributeError" in out and "Hint:" in out and "Traceback" not in out


def test_mutating_the_input_gets_its_hint():
    def in_place(w, bits):
        return w.div_(w.abs().max()).round_()
    assert checks.diagnose("02.symmetric_round", in_place) == GENERIC_HINTS["mutated"]


def test_use_falls_back_to_the_reference_until_the_answer_passes(capsys):
    def stub(w, bits):
        ...
    fn = checks.use("02.symmetric_round", stub)
    assert fn is not stub and "reference" in capsys.readouterr().out
    mine = checks.solution("02.symmetric_round")
    assert checks.use("02.symmetric_round", mine) is mine


def test_reveal_prints_the_reference_source(capsys):
    checks.reveal("02.symmetric_round")
    assert "def symmetric_codes" in capsys.readouterr().out


def test_unknown_exercise_lists_the_known_ones():
    with pytest.raises(ValueError, match="00.magnitude_mask"):
        checks.check("00.nope", 1)


def test_progress_records_solved_exercises():
    before = checks.progress().set_index("exercise")
    assert not before.loc["00.size_ceiling", "solved"]
    checks.check("00.size_ceiling", checks.solution("00.size_ceiling"), quiet=True)
    after = checks.progress().set_index("exercise")
    assert after.loc["00.size_ceiling", "solved"]


def test_hints_need_a_fallback():
    with pytest.raises(ValueError, match="wrong"):
        exercise("99.x", "?", lambda: 1, {"only": "a hint"})



@pytest.fixture
def a_prediction():
    from labkit.course.exercises import PREDICTIONS, prediction
    prediction("99.speedup", "How many times faster?", unit="x")
    yield "99.speedup"
    PREDICTIONS.pop("99.speedup", None)


def test_a_prediction_is_recorded_and_shown_beside_the_measurement(a_prediction, capsys):
    assert checks.predict(a_prediction, 2.0)
    entry = checks.measured(a_prediction, 3.0)
    assert entry == {"predicted": 2.0, "measured": 3.0}
    assert "you predicted 2x, measured 3x (1.5 times your prediction)" in capsys.readouterr().out
    row = checks.progress().set_index("exercise").loc[a_prediction]
    assert (row["kind"], row["predicted"], row["measured"]) == ("prediction", 2.0, 3.0)


def test_a_prediction_left_as_its_stub_records_nothing(a_prediction, capsys):
    assert not checks.predict(a_prediction, ...)
    assert "no prediction yet. How many times faster?" in capsys.readouterr().out
    checks.measured(a_prediction, 3.0)
    assert "no prediction recorded" in capsys.readouterr().out
    assert pd.isna(checks.progress().set_index("exercise").loc[a_prediction, "predicted"])


@pytest.mark.parametrize("value, error, words", [("2x", TypeError, "must be a number"), (True, TypeError, "number"),
                                                  (float("nan"), ValueError, "finite")])
def test_a_prediction_that_is_not_a_number_is_refused(a_prediction, value, error, words):
    with pytest.raises(error, match=words):
        checks.predict(a_prediction, value)


def test_an_unknown_prediction_lists_the_known_ones():
    with pytest.raises(ValueError, match="Unknown prediction"):
        checks.predict("99.nothing", 1.0)


def test_the_first_progress_format_is_still_read(tmp_path):
    (tmp_path / "progress.json").write_text('["00.size_ceiling"]')
    assert checks.progress().set_index("exercise").loc["00.size_ceiling", "solved"]
    checks.check("00.size_ceiling", checks.solution("00.size_ceiling"), quiet=True)
    assert "00.size_ceiling" in checks.progress().query("solved == True")["exercise"].tolist()


def test_a_written_answer_becomes_nbgraders_stub_in_the_learner_edition():
    from labkit.course.build import ANSWER_STUB, learner_markdown
    rubric = "Intro kept.\n### BEGIN SOLUTION\n*Rubric:* names bandwidth.\n### END SOLUTION"
    assert learner_markdown(rubric) == f"Intro kept.\n{ANSWER_STUB}"
    with pytest.raises(ValueError, match="not closed"):
        learner_markdown("### BEGIN SOLUTION\nopen")


def test_a_written_question_needs_a_point():
    from labkit.course.exercises import written
    with pytest.raises(ValueError, match="at least 1"):
        written("99.why", "Why?", points=0)


def test_graduated_hints_come_one_at_a_time(capsys):
    from labkit.course.exercises import REGISTRY
    exercise("99.ladder", "?", lambda: 1, {"wrong": "w"}, ladder=("idea", "step", "case"))(lambda a: None)
    try:
        assert [checks.hint("99.ladder") for _ in range(4)] == ["idea", "step", "case", "case"]
        assert "hint 1 of 3, the idea" in capsys.readouterr().out
    finally:
        REGISTRY.pop("99.ladder")
    with pytest.raises(ValueError, match="three hints"):
        exercise("99.short", "?", lambda: 1, {"wrong": "w"}, ladder=("idea",))
