"""Every public function that returns a model returns one the caller may change: writing into each of its tensors
leaves the input model as it was (issue 33: no tensor shared with the input; `inplace=True` is the only way in)."""

import pytest
import torch

from labkit.core import parts
from labkit.dynamic import gradual, tokens
from labkit.dynamic import int8 as dynamic_int8
from labkit.lab import myths
from labkit.lm import calibration, generation, kernels, quantized, slm
from labkit.pipelines import pipeline
from labkit.prune import recovery, structured, unstructured
from labkit.quant import calibrate, floats, int8, quantize
from labkit.runtimes import onnx, openvino
from labkit.sparse import layers

TEXTS = ["a fine film", "a dull film", "great acting", "boring plot"] * 2

CLASSIFIER = {
    "parts.clone": lambda m, tok: parts.clone(m),
    "parts.clone (convert returning its input)": lambda m, tok: parts.clone(m, lambda t: t),
    "quantize.fake_quantize": lambda m, tok: quantize.fake_quantize(m, 4),
    "quantize.qat": lambda m, tok: quantize.qat(m, tok, 4, group_size=16, steps=1, batch_size=4),
    "quantize.to_int8": lambda m, tok: quantize.to_int8(m),
    "calibrate.calibrate": lambda m, tok: calibrate.calibrate(m, tok, TEXTS, 8),
    "int8.dynamic_int8": lambda m, tok: int8.dynamic_int8(m, "all", embeddings=True),
    "floats.to_precision bf16": lambda m, tok: floats.to_precision(m, "bf16"),
    "floats.to_precision fp32": lambda m, tok: floats.to_precision(m, "fp32"),
    "myths.cast_float64": lambda m, tok: myths.cast_float64(m),
    "unstructured.magnitude": lambda m, tok: unstructured.magnitude(m, 0.5),
    "unstructured.two_four": lambda m, tok: unstructured.two_four(m),
    "structured.structured": lambda m, tok: structured.structured(m, heads=0.5, ffn=0.5),
    "recovery.recover": lambda m, tok: recovery.recover(m, tok, steps=1, batch_size=4),
    "layers.to_sparse": lambda m, tok: layers.to_sparse(m, 0.5),
    "tokens.token_pruning": lambda m, tok: tokens.token_pruning(m, 0.5, 1),
    "gradual.prune_finetune": lambda m, tok: gradual.prune_finetune(m, tok, 0.5, 2, batch_size=4)[0],
    "pipeline.run_pipeline": lambda m, tok: pipeline.run_pipeline(
        m, tok, [("structured", {"heads": 0.5, "ffn": 0.5}), ("recover", {"steps": 1}), ("int8", {})]),
    "dynamic.int8.dynamic_int8": lambda m, tok: dynamic_int8.dynamic_int8(m),
    "quantize.to_int8 onnxruntime": lambda m, tok: quantize.to_int8(m, backend="onnxruntime"),
    "onnx.to_onnx": lambda m, tok: onnx.to_onnx(m),
}
# Every named pipeline, on the tiny model's 2 layers and with one training step: what is copied does not depend on
# how long it trains.
FIT = {"recover": {"steps": 1}, "token_pruning": {"start_layer": 1}}
CLASSIFIER |= {f"pipeline {name}": (lambda m, tok, steps=steps: pipeline.run_pipeline(
    m, tok, [(s, dict(o, **FIT.get(s, {}))) for s, o in steps]))
    for name, steps in pipeline.configurations().items() if "openvino" not in name}
if openvino.available():
    CLASSIFIER["openvino.to_openvino"] = lambda m, tok: openvino.to_openvino(m, "f32")

LANGUAGE_MODEL = {
    "quantized.quantize_model float": lambda m: quantized.quantize_model(m, "rtn", 4, 32),
    "quantized.quantize_model codes": lambda m: quantized.quantize_model(m, "rtn", 4, 32, store="codes"),
    "quantized.map_weights": lambda m: quantized.map_weights(m, lambda w: w * 0.5),
    "kernels.int4_kernel": lambda m: kernels.int4_kernel(m, 32),
    "generation.bf16": lambda m: generation.bf16(m),
    "generation.bf16 of a bf16 model": lambda m: generation.bf16(m),  # the input is cast to bf16 first, below
    "int8.dynamic_int8 (a causal LM)": lambda m: int8.dynamic_int8(m, "all"),
    "quantized.quantize_model gptq float": lambda m: quantized.quantize_model(m, "gptq", 4, 32, stats=_stats(m)),
    "quantized.quantize_model awq codes": lambda m: quantized.quantize_model(m, "awq", 4, 32, stats=_stats(m),
                                                                             grid=2, store="codes"),
    "floats.to_precision bf16 (a causal LM)": lambda m: floats.to_precision(m, "bf16"),
}


def _stats(lm):
    torch.manual_seed(1)
    return calibration.calibration_stats(lm, torch.randint(0, 64, (4, 32)), keep=64)


def _state(m):
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def _write_into(m):
    """Add one to every floating tensor the model holds (parameters and buffers, quantized layers' included)."""
    with torch.no_grad():
        for t in list(m.parameters()) + list(m.buffers()):
            if t.is_floating_point():
                t.add_(1)


def _unchanged(model, before):
    return all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name", CLASSIFIER)
def test_a_returned_classifier_is_the_callers_to_change(name, tokenizer, monkeypatch):
    monkeypatch.setenv("LABKIT_LEAN", "1")  # tight memory: where sharing once saved memory
    model = parts.tiny_classifier("BERT")
    before = _state(model)
    out = CLASSIFIER[name](model, tokenizer)
    assert out is not model
    _write_into(out)
    assert _unchanged(model, before), f"writing into {name}'s result changed its input"


@pytest.mark.parametrize("name", LANGUAGE_MODEL)
def test_a_returned_language_model_is_the_callers_to_change(name):
    lm = slm.tiny_llama(seed=0, vocab_size=64)
    if name == "generation.bf16 of a bf16 model":
        lm = lm.to(torch.bfloat16)
    before = _state(lm)
    try:
        out = LANGUAGE_MODEL[name](lm)
    except (RuntimeError, NotImplementedError) as err:  # torch's int4 kernel is missing on some CPUs
        pytest.skip(f"{name} does not run here: {err}")
    assert out is not lm
    _write_into(out)
    assert _unchanged(lm, before), f"writing into {name}'s result changed its input"
