"""OpenVINO (optionally NNCF's static int8) behind a Hugging Face model's call, and an independent ONNX Runtime
reference built only with ONNX Runtime's own documented tools, for the tour, the benchmarks and the tests.

A notebook calls `openvino.convert_model`, `nncf.quantize` and `openvino.compile_model` itself; `OpenVinoClassifier`
only makes the compiled model callable like the Hugging Face one, so the kit's measurements run on it. Both
builders here are references labkit did not tune: `to_openvino` is OpenVINO's and NNCF's recipe for transformers,
`ort_reference` is torch.onnx.export + ONNX Runtime's BERT optimizer + `quantize_dynamic` with its defaults.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import logging
import os
import tempfile
import warnings
from types import SimpleNamespace
from typing import Any
from unittest import mock

import numpy as np
import torch
from torch import nn

from labkit import fast_mode
from labkit.core import assets, data, machine, parts, results, roofline, settings
from labkit.runtimes.onnx import ORT_MODEL_TYPES, OnnxClassifier, attention_shape, onnx_inputs, session

PRECISIONS = ("f32", "default")
INPUTS = ("input_ids", "attention_mask", "token_type_ids")  # what a tokenizer may give; a model takes its own
INSTALL = "pip install 'labkit[runtimes]' (or pip install 'openvino>=2026.0' 'nncf>=3.0')"


def available() -> bool:
    """True where the optional OpenVINO and NNCF packages are installed (pip install 'labkit[runtimes]')."""
    return all(importlib.util.find_spec(m) is not None for m in ("openvino", "nncf"))


def _require(module: str, install: str = INSTALL) -> Any:
    """Import an optional runtime, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ValueError(f"{module} is not installed; it is optional here: {install}") from None


def _check_classifier(model: nn.Module) -> None:
    """Refuse what is not a labkit-style text classifier, with the fix."""
    if not any(isinstance(m, nn.Linear) for m in model.modules()):
        raise ValueError(f"{type(model).__name__} has no nn.Linear layers to quantize; pass a transformer "
                         "classifier such as the one from labkit.core.model.load_baseline().")
    if parts.is_hf(model):
        parts.family_of(model)  # a Hugging Face model of another family: a ValueError naming the supported ones
    if not hasattr(model, "config"):
        raise ValueError(f"{type(model).__name__} is not a Hugging Face classifier (no .config); pass one such as "
                         "labkit.core.model.load_baseline()[0].")
    parts.check_classifier(model)  # a supported family with a classification head


def _cpu_copy(model: nn.Module, what: str) -> nn.Module:
    """A float32 CPU copy sharing `model`'s tensors, to trace or export (both only read them); never handed out."""
    return parts.cpu_view(model, False, what).float().eval()  # .float() makes new tensors in the copy only


def _example_inputs(model: nn.Module, tokenizer=None) -> dict[str, torch.Tensor]:
    """Two real, differently long snippets, tokenized and padded: the model's own inputs, as a trace should see."""
    tokenizer = tokenizer or assets.load_tokenizer()
    texts = list(data.split("train", 2)["text"])
    enc = tokenizer(texts, padding=True, truncation=True, max_length=data.MAX_LENGTH, return_tensors="pt")
    return {name: enc[name] for name in parts.input_names(model, tokenizer)}


def _feeds(input_ids, attention_mask=None, token_type_ids=None) -> dict[str, np.ndarray]:
    """The three int64 arrays every exported graph here takes (absent mask: all ones; absent types: zeros)."""
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    types = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
    return {k: v.detach().cpu().numpy().astype(np.int64) for k, v in zip(INPUTS, (input_ids, mask, types))}


# --- OpenVINO ------------------------------------------------------------------------------------------

def _ov_config(precision: str, threads: int | None) -> dict[str, Any]:
    """Compile settings: this process's thread count, one stream, latency mode; f32 forced or the runtime's pick."""
    cfg: dict[str, Any] = {"INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads()), "NUM_STREAMS": 1,
                           "PERFORMANCE_HINT": "LATENCY",
                           # Unpinned, OpenVINO's workers are not bound to cores torch's threads also use; OpenVINO
                           # has no spin switch like ORT's allow_spinning=0, so the benchmarks time it interleaved.
                           "ENABLE_CPU_PINNING": False}
    if precision == "f32":
        cfg["INFERENCE_PRECISION_HINT"] = "f32"
    return cfg


class OpenVinoClassifier(nn.Module):
    """An OpenVINO compiled model behind a Hugging Face model's call, `model(**inputs).logits`, so the kit can
    measure it. `int8` only labels it (NNCF's static int8 inside)."""

    def __init__(self, compiled: Any, int8: bool = False):
        super().__init__()
        self.compiled, self.int8 = compiled, int8
        self.request = compiled.create_infer_request()
        self.names = {i.get_any_name() for i in compiled.inputs}

    @classmethod
    def from_ir(cls, xml: bytes, weights: bytes, precision: str = "default", threads: int | None = None,
                int8: bool = False) -> "OpenVinoClassifier":
        """Compiled from the IR's bytes (xml + bin), kept as uint8 buffers: `measure.serialized_bytes` counts the
        artifact, and what runs is compiled from exactly those bytes."""
        ov = _require("openvino")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
        xml_buffer = torch.frombuffer(bytearray(xml), dtype=torch.uint8)
        bin_buffer = torch.frombuffer(bytearray(weights), dtype=torch.uint8)
        # OpenVINO reads the weights in place from the buffer (no third copy); the array is kept too, so that memory
        # outlives anything the compiled model still points into, whatever happens to the buffer.
        array = bin_buffer.numpy()
        ir = ov.Core().read_model(model=xml.decode(), weights=ov.Tensor(array, shared_memory=True))
        out = cls(ov.Core().compile_model(ir, "CPU", _ov_config(precision, threads)), int8)
        out.register_buffer("ir_xml", xml_buffer)
        out.register_buffer("ir_bin", bin_buffer)
        out.ir_weights = array
        return out

    @property
    def inference_precision(self) -> str:
        """The precision OpenVINO runs the float parts in here (f32, or bf16 / f16 when it picked them)."""
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")  # an openvino.Type such as bf16
        return hint.to_string() if hasattr(hint, "to_string") else str(hint)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, **_):
        feeds = {k: v for k, v in _feeds(input_ids, attention_mask, token_type_ids).items() if k in self.names}
        logits = self.request.infer(feeds)[self.compiled.outputs[0]]
        return SimpleNamespace(logits=torch.from_numpy(np.array(logits)))

    def extra_repr(self) -> str:
        return f"OpenVINO CPU, {'int8 (NNCF) + ' if self.int8 else ''}{self.inference_precision}"


def _ov_convert(model: nn.Module, example: dict[str, torch.Tensor]) -> Any:
    """openvino.convert_model straight from the torch model, traced on real snippets passed by name (the model's
    own inputs: a DistilBERT's IR has no token_type_ids); batch and length dynamic."""
    ov = _require("openvino")
    m = _cpu_copy(model, "OpenVINO (CPU)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about python-side shape checks
        ov_model = ov.convert_model(m, example_input=example)
    # The trace already gives [?, ?]; state it, since any batch size and length must run.
    ov_model.reshape({port.get_any_name(): ov.PartialShape([-1, -1]) for port in ov_model.inputs})
    return ov_model


def calibration_batches(tokenizer, split: str = "train", size: int | None = None,
                        batch_size: int = 4) -> list[dict[str, np.ndarray]]:
    """Tokenized batches of real snippets for NNCF's calibration: train or validation only, never test.

    Small batches: NNCF holds every quantized input of one batch at once, and batches of 16 took 0.12 GiB more
    memory than batches of 4 to calibrate the fast baseline (measured); they also pad less.
    """
    split = data.selection_split(split)
    size = size or (32 if fast_mode() else 300)
    texts = list(data.split(split, size)["text"])
    return [_feeds(**dict(b.inputs)) for b in data.batches(texts, None, tokenizer, batch_size)]


def _nncf_int8(ov_model: Any, calibration: list[dict[str, np.ndarray]]) -> Any:
    """NNCF static post-training int8 with its transformer scheme (activations get fixed, calibrated grids)."""
    nncf = _require("nncf")
    level = logging.getLogger("nncf").level
    logging.getLogger("nncf").setLevel(logging.ERROR)  # its INFO lines and progress bars are not the learner's
    try:
        # NNCF draws rich progress bars; in Jupyter rich shows them as widgets, which no redirect catches.
        quiet_rich = mock.patch("rich.console._is_jupyter", return_value=False)
        with quiet_rich, contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            # subset_size counts batches here (one Dataset item is one batch of snippets).
            return nncf.quantize(ov_model, nncf.Dataset(calibration), model_type=nncf.ModelType.TRANSFORMER,
                                 subset_size=len(calibration))
    finally:
        logging.getLogger("nncf").setLevel(level)


def _ov_serialize(ov_model: Any, compress_to_fp16: bool) -> tuple[bytes, bytes]:
    """The IR as saved on disk: (xml, bin) bytes."""
    ov = _require("openvino")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.xml")
        ov.save_model(ov_model, path, compress_to_fp16=compress_to_fp16)
        with open(path, "rb") as f, open(path[:-4] + ".bin", "rb") as g:
            return f.read(), g.read()


def to_openvino(model: nn.Module, precision: str = "default", int8: bool = False, calibration: Any = None,
                tokenizer=None, threads: int | None = None) -> OpenVinoClassifier:
    """The classifier in OpenVINO: f32 forced, or the runtime's own pick ("default"), optionally NNCF static int8.

    `calibration`: a list of input dicts (see `calibration_batches`), a split name ("train" or "val"), or None
    for a small train subset. precision="default" also keeps OpenVINO's default IR storage (float weights in
    fp16); "f32" keeps them f32.
    Returns a new model (the runtime holds its own copy of the weights); the input is unchanged.
    """
    settings.flags(int8=int8)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}: 'f32' forces float32, 'default' lets OpenVINO "
                         f"pick (bf16 on CPUs with AMX / AVX512-BF16); got {precision!r}.")
    _check_classifier(model)
    _require("openvino")
    if int8:
        _require("nncf")
    tokenizer = tokenizer or assets.load_tokenizer()
    ov_model = _ov_convert(model, _example_inputs(model, tokenizer))
    if int8:
        if calibration is None or isinstance(calibration, str):
            calibration = calibration_batches(tokenizer, calibration or "train")
        names = {port.get_any_name() for port in ov_model.inputs}  # the IR takes the model's own inputs only
        ov_model = _nncf_int8(ov_model, [{k: v for k, v in b.items() if k in names} for b in calibration])
    xml, weights = _ov_serialize(ov_model, compress_to_fp16=precision == "default")
    out = OpenVinoClassifier.from_ir(xml, weights, precision, threads, int8)
    return roofline.declare(out, model, "int8" if int8 else "bf16" if out.inference_precision == "bf16" else "fp32")


# --- the tour's rows ---------------------------------------------------------------------------------

TOUR_ROWS = ("openvino fp32", "openvino int8 (NNCF)", "openvino bf16")


def tour(model: nn.Module, tokenizer, reference: np.ndarray, limit: int | None = None) -> list[results.Result]:
    """Rows for `python -m labkit tour`: the classifier in OpenVINO with f32 forced, with NNCF's static int8
    (calibrated on train snippets; what stays float runs in OpenVINO's pick), and with OpenVINO's bf16 where this
    CPU computes bf16 natively; timed interleaved beside `model`. A row that cannot run here (OpenVINO absent, no
    native bf16) is skipped with its reason. `limit` measures the first `limit` test snippets only (tests)."""
    if not available():
        for row in TOUR_ROWS:
            results.skip_row(row, f"OpenVINO and NNCF are not installed; they are optional: {INSTALL}")
        return []
    _check_classifier(model)
    models = {"openvino fp32": to_openvino(model, "f32", tokenizer=tokenizer),
              "openvino int8 (NNCF)": to_openvino(model, int8=True, calibration="train", tokenizer=tokenizer)}
    # The CPU's own flags, as quant.floats.is_native reads them for a CPU model (OpenVINO runs on the CPU).
    if machine.native_float_support().get("bf16"):
        bf16 = to_openvino(model, "default", tokenizer=tokenizer)
        if bf16.inference_precision == "bf16":
            models["openvino bf16"] = bf16
        else:  # the flags say bf16 but this OpenVINO build picked another precision: that row would be f32 again
            results.skip_row("openvino bf16", f"OpenVINO picked {bf16.inference_precision}, not bf16, on this CPU")
    else:
        results.skip_row("openvino bf16", "this CPU has no native bf16 (AVX512-BF16 or AMX): OpenVINO runs f32, "
                                          "the openvino fp32 row")
    notes = {name: f"OpenVINO CPU, {m.extra_repr().removeprefix('OpenVINO CPU, ')}; size = the IR's xml + bin"
             for name, m in models.items()}
    notes["openvino int8 (NNCF)"] += "; calibrated on train snippets"
    return results.evaluate_group(models, tokenizer, results.reference_on(model, tokenizer, reference, limit), model,
                                  notes, limit=limit)


# --- an independent ONNX Runtime reference -------------------------------------------------------------

def _reference_export(model: nn.Module) -> bytes:
    """torch.onnx.export as ONNX Runtime's BERT examples do it: eager attention, opset 17, dynamic axes.

    The model's own inputs, passed by name in its forward's order (the order the tracer gives the graph's inputs).
    """
    m = _cpu_copy(model, "ONNX Runtime (CPU provider)")
    if hasattr(m, "set_attn_implementation"):
        m.set_attn_implementation("eager")  # the optimizer fuses the eager attention pattern, not SDPA
    enc = onnx_inputs(m, _example_inputs(m))
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (), buf, kwargs=enc, input_names=list(enc), output_names=["logits"], opset_version=17,
                          dynamo=False, dynamic_axes={k: {0: "batch", 1: "sequence"} for k in enc})
    return buf.getvalue()


def _reference_optimize(onnx_bytes: bytes, model: nn.Module) -> bytes:
    """onnxruntime.transformers.optimizer.optimize_model(model_type="bert") with its documented defaults.

    The head count comes from the blocks, never the config (wrong after structured pruning); a family whose
    attention ORT does not fuse (DeBERTa-v2) is left unfused, with a warning.
    """
    import onnx
    from onnxruntime.transformers.optimizer import optimize_model

    family = parts.family_of(model)
    if family.name not in ORT_MODEL_TYPES:
        warnings.warn(f"ONNX Runtime's transformer optimizer has no fusion for {family.name}'s attention (it fuses "
                      f"{', '.join(ORT_MODEL_TYPES)}): the reference is left unfused. Pass optimize=False to skip "
                      "this warning.", RuntimeWarning, stacklevel=3)
        return onnx_bytes
    heads, hidden = attention_shape(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = optimize_model(onnx.load_from_string(onnx_bytes), model_type=ORT_MODEL_TYPES[family.name],
                             num_heads=heads, hidden_size=hidden)
    return opt.model.SerializeToString()


def _reference_quantize(onnx_bytes: bytes) -> bytes:
    """onnxruntime.quantization.quantize_dynamic with its documented settings: QInt8 weights, per_channel=False."""
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "fp32.onnx"), os.path.join(tmp, "int8.onnx")
        with open(src, "wb") as f:
            f.write(onnx_bytes)
        root, level = logging.getLogger(), logging.getLogger().level
        root.setLevel(logging.ERROR)  # its pre-processing advice is for static quantization
        try:
            # https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html: dynamic quantization
            # is the one recommended for transformer models; weight_type=QInt8 and per_channel=False are the
            # documented defaults (per-channel is offered as a fix for an accuracy drop, not as the default).
            # The fused ops (com.microsoft domain) have no ONNX shape inference; DefaultTensorType is the fix
            # ONNX Runtime's own error message names for that.
            quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=False,
                             extra_options={"DefaultTensorType": TensorProto.FLOAT})
        finally:
            root.setLevel(level)
        with open(dst, "rb") as f:
            return f.read()


def ort_reference(model: nn.Module, int8: bool = False, optimize: bool = True) -> nn.Module:
    """ONNX Runtime as its own docs build it (none of labkit's ONNX code): export, BERT fusions, dynamic int8.

    Runs on the CPU: a CUDA model is exported from a CPU copy, with a warning.
    Returns a new model (the runtime holds its own copy of the weights); the input is unchanged.
    """
    settings.flags(int8=int8, optimize=optimize)
    _check_classifier(model)
    payload = _reference_export(model)
    if optimize:
        payload = _reference_optimize(payload, model)
    if int8:
        payload = _reference_quantize(payload)
    return OnnxClassifier(session(payload), payload)


def fused_ops(model: nn.Module) -> dict[str, int]:
    """Op types and counts of an ONNX Runtime model's graph (to see which fusions happened)."""
    import onnx

    graph = onnx.load_from_string(bytes(model.onnx_model.numpy())).graph
    counts: dict[str, int] = {}
    for node in graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
