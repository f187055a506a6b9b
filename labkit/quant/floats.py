"""Float formats and a classifier in another precision: what fp32, bf16, fp16 and fp8 keep, and what they cost.

A float is a sign bit, exponent bits (its range) and mantissa bits (its precision); notebook 00b reads every number
of a format from `torch.finfo`. Casting a classifier from fp32 to bf16 or fp16 halves its bytes and, on a CPU with
native bf16 (`machine.native_float_support`), makes it faster. Mixed precision keeps fp32 weights and runs the
products in 16 bits: `training_speed` times fine-tuning steps both ways.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from functools import cache

import pandas as pd
import torch
from torch import nn

from labkit.core import data, machine, memory, parts, results, settings, train


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


def float_format(name: str, dtype: torch.dtype) -> Format:
    """The Format of a torch float dtype: eps = 2^-mantissa gives the mantissa bits, the rest are the exponent's."""
    info = torch.finfo(dtype)
    mantissa = round(-math.log2(info.eps))
    return Format(name, dtype, info.bits, info.bits - 1 - mantissa, mantissa, float(info.max),
                  float(info.smallest_normal), float(info.eps))


FORMATS: dict[str, Format] = {f.name: f for f in (
    float_format("fp64", torch.float64),  # the article's cast: twice fp32's bytes
    float_format("fp32", torch.float32),
    float_format("bf16", torch.bfloat16),  # fp32's exponent (same range), 7 mantissa bits
    float_format("fp16", torch.float16),  # more precision than bf16, but largest value 65504
    float_format("fp8_e4m3", torch.float8_e4m3fn),  # 'fn': no infinities, so the top codes stay finite
    float_format("fp8_e5m2", torch.float8_e5m2),
)}

# The formats a whole classifier can run in here (fp8 has no matmul kernels on CPU; it is only shown).
PRECISIONS = parts.PRECISIONS


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


def to_precision(model: nn.Module, precision: str, inplace: bool = False) -> nn.Module:
    """A copy of `model` with its weights in fp32, bf16 or fp16; it takes the same tokenized inputs as before.
    Returns a new model; the input is unchanged unless inplace=True."""
    settings.flags(inplace=inplace)
    dtype = parts.precision_dtype(precision)
    parts.require_float_layers(model)  # int8 codes are out of a cast's reach: int8 and bf16 are alternatives
    dev = parts.device_of(model)
    if dtype == torch.float16:
        error = _fp16_error(str(dev))
        if error is not None:
            raise ValueError(f"fp16 cannot run on this {dev.type} with torch {torch.__version__} ({error}). "
                             "Use 'bf16': it has fp32's range and runs on CPUs.")
    # a copy made in the new dtype tensor by tensor, without a full float32 copy in between
    out = model if inplace else parts.clone(model, lambda t: t.to(dtype) if t.is_floating_point() else t)
    return out.to(dtype)  # floating weights and buffers only: token ids and position ids stay integers


def is_native(precision: str, where: nn.Module | torch.device | str = "cpu") -> bool | None:
    """Whether the device (or a model's device) computes `precision` in hardware; None where that is unknown.

    fp32 is always native. A CUDA GPU computes fp16, and bf16 where torch says it supports it. A CPU is read from
    its flags (`machine.native_float_support`): without native bf16, torch converts to fp32 around every
    operation, and a bf16 model can be several times slower than fp32 (notebook 00b measures it)."""
    parts.precision_dtype(precision)
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
    models, notes = {}, {}
    support = machine.native_float_support() if parts.device_of(model).type == "cpu" else {}
    for name in ("bf16", "fp16"):
        try:
            models[f"{name} weights"] = to_precision(model, name)
        except ValueError as err:
            results.skip_row(f"{name} weights", str(err))
            continue
        native = support.get(name)
        notes[f"{name} weights"] = ("half the bytes; " + ("native on this CPU" if native else
                                    "emulated on this CPU (no native instructions)" if native is False else
                                    f"on {parts.device_of(model).type}"))
    return results.evaluate_group(models, tokenizer, results.reference_on(model, tokenizer, reference, limit), model,
                                  notes, limit=limit)


def training_speed(model: nn.Module, tokenizer, precisions=None, steps: int = 3, warmup: int = 1,
                   batch_size: int = 16, lr: float = 1e-5) -> pd.DataFrame:
    """Time fine-tuning steps of `model` in fp32 and in mixed precision (bf16 autocast; on CUDA also fp16 with a
    GradScaler), each step taken by `train.fit_steps`, the precisions in turn so drift on the machine hits all alike.

    One copy of `model` takes every precision's steps, each precision with its own AdamW: a step costs the same
    whatever values the weights hold, and a copy per precision would hold the weights once more (a hub gives 1-2
    GB). After `warmup` untimed rounds, `steps` timed ones. Returns per precision the median step (ms), steps per
    second, the speed-up over fp32 with its per-round min-max, and the last loss. Where memory is tight
    (`memory.tight`) the copy trains as `train.fit` trains there: word embeddings frozen, AdamW fused."""
    dev = parts.device_of(model)
    if precisions is None:
        precisions = ("bf16",) + (("fp16",) if dev.type == "cuda" else ())
    names = list(dict.fromkeys(("fp32", *precisions)))  # fp32 first: the baseline of the speed-ups
    if steps < 1 or warmup < 0 or batch_size < 1:
        raise ValueError(f"need steps >= 1, warmup >= 0, batch_size >= 1; got {steps}, {warmup}, {batch_size}.")
    rows = data.split("train", limit=batch_size * (warmup + steps))
    tight = memory.tight()
    copy_ = train.copy_sharing_embedding(model, freeze=tight)  # frozen, the embedding is never written
    # Bad precisions raise here, before any step: every run is made before the first is started.
    runs = {name: train.fit_steps(copy_, tokenizer, rows["text"], rows["label"], warmup + steps, lr=lr,
                                  batch_size=batch_size, decay=False, precision=name, fused=tight) for name in names}
    seconds: dict[str, list[float]] = {name: [] for name in names}
    loss: dict[str, float] = {}
    with train.frozen_embeddings(copy_, tight):
        try:
            for i in range(warmup + steps):
                for name, run in runs.items():  # the same batch for every precision in a round: same seed and order
                    if dev.type == "cuda":
                        torch.cuda.synchronize(dev)
                    t0 = time.perf_counter()
                    loss[name] = next(run)["loss"]
                    if dev.type == "cuda":
                        torch.cuda.synchronize(dev)
                    if i >= warmup:
                        seconds[name].append(time.perf_counter() - t0)
                    if tight:
                        memory.trim()  # untimed: hands back the step's freed activations
        finally:
            for run in runs.values():
                run.close()
    del copy_, runs  # the copy, its gradients and AdamW's state
    memory.release()
    out = []
    for name in names:
        ratios = [a / b for a, b in zip(seconds["fp32"], seconds[name])]
        median = statistics.median(seconds[name])
        out.append({"precision": name, "step_ms": 1000 * median, "steps_per_s": 1 / median,
                    "speedup": statistics.median(seconds["fp32"]) / median, "speedup_lo": min(ratios),
                    "speedup_hi": max(ratios), "steps": steps, "batch_size": batch_size, "loss": loss[name]})
    return pd.DataFrame(out)
