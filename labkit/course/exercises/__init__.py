"""The course's exercises: one module per notebook, each registering checks, targeted hints and solutions.

An exercise's check looks at a learner's answer and returns `None` when it is right, or the name of the
mistake it sees (a key of the exercise's `hints`). Learner notebooks never import these modules directly:
they go through `labkit.course.checks`, which loads them.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

# Hints every exercise can return, on top of its own.
GENERIC_HINTS = {
    "mutated": "your function changed its input in place. Work on a copy (`x.clone()`) or use out-of-place "
               "operations (`x * mask`, not `x.mul_(mask)`): the caller's tensor must stay as it was.",
    "wrong_type": "the answer is not of the kind asked for; read the question again (a number, a tuple, a function?).",
}


@dataclass
class Exercise:
    """One exercise: its question, a check that names the mistake, the hints for each mistake, the solution."""

    key: str  # "<notebook>.<name>", e.g. "02.linear_quantize"
    question: str
    check: Callable[[Any], str | None]
    solution: Callable[[], Any]
    hints: dict[str, str]
    kind: str = "value"  # "value": a number, tuple or tensor; "code": a function the learner writes
    uses: str = ""  # for code exercises: where the learner's function runs on the real model
    extra: dict = field(default_factory=dict)
    ladder: tuple[str, ...] = ()  # graduated hints: the concept, the step that goes wrong, a smaller worked case

    def hint(self, mistake: str, translate: Callable[[str | None, str], str] | None = None) -> str:
        """The hint for a named mistake (an exercise's own hints first, then the generic ones), in English or
        through `translate(field, english)` (field "hint:<name>" for the exercise's own, None for a generic one)."""
        translate = translate or (lambda field, english: english)
        if self.hints.get(mistake):
            return translate(f"hint:{mistake}", self.hints[mistake])
        if GENERIC_HINTS.get(mistake):
            return translate(None, GENERIC_HINTS[mistake])
        return translate("hint:wrong", self.hints["wrong"])


REGISTRY: dict[str, Exercise] = {}


def exercise(key: str, question: str, solution: Callable[[], Any], hints: dict[str, str],
             kind: str = "value", uses: str = "", ladder: tuple[str, ...] = ()):
    """Register a check `answer -> None | mistake name` under `key` (decorator); `hints` must have a "wrong" entry.

    `ladder`: the graduated hints `checks.hint(key)` gives one at a time: the concept, then the step that usually
    goes wrong, then a smaller worked case; none of them holds a line of the solution."""
    if "wrong" not in hints:
        raise ValueError(f"exercise {key}: hints need a 'wrong' entry, the hint for a mistake no other hint names.")
    if ladder and len(ladder) != 3:
        raise ValueError(f"exercise {key}: a ladder has three hints (concept, step, smaller case), got {len(ladder)}.")

    def register(fn: Callable[[Any], str | None]) -> Callable[[Any], str | None]:
        REGISTRY[key] = Exercise(key, question, fn, solution, dict(hints), kind, uses, ladder=tuple(ladder))
        return fn
    return register


@dataclass
class Prediction:
    """A number the learner predicts before a cell measures it (`checks.predict`, then `checks.measured`)."""

    key: str  # "<notebook>.<name>", e.g. "02.int8_speedup_b32"
    question: str
    unit: str = ""  # printed after the numbers, e.g. "x" or "ms"


@dataclass
class Written:
    """A question the learner answers in words, in the markdown cell below it; the solved edition holds a rubric."""

    key: str
    question: str
    points: int = 2


PREDICTIONS: dict[str, Prediction] = {}
WRITTEN: dict[str, Written] = {}


def prediction(key: str, question: str, unit: str = "") -> None:
    """Register a prediction the notebook records with `checks.predict(key, value)` before it measures."""
    PREDICTIONS[key] = Prediction(key, question, unit)


def written(key: str, question: str, points: int = 2) -> None:
    """Register a written question; its answer cell in solutions/ holds the rubric between solution markers."""
    if points < 1:
        raise ValueError(f"written question {key}: points must be at least 1, got {points}.")
    WRITTEN[key] = Written(key, question, points)


class NotAttempted(Exception):
    """The learner has not written an answer yet (`...`, None, or a function that returns nothing)."""


class Mistake(Exception):
    """A check found a named mistake while running the learner's code."""

    def __init__(self, name: str, detail: str = "", **fields: Any):
        # `detail` is a fixed English text or a template that `fields` fill: checks shows it through the label
        # table, so a Chinese learner reads it in Chinese where STRINGS has it.
        super().__init__(detail.format(**fields) if fields else (detail or name))
        self.name, self.detail, self.fields = name, detail, fields


def unanswered(answer: Any) -> bool:
    """True for the placeholders a learner edition starts with."""
    return answer is None or answer is Ellipsis


def given(answer: Any) -> Any:
    """The answer itself; NotAttempted for a placeholder."""
    if unanswered(answer):
        raise NotAttempted()
    return answer


def attempt(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a learner's function on golden inputs: NotAttempted for a stub, Mistake('mutated') if it changes its inputs."""
    if unanswered(fn):
        raise NotAttempted()
    if not callable(fn):
        raise Mistake("wrong_type", "expected a function, got {type}", type=type(fn).__name__)
    # The learner gets copies, so a function that writes into its input can never corrupt the golden data.
    given_args = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    try:
        out = fn(*given_args, **kwargs)
    except NotImplementedError as err:
        raise NotAttempted() from err
    pairs = [(a, g) for a, g in zip(args, given_args) if isinstance(a, torch.Tensor)]
    if any(a.shape != g.shape or not torch.equal(a, g) for a, g in pairs):
        raise Mistake("mutated")
    if out is None or out is Ellipsis or (isinstance(out, tuple) and any(unanswered(o) for o in out)):
        raise NotAttempted()
    return out


def close(a: float, b: float, rel: float = 1e-6) -> bool:
    """True when two numbers agree to a relative tolerance."""
    return abs(float(a) - float(b)) <= rel * max(1.0, abs(float(b)))


def load_all() -> None:
    """Import every notebook's exercise module, so each registers itself."""
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")
