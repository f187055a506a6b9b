"""One row per measured model for the tour's tables: accuracy with its interval, agreement, bytes, latencies and the
speed-up over the baseline timed beside it in one interleaved run."""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import pandas as pd
import torch

from labkit.core import data, roofline
from labkit.core.machine import cpu_name
from labkit.core.measure import (
    accuracy_ci,
    agreement,
    compare_latency,
    format_range,
    latency,
    predictions,
    serialized_bytes,
    speedups,
)


@dataclass
class Result:
    """One model's measured numbers, a row of every comparison table in the kit."""

    name: str
    accuracy: float
    agreement: float | None
    size_bytes: int
    latency_b1_ms: float | None = None
    latency_b32_ms: float | None = None
    threads: int = field(default_factory=torch.get_num_threads)
    device: str = field(default_factory=cpu_name)
    notes: str = ""
    accuracy_lo: float | None = None  # the 95% Wilson interval of `accuracy` on `snippets` held-out snippets
    accuracy_hi: float | None = None
    snippets: int | None = None
    # From one interleaved timing of this row's model beside the baseline (`timed_group`); None where not timed so.
    speedup_b32: float | None = None
    speedup_b32_lo: float | None = None  # min-max of the per-round ratios
    speedup_b32_hi: float | None = None
    baseline_b32_ms: float | None = None  # the baseline's median in that same group
    rounds: int | None = None
    # The same model on the validation split, where a configuration is chosen (the test split is reported once).
    val_accuracy: float | None = None
    val_accuracy_lo: float | None = None
    val_accuracy_hi: float | None = None
    val_snippets: int | None = None
    # The roofline's speed-up at batch 32 (labkit.core.roofline), where a roof was measured in this process.
    predicted_speedup_b32: float | None = None

    @property
    def size_mb(self) -> float:
        """Serialized size in MB (10^6 bytes)."""
        return self.size_bytes / 1e6


def evaluate(name: str, model, tokenizer, reference: np.ndarray | None = None, split: str = "test",
             limit: int | None = None, timing: bool = True, notes: str = "", validation: bool = True) -> Result:
    """Measure one model: accuracy and agreement on a held-out split, bytes, and latency at batch 1 and 32; with
    `validation` (and a test `split`) its accuracy on the validation split too, on the first `limit` snippets."""
    preds = predictions(model, tokenizer, split, limit)
    ci = accuracy_ci(preds, data.split(split, limit)["label"].to_numpy())
    val = validation_accuracy(model, tokenizer, limit) if validation and split == "test" else {}
    lat1 = latency(model, tokenizer, 1) if timing else None
    lat32 = latency(model, tokenizer, 32) if timing else None
    return Result(name=name, accuracy=ci["accuracy"], accuracy_lo=ci["lo"], accuracy_hi=ci["hi"], snippets=ci["n"],
                  agreement=None if reference is None else agreement(preds, reference),
                  size_bytes=serialized_bytes(model),
                  latency_b1_ms=lat1["median_ms"] if lat1 else None,
                  latency_b32_ms=lat32["median_ms"] if lat32 else None,
                  device=(lat32 or {}).get("device", cpu_name()), notes=notes,
                  val_accuracy=val.get("accuracy"), val_accuracy_lo=val.get("lo"), val_accuracy_hi=val.get("hi"),
                  val_snippets=val.get("n"))


def validation_accuracy(model, tokenizer, limit: int | None = None) -> dict:
    """Accuracy on the validation split (its first `limit` snippets) with its 95% Wilson interval: the number a
    configuration is chosen on."""
    return accuracy_ci(predictions(model, tokenizer, "val", limit), data.split("val", limit)["label"].to_numpy())


class RowSkipped(UserWarning):
    """A row left out of a tour's table because this model (or device) cannot run it: `row` and `reason`."""

    def __init__(self, row: str, reason: str):
        super().__init__(f"{row}: not run ({reason})")
        self.row, self.reason = row, reason


def skip_row(row: str, reason: str) -> None:
    """Leave `row` out of a tour's table, saying why: a warning here, a line in the report of `python -m labkit
    tour` (the table never shows a row that did not run)."""
    warnings.warn(RowSkipped(row, reason), stacklevel=2)


BASELINE_KEY = "baseline (same group)"


def timed_group(rows: list[Result], models: list, baseline_model, tokenizer, warmup: int | None = None,
                repeats: int | None = None) -> list[Result]:
    """`rows` with latencies and batch-32 speed-ups from one interleaved timing of their models beside the baseline.

    A row whose model is `baseline_model` itself gets the baseline's own timing (speed-up 1 by definition)."""
    if len(rows) != len(models):
        raise ValueError(f"{len(rows)} rows for {len(models)} models; give one model per row.")
    timed = {BASELINE_KEY: baseline_model}
    timed.update({r.name: m for r, m in zip(rows, models) if m is not baseline_model})
    lat1 = compare_latency(timed, tokenizer, 1, warmup, repeats)
    lat32 = compare_latency(timed, tokenizer, 32, warmup, repeats)
    ratio = speedups(lat32, BASELINE_KEY)
    roof, tokens = roofline.current(), lat32[BASELINE_KEY]["seq_len"]
    out = []
    for r, m in zip(rows, models):
        key = BASELINE_KEY if m is baseline_model else r.name
        out.append(replace(r, latency_b1_ms=lat1[key]["median_ms"], latency_b32_ms=lat32[key]["median_ms"],
                           speedup_b32=ratio[key]["speedup"], speedup_b32_lo=ratio[key]["lo"],
                           speedup_b32_hi=ratio[key]["hi"], baseline_b32_ms=lat32[BASELINE_KEY]["median_ms"],
                           rounds=ratio[key]["rounds"], device=lat32[key]["device"],
                           predicted_speedup_b32=None if roof is None else
                           roofline.predicted_speedup(m, baseline_model, roof, 32, tokens)[0]))
    return out


def evaluate_group(models: dict, tokenizer, reference: np.ndarray | None, baseline_model, notes: dict | None = None,
                   split: str = "test", limit: int | None = None) -> list[Result]:
    """`evaluate` for several models, their latencies timed interleaved with `baseline_model` in one group."""
    rows = [evaluate(name, m, tokenizer, reference, split, limit, timing=False, notes=(notes or {}).get(name, ""))
            for name, m in models.items()]
    return timed_group(rows, list(models.values()), baseline_model, tokenizer)


def reference_on(model, tokenizer, reference: np.ndarray, limit: int | None) -> np.ndarray:
    """The baseline's test predictions on the `limit`-sized subset a smaller tour measures (`reference` when None)."""
    if limit is None or len(reference) == len(data.split("test", limit)):  # already on that subset
        return reference
    return predictions(model, tokenizer, "test", limit)


def table(results: list[Result], baseline: str | None = None) -> pd.DataFrame:
    """Results as a DataFrame; with `baseline`, size and speed ratios against that row.

    A row timed in a group with the baseline keeps that group's speed-up; others are divided by the baseline row."""
    df = pd.DataFrame([asdict(r) for r in results])
    df.insert(3, "size_mb", df["size_bytes"] / 1e6)
    if baseline is not None:
        if baseline not in set(df["name"]):
            raise ValueError(f"No result named {baseline!r}; names are {list(df['name'])}.")
        base = df.set_index("name").loc[baseline]
        df["size_ratio"] = base["size_bytes"] / df["size_bytes"]
        across = base["latency_b32_ms"] / df["latency_b32_ms"]
        df["speedup_b32"] = df["speedup_b32"].astype(float).fillna(across)
    df["speedup_b32_range"] = [format_range(lo, hi) for lo, hi in zip(df["speedup_b32_lo"], df["speedup_b32_hi"])]
    df["rounds"] = df["rounds"].astype("Int64")  # a count, shown as 5 and not 5.000 (missing where not timed)
    return df
