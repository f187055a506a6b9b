"""The exercise machinery: every exercise accepts its solution, says "not attempted yet" to a stub, and its
targeted hints are each reached by the mistake they name (the per-notebook tables in test_exercises_nb*.py)."""

import importlib
from pathlib import Path

import pytest

from labkit.course import checks
from labkit.course.exercises import GENERIC_HINTS, exercise

NOTEBOOKS = sorted({k.split(".")[0] for k in checks.exercises()})


@pytest.fixture(autouse=True)
def private_progress(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_USER_DIR", str(tmp_path))


@pytest.mark.parametrize("key", checks.exercises())
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
    with pytest.raises(ValueError, match="00.float64_bytes"):
        checks.check("00.nope", 1)


def test_progress_records_solved_exercises():
    before = checks.progress().set_index("exercise")
    assert not before.loc["00.int8_bytes", "solved"]
    checks.check("00.int8_bytes", checks.solution("00.int8_bytes"), quiet=True)
    after = checks.progress().set_index("exercise")
    assert after.loc["00.int8_bytes", "solved"]


def test_hints_need_a_fallback():
    with pytest.raises(ValueError, match="wrong"):
        exercise("99.x", "?", lambda: 1, {"only": "a hint"})

