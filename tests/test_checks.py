import pytest

from labkit import checks


@pytest.fixture(autouse=True)
def private_progress(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_USER_DIR", str(tmp_path))


@pytest.mark.parametrize("key", checks.exercises())
def test_every_exercise_accepts_its_solution(key):
    assert checks.check(key, checks.solution(key), quiet=True)


def test_a_wrong_answer_gets_a_hint(capsys):
    assert not checks.check("00.float64_bytes", 1536 * 384 * 4)
    out = capsys.readouterr().out
    assert "Hint:" in out and "float64" in out


def test_an_answer_of_the_wrong_type_is_wrong_not_a_crash(capsys):
    assert not checks.check("00.mask_shape", "tall")
    assert "Hint:" in capsys.readouterr().out


def test_unknown_exercise_lists_the_known_ones():
    with pytest.raises(ValueError, match="00.float64_bytes"):
        checks.check("00.nope", 1)


def test_progress_records_solved_exercises():
    before = checks.progress().set_index("exercise")
    assert not before.loc["00.int8_bytes", "solved"]
    checks.check("00.int8_bytes", checks.solution("00.int8_bytes"), quiet=True)
    after = checks.progress().set_index("exercise")
    assert after.loc["00.int8_bytes", "solved"]
