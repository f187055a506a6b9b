"""Quantization, ONNX export, dynamic int8, token pruning and the other runtimes on a tiny classifier of every family.

The tiny models' weights are redrawn at a unit scale (`_lively`): at the config's 0.02 every input gives nearly the
same logits, so "close to float" would hold for any output.
"""

import math
import warnings

import pytest
import torch
from torch import nn

from labkit.core import parts
from labkit.dynamic import gradual, int8, tokens
from labkit.prune import prune
from labkit.quant import calibrate as C
from labkit.quant import int8 as quant_int8
from labkit.quant import quantize as Q
from labkit.runtimes import onnx
from labkit.runtimes import openvino as runtimes

FAMILIES = [f.name for f in parts.FAMILIES]
TEXTS = ["a quietly moving film that earns its ending", "dull", "neither funny nor sad, just long and loud"]


def _lively(model: nn.Module) -> nn.Module:
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) / m.in_features ** 0.5)
            elif isinstance(m, nn.Embedding):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen))
    return model


def _model(family: str) -> nn.Module:
    return _lively(parts.tiny_classifier(family, num_labels=3))


def _enc(tokenizer, texts=TEXTS) -> dict:
    return dict(tokenizer(texts, padding=True, return_tensors="pt"))


def _logits(model: nn.Module, enc: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**parts.feed(model, enc)).logits


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest difference, relative to the largest float logit."""
    return float((out - ref).abs().max() / ref.abs().max())


def _state(model: nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _unchanged(model: nn.Module, before: dict) -> bool:
    now = model.state_dict()
    return set(now) == set(before) and all(torch.equal(now[k], v) for k, v in before.items())


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


# --- simulated and real quantization ------------------------------------------------------------------------

def test_fake_quantize_puts_every_linear_on_the_grid_and_leaves_the_input_alone(family, tokenizer):
    model = _model(family)
    before = _state(model)
    sim = Q.fake_quantize(model, 4, "symmetric", "channel")
    assert _unchanged(model, before)
    assert list(parts.linears(sim, "all")) == list(parts.linears(model, "all"))  # blocks, pooler and head
    for name, lin in parts.linears(sim, "all").items():
        orig = model.get_submodule(name).weight
        assert torch.equal(lin.weight, Q.fake_quantize_weight(orig, 4, "symmetric", "channel")), name
        assert max(len(torch.unique(row)) for row in lin.weight) <= 2 ** 4, name
    enc = _enc(tokenizer)
    assert _rel(_logits(Q.fake_quantize(model, 8), enc), _logits(model, enc)) < 0.1


def test_to_int8_stores_int8_and_stays_close_to_float(family, tokenizer):
    model = _model(family)
    before = _state(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # on the CPU, quietly
        q = Q.to_int8(model)
    assert _unchanged(model, before)
    assert not any(type(m) is nn.Linear for m in q.modules())
    assert sum(m._get_name() == "DynamicQuantizedLinear" for m in q.modules()) == len(parts.linears(model, "all"))
    tables = [m for m in q.modules() if isinstance(m, quant_int8.Int8Embedding)]
    assert len(tables) == len(quant_int8.input_embeddings(model)) > 0 and all(t.codes.dtype == torch.int8 for t in tables)
    enc = _enc(tokenizer)
    assert _rel(_logits(q, enc), _logits(model, enc)) < 0.15


def test_calibrate_and_qat_run_on_every_family(family, tokenizer):
    model = _model(family)
    before = _state(model)
    cal = C.calibrate(model, tokenizer, TEXTS[:2], 8, "minmax")
    hooks = [h for m in parts.linears(cal, "all").values() for h in m._forward_pre_hooks.values()]
    assert len(hooks) == len(parts.linears(cal, "all")) and all(isinstance(h, C.FakeQuantInput) for h in hooks)
    enc = _enc(tokenizer)
    assert 0 < _rel(_logits(cal, enc), _logits(model, enc)) < 0.5  # fixed grids from 2 of the 3 snippets: loose
    out = Q.qat(model, tokenizer, bits=4, granularity="channel", steps=1, batch_size=4)
    for name, lin in parts.linears(out, "all").items():
        w = lin.weight.detach()
        assert torch.allclose(w, Q.fake_quantize_weight(w, 4, "asymmetric", "channel"), atol=1e-6), name
    assert _unchanged(model, before)


# --- ONNX Runtime ------------------------------------------------------------------------------------------

def test_onnx_export_takes_the_models_own_inputs_and_matches_torch(family, tokenizer):
    model = _model(family)
    before = _state(model)
    if family in onnx.ORT_MODEL_TYPES:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # fused without a word
            ort = onnx.to_onnx(model)
        assert runtimes.fused_ops(ort).get("Attention") == len(parts.blocks(model))  # one fused op per block
    else:
        with pytest.warns(RuntimeWarning, match="no fusion"):
            ort = onnx.to_onnx(model)
    assert _unchanged(model, before)
    assert set(ort.input_names) <= set(parts.input_names(model)) and "input_ids" in ort.input_names
    if family == "DistilBERT":
        assert "token_type_ids" not in ort.input_names  # its forward has no such input (its 3rd is head_mask)
    for texts in (TEXTS, TEXTS[1:2]):  # another batch size and length than the trace's
        enc = _enc(tokenizer, texts)
        assert _rel(_logits(ort, enc), _logits(model, enc)) < 1e-4


def test_onnx_int8_runs_on_every_family(family, tokenizer):
    model = _model(family)
    q = Q.to_int8(model, backend="onnxruntime")
    enc = _enc(tokenizer)
    assert _rel(_logits(q, enc), _logits(model, enc)) < 0.15
    assert q.onnx_model.numel() < 0.5 * Q.float_size_bytes(model)


def _drop_first_head(block: parts.Block) -> None:
    """Remove head 0 of a BERT block with transformers' own helper (the test's independent structured pruning)."""
    from transformers.pytorch_utils import prune_linear_layer

    size = block.head_size
    keep = torch.arange(size, block.n_heads * size)
    for part in ("q", "k", "v"):
        block.set(part, prune_linear_layer(block.get(part), keep, dim=0))
    block.set("o", prune_linear_layer(block.get("o"), keep, dim=1))
    block.attention.num_attention_heads -= 1
    block.attention.all_head_size = block.attention.num_attention_heads * size


def test_onnx_fusion_takes_the_head_count_from_the_blocks_not_the_config(tokenizer):
    model = _model("BERT")
    for block in parts.blocks(model):
        _drop_first_head(block)
    assert model.config.num_attention_heads == 4 and onnx.attention_shape(model) == (3, 24)
    enc = _enc(tokenizer)
    ort = onnx.to_onnx(model)  # the config's 4 heads would fuse 24-wide projections into 4 heads of 6
    assert runtimes.fused_ops(ort).get("Attention") == 2
    assert _rel(_logits(ort, enc), _logits(model, enc)) < 1e-4
    uneven = _model("BERT")
    _drop_first_head(parts.blocks(uneven)[0])
    assert onnx.attention_shape(uneven) == (0, 0)  # one count would be wrong for one of the blocks: left unfused
    ort = onnx.to_onnx(uneven)
    assert not runtimes.fused_ops(ort).get("Attention")
    assert _rel(_logits(ort, enc), _logits(uneven, enc)) < 1e-4


@pytest.mark.parametrize("family", ["RoBERTa", "DistilBERT"])
def test_onnx_of_a_structured_pruned_model_is_fused_with_its_remaining_heads(family, tokenizer):
    small = prune.structured(_model(family), heads=0.5, ffn=0.5)
    assert onnx.attention_shape(small) == (2, 16)  # 2 of 4 heads left in every block; the config still says 4
    ort = onnx.to_onnx(small, int8=False)
    assert runtimes.fused_ops(ort).get("Attention") == 2
    enc = _enc(tokenizer)
    assert _rel(_logits(ort, enc), _logits(small, enc)) < 1e-4


@pytest.mark.parametrize("family", ["RoBERTa", "DistilBERT"])
def test_independent_ort_reference_takes_the_models_own_inputs(family, tokenizer):
    model = _model(family)
    ref = runtimes.ort_reference(model, int8=False)
    assert set(ref.input_names) <= set(parts.input_names(model))
    enc = _enc(tokenizer)
    assert _rel(_logits(ref, enc), _logits(model, enc)) < 1e-4
    assert runtimes.fused_ops(ref).get("Attention") == 2


# --- dynamic int8 and token pruning -------------------------------------------------------------------------

def test_dynamic_int8_quantizes_the_block_linears_only(family, tokenizer):
    model = _model(family)
    before = _state(model)
    q = int8.dynamic_int8(model)
    assert _unchanged(model, before)
    kinds = {name: q.get_submodule(name)._get_name() for name in parts.linears(model, "all")}
    blocks = parts.linears(model, "blocks")
    assert all(kinds[n] == "DynamicQuantizedLinear" for n in blocks) and len(blocks) >= 12
    assert all(kinds[n] == "Linear" for n in parts.head_linears(model))  # the head stays in float
    enc = _enc(tokenizer)
    assert _rel(_logits(q, enc), _logits(model, enc)) < 0.15


def test_static_grids_on_the_blocks_of_every_family(family, tokenizer):
    model = _model(family)
    assert len(tokens.encoder_layers(model)) == len(parts.blocks(model)) == 2
    static = C.calibrate(model, tokenizer, TEXTS, 8, filter_fn="blocks")
    hooked = [n for n, m in parts.linears(static, "all").items() if m._forward_pre_hooks]
    assert hooked == list(parts.linears(model, "blocks"))


def test_fake_quantize_and_calibrate_take_any_family(tokenizer):
    """Rounding weights and inputs needs Linear layers only, so they work on a family the kit does not map."""
    model = _other_family()
    before = _state(model)
    assert _rel(_logits(Q.fake_quantize(model, 8), _enc(tokenizer)), _logits(model, _enc(tokenizer))) < 0.1
    assert C.calibrate(model, tokenizer, TEXTS, 8) is not model and _unchanged(model, before)


def test_prune_finetune_runs_on_every_family(family, tokenizer):
    model = _model(family)
    before = _state(model)
    pruned, hist = gradual.prune_finetune(model, tokenizer, 0.5, steps=2, batch_size=4)
    assert gradual.weight_sparsity(pruned) == pytest.approx(0.5, abs=1e-3) and len(hist) == 2
    assert _unchanged(model, before)


def test_token_pruning_drops_tokens_on_every_family(family, tokenizer):
    model = _model(family)
    before = _state(model)
    enc = _enc(tokenizer)
    real = enc["attention_mask"].sum(1).tolist()
    pruned = tokens.token_pruning(model, 0.5, 1)
    with torch.no_grad():
        out = pruned(**parts.feed(pruned, enc), output_hidden_states=True)
    kept = tokens.last_kept(pruned)
    assert [int((row >= 0).sum()) for row in kept] == [math.ceil(0.5 * n) for n in real]
    assert out.hidden_states[-1].shape[1] == kept.shape[1] < enc["input_ids"].shape[1]
    assert (kept[:, 0] == 0).all() and _unchanged(model, before)
    # Each row is pruned on its own: alone, it gives the same logits (DeBERTa-v2: its relative positions too).
    alone = torch.cat([_logits(pruned, _enc(tokenizer, [t])) for t in TEXTS])
    torch.testing.assert_close(alone, out.logits, atol=1e-4, rtol=1e-4)
    # Keeping every token is the unpruned model.
    torch.testing.assert_close(_logits(tokens.token_pruning(model, 1.0, 0), enc), _logits(model, enc),
                               atol=1e-5, rtol=1e-5)


def test_token_pruning_gives_deberta_the_kept_tokens_relative_positions(tokenizer):
    from transformers.models.deberta_v2.modeling_deberta_v2 import make_log_bucket_position

    model = _model("DeBERTa-v2")
    enc = _enc(tokenizer, TEXTS[:1])
    pruned = tokens.token_pruning(model, 0.5, 1)
    got = _logits(pruned, enc)
    pos = tokens.last_kept(pruned)[0]
    assert pos.tolist() != list(range(len(pos)))  # tokens were dropped in between: distances are not 0..w-1
    # Reference, by hand with DeBERTa's own modules: layer 1 on the kept tokens, their original relative positions.
    with torch.no_grad():
        hidden = model(**enc, output_hidden_states=True).hidden_states[1][:, pos]
        encoder = model.deberta.encoder
        rel = make_log_bucket_position(pos[:, None] - pos[None, :], encoder.position_buckets,
                                       encoder.max_relative_positions).long()[None]
        mask = torch.ones(1, 1, len(pos), len(pos), dtype=torch.long)
        out, _ = encoder.layer[1](hidden, mask, relative_pos=rel, rel_embeddings=encoder.get_rel_embedding())
        want = model.classifier(model.pooler(out))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


# --- refusals -----------------------------------------------------------------------------------------------

def _other_family() -> nn.Module:
    from transformers import MPNetConfig, MPNetForSequenceClassification

    torch.manual_seed(0)
    return MPNetForSequenceClassification(MPNetConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                                                      num_attention_heads=4, intermediate_size=64)).eval()


@pytest.mark.parametrize("technique", ["to_int8", "to_int8 onnxruntime", "to_onnx", "dynamic_int8", "blocks int8",
                                       "token_pruning", "ort_reference"])
def test_an_unsupported_family_is_refused_naming_the_supported_ones(technique, tokenizer):
    model = _other_family()
    before = _state(model)
    run = {"to_int8": lambda: Q.to_int8(model),
           "to_int8 onnxruntime": lambda: Q.to_int8(model, backend="onnxruntime"),
           "to_onnx": lambda: onnx.to_onnx(model), "dynamic_int8": lambda: int8.dynamic_int8(model),
           "blocks int8": lambda: quant_int8.dynamic_int8(model, "blocks"),
           "token_pruning": lambda: tokens.token_pruning(model, 0.5, 1),
           "ort_reference": lambda: runtimes.ort_reference(model)}
    with pytest.raises(ValueError, match=parts.SUPPORTED):
        run[technique]()
    assert _unchanged(model, before)


def test_export_refuses_a_model_without_a_classification_head():
    with pytest.raises(ValueError, match="sequence-classification head"):
        onnx.to_onnx(parts.tiny_classifier("BERT").bert)


# --- OpenVINO: one tiny conversion per family ------------------------------------------------------------------

def test_openvino_takes_the_models_own_inputs(family, tokenizer):
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")

    model = _model(family)
    enc = _enc(tokenizer)
    if family == "DistilBERT":  # NNCF int8: its calibration batches must be cut to the model's own inputs
        ov = runtimes.to_openvino(model, "f32", int8=True, tokenizer=tokenizer,
                                  calibration=runtimes.calibration_batches(tokenizer, "val", size=8, batch_size=4))
        assert ov.int8 and ov.names == {"input_ids", "attention_mask"}
        # Static int8 of a random model is noisy (0.4-0.6 of the largest logit, as the calibration size changes):
        # here only that it runs on DistilBERT's inputs and gives logits on the float model's scale. Its accuracy is
        # tested on the trained baseline (test_runtimes: agreement with fp32 on validation).
        got, ref = _logits(ov, enc), _logits(model, enc)
        assert got.shape == ref.shape and torch.isfinite(got).all() and _rel(got, ref) < 1.0
        return
    ov = runtimes.to_openvino(model, "f32", tokenizer=tokenizer)
    assert ov.names <= set(parts.input_names(model, tokenizer)) and "input_ids" in ov.names
    assert _rel(_logits(ov, enc), _logits(model, enc)) < 1e-4


# --- CUDA (skipped without one) ----------------------------------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")


@cuda
def test_cpu_only_backends_return_a_cpu_model_and_say_so(tokenizer):
    model = _model("DistilBERT").cuda()
    enc = _enc(tokenizer)
    ref = _logits(model, {k: v.cuda() for k, v in enc.items()}).cpu()
    for convert in (Q.to_int8, int8.dynamic_int8, onnx.to_onnx):
        with pytest.warns(RuntimeWarning, match="CPU"):
            out = convert(model)
        assert _rel(_logits(out, enc), ref) < 0.15
    assert next(model.parameters()).is_cuda  # the caller's model stays where it was


@cuda
def test_techniques_run_on_the_models_device(tokenizer):
    model = _model("RoBERTa").cuda()
    enc = {k: v.cuda() for k, v in _enc(tokenizer).items()}
    cal = C.calibrate(model, tokenizer, TEXTS, 8)
    assert _logits(cal, enc).is_cuda
    assert _logits(Q.fake_quantize(model, 8), enc).is_cuda
    pruned = tokens.token_pruning(model, 0.5, 1)
    assert _logits(pruned, enc).is_cuda and tokens.last_kept(pruned).shape[1] < enc["input_ids"].shape[1]
    sparse, _ = gradual.prune_finetune(model, tokenizer, 0.5, steps=2, batch_size=4)
    assert next(sparse.parameters()).is_cuda and gradual.weight_sparsity(sparse) == pytest.approx(0.5, abs=1e-3)
    assert next(Q.qat(model, tokenizer, bits=4, granularity="channel", steps=1, batch_size=4).parameters()).is_cuda
