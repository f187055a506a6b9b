"""The classifier in ONNX Runtime: exported with torch.onnx, optionally fused by ONNX Runtime's transformer
optimizer and quantized to int8 by its `quantize_dynamic`, and called like the Hugging Face model it came from."""

from __future__ import annotations

import inspect
import os
import tempfile
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from labkit.core import machine, parts, roofline, settings


def session(model_file: bytes | str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session: this process's thread count, every graph optimization, no spinning workers."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # ORT's worker threads otherwise spin for a while after each run, taking the cores from whatever runs
    # next: timed side by side, a torch model after an ORT session measured 2.4x slower at batch 1.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(model_file) if isinstance(model_file, Path) else model_file, opts,
                                providers=["CPUExecutionProvider"])


class OnnxClassifier(nn.Module):
    """An ONNX Runtime session behind a Hugging Face model's call, `model(**inputs).logits`, so the kit can measure it.

    `artifact`, the model file's bytes, is kept as a uint8 buffer so that `measure.serialized_bytes` counts it.
    """

    def __init__(self, session, artifact: bytes | None = None):
        super().__init__()
        if artifact is not None:
            self.register_buffer("onnx_model", torch.frombuffer(bytearray(artifact), dtype=torch.uint8))
        self.session = session
        self.input_names = [i.name for i in session.get_inputs()]

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, **_):
        # The graph takes the exported model's own inputs (a DistilBERT's has no token_type_ids): feed those only.
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        if feeds["attention_mask"] is None:
            feeds["attention_mask"] = torch.ones_like(input_ids)
        if feeds["token_type_ids"] is None:
            feeds["token_type_ids"] = torch.zeros_like(input_ids)
        arrays = {k: feeds[k].cpu().numpy().astype(np.int64) for k in self.input_names}
        logits = self.session.run(None, arrays)[0]
        return SimpleNamespace(logits=torch.from_numpy(logits))


def onnx_inputs(model: nn.Module, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's own inputs from `inputs`, in the order of its forward's parameters (as the ONNX tracer lists them).

    torch.onnx.export (TorchScript) orders keyword inputs by the forward's signature, whatever the dict's order:
    `input_names` given in a tokenizer's order (input_ids, token_type_ids, attention_mask) would silently name
    BERT's mask "token_type_ids".
    """
    fed = parts.feed(model, inputs)
    return {n: fed[n] for n in inspect.signature(model.forward).parameters if n in fed}


def _example_batch(model: nn.Module) -> dict[str, torch.Tensor]:
    """Two differently long, padded rows of word-piece ids, for each input this model's forward takes."""
    ids = torch.tensor([[101, 2023, 3185, 2003, 2307, 102], [101, 6659, 102, 0, 0, 0]])
    offered = {"input_ids": ids, "attention_mask": (ids != 0).long(), "token_type_ids": torch.zeros_like(ids)}
    return onnx_inputs(model, {n: offered[n] for n in parts.input_names(model) if n in offered})


def export_onnx(model: nn.Module) -> bytes:
    """The classifier as an ONNX graph (eager attention, so ONNX Runtime can fuse it), dynamic batch and length.

    The graph's inputs are the model's own (`parts.input_names`), passed by name: a DistilBERT's graph has no
    token_type_ids. ONNX Runtime runs on the CPU: a CUDA model is exported from a CPU copy, with a warning.
    """
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        _export_to(model, path)
        return Path(path).read_bytes()


def _export_to(model: nn.Module, path: str) -> None:
    """`export_onnx` into the file at `path`, so `to_onnx` never holds a serialized copy beside the next step's (on
    the fast baseline, about 0.1 GB less at the int8 conversion's peak)."""
    parts.check_classifier(model)
    m = parts.cpu_view(model, False, "ONNX Runtime (CPU provider)").float().eval()
    if hasattr(m, "set_attn_implementation"):
        m.set_attn_implementation("eager")
    inputs = _example_batch(m)
    names = list(inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about python-side shape checks
        torch.onnx.export(m, (), path, kwargs=inputs, input_names=names, output_names=["logits"], opset_version=17,
                          dynamic_axes={n: {0: "batch", 1: "seq"} for n in names}, dynamo=False)


# ONNX Runtime's transformer optimizer: its 'bert' fusions match these families' attention; DeBERTa-v2's
# disentangled (relative-position) attention has no fusion there, so it is exported unfused.
ORT_MODEL_TYPES = {"BERT": "bert", "RoBERTa": "bert", "ELECTRA": "bert", "DistilBERT": "bert"}


def attention_shape(model: nn.Module) -> tuple[int, int]:
    """(heads, heads x head size) for ONNX Runtime's attention fusion, read from the blocks; (0, 0) if they differ.

    Never the config's count: it is wrong after structured pruning. The optimizer takes one count for the whole
    model and, as transformers 5 reshapes with -1 heads, cannot read it from the graph: (0, 0), its "detect it",
    leaves attention unfused. That is the answer only when blocks differ, where one count would fuse some layers
    with the wrong number of heads.
    """
    shapes = {(b.n_heads, b.head_size) for b in parts.blocks(model)}
    if len(shapes) != 1:
        return 0, 0
    heads, size = shapes.pop()
    return heads, heads * size


def _ort_optimize(src: str, model: nn.Module, dst: str) -> str:
    """ONNX Runtime's transformer fusions of the graph in file `src` (one Attention op per layer, fused LayerNorm,
    GELU, embeddings), written to `dst`; returns the path of the result (`src` where the family has no fusion)."""
    import onnx
    from onnxruntime.transformers.optimizer import optimize_model

    family = parts.family_of(model)
    if family.name not in ORT_MODEL_TYPES:
        warnings.warn(f"ONNX Runtime's transformer optimizer has no fusion for {family.name}'s attention (it fuses "
                      f"{', '.join(ORT_MODEL_TYPES)}): the graph is left unfused (ONNX Runtime still applies its "
                      "generic optimizations when it loads it). Pass optimize=False to skip this warning.",
                      RuntimeWarning, stacklevel=3)
        return src
    heads, hidden = attention_shape(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = optimize_model(src, model_type=ORT_MODEL_TYPES[family.name], num_heads=heads, hidden_size=hidden,
                             opt_level=0)
    # The fused ops live in ONNX Runtime's own domain; declare it so shape inference (and quantization) accept them.
    if not any(o.domain == "com.microsoft" for o in opt.model.opset_import):
        opt.model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    onnx.save(opt.model, dst)
    return dst


def _ort_reduce_range() -> bool:
    """7-bit weights for ONNX Runtime's int8 kernels on a CPU without int8 dot products (VNNI).

    Without VNNI the kernels add pairs of uint8 x int8 products in 16 bits, which saturate when both codes are
    near their ends; per-channel weights use the full int8 range in every row, so they hit it often. ONNX
    Runtime's quantization guide gives reduce_range as the fix (measured: a random tiny DistilBERT's logits were
    off by 72% of their size without it, 5% with it, on an AVX2 CPU without VNNI).
    """
    vnni = machine.native_float_support()["vnni"]
    return not vnni  # unknown (not Linux): the safe choice, 7 bits


def _ort_quantize(src: str, dst: str) -> str:
    """ONNX Runtime's dynamic int8 quantization of MatMul/Attention weights and embedding Gathers, file to file."""
    import logging

    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Fused ops have no ONNX shape inference, so their outputs' type (float) is stated explicitly.
    root, level = logging.getLogger(), logging.getLogger().level
    root.setLevel(logging.ERROR)  # its advice to pre-process is for static quantization of CNNs
    try:
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=True, reduce_range=_ort_reduce_range(),
                         extra_options={"DefaultTensorType": TensorProto.FLOAT})
    finally:
        root.setLevel(level)
    return dst


def to_onnx(model: nn.Module, optimize: bool = True, int8: bool = False) -> OnnxClassifier:
    """The classifier running in ONNX Runtime (CPU; optionally with transformer fusions and dynamic int8).

    `optimize` applies ONNX Runtime's transformer fusions where it has them (BERT, RoBERTa, ELECTRA, DistilBERT);
    a DeBERTa-v2 graph is left unfused, with a warning.
    Returns a new model (the runtime holds its own copy of the weights); the input is unchanged.
    """
    settings.flags(optimize=optimize, int8=int8)
    # File to file: each step reads the last one's file, so no serialized copy stays in memory beside the next.
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "fp32.onnx")
        _export_to(model, path)
        if optimize:
            path = _ort_optimize(path, model, os.path.join(tmp, "fused.onnx"))
        if int8:
            path = _ort_quantize(path, os.path.join(tmp, "int8.onnx"))
        payload = Path(path).read_bytes()
    # The graph is opaque to the roofline's walker: the wrapper declares the source model's cost in its format.
    return roofline.declare(OnnxClassifier(session(payload), payload), model, "int8" if int8 else "fp32", int8)
