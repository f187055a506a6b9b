"""Notebook 06 (three strategies): the Pareto front (by hand, then as code), a valid pipeline order, where a block's
multiply-adds go (Linears vs attention's products), two predictions and a written question."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from labkit.course.exercises import (
    Mistake,
    NotAttempted,
    exercise,
    given,
    prediction,
    unanswered,
    written,
)
from labkit.pipelines.pareto import EXERCISE_TABLE, pareto_front
from labkit.pipelines.pipeline import validate


def _pareto() -> list[str]:
    return sorted(EXERCISE_TABLE[pareto_front(EXERCISE_TABLE)]["name"])


@exercise("06.pareto", "Which rows of EXERCISE_TABLE are on the Pareto front? (a list of names, in any order)",
          _pareto,
          {"dominated": "your list keeps a row that another row beats on accuracy, latency and size at once: "
                        "such a row is never a sensible choice, whatever your priorities.",
           "too_few": "your list leaves out a row that nobody beats on every measure: the most accurate row, for "
                      "one, cannot be dominated however slow it is.",
           "wrong": "compare the rows two at a time on all three measures together; a row goes only when one "
                    "other row is at least as good on all of them and better on one."},
          ladder=("The front holds every row that no other single row beats on all measures together: accuracy "
                  "(higher is better), latency and size (lower is better). Being worst on one measure does not "
                  "take a row off the front.",
                  "The slip is ranking by one column. A slow row with the best accuracy stays; a row stays unless "
                  "one other row is at least as good on all three and better on one.",
                  "Rows (accuracy, ms, MB): P (0.90, 10, 8), Q (0.88, 12, 9), R (0.85, 6, 9). Q is beaten by P "
                  "on every measure: off. P is the most accurate: on. R is the fastest: on. Front: P and R."))
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
          "Write pareto_front(df): a boolean Series with df's index, True for each row on the Pareto front of "
          "accuracy (higher is better), latency_b32_ms and size_bytes (lower is better); df stays as it was. "
          "Checked on golden tables with ties and duplicate rows, then used on the measured table.",
          _pareto_front,
          {"returned_rows": "the caller wants one True/False per row (a boolean Series on df's index), so that it "
                            "can select the rows itself; you returned the rows.",
           "mutated_df": "your function changed the table it was given (a new column?); the caller's table must "
                         "come back as it went in, so work on arrays or on a copy.",
           "latency_direction": "your front prefers slow rows: for latency, as for size, the smaller number is "
                                "the better one; only accuracy wins by being larger.",
           "ties": "identical rows knocked each other off your front: a tie on every measure is not domination, "
                   "since the other row must also be strictly better somewhere.",
           "dominated_kept": "your front keeps a row that another row beats: the comparison must hold on all "
                             "three measures at once, and 'strictly better' is needed on one of them, not on all.",
           "wrong": "a row is off the front only when one other row is at least as good on accuracy, latency and "
                    "size together and strictly better on one; check each direction and the strictness."},
          kind="code", uses="the measured table of pipelines, its Pareto plot and the choice made on it",
          ladder=("Domination is a relation between two rows: one row dominates another when it is at least as "
                  "good on every measure and strictly better on at least one. The front is the rows nothing "
                  "dominates.",
                  "Two conditions about the *same* other row, combined with 'and': 'no worse everywhere' and "
                  "'better somewhere'. Testing only one of them drops tied rows or keeps beaten ones; and "
                  "'better' means smaller for latency and size.",
                  "Rows A (0.9, 10 ms, 5 MB), B (0.9, 12 ms, 5 MB), C (0.8, 8 ms, 5 MB), D = A. For B: A is no "
                  "worse everywhere and faster, so B is off. For A: D ties it everywhere but is better nowhere, "
                  "C is faster but less accurate, so A stays, and so does D. C is the fastest: it stays. "
                  "Answer: [True, False, True, True]."))
def _check_pareto_front(answer: Any) -> str | None:
    if unanswered(answer):
        raise NotAttempted()
    if not callable(answer):
        raise Mistake("wrong_type", "expected a function, got {type}", type=type(answer).__name__)
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


@exercise("06.order", "Order the steps int8, structured and recover into a pipeline that works (a list of the "
          "three names, each once).",
          _order,
          {"int8_first": "after int8 conversion no float Linear is left: there is nothing to rank, slice or "
                         "fine-tune, so a step that needs float weights cannot follow it.",
           "recover_first": "a fine-tune that recovers accuracy has nothing to win back before anything was removed.",
           "wrong": "use each of the three names once, and ask of each step what kind of weights it needs and "
                    "what it repairs."},
          ladder=("Each step takes a model and returns one; a step can only follow another if the model it gets "
                  "still has what it needs (float weights to rank or train).",
                  "The step that usually lands in the wrong place is the one that converts the weights: nothing "
                  "that prunes or trains can come after it.",
                  "With `magnitude` (zeros the smallest float weights) and a bf16 cast: the pruning ranks fp32 "
                  "weights, and the cast is an alternative last step, so the order is magnitude, then the cast."))
def _check_order(answer: Any) -> str | None:
    names = [str(a) for a in given(answer)]
    if sorted(names) != ["int8", "recover", "structured"]:
        return "wrong"
    if names[0] == "int8" or names[1] == "int8":
        return "int8_first"
    validate([(n, {}) for n in names])
    return None if names.index("structured") < names.index("recover") else "recover_first"




class _ToyBlock(nn.Module):
    """A transformer block's six Linears at toy sizes (width 4, 4 heads of 1, 8 FFN neurons), no forward needed."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(4, 4) for _ in range(4))
        self.up, self.down = nn.Linear(4, 8), nn.Linear(8, 4)
        self.norm = nn.LayerNorm(4)  # parameters that are not a Linear: no multiply-adds to count


# (seq_len, heads, head_size) -> (the Linears' multiply-adds, QK^T + AV's), worked by hand for _ToyBlock:
# Linears: 4 x 16 + 2 x 32 = 128 per token; attention: 2 products x heads x seq^2 x head_size.
GOLDEN_BLOCK = [((3, 4, 1), (384, 72)), ((5, 4, 1), (640, 200))]


def _block_macs():
    def block_macs(block: nn.Module, seq_len: int, heads: int, head_size: int) -> tuple[int, int]:
        linear_macs = 0
        for module in block.modules():
            if isinstance(module, nn.Linear):
                # every token goes through every Linear once: in x out multiply-adds per token
                linear_macs += module.in_features * module.out_features * seq_len
        # per head, QK^T is a (seq x head_size) @ (head_size x seq) product and AV a (seq x seq) @ (seq x head_size)
        scores = heads * seq_len * seq_len * head_size
        context = heads * seq_len * seq_len * head_size
        return linear_macs, scores + context
    return block_macs


@exercise("06.block_macs",
          "Write block_macs(block, seq_len, heads, head_size) -> (linear_macs, attention_macs): the multiply-adds "
          "one snippet of seq_len tokens costs in the block's nn.Linear layers, and in attention's two matrix "
          "products (scores and context), as two ints. Checked on a toy block at two lengths, then used on "
          "MiniLM's first block at 64 and 128 tokens.",
          _block_macs,
          {"per_token": "your Linear count does not grow with the length: every token of the snippet goes "
                        "through every Linear, so the cost is per token, times the tokens.",
           "linear_in_length": "your attention cost grows like the length, but each of the two products pairs "
                               "every token with every token: it grows with the length squared.",
           "one_product": "you counted one of attention's two products: the scores (query against key) and the "
                          "context (scores against value) cost the same.",
           "one_head": "your attention count is that of a single head: every head does both products, each on "
                       "its own head_size-wide slice.",
           "norms_counted": "you counted parameters that are not a Linear's weight matrix (biases, LayerNorm's): "
                            "only the weight matrices cost multiply-adds per token here.",
           "wrong": "count the Linears (their in and out widths, for every token) and attention's two products "
                    "(every token against every token, per head) separately, and return two ints."},
          kind="code", uses="MiniLM's first block at 64 and 128 tokens, where attention's share is read",
          ladder=("A Linear of in x out features costs in x out multiply-adds per token. Attention adds two "
                  "matrix products per head that no Linear does: query against key, then the scores against value.",
                  "Lengths enter the two counts differently: the Linears once per token, attention's products "
                  "once per *pair* of tokens. And every head does both products on its own slice.",
                  "One Linear(3, 2), 2 tokens, one head of size 1: Linear 3 x 2 x 2 = 12; scores 2 x 2 x 1 = 4, "
                  "context 2 x 2 x 1 = 4, attention 8. With 10 tokens: 60 and 200: the square catches up only "
                  "when the length nears the widths."))
def _check_block_macs(answer: Any) -> str | None:
    if unanswered(answer):
        raise NotAttempted()
    if not callable(answer):
        raise Mistake("wrong_type", "expected a function, got {type}", type=type(answer).__name__)
    block = _ToyBlock()
    linear_params = sum(m.weight.numel() for m in block.modules() if isinstance(m, nn.Linear))
    all_params = sum(p.numel() for p in block.parameters())
    verdicts = []
    for (seq, heads, size), (lin, att) in GOLDEN_BLOCK:
        got = answer(block, seq, heads, size)
        if got is None or got is Ellipsis or (isinstance(got, tuple) and any(unanswered(g) for g in got)):
            raise NotAttempted()
        if not (isinstance(got, tuple) and len(got) == 2):
            raise Mistake("wrong_type", "expected a tuple (linear_macs, attention_macs), got {got!r}", got=got)
        got_lin, got_att = (float(g) for g in got)
        if got_lin == linear_params:
            verdicts.append("per_token")
        elif got_lin in (all_params * seq, (linear_params + 4) * seq):  # every parameter, or LayerNorm's weight too
            verdicts.append("norms_counted")
        elif got_lin != lin:
            verdicts.append("wrong")
        elif got_att == 2 * heads * seq * size:
            verdicts.append("linear_in_length")
        elif got_att == att / 2:
            verdicts.append("one_product")
        elif got_att == att / heads:
            verdicts.append("one_head")
        elif got_att != att:
            verdicts.append("wrong")
    return verdicts[0] if verdicts else None


prediction("06.combined_size_ratio", "How many times smaller than fp32 are the saved weights of structured + "
           "recover + token + int8?", unit="x")
prediction("06.token_speedup_64", "At 64 word pieces and batch 32, how many times faster than fp32 does token "
           "pruning (half the tokens from layer 2 on) run?", unit="x")
written("06.why_token_speedup", "Token pruning removes half the tokens from layer 2 on. Why was its measured "
        "speed-up at 64 word pieces below 2x, and why does attention's square barely matter at these lengths?")
