"""Dynamic int8 (notebook 04): int8 weights ahead of time, each batch's activation scale decided at run time, set
against static (calibrated) scales on inputs unlike the calibration set. The lesson's mechanism is the notebook's
own torch code; here are its inputs, its table and the tour's row.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from torch import nn

from labkit.core import data, measure, parts, results, settings
from labkit.quant import int8 as quant_int8


def dynamic_int8(model: nn.Module, inplace: bool = False) -> nn.Module:
    """`quant.int8.dynamic_int8(model, "blocks")`: the blocks' Linears in torch's dynamic int8, the head in float.
    Returns a new model; the input is unchanged unless inplace=True."""
    settings.flags(inplace=inplace)
    parts.blocks(model)  # a supported classifier, or a ValueError naming the families
    return quant_int8.dynamic_int8(model, "blocks", inplace)


def compare_predictions(preds: dict[str, np.ndarray], labels, baseline: str) -> pd.DataFrame:
    """One row per model: accuracy with its 95% interval, agreement with `baseline`, paired difference from it."""
    if baseline not in preds:
        raise ValueError(f"baseline {baseline!r} is not one of the models: {', '.join(preds)}.")
    labels = np.asarray(labels)
    rows = []
    for name, p in preds.items():
        ci = measure.accuracy_ci(p, labels)
        row = {"model": name, "accuracy": ci["accuracy"], "accuracy (95% interval)": measure.format_accuracy(ci),
               "agreement": measure.agreement(p, preds[baseline])}
        if name != baseline:
            d = measure.paired(p, preds[baseline], labels)
            row.update({"minus " + baseline: f"{d['difference']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]",
                        "p (McNemar)": round(d["p_value"], 3)})
        rows.append(row)
    return pd.DataFrame(rows).set_index("model")


def calibration_texts(size: int = 64) -> list[str]:
    """The `size` shortest training snippets: a deliberately narrow calibration set."""
    train = data.split("train")
    return list(train.loc[train["text"].str.len().sort_values(kind="stable").index[:size], "text"])


SHIFTS = ("normal", "long", "repeated", "upper")


def shifted_test(kind: str, limit: int = data.QUICK_LIMIT) -> pd.DataFrame:
    """Test inputs unlike the calibration set: 'normal', 'long' (longest snippets), 'repeated' (x3), 'upper'."""
    if kind not in SHIFTS:
        raise ValueError(f"Unknown kind {kind!r}; choose one of {', '.join(SHIFTS)}.")
    test = data.split("test")
    if kind == "normal":
        return data.split("test", limit)
    if kind == "long":
        return test.loc[test["text"].str.len().sort_values(kind="stable").index[-limit:]].reset_index(drop=True)
    shifted = data.split("test", limit).copy()
    if kind == "repeated":
        shifted["text"] = (shifted["text"] + " ") * 2 + shifted["text"]
    else:
        shifted["text"] = shifted["text"].str.upper()
    return shifted


def tour(model: nn.Module, tokenizer, reference: np.ndarray, limit: int | None = None) -> list[results.Result]:
    """The main job's row for real dynamic int8 of the blocks' Linear layers, timed beside `model`.

    `limit` measures accuracy on the first `limit` test snippets only (tests); the code path is the same."""
    models = {"dynamic int8 (torch)": dynamic_int8(model)}
    notes = {"dynamic int8 (torch)": "int8 weights, per-batch activation scales"}
    return results.evaluate_group(models, tokenizer, results.reference_on(model, tokenizer, reference, limit), model,
                                  notes, limit=limit)
