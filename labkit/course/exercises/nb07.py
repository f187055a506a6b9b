"""Notebook 07 (capstone): read the dashboard's own measurements."""

from __future__ import annotations

from typing import Any

from labkit.course.exercises import exercise, given
from labkit.pipelines.strategies import dashboard_history, dashboard_point


def _fastest_within_2_points() -> str:
    baseline = dashboard_point()  # measured once per session (cached), so the answer always has a reference
    history = dashboard_history()
    ok = history[~history["simulated"] & (history["accuracy"] >= baseline["accuracy"] - 0.02)]
    return ok.sort_values("latency_b32_ms").iloc[0]["name"]


@exercise("07.fastest_within_2_points",
          "Of the dashboard points measured so far, which real (not simulated) one is fastest within 2 points "
          "of the baseline's accuracy? (its name)",
          _fastest_within_2_points,
          {"simulated": "that point is simulated (fake-quantized): it only tells accuracy, its latency is not real.",
           "wrong": "keep the rows with simulated == False and accuracy >= baseline accuracy - 0.02, then take the "
                    "one with the smallest latency_b32_ms."})
def _check_fastest(answer: Any) -> str | None:
    name = str(given(answer))
    history = dashboard_history()
    if name in set(history[history["simulated"]]["name"]):
        return "simulated"
    return None if name == _fastest_within_2_points() else "wrong"
