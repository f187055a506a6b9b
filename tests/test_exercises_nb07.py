"""Each targeted hint of notebook 07's exercises, reached by the mistake it names (tests/test_checks.py runs the table)."""

from labkit.course import checks
from labkit.course.exercises.nb07 import BASELINE, GOLDEN


def _keeps_simulated(history, baseline_accuracy):
    close = history[history["accuracy"] >= baseline_accuracy - 0.02]  # forgot: a simulated point is not fast
    return close.sort_values("latency_ms")["name"].iloc[0]


def _no_threshold(history, baseline_accuracy):
    return history[~history["simulated"]].sort_values("latency_ms")["name"].iloc[0]


def _slowest(history, baseline_accuracy):
    real = history[~history["simulated"] & (history["accuracy"] >= baseline_accuracy - 0.02)]
    return real.sort_values("latency_ms", ascending=False)["name"].iloc[0]


def _row(history, baseline_accuracy):
    real = history[~history["simulated"] & (history["accuracy"] >= baseline_accuracy - 0.02)]
    return real.sort_values("latency_ms").iloc[0]


MISTAKES = [
    ("07.fastest_within_2_points", "simulated", lambda: _keeps_simulated),
    ("07.fastest_within_2_points", "threshold", lambda: _no_threshold),
    ("07.fastest_within_2_points", "slowest", lambda: _slowest),
    ("07.fastest_within_2_points", "returned_row", lambda: _row),
]


def test_the_reference_answer_of_the_golden_history():
    assert checks.solution("07.fastest_within_2_points")(GOLDEN, BASELINE) == "S int8"
