"""Notebook 06 (three strategies): the Pareto front, a valid pipeline order, throughput."""

from __future__ import annotations

from typing import Any

import pandas as pd

from . import close, exercise, given
from ..strategies import pareto_front, validate

EXERCISE_TABLE = pd.DataFrame({
    "name": ["fp32", "int8", "pruned", "pruned+int8", "tiny"],
    "accuracy": [0.83, 0.828, 0.81, 0.805, 0.70],
    "latency_b32_ms": [200.0, 150.0, 140.0, 90.0, 95.0],
    "size_bytes": [91e6, 23e6, 66e6, 17e6, 18e6],
})


def _pareto() -> list[str]:
    return sorted(EXERCISE_TABLE[pareto_front(EXERCISE_TABLE)]["name"])


@exercise("06.pareto", "Which rows of EXERCISE_TABLE are on the Pareto front? (a list of names)",
          _pareto,
          {"dominated": "'tiny' is slower, bigger and less accurate than 'pruned+int8': a dominated row is off the front.",
           "too_few": "a row stays on the front when no other row beats it on *every* measure; fp32 is the most accurate.",
           "wrong": "a row is off the front only if another row is at least as good on accuracy, latency and size, "
                    "and better on one."})
def _check_pareto(answer: Any) -> str | None:
    names = sorted(str(a) for a in given(answer))
    if "tiny" in names:
        return "dominated"
    if set(names) < set(_pareto()):
        return "too_few"
    return None if names == _pareto() else "wrong"


def _order() -> list[str]:
    return ["structured", "recover", "int8"]


@exercise("06.order", "Order int8, structured and recover so that labkit accepts the pipeline (a list of names).",
          _order,
          {"int8_first": "pruning and fine-tuning need float weights: int8 comes last.",
           "recover_first": "recovering only makes sense after something was removed.",
           "wrong": "use each of int8, structured and recover once: prune, then recover, then quantize."})
def _check_order(answer: Any) -> str | None:
    names = [str(a) for a in given(answer)]
    if sorted(names) != ["int8", "recover", "structured"]:
        return "wrong"
    if names[0] == "int8" or names[1] == "int8":
        return "int8_first"
    validate([(n, {}) for n in names])
    return None if names.index("structured") < names.index("recover") else "recover_first"


def _throughput() -> float:
    return 32 / 0.250


@exercise("06.throughput", "A batch of 32 snippets takes 250 ms. How many snippets per second is that?",
          _throughput,
          {"milliseconds": "250 ms is 0.25 s: snippets per *second* divides by seconds.",
           "inverted": "that is seconds per snippet; throughput is snippets per second.",
           "wrong": "divide the snippets in a batch by the batch's time in seconds (250 ms = 0.25 s)."})
def _check_throughput(answer: Any) -> str | None:
    answer = float(given(answer))
    if close(answer, 32 / 250, 1e-3):
        return "milliseconds"
    if close(answer, 0.25 / 32, 1e-3):
        return "inverted"
    return None if close(answer, _throughput(), rel=1e-3) else "wrong"
