"""Float formats: what fp32, bf16, fp16 and fp8 keep of a number, and a classifier run in bf16 or fp16.

A float is a sign bit, exponent bits (its range) and mantissa bits (its precision). Every number here is read
from `torch.finfo`, so the table says what torch itself does. Casting a classifier's weights from fp32 to bf16 or
fp16 halves its bytes and, on a CPU with native bf16 (see `measure.native_float_support`), makes it faster; the
article's float64 cast is the same step taken the wrong way: twice the bytes for precision nobody uses.
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass
from functools import cache

import torch
from torch import nn

from . import parts


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
PRECISIONS = ("fp32", "bf16", "fp16")

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
        w = w.double()  # measure the change in float64, so fp32's own rounding does not count as error
        back = round_trip(w.float(), f, scaled).double()
        if not scaled:
            out_of_range += int((w.abs() > f.max).sum())
        nonfinite += int((~torch.isfinite(back)).sum())
        flushed += int(((w != 0) & (back == 0)).sum())
        d = back - w
        diff2 += float((d * d).sum())
        norm2 += float((w * w).sum())
        max_abs = max(max_abs, float(d.abs().max()))
        n += w.numel()
    return {"format": f.name, "relative_error": math.sqrt(diff2 / norm2) if norm2 else 0.0,
            "max_abs_error": max_abs, "out_of_range": out_of_range, "nonfinite": nonfinite,
            "flushed_to_zero": flushed, "values": n, "scaled": scaled}


def _check_precision(precision: str) -> torch.dtype:
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)} (fp8 formats "
                         "are only shown in precision.FORMATS: torch has no fp8 matmul on CPU).")
    return FORMATS[precision].dtype


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
    out = model if inplace else copy.deepcopy(model)
    return out.to(dtype)  # floating weights and buffers only: token ids and position ids stay integers


def dtype_of(model: nn.Module) -> str:
    """The precision name of a model's floating weights ('fp32', 'bf16', ...), or 'mixed'."""
    found = {p.dtype for p in model.parameters() if p.is_floating_point()}
    names = [f.name for f in FORMATS.values() if f.dtype in found]
    return names[0] if len(names) == 1 else "mixed"


def require_fp32(model: nn.Module, step: str = "int8 conversion") -> None:
    """A ValueError when `model`'s weights are not fp32, saying which order works (for int8 and exports)."""
    if any(p.is_floating_point() and p.dtype != torch.float32 for p in model.parameters()):
        raise ValueError(f"{step} needs a float32 model, and this one is {dtype_of(model)}. Run {step} on the fp32 "
                         "model (precision.to_precision(model, 'fp32') brings a cast copy back): int8 and a "
                         "bf16/fp16 cast are two alternatives, not steps to stack.")


def autocast(device: torch.device | str | nn.Module, precision: str):
    """A context that runs forwards in `precision` (torch.autocast), or does nothing for fp32.

    Weights stay fp32 (the master copy the optimizer updates); matmuls inside run in bf16 or fp16. fp16 on a
    CPU is refused: without loss scaling its narrow range underflows gradients, and CPUs do bf16 instead.
    """
    dtype = _check_precision(precision)
    dev = parts.device_of(device) if isinstance(device, nn.Module) else torch.device(device)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    if dtype == torch.float16 and dev.type != "cuda":
        raise ValueError(f"Mixed-precision fp16 is for CUDA (with a GradScaler); on {dev.type} use 'bf16', "
                         "which has fp32's range and needs no loss scaling.")
    return torch.autocast(dev.type, dtype=dtype)


def tour(model: nn.Module, tokenizer, reference, limit: int | None = None) -> list:
    """Rows for the main job: the classifier's weights in bf16 and in fp16, timed beside `model` in one group.

    A precision this device cannot run (fp16 on a CPU whose torch lacks the kernels) is left out with a warning:
    the table never shows a row that did not run. `limit` measures accuracy on the first `limit` test texts."""
    import warnings

    from . import measure

    models, notes = {}, {}
    support = measure.native_float_support() if parts.device_of(model).type == "cpu" else {}
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
    return measure.evaluate_group(models, tokenizer, measure.reference_on(model, tokenizer, reference, limit), model,
                                  notes, limit=limit)
