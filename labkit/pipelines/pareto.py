"""The Pareto front of a table of measured models: the tour's, the benchmarks' and the capstone's one definition."""

from __future__ import annotations

import numpy as np
import pandas as pd

# A small made-up table to find the Pareto front of by hand (notebook 06, exercise 1).
EXERCISE_TABLE = pd.DataFrame({
    "name": ["fp32", "int8", "pruned", "pruned+int8", "tiny"],
    "accuracy": [0.83, 0.828, 0.81, 0.805, 0.70],
    "latency_b32_ms": [200.0, 150.0, 140.0, 90.0, 95.0],
    "size_bytes": [91e6, 23e6, 66e6, 17e6, 18e6],
})


def pareto_front(df: pd.DataFrame, maximize: tuple[str, ...] = ("accuracy",),
                 minimize: tuple[str, ...] = ("latency_b32_ms", "size_bytes")) -> pd.Series:
    """True for rows no other row beats on every objective (at least as good on all, better on one).

    Rows missing a measurement (e.g. a simulated model that was not timed) are never on the front.
    """
    missing = [c for c in maximize + minimize if c not in df]
    if missing:
        raise ValueError(f"The table has no column {', '.join(missing)}; name its columns with maximize=... and "
                         f"minimize=... (it has {', '.join(map(str, df.columns))}).")
    vals = np.column_stack([df[c].to_numpy(float) for c in maximize] + [-df[c].to_numpy(float) for c in minimize])
    measured = ~np.isnan(vals).any(axis=1)
    front = []
    for i in range(len(vals)):
        others = vals[measured & (np.arange(len(vals)) != i)]
        dominated = np.any(np.all(others >= vals[i], axis=1) & np.any(others > vals[i], axis=1))
        front.append(bool(measured[i] and not dominated))
    return pd.Series(front, index=df.index, name="pareto")
