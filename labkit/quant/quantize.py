"""Weights on a grid (notebook 02): simulated quantization of a model's Linear weights, quantization-aware training,
the packed size, and real int8 on the CPU for the tour and the pipelines.

`fake_quantize_weight`, `fake_quantize`, `StraightThrough` and `qat` are notebook 02's own code (its `#@save` cells).
They give *simulated* models: float weights on a grid, for accuracy only, no smaller and no faster. `to_int8` gives
a model that really stores int8 weights and runs int8 kernels.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from labkit import fast_mode
from labkit.core import data, parts, results, settings, train
from labkit.quant import int8
from labkit.quant.affine import block_size_for, fake_quantize_affine, packed_bytes, qrange
from labkit.runtimes import onnx, openvino

BACKENDS = ("torch", "onnxruntime", "openvino")


def fake_quantize_weight(w: torch.Tensor, bits: int, scheme: str = "asymmetric", granularity: str = "channel",
                         group_size: int = 64) -> torch.Tensor:
    """`w` on a `bits`-bit grid per tensor, per channel (row) or per group of `group_size`: quantized, dequantized."""
    qmin, qmax = qrange(bits, scheme)
    return fake_quantize_affine(w, scheme, block_size_for(w, granularity, group_size), qmin, qmax)


def fake_quantize(model: nn.Module, bits: int, scheme: str = "asymmetric", granularity: str = "channel",
                  group_size: int = 64, filter_fn="all") -> nn.Module:
    """A copy of `model` whose Linear weights (picked by `filter_fn`) sit on a `bits`-bit grid, still in float32."""
    out = copy.deepcopy(model)
    layers = parts.linears(out, filter_fn)
    if not layers:
        raise ValueError(f"filter_fn {filter_fn!r} picks no nn.Linear of {type(model).__name__}: nothing to quantize.")
    with torch.no_grad():
        for lin in layers.values():
            lin.weight.copy_(fake_quantize_weight(lin.weight, bits, scheme, granularity, group_size))
    return out


def quantized_size_bytes(model: nn.Module, bits: int, scheme: str = "asymmetric", granularity: str = "channel",
                         group_size: int = 64, filter_fn="all") -> int:
    """Bytes of `model` with its Linear weights packed at `bits` bits plus a float32 scale (and, asymmetric, a zero
    point) per block; every other tensor as it is stored now, tied ones once."""
    zero_point_bytes = 0 if scheme == "symmetric" else math.ceil(bits / 8)
    packed = {}
    for lin in parts.linears(model, filter_fn).values():
        w = lin.weight
        blocks = w.numel() // math.prod(block_size_for(w, granularity, group_size))
        packed[id(w)] = packed_bytes(w.numel(), bits, blocks, 4, zero_point_bytes)
    tensors = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    return sum(packed.get(i, t.numel() * t.element_size()) for i, t in tensors.items())


class StraightThrough(nn.Module):
    """A weight parametrization: the forward pass sees the weight on its grid, the backward pass takes rounding for
    the identity (the straight-through estimator), so each step moves the float weight underneath."""

    def __init__(self, bits: int, scheme: str = "asymmetric", granularity: str = "group", group_size: int = 64):
        super().__init__()
        self.bits, self.scheme, self.granularity, self.group_size = bits, scheme, granularity, group_size

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        on_grid = fake_quantize_weight(w, self.bits, self.scheme, self.granularity, self.group_size)
        return w + (on_grid - w).detach()  # the value of on_grid, the gradient of w


def qat(model: nn.Module, tokenizer, bits: int = 4, scheme: str = "asymmetric", granularity: str = "group",
        group_size: int = 64, steps: int | None = None, lr: float = 2e-5, batch_size: int = 32,
        precision: str = "fp32", parametrization=None) -> nn.Module:
    """Quantization-aware fine-tuning of a copy of `model` on training snippets, its rounded weights then kept.

    `parametrization`: a class (or any callable) making each Linear's weight parametrization; by default
    `StraightThrough(bits, scheme, granularity, group_size)`."""
    steps = steps or (10 if fast_mode() else 150)
    out = copy.deepcopy(model)
    layers = parts.linears(out, "all")
    for lin in layers.values():
        straight = parametrization() if parametrization else StraightThrough(bits, scheme, granularity, group_size)
        parametrize.register_parametrization(lin, "weight", straight)
    snippets = data.split("train", limit=steps * batch_size)
    try:
        # A constant learning rate, no warm-up: QAT starts from a trained model and only nudges it onto the grid.
        train.fit(out, tokenizer, snippets["text"], snippets["label"], steps, lr=lr, batch_size=batch_size,
                  decay=False, desc=f"QAT {bits}-bit", precision=precision)
    finally:
        for lin in layers.values():  # the weights that stay are the grid values the last forward pass used
            parametrize.remove_parametrizations(lin, "weight", leave_parametrized=True)
    return out.eval()


def float_size_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer as stored now (tied weights once): a simulated model's real size."""
    tensors = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def to_int8(model: nn.Module, embeddings: bool = True, backend: str = "torch", inplace: bool = False) -> nn.Module:
    """Real int8 on the CPU by one of three backends, for the tour and the pipelines.

    "torch": `int8.dynamic_int8` on every Linear, with int8 input embedding tables when `embeddings`.
    "onnxruntime": `onnx.to_onnx(model, optimize=False, int8=True)`, ONNX Runtime's `quantize_dynamic` (MatMuls and
    embedding lookups). "openvino": `openvino.to_openvino(model, int8=True)`, NNCF's static int8.
    Returns a new model; the input is unchanged unless inplace=True (the runtimes' models are always new).
    """
    settings.flags(embeddings=embeddings, inplace=inplace)
    if backend not in BACKENDS:
        raise ValueError(f"Unknown backend {backend!r}; choose one of {', '.join(map(repr, BACKENDS))}.")
    if not parts.linears(model, "all"):
        raise ValueError(f"{type(model).__name__} has no nn.Linear layers to quantize; pass a transformer classifier "
                         "such as the one from labkit.core.model.load_baseline().")
    parts.require_fp32(model, "int8 conversion")
    if backend == "openvino":
        return openvino.to_openvino(model, int8=True)
    if backend == "onnxruntime":
        if not embeddings:
            raise ValueError("backend='onnxruntime' always quantizes the embedding lookups; use embeddings=True "
                             "or backend='torch'.")
        return onnx.to_onnx(model, optimize=False, int8=True)
    return int8.dynamic_int8(model, "all", inplace, embeddings=embeddings)


def tour(model: nn.Module, tokenizer, reference: np.ndarray, limit: int | None = None) -> list[results.Result]:
    """Rows for `python -m labkit tour`: simulated 8-bit weights (accuracy only) and real int8 on the CPU, the real
    ones timed interleaved beside `model`. `limit` measures the first `limit` test snippets only (tests)."""
    reference = results.reference_on(model, tokenizer, reference, limit)
    sim = fake_quantize(model, 8, "asymmetric", "channel")
    packed = quantized_size_bytes(model, 8, "asymmetric", "channel")
    rows = [results.evaluate("8-bit per-channel (simulated)", sim, tokenizer, reference, limit=limit, timing=False,
                             notes=f"fake-quant: accuracy only, float storage; packed would be {packed / 1e6:.1f} MB")]
    del sim
    real = {"int8 dynamic (torch)": to_int8(model), "int8 (onnxruntime)": to_int8(model, backend="onnxruntime")}
    notes = {"int8 dynamic (torch)": "real int8 Linear + int8 embeddings",
             "int8 (onnxruntime)": "ONNX Runtime: int8 MatMul + embedding lookups"}
    rows += results.evaluate_group(real, tokenizer, reference, model, notes, limit=limit)
    return rows
