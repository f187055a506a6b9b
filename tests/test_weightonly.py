"""Weight-only quantization of a causal LM's decoder layers: RTN, GPTQ-style and AWQ-style on a tiny random Llama,
calibration, the quantized model (float weights or codes), its bytes, the int4 kernel and the slider's point.
"""

import math

import pytest
import torch
from torch import nn

from labkit.core import parts
from labkit.lm import calibration, generation, kernels, quantized, slm
from labkit.lm import weightonly as wo
from labkit.lm.perplexity import LMPoint, perplexity
from labkit.lm.slm import ByteTokenizer
from labkit.quant.int8 import dynamic_int8

TEXT = " ".join(f"review {i}: the film was {'good' if i % 3 else 'dull'} and {'long' if i % 2 else 'short'}."
                for i in range(60))


@pytest.fixture(scope="module")
def tiny():
    return slm.tiny_llama(seed=0)


@pytest.fixture(scope="module")
def calib_ids():
    torch.manual_seed(1)
    return torch.randint(0, 256, (8, 64))


@pytest.fixture(scope="module")
def stats(tiny, calib_ids):
    return calibration.calibration_stats(tiny, calib_ids, keep=512)


def _h_error(w, wq, H):
    """Mean squared output change over the calibration tokens: trace(dW H dW^T) with H = X^T X / n."""
    d = (wq - w).double()
    return float(torch.einsum("oi,ij,oj->", d, H.double(), d))


# --- round-to-nearest against torch's own fake quantization -------------------------------------------------

@pytest.mark.parametrize("bits,group", [(2, 16), (3, 32), (4, 32), (4, 64), (8, 16)])
def test_rtn_matches_torch_fake_quantize_per_group(bits, group):
    torch.manual_seed(0)
    w = torch.randn(24, 64) * 0.05 + 0.01
    rows = w.reshape(-1, group)  # one group per row, in row-major order
    lo, hi = rows.amin(1).half().float(), rows.amax(1)  # offset and scale are stored as float16
    scale = ((hi - lo) / (2 ** bits - 1)).half().float()
    zero = -lo / scale  # a float zero point: the grid's 0 sits at the group's minimum
    ref = torch.fake_quantize_per_channel_affine(rows, scale, zero, 0, 0, 2 ** bits - 1).reshape(w.shape)
    torch.testing.assert_close(wo.rtn(w, bits, group), ref, rtol=0, atol=1e-6)


def test_rtn_reproduces_weights_already_on_a_q4_1_grid():
    torch.manual_seed(0)
    d, m = torch.rand(16, 2, 1) * 0.01 + 0.001, -torch.rand(16, 2, 1) * 0.05  # GGUF Q4_1: w = d * q + m
    q = torch.randint(0, 16, (16, 2, 32))
    q[..., 0], q[..., 1] = 0, 15  # each block uses its whole range, as Q4_1's own rounding makes it
    w = (d.half().float() * q + m.half().float()).reshape(16, 64)
    assert torch.equal(wo.rtn(w, 4, 32), w)  # bit for bit: the grid, its float16 scale and offset are found again


def test_rtn_uses_at_most_2_to_the_bits_levels_per_group():
    torch.manual_seed(0)
    w = torch.randn(8, 64)
    q = wo.rtn(w, 3, 16).reshape(-1, 16)
    assert max(len(torch.unique(g)) for g in q) <= 8
    assert (wo.rtn(w, 8, 16) - w).abs().max() < (wo.rtn(w, 3, 16) - w).abs().max()


# --- GPTQ-style and AWQ-style against RTN on the same calibration inputs ----------------------------------------

def test_calibration_records_each_input_once_and_shares_it(tiny, stats):
    names = list(slm.decoder_linears(tiny))
    assert len(names) == 2 * 7 and set(stats) == set(names)
    block = "model.layers.0"
    assert stats[f"{block}.self_attn.q_proj"] is stats[f"{block}.self_attn.v_proj"]
    assert stats[f"{block}.mlp.gate_proj"] is stats[f"{block}.mlp.up_proj"]
    assert stats[f"{block}.self_attn.o_proj"] is not stats[f"{block}.self_attn.q_proj"]
    s = stats[f"{block}.mlp.down_proj"]
    assert s.H.shape == (128, 128) and s.tokens == 8 * 64 and s.sample.shape == (512, 128)
    torch.testing.assert_close(s.H, s.sample.T @ s.sample / len(s.sample), rtol=1e-4, atol=1e-6)
    assert torch.equal(s.H, s.H.T) and s.upper.numel() == 128 * 129 // 2  # kept: the upper triangle only


def test_calibration_sample_is_every_stride_th_token_across_passes(tiny, calib_ids):
    """keep=48 of 512 tokens: stride 10, which does not divide a pass (3 x 64 tokens), so the offsets carry over."""
    name = "model.layers.1.mlp.down_proj"
    seen = []
    handle = tiny.get_submodule(name).register_forward_pre_hook(lambda m, a: seen.append(a[0].reshape(-1, 128)))
    try:
        with torch.inference_mode():
            for start in range(0, len(calib_ids), 3):
                tiny(input_ids=calib_ids[start:start + 3], use_cache=False)
    finally:
        handle.remove()
    s = calibration.calibration_stats(tiny, calib_ids, keep=48, batch_size=3)[name]
    stride = calib_ids.numel() // 48
    torch.testing.assert_close(s.sample, torch.cat(seen)[::stride][:48], rtol=0, atol=1e-6)


def test_input_stats_keep_the_upper_triangle_and_give_h_back():
    torch.manual_seed(0)
    x = torch.randn(50, 12)
    H = x.T @ x / 50
    H = (H + H.T) / 2  # exactly symmetric, as H is
    s = calibration.InputStats.of(H, x.abs().mean(0), x[:4], 50)
    assert torch.equal(s.H, H) and s.upper.numel() == 12 * 13 // 2
    assert torch.equal(wo.hessian_factor(s.H), wo.hessian_factor(H))


@pytest.mark.parametrize("bits", [3, 4])
def test_gptq_gives_lower_layer_output_error_than_rtn(tiny, stats, bits):
    for name, layer in slm.decoder_linears(tiny).items():
        w, H = layer.weight.detach(), stats[name].H
        assert _h_error(w, wo.gptq(w, H, bits, 32), H) < _h_error(w, wo.rtn(w, bits, 32), H), name


def _gptq_plain(w, H, bits, group):
    """GPTQ without lazy batches: after every column, all later columns are corrected at once."""
    W, U, Q = w.clone().float(), wo.hessian_factor(H), torch.zeros_like(w)
    for i in range(W.shape[1]):
        if i % group == 0:
            scale, offset = wo.group_params(W[:, i:i + group], bits, group)
        s, lo = scale[:, 0], offset[:, 0]
        Q[:, i] = lo + torch.clamp(torch.round((W[:, i] - lo) / s), 0, 2 ** bits - 1) * s
        W[:, i + 1:] -= ((W[:, i] - Q[:, i]) / U[i, i])[:, None] * U[i, i + 1:][None, :]
    return Q


def test_gptq_group_by_group_updates_give_the_plain_algorithms_result(tiny, stats):
    name = "model.layers.1.mlp.down_proj"
    w, H = tiny.get_submodule(name).weight.detach(), stats[name].H
    fast, plain = wo.gptq(w, H, 3, 32), _gptq_plain(w, H, 3, 32)
    assert (fast == plain).float().mean() > 0.99  # float rounding may flip a rare tie, nothing more
    assert _h_error(w, fast, H) == pytest.approx(_h_error(w, plain, H), rel=0.02)


def test_one_gptq_column_step_corrects_the_rest_of_its_group():
    torch.manual_seed(0)
    W, U = torch.randn(4, 8), torch.linalg.cholesky(torch.eye(8) + 0.3, upper=True)
    scale, offset = torch.full((4,), 0.5), torch.full((4,), -2.0)
    before = W.clone()
    q, rest = wo.gptq_column(W[:, 0], W[:, 1:4], U[0, 0:4], scale, offset, 3)
    torch.testing.assert_close(q, -2.0 + torch.clamp(torch.round((before[:, 0] + 2.0) / 0.5), 0, 7) * 0.5)
    err = (before[:, 0] - q) / U[0, 0]
    torch.testing.assert_close(rest, before[:, 1:4] - err[:, None] * U[0, 1:4])
    assert torch.equal(W, before)  # the step returns new tensors; gptq writes them back


def test_gptq_runs_a_given_column_step():
    torch.manual_seed(0)
    w, x = torch.randn(16, 64), torch.randn(256, 64)
    H = x.T @ x / len(x)
    calls = []

    def counted(*args):
        calls.append(1)
        return wo.gptq_column(*args)

    assert torch.equal(wo.gptq(w, H, 3, 32, step=counted), wo.gptq(w, H, 3, 32)) and len(calls) == 64


@pytest.mark.parametrize("bits", [3, 4])
def test_awq_error_is_at_most_rtn_error(tiny, stats, bits):
    for name, layer in slm.decoder_linears(tiny).items():
        w, s = layer.weight.detach(), stats[name]
        e_awq = wo.output_error(w, wo.awq(w, s.absmean, s.sample, bits, 32), s.sample)
        assert e_awq <= wo.output_error(w, wo.rtn(w, bits, 32), s.sample) * (1 + 1e-6), name


def test_awq_alpha_zero_is_rtn():
    torch.manual_seed(0)
    w, x = torch.randn(16, 32), torch.randn(40, 32)
    s, alpha = wo.awq_scales(w, x.abs().mean(0), x, 4, 16, wo.rtn, grid=1)
    if alpha == 0:
        torch.testing.assert_close(s, torch.ones(32))
    assert 0 <= alpha <= 1


@pytest.mark.parametrize("method", quantized.METHODS)
def test_quantize_model_returns_a_copy_and_leaves_the_input_unchanged(tiny, stats, method):
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    q = quantized.quantize_model(tiny, method, 4, 32, stats=stats)
    assert q is not tiny and q.weightonly == {"method": method, "bits": 4, "group_size": 32, "store": "float"}
    for k, v in tiny.state_dict().items():
        assert torch.equal(v, before[k]), k
    changed = [n for n, layer in slm.decoder_linears(q).items()
               if not torch.equal(layer.weight, tiny.get_submodule(n).weight)]
    assert len(changed) == 14
    assert torch.equal(q.lm_head.weight, tiny.lm_head.weight)  # the head stays float


@pytest.mark.parametrize("method", quantized.METHODS)
def test_codes_compute_exactly_what_the_float_weights_compute(tiny, stats, method):
    """store="codes" keeps uint8 codes and group grids, and rebuilds the very float weights at every call."""
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    fl = quantized.quantize_model(tiny, method, 3, 32, stats=stats, grid=4)
    co = quantized.quantize_model(tiny, method, 3, 32, stats=stats, grid=4, store="codes")
    assert all(torch.equal(v, before[k]) for k, v in tiny.state_dict().items())  # the input is left unchanged
    assert co.weightonly["store"] == "codes"
    for name, layer in slm.decoder_linears(fl).items():
        kept = co.get_submodule(name)
        assert isinstance(kept, quantized.GroupLinear) and kept.codes.dtype == torch.uint8, name
        assert int(kept.codes.max()) <= 7 and torch.equal(kept.weight, layer.weight), name
        assert (kept.in_scale is not None) == (method == "awq-per-linear"), name
    x = torch.randint(0, 256, (2, 24))
    assert torch.equal(co(input_ids=x).logits, fl(input_ids=x).logits)


def test_codes_take_under_a_third_of_the_float_weights_memory(tiny, stats):
    co = quantized.quantize_model(tiny, "rtn", 4, 32, store="codes")
    layers = {n: co.get_submodule(n) for n in slm.decoder_linears(tiny)}
    held = sum(t.numel() * t.element_size() for m in layers.values() for t in m.buffers())
    assert held < 0.32 * quantized.float_bytes(tiny)  # 1 byte per code + two float32 numbers per 32 codes


def test_quantize_model_refuses_a_bad_store_and_a_model_already_kept_as_codes(tiny):
    with pytest.raises(ValueError, match="store must be one of"):
        quantized.quantize_model(tiny, "rtn", 4, 32, store="int4")
    with pytest.raises(ValueError, match="already quantized"):
        quantized.quantize_model(quantized.quantize_model(tiny, "rtn", 4, 32, store="codes"), "rtn", 4, 32)


def _returned_models(tiny, stats) -> dict:
    """name -> (input, function making a model from it), for every public function of labkit.lm returning a model."""
    made = {f"quantize_model {m} {s}": lambda m=m, s=s: quantized.quantize_model(tiny, m, 3, 32, stats=stats, grid=2,
                                                                                  store=s)
            for m in quantized.METHODS for s in quantized.STORES}
    made |= {"map_weights": lambda: quantized.map_weights(tiny, torch.round),
             "int4_kernel": lambda: kernels.int4_kernel(tiny), "bf16": lambda: generation.bf16(tiny),
             "dynamic int8": lambda: dynamic_int8(tiny, "all")}
    made |= {f"kernel {name}": make for name, make in kernels.kernel_makers(tiny).items()}
    bf = generation.bf16(tiny)
    return {name: (tiny, make) for name, make in made.items()} | {"bf16 of bf16": (bf, lambda: generation.bf16(bf))}


def test_every_returned_model_can_be_written_without_changing_its_input(tiny, stats):
    """A returned model shares no tensor with its input: writing into all of it leaves the input as it was."""
    for name, (source, make) in _returned_models(tiny, stats).items():
        before = {k: v.clone() for k, v in source.state_dict().items()}
        out = make()
        assert out is not source, name
        with torch.no_grad():
            for t in list(out.parameters()) + list(out.buffers()):
                if t.is_floating_point():
                    t.add_(1.0)
        assert all(torch.equal(v, before[k]) for k, v in source.state_dict().items()), name


def test_every_kernel_maker_leaves_the_input_unchanged(tiny):
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    for name, make in kernels.kernel_makers(tiny).items():
        m, status = kernels.try_kernel(make)
        assert status == "ran" and m is not tiny, name
        assert all(torch.equal(v, before[k]) and v.dtype == before[k].dtype for k, v in tiny.state_dict().items()), name


def test_quantize_model_inplace_changes_the_model():
    m = slm.tiny_llama(seed=3)
    w = m.model.layers[0].mlp.down_proj.weight.clone()
    assert quantized.quantize_model(m, "rtn", 3, 32, inplace=True) is m
    assert not torch.equal(m.model.layers[0].mlp.down_proj.weight, w)


def test_quantize_model_calibrates_from_text(tiny):
    q = quantized.quantize_model(tiny, "gptq", 4, 32, calib_texts=[TEXT], tokenizer=ByteTokenizer())
    x = torch.randint(0, 256, (1, 32))
    assert torch.isfinite(q(input_ids=x).logits).all()


# --- bytes -------------------------------------------------------------------------------------------------------

def test_4bit_group32_is_at_least_6x_smaller_than_fp32(tiny):
    assert quantized.float_bytes(tiny) / quantized.packed_bytes(tiny, 4, 32) >= 6
    smollm_mlp = nn.Linear(576, 1536, bias=False)  # SmolLM2-135M's shapes
    assert quantized.packed_bytes(smollm_mlp, 4, 32) == 1536 * 576 // 2 + 1536 * 18 * (2 + 2)  # codes, scales, offsets
    assert quantized.float_bytes(smollm_mlp) / quantized.packed_bytes(smollm_mlp, 4, 32) >= 6
    assert quantized.packed_bytes(tiny, 4, 32, channel_scales=True) > quantized.packed_bytes(tiny, 4, 32)


def test_int4_kernel_runs_the_rtn_weights():
    torch.manual_seed(0)
    lin = nn.Linear(128, 96)
    x = torch.randn(5, 128)
    ref = x @ wo.rtn(lin.weight.detach(), 4, 32).T + lin.bias
    torch.testing.assert_close(kernels.Int4Linear(lin, 32)(x), ref, rtol=1e-4, atol=1e-4)


def test_int4_kernel_model_is_smaller_and_agrees_with_rtn(tiny):
    k, r = kernels.int4_kernel(tiny, 32), quantized.quantize_model(tiny, "rtn", 4, 32)
    x = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(k(input_ids=x).logits, r(input_ids=x).logits, rtol=1e-3, atol=1e-3)
    assert kernels.buffer_bytes(k) < kernels.buffer_bytes(tiny) / 4


# --- bad input ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [1, 9, 0, 4.0, True, "4"])
def test_unsupported_bits_are_refused(tiny, bits):
    w = torch.randn(8, 32)
    with pytest.raises(ValueError, match="bits"):
        wo.rtn(w, bits, 16)
    with pytest.raises(ValueError, match="bits"):
        quantized.quantize_model(tiny, "rtn", bits, 32)
    with pytest.raises(ValueError, match="bits"):
        quantized.packed_bytes(tiny, bits, 32)


@pytest.mark.parametrize("group", [48, 7, 0, -32, 32.0])
def test_group_size_must_divide_the_layer(tiny, stats, group):
    with pytest.raises(ValueError, match="group_size"):
        quantized.quantize_model(tiny, "rtn", 4, group)
    with pytest.raises(ValueError, match="group_size"):
        wo.gptq(torch.randn(8, 64), torch.eye(64), 4, group)
    with pytest.raises(ValueError, match="group_size"):
        quantized.packed_bytes(tiny, 4, group)


@pytest.mark.parametrize("texts", ["", "   ", [], ["", " \n"]])
@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_empty_calibration_text_is_refused(tiny, texts, method):
    with pytest.raises(ValueError, match="calibration text is empty"):
        quantized.quantize_model(tiny, method, 4, 32, calib_texts=texts, tokenizer=ByteTokenizer())


def test_gptq_and_awq_without_calibration_say_what_to_pass(tiny):
    for method in ("gptq", "awq"):
        with pytest.raises(ValueError, match="needs calibration"):
            quantized.quantize_model(tiny, method, 4, 32, tokenizer=ByteTokenizer())
        with pytest.raises(ValueError, match="needs calibration"):
            quantized.point(tiny, ByteTokenizer(), method, 3, 32)


def test_unknown_method_and_bad_hessian_are_refused(tiny):
    with pytest.raises(ValueError, match="method"):
        quantized.quantize_model(tiny, "hqq", 4, 32)
    with pytest.raises(ValueError, match="H must be"):
        wo.gptq(torch.randn(8, 64), torch.eye(32), 4, 32)


def test_a_model_that_is_not_a_causal_lm_is_refused(tiny):
    from transformers import LlamaForSequenceClassification


    seq = LlamaForSequenceClassification(tiny.config)
    for model in [parts.tiny_classifier("BERT"), seq, nn.Sequential(nn.Linear(4, 4))]:
        with pytest.raises(ValueError, match="not a causal language model"):
            quantized.quantize_model(model, "rtn", 4, 32)
        with pytest.raises(ValueError, match="not a causal language model"):
            perplexity(model, ByteTokenizer(), TEXT, tokens=128, chunk=64)


def test_map_weights_runs_a_function_on_every_decoder_weight_of_a_copy(tiny):
    before = {n: l.weight.clone() for n, l in slm.decoder_linears(tiny).items()}
    out = quantized.map_weights(tiny, lambda w: wo.rtn(w, 3, 32, half=False))
    for name, layer in slm.decoder_linears(out).items():
        torch.testing.assert_close(layer.weight, wo.rtn(before[name], 3, 32, half=False), rtol=0, atol=0)
        assert torch.equal(slm.decoder_linears(tiny)[name].weight, before[name])  # the input model is unchanged
    with pytest.raises(ValueError, match="shape"):
        quantized.map_weights(tiny, lambda w: w[:, :4])


def test_rtn_keeps_float32_scales_when_asked():
    torch.manual_seed(0)
    w = torch.randn(8, 64) * 0.013 + 0.0007
    scale16, lo16 = wo.group_params(w, 3, 32)
    scale32, lo32 = wo.group_params(w, 3, 32, half=False)
    assert torch.equal(lo16, lo32.half().float()) and torch.equal(scale16, scale16.half().float())
    assert not torch.equal(scale32, scale32.half().float())  # float32 scales, not rounded to float16
    torch.testing.assert_close(wo.rtn(w, 3, 32, half=False).reshape(-1, 32).amin(1), w.reshape(-1, 32).amin(1))


def test_a_slider_point_scores_a_quantized_copy_against_the_base(tiny, stats):
    tok = ByteTokenizer()
    base = perplexity(tiny, tok, tokens=128, chunk=32)  # the kit's review text, one byte per token
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    p = quantized.point(tiny, tok, "gptq", 3, 32, stats=stats, base=base, grid=2)
    assert isinstance(p, LMPoint) and p.settings == {"method": "gptq", "bits": 3, "group_size": 32}
    assert p.size_bytes == quantized.packed_bytes(tiny, 3, 32) and p.float_bytes == quantized.float_bytes(tiny)
    assert p.ratio.lo <= p.ratio.ratio <= p.ratio.hi and math.isfinite(p.perplexity.ppl)
    assert p.perplexity.chunks == base.chunks and "perplexity" in p.readout() and "smaller than fp32" in str(p)
    row = p.row()
    assert row["method"] == "gptq" and row["x_smaller"] > 1 and row["ppl_lo"] <= row["ppl"] <= row["ppl_hi"]
    assert all(torch.equal(v, before[k]) for k, v in tiny.state_dict().items())


def test_kernels_are_tried_one_at_a_time_and_failures_keep_their_error(tiny):
    makers = kernels.kernel_makers(tiny)
    assert {"bf16", "dynamic int8 (torch.ao)"} <= set(makers)
    model, status = kernels.try_kernel(lambda: (_ for _ in ()).throw(RuntimeError("no kernel for this CPU")))
    assert model is None and status == "failed: RuntimeError: no kernel for this CPU"
    chosen = {"bf16": makers["bf16"], "broken": lambda: 1 / 0}
    base = perplexity(tiny, ByteTokenizer(), TEXT, tokens=128, chunk=32)
    table = kernels.kernel_speeds(tiny, ByteTokenizer(), chosen, base=base, prompt_tokens=16, new_tokens=2, warmup=0,
                                  repeats=1)
    assert table.loc["bf16", "status"] == "ran" and table.loc["bf16", "decode_x"] > 0
    assert table.loc["bf16", "decode_MB"] == pytest.approx(table.loc["bf16", "fp32_decode_MB"] / 2)  # head too
    assert table.loc["bf16", "perplexity [95% CI]"].count("[") == 1 and table.loc["bf16", "x fp32's [95% CI]"][0] == "x"
    assert 0 <= table.loc["bf16", "KL nats/token"] < 0.05 and 90 <= table.loc["bf16", "top-1 agreement %"] <= 100
    assert table.loc["bf16", "perplexity [95% CI]"].startswith(f"{table.loc['bf16', 'ppl']:.2f} [")
    assert table.loc["broken", "status"].startswith("failed: ZeroDivisionError")


