"""Quantization from first principles: integer codes, scale and zero point, simulated and real int8.

Two kinds of quantized model live here, and the difference matters:
- `fake_quantize`, `calibrate` and `qat` return *simulated* models: float weights rounded to a grid.
  They tell you the accuracy a quantized model would have; they are not smaller in memory or faster.
- `to_int8` returns a model that really stores int8 weights and runs int8 kernels on the CPU.
`IntegerLinear` / `swap_integer_linear` run one Linear layer in integers with a kernel you can write yourself
(`quantized_linear`), to compare with torch's int8 Linear; `fake_quantize(quantizer=, qparams_fn=)` rounds with
a learner's own functions.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from labkit import fast_mode
from labkit.core import data, measure, parts, results
from labkit.core import model as model_lib
from labkit.core import train as train_lib
from labkit.runtimes import onnx, openvino

SCHEMES = ("asymmetric", "symmetric")
GRANULARITIES = ("tensor", "channel", "group")
OBSERVERS = ("minmax", "percentile", "mse")
BACKENDS = ("torch", "onnxruntime", "openvino")
DEFAULT_GROUP = 64


# --- the math ----------------------------------------------------------------------------------------

@dataclass
class QTensor:
    """A quantized tensor: integer codes plus the scale and zero point that map them back to floats."""
    codes: torch.Tensor  # integers in [qmin, qmax], same shape as the original tensor
    scale: torch.Tensor  # one per tensor (shape ()), per row (out, 1) or per group (out, in // group, 1)
    zero_point: torch.Tensor  # integer, same shape as scale; 0 for the symmetric scheme
    bits: int
    scheme: str
    granularity: str
    group_size: int | None = None

    @property
    def qmin(self) -> int:
        """Smallest code."""
        return qrange(self.bits, self.scheme)[0]

    @property
    def qmax(self) -> int:
        """Largest code."""
        return qrange(self.bits, self.scheme)[1]

    def nbytes(self) -> int:
        """Bytes when stored packed: `bits` per code, float32 scales, zero points (asymmetric only)."""
        zp_bytes = 0 if self.scheme == "symmetric" else math.ceil(self.bits / 8)
        return math.ceil(self.codes.numel() * self.bits / 8) + self.scale.numel() * (4 + zp_bytes)


def _check_bits(bits: Any) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= int(bits) <= 16:
        raise ValueError(f"bits must be an integer from 1 to 16 (1-8 for the lab, 16 as a reference), got {bits!r}.")
    return int(bits)


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"Unknown {name} {value!r}; choose one of {', '.join(map(repr, allowed))}.")
    return value


def qrange(bits: int, scheme: str = "asymmetric") -> tuple[int, int]:
    """The integer codes a `bits`-bit grid uses: [0, 2^b - 1] asymmetric, [-2^(b-1), 2^(b-1) - 1] symmetric."""
    bits = _check_bits(bits)
    _check_choice("scheme", scheme, SCHEMES)
    if scheme == "asymmetric":
        return 0, 2 ** bits - 1
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def _grouped(w: torch.Tensor, granularity: str, group_size: int | None) -> torch.Tensor:
    """View `w` so that each slice along the last axis shares one scale."""
    if granularity == "tensor":
        return w.reshape(1, -1)
    if w.dim() < 2:
        raise ValueError(f"granularity {granularity!r} needs a 2-D weight (rows = output channels); "
                         f"this tensor has shape {tuple(w.shape)}: use granularity='tensor'.")
    rows = w.reshape(w.shape[0], -1)
    if granularity == "channel":
        return rows
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive integer, got {group_size!r}.")
    if rows.shape[1] % group_size:
        divisors = [d for d in (16, 32, 64, 128, 256) if rows.shape[1] % d == 0]
        raise ValueError(f"group_size {group_size} does not divide the {rows.shape[1]} inputs of this layer; "
                         f"use a divisor of {rows.shape[1]} such as {divisors or [rows.shape[1]]}.")
    return rows.reshape(rows.shape[0] * (rows.shape[1] // group_size), group_size)


def qparams(lo: torch.Tensor, hi: torch.Tensor, bits: int, scheme: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point for value ranges [lo, hi], with torch's MinMaxObserver's formulas."""
    qmin, qmax = qrange(bits, scheme)
    # The grid must hold 0 exactly (padding, ReLU zeros, pruned weights), so the range is widened to include it.
    lo, hi = torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0)
    eps = torch.finfo(torch.float32).eps
    if scheme == "symmetric":
        scale = torch.maximum(-lo, hi) / ((qmax - qmin) / 2)
        return torch.clamp(scale, min=eps), torch.zeros_like(scale, dtype=torch.int64)
    scale = torch.clamp((hi - lo) / (qmax - qmin), min=eps)
    zero_point = torch.clamp(qmin - torch.round(lo / scale), qmin, qmax).to(torch.int64)
    return scale, zero_point


def _learner_qparams(qparams_fn: Callable, lo: torch.Tensor, hi: torch.Tensor,
                     bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A learner's `scale_and_zero_point(lo, hi, bits)` on a column of ranges, checked and shaped like `qparams`."""
    try:
        scale, zp = qparams_fn(lo, hi, bits)
    except Exception as err:
        raise ValueError(f"qparams_fn raised {type(err).__name__}: {err}; it must take tensors lo, hi (one range "
                         "per row) and bits and return (scale, zero_point) tensors.") from None
    scale = torch.as_tensor(scale, dtype=torch.float32).expand_as(lo)
    zp = torch.as_tensor(zp).expand_as(lo)
    # A constant row (lo == hi == 0) would give scale 0 and 0/0 codes: the same floor torch's observers use.
    return torch.clamp(scale, min=torch.finfo(torch.float32).eps), torch.round(zp).to(torch.int64)


def _codes(rows: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, bits: int, scheme: str,
           quantizer: Callable | None) -> torch.Tensor:
    """Integer codes of `rows` on the grid; `quantizer` is a learner's `linear_quantize` for codes 0..2^bits - 1."""
    qmin, qmax = qrange(bits, scheme)
    if quantizer is None:
        return torch.clamp(torch.round(rows / scale) + zp, qmin, qmax)
    # linear_quantize speaks the unsigned grid 0..2^b - 1; a signed grid is the same grid shifted by qmin.
    try:
        codes = quantizer(rows, scale, zp - qmin, bits)
    except Exception as err:
        raise ValueError(f"quantizer raised {type(err).__name__}: {err}; it must be "
                         "linear_quantize(x, scale, zero_point, bits) -> integer codes shaped like x.") from None
    codes = torch.as_tensor(codes)
    if codes.shape != rows.shape or torch.is_floating_point(codes):
        raise ValueError(f"quantizer returned {codes.dtype} codes of shape {tuple(codes.shape)}; it must return "
                         f"integer codes shaped like its input {tuple(rows.shape)}.")
    return codes.to(torch.int64) + qmin


def _check_values(x: torch.Tensor, what: str) -> None:
    """Refuse an empty tensor or one holding NaN/Inf: neither has a range to put a grid on."""
    if x.numel() == 0:
        raise ValueError(f"{what} got an empty tensor (shape {tuple(x.shape)}): there is no range to put a grid on. "
                         "Pass a tensor with at least one value (check the slice or layer you picked).")
    bad = int((~torch.isfinite(x)).sum())
    if bad:  # one NaN or Inf makes the range, and so the scale and every code, meaningless
        raise ValueError(f"{what} got a tensor with {bad} NaN or Inf value(s) of {x.numel()}: no grid holds them. "
                         "Find where they come from (an overflow, a division by zero, a diverged training step) "
                         "and fix them before quantizing; torch.isfinite(x) shows where they are.")


def quantize_tensor(w: torch.Tensor, bits: int = 8, scheme: str = "asymmetric", granularity: str = "tensor",
                    group_size: int | None = DEFAULT_GROUP, quantizer: Callable | None = None,
                    qparams_fn: Callable | None = None) -> QTensor:
    """Round `w` to a `bits`-bit grid: codes = clamp(round(w / scale) + zero_point, qmin, qmax).

    `quantizer` (codes from x, scale, zero point, bits) and `qparams_fn` (scale and zero point from lo, hi, bits,
    asymmetric only) replace labkit's own two steps: this is how a learner's functions run on a real model.
    """
    bits = _check_bits(bits)
    _check_choice("scheme", scheme, SCHEMES)
    _check_choice("granularity", granularity, GRANULARITIES)
    if not torch.is_floating_point(w):
        raise ValueError(f"quantize_tensor takes a floating-point tensor, got dtype {w.dtype}.")
    _check_values(w.detach(), "quantize_tensor")
    if qparams_fn is not None and scheme != "asymmetric":
        raise ValueError("qparams_fn computes an asymmetric grid (codes 0..2^bits - 1); use scheme='asymmetric' "
                         "with it, or leave qparams_fn=None for the symmetric scheme.")
    w = w.detach().float()
    rows = _grouped(w, granularity, group_size)
    lo, hi = rows.amin(dim=1, keepdim=True), rows.amax(dim=1, keepdim=True)
    if qparams_fn is None:
        scale, zp = qparams(lo, hi, bits, scheme)
    else:
        scale, zp = _learner_qparams(qparams_fn, lo, hi, bits)
    codes = _codes(rows, scale, zp, bits, scheme, quantizer).reshape(w.shape)
    if granularity == "tensor":
        scale, zp = scale.reshape(()), zp.reshape(())
    elif granularity == "group":
        scale = scale.reshape(w.shape[0], -1, 1)
        zp = zp.reshape(w.shape[0], -1, 1)
    dtype = torch.int32 if bits > 8 else (torch.uint8 if scheme == "asymmetric" else torch.int8)
    return QTensor(codes.to(dtype), scale, zp, bits, scheme, granularity,
                   group_size if granularity == "group" else None)


def dequantize(q: QTensor) -> torch.Tensor:
    """Floats back from codes: (codes - zero_point) * scale."""
    codes = q.codes.to(torch.float32)
    if q.granularity == "group":
        g = codes.reshape(codes.shape[0], -1, q.group_size)
        return ((g - q.zero_point) * q.scale).reshape(q.codes.shape)
    if q.granularity == "channel":
        rows = codes.reshape(codes.shape[0], -1)
        return ((rows - q.zero_point) * q.scale).reshape(q.codes.shape)
    return (codes - q.zero_point) * q.scale


def fake_quantize_tensor(w: torch.Tensor, bits: int = 8, scheme: str = "asymmetric", granularity: str = "tensor",
                         group_size: int | None = DEFAULT_GROUP, quantizer: Callable | None = None,
                         qparams_fn: Callable | None = None) -> torch.Tensor:
    """`dequantize(quantize_tensor(w, ...))`: the float values a quantized tensor really stands for."""
    return dequantize(quantize_tensor(w, bits, scheme, granularity, group_size, quantizer, qparams_fn)).to(w.dtype)


def pack_codes(q: QTensor) -> np.ndarray:
    """The codes as a packed byte string, `bits` bits each (what a `bits`-bit file would hold)."""
    unsigned = (q.codes.to(torch.int64) - q.qmin).cpu().numpy().astype(">u2").reshape(-1)
    bitplanes = np.unpackbits(unsigned.view(np.uint8)).reshape(-1, 16)[:, 16 - q.bits:]
    return np.packbits(bitplanes.reshape(-1))


def unpack_codes(packed: np.ndarray, q_like: QTensor) -> torch.Tensor:
    """Inverse of `pack_codes`: the integer codes, shaped like `q_like.codes`."""
    n = q_like.codes.numel()
    bitplanes = np.unpackbits(packed)[: n * q_like.bits].reshape(n, q_like.bits)
    full = np.zeros((n, 16), dtype=np.uint8)
    full[:, 16 - q_like.bits:] = bitplanes
    unsigned = np.packbits(full.reshape(-1)).view(">u2").astype(np.int64)
    return torch.from_numpy(unsigned + q_like.qmin).reshape(q_like.codes.shape).to(q_like.codes.dtype)


# --- simulated quantization of a model ---------------------------------------------------------------

def _linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """Every Linear layer the techniques here quantize (blocks, pooler and head), found through labkit.core.parts."""
    if parts.is_hf(model):
        parts.family_of(model)  # a Hugging Face model of another family: a ValueError naming the supported ones
    found = list(parts.linears(model, "all").items())
    if not found:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layers to quantize; pass a transformer "
                         "classifier such as the one from labkit.core.model.load_baseline().")
    return found


def _embeddings(model: nn.Module) -> list[tuple[str, nn.Embedding]]:
    """The input embedding tables (word, position, type); every nn.Embedding of a plain module.

    Only the input embeddings of a Hugging Face model: DeBERTa-v2's relative-position table is read as a weight
    inside attention, not looked up, so an int8 lookup table cannot stand in for it.
    """
    if parts.is_hf(model):
        emb = parts.embeddings(model)
        inside = {id(m) for m in emb.modules()}
        return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Embedding) and id(m) in inside]
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Embedding)]


def _target(model: nn.Module, inplace: bool) -> nn.Module:
    return model if inplace else copy.deepcopy(model)


class _ActivationFakeQuant:
    """Forward pre-hook: round a Linear's input to a grid, dynamically per batch or with fixed parameters."""
    def __init__(self, bits: int, scheme: str, scale: torch.Tensor | None = None,
                 zero_point: torch.Tensor | None = None):
        self.bits, self.scheme, self.scale, self.zero_point = bits, scheme, scale, zero_point

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        x = args[0]
        qmin, qmax = qrange(self.bits, self.scheme)
        scale, zp = self.scale, self.zero_point
        if scale is None:  # dynamic: this batch's own range
            scale, zp = qparams(x.detach().amin(), x.detach().amax(), self.bits, self.scheme)
        codes = torch.clamp(torch.round(x / scale) + zp, qmin, qmax)
        return ((codes - zp) * scale,) + tuple(args[1:])


def fake_quantize(model: nn.Module, bits: int, scheme: str = "asymmetric", granularity: str = "channel",
                  group_size: int | None = DEFAULT_GROUP, activations: bool = False, embeddings: bool = False,
                  inplace: bool = False, quantizer: Callable | None = None,
                  qparams_fn: Callable | None = None) -> nn.Module:
    """A simulated quantized copy: every Linear weight rounded to a `bits`-bit grid, still stored as float32.

    For accuracy only: the copy is exactly as large and as slow as the original (see `to_int8` for real int8).
    `activations=True` also rounds each Linear's input per batch; `embeddings=True` rounds embedding rows.
    `quantizer=linear_quantize` and `qparams_fn=scale_and_zero_point` (a learner's, notebook 02) make the
    Linear weights' codes and grids with those functions instead of labkit's own.
    """
    bits = _check_bits(bits)
    _check_choice("scheme", scheme, SCHEMES)
    _check_choice("granularity", granularity, GRANULARITIES)
    for name, fn in (("quantizer", quantizer), ("qparams_fn", qparams_fn)):
        if fn is not None and not callable(fn):
            raise ValueError(f"{name} must be a function (or None for labkit's own), got {type(fn).__name__}.")
    if qparams_fn is not None and scheme != "asymmetric":
        raise ValueError("qparams_fn computes an asymmetric grid; use scheme='asymmetric' with it.")
    layers = _linears(model)
    for _, lin in layers:  # validate every layer before touching any, so a bad group_size leaves nothing half-done
        _grouped(lin.weight.detach()[:, :1].expand(-1, lin.in_features), granularity, group_size)
    out = _target(model, inplace)
    with torch.no_grad():
        for _, lin in _linears(out):
            lin.weight.copy_(fake_quantize_tensor(lin.weight, bits, scheme, granularity, group_size,
                                                  quantizer, qparams_fn))
            if activations:
                lin.register_forward_pre_hook(_ActivationFakeQuant(bits, scheme))
        if embeddings:
            for _, emb in _embeddings(out):
                emb.weight.copy_(fake_quantize_tensor(emb.weight, bits, scheme, "channel"))
    return out


def quantized_size_bytes(model: nn.Module, bits: int, scheme: str = "asymmetric", granularity: str = "channel",
                         group_size: int | None = DEFAULT_GROUP, embeddings: bool = False) -> int:
    """Bytes of the model stored with packed `bits`-bit Linear weights (and embeddings); the rest float32."""
    bits = _check_bits(bits)
    quantized: dict[int, QTensor] = {}
    for _, lin in _linears(model):
        quantized[id(lin.weight)] = quantize_tensor(lin.weight, bits, scheme, granularity, group_size)
    if embeddings:
        for _, emb in _embeddings(model):
            quantized[id(emb.weight)] = quantize_tensor(emb.weight, bits, scheme, "channel")
    total, seen = 0, set()
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) in seen:
            continue  # tied weights are stored once
        seen.add(id(t))
        total += quantized[id(t)].nbytes() if id(t) in quantized else t.numel() * t.element_size()
    return total


def float_size_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer as stored now (tied weights once): the simulated model's real size."""
    tensors = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


# --- calibration: static activation quantization -----------------------------------------------------

def observe(samples: torch.Tensor, bits: int, observer: str = "minmax", scheme: str = "asymmetric",
            percentile: float = 99.99) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point for activations seen in `samples`, chosen by an observer.

    minmax: the whole observed range; percentile: clip the rarest outliers; mse: the clipping range
    whose rounding error (mean squared) on the samples is smallest.
    """
    _check_choice("observer", observer, OBSERVERS)
    x = samples.detach().float().reshape(-1)
    _check_values(x, "observe")
    lo, hi = x.min(), x.max()
    if observer == "percentile":
        if len(x) > 1_000_000:  # torch.quantile has a size limit; a fixed-seed subsample is plenty
            x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:1_000_000]]
        q = torch.tensor([(100 - percentile) / 100, percentile / 100])
        lo, hi = torch.quantile(x, q)
    elif observer == "mse":
        best = None
        for ratio in torch.linspace(0.2, 1.0, 33):
            scale, zp = qparams(lo * ratio, hi * ratio, bits, scheme)
            qmin, qmax = qrange(bits, scheme)
            err = ((torch.clamp(torch.round(x / scale) + zp, qmin, qmax) - zp) * scale - x).pow(2).mean()
            if best is None or err < best[0]:
                best = (err, scale, zp)
        return best[1], best[2]
    return qparams(lo, hi, bits, scheme)


def _calibration_batches(tokenizer, size: int, batch_size: int = 32):
    df = data.split("val", limit=size)
    return list(data.batches(df["text"], None, tokenizer, batch_size))


def calibrate(model: nn.Module, tokenizer, bits: int, observer: str = "minmax", weight_bits: int | None = None,
              size: int | None = None, scheme: str = "asymmetric", inplace: bool = False) -> nn.Module:
    """Static post-training quantization (simulated): fixed activation grids chosen on a calibration set.

    Runs `size` validation snippets through the model, records every Linear's input, lets the observer
    pick one scale/zero point per layer, then rounds inputs to that grid (and weights per channel to
    `weight_bits`, default `bits`). For accuracy only, like `fake_quantize`.
    """
    bits = _check_bits(bits)
    weight_bits = bits if weight_bits is None else _check_bits(weight_bits)
    _check_choice("observer", observer, OBSERVERS)
    size = size or (64 if fast_mode() else 256)
    out = fake_quantize(model, weight_bits, "symmetric", "channel", inplace=inplace)
    layers = _linears(out)
    seen: dict[str, list[torch.Tensor]] = {name: [] for name, _ in layers}
    gen = torch.Generator().manual_seed(0)

    def recorder(name: str) -> Callable:
        def hook(module, args):
            x = args[0].detach().reshape(-1)
            # Keep the extremes and a random sample: min/max need the tails, percentile/MSE need the bulk.
            idx = torch.randint(0, len(x), (min(len(x), 20_000),), generator=gen).to(x.device)
            seen[name].append(torch.cat([x[idx], x.min().reshape(1), x.max().reshape(1)]).float().cpu())
        return hook

    handles = [lin.register_forward_pre_hook(recorder(name)) for name, lin in layers]
    try:
        with torch.inference_mode():
            out.eval()
            dev = parts.device_of(out)
            for batch in _calibration_batches(tokenizer, size):
                out(**parts.feed(out, batch.to(dev).inputs))
    finally:
        for h in handles:
            h.remove()
    for name, lin in layers:
        scale, zp = observe(torch.cat(seen[name]), bits, observer, scheme)
        dev = lin.weight.device
        lin.register_forward_pre_hook(_ActivationFakeQuant(bits, scheme, scale.to(dev), zp.to(dev)))
    return out


# --- quantization-aware fine-tuning ------------------------------------------------------------------

class _STEFakeQuant(nn.Module):
    """Weight parametrization: forward uses the rounded weight, backward passes gradients straight through."""
    def __init__(self, bits: int, scheme: str, granularity: str, group_size: int | None):
        super().__init__()
        self.args = (bits, scheme, granularity, group_size)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        # Straight-through estimator: the value of fq(w), the gradient of w (round() has zero gradient).
        return w + (fake_quantize_tensor(w, *self.args) - w).detach()


def qat(model: nn.Module, tokenizer, bits: int = 4, scheme: str = "asymmetric", granularity: str = "group",
        group_size: int | None = DEFAULT_GROUP, steps: int | None = None, batch_size: int = 32,
        lr: float = 2e-5, seed: int = 0, progress: bool = False, inplace: bool = False,
        precision: str = "fp32") -> nn.Module:
    """Quantization-aware fine-tuning: train through the rounding (straight-through), return the rounded model.

    The result is a simulated quantized model (float storage, weights on the grid), comparable with
    `fake_quantize(model, bits, ...)`, which rounds the same way without training. `precision="bf16"` trains
    under bf16 autocast (see `train.fit`).
    """
    from torch.nn.utils import parametrize


    fake_quantize(model, bits, scheme, granularity, group_size)  # validates every argument, cheaply enough
    steps = steps or (10 if fast_mode() else 150)
    out = model if inplace else train_lib.copy_to_fit(model)  # the embedding fit freezes stays shared
    layers = _linears(out)
    for _, lin in layers:
        parametrize.register_parametrization(lin, "weight", _STEFakeQuant(bits, scheme, granularity, group_size))
    train = data.split("train", limit=steps * batch_size)
    try:
        # A constant learning rate, no warm-up: QAT starts from a trained model and only nudges it onto the grid.
        train_lib.fit(out, tokenizer, train["text"], train["label"], steps, lr=lr, batch_size=batch_size, seed=seed,
                      decay=False, progress=progress, desc=f"QAT {bits}-bit", precision=precision)
    finally:
        # Bake the rounded weights in: the returned model holds exactly the grid values.
        for _, lin in layers:
            parametrize.remove_parametrizations(lin, "weight", leave_parametrized=True)
    return out.eval()


# --- real int8 execution -----------------------------------------------------------------------------

class Int8Embedding(nn.Module):
    """An embedding table stored as int8 codes with one float32 scale per row (symmetric), looked up then scaled."""
    def __init__(self, emb: nn.Embedding):
        super().__init__()
        q = quantize_tensor(emb.weight, 8, "symmetric", "channel")
        self.register_buffer("codes", q.codes)
        self.register_buffer("scale", q.scale.reshape(-1))
        self.padding_idx = emb.padding_idx
        self.num_embeddings, self.embedding_dim = emb.num_embeddings, emb.embedding_dim

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        # Gather int8 rows first, widen only the rows this batch uses.
        return nn.functional.embedding(ids, self.codes).to(torch.float32) * self.scale[ids].unsqueeze(-1)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8 per-row"


def _swap_embeddings(model: nn.Module) -> None:
    for name, emb in _embeddings(model):
        parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
        setattr(parent, name.rsplit(".", 1)[-1], Int8Embedding(emb))


def torch_ao_quantize_dynamic() -> Callable | None:
    """torch.ao.quantization.quantize_dynamic, or None in a torch that has removed it (it is deprecated)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated; the warning is not the learner's
        try:
            from torch.ao.quantization import quantize_dynamic
        except (ImportError, AttributeError):
            return None
    return quantize_dynamic


def torch_dynamic_int8(model: nn.Module) -> nn.Module:
    """torch's dynamic int8 Linear (int8 weights, activations quantized per batch); ONNX Runtime without torch.ao."""
    quantize_dynamic = torch_ao_quantize_dynamic()
    if quantize_dynamic is None:
        # The same recipe (int8 weights, per-batch activation grids) in another runtime: int8 outlives torch.ao.
        warnings.warn(f"torch {torch.__version__} has no torch.ao.quantization.quantize_dynamic: int8 runs in ONNX "
                      "Runtime instead (onnx.to_onnx(model, optimize=False, int8=True)).", RuntimeWarning, stacklevel=3)
        return onnx.to_onnx(model, optimize=False, int8=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated; the warning is not the learner's
        return quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=True)


def to_int8(model: nn.Module, embeddings: bool = True, backend: str = "torch", inplace: bool = False) -> nn.Module:
    """A model that really stores int8 weights and runs int8 matrix kernels on the CPU.

    backend="torch": torch's dynamic int8 Linear, plus (with `embeddings`) int8 embedding tables with
    per-row scales. backend="onnxruntime": export to ONNX, quantize MatMuls and embedding lookups to
    int8, and let the session fuse what it can at load; returns an `OnnxClassifier` called like a
    Hugging Face model. (Fusing with ONNX Runtime's transformer optimizer *before* quantizing, as
    `onnx.to_onnx(model, optimize=True, int8=True)`, measured slower here at batch 1 and no faster at batch 32.)
    backend="openvino": OpenVINO with NNCF's static int8 (calibrated on training snippets), float parts in the
    precision OpenVINO picks; embedding tables stay float (fp16 in the IR). Needs `pip install 'labkit[runtimes]'`.
    """
    _check_choice("backend", backend, BACKENDS)
    _linears(model)
    parts.require_fp32(model, "int8 conversion")  # int8 starts from fp32 weights, never from a bf16 cast
    if backend == "openvino":
        return openvino.to_openvino(model, int8=True)
    if backend == "onnxruntime":
        if not embeddings:
            raise ValueError("backend='onnxruntime' always quantizes the embedding lookups; use embeddings=True "
                             "or backend='torch'.")
        return onnx.to_onnx(model, optimize=False, int8=True)
    out = parts.cpu_target(model, inplace, "torch's int8 kernels (to_int8, backend='torch')").eval()
    if embeddings:
        _swap_embeddings(out)
    return torch_dynamic_int8(out)


# --- an integer-only Linear layer, by hand -----------------------------------------------------------

ACT_BITS = 7  # activation codes 0..127: see IntegerLinear


def quantized_linear(x_codes: torch.Tensor, x_scale: float, x_zp: int, w_codes: torch.Tensor,
                     w_scale: torch.Tensor, bias: torch.Tensor, out_scale: float, out_zp: int) -> torch.Tensor:
    """uint8 output codes of y = x W^T + b, computed in integers (labkit's reference for notebook 02).

    x_codes: uint8 (n, in) with one scale and zero point; w_codes: int8 (out, in), symmetric, one scale per
    output channel; sums of (x_code - x_zp) * w_code in int32; bias quantized at x_scale * w_scale (int32);
    the sums requantized to the output grid (out_scale, out_zp) and clamped to 0..255.
    """
    acc = (x_codes.to(torch.int32) - int(x_zp)) @ w_codes.to(torch.int32).T  # int8 x int8 products, int32 sums
    acc = acc + torch.round(bias / (x_scale * w_scale)).to(torch.int32)  # the bias on the sums' own grid
    # One float multiply per output: the sums' step (x_scale * w_scale) measured in output steps.
    codes = torch.round(acc * (x_scale * w_scale / out_scale)) + int(out_zp)
    return torch.clamp(codes, 0, 255).to(torch.uint8)


class IntegerLinear(nn.Module):
    """A Linear computed in integers: uint8 input codes, int8 weights per output channel, int32 sums, uint8 output.

    The input and output grids are fixed (calibrated, see `swap_integer_linear`); `kernel` does the integer
    arithmetic (labkit's `quantized_linear` or a learner's). Input codes use 0..127 (7 bits), as torch's x86
    default does (`reduce_range`): AVX2 int8 kernels add pairs of uint8 x int8 products in 16 bits, which
    255 x 127 x 2 would overflow. Runs on the CPU (torch has no integer matmul on GPUs) and returns floats.
    """

    def __init__(self, linear: nn.Linear, x_range: tuple[float, float], out_range: tuple[float, float],
                 kernel: Callable | None = None):
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"IntegerLinear replaces an nn.Linear, got {type(linear).__name__}.")
        if kernel is not None and not callable(kernel):
            raise ValueError(f"kernel must be a function like quantize.quantized_linear, got {type(kernel).__name__}.")
        q = quantize_tensor(linear.weight, 8, "symmetric", "channel")
        self.register_buffer("w_codes", q.codes.cpu())
        self.register_buffer("w_scale", q.scale.reshape(-1).cpu())
        bias = linear.bias if linear.bias is not None else torch.zeros(linear.out_features)
        self.register_buffer("bias", bias.detach().float().cpu().clone())
        xs, xz = qparams(torch.tensor(float(x_range[0])), torch.tensor(float(x_range[1])), ACT_BITS, "asymmetric")
        ys, yz = qparams(torch.tensor(float(out_range[0])), torch.tensor(float(out_range[1])), 8, "asymmetric")
        self.x_scale, self.x_zp, self.out_scale, self.out_zp = float(xs), int(xz), float(ys), int(yz)
        self.kernel = kernel or quantized_linear
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def input_codes(self, x: torch.Tensor) -> torch.Tensor:
        """The input as uint8 codes on this layer's input grid, one row per token."""
        flat = x.detach().reshape(-1, self.in_features).float().cpu()
        return torch.clamp(torch.round(flat / self.x_scale) + self.x_zp, 0, 2 ** ACT_BITS - 1).to(torch.uint8)

    def output_codes(self, x: torch.Tensor) -> torch.Tensor:
        """The output's uint8 codes, computed by `kernel` in integers."""
        codes = torch.as_tensor(self.kernel(self.input_codes(x), self.x_scale, self.x_zp, self.w_codes,
                                            self.w_scale, self.bias, self.out_scale, self.out_zp))
        want = (x.numel() // self.in_features, self.out_features)
        if tuple(codes.shape) != want or torch.is_floating_point(codes):
            raise ValueError(f"the kernel returned {codes.dtype} codes of shape {tuple(codes.shape)}; it must "
                             f"return integer codes of shape {want} (tokens x outputs).")
        return codes

    def torch_output_codes(self, x: torch.Tensor) -> torch.Tensor:
        """The same layer run by torch's own int8 Linear (torch.ao.nn.quantized.Linear) on the same codes."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated; the warning is not the learner's
            from torch.ao.nn.quantized import Linear as TorchQLinear

            layer = TorchQLinear(self.in_features, self.out_features, dtype=torch.qint8)
            w = torch._make_per_channel_quantized_tensor(self.w_codes, self.w_scale.double(),
                                                         torch.zeros(self.out_features, dtype=torch.int64), 0)
            layer.set_weight_bias(w, self.bias)
            layer.scale, layer.zero_point = self.out_scale, self.out_zp
            qx = torch._make_per_tensor_quantized_tensor(self.input_codes(x), self.x_scale, self.x_zp)
            return layer(qx).int_repr()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = (self.output_codes(x).to(torch.float32) - self.out_zp) * self.out_scale
        return y.reshape(*x.shape[:-1], self.out_features).to(device=x.device, dtype=x.dtype)

    def extra_repr(self) -> str:
        return (f"{self.in_features}, {self.out_features}, uint8 x int8 -> int32, "
                f"kernel={getattr(self.kernel, '__name__', 'kernel')}")


def linear_names(model: nn.Module) -> list[str]:
    """Names of every nn.Linear in the model, in order (found by type, for `get_submodule`)."""
    return [name for name, _ in _linears(model)]


def _linear(model: nn.Module, name: str) -> nn.Linear:
    names = linear_names(model)
    if name not in names:
        raise ValueError(f"{name!r} is not a Linear layer of this model; use one of quantize.linear_names(model), "
                         f"e.g. {names[:3]}.")
    return model.get_submodule(name)


def layer_io(model: nn.Module, tokenizer, name: str, split: str = "test",
             limit: int | None = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and outputs of the Linear `name` on real snippets: one row per token (padding left out), on the CPU."""
    lin = _linear(model, name)
    seen: dict[str, torch.Tensor] = {}
    handle = lin.register_forward_hook(lambda mod, args, out: seen.update(x=args[0].detach(), y=out.detach()))
    xs, ys = [], []
    try:
        with torch.inference_mode():
            model.eval()
            dev = parts.device_of(model)
            for batch in data.batches(data.split(split, limit)["text"], None, tokenizer, 32):
                model(**parts.feed(model, batch.to(dev).inputs))
                x, y = seen["x"], seen["y"]
                if x.dim() == 3:  # (batch, tokens, features): keep the real tokens; a head sees one row per snippet
                    keep = batch.inputs["attention_mask"].bool().to(x.device)
                    x, y = x[keep], y[keep]
                xs.append(x.cpu())
                ys.append(y.cpu())
    finally:
        handle.remove()
    return torch.cat(xs), torch.cat(ys)


def swap_integer_linear(model: nn.Module, tokenizer, name: str, kernel: Callable | None = None,
                        split: str = "val", size: int | None = None) -> nn.Module:
    """A CPU copy of `model` whose Linear `name` runs in integers (`IntegerLinear` with `kernel`).

    The layer's input and output grids are the min/max seen on `size` snippets of `split`: a setting, so
    it is chosen on the validation split, never on the test split it is then measured on.
    """
    split = data.selection_split(split)
    _linear(model, name)
    size = size or (64 if fast_mode() else 256)
    x, y = layer_io(model, tokenizer, name, split, size)
    out = parts.cpu_target(model, False, "An integer Linear (IntegerLinear)").eval()
    parent, _, attr = name.rpartition(".")
    holder = out.get_submodule(parent) if parent else out
    setattr(holder, attr, IntegerLinear(out.get_submodule(name), (float(x.min()), float(x.max())),
                                        (float(y.min()), float(y.max())), kernel))
    return out


# --- the bit-width slider ----------------------------------------------------------------------------

_BASE: dict[str, Any] = {}
_POINTS: dict[tuple, dict] = {}
data.on_change(_BASE.clear)  # another data set: another baseline and other points
data.on_change(_POINTS.clear)
QUICK_LIMIT = data.QUICK_LIMIT


def _baseline() -> tuple[nn.Module, Any]:
    """The baseline shared by every slider in this process."""
    return model_lib.shared_baseline()[:2]


def _reference(limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Baseline predictions and true labels on the (quick) validation subset, computed once."""
    key = ("reference", limit)
    if key not in _BASE:
        base, tok = _baseline()
        _BASE[key] = (measure.predictions(base, tok, data.QUICK_SPLIT, limit),
                      data.split(data.QUICK_SPLIT, limit)["label"].to_numpy())
    return _BASE[key]


def bits_point(bits: int, scheme: str = "asymmetric", granularity: str = "channel",
               group_size: int | None = DEFAULT_GROUP, limit: int | None = QUICK_LIMIT,
               quantizer: Callable | None = None, qparams_fn: Callable | None = None) -> dict:
    """One slider position: accuracy (95% interval), agreement with fp32 and packed size of the baseline at `bits`.

    Simulated, on the quick validation subset (`limit` snippets); each point is computed once and cached.
    `quantizer` / `qparams_fn`: a learner's functions instead of labkit's (see `fake_quantize`).
    """
    bits = _check_bits(bits)
    key = (bits, scheme, granularity, group_size if granularity == "group" else None, limit, quantizer, qparams_fn)
    if key not in _POINTS:
        base, tok = _baseline()
        ref, labels = _reference(limit)
        sim = fake_quantize(base, bits, scheme, granularity, group_size, quantizer=quantizer, qparams_fn=qparams_fn)
        preds = measure.predict(sim, tok, data.split(data.QUICK_SPLIT, limit)["text"])
        ci = measure.accuracy_ci(preds, labels)
        _POINTS[key] = {"bits": bits, "scheme": scheme, "granularity": granularity,
                        "accuracy": ci["accuracy"], "lo": ci["lo"], "hi": ci["hi"],
                        "agreement": measure.agreement(preds, ref),
                        "size_bytes": quantized_size_bytes(base, bits, scheme, granularity, group_size),
                        "fp32_bytes": float_size_bytes(base),
                        "snippets": len(labels)}
    return dict(_POINTS[key])


def sweep(bits: tuple[int, ...] = tuple(range(1, 9)), granularities: tuple[str, ...] = GRANULARITIES,
          scheme: str = "asymmetric", group_size: int | None = DEFAULT_GROUP,
          limit: int | None = None, quantizer: Callable | None = None,
          qparams_fn: Callable | None = None) -> Iterator[dict]:
    """Stream `bits_point` over bit widths and granularities (for a live plot); each row says its progress."""
    todo = [(g, b) for g in granularities for b in bits]
    for i, (g, b) in enumerate(todo, 1):
        yield dict(bits_point(b, scheme, g, group_size, limit, quantizer, qparams_fn), done=i, total=len(todo))


# --- the main job's rows -----------------------------------------------------------------------------

def tour(model: nn.Module, tokenizer, reference: np.ndarray, limit: int | None = None) -> list[results.Result]:
    """Rows for `python -m labkit tour`: simulated 8-bit weights (accuracy only) and real int8 on the CPU, the real
    ones timed interleaved beside `model`. `limit` measures the first `limit` test snippets only (tests)."""
    reference = results.reference_on(model, tokenizer, reference, limit)
    sim = fake_quantize(model, 8, "asymmetric", "channel")
    packed = quantized_size_bytes(model, 8, "asymmetric", "channel")
    rows = [results.evaluate("8-bit per-channel (simulated)", sim, tokenizer, reference, limit=limit, timing=False,
                             notes=f"fake-quant: accuracy only, float storage; packed would be {packed / 1e6:.1f} MB")]
    real = {"int8 dynamic (torch)": to_int8(model), "int8 (onnxruntime)": to_int8(model, backend="onnxruntime")}
    notes = {"int8 dynamic (torch)": "real int8 Linear + int8 embeddings",
             "int8 (onnxruntime)": "ONNX Runtime: int8 MatMul + embeddings, session fusions"}
    rows += results.evaluate_group(real, tokenizer, reference, model, notes, limit=limit)
    return rows
