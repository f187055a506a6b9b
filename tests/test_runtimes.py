"""OpenVINO (+ NNCF int8), the independent ONNX Runtime reference, and int8 without torch.ao (fast mode, small)."""

import builtins
import sys
import warnings

import pytest
import torch
from torch import nn

from labkit.core import measure
from labkit.dynamic import int8
from labkit.pipelines import pipeline
from labkit.quant import int8 as quant_int8
from labkit.quant import quantize
from labkit.runtimes import onnx
from labkit.runtimes import openvino as runtimes

pytest.importorskip("openvino")
pytest.importorskip("nncf")

IDS = torch.tensor([[101, 2023, 3185, 2003, 2307, 102], [101, 6659, 102, 0, 0, 0]])
MASK = (IDS != 0).long()


@pytest.fixture(scope="module")
def ov_f32(baseline):
    return runtimes.to_openvino(baseline[0], "f32", tokenizer=baseline[1])


@pytest.fixture(scope="module")
def ov_int8(baseline):
    return runtimes.to_openvino(baseline[0], int8=True, tokenizer=baseline[1])


def _logits(model, ids=IDS, mask=MASK):
    with torch.inference_mode():
        return model(input_ids=ids, attention_mask=mask).logits


def test_openvino_f32_matches_torch_and_runs_any_batch_and_length(baseline, ov_f32):
    model, tok = baseline
    assert ov_f32.inference_precision == "f32"
    torch.testing.assert_close(_logits(ov_f32), _logits(model), atol=1e-4, rtol=1e-4)
    enc = tok(["one", "two words", "and a third, longer snippet of text here"], padding=True, return_tensors="pt")
    torch.testing.assert_close(ov_f32(**enc).logits, _logits(model, enc["input_ids"], enc["attention_mask"]),
                               atol=1e-4, rtol=1e-4)


def test_nncf_int8_agrees_with_fp32_on_validation_and_is_under_half_the_size(baseline, ov_f32, ov_int8):
    model, tok = baseline
    agree = measure.agreement(measure.predictions(ov_int8, tok, "val", 200),
                              measure.predictions(model, tok, "val", 200))
    assert agree >= 0.95, agree  # measured 0.995 on these 200 snippets
    assert measure.serialized_bytes(ov_int8) < 0.5 * measure.serialized_bytes(ov_f32)
    assert ov_int8.int8 and "int8" in repr(ov_int8)


def test_calibration_never_uses_the_test_split(tokenizer):
    with pytest.raises(ValueError, match="validation"):
        runtimes.calibration_batches(tokenizer, "test")
    batches = runtimes.calibration_batches(tokenizer, "val", size=8, batch_size=4)
    assert len(batches) == 2 and set(batches[0]) == set(runtimes.INPUTS)


@pytest.mark.parametrize("bad, match", [(nn.Sequential(nn.ReLU()), "no nn.Linear"), (nn.Linear(4, 2), "config")])
def test_a_non_classifier_is_refused_with_the_fix(bad, match):
    with pytest.raises(ValueError, match=match):
        runtimes.to_openvino(bad)


def test_unknown_precision_is_refused(tiny_model):
    with pytest.raises(ValueError, match="'f32' forces"):
        runtimes.to_openvino(tiny_model, precision="fp8")


@pytest.mark.parametrize("missing", ["openvino", "nncf"])
def test_missing_package_says_what_to_install(tiny_model, monkeypatch, missing):
    monkeypatch.setitem(sys.modules, missing, None)  # makes `import missing` raise ImportError
    with pytest.raises(ValueError, match=r"labkit\[runtimes\]"):
        runtimes.to_openvino(tiny_model, int8=True)


def test_independent_ort_reference_matches_torch_and_uses_ort_fusions(baseline, monkeypatch):
    model, _ = baseline

    def forbidden(*args, **kwargs):
        raise AssertionError("the reference must not use labkit's own ONNX code")

    for name in ("to_onnx", "export_onnx", "_ort_optimize", "_ort_quantize"):
        monkeypatch.setattr(onnx, name, forbidden)
    ref = runtimes.ort_reference(model)
    torch.testing.assert_close(_logits(ref), _logits(model), atol=1e-4, rtol=1e-4)
    ops = runtimes.fused_ops(ref)
    assert ops.get("Attention") == model.config.num_hidden_layers, ops  # ORT's BERT optimizer really fused


def test_int8_falls_back_to_onnxruntime_without_torch_ao(tiny_model, monkeypatch):
    real = builtins.__import__

    def no_torch_ao(name, *args, **kwargs):
        if name.startswith("torch.ao.quantization"):
            raise ImportError(f"No module named {name!r}")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch_ao)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        q = quantize.to_int8(tiny_model)
    assert isinstance(q, onnx.OnnxClassifier)
    assert any("torch.ao" in str(w.message) and "ONNX Runtime" in str(w.message) for w in seen)
    torch.testing.assert_close(_logits(q), _logits(tiny_model), atol=5e-3, rtol=0)


def test_dynamic_int8_falls_back_too(tiny_model, monkeypatch):
    monkeypatch.setattr(quant_int8, "torch_ao_quantize_dynamic", lambda: None)  # a torch that removed torch.ao
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        q = int8.dynamic_int8(tiny_model)
    assert isinstance(q, onnx.OnnxClassifier) and any("ONNX Runtime" in str(w.message) for w in seen)
    assert not isinstance(tiny_model, onnx.OnnxClassifier)  # the caller's model is untouched


def test_pipeline_prunes_then_runs_openvino_int8(tiny_model, tokenizer):
    steps = [("structured", {"heads": 0.5, "ffn": 0.5}), ("int8", {"backend": "openvino"})]
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    out = pipeline.run_pipeline(tiny_model, tokenizer, steps)
    pruned = pipeline.run_pipeline(tiny_model, tokenizer, steps[:1])
    assert isinstance(out, runtimes.OpenVinoClassifier) and out.int8 and _logits(out).shape == (2, 2)
    with torch.no_grad():  # the model it returns is the caller's to change: the input stays as it was
        for t in list(out.buffers()) + list(pruned.parameters()):
            t.add_(1)
    assert all(torch.equal(v, before[k]) for k, v in tiny_model.state_dict().items())
    # Layers now hold fewer heads than config.num_attention_heads says; the conversion must follow the weights.
    torch.testing.assert_close(_logits(runtimes.to_openvino(pruned, "f32", tokenizer=tokenizer)), _logits(pruned),
                               atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="OpenVINO"):
        pipeline.validate([("token_pruning", {}), ("int8", {"backend": "openvino"})])


def test_the_adapters_make_a_libraries_own_models_callable_like_the_torch_one(tiny_model, tokenizer, tmp_path):
    """What a notebook builds with torch.onnx / ONNX Runtime and OpenVINO's own calls, measured through the adapters."""
    import openvino as ov

    enc = tokenizer(["a fine, funny and moving film", "dull"], padding=True, return_tensors="pt")
    inputs = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}  # BERT's forward order
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(tiny_model, (), tmp_path / "m.onnx", kwargs=inputs, input_names=list(inputs),
                          output_names=["logits"], dynamic_axes={k: {0: "batch", 1: "seq"} for k in inputs},
                          opset_version=17, dynamo=False)
        compiled = ov.compile_model(ov.convert_model(tiny_model, example_input=inputs), "CPU",
                                    {"INFERENCE_PRECISION_HINT": "f32"})
    want = _logits(tiny_model, IDS, MASK)
    ort_model = onnx.OnnxClassifier(onnx.session(tmp_path / "m.onnx"))
    torch.testing.assert_close(_logits(ort_model), want, atol=1e-4, rtol=1e-4)
    ov_model = runtimes.OpenVinoClassifier(compiled)
    torch.testing.assert_close(_logits(ov_model), want, atol=1e-4, rtol=1e-4)
    assert ov_model.inference_precision == "f32" and not ov_model.int8
    assert measure.predict(ov_model, tokenizer, ["a fine film", "dull", "long and loud"]).shape == (3,)
