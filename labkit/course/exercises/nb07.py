"""Notebook 07 (capstone): read the dashboard's own measurements."""

from __future__ import annotations

from typing import Any

import pandas as pd

from labkit.course.exercises import Mistake, NotAttempted, exercise, unanswered

# A history of dashboard points to check by hand: the baseline is 0.85, so "within 2 points" means >= 0.83.
# The fastest row is simulated (it runs the float model), the next fastest lost 5 points, and the real answer
# beats the plain int8 row by 5 ms. The index does not start at 0.
GOLDEN = pd.DataFrame({
    "name": ["fp32", "int8", "4b-sim", "S keep50% int8", "S int8", "S fp32"],
    "accuracy": [0.85, 0.845, 0.84, 0.80, 0.835, 0.84],
    "latency_ms": [100.0, 40.0, 30.0, 20.0, 35.0, 60.0],
    "simulated": [False, False, True, False, False, False],
}, index=range(10, 16))
BASELINE = 0.85


def _fastest_within():
    def fastest_within(history: pd.DataFrame, baseline_accuracy: float) -> str:
        real = history[~history["simulated"] & (history["accuracy"] >= baseline_accuracy - 0.02)]
        return real.sort_values("latency_ms")["name"].iloc[0]
    return fastest_within


def _variant(kept: pd.Series, slowest: bool = False) -> str:
    return str(GOLDEN[kept].sort_values("latency_ms", ascending=not slowest)["name"].iloc[0])


@exercise("07.fastest_within_2_points",
          "Write fastest_within(history, baseline_accuracy): the name of the fastest real (not simulated) point whose "
          "accuracy is within 2 points of the baseline's.",
          _fastest_within,
          {"simulated": "that point is simulated (fake-quantized): its accuracy is real, but it runs the float model, "
                        "so its latency says nothing about int8 speed. Keep only the rows with simulated == False.",
           "threshold": "that point lost more than 2 points: keep only the rows with accuracy >= baseline_accuracy - "
                        "0.02 before you look for the fastest.",
           "slowest": "the fastest point has the *smallest* latency_ms: sort ascending (or take idxmin).",
           "returned_row": "return the point's name (a string from the `name` column), not its row or its index.",
           "wrong": "keep the rows with simulated == False and accuracy >= baseline_accuracy - 0.02, then return the "
                    "name of the one with the smallest latency_ms."},
          kind="code", uses="the history of every point you measured on the dashboard")
def _check_fastest(answer: Any) -> str | None:
    if unanswered(answer):
        raise NotAttempted()
    if not callable(answer):
        raise Mistake("wrong_type", f"expected a function, got {type(answer).__name__}")
    table = GOLDEN.copy()  # the learner's function gets a copy: the golden table stays intact
    got = answer(table, BASELINE)
    if got is None or got is Ellipsis:
        raise NotAttempted()
    if not table.equals(GOLDEN):
        return "mutated"
    if not isinstance(got, str):
        return "returned_row"
    close = GOLDEN["accuracy"] >= BASELINE - 0.02
    if got == _fastest_within()(GOLDEN, BASELINE):
        return None
    if got in set(GOLDEN[GOLDEN["simulated"]]["name"]):
        return "simulated"
    if got == _variant(~GOLDEN["simulated"]):
        return "threshold"
    if got == _variant(~GOLDEN["simulated"] & close, slowest=True):
        return "slowest"
    return "wrong"
