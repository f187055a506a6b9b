"""Notebook 06 (three strategies): the Pareto front (by hand, then as code), a valid pipeline order, throughput."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from labkit.course.exercises import Mistake, NotAttempted, close, exercise, given, unanswered
from labkit.pipelines.pareto import EXERCISE_TABLE, pareto_front
from labkit.pipelines.pipeline import validate


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


# Golden tables for 06.pareto_front, each small enough to check by hand.
GOLDEN_TABLES = [
    EXERCISE_TABLE,
    # ties and duplicates: A and B are identical (neither beats the other: both on the front); C ties A on
    # accuracy and latency but is bigger (off); D is as accurate as A, slower, smaller (on).
    pd.DataFrame({"name": ["A", "B", "C", "D", "E"],
                  "accuracy": [0.80, 0.80, 0.80, 0.80, 0.75],
                  "latency_b32_ms": [100.0, 100.0, 100.0, 120.0, 100.0],
                  "size_bytes": [50e6, 50e6, 60e6, 40e6, 50e6]}),
    # latency decides: same accuracy and size, so only the fastest stays.
    pd.DataFrame({"name": ["fast", "mid", "slow"], "accuracy": [0.8, 0.8, 0.8],
                  "latency_b32_ms": [50.0, 80.0, 120.0], "size_bytes": [30e6, 30e6, 30e6]},
                 index=[10, 11, 12]),
]


def _pareto_front():
    def pareto_front(df: pd.DataFrame) -> pd.Series:
        acc = df["accuracy"].to_numpy()
        lat = df["latency_b32_ms"].to_numpy()
        size = df["size_bytes"].to_numpy()
        on_front = []
        for i in range(len(df)):
            # another row dominates row i: at least as good on all three measures, strictly better on one
            at_least = (acc >= acc[i]) & (lat <= lat[i]) & (size <= size[i])
            better = (acc > acc[i]) | (lat < lat[i]) | (size < size[i])
            on_front.append(not (at_least & better).any())
        return pd.Series(on_front, index=df.index)
    return pareto_front


def _variant(df: pd.DataFrame, latency_sign: float = 1.0, ties_dominate: bool = False) -> np.ndarray:
    """The front as a usual mistake computes it (latency maximised, or a tie counted as domination)."""
    vals = np.column_stack([df["accuracy"], -latency_sign * df["latency_b32_ms"], -df["size_bytes"]]).astype(float)
    out = []
    for i in range(len(vals)):
        others = np.delete(vals, i, axis=0)
        beats = np.all(others >= vals[i], axis=1)
        if not ties_dominate:
            beats &= np.any(others > vals[i], axis=1)
        out.append(not beats.any())
    return np.array(out)


@exercise("06.pareto_front",
          "Write pareto_front(df): a boolean Series (same index as df), True for rows no other row dominates "
          "(at least as good on accuracy (higher), latency_b32_ms and size_bytes (lower), strictly better on one).",
          _pareto_front,
          {"returned_rows": "return one True/False per row (a boolean Series with df's index), not the rows "
                            "themselves: the caller writes `df[front]` when it wants them.",
           "mutated_df": "your function changed the table it was given (a new column?). Work on `df.copy()` or "
                         "on plain arrays: the caller's table must stay as it was.",
           "latency_direction": "lower latency is better: a row beats another on latency when its latency is "
                                "*smaller*. Flip that comparison (accuracy is the only measure where higher wins).",
           "ties": "you counted a tie as domination, so identical rows knock each other off. To dominate, a row "
                   "must be at least as good on every measure AND strictly better on at least one.",
           "dominated_kept": "your front keeps a row that another row beats: compare on all three measures at "
                             "once (accuracy, latency AND size), not on one, and not 'strictly better on all'.",
           "wrong": "for each row, look for another row that is >= on accuracy, <= on latency and size, and "
                    "strictly better on one of them; the row is on the front when there is none."},
          kind="code", uses="the measured table of pipelines, its Pareto plot and the choice made on it")
def _check_pareto_front(answer: Any) -> str | None:
    if unanswered(answer):
        raise NotAttempted()
    if not callable(answer):
        raise Mistake("wrong_type", f"expected a function, got {type(answer).__name__}")
    got_all, want_all = [], []
    for table in GOLDEN_TABLES:
        given_table = table.copy()  # the learner's function gets a copy: the golden table stays intact
        got = answer(given_table)
        if got is None or got is Ellipsis:
            raise NotAttempted()
        if not given_table.equals(table) or list(given_table.columns) != list(table.columns):
            return "mutated_df"
        if isinstance(got, pd.DataFrame) or len(got) != len(table):
            return "returned_rows"
        got_all.append(np.asarray(got, dtype=bool))
        want_all.append(np.asarray(_pareto_front()(table), dtype=bool))
    if all(np.array_equal(g, w) for g, w in zip(got_all, want_all)):
        return None
    if all(np.array_equal(g, _variant(t, latency_sign=-1.0)) for g, t in zip(got_all, GOLDEN_TABLES)):
        return "latency_direction"
    if all(np.array_equal(g, _variant(t, ties_dominate=True)) for g, t in zip(got_all, GOLDEN_TABLES)):
        return "ties"
    if any((g & ~w).any() for g, w in zip(got_all, want_all)):
        return "dominated_kept"
    return "wrong"


def _order() -> list[str]:
    return ["structured", "recover", "int8"]


@exercise("06.order", "Order int8, structured and recover into a pipeline that works (a list of names).",
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
