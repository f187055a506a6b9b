"""labkit.pipelines: named pipelines for the tour (validated, on independent copies) and the one Pareto front."""

from pathlib import Path

import pandas as pd
import pytest
import torch

from labkit.core import parts
from labkit.pipelines import pareto, pipeline
from labkit.prune import prune
from labkit.quant import quantize
from labkit.runtimes import openvino


def test_pareto_front_keeps_only_undominated_rows():
    df = pd.DataFrame({"accuracy": [0.80, 0.79, 0.70, 0.80], "latency_b32_ms": [100, 50, 60, 100],
                       "size_bytes": [90, 20, 30, 80]})
    # row 2 is beaten by row 1 on everything; row 0 by row 3 (same accuracy and latency, smaller)
    assert pareto.pareto_front(df).tolist() == [False, True, False, True]


def test_unmeasured_rows_are_never_on_the_front():
    df = pd.DataFrame({"accuracy": [0.8, 0.9], "latency_b32_ms": [100.0, float("nan")], "size_bytes": [90, 10]})
    assert pareto.pareto_front(df).tolist() == [True, False]


def test_pareto_front_takes_other_columns_and_names_missing_ones():
    df = pd.DataFrame({"accuracy": [0.8, 0.8], "latency_ms": [10.0, 20.0], "size_bytes": [5, 5]})
    assert pareto.pareto_front(df, minimize=("latency_ms", "size_bytes")).tolist() == [True, False]
    with pytest.raises(ValueError, match="latency_b32_ms"):
        pareto.pareto_front(df)


@pytest.mark.parametrize("steps, match", [
    ([("int8", {}), ("structured", {"heads": 0.3})], "before 'int8'"),
    ([("int8", {}), ("token_pruning", {"keep_ratio": 0.5, "start_layer": 2})], "before 'int8'"),
    ([("distill", {})], "Unknown step"),
    (["int8"], r"\(name, options\) pair"),
    ([("token_pruning", {}), ("token_pruning", {})], "twice"),
    ([("token_pruning", {}), ("int8", {"backend": "onnxruntime"})], "backend='torch'"),
    ([("int8", {"backend": "tensorrt"})], "Unknown int8 backend"),
    ([("precision", {"precision": "bf16"}), ("int8", {})], "precision"),
    ([("precision", {"precision": "bf16"}), ("recover", {})], "precision"),
    ([("int8", {}), ("precision", {"precision": "bf16"})], "precision"),
])
def test_impossible_pipelines_are_refused_with_the_fix(steps, match):
    with pytest.raises(ValueError, match=match):
        pipeline.validate(steps)


def _write_into(model: torch.nn.Module) -> None:
    """Change every float parameter and buffer of `model` in place, as a caller may."""
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            if t.is_floating_point():
                t.add_(1.0)


@pytest.mark.parametrize("steps", [
    [("magnitude", {"sparsity": 0.5}), ("int8", {})],
    [("token_pruning", {"keep_ratio": 0.5, "start_layer": 1})],
    [("precision", {"precision": "bf16"})],
    [("structured", {"heads": 0.5, "ffn": 0.5}), ("token_pruning", {"keep_ratio": 0.5, "start_layer": 1})],
    [("int8", {"backend": "onnxruntime"})],
], ids=["magnitude+int8", "token", "bf16", "structured+token", "onnxruntime"])
def test_a_pipelines_model_shares_nothing_with_its_input(tiny_model, tokenizer, steps):
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    out = pipeline.run_pipeline(tiny_model, tokenizer, steps)
    assert out is not tiny_model
    mine = {t.untyped_storage().data_ptr() for t in list(tiny_model.parameters()) + list(tiny_model.buffers())}
    assert not any(t.untyped_storage().data_ptr() in mine for t in list(out.parameters()) + list(out.buffers()))
    _write_into(out)
    for k, v in tiny_model.state_dict().items():
        assert torch.equal(v, before[k]) and v.dtype == before[k].dtype, k
    enc = tokenizer(["a fine, funny and moving film", "dull"], padding=True, return_tensors="pt")
    with torch.inference_mode():
        assert out(**parts.feed(out, dict(enc))).logits.shape == (2, 2)


def test_distilled_recovery_learns_from_the_input_model(tiny_model, tokenizer, monkeypatch):
    seen = {}
    real = prune.recover

    def spy(model, tokenizer, **options):
        seen.update(options)
        return real(model, tokenizer, **options)

    monkeypatch.setattr(prune, "recover", spy)
    steps = [("structured", {"heads": 0.5, "ffn": 0.5}), ("recover", {"steps": 1, "batch_size": 4, "distill": True})]
    out = pipeline.run_pipeline(tiny_model, tokenizer, steps)
    assert seen["teacher"] is tiny_model and "distill" not in seen
    assert steps[1][1]["distill"] is True  # the caller's options are not consumed
    assert out.bert.encoder.layer[0].intermediate.dense.out_features == 32


def test_every_shipped_configuration_is_valid():
    for name, steps in pipeline.configurations().items():
        pipeline.validate(steps)
        assert pipeline.describe(steps).split(" -> ")[0].split("(")[0] == steps[0][0], name
    assert pipeline.describe([]) == "fp32 baseline"
    optional = set() if openvino.available() else {pipeline.OPENVINO_PIPELINE}  # only where OpenVINO is installed
    assert set(pipeline.TOUR_PIPELINES) - optional <= set(pipeline.configurations())


def _cheap(steps):
    """A shipped pipeline shrunk for a 2-layer model: one recovery step, token pruning from layer 1."""
    shrink = {"recover": {"steps": 1, "batch_size": 4}, "token_pruning": {"start_layer": 1}}
    return [(name, dict(options, **shrink.get(name, {}))) for name, options in steps]


def test_shipped_precision_pipelines_run_and_give_a_bf16_model(tokenizer):
    tiny = parts.tiny_classifier("BERT")
    configs = {k: v for k, v in pipeline.configurations().items() if v[-1][0] == "precision"}
    assert {"bf16", "structured + recover + bf16", "token pruning + bf16"} <= set(configs)
    enc = dict(tokenizer(["a fine, funny and moving film", "dull"], padding=True, return_tensors="pt"))
    for name, steps in configs.items():
        out = pipeline.run_pipeline(tiny, tokenizer, _cheap(steps))
        assert parts.dtype_of(out) == "bf16" and parts.dtype_of(tiny) == "fp32", name
        with torch.inference_mode():
            assert out(**parts.feed(out, enc)).logits.shape == (2, 2), name


def test_pipeline_with_a_precision_step_keeps_the_structure(tokenizer):
    tiny = parts.tiny_classifier("DistilBERT")
    out = pipeline.run_pipeline(tiny, tokenizer, [("structured", {"heads": 0.25, "ffn": 0.5}),
                                                  ("precision", {"precision": "bf16"})])
    assert parts.dtype_of(out) == "bf16" and parts.dtype_of(tiny) == "fp32"
    assert parts.blocks(out)[0].ffn_size == 32  # half of 64 neurons kept, then cast
    with pytest.raises(ValueError, match="float32"):
        quantize.to_int8(out)


def test_every_torch_load_in_labkit_is_weights_only():
    for src in (Path(pipeline.__file__).parents[1]).rglob("*.py"):
        for line in src.read_text().splitlines():
            if "torch.load(" in line and not line.strip().startswith(("#", '"')):
                assert "weights_only=True" in line, f"{src.name}: {line.strip()}"
