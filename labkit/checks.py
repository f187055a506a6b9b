"""Exercise answers: `checks.check("00.float64_bytes", answer)` says right, or gives a hint; `progress()` lists them."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd


@dataclass
class Exercise:
    """One exercise: how to check an answer, a hint for a wrong one, and the reference solution."""

    key: str  # "<notebook>.<name>", e.g. "02.symmetric_round"
    question: str
    check: Callable[[Any], bool]
    solution: Callable[[], Any]
    hint: str


_EXERCISES: dict[str, Exercise] = {}


def exercise(key: str, question: str, hint: str, solution: Callable[[], Any]):
    """Register a check function `answer -> bool` under `key` (decorator)."""
    def register(fn: Callable[[Any], bool]) -> Callable[[Any], bool]:
        _EXERCISES[key] = Exercise(key, question, fn, solution, hint)
        return fn
    return register


def _progress_file() -> Path:
    # Per-learner results live beside the learner's cache, never in a shared read-only one.
    base = os.environ.get("LABKIT_USER_DIR") or Path.home() / ".cache" / "labkit-user"
    return Path(base) / "progress.json"


def _solved() -> set[str]:
    try:
        return set(json.loads(_progress_file().read_text()))
    except (OSError, ValueError):
        return set()


def _mark_solved(key: str) -> None:
    solved = _solved() | {key}
    try:
        path = _progress_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(sorted(solved)))
    except OSError:
        pass  # progress is a convenience; a read-only home must not break an exercise


def get(key: str) -> Exercise:
    """The registered exercise `key`; a typo gets the list of valid keys."""
    _load_all()
    if key not in _EXERCISES:
        raise ValueError(f"Unknown exercise {key!r}; known: {', '.join(sorted(_EXERCISES))}.")
    return _EXERCISES[key]


def check(key: str, answer: Any, quiet: bool = False) -> bool:
    """True if `answer` solves exercise `key`; prints a hint when it does not."""
    ex = get(key)
    try:
        ok = bool(ex.check(answer))
    except Exception as err:  # a learner's answer of the wrong type is a wrong answer, with a hint
        ok, extra = False, f" ({type(err).__name__}: {err})"
    else:
        extra = ""
    if ok:
        _mark_solved(key)
    if not quiet:
        print(f"✅ {key}: correct." if ok else f"❌ {key}: not yet{extra}. Hint: {ex.hint}")
    return ok


def solution(key: str) -> Any:
    """The reference answer of exercise `key` (for teachers, and for the tests)."""
    return get(key).solution()


def exercises(notebook: str | None = None) -> list[str]:
    """Keys of all exercises, or of one notebook's ("00", "02", ...)."""
    _load_all()
    return sorted(k for k in _EXERCISES if notebook is None or k.split(".")[0] == notebook)


def progress() -> pd.DataFrame:
    """Which exercises of which notebook are solved."""
    solved = _solved()
    rows = [{"notebook": k.split(".")[0], "exercise": k, "solved": k in solved, "question": get(k).question}
            for k in exercises()]
    return pd.DataFrame(rows)


def _close(a: float, b: float, rel: float = 1e-6) -> bool:
    return abs(float(a) - float(b)) <= rel * max(1.0, abs(float(b)))


def _load_all() -> None:
    """Exercises defined in the technique modules register themselves on import."""
    import importlib

    for name in ("sparse", "quantize", "prune", "dynamic", "strategies"):
        try:
            importlib.import_module(f"labkit.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"labkit.{name}":
                raise


# --- 00: baseline and myths ----------------------------------------------------------------------

def _float64_bytes_solution() -> int:
    # The FFN up-projection of one layer: 1536 x 384 weights, 8 bytes each after the cast.
    return 1536 * 384 * 8


@exercise("00.float64_bytes",
          "How many bytes does one 1536x384 float32 weight matrix take after the cast to float64?",
          "count the weights (rows x columns), then multiply by the bytes of one float64 number.",
          _float64_bytes_solution)
def _check_float64_bytes(answer: Any) -> bool:
    return _close(answer, _float64_bytes_solution())


def _int8_bytes_solution() -> int:
    return 1536 * 384 * 1 + 4 + 4  # int8 codes plus one float32 scale and one int32 zero point


@exercise("00.int8_bytes",
          "And with one int8 code per weight plus a float32 scale and an int32 zero point for the matrix?",
          "one byte per weight, plus 4 bytes for the scale and 4 for the zero point.",
          _int8_bytes_solution)
def _check_int8_bytes(answer: Any) -> bool:
    return _close(answer, _int8_bytes_solution())


def _mask_shape_solution() -> tuple[int, int]:
    return (1536, 384)


@exercise("00.mask_shape",
          "What shape does the weight keep after a correct 50% magnitude mask? (a tuple)",
          "a mask multiplies: it zeroes entries but keeps every row and column where the layer expects it.",
          _mask_shape_solution)
def _check_mask_shape(answer: Any) -> bool:
    return tuple(int(x) for x in np.atleast_1d(answer)) == _mask_shape_solution()
