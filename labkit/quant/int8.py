"""Real int8 on the CPU: torch's dynamic int8 Linear (int8 weights, each batch's activation scale at run time), the
one dynamic int8 path every lesson and the tour use, with int8 embedding tables where asked."""

from __future__ import annotations

import warnings
from typing import Callable

import torch
from torch import nn

from labkit.core import parts, settings
from labkit.quant import affine
from labkit.runtimes import onnx


class Int8Embedding(nn.Module):
    """An embedding table stored as int8 codes with one float32 scale per row (symmetric), looked up then scaled."""

    def __init__(self, emb: nn.Embedding):
        super().__init__()
        qmin, qmax = affine.qrange(8, "symmetric", restricted=True)
        block = affine.block_size_for(emb.weight, "channel")
        scale, zero_point = affine.choose_qparams_affine(emb.weight, "symmetric", block, qmin, qmax)
        self.register_buffer("codes", affine.quantize_affine(emb.weight, block, scale, zero_point, qmin, qmax).cpu())
        self.register_buffer("scale", scale.reshape(-1).cpu())
        self.padding_idx = emb.padding_idx
        self.num_embeddings, self.embedding_dim = emb.num_embeddings, emb.embedding_dim

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        # Gather int8 rows first, widen only the rows this batch uses.
        return nn.functional.embedding(ids, self.codes).to(torch.float32) * self.scale[ids].unsqueeze(-1)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8 per-row"


def input_embeddings(model: nn.Module) -> dict[str, nn.Embedding]:
    """The lookup tables of the model's input (word, position, type), by full name; every nn.Embedding of a plain
    module. DeBERTa-v2's relative-position table is read as a weight inside attention, so it is not one of them."""
    inside = {id(m) for m in parts.embeddings(model).modules()} if parts.is_hf(model) else None
    return {n: m for n, m in model.named_modules()
            if isinstance(m, nn.Embedding) and (inside is None or id(m) in inside)}


def torch_ao_quantize_dynamic() -> Callable | None:
    """torch.ao.quantization.quantize_dynamic, or None in a torch that has removed it (it is deprecated)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the deprecation notice is for us, not the learner
        try:
            from torch.ao.quantization import quantize_dynamic
        except (ImportError, AttributeError):
            return None
    return quantize_dynamic


def dynamic_int8(model: nn.Module, filter_fn="all", inplace: bool = False, embeddings: bool = False) -> nn.Module:
    """A CPU model whose Linear layers picked by `filter_fn` (see `parts.linears`) run torch's dynamic int8 kernels.

    torch.ao's `quantize_dynamic` (deprecated; torchao's `quantize_` is its successor) makes the weights int8 once,
    one scale per tensor; each batch's activations get their own scale at run time. `embeddings` also stores the
    input embedding tables as int8 (`Int8Embedding`). A torch without torch.ao gets the same recipe from ONNX
    Runtime, with a warning. The result shares no tensor with `model` unless `inplace`.
    """
    settings.flags(inplace=inplace, embeddings=embeddings)
    names = set(parts.linears(model, filter_fn))
    if not names:
        raise ValueError(f"filter_fn {filter_fn!r} picks no Linear layer of {type(model).__name__}; "
                         f"use one of {', '.join(parts.FILTERS)} or a function (module, fqn) -> bool.")
    parts.require_fp32(model, "int8 conversion")  # int8 starts from fp32 weights, never from a bf16 cast
    quantize_dynamic = torch_ao_quantize_dynamic()
    if quantize_dynamic is None:
        warnings.warn(f"torch {torch.__version__} has no torch.ao.quantization.quantize_dynamic: int8 runs in ONNX "
                      "Runtime instead (all Linear layers and the embedding lookups).", RuntimeWarning, stacklevel=2)
        return onnx.to_onnx(model, optimize=False, int8=True)
    out = parts.cpu_view(model, inplace, "torch's dynamic int8 Linear").eval()
    if embeddings:
        for name, emb in input_embeddings(out).items():
            parts.set_module(out, name, Int8Embedding(emb))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation is for us, not the learner
        quantize_dynamic(out, names, dtype=torch.qint8, inplace=True)
    return out if inplace else parts.unshare(out, model)
