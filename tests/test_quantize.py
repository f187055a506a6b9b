"""Quantization math against torch's own quantized tensors and fake-quant ops; model-level behaviour on a tiny BERT."""

import math
import warnings

import pytest
import torch
from torch import nn

from labkit.core import measure
from labkit.course import checks
from labkit.quant import quantize as Q


@pytest.fixture()
def w():
    torch.manual_seed(0)
    return torch.randn(24, 64) * 0.1 + 0.02


def _observer(cls, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torch.ao.quantization.observer as obs

        return getattr(obs, cls)(**kw)


def test_per_tensor_asymmetric_matches_torch_quint8(w):
    q = Q.quantize_tensor(w, 8, "asymmetric", "tensor")
    ob = _observer("MinMaxObserver", dtype=torch.quint8, qscheme=torch.per_tensor_affine)
    ob(w)
    scale, zp = ob.calculate_qparams()
    assert torch.allclose(q.scale, scale.reshape(()), rtol=1e-6) and int(q.zero_point) == int(zp)
    ref = torch.quantize_per_tensor(w, float(q.scale), int(q.zero_point), torch.quint8)
    assert torch.equal(q.codes, ref.int_repr())
    assert torch.allclose(Q.dequantize(q), ref.dequantize())


def test_per_tensor_symmetric_matches_torch_qint8(w):
    q = Q.quantize_tensor(w, 8, "symmetric", "tensor")
    ob = _observer("MinMaxObserver", dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
    ob(w)
    scale, zp = ob.calculate_qparams()
    assert torch.allclose(q.scale, scale.reshape(()), rtol=1e-6) and int(q.zero_point) == int(zp) == 0
    ref = torch.quantize_per_tensor(w, float(q.scale), 0, torch.qint8)
    assert torch.equal(q.codes, ref.int_repr())
    assert torch.allclose(Q.dequantize(q), ref.dequantize())


@pytest.mark.parametrize("scheme,dtype,qscheme", [("asymmetric", torch.quint8, torch.per_channel_affine),
                                                  ("symmetric", torch.qint8, torch.per_channel_symmetric)])
def test_per_channel_matches_torch(w, scheme, dtype, qscheme):
    q = Q.quantize_tensor(w, 8, scheme, "channel")
    ob = _observer("PerChannelMinMaxObserver", ch_axis=0, dtype=dtype, qscheme=qscheme)
    ob(w)
    scale, zp = ob.calculate_qparams()
    assert torch.allclose(q.scale.reshape(-1), scale, rtol=1e-6)
    assert torch.equal(q.zero_point.reshape(-1), zp.to(torch.int64))
    ref = torch.quantize_per_channel(w, q.scale.reshape(-1).double(), q.zero_point.reshape(-1), 0, dtype)
    assert torch.equal(q.codes, ref.int_repr())
    assert torch.allclose(Q.dequantize(q), ref.dequantize())


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 7, 8, 16])
@pytest.mark.parametrize("scheme", Q.SCHEMES)
def test_any_bit_width_matches_torch_fake_quant(w, bits, scheme):
    qmin, qmax = Q.qrange(bits, scheme)
    q = Q.quantize_tensor(w, bits, scheme, "tensor")
    assert int(q.codes.min()) >= qmin and int(q.codes.max()) <= qmax
    ref = torch.fake_quantize_per_tensor_affine(w, float(q.scale), int(q.zero_point), qmin, qmax)
    assert torch.allclose(Q.dequantize(q), ref, atol=1e-6)
    qc = Q.quantize_tensor(w, bits, scheme, "channel")
    ref_c = torch.fake_quantize_per_channel_affine(w, qc.scale.reshape(-1), qc.zero_point.reshape(-1).int(),
                                                   0, qmin, qmax)
    # torch's fake-quant multiplies by 1/scale, so a tie (x / scale = k + 0.5, to float precision) may round
    # the other way; everything else must agree.
    differ = (Q.dequantize(qc) - ref_c).abs() > 1e-6
    ties = (w / qc.scale - torch.floor(w / qc.scale) - 0.5).abs() < 1e-4
    assert bool((ties | ~differ).all()) and int(differ.sum()) <= w.shape[0]


def test_group_is_per_channel_on_the_split_rows(w):
    q = Q.quantize_tensor(w, 4, "asymmetric", "group", group_size=16)
    assert q.scale.shape == (24, 4, 1) and q.codes.shape == w.shape
    split = Q.quantize_tensor(w.reshape(24 * 4, 16), 4, "asymmetric", "channel")
    assert torch.equal(q.codes.reshape(-1, 16), split.codes)
    assert torch.allclose(Q.dequantize(q), Q.dequantize(split).reshape(w.shape))


def test_rounding_error_is_at_most_half_a_step(w):
    for granularity in Q.GRANULARITIES:
        q = Q.quantize_tensor(w, 6, "asymmetric", granularity, group_size=16)
        err = (Q.dequantize(q) - w).abs()
        step = q.scale if granularity != "group" else q.scale.expand(-1, -1, 16).reshape(w.shape)
        assert bool((err <= step / 2 + 1e-7).all())
    # Finer granularity never rounds worse on average.
    errs = [(Q.fake_quantize_tensor(w, 4, "asymmetric", g, 16) - w).pow(2).mean() for g in Q.GRANULARITIES]
    assert errs[0] >= errs[1] >= errs[2]


@pytest.mark.parametrize("bits", [1, 3, 4, 7, 8, 16])
def test_packing_round_trips_and_takes_bits_per_code(w, bits):
    q = Q.quantize_tensor(w, bits, "symmetric", "group", group_size=32)
    packed = Q.pack_codes(q)
    assert len(packed) == math.ceil(w.numel() * bits / 8)
    assert torch.equal(Q.unpack_codes(packed, q), q.codes)
    assert q.nbytes() == len(packed) + q.scale.numel() * 4  # symmetric: no zero points stored


@pytest.mark.parametrize("kwargs,match", [
    (dict(bits=0), "1 to 16"), (dict(bits=17), "1 to 16"), (dict(bits=4.0), "integer"), (dict(bits=True), "integer"),
    (dict(bits=4, scheme="affine"), "asymmetric"), (dict(bits=4, granularity="row"), "channel"),
    (dict(bits=4, granularity="group", group_size=5), "divisor of 64"),
    (dict(bits=4, granularity="group", group_size=0), "positive integer"),
])
def test_bad_arguments_name_the_allowed_values(w, kwargs, match):
    with pytest.raises(ValueError, match=match):
        Q.quantize_tensor(w, **kwargs)


@pytest.mark.parametrize("bad,match", [
    (torch.tensor([0.5, float("nan"), -1.0]), "1 NaN or Inf"), (torch.tensor([0.5, float("inf")]), "NaN or Inf"),
    (torch.tensor([[1.0, -float("inf")], [0.2, 0.3]]), "NaN or Inf"), (torch.empty(0), "empty tensor"),
    (torch.empty(3, 0), "empty tensor"),
])
def test_nan_inf_and_empty_tensors_are_refused_with_what_to_do(bad, match):
    granularity = "channel" if bad.dim() == 2 else "tensor"
    with pytest.raises(ValueError, match=match):
        Q.quantize_tensor(bad, 8, granularity=granularity)
    with pytest.raises(ValueError, match=match):
        Q.fake_quantize_tensor(bad, 4, "symmetric", granularity)
    with pytest.raises(ValueError, match=match):
        Q.observe(bad, 8, "percentile")
    with pytest.raises(ValueError, match="isfinite|at least one value"):  # says what to do, not only what is wrong
        Q.quantize_tensor(bad)


def test_model_without_linear_layers_is_refused():
    with pytest.raises(ValueError, match="no nn.Linear"):
        Q.fake_quantize(nn.Sequential(nn.ReLU()), 8)
    with pytest.raises(ValueError, match="no nn.Linear"):
        Q.to_int8(nn.Sequential(nn.Embedding(4, 3)))
    with pytest.raises(ValueError, match="onnxruntime"):
        Q.to_int8(nn.Sequential(nn.Linear(2, 2)), backend="tvm")


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _inputs():
    torch.manual_seed(1)
    ids = torch.randint(1000, 5000, (3, 9))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}


def test_fake_quantize_rounds_every_linear_and_leaves_input_alone(tiny_model):
    before = _state(tiny_model)
    sim = Q.fake_quantize(tiny_model, 3, "asymmetric", "group", group_size=16, embeddings=True)
    assert all(torch.equal(v, tiny_model.state_dict()[k]) for k, v in before.items())
    for name, lin in Q._linears(sim):
        rows = lin.weight.detach().reshape(-1, 16)
        assert max(len(torch.unique(r)) for r in rows) <= 2 ** 3, name
        orig = tiny_model.get_submodule(name).weight.detach()
        assert torch.allclose(lin.weight, Q.fake_quantize_tensor(orig, 3, "asymmetric", "group", 16))
    emb = sim.bert.embeddings.word_embeddings.weight
    assert max(len(torch.unique(r)) for r in emb[:50]) <= 8
    assert Q.fake_quantize(tiny_model, 4, inplace=True) is tiny_model


def test_fake_quantize_8bit_keeps_logits_and_group_size_is_checked_first(tiny_model):
    x = _inputs()
    with torch.no_grad():
        ref = tiny_model(**x).logits
        sim = Q.fake_quantize(tiny_model, 8, activations=True)(**x).logits
    assert torch.allclose(sim, ref, atol=0.05) and not torch.equal(sim, ref)
    before = _state(tiny_model)
    with pytest.raises(ValueError, match="does not divide"):
        Q.fake_quantize(tiny_model, 4, granularity="group", group_size=128, inplace=True)
    assert all(torch.equal(v, tiny_model.state_dict()[k]) for k, v in before.items())


def test_quantized_size_counts_packed_weights(tiny_model):
    fp32 = Q.float_size_bytes(tiny_model)
    lin = Q._linears(tiny_model)
    packed = sum(Q.quantize_tensor(m.weight, 4, "asymmetric", "channel").nbytes() for _, m in lin)
    floats = sum(m.weight.numel() * 4 for _, m in lin)
    assert Q.quantized_size_bytes(tiny_model, 4) == fp32 - floats + packed


def test_to_int8_torch_is_real_int8_and_quiet(tiny_model):
    before = _state(tiny_model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        q = Q.to_int8(tiny_model)
    assert not caught, [str(c.message) for c in caught]
    assert all(torch.equal(v, tiny_model.state_dict()[k]) for k, v in before.items())
    assert not any(type(m) is nn.Linear for m in q.modules())
    assert any("quantized" in type(m).__module__ for m in q.modules())
    assert isinstance(q.bert.embeddings.word_embeddings, Q.Int8Embedding)
    assert q.bert.embeddings.word_embeddings.codes.dtype == torch.int8

    assert measure.serialized_bytes(tiny_model) / measure.serialized_bytes(q) > 3
    x = _inputs()
    with torch.no_grad():
        assert torch.allclose(q(**x).logits, tiny_model(**x).logits, atol=0.05)


def test_int8_embedding_matches_per_row_reference():
    emb = nn.Embedding(50, 12)
    q = Q.Int8Embedding(emb)
    ids = torch.tensor([[0, 5, 49], [7, 7, 1]])
    ref = Q.fake_quantize_tensor(emb.weight, 8, "symmetric", "channel")[ids]
    assert torch.allclose(q(ids), ref, atol=1e-6)


def test_to_int8_onnxruntime_matches_fp32(tiny_model):
    q = Q.to_int8(tiny_model, backend="onnxruntime")
    x = _inputs()
    with torch.no_grad():
        assert torch.allclose(q(**x).logits, tiny_model(**x).logits, atol=0.05)
    assert measure.serialized_bytes(q) >= q.onnx_model.numel()  # the ONNX file itself is what gets counted
    assert measure.serialized_bytes(tiny_model) / q.onnx_model.numel() > 3
    # idle ORT threads must not spin: they would slow whatever model is timed next to it
    assert q.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_observers():
    torch.manual_seed(0)
    x = torch.cat([torch.randn(20_000), torch.tensor([40.0, -35.0])])  # two outliers
    s_mm, zp_mm = Q.observe(x, 4, "minmax")
    s_ref, zp_ref = Q.qparams(x.min(), x.max(), 4, "asymmetric")
    assert torch.equal(s_mm, s_ref) and torch.equal(zp_mm, zp_ref)
    s_pc, _ = Q.observe(x, 4, "percentile")
    assert s_pc < s_mm / 3  # the outliers no longer stretch the grid

    def mse(scale, zp):
        return ((torch.clamp(torch.round(x / scale) + zp, 0, 15) - zp) * scale - x).pow(2).mean()

    s_mse, zp_mse = Q.observe(x, 4, "mse")
    assert mse(s_mse, zp_mse) <= mse(s_mm, zp_mm)
    with pytest.raises(ValueError, match="minmax"):
        Q.observe(x, 4, "histogram")


def test_calibrate_fixes_activation_grids(tiny_model, tokenizer):
    before = _state(tiny_model)
    cal = Q.calibrate(tiny_model, tokenizer, 8, "percentile", size=16)
    assert all(torch.equal(v, tiny_model.state_dict()[k]) for k, v in before.items())
    hooks = [h for _, m in Q._linears(cal) for h in m._forward_pre_hooks.values()]
    assert len(hooks) == len(Q._linears(cal)) and all(h.scale is not None for h in hooks)
    x = _inputs()
    with torch.no_grad():
        assert torch.allclose(cal(**x).logits, tiny_model(**x).logits, atol=0.1)


def test_qat_returns_rounded_weights_and_trains(tiny_model, tokenizer):
    before = _state(tiny_model)
    out = Q.qat(tiny_model, tokenizer, bits=4, granularity="group", group_size=16, steps=2, batch_size=8, lr=1e-3)
    assert all(torch.equal(v, tiny_model.state_dict()[k]) for k, v in before.items())
    for name, lin in Q._linears(out):
        w = lin.weight.detach()
        assert torch.allclose(w, Q.fake_quantize_tensor(w, 4, "asymmetric", "group", 16), atol=1e-6), name
    ptq = Q.fake_quantize(tiny_model, 4, granularity="group", group_size=16)
    assert not torch.equal(out.classifier.weight, ptq.classifier.weight)  # training moved the weights


def test_bits_point_is_cached_and_sweep_streams(baseline, monkeypatch):
    p = Q.bits_point(8, "asymmetric", "channel", limit=40)

    def no_recompute(*args, **kwargs):
        raise AssertionError("a cached point was computed again")
    monkeypatch.setattr(Q, "fake_quantize", no_recompute)
    assert Q.bits_point(8, "asymmetric", "channel", limit=40) == p
    assert p["lo"] <= p["accuracy"] <= p["hi"] and p["hi"] - p["lo"] > 0.05  # 40 snippets: a wide interval
    assert p["agreement"] >= 0.9 and p["snippets"] == 40
    assert p["fp32_bytes"] / p["size_bytes"] > 1.5  # Linear weights packed to 8 bits, embeddings still float
    rows = list(Q.sweep(bits=(8,), granularities=("channel",), limit=40))
    assert rows[0]["done"] == rows[0]["total"] == 1 and rows[0]["accuracy"] == p["accuracy"]


# --- the learner's functions plugged in ---------------------------------------------------------------------

def _solution(key):
    return checks.solution(key)


@pytest.mark.parametrize("scheme", Q.SCHEMES)
@pytest.mark.parametrize("granularity", Q.GRANULARITIES)
def test_fake_quantize_with_the_exercise_quantizer_is_labkits_own(tiny_model, scheme, granularity):
    own = Q.fake_quantize(tiny_model, 3, scheme, granularity, group_size=16)
    mine = Q.fake_quantize(tiny_model, 3, scheme, granularity, group_size=16,
                           quantizer=_solution("02.linear_quantize"),
                           qparams_fn=_solution("02.scale_and_zero_point") if scheme == "asymmetric" else None)
    for (name, a), (_, b) in zip(Q._linears(own), Q._linears(mine)):
        assert torch.allclose(a.weight, b.weight, atol=1e-6), name


def test_a_broken_quantizer_is_a_clear_error_and_touches_nothing(tiny_model):
    before = _state(tiny_model)
    with pytest.raises(ValueError, match="integer codes"):
        Q.fake_quantize(tiny_model, 4, quantizer=lambda x, s, z, b: x / s)
    with pytest.raises(ValueError, match="quantizer raised"):
        Q.fake_quantize(tiny_model, 4, quantizer=lambda x, s, z, b: x.no_such_thing)
    with pytest.raises(ValueError, match="asymmetric"):
        Q.fake_quantize(tiny_model, 4, "symmetric", qparams_fn=_solution("02.scale_and_zero_point"))
    with pytest.raises(ValueError, match="function"):
        Q.fake_quantize(tiny_model, 4, quantizer="round")
    assert all(torch.equal(v, tiny_model.state_dict()[k]) for k, v in before.items())


# --- the integer-only Linear --------------------------------------------------------------------------------

# The float input, weight and bias of MIT 6.5940 lab 2's `test_quantized_fc` (mit-han-lab/efficientml.ai);
# they test a 2-bit version, we run the same tensors through 8-bit integer kernels and torch's int8 Linear.
MIT_X = torch.tensor([[0.6118, 0.7288, 0.8511, 0.2849, 0.8427, 0.7435, 0.4014, 0.2794],
                      [0.3676, 0.2426, 0.1612, 0.7684, 0.6038, 0.0400, 0.2240, 0.4237],
                      [0.6565, 0.6878, 0.4670, 0.3470, 0.2281, 0.8074, 0.0178, 0.3999],
                      [0.1863, 0.3567, 0.6104, 0.0497, 0.0577, 0.2990, 0.6687, 0.8626]])
MIT_W = torch.tensor([[1.2626e-01, -1.4752e-01, 8.1910e-02, 2.4982e-01, -1.0495e-01, -1.9227e-01, -1.8550e-01, -1.5700e-01],
                      [2.7624e-01, -4.3835e-01, 5.1010e-02, -1.2020e-01, -2.0344e-01, 1.0202e-01, -2.0799e-01, 2.4112e-01],
                      [-3.8216e-01, -2.8047e-01, 8.5238e-02, -4.2504e-01, -2.0952e-01, 3.2018e-01, -3.3619e-01, 2.0219e-01],
                      [8.9233e-02, -1.0124e-01, 1.1467e-01, 2.0091e-01, 1.1438e-01, -4.2427e-01, 1.0178e-01, -3.0941e-04],
                      [-1.8837e-02, -2.1256e-01, -4.5285e-01, 2.0949e-01, -3.8684e-01, -1.7100e-01, -4.5331e-01, -2.0433e-01],
                      [-2.0038e-01, -5.3757e-02, 1.8997e-01, -3.6866e-01, 5.5484e-02, 1.5643e-01, -2.3538e-01, 2.1103e-01],
                      [-2.6875e-01, 2.4984e-01, -2.3514e-01, 2.5527e-01, 2.0322e-01, 3.7675e-01, 6.1563e-02, 1.7201e-01],
                      [3.3541e-01, -3.3555e-01, -4.3349e-01, 4.3043e-01, -2.0498e-01, -1.8366e-01, -9.1553e-02, -4.1168e-01]])
MIT_B = torch.tensor([0.1954, -0.2756, 0.3113, 0.1149, 0.4274, 0.2429, -0.1721, -0.2502])


def _integer_layer(x, w, b, kernel=None):
    lin = nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(b)
    y = lin(x).detach()
    return Q.IntegerLinear(lin, (float(x.min()), float(x.max())), (float(y.min()), float(y.max())), kernel), y


def _random_layer(seed, n=64, k=384, m=96):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=gen) * 2, torch.randn(m, k, generator=gen) * 0.05, torch.randn(m, generator=gen) * 0.1


@pytest.mark.parametrize("case", ["mit", "random"])
def test_integer_linear_agrees_with_torch_int8_linear_within_one_code(case):
    x, w, b = (MIT_X, MIT_W, MIT_B) if case == "mit" else _random_layer(0)
    layer, y = _integer_layer(x, w, b)
    mine, theirs = layer.output_codes(x), layer.torch_output_codes(x)
    assert mine.dtype == theirs.dtype == torch.uint8
    assert int((mine.int() - theirs.int()).abs().max()) <= 1
    # and the float outputs are the fp32 Linear's, off by less than one output step on average
    assert float((layer(x) - y).abs().mean()) <= layer.out_scale


def test_the_exercise_solution_is_labkits_kernel():
    x, w, b = _random_layer(1)
    layer, _ = _integer_layer(x, w, b)
    mine, _ = _integer_layer(x, w, b, kernel=_solution("02.quantized_linear"))
    assert torch.equal(layer.output_codes(x), mine.output_codes(x))


def test_integer_linear_refuses_a_bad_kernel():
    x, w, b = _random_layer(2, n=4, k=16, m=8)
    layer, _ = _integer_layer(x, w, b, kernel=lambda *args: torch.zeros(3, 3))
    with pytest.raises(ValueError, match="integer codes of shape"):
        layer(x)
    with pytest.raises(ValueError, match="function"):
        _integer_layer(x, w, b, kernel="int8")


def test_swap_integer_linear_calibrates_on_val_and_keeps_the_model(tiny_model, tokenizer):
    before = _state(tiny_model)
    name = Q.linear_names(tiny_model)[0]
    with pytest.raises(ValueError, match="validation"):
        Q.swap_integer_linear(tiny_model, tokenizer, name, split="test")
    with pytest.raises(ValueError, match="linear_names"):
        Q.swap_integer_linear(tiny_model, tokenizer, "bert.embeddings")
    swapped = Q.swap_integer_linear(tiny_model, tokenizer, name, size=16)
    assert all(torch.equal(v, tiny_model.state_dict()[k]) for k, v in before.items())
    assert isinstance(swapped.get_submodule(name), Q.IntegerLinear)
    assert sum(isinstance(m, Q.IntegerLinear) for m in swapped.modules()) == 1
    x = _inputs()
    with torch.no_grad():
        assert torch.allclose(swapped(**x).logits, tiny_model(**x).logits, atol=0.05)
    xs, ys = Q.layer_io(tiny_model, tokenizer, name, "val", 8)
    assert xs.shape[0] == ys.shape[0] and xs.shape[1] == 32 and ys.shape[1] == tiny_model.get_submodule(name).out_features
    head_x, _ = Q.layer_io(tiny_model, tokenizer, "classifier", "val", 8)
    assert head_x.shape == (8, 32)  # the head sees one pooled row per snippet
