"""Exercise answers: `checks.check("02.linear_quantize", linear_quantize)` says right, not attempted yet, or
gives a hint aimed at the mistake; `use` plugs a learner's function into the real model; `predict` records a
prediction before a cell measures, `measured` shows it beside the measurement; `progress()` lists them all."""

from __future__ import annotations

import inspect
import json
import os
import tempfile
import textwrap
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from labkit.core import settings
from labkit.course import translations
from labkit.course.exercises import (
    PREDICTIONS,
    REGISTRY,
    WRITTEN,
    Exercise,
    Mistake,
    NotAttempted,
    load_all,
    unanswered,
)
from labkit.lab.labels import language, t

NOT_ATTEMPTED = "not attempted yet"


def _progress_file() -> Path:
    # Per-learner results live beside the learner's cache, never in a shared read-only one.
    return settings.user_dir() / "progress.json"


def _record() -> dict:
    """The learner's record: {"solved": [keys], "predictions": {key: {"predicted": x, "measured": y}},
    "hints": {key: how many graduated hints were given}}."""
    path = _progress_file()  # a bad LABKIT_USER_DIR is the user's to fix: refused, not read as "nothing solved"
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"solved": [], "predictions": {}, "hints": {}}
    if isinstance(found, list):  # the first format: a list of solved keys
        found = {"solved": found}
    if not isinstance(found, dict):
        return {"solved": [], "predictions": {}, "hints": {}}  # not this kit's record: the next answer rewrites it
    solved = found.get("solved", [])
    predictions = found.get("predictions", {})
    given_hints = found.get("hints", {})
    return {"solved": [k for k in solved if isinstance(k, str)] if isinstance(solved, list) else [],
            "predictions": {k: v for k, v in predictions.items() if isinstance(v, dict)}
            if isinstance(predictions, dict) else {},
            "hints": {k: v for k, v in given_hints.items() if isinstance(v, int)} if isinstance(given_hints, dict)
            else {}}


def _solved() -> set[str]:
    return set(_record()["solved"])


def _write_record(record: dict) -> None:
    try:
        path = _progress_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        # A temporary file of its own, then an atomic rename: a kernel killed mid-write leaves the old file, and
        # two notebooks open at once never write into the same temporary file.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".progress.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(record, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass  # progress is a convenience; a read-only home must not break an exercise


def _mark_solved(key: str) -> None:
    record = _record()
    record["solved"] = sorted(set(record["solved"]) | {key})
    _write_record(record)


def _prediction(key: str):
    load_all()
    if key not in PREDICTIONS:
        raise ValueError(f"Unknown prediction {key!r}; known: {', '.join(sorted(PREDICTIONS))}.")
    return PREDICTIONS[key]


def _number(value: Any, key: str, what: str) -> float:
    if isinstance(value, bool) or not (isinstance(value, (int, float)) or hasattr(value, "__float__")):
        raise TypeError(t("{key}: the {what} must be a number, got {type} ({value!r}).", key=key, what=t(what),
                          type=type(value).__name__, value=value))
    number = float(value)
    if number != number or number in (float("inf"), float("-inf")):
        raise ValueError(t("{key}: the {what} must be a finite number, got {number}.", key=key, what=t(what),
                           number=number))
    return number


def _question(key: str, english: str) -> str:
    return translations.text(key, "question", english)


def _amount(key: str, number: float, unit: str) -> str:
    """A predicted or measured number with its unit, the unit in the learner's language when it is words."""
    return f"{number:g}{translations.text(key, 'unit', unit)}"


def predict(key: str, value: Any) -> bool:
    """Record the learner's prediction for `key` before the cell that measures it; False while it is `...`."""
    p = _prediction(key)
    if unanswered(value):
        print(t("⏳ {key}: no prediction yet. {question}", key=key, question=_question(key, p.question)))
        return False
    number = _number(value, key, "prediction")
    record = _record()
    record["predictions"][key] = {"predicted": number}
    _write_record(record)
    print(t("📝 {key}: you predict {amount}. Now run the measurement.", key=key, amount=_amount(key, number, p.unit)))
    return True


def measured(key: str, value: Any) -> dict:
    """Record what a cell measured for prediction `key` and show it beside the learner's prediction."""
    p = _prediction(key)
    number = _number(value, key, "measurement")
    record = _record()
    entry = dict(record["predictions"].get(key, {}), measured=number)
    record["predictions"][key] = entry
    _write_record(record)
    guess = entry.get("predicted")
    amount = _amount(key, number, p.unit)
    if guess is None:
        print(t("📏 {key}: measured {amount} (no prediction recorded: make one next time, before running).",
                key=key, amount=amount))
    else:
        ratio = t("{ratio} times your prediction", ratio=f"{number / guess:.2g}") if guess \
            else t("your prediction was 0")
        print(t("📏 {key}: you predicted {guess}, measured {amount} ({ratio}).", key=key,
                guess=_amount(key, guess, p.unit), amount=amount, ratio=ratio))
    return entry


def get(key: str) -> Exercise:
    """The registered exercise `key`; a typo gets the list of valid keys."""
    load_all()
    if key not in REGISTRY:
        raise ValueError(f"Unknown exercise {key!r}; known: {', '.join(sorted(REGISTRY))}.")
    return REGISTRY[key]


def hint_for(ex: Exercise, mistake: str) -> str:
    """`Exercise.hint` in the learner's language: an exercise's own hints from its translation file, the generic
    ones from the label table."""
    return ex.hint(mistake, lambda field, english: t(english) if field is None
                   else translations.text(ex.key, field, english))


def diagnose(key: str, answer: Any) -> str | None:
    """None when `answer` solves exercise `key`, NOT_ATTEMPTED for a placeholder, else the hint for its mistake
    (in the learner's language)."""
    ex = get(key)
    try:
        mistake = ex.check(answer)
    except NotAttempted:
        return NOT_ATTEMPTED
    except Mistake as m:
        shown = hint_for(ex, m.name)
        if not m.detail or m.detail == m.name:
            return shown
        return t("{hint} ({detail})", hint=shown, detail=t(m.detail, **m.fields))
    except Exception as err:  # the learner's code raised: say what, in one line, never a traceback from labkit
        return t("your answer raised {error_type}: {error}. {hint}", error_type=type(err).__name__, error=err,
                 hint=hint_for(ex, "wrong"))
    return None if mistake is None else hint_for(ex, mistake)


class Verdict:
    """What `check` found: true when the answer is right. A notebook shows nothing for it: `check` has printed."""

    def __init__(self, key: str, ok: bool):
        self.key, self.ok = key, ok

    def __bool__(self) -> bool:
        return self.ok

    def __repr__(self) -> str:
        return f"Verdict({self.key!r}, {self.ok})"

    def _ipython_display_(self) -> None:
        pass  # no "Out: False" under the printed hint


def check(key: str, answer: Any, quiet: bool = False) -> Verdict:
    """Truthy if `answer` solves exercise `key`; otherwise prints "not attempted yet" or a hint, and is falsy."""
    settings.flags(quiet=quiet)
    verdict = diagnose(key, answer)
    if verdict is None:
        _mark_solved(key)
    if not quiet:
        if verdict is None:
            print(t("✅ {key}: correct.", key=key))
        elif verdict == NOT_ATTEMPTED:
            print(t("⏳ {key}: not attempted yet. {question}", key=key, question=_question(key, get(key).question)))
        else:
            print(t("❌ {key}: not yet. Hint: {hint}", key=key, hint=verdict))
    return Verdict(key, verdict is None)


class GradedRelease(PermissionError):
    """Asked for a reference answer in a graded release (LABKIT_GRADED=1), where it stays with the teacher."""


def _refuse_if_graded(key: str, what: str) -> None:
    if settings.graded():
        raise GradedRelease(t("{key}: {what} is not shown in a graded release: this is a graded release, so the "
                              "reference stays with your teacher. `checks.hint({quoted})` gives graduated hints, and "
                              "`checks.check({quoted}, answer)` says what is wrong with yours.",
                              key=key, what=t(what), quoted=repr(key)))


def use(key: str, answer: Callable) -> Callable:
    """The learner's function when it passes its check, else labkit's reference (saying so), for the real model.

    In a graded release there is no reference to fall back on: an answer that does not pass is refused."""
    if diagnose(key, answer) is None:
        print(t("using your {name} ({key}).", name=getattr(answer, "__name__", "answer"), key=key))
        return answer
    _refuse_if_graded(key, "labkit's reference (in place of an answer that does not pass its check yet)")
    print(t("using labkit's reference for {key} until yours passes its check.", key=key))
    return get(key).solution()


def solution(key: str) -> Any:
    """The reference answer of exercise `key` (a value, or a function for code exercises); refused when graded."""
    _refuse_if_graded(key, "the reference answer")
    return get(key).solution()


def reveal(key: str) -> None:
    """Print the reference answer of exercise `key`: the source of a function, or the value; refused when graded."""
    answer = solution(key)
    print(textwrap.dedent(inspect.getsource(answer)) if callable(answer) else repr(answer))


LADDER = ("the idea", "the step that usually goes wrong", "a smaller case, worked")


def hint(key: str) -> str:
    """The next of exercise `key`'s graduated hints (the idea, the step that goes wrong, a smaller worked case)."""
    ex = get(key)
    if not ex.ladder:
        text = hint_for(ex, "wrong")
        print(t("💡 {key}: {body}", key=key, body=text))
        return text
    record = _record()
    given_ = record.setdefault("hints", {})
    level = min(int(given_.get(key, 0)) + 1, len(ex.ladder))
    given_[key] = level
    _write_record(record)
    text = translations.text(key, f"ladder:{level - 1}", ex.ladder[level - 1])
    more = "" if level == len(ex.ladder) else t(" (run checks.hint({quoted}) again for {stage})", quoted=repr(key),
                                                 stage=t(LADDER[level]))
    print(t("💡 {key}, hint {level} of {total}, {stage}: {body}{more}", key=key, level=level, total=len(ex.ladder),
            stage=t(LADDER[level - 1]), body=text, more=more))
    return text


def hints(key: str) -> dict[str, str]:
    """Every targeted hint of exercise `key`, by the mistake it answers (in the learner's language)."""
    ex = get(key)
    return {m: translations.text(key, f"hint:{m}", h) for m, h in ex.hints.items()}


def exercises(notebook: str | None = None, kind: str | None = None) -> list[str]:
    """Keys of all exercises, or of one notebook's ("00", "02", ...), optionally of one kind ("code", "value")."""
    load_all()
    return sorted(k for k, ex in REGISTRY.items()
                  if (notebook is None or k.split(".")[0] == notebook) and (kind is None or ex.kind == kind))


def predictions(notebook: str | None = None) -> list[str]:
    """Keys of all registered predictions, or of one notebook's."""
    load_all()
    return sorted(k for k in PREDICTIONS if notebook is None or k.split(".")[0] == notebook)


def written_questions(notebook: str | None = None) -> list[str]:
    """Keys of all registered written questions, or of one notebook's."""
    load_all()
    return sorted(k for k in WRITTEN if notebook is None or k.split(".")[0] == notebook)


class Progress(pd.DataFrame):
    """progress()'s table: its columns keep their English names in code (`.query("notebook == '02'")` works in
    either edition); a notebook shows their headers and kinds in the learner's language."""

    @property
    def _constructor(self):
        return Progress

    def shown(self) -> pd.DataFrame:
        """The table as a learner reads it: headers and kinds through the label table."""
        plain = pd.DataFrame(self)
        if language() != "zh":
            return plain
        if "kind" in plain:
            plain = plain.assign(kind=plain["kind"].map(lambda k: t(k) if isinstance(k, str) else k))
        return plain.rename(columns={c: t(c) for c in plain.columns if isinstance(c, str)})

    def _repr_html_(self) -> str | None:
        return self.shown()._repr_html_()

    def __repr__(self) -> str:
        return repr(self.shown())


def progress() -> Progress:
    """Every exercise (solved or not) and every prediction (predicted, measured), notebook by notebook; the
    questions in the learner's language."""
    record = _record()
    solved = set(record["solved"])
    rows = [{"notebook": k.split(".")[0], "exercise": k, "kind": get(k).kind, "solved": k in solved,
             "question": _question(k, get(k).question)} for k in exercises()]
    for k in predictions():
        entry = record["predictions"].get(k, {})
        rows.append({"notebook": k.split(".")[0], "exercise": k, "kind": "prediction", "solved": "predicted" in entry,
                     "question": _question(k, PREDICTIONS[k].question), "predicted": entry.get("predicted"),
                     "measured": entry.get("measured")})
    table = pd.DataFrame(rows).sort_values(["notebook", "kind", "exercise"], kind="stable").reset_index(drop=True)
    return Progress(table)
