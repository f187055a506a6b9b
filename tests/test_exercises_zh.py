"""The exercises in Chinese (issue 38): with LABKIT_LANG=zh every exercise's check of a wrong answer prints a Chinese
verdict and hint; the mechanism (labkit.course.translations) on a tiny registry of its own: a current entry shown,
a stale or empty one never, `check` naming what is missing, stale or gone, `exercises` writing empty entries."""

import dataclasses
import importlib
import json
import os
import re
from pathlib import Path

import pytest

from labkit.course import checks, i18n, translations
from labkit.course.exercises import PREDICTIONS, REGISTRY, Exercise, Prediction, given

CJK = re.compile(r"[\u4e00-\u9fff]")


@pytest.fixture(autouse=True)
def private_progress(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_USER_DIR", str(tmp_path / "user"))


def _first_mistakes() -> dict[str, tuple[str, object]]:
    """Per exercise key, the first wrong answer its tests list (test_exercises_nb*.py's MISTAKES) and its mistake."""
    out = {}
    for path in sorted(Path(__file__).parent.glob("test_exercises_nb*.py")):
        for key, hint, answer in importlib.import_module(path.stem).MISTAKES:
            out.setdefault(key, (hint, answer))
    return out


FIRST = _first_mistakes()


@pytest.mark.parametrize("key", checks.exercises())
def test_a_wrong_answer_gets_a_chinese_verdict_and_hint(key, monkeypatch, capsys):
    assert key in FIRST, f"{key} has no wrong answer in its test's MISTAKES table"
    hint, answer = FIRST[key]
    english = checks.get(key).hint(hint)
    monkeypatch.setenv("LABKIT_LANG", "zh")
    assert not checks.check(key, answer())
    out = capsys.readouterr().out
    file = f"i18n/zh/exercises/{translations.prefix(key)}.json"
    why = (f"{key}: the hint for {hint!r} is shown in English: its translation in {file} is missing or stale "
           f"(`python -m labkit.course.i18n check` names it):\n{out}")
    assert "还不对" in out and CJK.search(out.split("提示：", 1)[-1]) and english not in out, why


@pytest.mark.parametrize("key", checks.exercises())
def test_no_chinese_hint_gives_a_line_of_the_reference(key, monkeypatch):
    rules = importlib.import_module("test_course_rules")  # the English hints' rule, on their Chinese
    monkeypatch.setenv("LABKIT_LANG", "zh")
    ex = checks.get(key)
    hints = {m: translations.text(key, f"hint:{m}", h) for m, h in ex.hints.items()}
    ladder = tuple(translations.text(key, f"ladder:{i}", h) for i, h in enumerate(ex.ladder))
    chinese = dataclasses.replace(ex, hints=hints, ladder=ladder)
    leaks = [f"{line!r} in {text!r}" for text, line in rules.leaked_lines(chinese)]
    assert not leaks, "a Chinese hint gives the line to type:\n" + "\n".join(leaks)


EXERCISE_PREFIXES = sorted({translations.prefix(k) for k in checks.exercises() + checks.predictions()
                            + checks.written_questions()})


@pytest.mark.parametrize("prefix", EXERCISE_PREFIXES)
def test_every_exercise_text_has_a_current_translation_and_no_orphan(prefix):
    file = f"/{prefix}.json"
    problems = [p for p in translations.problems() if file in p]
    assert problems == [], "\n".join(problems)


def test_no_exercise_translation_file_without_its_exercises():
    problems = [p for p in translations.problems() if "translates no exercise" in p]
    assert problems == [], "\n".join(problems)


# --- the mechanism, on an exercise of its own (prefix "zz") -----------------------------------------------------

QUESTION = "Return twice the number."
HINTS = {"half": "you halved it; the question asks to double.", "wrong": "multiply by two."}
LADDER = ("Doubling is adding a number to itself.", "Watch the factor: 2, not 0.5.", "A smaller case: 3 gives 6.")


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """A one-exercise, one-prediction registry under prefix "zz", translated into tmp_path/exercises/zz.json."""
    def check(answer):
        answer = given(answer)
        return None if answer == 4 else "half" if answer == 1 else "wrong"
    monkeypatch.setitem(REGISTRY, "zz.double", Exercise("zz.double", QUESTION, check, lambda: 4, dict(HINTS),
                                                        ladder=LADDER))
    monkeypatch.setitem(PREDICTIONS, "zz.guess", Prediction("zz.guess", "How many tokens will it keep?", " tokens"))
    directory = tmp_path / "exercises"
    monkeypatch.setattr(translations, "EXERCISES_DIR", directory)
    english = {k: v for k, v in translations.english_texts().items() if k.startswith("zz.")}
    zh = {"zz.double|question": "返回这个数的两倍。", "zz.double|hint:half": "你把它减半了；题目要的是加倍。",
          "zz.double|hint:wrong": "乘以 2。", "zz.double|ladder:0": "加倍就是把一个数与它自己相加。",
          "zz.double|ladder:1": "注意系数：是 2，不是 0.5。", "zz.double|ladder:2": "更小的例子：3 得 6。",
          "zz.guess|question": "它会保留多少个词元？", "zz.guess|unit": " 个词元"}
    assert set(zh) == set(english)  # the fields the format names, a word unit included
    translations.write(directory / "zz.json", {k: {"en": translations.digest(english[k]), "zh": v}
                                               for k, v in zh.items()})
    return directory, english


def _set(path: Path, name: str, **entry) -> None:
    found = json.loads(path.read_text(encoding="utf-8"))
    found[name] = dict(found.get(name, {}), **entry)
    translations.write(path, found)
    stamp = path.stat().st_mtime_ns + 10**9  # a later mtime whatever the file system's clock step: the cache rereads
    os.utime(path, ns=(stamp, stamp))


def test_chinese_only_under_labkit_lang_zh(tiny, monkeypatch, capsys):
    monkeypatch.delenv("LABKIT_LANG", raising=False)
    checks.check("zz.double", 1)
    assert "you halved it" in capsys.readouterr().out
    monkeypatch.setenv("LABKIT_LANG", "zh")
    checks.check("zz.double", 1)
    checks.check("zz.double", 7)
    checks.check("zz.double", ...)
    checks.check("zz.double", 4)
    out = capsys.readouterr().out.splitlines()
    assert out == ["❌ zz.double：还不对。提示：你把它减半了；题目要的是加倍。", "❌ zz.double：还不对。提示：乘以 2。",
                   "⏳ zz.double：尚未作答。返回这个数的两倍。", "✅ zz.double：正确。"]


def test_graduated_hints_predictions_and_progress_in_chinese(tiny, monkeypatch, capsys):
    monkeypatch.setenv("LABKIT_LANG", "zh")
    assert checks.hint("zz.double") == "加倍就是把一个数与它自己相加。"
    checks.predict("zz.guess", 3)
    checks.measured("zz.guess", 6)
    out = capsys.readouterr().out
    assert "提示 1/3，核心思想：加倍就是" in out and "最容易出错的一步" in out
    assert "你的预测是 3 个词元" in out and "测得 6 个词元" in out and "2 倍" in out
    table = checks.progress()
    assert table.query("exercise == 'zz.double'")["question"].item() == "返回这个数的两倍。"
    assert "题目" in table._repr_html_() and "练习" in repr(table) and "question" in table.columns


def test_a_stale_or_empty_entry_is_never_shown(tiny, monkeypatch, capsys):
    directory, _ = tiny
    monkeypatch.setenv("LABKIT_LANG", "zh")
    _set(directory / "zz.json", "zz.double|hint:half", en="0" * 16)  # translated from another English text
    _set(directory / "zz.json", "zz.double|question", zh="")
    checks.check("zz.double", 1)
    checks.check("zz.double", ...)
    out = capsys.readouterr().out
    assert "提示：you halved it" in out and "尚未作答。Return twice the number." in out


def test_a_mistake_detail_and_a_generic_hint_come_through_the_label_table(monkeypatch, capsys):
    monkeypatch.setenv("LABKIT_LANG", "zh")
    checks.check("00.magnitude_mask", 5)  # not a function: the generic hint, and the detail with its field filled
    out = capsys.readouterr().out
    assert "答案不是题目要求的类型" in out and "需要一个函数，得到的是 int" in out


def test_check_names_missing_stale_and_gone_texts(tiny):
    directory, english = tiny
    assert translations.problems(directory, english) == []
    path = directory / "zz.json"
    _set(path, "zz.double|hint:half", en="0" * 16)
    _set(path, "zz.double|ladder:0", zh="  ")
    _set(path, "zz.double|hint:gone", en="1" * 16, zh="旧的")
    (directory / "yy.json").write_text("{}")
    problems = "\n".join(translations.problems(directory, english))
    assert f"zz.double|hint:half changed since it was translated: update its \"zh\" and set its \"en\" to " \
           f"{translations.digest(HINTS['half'])}" in problems
    assert "zz.double|ladder:0 has no Chinese" in problems
    assert "zz.double|hint:gone is no exercise text any more" in problems
    assert "yy.json translates no exercise" in problems
    assert "zz.double|ladder:0 has no Chinese" in "\n".join(i18n.check(exercises_dir=directory))  # the CLI's check
    path.write_text("[not json")
    assert any("cannot be read" in p for p in translations.problems(directory, english))


def test_exercises_writes_empty_entries_and_leaves_the_others(tiny):
    directory, english = tiny
    path = directory / "zz.json"
    _set(path, "zz.double|hint:half", en="0" * 16)  # stale: named by check, left for the translator
    found = json.loads(path.read_text(encoding="utf-8"))
    del found["zz.double|ladder:2"], found["zz.guess|unit"]
    translations.write(path, found)
    assert translations.write_skeletons("zz", directory, english) == [path]
    text = path.read_text(encoding="utf-8")
    after = json.loads(text)
    assert after["zz.double|ladder:2"] == {"en": translations.digest(LADDER[2]), "zh": ""}
    assert after["zz.guess|unit"] == {"en": translations.digest(" tokens"), "zh": ""}
    assert after["zz.double|hint:half"] == {"en": "0" * 16, "zh": "你把它减半了；题目要的是加倍。"}
    assert text == json.dumps(after, sort_keys=True, ensure_ascii=False, indent=1) + "\n"
    assert translations.write_skeletons("zz", directory, english) == []  # nothing missing: nothing written
    with pytest.raises(ValueError, match="no exercise has the prefix 'qq'"):
        translations.write_skeletons("qq", directory, english)
