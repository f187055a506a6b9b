"""Each targeted hint of notebook 06's exercises, reached by the mistake it names (tests/test_checks.py runs the table)."""

import numpy as np
import pandas as pd
import torch

from labkit.course import checks
from labkit.course.exercises.nb06 import GOLDEN_TABLES
from labkit.pipelines import pareto


def _front(df, latency_sign=1.0, ties_dominate=False, measures=3):
    cols = [df["accuracy"], -latency_sign * df["latency_b32_ms"], -df["size_bytes"]][:measures]
    vals = np.column_stack(cols).astype(float)
    out = []
    for i in range(len(vals)):
        others = np.delete(vals, i, axis=0)
        beats = np.all(others >= vals[i], axis=1)
        if not ties_dominate:
            beats &= np.any(others > vals[i], axis=1)
        out.append(not beats.any())
    return pd.Series(out, index=df.index)


def _strict_on_all(df):
    vals = np.column_stack([df["accuracy"], -df["latency_b32_ms"], -df["size_bytes"]])
    return pd.Series([not np.all(vals > v, axis=1).any() for v in vals], index=df.index)


def _adds_column(df):
    df["pareto"] = _front(df)
    return df["pareto"]


MISTAKES = [
    ("06.pareto", "dominated", lambda: ["fp32", "int8", "pruned", "pruned+int8", "tiny"]),
    ("06.pareto", "too_few", lambda: ["pruned+int8"]),
    ("06.pareto_front", "returned_rows", lambda: lambda df: df[_front(df)]),
    ("06.pareto_front", "mutated_df", lambda: _adds_column),
    ("06.pareto_front", "latency_direction", lambda: lambda df: _front(df, latency_sign=-1.0)),
    ("06.pareto_front", "ties", lambda: lambda df: _front(df, ties_dominate=True)),
    ("06.pareto_front", "dominated_kept", lambda: _strict_on_all),
    ("06.order", "int8_first", lambda: ["int8", "structured", "recover"]),
    ("06.order", "recover_first", lambda: ["recover", "structured", "int8"]),
    ("06.block_macs", "per_token", lambda: lambda b, n, h, d: (_linears(b, 1), _attention(n, h, d))),
    ("06.block_macs", "norms_counted", lambda: lambda b, n, h, d: (sum(p.numel() for p in b.parameters()) * n,
                                                                    _attention(n, h, d))),
    ("06.block_macs", "linear_in_length", lambda: lambda b, n, h, d: (_linears(b, n), 2 * n * h * d)),
    ("06.block_macs", "one_product", lambda: lambda b, n, h, d: (_linears(b, n), n * n * h * d)),
    ("06.block_macs", "one_head", lambda: lambda b, n, h, d: (_linears(b, n), 2 * n * n * d)),
]


def _linears(block, n):
    return sum(m.in_features * m.out_features for m in block.modules() if isinstance(m, torch.nn.Linear)) * n


def _attention(n, h, d):
    return 2 * n * n * h * d


def test_attention_is_a_few_percent_of_minilms_linears_at_128_tokens():
    # MiniLM-L12-H384: width 384, 12 heads of 32, 1536 FFN neurons (the block's shapes, not the weights)
    block = torch.nn.ModuleList([torch.nn.Linear(384, 384) for _ in range(4)]
                                + [torch.nn.Linear(384, 1536), torch.nn.Linear(1536, 384)])
    shares = [(lambda lin, att: att / lin)(*checks.solution("06.block_macs")(block, n, 12, 32)) for n in (64, 128)]
    assert 0.02 < shares[0] < 0.03 and 0.05 < shares[1] < 0.06



def test_one_measure_keeps_dominated_rows_and_gets_that_hint():
    hint = checks.get("06.pareto_front").hint("dominated_kept")
    assert checks.diagnose("06.pareto_front", lambda df: _front(df, measures=2)).startswith(hint)


def test_reference_front_agrees_with_the_kit_on_every_golden_table():
    mine = checks.solution("06.pareto_front")
    for table in GOLDEN_TABLES:
        assert mine(table).tolist() == pareto.pareto_front(table).tolist()
