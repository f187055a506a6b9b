"""Each targeted hint of notebook 07's exercises, reached by the mistake it names (tests/test_checks.py runs the table)."""

import copy

import torch

from labkit.core import parts
from labkit.course import checks
from labkit.course.exercises.nb07 import BASELINE, GOLDEN
from labkit.pipelines import pipeline


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
    ("07.design", "empty", lambda: []),
    ("07.design", "refused", lambda: [("int8", {}), ("structured", {"heads": 1 / 3})]),
    # The checks below build and measure on the baseline: a broken head loses accuracy whatever the machine, and a
    # plain copy of fp32 cannot be 3x faster than fp32.
    ("07.design", "too_inaccurate", lambda: _one_class),
    ("07.design", "too_slow", lambda: copy.deepcopy),
]


def _one_class(model):
    out = copy.deepcopy(model)
    last = list(parts.head_linears(out).values())[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.arange(last.out_features, dtype=last.bias.dtype))  # always the last class
    return out


def test_the_reference_design_is_a_pipeline_run_pipeline_accepts():
    pipeline.validate(checks.solution("07.design"))


def test_the_reference_answer_of_the_golden_history():
    assert checks.solution("07.fastest_within_2_points")(GOLDEN, BASELINE) == "S int8"
