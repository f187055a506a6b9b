"""Exercise answers: `checks.check("02.linear_quantize", linear_quantize)` says right, not attempted yet, or
gives a hint aimed at the mistake; `use` plugs a learner's function into the real model; `progress()` lists them."""

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
from labkit.course.exercises import REGISTRY, Exercise, Mistake, NotAttempted, load_all

NOT_ATTEMPTED = "not attempted yet"


def _progress_file() -> Path:
    # Per-learner results live beside the learner's cache, never in a shared read-only one.
    return settings.user_dir() / "progress.json"


def _solved() -> set[str]:
    path = _progress_file()  # a bad LABKIT_USER_DIR is the user's to fix: refused, not read as "nothing solved"
    try:
        keys = json.loads(path.read_text())
    except (OSError, ValueError):
        return set()
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        return set()  # not this kit's record (a list of exercise keys): the next solved exercise rewrites it
    return set(keys)


def _mark_solved(key: str) -> None:
    solved = _solved() | {key}
    try:
        path = _progress_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        # A temporary file of its own, then an atomic rename: a kernel killed mid-write leaves the old file, and
        # two notebooks open at once never write into the same temporary file.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".progress.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(sorted(solved)))
        os.replace(tmp, path)
    except OSError:
        pass  # progress is a convenience; a read-only home must not break an exercise


def get(key: str) -> Exercise:
    """The registered exercise `key`; a typo gets the list of valid keys."""
    load_all()
    if key not in REGISTRY:
        raise ValueError(f"Unknown exercise {key!r}; known: {', '.join(sorted(REGISTRY))}.")
    return REGISTRY[key]


def diagnose(key: str, answer: Any) -> str | None:
    """None when `answer` solves exercise `key`, NOT_ATTEMPTED for a placeholder, else the hint for its mistake."""
    ex = get(key)
    try:
        mistake = ex.check(answer)
    except NotAttempted:
        return NOT_ATTEMPTED
    except Mistake as m:
        return ex.hint(m.name) + (f" ({m.detail})" if m.detail and m.detail != m.name else "")
    except Exception as err:  # the learner's code raised: say what, in one line, never a traceback from labkit
        return f"your answer raised {type(err).__name__}: {err}. " + ex.hint("wrong")
    return None if mistake is None else ex.hint(mistake)


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
            print(f"✅ {key}: correct.")
        elif verdict == NOT_ATTEMPTED:
            print(f"⏳ {key}: {NOT_ATTEMPTED}. {get(key).question}")
        else:
            print(f"❌ {key}: not yet. Hint: {verdict}")
    return Verdict(key, verdict is None)


def use(key: str, answer: Callable) -> Callable:
    """The learner's function when it passes its check, else labkit's reference (saying so), for the real model."""
    if diagnose(key, answer) is None:
        print(f"using your {getattr(answer, '__name__', 'answer')} ({key}).")
        return answer
    print(f"using labkit's reference for {key} until yours passes its check.")
    return get(key).solution()


def solution(key: str) -> Any:
    """The reference answer of exercise `key` (a value, or a function for code exercises)."""
    return get(key).solution()


def reveal(key: str) -> None:
    """Print the reference answer of exercise `key`: the source of a function, or the value."""
    answer = solution(key)
    print(textwrap.dedent(inspect.getsource(answer)) if callable(answer) else repr(answer))


def hints(key: str) -> dict[str, str]:
    """Every targeted hint of exercise `key`, by the mistake it answers."""
    return dict(get(key).hints)


def exercises(notebook: str | None = None, kind: str | None = None) -> list[str]:
    """Keys of all exercises, or of one notebook's ("00", "02", ...), optionally of one kind ("code", "value")."""
    load_all()
    return sorted(k for k, ex in REGISTRY.items()
                  if (notebook is None or k.split(".")[0] == notebook) and (kind is None or ex.kind == kind))


def progress() -> pd.DataFrame:
    """Which exercises of which notebook are solved."""
    solved = _solved()
    rows = [{"notebook": k.split(".")[0], "exercise": k, "kind": get(k).kind, "solved": k in solved,
             "question": get(k).question} for k in exercises()]
    return pd.DataFrame(rows)
