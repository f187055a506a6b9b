"""Bad weights and models given to the techniques: NaN, infinite or integer weights, a model already quantized or
compressed, a technique's own function returning garbage. Each is refused with the fix named; the models the
techniques return keep what the model needs (RoPE's float32 buffers)."""

import warnings

import pytest
import torch

from labkit.core import parts
from labkit.dynamic import gradual
from labkit.dynamic import int8 as dynamic_int8
from labkit.lm import generation, kernels, quantized, slm, weightonly
from labkit.prune import structured, unstructured
from labkit.quant import calibrate, floats, int8, quantize
from labkit.sparse import layers

NAN = float("nan")
QUERY = "bert.encoder.layer.0.attention.self.query.weight"
Q_PROJ = "model.layers.0.self_attn.q_proj.weight"


def _bert(poison=None):
    """A tiny BERT classifier, with `poison` (a value) written into one weight of its first query layer."""
    m = parts.tiny_classifier("BERT")
    if poison is not None:
        with torch.no_grad():
            m.get_parameter(QUERY)[0, 3] = poison
    return m


def _llama(poison=None):
    lm = slm.tiny_llama(seed=0, vocab_size=64)
    if poison is not None:
        with torch.no_grad():
            lm.get_parameter(Q_PROJ)[1, 2] = poison
    return lm


def _torch_int8(m):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notice
        return int8.torch_ao_quantize_dynamic()(m, {torch.nn.Linear}, dtype=torch.qint8)


def _nan_weight(shape=(4, 64)):
    w = torch.randn(shape)
    w[0, 3] = NAN
    return w


def _H(n=64):
    x = torch.randn(128, n)
    return x.T @ x / 128


# (function, exception, the words of the message that name the fix)
CASES = [
    # --- one weight: integer, not a tensor, the wrong shape, NaN or inf ---------------------------------------
    pytest.param(lambda: weightonly.rtn(torch.arange(8).reshape(2, 4), 4, 2), TypeError,
                 r"torch.int64: weights must be floating point \(pass w.float\(\)\)", id="rtn-integer-weight"),
    pytest.param(lambda: weightonly.rtn([[1.0, 2.0]], 4, 2), TypeError, r"torch.as_tensor\(w\).float\(\)",
                 id="rtn-a-list"),
    pytest.param(lambda: weightonly.rtn(torch.ones(8), 4, 2), ValueError, r"2-D weight.*reshape",
                 id="rtn-1d-weight"),
    pytest.param(lambda: weightonly.rtn(_nan_weight(), 4, 32), ValueError, r"1 NaN and 0 infinite.*reload the model",
                 id="rtn-one-nan"),
    pytest.param(lambda: weightonly.rtn_codes(_nan_weight().masked_fill(torch.eye(4, 64, dtype=torch.bool), float("inf")),
                                              4, 32), ValueError, r"1 NaN and 4 infinite.*reload the model",
                 id="rtn-codes-inf"),
    pytest.param(lambda: weightonly.gptq(_nan_weight(), _H(), 4, 32), ValueError, r"1 NaN.*reload the model",
                 id="gptq-nan-weight"),
    pytest.param(lambda: weightonly.awq(torch.ones(4, 64, dtype=torch.int32), torch.ones(64), torch.randn(8, 64),
                                        4, 32), TypeError, r"pass w.float\(\)", id="awq-integer-weight"),
    # --- a classifier with one NaN weight: the technique names the layer and the count ------------------------
    pytest.param(lambda: unstructured.magnitude(_bert(NAN), 0.5), ValueError,
                 rf"{QUERY} has 1 NaN.*reload the model", id="magnitude-nan"),
    pytest.param(lambda: unstructured.magnitude(_bert(NAN), 0.5, scope="global", method="random"), ValueError,
                 rf"{QUERY} has 1 NaN.*reload the model", id="magnitude-random-global-nan"),
    pytest.param(lambda: unstructured.two_four(_bert(float("inf"))), ValueError,
                 rf"{QUERY} has 0 NaN and 1 infinite.*reload the model", id="two-four-inf"),
    pytest.param(lambda: unstructured.sparsity_of(_bert(NAN)), ValueError, rf"{QUERY} has 1 NaN.*reload the model",
                 id="sparsity-of-nan"),
    pytest.param(lambda: structured.structured(_bert(NAN), heads=0.5, ffn=0.5), ValueError,
                 rf"{QUERY} has 1 NaN.*reload the model", id="structured-nan"),
    pytest.param(lambda: quantize.fake_quantize(_bert(NAN), 4), ValueError, rf"{QUERY} has 1 NaN.*reload the model",
                 id="fake-quantize-nan"),
    pytest.param(lambda: quantize.to_int8(_bert(NAN)), ValueError, rf"{QUERY} has 1 NaN.*reload the model",
                 id="to-int8-nan"),
    pytest.param(lambda: dynamic_int8.dynamic_int8(_bert(NAN)), ValueError, rf"{QUERY} has 1 NaN.*reload the model",
                 id="dynamic-int8-nan"),
    pytest.param(lambda: layers.to_sparse(_bert(NAN), 0.5, "all"), ValueError,
                 rf"{QUERY} has 1 NaN.*reload the model", id="to-sparse-nan"),
    pytest.param(lambda: gradual.weight_sparsity(_bert(NAN)), ValueError, rf"{QUERY} has 1 NaN.*reload the model",
                 id="weight-sparsity-nan"),
    # --- a causal LM with one NaN weight, and a map_weights function that returns garbage ---------------------
    pytest.param(lambda: quantized.quantize_model(_llama(NAN), "rtn", 4, 32), ValueError,
                 rf"{Q_PROJ} has 1 NaN.*reload the model", id="quantize-model-nan"),
    pytest.param(lambda: kernels.int4_kernel(_llama(NAN), 32), ValueError, rf"{Q_PROJ} has 1 NaN.*reload the model",
                 id="int4-kernel-nan"),
    pytest.param(lambda: quantized.map_weights(_llama(), lambda w: w * NAN), ValueError,
                 rf"fn's result for {Q_PROJ} has \d+ NaN.*Make fn return finite floats", id="map-weights-nan-result"),
    pytest.param(lambda: quantized.map_weights(_llama(), lambda w: (w * 8).round().int()), TypeError,
                 r"weights must be floating point", id="map-weights-integer-result"),
    pytest.param(lambda: quantized.map_weights(_llama(), lambda w: w.T), ValueError, r"fn must return a tensor of "
                 r"the weight's shape", id="map-weights-wrong-shape"),
    # --- a model already quantized or compressed: "pass the float model" -------------------------------------
    pytest.param(lambda: quantize.to_int8(_torch_int8(_bert())), ValueError,
                 r"already int8-quantized \(DynamicQuantizedLinear layers found.*pass the float model",
                 id="to-int8-of-torch-int8"),
    pytest.param(lambda: int8.dynamic_int8(quantize.to_int8(_bert())), ValueError,
                 r"already int8-quantized.*pass the float model", id="dynamic-int8-of-kits-int8"),
    pytest.param(lambda: unstructured.magnitude(_torch_int8(_bert()), 0.5), ValueError,
                 r"already int8-quantized.*pass the float model", id="magnitude-of-int8"),
    pytest.param(lambda: structured.structured(quantize.to_int8(_bert())), ValueError,
                 r"already int8-quantized.*pass the float model", id="structured-of-int8"),
    pytest.param(lambda: floats.to_precision(_torch_int8(_bert()), "bf16"), ValueError,
                 r"already int8-quantized.*pass the float model", id="to-precision-of-int8"),
    pytest.param(lambda: calibrate.calibrate(quantize.to_int8(_bert()), None, ["a film"]), ValueError,
                 r"already int8-quantized.*pass the float model", id="calibrate-of-int8"),
    pytest.param(lambda: unstructured.two_four(layers.to_sparse(_bert(), 0.5)), ValueError,
                 r"already quantized or compressed \(SparseLinear layers found.*pass the float model",
                 id="two-four-of-sparse"),
    pytest.param(lambda: quantized.quantize_model(quantized.quantize_model(_llama(), store="codes")), ValueError,
                 r"already quantized or compressed \(GroupLinear.*pass the float model", id="quantize-model-of-codes"),
    pytest.param(lambda: generation.bf16(quantized.quantize_model(_llama(), store="codes")), ValueError,
                 r"already quantized or compressed.*pass the float model", id="bf16-of-codes"),
    pytest.param(lambda: quantized.map_weights(int8.dynamic_int8(_llama()), lambda w: w), ValueError,
                 r"already int8-quantized.*pass the float model", id="map-weights-of-int8"),
    # --- not a model at all, and calibration that does not fit -----------------------------------------------
    pytest.param(lambda: parts.linears("my model"), TypeError, r"must be a torch nn.Module, got str: pass the model "
                 r"itself", id="linears-of-a-string"),
    pytest.param(lambda: unstructured.magnitude(None, 0.5), TypeError, r"got NoneType: pass the model itself",
                 id="magnitude-of-none"),
    pytest.param(lambda: layers.to_sparse("model", 0.5), TypeError, r"got str: pass the model itself",
                 id="to-sparse-of-a-string"),
    pytest.param(lambda: quantized.map_weights(_llama(), 0.5), TypeError, r"fn must be a function.*lambda w: w \* 0.5",
                 id="map-weights-fn-not-callable"),
    pytest.param(lambda: weightonly.gptq(torch.randn(4, 64), _H() * NAN, 4, 32), ValueError,
                 r"H has 4096 NaN.*Record H with calibration_stats", id="gptq-nan-hessian"),
    pytest.param(lambda: quantized.quantize_model(_llama(), "gptq", calib_texts=["a"], damp=NAN), ValueError,
                 r"damp must be a number in \[0, 1\) \(0.01 is GPTQ's default\)", id="quantize-model-damp-nan"),
    pytest.param(lambda: weightonly.awq(torch.randn(4, 64), torch.ones(64), torch.full((8, 64), NAN), 4, 32),
                 ValueError, r"x has 512 NaN.*Record them with calibration_stats", id="awq-nan-inputs"),
    pytest.param(lambda: weightonly.awq(torch.randn(4, 64), torch.ones(32), torch.randn(8, 64), 4, 32), ValueError,
                 r"act_absmean must be \[in\] with in = 64.*record it on the inputs of this very layer",
                 id="awq-absmean-of-another-layer"),
]


@pytest.mark.parametrize("make, error, fix", CASES)
def test_a_bad_weight_or_model_is_refused_with_the_fix(make, error, fix):
    with pytest.raises(error, match=fix):
        make()


def test_a_refused_model_is_left_as_it_was():
    m = _bert(NAN)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ValueError):
        unstructured.magnitude(m, 0.5, inplace=True)
    assert all(torch.equal(v, before[k]) or (v.isnan() == before[k].isnan()).all() for k, v in m.state_dict().items())


def test_a_nan_outside_the_picked_layers_is_left_alone():
    """Only the weights a technique picks are checked: a NaN in the head does not stop pruning the blocks."""
    m = _bert()
    with torch.no_grad():
        m.classifier.weight[0, 0] = NAN
    out = unstructured.magnitude(m, 0.5)  # filter_fn="blocks": the head is not touched
    assert unstructured.sparsity_of(out)["sparsity"] == 0.5
    assert out.classifier.weight[0, 0].isnan()


def test_bf16_keeps_ropes_float32_buffers():
    lm = _llama()
    out = generation.bf16(lm)
    assert {p.dtype for p in out.parameters()} == {torch.bfloat16}
    assert out.model.rotary_emb.inv_freq.dtype == torch.float32
    torch.testing.assert_close(out.model.rotary_emb.inv_freq, lm.model.rotary_emb.inv_freq, rtol=0, atol=0)
    ids = torch.arange(12)[None]
    with torch.inference_mode():
        assert torch.isfinite(out(input_ids=ids).logits).all()


def test_rtn_of_a_float_weight_is_unchanged_by_the_checks():
    w = torch.arange(8, dtype=torch.float32).reshape(2, 4)
    torch.testing.assert_close(weightonly.rtn(w, 4, 2, half=False), w)  # two values a group: both on the grid
