"""Slider points: one type for what a slider, a sweep or the dashboard measures at one setting, and one cache.

A notebook builds the model for a setting with its own torch code; `measure_point` measures it the kit's way
(accuracy with its 95% interval on the quick validation subset, agreement with the baseline, batch-32 latency
timed interleaved beside the baseline, bytes on disk); `@cached` computes each setting once per data set.
"""

from __future__ import annotations

import functools
import inspect
import weakref
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import pandas as pd
from torch import nn

from labkit.core import data, measure, memory
from labkit.core import model as model_lib
from labkit.lab.labels import t


@dataclass(frozen=True)
class Point:
    """One setting, measured. `lo`/`hi` bound the accuracy (95% Wilson interval on `n` snippets); the speed-up is the
    baseline's batch-32 median over this model's, both timed in one interleaved run, with its per-round min-max."""

    settings: dict
    accuracy: float
    lo: float
    hi: float
    n: int
    agreement: float | None = None  # share of snippets where the point predicts what the baseline predicts
    # The paired difference from the baseline on the same snippets (accuracy minus the baseline's), its 95% interval
    # and McNemar's exact p: only the snippets where the two disagree count.
    delta: float | None = None
    delta_lo: float | None = None
    delta_hi: float | None = None
    p_value: float | None = None
    latency_ms: float | None = None
    baseline_ms: float | None = None
    speedup: float | None = None
    speedup_lo: float | None = None
    speedup_hi: float | None = None
    size_bytes: int | None = None
    baseline_bytes: int | None = None
    extra: dict = field(default_factory=dict)  # what a lesson adds (remaining weights, perplexity, ...)

    def row(self) -> dict:
        """Settings, numbers and extras in one flat dict: a row of a table of points."""
        numbers = {k: v for k, v in asdict(self).items() if k not in ("settings", "extra")}
        return {**self.settings, **numbers, **self.extra}

    def readout(self) -> str:
        """The point in one line, as every slider shows it (in the learner's language: labkit.lab.labels)."""
        ci = measure.format_accuracy({"accuracy": self.accuracy, "lo": self.lo, "hi": self.hi, "n": self.n})
        parts = [t("accuracy {ci}", ci=ci)]
        if self.agreement is not None:
            parts.append(t("agreement {value}", value=f"{self.agreement:.3f}"))
        if self.p_value is not None and self.agreement != 1:
            parts.append(t("vs baseline {delta} points [{lo}, {hi}], p = {p}", delta=f"{100 * self.delta:+.1f}",
                           lo=f"{100 * self.delta_lo:+.1f}", hi=f"{100 * self.delta_hi:+.1f}", p=f"{self.p_value:.2g}"))
        if self.latency_ms is not None:
            timed = t("{ms} ms at batch 32", ms=f"{self.latency_ms:.1f}")
            if self.speedup is not None:
                timed += ", " + t("{speedup}x {spread}", speedup=f"{self.speedup:.2f}",
                                  spread=measure.format_range(self.speedup_lo, self.speedup_hi))
            parts.append(timed)
        if self.size_bytes is not None:
            sized = t("{mb} MB", mb=f"{self.size_bytes / 1e6:.1f}")
            if self.baseline_bytes:
                sized += " " + t("({ratio}x smaller)", ratio=f"{self.baseline_bytes / self.size_bytes:.1f}")
            parts.append(sized)
        return " · ".join(parts)

    def __str__(self) -> str:
        return self.readout()


def measure_point(model: nn.Module, settings: dict, tokenizer=None, *, time: bool = True, size: bool | int = True,
                  baseline: nn.Module | None = None, reference: np.ndarray | None = None,
                  split: str = data.QUICK_SPLIT, limit: int | None = data.QUICK_LIMIT, **extra: Any) -> Point:
    """Measure `model` at one setting against the baseline (the kit's shared one unless given).

    `size`: True for the bytes of the saved weights, a number for bytes computed another way (packed codes), False
    for none. `time`: batch-32 latency timed interleaved beside the baseline. `extra` keywords are kept as they are.
    """
    shared, shared_tok, shared_preds = model_lib.shared_baseline()
    baseline = shared if baseline is None else baseline
    tokenizer = shared_tok if tokenizer is None else tokenizer
    rows = data.split(split, limit)
    preds = measure.predict(model, tokenizer, rows["text"])
    if reference is None:
        reference = shared_preds if baseline is shared and (split, limit) == (data.QUICK_SPLIT, data.QUICK_LIMIT) \
            else measure.predict(baseline, tokenizer, rows["text"])
    labels = rows["label"].to_numpy()
    ci = measure.accuracy_ci(preds, labels)
    vs = measure.paired(preds, reference, labels)
    timing: dict = {}
    if time:
        models = {"baseline": baseline} if model is baseline else {"baseline": baseline, "point": model}
        lat = measure.compare_latency(models, tokenizer, 32, measure.SLIDER_WARMUP, measure.SLIDER_REPEATS)
        mine = list(models)[-1]
        ratio = measure.speedups(lat, "baseline")[mine]
        timing = dict(latency_ms=lat[mine]["median_ms"], baseline_ms=lat["baseline"]["median_ms"],
                      speedup=ratio["speedup"], speedup_lo=ratio["lo"], speedup_hi=ratio["hi"])
    sizes: dict = {}
    if size is not False:
        sizes = dict(size_bytes=measure.serialized_bytes(model) if size is True else int(size),
                     baseline_bytes=_baseline_bytes(baseline))
    return Point(dict(settings), ci["accuracy"], ci["lo"], ci["hi"], ci["n"], measure.agreement(preds, reference),
                 delta=vs["difference"], delta_lo=vs["lo"], delta_hi=vs["hi"], p_value=vs["p_value"], **timing, **sizes,
                 extra=dict(extra))


_BASELINE_BYTES: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


def _baseline_bytes(baseline: nn.Module) -> int:
    """The baseline's saved bytes, written once per baseline (and again only if its tensors changed): every new point
    would otherwise serialize the baseline again (91 MB written, and its time, per slider move)."""
    versions = tuple(t._version for t in baseline.state_dict().values())
    known = _BASELINE_BYTES.get(baseline)
    if known is None or known[0] != versions:
        known = _BASELINE_BYTES[baseline] = (versions, measure.serialized_bytes(baseline))
    return known[1]


_CACHE: dict[tuple, Any] = {}
data.on_change(_CACHE.clear)  # another data set: another baseline, other points


def cached(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` computed once per set of arguments (and data set); its freed pages handed back after each new point.

    A slider passes arguments by name and a sweep by position: both find the same point."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        key = (fn.__module__, fn.__qualname__, tuple(
            (name, tuple(sorted(value.items())) if signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD
             else value) for name, value in bound.arguments.items()))
        if key not in _CACHE:  # the point's model copy is freed when it returns: its pages go back (a hub is small)
            _CACHE[key] = memory.gives_back(fn)(*args, **kwargs)
        return _CACHE[key]
    wrapper.cache_clear = lambda: [_CACHE.pop(k) for k in list(_CACHE) if k[:2] == (fn.__module__, fn.__qualname__)]
    return wrapper


def table(points) -> pd.DataFrame:
    """Points as a DataFrame, one row each (settings, numbers and extras as columns)."""
    return pd.DataFrame([p.row() for p in points])
