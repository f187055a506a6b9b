"""Float formats: what fp32, bf16, fp16 and fp8 keep of a number, and a classifier run in bf16 or fp16.

A float is a sign bit, exponent bits (its range) and mantissa bits (its precision). Every number here is read
from `torch.finfo`, so the table says what torch itself does. Casting a classifier's weights from fp32 to bf16 or
fp16 halves its bytes and, on a CPU with native bf16 (see `machine.native_float_support`), makes it faster; the
article's float64 cast is the same step taken the wrong way: twice the bytes for precision nobody uses.
"""

from __future__ import annotations

import contextlib
import copy
import math
import weakref
from dataclasses import dataclass
from functools import cache

import torch
from torch import nn

from labkit.core import data, machine, measure, memory, parts, results, train


@dataclass(frozen=True)
class Format:
    """One float format, every number read from torch.finfo."""
    name: str
    dtype: torch.dtype
    bits: int
    exponent: int  # exponent bits: the range
    mantissa: int  # stored fraction bits: the precision
    max: float  # largest finite value
    smallest_normal: float
    eps: float  # the gap between 1.0 and the next value: relative precision

    @property
    def sign(self) -> int:
        """Sign bits (one, in every format here)."""
        return 1


def _format(name: str, dtype: torch.dtype) -> Format:
    info = torch.finfo(dtype)
    mantissa = round(-math.log2(info.eps))  # eps = 2^-mantissa: the last stored fraction bit of 1.0
    return Format(name, dtype, info.bits, info.bits - 1 - mantissa, mantissa, float(info.max),
                  float(info.smallest_normal), float(info.eps))


FORMATS: dict[str, Format] = {f.name: f for f in (
    _format("fp64", torch.float64),  # the article's cast: twice fp32's bytes
    _format("fp32", torch.float32),
    _format("bf16", torch.bfloat16),  # fp32's exponent (same range), 7 mantissa bits
    _format("fp16", torch.float16),  # more precision than bf16, but largest value 65504
    _format("fp8_e4m3", torch.float8_e4m3fn),  # 'fn': no infinities, so the top codes stay finite
    _format("fp8_e5m2", torch.float8_e5m2),
)}

# The formats a whole classifier can run in here (fp8 has no matmul kernels on CPU; it is only shown).
PRECISIONS = parts.PRECISIONS

_INT_OF_WIDTH = {64: torch.int64, 32: torch.int32, 16: torch.int16, 8: torch.uint8}


def get_format(fmt: str | Format) -> Format:
    """The Format named `fmt`; a ValueError naming the known formats otherwise."""
    if isinstance(fmt, Format):
        return fmt
    if fmt not in FORMATS:
        raise ValueError(f"Unknown float format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    return FORMATS[fmt]


def table():
    """The formats as a DataFrame: bits of each field, largest value, smallest normal, eps, bytes per weight."""
    import pandas as pd

    return pd.DataFrame([{"format": f.name, "bits": f.bits, "sign": f.sign, "exponent": f.exponent,
                          "mantissa": f.mantissa, "max": f.max, "smallest_normal": f.smallest_normal,
                          "eps": f.eps, "bytes_per_weight": f.bits // 8} for f in FORMATS.values()])


def bit_fields(x: float, fmt: str | Format) -> tuple[str, str, str]:
    """The (sign, exponent, mantissa) bit strings of `x` stored in `fmt`, after rounding to that format."""
    f = get_format(fmt)
    stored = torch.tensor([x], dtype=torch.float64).to(f.dtype)
    # Read the same bytes as an integer of the same width; the mask turns a negative int into its bit pattern.
    code = int(stored.view(_INT_OF_WIDTH[f.bits]).item()) & ((1 << f.bits) - 1)
    bits = format(code, f"0{f.bits}b")
    return bits[0], bits[1:1 + f.exponent], bits[1 + f.exponent:]


def _tensors(weights) -> list[torch.Tensor]:
    if isinstance(weights, torch.Tensor):
        return [weights]
    if isinstance(weights, nn.Module):
        weights = weights.parameters()
    elif isinstance(weights, dict):
        weights = weights.values()
    out = [w.detach() for w in weights if isinstance(w, torch.Tensor) and w.is_floating_point()]
    if not out:
        raise ValueError("No floating-point weights found; pass a model, a tensor, or a list or dict of tensors.")
    return out


def round_trip(w: torch.Tensor, fmt: str | Format, scaled: bool = False) -> torch.Tensor:
    """`w` cast to `fmt` and back to its own dtype; `scaled` divides by a per-tensor scale first (as fp8 needs)."""
    f = get_format(fmt)
    scale = 1.0
    if scaled:  # map the tensor's largest |w| onto the format's largest value, so nothing saturates
        amax = float(w.abs().max())
        scale = amax / f.max if amax > 0 else 1.0
    return (w / scale).to(f.dtype).to(w.dtype) * scale


def round_trip_error(weights, fmt: str | Format, scaled: bool | None = None) -> dict:
    """How much casting weights (a model, a tensor, or a list or dict of tensors) to `fmt` and back changes them.

    Returns the relative error (norm of the change over norm of the weights), the largest absolute change, how
    many values were outside the format's range (fp8 e4m3 saturates them at its max, the others give inf), how
    many came back non-finite, and how many non-zero weights became zero. fp8 is `scaled` by default: each
    tensor is divided by max|w| / format max before the cast and multiplied back after, the per-tensor scale
    fp8 inference and training use, because fp8's range is too narrow (e4m3) or too coarse (e5m2) for raw weights.
    """
    f = get_format(fmt)
    scaled = f.bits == 8 if scaled is None else scaled
    diff2 = norm2 = 0.0
    max_abs = 0.0
    n = out_of_range = nonfinite = flushed = 0
    for w in _tensors(weights):
        if w.dtype == torch.float32:
            back = round_trip(w, f, scaled)
            d = back - w  # exact in float32: `back` is within a factor 2 of `w`, or 0, or w's saturated value
        else:  # measure the change in float64, so the input's own rounding to float32 counts as error
            w = w.double()
            back = round_trip(w.float(), f, scaled).double()
            d = back - w
        # Reductions without temporaries (aminmax, count_nonzero, norms): this runs over 22M weights per format.
        if not scaled and max(-float(w.min()), float(w.max())) > f.max:
            out_of_range += int((w.abs() > f.max).sum())
        lo, hi = torch.aminmax(back)
        if not (math.isfinite(float(lo)) and math.isfinite(float(hi))):
            nonfinite += int((~torch.isfinite(back)).sum())
        flushed += int(torch.count_nonzero(w)) - int(torch.count_nonzero(back))  # 0 stays 0: the rest were flushed
        diff2 += float(torch.linalg.vector_norm(d.flatten(), dtype=torch.float64)) ** 2
        norm2 += float(torch.linalg.vector_norm(w.flatten(), dtype=torch.float64)) ** 2
        lo, hi = torch.aminmax(d)
        max_abs = max(max_abs, -float(lo), float(hi))
        n += w.numel()
    return {"format": f.name, "relative_error": math.sqrt(diff2 / norm2) if norm2 else 0.0,
            "max_abs_error": max_abs, "out_of_range": out_of_range, "nonfinite": nonfinite,
            "flushed_to_zero": flushed, "values": n, "scaled": scaled}


def value_table(x: float, formats=None):
    """How `x` is stored in each format: its sign, exponent and mantissa bits, the value kept, the relative error."""
    import pandas as pd

    rows = []
    for f in (get_format(name) for name in (formats or FORMATS)):
        sign, exponent, mantissa = bit_fields(x, f)
        kept = float(torch.tensor([x], dtype=torch.float64).to(f.dtype).double())
        rows.append({"format": f.name, "sign": sign, "exponent": exponent, "mantissa": mantissa, "stored": kept,
                     "relative_error": abs(kept - x) / abs(x) if x else float(kept != x)})
    return pd.DataFrame(rows)


def round_weights(model: nn.Module, fn, inplace: bool = False) -> nn.Module:
    """A copy of `model` whose floating weights are replaced by `fn(w)` (e.g. rounded to bf16, kept in fp32)."""
    out = model if inplace else copy.deepcopy(model)
    with torch.no_grad():
        for p in out.parameters():
            if p.is_floating_point():
                p.copy_(fn(p.detach().clone()))  # a clone: a function that writes into its input changes nothing
    return out


def _check_precision(precision: str) -> torch.dtype:
    return parts.precision_dtype(precision)


@cache
def _fp16_error(device: str) -> str | None:
    """None when a tiny classifier runs a forward in fp16 on `device`; else the error torch gave."""
    probe = parts.tiny_classifier("BERT").to(device=device, dtype=torch.float16)
    ids = torch.ones(1, 4, dtype=torch.long, device=device)
    try:
        with torch.inference_mode():
            probe(input_ids=ids, attention_mask=torch.ones_like(ids))
    except (RuntimeError, NotImplementedError) as e:  # e.g. '"addmm_impl_cpu_" not implemented for "Half"'
        return str(e).splitlines()[0]
    return None


def _is_int8(model: nn.Module) -> bool:
    # torch.ao's quantized modules keep packed int8 weights that a dtype cast cannot reach
    return any(type(m).__module__.startswith(("torch.ao.nn.quantized", "torch.nn.quantized"))
               for m in model.modules())


def to_precision(model: nn.Module, precision: str, inplace: bool = False) -> nn.Module:
    """A copy of `model` with its weights in fp32, bf16 or fp16; it takes the same tokenized inputs as before."""
    dtype = _check_precision(precision)
    if _is_int8(model):
        raise ValueError("This model has int8 (torch.ao) layers, which a float cast cannot reach. The order that "
                         "works starts from the fp32 model: convert it to int8, or cast it to bf16/fp16 with "
                         "to_precision; torch.ao's int8 layers need float32 around them, so not both.")
    dev = parts.device_of(model)
    if dtype == torch.float16:
        error = _fp16_error(str(dev))
        if error is not None:
            raise ValueError(f"fp16 cannot run on this {dev.type} with torch {torch.__version__} ({error}). "
                             "Use 'bf16': it has fp32's range and runs on CPUs.")
    # a copy made in the new dtype tensor by tensor, without a full float32 copy in between
    out = model if inplace else parts.copy_with(model, lambda t: t.to(dtype, copy=True) if t.is_floating_point()
                                                else t.clone())
    return out.to(dtype)  # floating weights and buffers only: token ids and position ids stay integers


def is_native(precision: str, where: nn.Module | torch.device | str = "cpu") -> bool | None:
    """Whether the device (or a model's device) computes `precision` in hardware; None where that is unknown.

    fp32 is always native. A CUDA GPU computes fp16, and bf16 where torch says it supports it. A CPU is read from
    its flags (`machine.native_float_support`): without native bf16, torch converts to fp32 around every
    operation, and a bf16 model was measured several times slower than fp32 (notebook 00b measures it here)."""

    _check_precision(precision)
    dev = parts.device_of(where) if isinstance(where, nn.Module) else torch.device(where)
    if precision == "fp32":
        return True
    if dev.type == "cuda":
        return precision == "fp16" or torch.cuda.is_bf16_supported()
    if dev.type != "cpu":
        return None
    return machine.native_float_support().get(precision)


def tour(model: nn.Module, tokenizer, reference, limit: int | None = None) -> list:
    """Rows for the main job: the classifier's weights in bf16 and in fp16, timed beside `model` in one group.

    A precision this device cannot run (fp16 on a CPU whose torch lacks the kernels) is left out with a warning:
    the table never shows a row that did not run. `limit` measures accuracy on the first `limit` test texts."""
    import warnings


    models, notes = {}, {}
    support = machine.native_float_support() if parts.device_of(model).type == "cpu" else {}
    for name in ("bf16", "fp16"):
        try:
            models[f"{name} weights"] = to_precision(model, name)
        except ValueError as err:
            warnings.warn(f"precision tour: no {name} row ({err})", stacklevel=2)
            continue
        native = support.get(name)
        notes[f"{name} weights"] = ("half the bytes; " + ("native on this CPU" if native else
                                    "emulated on this CPU (no native instructions)" if native is False else
                                    f"on {parts.device_of(model).type}"))
    return results.evaluate_group(models, tokenizer, results.reference_on(model, tokenizer, reference, limit), model,
                                  notes, limit=limit)


# --- the classifier in each precision: accuracy, bytes, latency (section 3 and the dropdown of notebook 00b) -------

# Per source model (weakly held, so a dropped model frees its copies): its cast copies and their predictions on the
# validation subset, made once, so the table and the dropdown never cast or predict the same thing twice. Where
# memory is tight the copies are not kept (casting again takes milliseconds; a kept bf16 copy held 0.1 GB through
# the rest of notebook 00b), only what they predicted.
_RUNS: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def _run(model: nn.Module, tokenizer, name: str, limit: int | None) -> dict:
    """`model` cast to `name` (None: the model itself), its bytes and its predictions on the validation subset."""
    runs = _RUNS.setdefault(model, {})
    key = (name, limit, data.split_hash())
    if key not in runs:
        try:
            cast = None if name == "fp32" else to_precision(model, name)
        except ValueError as err:  # fp16 where this device has no kernels for it
            runs[key] = {"refused": str(err)}
        else:
            val = data.split(data.QUICK_SPLIT, limit)
            m = model if cast is None else cast
            runs[key] = {"model": None if memory.tight() else cast, "labels": val["label"].to_numpy(),
                         "preds": measure.predict(m, tokenizer, val["text"]), "bytes": measure.serialized_bytes(m)}
    return runs[key]


def _cast(model: nn.Module, name: str, run: dict) -> nn.Module:
    """The run's copy in precision `name`: the kept one, or cast again where it was not kept; fp32 is the model."""
    if name == "fp32":
        return model
    return run["model"] if run["model"] is not None else to_precision(model, name)


def _accuracy_row(name: str, run: dict, fp32: dict) -> dict:

    ci = measure.accuracy_ci(run["preds"], run["labels"])
    return {"precision": name, "accuracy": ci["accuracy"], "lo": ci["lo"], "hi": ci["hi"], "n": ci["n"],
            "agreement": measure.agreement(run["preds"], fp32["preds"]), "bytes": run["bytes"],
            "size_ratio": fp32["bytes"] / run["bytes"]}


def compare(model: nn.Module, tokenizer, precisions=PRECISIONS, limit: int | None = None,
            batch_sizes=(1, 32), warmup: int | None = None, repeats: int | None = None):
    """`model` (fp32) in each precision: validation accuracy with its 95% interval and agreement with fp32 (first
    `limit` validation snippets), serialized bytes, and latency at each batch size, every precision timed in one
    interleaved `measure.compare_latency` (speed-up over fp32: ratio of medians, per-round min-max in `range_b*`).

    A precision this device refuses (fp16 without kernels) has no row; `.attrs["refused"]` says why."""
    import pandas as pd


    parts.require_fp32(model, "A precision comparison")
    names = list(dict.fromkeys(("fp32", *precisions)))
    runs = {name: _run(model, tokenizer, name, limit) for name in names}
    refused = {name: run["refused"] for name, run in runs.items() if "refused" in run}
    models = {name: _cast(model, name, run) for name, run in runs.items() if name not in refused}
    rows = {name: _accuracy_row(name, runs[name], runs["fp32"]) for name in models}
    for b in batch_sizes:
        timing = measure.compare_latency(models, tokenizer, batch_size=b, warmup=warmup, repeats=repeats)
        for name, s in measure.speedups(timing, "fp32").items():
            rows[name] |= {f"latency_b{b}_ms": timing[name]["median_ms"], f"speedup_b{b}": s["speedup"],
                           f"range_b{b}": measure.format_range(s["lo"], s["hi"])}
    df = pd.DataFrame(list(rows.values()))
    df.attrs["refused"] = refused
    return df


def point(model: nn.Module, tokenizer, name: str, batch_size: int = 1, limit: int | None = None) -> dict:
    """One precision of `model` for a dropdown: accuracy (95% interval) and agreement on the validation subset, bytes,
    and latency at `batch_size` timed interleaved beside fp32 (the slider's warm-up and rounds).

    Accuracy and the cast copy come from the same cache as `compare`; a refused precision gives {"refused": why}."""

    parts.require_fp32(model, "A precision comparison")
    run, fp32 = _run(model, tokenizer, name, limit), _run(model, tokenizer, "fp32", limit)
    if "refused" in run:
        return {"precision": name, "refused": run["refused"]}
    models = {"fp32": model} | ({name: _cast(model, name, run)} if name != "fp32" else {})
    timing = measure.compare_latency(models, tokenizer, batch_size=batch_size, warmup=measure.SLIDER_WARMUP,
                                     repeats=measure.SLIDER_REPEATS)
    s = measure.speedups(timing, "fp32")[name]
    return _accuracy_row(name, run, fp32) | {
        "batch_size": batch_size, "latency_ms": timing[name]["median_ms"],
        "fp32_latency_ms": timing["fp32"]["median_ms"],
        "speedup": s["speedup"], "speedup_lo": s["lo"], "speedup_hi": s["hi"], "rounds": s["rounds"]}


def training_speed(model: nn.Module, tokenizer, precisions=None, steps: int = 3, warmup: int = 1,
                   batch_size: int = 16, lr: float = 1e-5, limit: int | None = None):
    """Fine-tune a copy of `model` in each precision (fp32, bf16 autocast, and fp16 with a GradScaler on CUDA)
    through `train.fit_steps`, one step of each in turn, so drift on the machine hits all alike.

    After `warmup` untimed steps, `steps` timed ones: steps per second (median, min-max over steps), the speed-up
    over fp32 (per-step ratios' min-max beside it), the last loss, and each copy's validation accuracy with its 95%
    interval on the first `limit` validation snippets. The weights stay fp32 in every run (the master copy).
    Where memory is tight (`memory.tight`), every copy trains lean as `train.fit` does there."""
    import statistics
    import time

    import pandas as pd


    dev = parts.device_of(model)
    if precisions is None:
        precisions = ("fp32", "bf16") + (("fp16",) if dev.type == "cuda" else ())
    names = list(dict.fromkeys(("fp32", *precisions)))  # fp32 first: the baseline of the speed-ups
    if steps < 1 or warmup < 0 or batch_size < 1:
        raise ValueError(f"need steps >= 1, warmup >= 0, batch_size >= 1; got {steps}, {warmup}, {batch_size}.")
    rows = data.split("train", limit=batch_size * (warmup + steps))
    # Where memory is tight, every copy trains as train.fit trains there: AdamW fused, the word embeddings frozen
    # (each copy holds its own optimizer state, and all are alive at once so that the steps can alternate). Frozen,
    # the embedding is never written, so the copies share the caller's instead of holding one each (copy_to_fit).
    tight = memory.tight()
    copies = {name: train.copy_to_fit(model, freeze=tight) for name in names}
    runs = {name: train.fit_steps(copies[name], tokenizer, rows["text"], rows["label"], warmup + steps, lr=lr,
                                  batch_size=batch_size, decay=False, precision=name, fused=tight) for name in names}
    seconds: dict[str, list[float]] = {name: [] for name in names}
    loss: dict[str, float] = {}
    with contextlib.ExitStack() as frozen:
        for m in copies.values():
            frozen.enter_context(train.frozen_embeddings(m, tight))
        for i in range(warmup + steps):
            for name, run in runs.items():  # the same batch for every precision in a round: same seed, same order
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                t0 = time.perf_counter()
                loss[name] = next(run)["loss"]
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                if i >= warmup:
                    seconds[name].append(time.perf_counter() - t0)
        for run in runs.values():
            run.close()  # back to eval mode
    val = data.split(data.QUICK_SPLIT, limit)
    out = []
    for name in names:
        ci = measure.accuracy_ci(measure.predict(copies[name], tokenizer, val["text"]), val["label"].to_numpy())
        ratios = [a / b for a, b in zip(seconds["fp32"], seconds[name])]
        median = statistics.median(seconds[name])
        out.append({"precision": name, "steps_per_s": 1 / median, "lo": 1 / max(seconds[name]),
                    "hi": 1 / min(seconds[name]), "speedup": statistics.median(seconds["fp32"]) / median,
                    "range": measure.format_range(min(ratios), max(ratios)), "steps": steps,
                    "batch_size": batch_size, "last_loss": loss[name], "accuracy": ci["accuracy"],
                    "acc_lo": ci["lo"], "acc_hi": ci["hi"], "n": ci["n"]})
    return pd.DataFrame(out)
