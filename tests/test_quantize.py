"""Notebook 02's saved code (fake quantization, calibration, QAT) and real int8, against torch's own quantization
ops, on a tiny BERT; every returned model is the caller's to change."""

import warnings

import pytest
import torch
from torch import nn

from labkit.core import measure, parts
from labkit.course import checks
from labkit.quant import affine, int8
from labkit.quant import calibrate as C
from labkit.quant import quantize as Q


@pytest.fixture()
def w():
    torch.manual_seed(0)
    return torch.randn(24, 64) * 0.1 + 0.02


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _unchanged(model, before) -> bool:
    now = model.state_dict()
    return set(now) == set(before) and all(torch.equal(now[k], v) for k, v in before.items())


def _write_into(model) -> None:
    """Change every float tensor the model holds, in place."""
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            if t.is_floating_point():
                t.add_(1.0)


def _inputs():
    torch.manual_seed(1)
    ids = torch.randint(1000, 5000, (3, 9))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}


def _logits(model, x=None):
    with torch.no_grad():
        return model(**(x or _inputs())).logits


# --- fake quantization of a weight and of a model --------------------------------------------------------------

@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("scheme", ["asymmetric", "symmetric"])
def test_fake_quantize_weight_is_torchs_fake_quant(w, bits, scheme):
    qmin, qmax = affine.qrange(bits, scheme)
    scale, zp = affine.choose_qparams_affine(w, scheme, w.shape, qmin, qmax)
    ref = torch.fake_quantize_per_tensor_affine(w, float(scale), int(zp), qmin, qmax)
    torch.testing.assert_close(Q.fake_quantize_weight(w, bits, scheme, "tensor"), ref, atol=1e-6, rtol=0)
    rows = Q.fake_quantize_weight(w, bits, scheme, "channel")
    sc, zc = affine.choose_qparams_affine(w, scheme, (1, 64), qmin, qmax)
    ref_c = torch.fake_quantize_per_channel_affine(w, sc.reshape(-1), zc.reshape(-1).int(), 0, qmin, qmax)
    # torch multiplies by 1/scale, so an exact tie (x / scale = k + 0.5) may round the other way; nothing else may
    ties = (w / sc - torch.floor(w / sc) - 0.5).abs() < 1e-4
    assert bool((ties | ((rows - ref_c).abs() <= 1e-6)).all())


def test_groups_are_channels_of_the_split_rows_and_finer_is_closer(w):
    grouped = Q.fake_quantize_weight(w, 4, "asymmetric", "group", 16)
    split = Q.fake_quantize_weight(w.reshape(-1, 16), 4, "asymmetric", "channel")
    assert torch.equal(grouped, split.reshape(w.shape))
    errs = [(Q.fake_quantize_weight(w, 4, "asymmetric", g, 16) - w).pow(2).mean() for g in ("tensor", "channel", "group")]
    assert errs[0] >= errs[1] >= errs[2]
    with pytest.raises(ValueError, match="does not divide the 64 inputs"):
        Q.fake_quantize_weight(w, 4, "asymmetric", "group", 48)


def test_fake_quantize_puts_every_linear_on_the_grid_and_hands_back_its_own_copy(tiny_model):
    before = _state(tiny_model)
    sim = Q.fake_quantize(tiny_model, 3, "asymmetric", "group", group_size=16)
    for name, lin in parts.linears(sim, "all").items():
        assert max(len(torch.unique(r)) for r in lin.weight.detach().reshape(-1, 16)) <= 2 ** 3, name
        orig = tiny_model.get_submodule(name).weight
        assert torch.equal(lin.weight, Q.fake_quantize_weight(orig, 3, "asymmetric", "group", 16))
    _write_into(sim)
    assert _unchanged(tiny_model, before)


def test_fake_quantize_picks_layers_with_filter_fn_and_refuses_what_it_cannot_do(tiny_model):
    sim = Q.fake_quantize(tiny_model, 2, filter_fn="blocks")
    assert torch.equal(sim.classifier.weight, tiny_model.classifier.weight)  # the head stays as it was
    assert not torch.equal(sim.bert.encoder.layer[0].attention.self.query.weight,
                           tiny_model.bert.encoder.layer[0].attention.self.query.weight)
    assert torch.allclose(_logits(Q.fake_quantize(tiny_model, 8)), _logits(tiny_model), atol=0.05)
    with pytest.raises(ValueError, match="no nn.Linear"):
        Q.fake_quantize(nn.Sequential(nn.ReLU()), 8)
    with pytest.raises(ValueError, match="does not divide"):
        Q.fake_quantize(tiny_model, 4, granularity="group", group_size=48)
    with pytest.raises(ValueError, match="bits must be"):
        Q.fake_quantize(tiny_model, 0)


def test_quantized_size_counts_packed_weights(tiny_model):
    fp32 = Q.float_size_bytes(tiny_model)
    lins = parts.linears(tiny_model, "all").values()
    floats = sum(m.weight.numel() * 4 for m in lins)
    packed = sum(m.weight.numel() // 2 + m.out_features * (4 + 1) for m in lins)  # 4 bits, a scale and zp per row
    assert Q.quantized_size_bytes(tiny_model, 4) == fp32 - floats + packed
    sym = sum(m.weight.numel() // 2 + m.out_features * 4 for m in lins)  # symmetric: no zero points stored
    assert Q.quantized_size_bytes(tiny_model, 4, "symmetric") == fp32 - floats + sym


@pytest.mark.parametrize("scheme", ["asymmetric", "symmetric"])
def test_the_exercise_functions_round_like_the_kit(w, scheme):
    sz, lq = checks.solution("02.scale_and_zero_point"), checks.solution("02.linear_quantize")
    if scheme == "asymmetric":  # the notebook's fake_quantize_rows, with the reference answers
        scale, zp = sz(w.amin(1, keepdim=True), w.amax(1, keepdim=True), 3)
        mine = (lq(w, scale, zp, 3).float() - zp) * scale
        assert torch.equal(mine, Q.fake_quantize_weight(w, 3, "asymmetric", "channel"))
    else:
        codes = torch.as_tensor(checks.solution("02.symmetric_round")(w, 3))
        qmin, qmax = affine.qrange(3, "symmetric")
        scale, zp = affine.choose_qparams_affine(w, "symmetric", w.shape, qmin, qmax)
        assert torch.equal(codes.long(), affine.quantize_affine(w, w.shape, scale, zp, qmin, qmax).long())


# --- calibration ---------------------------------------------------------------------------------------------

def test_fake_quantize_range_is_torchs_quint8_and_clips():
    x = torch.randn(64) * 3
    lo, hi = float(x.min()), float(x.max())
    scale, zp = affine.choose_qparams_affine_with_min_max(lo, hi, "asymmetric", 0, 255)
    ref = torch.dequantize(torch.quantize_per_tensor(x, float(scale), int(zp), torch.quint8))
    torch.testing.assert_close(C.fake_quantize_range(x, lo, hi), ref, atol=1e-6, rtol=0)
    assert float(C.fake_quantize_range(torch.tensor([10.0]), -1.0, 1.0)) == pytest.approx(1.0, abs=2 / 255)
    assert float(C.fake_quantize_range(torch.tensor([0.0]), 0.3, 0.9)) == 0.0  # the range is widened to hold 0


def test_observers():
    torch.manual_seed(0)
    x = torch.cat([torch.randn(20_000), torch.tensor([40.0, -35.0])])  # two outliers
    assert C.observe(x, 4, "minmax") == (-35.0, 40.0)
    lo, hi = C.observe(x, 4, "percentile")
    assert -6 < lo < -2 and 2 < hi < 6  # the outliers no longer stretch the grid

    def mse(r):
        return float((C.fake_quantize_range(x, *r, 4) - x).pow(2).mean())
    assert mse(C.observe(x, 4, "mse")) < mse(C.observe(x, 4, "minmax"))
    with pytest.raises(ValueError, match="minmax"):
        C.observe(x, 4, "histogram")


def test_calibrate_fixes_grids_on_the_chosen_layers_of_a_copy(tiny_model, tokenizer):
    before = _state(tiny_model)
    texts = ["a quiet film", "loud and long", "fine"]
    cal = C.calibrate(tiny_model, tokenizer, texts, 8, "percentile")
    hooks = [h for lin in parts.linears(cal, "all").values() for h in lin._forward_pre_hooks.values()]
    assert len(hooks) == len(parts.linears(cal, "all")) and all(isinstance(h, C.FakeQuantInput) for h in hooks)
    assert not any(lin._forward_pre_hooks for lin in parts.linears(tiny_model, "all").values())
    assert torch.allclose(_logits(cal), _logits(tiny_model), atol=0.1)
    blocks = C.calibrate(tiny_model, tokenizer, texts, 4, filter_fn="blocks")
    assert not blocks.classifier._forward_pre_hooks and blocks.bert.encoder.layer[0].output.dense._forward_pre_hooks
    _write_into(cal)
    assert _unchanged(tiny_model, before)
    assert C.calibrate(cal, tokenizer, texts, 8, inplace=True) is cal  # the only way to change the input
    with pytest.raises(ValueError, match="minmax"):
        C.calibrate(tiny_model, tokenizer, texts, 8, "histogram")
    with pytest.raises(ValueError, match="bits must be"):
        C.calibrate(tiny_model, tokenizer, texts, 0)


# --- quantization-aware training -------------------------------------------------------------------------------

def test_straight_through_gives_the_grid_value_and_the_identity_gradient(w):
    param = Q.StraightThrough(3, "asymmetric", "channel")
    w = w.clone().requires_grad_(True)
    out = param(w)
    assert torch.equal(out.detach(), Q.fake_quantize_weight(w, 3, "asymmetric", "channel"))
    (out * torch.arange(w.numel()).reshape(w.shape)).sum().backward()
    assert torch.equal(w.grad, torch.arange(w.numel()).reshape(w.shape).float())  # rounding taken for the identity


def test_qat_returns_rounded_weights_trains_and_hands_back_its_own_copy(tiny_model, tokenizer):
    before = _state(tiny_model)
    out = Q.qat(tiny_model, tokenizer, bits=4, granularity="group", group_size=16, steps=2, batch_size=8, lr=1e-3)
    for name, lin in parts.linears(out, "all").items():
        assert not parametrized(lin), name
        w = lin.weight.detach()
        assert torch.allclose(w, Q.fake_quantize_weight(w, 4, "asymmetric", "group", 16), atol=1e-6), name
    ptq = Q.fake_quantize(tiny_model, 4, granularity="group", group_size=16)
    assert not torch.equal(out.classifier.weight, ptq.classifier.weight)  # training moved the weights
    _write_into(out)
    assert _unchanged(tiny_model, before)


def parametrized(module) -> bool:
    return bool(getattr(module, "parametrizations", None))


# --- real int8 ---------------------------------------------------------------------------------------------

def test_to_int8_torch_is_real_int8_quiet_and_the_callers_to_change(tiny_model):
    before = _state(tiny_model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        q = Q.to_int8(tiny_model)
    assert not caught, [str(c.message) for c in caught]
    assert not any(type(m) is nn.Linear for m in q.modules())
    assert isinstance(q.bert.embeddings.word_embeddings, int8.Int8Embedding)
    assert q.bert.embeddings.word_embeddings.codes.dtype == torch.int8
    assert measure.serialized_bytes(tiny_model) / measure.serialized_bytes(q) > 3
    assert torch.allclose(_logits(q), _logits(tiny_model), atol=0.05)
    _write_into(q)
    assert _unchanged(tiny_model, before)
    assert not isinstance(Q.to_int8(tiny_model, embeddings=False).bert.embeddings.word_embeddings, int8.Int8Embedding)


def test_int8_embedding_matches_per_row_reference():
    emb = nn.Embedding(50, 12)
    q = int8.Int8Embedding(emb)
    ids = torch.tensor([[0, 5, 49], [7, 7, 1]])
    scale = emb.weight.detach().abs().amax(1, keepdim=True) / 127
    ref = (torch.clamp(torch.round(emb.weight / scale), -127, 127) * scale)[ids]
    assert torch.allclose(q(ids), ref, atol=1e-6)


def test_to_int8_onnxruntime_matches_fp32(tiny_model):
    q = Q.to_int8(tiny_model, backend="onnxruntime")
    assert torch.allclose(_logits(q), _logits(tiny_model), atol=0.05)
    assert measure.serialized_bytes(q) >= q.onnx_model.numel()  # the ONNX file itself is what gets counted
    assert measure.serialized_bytes(tiny_model) / q.onnx_model.numel() > 3
    # idle ORT threads must not spin: they would slow whatever model is timed next to it
    assert q.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_to_int8_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="no nn.Linear"):
        Q.to_int8(nn.Sequential(nn.Embedding(4, 3)))
    with pytest.raises(ValueError, match="onnxruntime"):
        Q.to_int8(nn.Sequential(nn.Linear(2, 2)), backend="tvm")
