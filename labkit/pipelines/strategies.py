"""The three strategies: performance optimization (pipelines, Pareto front), scalability, security hardening."""

from __future__ import annotations

import os
import pickle
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from labkit import fast_mode
from labkit.core import checkpoint, data, measure, memory, parts, results
from labkit.core import model as model_lib
from labkit.dynamic import tokens
from labkit.lab.labels import t
from labkit.prune import prune
from labkit.quant import floats as precision
from labkit.quant import floats as precision_lib
from labkit.quant import quantize
from labkit.runtimes import openvino as runtimes

# --- performance optimization: pipelines a learner can reorder -------------------------------------

STEPS = ("structured", "recover", "magnitude", "token_pruning", "int8", "precision")
# Steps that need float nn.Linear layers (they prune, train or score with them): impossible after int8.
_NEEDS_FLOAT = {"structured", "recover", "magnitude", "token_pruning"}
# Steps that need fp32 weights: training keeps an fp32 master copy, and int8 is an alternative to a bf16/fp16 cast.
_NEEDS_FP32 = {"recover", "int8"}


def _step_function(name: str):
    return {"structured": prune.structured, "recover": prune.recover, "magnitude": prune.magnitude,
            "token_pruning": tokens.token_pruning, "int8": quantize.to_int8,
            "precision": precision.to_precision}[name]


def validate(steps: list[tuple[str, dict]]) -> None:
    """Refuse unknown steps and orders that cannot work (e.g. pruning after int8 conversion)."""
    seen: list[str] = []
    for item in steps:
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[1], dict)):
            raise ValueError(f"Each step is a (name, options) pair such as ('int8', {{}}), got {item!r}.")
        name, options = item
        if name not in STEPS:
            raise ValueError(f"Unknown step {name!r}; choose from {', '.join(STEPS)}.")
        if name in _NEEDS_FLOAT and "int8" in seen:
            raise ValueError(f"'{name}' cannot follow 'int8': int8 layers have no float weights to prune or train. "
                             f"Put '{name}' before 'int8'.")
        if name in seen and name != "recover":
            raise ValueError(f"'{name}' appears twice; apply it once with the combined setting.")
        if name in _NEEDS_FP32 and "precision" in seen:
            raise ValueError(f"'{name}' cannot follow 'precision': it needs fp32 weights. Put the precision step "
                             "last (e.g. structured -> recover -> precision); int8 and bf16/fp16 are alternatives.")
        if name == "precision" and "int8" in seen:
            raise ValueError("'precision' cannot follow 'int8': int8 layers have no float weights to cast. Choose "
                             "one of the two as the last step.")
        if name == "int8" and options.get("backend", "torch") != "torch" and "token_pruning" in seen:
            raise ValueError("Token pruning runs as PyTorch hooks, which an ONNX or OpenVINO export does not carry; "
                             "use int8 with backend='torch' after token pruning.")
        seen.append(name)


# Steps that only replace layers with new ones, cast them or add hooks: none writes into a weight it was given.
READ_ONLY_STEPS = ("int8", "token_pruning", "precision")


def run_pipeline(model: nn.Module, tokenizer, steps: list[tuple[str, dict]]) -> nn.Module:
    """Apply the steps in order to a copy of `model` and return it; the input model is untouched.

    A pipeline of READ_ONLY_STEPS works on a copy that shares the input's tensors until a step replaces them (a
    token-pruned model costs no memory for its weights); one that prunes or trains works on a full copy.
    """
    validate(steps)
    shared = all(name in READ_ONLY_STEPS for name, _ in steps)
    out = parts.copy_with(model) if shared else parts.clone(model)
    for name, options in steps:
        fn = _step_function(name)
        if name == "recover":
            options = dict(options)
            if options.pop("distill", False):  # learn from the untouched input model's outputs too
                options["teacher"] = model
            out = fn(out, tokenizer, inplace=True, **options)
        else:
            out = fn(out, inplace=True, **options)
    return out


def describe(steps: list[tuple[str, dict]]) -> str:
    """A short human-readable name for a pipeline."""
    parts = []
    for name, opt in steps:
        args = ",".join(f"{k}={v:.2g}" if isinstance(v, float) else f"{k}={v}" for k, v in opt.items())
        parts.append(f"{name}({args})" if args else name)
    return " -> ".join(parts) or "fp32 baseline"


def configurations() -> dict[str, list[tuple[str, dict]]]:
    """The pipelines the kit compares; a learner can add, drop or reorder steps."""
    small = ("structured", {"heads": 1 / 3, "ffn": 0.7})
    recover = ("recover", {})  # prune.recover's default steps: fewer in fast mode
    token = ("token_pruning", {"keep_ratio": 0.5, "start_layer": 2})
    bf16 = ("precision", {"precision": "bf16"})  # the alternative last step to int8: half the bytes, float kernels
    configs = {
        "int8": [("int8", {})],
        "bf16": [bf16],
        "token pruning": [token],
        "structured + recover": [small, recover],
        "structured + recover + int8": [small, recover, ("int8", {})],
        "structured + recover + bf16": [small, recover, bf16],
        "token pruning + int8": [token, ("int8", {})],
        "token pruning + bf16": [token, bf16],
        "structured + recover + token + int8": [small, recover, token, ("int8", {})],
        # Milder cut (half the FFN neurons kept), a longer fine-tune that distils the baseline, then int8.
        "mild structured + distill + int8": [("structured", {"heads": 1 / 3, "ffn": 0.5}),
                                             ("recover", {"distill": True, "steps": 20 if fast_mode() else 600}),
                                             ("int8", {})],
    }

    if runtimes.available():  # the same pruned model, then OpenVINO's static int8 (NNCF) instead of torch's
        configs["structured + recover + openvino int8"] = [small, recover, ("int8", {"backend": "openvino"})]
    return configs


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
    vals = np.column_stack([df[c].to_numpy(float) for c in maximize] + [-df[c].to_numpy(float) for c in minimize])
    measured = ~np.isnan(vals).any(axis=1)
    front = []
    for i in range(len(vals)):
        others = np.delete(vals[measured], np.flatnonzero(np.flatnonzero(measured) == i), axis=0)
        dominated = np.any(np.all(others >= vals[i], axis=1) & np.any(others > vals[i], axis=1))
        front.append(bool(measured[i] and not dominated))
    return pd.Series(front, index=df.index, name="pareto")


def compare(models: dict[str, nn.Module], tokenizer, reference: np.ndarray, limit: int | None = None,
            progress: bool = True, split: str = "test", front: Callable[[pd.DataFrame], Any] | None = None
            ) -> pd.DataFrame:
    """Measure models side by side (the first is the baseline): accuracy with its 95% interval, ratios, Pareto flags.

    `reference` holds the baseline's predictions on the same `split` and `limit` as the evaluation here. `front`
    marks the Pareto front (default `pareto_front`; a learner's own function plugs in here). The table records
    its split, so `choose` can refuse to pick a 'best' row on the test split.
    """
    from tqdm.auto import tqdm

    if not models:
        raise ValueError("compare needs at least one model, the baseline first: {'fp32 baseline': model, ...}.")
    rows = [results.evaluate(name, m, tokenizer, reference, split=split, limit=limit)
               for name, m in tqdm(models.items(), desc="measuring", disable=not progress)]
    df = results.table(rows, baseline=next(iter(models)))
    n = len(data.split(split, limit))
    if "accuracy_lo" not in df or df["accuracy_lo"].isna().any():  # older results.Result: no interval yet
        bounds = [measure.wilson(round(a * n), n) for a in df["accuracy"]]
        df["accuracy_lo"], df["accuracy_hi"] = [lo for lo, _ in bounds], [hi for _, hi in bounds]
    df["split"], df["n"] = split, n
    df["pareto"] = mark_front(df, front)
    return df


def mark_front(df: pd.DataFrame, front: Callable[[pd.DataFrame], Any] | None = None) -> pd.Series:
    """The Pareto flags of a table from `front(df)` (default `pareto_front`), checked to be one boolean per row."""
    flags = (front or pareto_front)(df.copy())
    if isinstance(flags, pd.DataFrame) or flags is None or len(flags) != len(df):
        raise ValueError("a front function must return one True/False per row of the table (a boolean Series), "
                         f"got {type(flags).__name__}.")
    return pd.Series(np.asarray(flags, dtype=bool), index=df.index, name="pareto")


def choose(table: pd.DataFrame, max_drop: float = 0.01) -> str:
    """The 'best' pipeline: the fastest (batch-32) row on the front whose accuracy is within `max_drop` of the first.

    Chosen on the table's own split, which must be a selection split ('val'): a choice made on the test split
    would make the test number it is then reported with optimistic.
    """
    if "split" not in table:
        raise ValueError("choose needs a table made by strategies.compare(..., split='val').")
    for name in set(table["split"]):
        data.selection_split(name)
    if not 0 <= max_drop < 1:
        raise ValueError(f"max_drop is a fraction of accuracy in [0, 1), got {max_drop}.")
    ok = table[table["pareto"] & (table["accuracy"] >= table["accuracy"].iloc[0] - max_drop)]
    if ok.empty:  # nothing close enough: keep the baseline
        return str(table["name"].iloc[0])
    return str(ok.sort_values("latency_b32_ms")["name"].iloc[0])


def report_on_test(model: nn.Module, baseline: nn.Module, tokenizer, limit: int | None = None) -> dict:
    """Once, at the end: test accuracy of a chosen model and of the baseline, each with its 95% interval, and
    their paired difference on the same snippets (McNemar's exact p)."""
    labels = data.split("test", limit)["label"].to_numpy()
    chosen = measure.predictions(model, tokenizer, "test", limit)
    base = measure.predictions(baseline, tokenizer, "test", limit)
    return {"chosen": measure.accuracy_ci(chosen, labels), "baseline": measure.accuracy_ci(base, labels),
            "paired": measure.paired(chosen, base, labels),
            "detectable": measure.detectable_difference(len(labels), max(0.01, float((chosen != base).mean())))}


# --- scalability: threads, batch size, sequence length, device -------------------------------------

def thread_scaling(model: nn.Module, tokenizer, threads=(1, 2), batch_sizes=(1, 8, 32)) -> pd.DataFrame:
    """Latency and throughput against thread count and batch size (the thread setting is restored)."""
    before = torch.get_num_threads()
    rows = []
    try:
        for t in threads:
            if not 1 <= int(t) <= (os.cpu_count() or 1):
                raise ValueError(f"threads must be between 1 and this machine's {os.cpu_count()} cores, got {t}.")
            torch.set_num_threads(int(t))
            for b in batch_sizes:
                rec = measure.latency(model, tokenizer, b)
                rows.append({"threads": t, "batch_size": b, "median_ms": rec["median_ms"],
                             "snippets_per_s": 1000 * b / rec["median_ms"], "seq_len": rec["seq_len"]})
    finally:
        torch.set_num_threads(before)
    return pd.DataFrame(rows)


def texts_of_length(tokens: int, batch_size: int = 32) -> list[str]:
    """Real snippets joined until each text has about `tokens` word pieces (for sequence-length curves)."""
    pool = list(data.split("test").sample(frac=1.0, random_state=data.SEED)["text"])
    out, i = [], 0
    for _ in range(batch_size):
        words: list[str] = []
        while len(words) * 1.3 < tokens - 2:  # ~1.3 word pieces per word in these snippets
            words += pool[i % len(pool)].split()
            i += 1
        out.append(" ".join(words[: max(1, int((tokens - 2) / 1.3))]))
    return out


def length_scaling(models: dict[str, nn.Module], tokenizer, lengths=(16, 32, 64, 128),
                   batch_size: int = 32) -> pd.DataFrame:
    """Batch latency of each model at several sequence lengths, and its speed-up over the first model."""
    rows = []
    for n in lengths:
        texts = texts_of_length(n, batch_size)
        timing = measure.compare_latency(models, tokenizer, batch_size, texts=texts)
        first = next(iter(timing.values()))["median_ms"]
        for name, rec in timing.items():
            rows.append({"model": name, "tokens": rec["seq_len"], "median_ms": rec["median_ms"],
                         "speedup": first / rec["median_ms"]})
    return pd.DataFrame(rows)


def devices() -> list[str]:
    """The devices this machine can run on: always 'cpu', and 'cuda' when a GPU is visible."""
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def device_comparison(model: nn.Module, tokenizer, batch_sizes=(1, 32)) -> pd.DataFrame:
    """The same model and code on every available device (CPU, and CUDA when present)."""
    rows = []
    for dev in devices():
        m = parts.clone(model).to(model_lib.resolve_device(dev))
        for b in batch_sizes:
            rec = measure.latency(m, tokenizer, b)
            rows.append({"device": rec["device"], "batch_size": b, "median_ms": rec["median_ms"],
                         "snippets_per_s": 1000 * b / rec["median_ms"]})
    return pd.DataFrame(rows)


# --- security hardening: safe checkpoints, the pickle hazard, robustness ---------------------------


PICKLE_LOG: list[str] = []


def _pickle_ran(message: str) -> str:
    """The harmless stand-in for an attacker's function: it only records that it was called."""
    PICKLE_LOG.append(message)
    return message


class _Payload:
    """An object whose unpickling calls a function of the author's choice (here the harmless `_pickle_ran`)."""
    def __reduce__(self):
        return (_pickle_ran, ("code ran while the checkpoint was being loaded",))


def pickle_hazard(folder: str | Path) -> dict:
    """Show safely that unpickling a 'checkpoint' runs code, and that weights_only=True refuses it."""
    path = Path(folder) / "innocent_looking_checkpoint.pt"
    path.write_bytes(pickle.dumps({"weight": torch.zeros(2, 2), "extra": _Payload()}, protocol=2))
    PICKLE_LOG.clear()
    with open(path, "rb") as f:
        pickle.load(f)  # noqa: S301 - the point of the demonstration, on a file we just wrote
    ran = list(PICKLE_LOG)
    PICKLE_LOG.clear()
    try:
        checkpoint.safe_torch_load(path)
        refused = ""
    except pickle.UnpicklingError as err:
        refused = str(err).splitlines()[0]
    return {"plain_unpickle_ran_code": bool(ran), "log": ran, "weights_only_refused": bool(refused),
            "weights_only_message": refused, "ran_under_weights_only": bool(PICKLE_LOG)}


PERTURBATIONS = ("clean", "typos", "upper", "lower")


def perturb(texts: list[str], kind: str, rate: float = 0.15, seed: int = 0) -> list[str]:
    """Snippets with typos (swapped neighbouring letters in `rate` of the words) or changed casing."""
    if kind not in PERTURBATIONS:
        raise ValueError(f"Unknown perturbation {kind!r}; choose from {', '.join(PERTURBATIONS)}.")
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate}.")
    if kind == "clean":
        return list(texts)
    if kind == "upper":
        return [t.upper() for t in texts]
    if kind == "lower":
        return [t.lower() for t in texts]
    rng = random.Random(seed)
    out = []
    for t in texts:
        words = t.split()
        for i, w in enumerate(words):
            if len(w) > 3 and rng.random() < rate:
                j = rng.randrange(1, len(w) - 2)
                words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2:]
        out.append(" ".join(words))
    return out


def robustness(models: dict[str, nn.Module], tokenizer, kinds=PERTURBATIONS, limit: int | None = None) -> pd.DataFrame:
    """Accuracy of each model (with its 95% interval) on clean and perturbed test snippets, and the drop from clean."""
    df = data.split("test", limit)
    labels = df["label"].to_numpy()
    rows = []
    for name, m in models.items():
        clean = None
        for kind in kinds:
            ci = measure.accuracy_ci(measure.predict(m, tokenizer, perturb(list(df["text"]), kind)), labels)
            acc = ci["accuracy"]
            clean = acc if kind == "clean" else clean
            rows.append({"model": name, "input": kind, "accuracy": acc, "accuracy_lo": ci["lo"],
                         "accuracy_hi": ci["hi"], "drop_points": None if clean is None else 100 * (clean - acc)})
    return pd.DataFrame(rows)


# --- the capstone dashboard: one plain function behind every control ---------------------------------

QUICK_LIMIT = data.QUICK_LIMIT
QUANTIZATION = ("none", "simulated", "real int8")
_DASH: dict[str, Any] = {"points": {}}
data.on_change(lambda: (_DASH.clear(), _DASH.update(points={})))  # another data set: another baseline


def _dash_baseline() -> tuple[nn.Module, Any, np.ndarray]:
    return model_lib.shared_baseline()


def _dash_structured() -> nn.Module:
    """Structured pruning (8 of 12 heads, 30% of FFN neurons kept) plus recovery, built once per session."""
    if "structured" not in _DASH:
        base, tok, _ = _dash_baseline()
        _DASH["structured"] = run_pipeline(base, tok, configurations()["structured + recover"])
    return _DASH["structured"]


def _check_dashboard_precision(quantization: str, precision: str) -> None:
    """Refuse a quantization / precision pair that cannot run, saying which settings do."""
    if precision not in precision_lib.PRECISIONS:
        raise ValueError(f"Unknown precision {precision!r}; choose from {', '.join(precision_lib.PRECISIONS)}.")
    if quantization == "real int8" and precision != "fp32":
        raise ValueError(f"real int8 and {precision} are two alternatives, not steps to stack: torch's int8 layers "
                         f"need float32 around them. Set precision to fp32 to run real int8, or quantization to "
                         f"'none' (or 'simulated') to run in {precision}.")


@memory.gives_back
def dashboard_point(structured: bool = False, sparsity: float = 0.0, keep_ratio: float = 1.0,
                    quantization: str = "none", bits: int = 8, precision: str = "fp32") -> dict:
    """Accuracy (95% interval, paired difference from the baseline), agreement, batch-32 latency and size of one
    combination, on the quick validation subset (cached).

    Steps run in the only order that works: structured (+recovery, built once), magnitude sparsity, token pruning
    from layer 2, quantization, then the `precision` cast (fp32, bf16 or fp16 weights). `bits` applies to
    quantization="simulated" (accuracy real, size computed for packed storage, latency that of the float model it
    runs); "real int8" is always 8 bits and really faster, and refuses a bf16/fp16 cast (a ValueError that says so).
    """

    if quantization not in QUANTIZATION:
        raise ValueError(f"Unknown quantization {quantization!r}; choose from {', '.join(QUANTIZATION)}.")
    _check_dashboard_precision(quantization, precision)
    if quantization != "simulated":
        bits = 8 if quantization == "real int8" else 32  # the bit-width only steers the simulation
    key = (bool(structured), round(float(sparsity), 4), round(float(keep_ratio), 4), quantization, int(bits),
           precision)
    if key in _DASH["points"]:
        return _DASH["points"][key]
    base, tok, reference = _dash_baseline()
    m = _dash_structured() if structured else base
    if sparsity > 0:
        m = prune.magnitude(m, sparsity, "global")
    if keep_ratio < 1:
        m = tokens.token_pruning(m, keep_ratio, start_layer=2)
    if quantization == "simulated":
        m = quantize.fake_quantize(m, bits, granularity="channel")
    elif quantization == "real int8":
        m = quantize.to_int8(m)
    if precision != "fp32":  # fake-quantized weights are floats too: a bf16 copy keeps their grid, roughly
        m = precision_lib.to_precision(m, precision)
    if quantization == "simulated":  # as it would be stored: packed Linear weights, the rest in `precision`
        size = quantize.quantized_size_bytes(m, bits, granularity="channel")
    else:
        size = measure.serialized_bytes(m)
    preds = measure.predictions(m, tok, data.QUICK_SPLIT, QUICK_LIMIT)
    labels = data.split(data.QUICK_SPLIT, QUICK_LIMIT)["label"].to_numpy()
    # Timed round by round beside the baseline, so the speed-up compares runs made seconds apart.
    timed = {"baseline": base} if m is base else {"baseline": base, "point": m}
    timing = measure.compare_latency(timed, tok, 32, measure.SLIDER_WARMUP, measure.SLIDER_REPEATS)
    lat, speed = timing[list(timed)[-1]], measure.speedups(timing, "baseline")[list(timed)[-1]]
    ci = measure.accuracy_ci(preds, labels)
    vs = measure.paired(preds, reference, labels)  # the same snippets: only those where the two differ count
    point = {"structured": key[0], "sparsity": key[1], "keep_ratio": key[2], "quantization": quantization,
             "bits": key[4], "precision": precision, "accuracy": ci["accuracy"], "accuracy_lo": ci["lo"],
             "accuracy_hi": ci["hi"], "n": ci["n"], "delta": vs["difference"], "delta_lo": vs["lo"],
             "delta_hi": vs["hi"], "p_value": vs["p_value"],
             "agreement": measure.agreement(preds, reference), "latency_b32_ms": lat["median_ms"],
             "speedup_b32": speed["speedup"], "speedup_lo": speed["lo"], "speedup_hi": speed["hi"],
             "baseline_b32_ms": timing["baseline"]["median_ms"], "rounds": speed["rounds"],
             "size_mb": size / 1e6, "simulated": quantization == "simulated",
             "native": _native(precision, m)}
    point["name"] = _point_name(*key)
    _DASH["points"][key] = point
    return point


def _native(precision: str, model: nn.Module) -> bool | None:
    """Whether this CPU computes `precision` in hardware (None for fp32, off the CPU, or flags unreadable)."""
    if precision == "fp32" or parts.device_of(model).type != "cpu":
        return None
    return precision_lib.is_native(precision, model)


def _point_name(structured: bool, sparsity: float, keep_ratio: float, quantization: str, bits: int,
                precision: str) -> str:
    """A dashboard point's short name, e.g. 'S 50%sp keep50% int8' or '4b-sim bf16' (the baseline is 'fp32')."""
    number = {"none": f" {precision}", "real int8": " int8",
              "simulated": f" {bits}b-sim" + ("" if precision == "fp32" else f" {precision}")}[quantization]
    return (("S" if structured else "") + (f" {sparsity:.0%}sp" if sparsity else "") +
            (f" keep{keep_ratio:.0%}" if keep_ratio < 1 else "") + number).strip()


def readout(point: dict) -> str:
    """One dashboard point in words: accuracy with its 95% interval, and its paired difference from the baseline."""
    ci = {"accuracy": point["accuracy"], "lo": point["accuracy_lo"], "hi": point["accuracy_hi"], "n": point["n"]}
    detectable = measure.detectable_difference(point["n"], max(0.01, 1 - point["agreement"]))
    # Templates through labkit.lab.labels: with LABKIT_LANG=zh the readout is Chinese, the numbers the same.
    verdict = (t("a real difference (p < 0.05)") if point["p_value"] < 0.05 else
               t("no difference shown on this subset (it reliably shows about {points} points or more)",
                 points=f"{100 * detectable:.1f}"))
    name = t("{name} (simulated)", name=point["name"]) if point["simulated"] else point["name"]
    return t("{name}: accuracy {accuracy}; vs baseline {delta} points [{lo}, {hi}], p = {p}: {verdict}.",
             name=name, accuracy=measure.format_accuracy(ci), delta=f"{100 * point['delta']:+.1f}",
             lo=f"{100 * point['delta_lo']:+.1f}", hi=f"{100 * point['delta_hi']:+.1f}", p=f"{point['p_value']:.2g}",
             verdict=verdict) + speed_readout(point)


def speed_readout(point: dict) -> str:
    """The point's batch-32 time and its speed-up over the baseline timed beside it, with the per-round min-max."""
    if point.get("speedup_b32") is None:
        return ""
    sim = t(" (the float model the simulation runs)") if point.get("simulated") else ""
    native = {True: " This CPU computes {precision} natively.",
              False: " This CPU has no native {precision} instructions: torch converts to fp32 around each "
                     "operation, so it can run slower than fp32 here."}.get(point.get("native"))
    return (t(" Batch 32: {ms} ms{sim}, {speedup}x the baseline's speed {range} (min-max per round) over {rounds} "
              "rounds timed interleaved with it.", ms=f"{point['latency_b32_ms']:.0f}", sim=sim,
              speedup=f"{point['speedup_b32']:.2f}", rounds=point["rounds"],
              range=measure.format_range(point["speedup_lo"], point["speedup_hi"]))
            + (t(native, precision=point.get("precision")) if native else ""))


def dashboard_history() -> pd.DataFrame:
    """Every dashboard point measured so far in this session, with Pareto flags (latency, size, accuracy)."""
    df = pd.DataFrame(list(_DASH["points"].values()))
    if len(df):
        df["size_bytes"] = df["size_mb"] * 1e6
        df["pareto"] = pareto_front(df)
    return df


# --- the main job -------------------------------------------------------------------------------------

TOUR_PIPELINES = ("structured + recover + int8", "structured + recover + token + int8",
                  "mild structured + distill + int8")

def tour(model: nn.Module, tokenizer, reference: np.ndarray, limit: int | None = None,
         keep: tuple[str, ...] = TOUR_PIPELINES) -> list[results.Result]:
    """Rows for `python -m labkit tour`: the combined pipelines that single techniques do not cover, timed
    interleaved beside `model`. `limit` (test snippets) and `keep` (pipelines) shrink the work for tests only."""
    configs = {k: v for k, v in configurations().items() if k in keep}
    models, notes = {}, {}
    for name, steps in configs.items():
        t0 = time.perf_counter()
        models[f"combined: {name}"] = run_pipeline(model, tokenizer, steps)
        notes[f"combined: {name}"] = f"{describe(steps)} (built in {time.perf_counter() - t0:.0f} s)"
    return results.evaluate_group(models, tokenizer, results.reference_on(model, tokenizer, reference, limit), model,
                                  notes, limit=limit)
