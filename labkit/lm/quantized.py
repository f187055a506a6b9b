"""A causal LM with weight-only quantized decoder layers: the whole model by one method, its packed bytes, and the
slider's point (notebook 08).

`quantize_model` rounds every decoder Linear weight and returns a model that shares no tensor with its input. The
methods, as their reference code runs them:
- "rtn": round to nearest, every group on its own grid (labkit.lm.weightonly.rtn).
- "gptq": GPTQ with sequential calibration (IST-DASLab/gptq llama.py, `--true-sequential`): block by block, each
  group of layers reading one input ([q, k, v], [o], [gate, up], [down]) is calibrated on the inputs the already
  quantized layers before it produce, then quantized (weightonly.gptq_quantize: `act_order`, `static_groups`).
- "awq": AWQ's block-wise scales folded into the layers before, and auto_clip (labkit.lm.awq), then rtn.
And the earlier variants, kept as ablations: "gptq-one-pass" (every layer calibrated on the float model's inputs,
from one pass) and "awq-per-linear" (a scale vector per layer, scored on that layer alone: it cannot fold into
the layer before, so a GroupLinear multiplies by it at run time).

With `store="codes"` each layer becomes a `GroupLinear`, which keeps the codes (a byte each) and rebuilds the
float weight at every call: the same outputs in a third of the memory.
"""

from __future__ import annotations

import math
import time
from typing import Sequence

import torch
from torch import nn

from labkit import fast_mode
from labkit.core import parts, settings
from labkit.lm import blocks
from labkit.lm.awq import awq_fold
from labkit.lm.calibration import InputStats, calibration_ids, calibration_stats
from labkit.lm.perplexity import LMPoint, Perplexity, measure_point
from labkit.lm.slm import check_causal_lm, decoder_linears
from labkit.lm.weightonly import (
    awq_scales,
    check_bits,
    check_damp,
    check_grid,
    check_group,
    dequantize,
    gptq_column,
    gptq_columns,
    gptq_factor,
    gptq_quantize,
    hessian_factor,
    quantize_codes,
    rtn,
    rtn_codes,
)

METHODS = ("rtn", "gptq", "awq", "gptq-one-pass", "awq-per-linear")
REFERENCE_METHODS = METHODS[:3]  # the methods as their papers' code runs them; the other two are ablations
# the reference-faithful methods calibrate by running the blocks on token ids; the ablations on recorded statistics
BLOCKWISE = ("gptq", "awq")
STORES = ("float", "codes")


class GroupLinear(nn.Module):
    """A Linear layer that stores what a weight-only method produced: integer codes (one byte each), a scale and an
    offset per group, and optionally the "awq-per-linear" ablation's per-input scales s; it rebuilds the float
    weight at every call.

    It computes exactly what the method's float weight computes, in about a third of its memory (a byte per code
    and two float32 numbers per group, against four bytes per weight). Rebuilding costs time at every call, which
    is why `quantize_model` returns float weights by default (faster to generate with).
    """

    def __init__(self, linear: nn.Linear, codes: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor,
                 group_size: int, in_scale: torch.Tensor | None = None):
        super().__init__()
        self.in_features, self.out_features, self.group_size = linear.in_features, linear.out_features, group_size
        self.dtype = linear.weight.dtype
        self.register_buffer("codes", codes.to(torch.uint8))  # bits <= 8: every code fits a byte
        self.register_buffer("scale", scale)
        self.register_buffer("offset", offset)
        self.register_buffer("in_scale", in_scale)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    @property
    def weight(self) -> torch.Tensor:
        """The float weight, rebuilt from the codes (a new tensor each time)."""
        w = dequantize(self.codes, self.scale, self.offset, self.group_size)
        return (w if self.in_scale is None else w / self.in_scale).to(self.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight.to(x.dtype), self.bias)


def _group_linear(layer: nn.Linear, method: str, bits: int, group_size: int, stats: InputStats | None,
                  factor: torch.Tensor | None, grid: int) -> GroupLinear:
    """`layer` quantized by `method`, kept as codes: its weight is what quantize_model's float copy would hold."""
    w = layer.weight.detach()
    if method == "rtn":
        return GroupLinear(layer, *rtn_codes(w, bits, group_size), group_size)
    if method == "awq-per-linear":
        s, _ = awq_scales(w, stats.absmean, stats.sample, bits, group_size, rtn, grid)
        return GroupLinear(layer, *rtn_codes(w.float() * s, bits, group_size), group_size, in_scale=s)
    Q, scale, offset = gptq_columns(w, factor, bits, group_size, gptq_column)
    # Q's every entry is offset + code * scale, computed as dequantize computes it: the codes give Q back exactly
    return GroupLinear(layer, quantize_codes(Q, scale, offset, bits, group_size), scale, offset, group_size)


def _float_weight(layer: nn.Linear, method: str, bits: int, group_size: int, stats: InputStats | None,
                  factor: torch.Tensor | None, grid: int) -> torch.Tensor:
    """`layer`'s weight quantized by `method`, as floats."""
    w = layer.weight.detach()
    if method == "rtn":
        return rtn(w, bits, group_size)
    if method == "awq-per-linear":
        s, _ = awq_scales(w, stats.absmean, stats.sample, bits, group_size, rtn, grid)
        return (rtn(w.float() * s, bits, group_size) / s).to(w.dtype)
    return gptq_columns(w, factor, bits, group_size, gptq_column)[0].to(w.dtype)


def quantize_model(model: nn.Module, method: str = "rtn", bits: int = 4, group_size: int = 32,
                   calib_texts: str | Sequence[str] | None = None, tokenizer=None, *,
                   stats: dict[str, InputStats] | None = None, inplace: bool = False, damp: float = 0.01,
                   grid: int = 20, store: str = "float", act_order: bool = False, static_groups: bool = False,
                   clip: bool = True) -> nn.Module:
    """A copy of a causal LM whose decoder Linear weights are quantized by `method` (see METHODS and the module's
    docstring: 'rtn', 'gptq', 'awq', and the ablations 'gptq-one-pass', 'awq-per-linear').

    Every method but RTN needs calibration: `calib_texts` with the `tokenizer`, or `stats` from calibration_stats
    (reuse them across settings; 'gptq' and 'awq' run the blocks again on the token ids they hold). GPTQ's
    `act_order` and `static_groups` are fasterquant's options; `clip=False` leaves out AWQ's auto_clip. The head
    and embeddings stay as they are. The copy shares no tensor with `model`; the model itself is changed only
    with `inplace`. `store="codes"` replaces each layer by a GroupLinear (the same outputs, a third of the memory,
    slower: it rebuilds the weight at every call); "float" writes the quantized float weights.
    """
    settings.flags(inplace=inplace, act_order=act_order, static_groups=static_groups, clip=clip)
    stats = _checked(model, method, bits, group_size, calib_texts, tokenizer, stats, store, grid, damp,
                     act_order and not static_groups)
    options = {"act_order": act_order, "static_groups": static_groups, "clip": clip}
    if inplace:
        return _quantize(model, method, bits, group_size, stats, damp, grid, store, **options)
    if store == "codes":  # the layers are replaced, never written: share until then, then own the rest
        out = _quantize(parts.copy_sharing(model), method, bits, group_size, stats, damp, grid, store, **options)
        return parts.unshare(out, model)
    # every tensor cloned at once, before any quantizing: new weights allocated one by one between the quantizers'
    # temporaries leave the heap fragmented
    return _quantize(parts.clone(model), method, bits, group_size, stats, damp, grid, store, **options)


def _checked(model: nn.Module, method: str, bits, group_size, calib_texts, tokenizer,
             stats: dict[str, InputStats] | None, store: str, grid, damp=0.01,
             loose_groups: bool = False) -> dict[str, InputStats] | None:
    """quantize_model's arguments checked (ValueError saying what to pass), and the calibration it needs."""
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; choose one of {', '.join(map(repr, METHODS))}.")
    if store not in STORES:
        raise ValueError(f"store must be one of {', '.join(map(repr, STORES))}, got {store!r}.")
    check_bits(bits)
    check_grid(grid)
    check_damp(damp)
    if loose_groups and store == "codes":
        raise ValueError("act_order without static_groups makes groups of columns in curvature order, which no "
                         "per-group scale of consecutive columns describes: pass static_groups=True, or "
                         "store='float'.")
    layers = decoder_linears(model)  # also checks it is a causal LM of a known family
    if any(isinstance(m, GroupLinear) for m in model.modules()):
        raise ValueError("This model's layers are already quantized (GroupLinear): quantize the float model.")
    for name, layer in layers.items():
        check_group(layer.in_features, group_size, name)
    if method != "rtn" and stats is None:
        if calib_texts is None:
            raise ValueError(f"{method} needs calibration: pass calib_texts (e.g. labkit.lm.slm.calibration_texts()) "
                             "with the tokenizer, or stats=calibration_stats(model, ids).")
        stats = calibration_stats(model, calibration_ids(tokenizer, calib_texts))
    if method != "rtn" and set(layers) - set(stats):
        raise ValueError("stats do not cover every decoder layer of this model: record them on this model with "
                         "calibration_stats(model, ids).")
    if method in BLOCKWISE and getattr(stats, "ids", None) is None:
        raise ValueError(f"{method} runs the decoder blocks again on the calibration tokens: pass the stats "
                         "calibration_stats(model, ids) returns (they keep the ids), or calib_texts.")
    return stats


@torch.no_grad()
def _quantize(out: nn.Module, method: str, bits: int, group_size: int, stats: dict[str, InputStats] | None,
              damp: float, grid: int, store: str, act_order: bool = False, static_groups: bool = False,
              clip: bool = True) -> nn.Module:
    """`out` with its decoder layers quantized in place (written, or replaced by GroupLinear with codes)."""
    if method == "gptq":
        _gptq_sequential(out, stats.ids, bits, group_size, damp, store, act_order, static_groups)
    elif method == "awq":
        # scales folded and groups clipped in the float weights, then each block rounded like RTN as soon as it is
        # done: only one block's scaled float copies exist at a time
        names = [[n for group in blocks.input_groups(out, i) for n in group] for i in range(len(blocks.blocks_of(out)))]

        def round_block(index: int, block: nn.Module) -> None:
            for name in names[index]:
                layer = out.get_submodule(name)
                if store == "codes":
                    parts.set_module(out, name, _group_linear(layer, "rtn", bits, group_size, None, None, grid))
                else:
                    layer.weight.copy_(rtn(layer.weight.detach(), bits, group_size))

        awq_fold(out, stats.ids, bits, group_size, grid, clip, on_block=round_block)
    else:
        factors: dict[int, torch.Tensor] = {}  # q, k and v read one input: one factor for the three, freed on return
        for name, layer in decoder_linears(out).items():
            s = None if stats is None else stats[name]
            if method == "gptq-one-pass" and id(s) not in factors:
                factors = {id(s): hessian_factor(s.H, damp)}  # layers sharing an input come one after another
            factor = factors.get(id(s))
            if store == "codes":
                parts.set_module(out, name, _group_linear(layer, method, bits, group_size, s, factor, grid))
            else:
                layer.weight.copy_(_float_weight(layer, method, bits, group_size, s, factor, grid))
    out.weightonly = {"method": method, "bits": bits, "group_size": group_size, "store": store}
    return out


def _gptq_sequential(out: nn.Module, ids: torch.Tensor, bits: int, group_size: int, damp: float, store: str,
                     act_order: bool, static_groups: bool) -> None:
    """GPTQ's llama_sequential: each group of layers sharing an input gets H from the inputs that the blocks and
    layers already quantized produce, then is quantized; the block's quantized outputs feed the next block."""
    inputs = blocks.first_block_inputs(out, ids)
    groups = [blocks.input_groups(out, i) for i in range(len(blocks.blocks_of(out)))]  # before any is replaced
    for block, block_groups in zip(blocks.blocks_of(out), groups):
        for names in block_groups:
            X = blocks.record_inputs(out, block, inputs, names)
            H = X.T @ X / len(X)
            del X
            layers = {name: dict(out.named_modules())[name] for name in names}
            factor = gptq_factor(H, damp, act_order)  # one Cholesky for the layers reading this input
            for name, layer in layers.items():
                Q, scale, offset = gptq_quantize(layer.weight.detach(), H, bits, group_size, damp, act_order,
                                                 static_groups, factor=factor)
                if store == "codes":
                    codes = quantize_codes(Q, scale, offset, bits, group_size)
                    parts.set_module(out, name, GroupLinear(layer, codes, scale, offset, group_size))
                else:
                    layer.weight.copy_(Q)
        inputs = blocks.run_block(block, inputs)  # through the quantized block: what the next one will see


def map_weights(model: nn.Module, fn, inplace: bool = False) -> nn.Module:
    """A copy of a causal LM (sharing no tensor with it) whose decoder Linear weights are fn(weight), a function
    [out, in] -> [out, in]. The input model is changed only with `inplace`."""
    settings.flags(inplace=inplace)
    check_causal_lm(model)  # before a copy is made
    if not callable(fn):
        raise TypeError(f"fn must be a function weight -> new weight of the same shape (e.g. lambda w: w * 0.5), "
                        f"got {type(fn).__name__}.")
    out = model if inplace else parts.clone(model)
    with torch.no_grad():
        for name, layer in decoder_linears(out).items():
            new = fn(layer.weight.detach().clone())
            if not isinstance(new, torch.Tensor) or new.shape != layer.weight.shape:
                raise ValueError(f"fn must return a tensor of the weight's shape {tuple(layer.weight.shape)} for "
                                 f"{name}, got {getattr(new, 'shape', type(new).__name__)}.")
            parts.check_weight(new, f"fn's result for {name}.weight", fix="Make fn return finite floats")
            layer.weight.copy_(new)
    return out


def _layers(model_or_layers) -> dict[str, nn.Linear]:
    if isinstance(model_or_layers, nn.Linear):
        return {"layer": model_or_layers}
    if isinstance(model_or_layers, dict):
        return model_or_layers
    return decoder_linears(model_or_layers)


def packed_bytes(model_or_layers, bits: int, group_size: int, channel_scales: bool = False) -> int:
    """Bytes of the layers packed: `bits`-bit codes, a float16 scale and a float16 offset per group (+ bias).

    A causal LM counts its decoder Linear layers. AWQ's per-input-channel scales fold into the previous layer in
    a real deployment (no bytes); `channel_scales=True` counts them as one float16 per input instead.
    """
    settings.flags(channel_scales=channel_scales)
    bits = check_bits(bits)
    total = 0
    for name, layer in _layers(model_or_layers).items():
        out_f, in_f = layer.weight.shape
        groups = out_f * (in_f // check_group(in_f, group_size, name))
        total += math.ceil(out_f * in_f * bits / 8) + 2 * groups + 2 * groups
        total += 2 * in_f if channel_scales else 0
        total += 0 if layer.bias is None else layer.bias.numel() * layer.bias.element_size()
    return total


def float_bytes(model_or_layers, dtype: torch.dtype = torch.float32) -> int:
    """Bytes of the same layers' weights and biases stored as `dtype` (float32: 4 bytes each)."""
    size = torch.finfo(dtype).bits // 8
    return sum(p.numel() * size for layer in _layers(model_or_layers).values() for p in layer.parameters())


def point(model: nn.Module, tokenizer, method: str = "rtn", bits: int = 4, group_size: int = 32,
          stats: dict[str, InputStats] | None = None, base: Perplexity | None = None,
          grid: int | None = None) -> LMPoint:
    """One setting for a slider: the quantized model's perplexity (95% interval), its paired ratio to `base` (the
    decoded model's perplexity on the same chunks), the packed bytes of the quantized layers, the seconds taken.

    The quantized copy keeps codes (a third of the float weights' memory, beside the float model and the
    statistics), shares the rest with `model` and is freed before returning. GPTQ and AWQ need `stats`."""
    if method != "rtn" and stats is None:
        raise ValueError(f"{method} needs calibration: pass stats=calibration_stats(model, ids) (record them once).")
    grid = grid or (10 if fast_mode() else 20)
    stats = _checked(model, method, bits, group_size, None, None, stats, "codes", grid)
    t0 = time.perf_counter()
    q = _quantize(parts.copy_sharing(model), method, bits, group_size, stats, 0.01, grid, "codes")
    took = time.perf_counter() - t0
    settings = {"method": method, "bits": bits, "group_size": group_size}
    return measure_point(q, tokenizer, settings, base, packed_bytes(model, bits, group_size), float_bytes(model),
                         **{"seconds to quantize": round(took, 1)})
