"""A per-group pruning plan chosen from a sensitivity scan (notebook 03 runs the scan on the validation split)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from labkit.core import data


def _drop_at(row: pd.Series, s: float) -> float:
    """A group's accuracy drop at sparsity s, interpolated through (0, 0) and the scanned points (made monotone)."""
    xs = np.array([0.0] + [float(c) for c in row.index])
    ys = np.maximum.accumulate(np.array([0.0] + [max(0.0, float(v)) for v in row.to_numpy()]))
    return float(np.interp(s, xs, ys))


def plan_from_scan(scan: pd.DataFrame, sizes: dict[str, int], total: float, step: float = 0.05) -> dict[str, float]:
    """Per-group sparsities that remove `total` of all the weights, chosen greedily from a sensitivity scan.

    `scan` has a row per group and a column per scanned sparsity (the accuracy drop in points); `sizes` is the number
    of weights in each group. From zero, the group whose drop grows least per weight removed gets `step` more
    sparsity, never past the highest scanned one, until the total is reached. A scan measured on the test split
    (`scan.attrs["split"] == "test"`) is refused: a plan is chosen on validation.
    """
    data.selection_split(scan.attrs.get("split", "val"))
    if not 0.0 <= float(total) < 1.0:
        raise ValueError(f"total must be a fraction in [0, 1) (e.g. 0.6), got {total!r}.")
    missing = set(sizes) - set(scan.index)
    if missing:
        raise ValueError(f"The scan has no row for {sorted(missing)}; scan every group you plan for.")
    cap = max(float(c) for c in scan.columns)
    if total > cap:
        raise ValueError(f"total={total} is above the highest scanned sparsity {cap}; scan higher sparsities.")
    level = {g: 0.0 for g in sizes}
    left = total * sum(sizes.values())  # weights still to remove

    def cost(g: str) -> float:  # the accuracy drop one more step of group g costs, per weight it removes
        s = min(cap, level[g] + step)
        return (_drop_at(scan.loc[g], s) - _drop_at(scan.loc[g], level[g])) / (sizes[g] * (s - level[g]))

    while left > 0.5:
        g = min((g for g in sizes if level[g] < cap - 1e-9), key=cost)
        delta = min(step, cap - level[g], left / sizes[g])
        level[g] += delta
        left -= delta * sizes[g]
    return level
