"""W8A8 (per-channel int8 weights, per-token int8 activations, float head) and SmoothQuant, on the tiny Llama."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from labkit.lm import kernels, slm, w8a8
from labkit.lm.perplexity import agreement, perplexity
from labkit.lm.slm import ByteTokenizer

TEXT = " ".join(f"review {i}: the film was {'good' if i % 3 else 'dull'} and {'long' if i % 2 else 'short'}."
                for i in range(60))


@pytest.fixture(scope="module")
def tiny():
    return slm.tiny_llama(seed=0)


@pytest.fixture(scope="module")
def absmax(tiny):
    torch.manual_seed(1)
    return w8a8.activation_absmax(tiny, torch.randint(0, 256, (4, 64)))


def test_weights_get_one_scale_per_output_channel():
    lin = nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -2.0, 0.5, 0.0], [0.1, 0.2, -0.3, 0.4], [-127.0, 1.0, 2.0, 3.0]]))
    q = w8a8.W8A8Linear(lin)
    assert q.weight_codes.dtype == torch.int8 and q.weight_codes.shape == (3, 4)
    # each row's largest |w| lands on code +-127
    assert torch.allclose(q.weight_scale[0], torch.tensor([2.0, 0.4, 127.0]) / 127)
    assert q.weight_codes[0].tolist() == [64, -127, 32, 0] and q.weight_codes[2, 0] == -127


def test_activations_get_one_scale_per_token():
    x = torch.tensor([[1.0, -4.0, 2.0], [100.0, 0.5, -50.0]])
    codes, scale = w8a8.quantize_per_token(x)
    assert codes.dtype == torch.int8 and scale.shape == (2, 1)
    assert torch.allclose(scale[:, 0], torch.tensor([4.0, 100.0]) / 127)
    assert codes.tolist() == [[32, -127, 64], [127, 1, -64]]  # 0.5 keeps a code of its own on the second grid


def test_w8a8_linear_matches_its_integer_arithmetic_and_stays_close_to_float():
    torch.manual_seed(0)
    lin = nn.Linear(64, 32)
    x = torch.randn(2, 5, 64)
    q = w8a8.W8A8Linear(lin)
    codes, xs = w8a8.quantize_per_token(x.reshape(-1, 64))
    expected = (codes.double() @ q.weight_codes.double().T) * xs.double() * q.weight_scale.double() + lin.bias.double()
    assert torch.allclose(q(x).reshape(-1, 32).double(), expected, atol=1e-5)
    assert (q(x) - lin(x)).abs().max() < 0.02 * lin(x).abs().max()


def test_w8a8_model_keeps_the_head_in_float_and_shares_nothing(tiny):
    q = w8a8.w8a8(tiny)
    layers = slm.decoder_linears(tiny)
    assert all(isinstance(q.get_submodule(n), w8a8.W8A8Linear) for n in layers)
    assert type(q.lm_head) is nn.Linear and q.lm_head.weight.dtype == torch.float32
    assert all(type(m) is nn.Linear for m in slm.decoder_linears(tiny).values())  # the input is unchanged
    ours = {t.data_ptr() for t in q.state_dict().values()}
    assert not ours & {t.data_ptr() for t in tiny.state_dict().values()}
    a = agreement(q, tiny, ByteTokenizer(), TEXT, tokens=512, chunk=64)
    assert a.top1 > 0.9 and a.kl < 0.01


def test_smoothing_factors_follow_the_formula():
    act = torch.tensor([4.0, 1.0, 0.0])
    w1, w2 = torch.tensor([[1.0, -2.0, 0.5]]), torch.tensor([[-4.0, 1.0, 0.25]])
    s = w8a8.smoothing_factors(act, [w1, w2], alpha=0.5)
    # max|W_j| over both layers: 4, 2, 0.5; an input never active is clamped to 1e-5 as smooth_lm does
    assert torch.allclose(s, torch.tensor([(4 ** 0.5) / 4 ** 0.5, 1 / 2 ** 0.5, 1e-5 ** 0.5 / 0.5 ** 0.5]))
    assert torch.allclose(w8a8.smoothing_factors(act, [w1, w2], 1.0), torch.tensor([4.0, 1.0, 1e-5]))
    with pytest.raises(ValueError, match="alpha"):
        w8a8.smoothing_factors(act, [w1], 1.5)


def test_smoothing_folded_into_the_norm_leaves_the_float_model_unchanged(tiny, absmax):
    ids = torch.randint(0, 256, (1, 40))
    with torch.inference_mode():
        before = tiny(input_ids=ids).logits
        for alpha in (0.0, 0.5, 0.9):
            smoothed = w8a8.smooth(tiny, absmax, alpha)
            assert torch.allclose(smoothed(input_ids=ids).logits, before, atol=1e-4)
    s = w8a8.smoothing_factors(absmax["model.layers.0.self_attn.q_proj"],
                               [tiny.get_submodule(f"model.layers.0.self_attn.{p}_proj").weight for p in "qkv"], 0.5)
    smoothed = w8a8.smooth(tiny, absmax, 0.5)
    assert torch.allclose(smoothed.model.layers[0].input_layernorm.weight,
                          tiny.model.layers[0].input_layernorm.weight / s)
    assert torch.allclose(smoothed.model.layers[0].self_attn.k_proj.weight, tiny.model.layers[0].self_attn.k_proj.weight * s)
    # o_proj and down_proj read no norm: left as they were
    assert torch.equal(smoothed.model.layers[0].mlp.down_proj.weight, tiny.model.layers[0].mlp.down_proj.weight)


def test_smoothed_w8a8_is_w8a8_of_the_smoothed_float_model_without_writing_the_input(tiny, absmax):
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    folded = w8a8.w8a8(tiny, act_absmax=absmax, alpha=0.5)  # layer by layer, no float copy
    reference = w8a8.w8a8(w8a8.smooth(tiny, absmax, 0.5), inplace=True)
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(folded(input_ids=ids).logits, reference(input_ids=ids).logits)
    assert all(torch.equal(v, before[k]) for k, v in tiny.state_dict().items())
    norm = folded.model.layers[0].input_layernorm.weight
    assert not any(norm.data_ptr() == t.data_ptr() for t in tiny.parameters())
    assert not isinstance(folded.model.layers[0].self_attn.o_proj, nn.Linear)  # every decoder layer is W8A8
    with pytest.raises(ValueError, match="act_absmax"):
        w8a8.w8a8(tiny, alpha=0.5)  # an alpha without the statistic would be ignored: refused instead


def test_activation_absmax_is_shared_by_layers_reading_one_input(tiny, absmax):
    assert set(absmax) == set(slm.decoder_linears(tiny))
    assert absmax["model.layers.1.self_attn.k_proj"] is absmax["model.layers.1.self_attn.q_proj"]
    assert absmax["model.layers.1.mlp.down_proj"].shape == (128,)
    assert len(w8a8.outlier_ratio(absmax)) == 2 * 4  # q/k/v, o, gate/up, down in each of 2 blocks
    with pytest.raises(ValueError, match="activation_absmax"):
        w8a8.smooth(tiny, {}, 0.5)


def test_alpha_is_searched_on_validation_text(tiny, absmax, monkeypatch):
    asked = []
    monkeypatch.setattr(w8a8, "eval_text", lambda split="test": asked.append(split) or TEXT)
    best, found = w8a8.search_alpha(tiny, ByteTokenizer(), absmax, alphas=(0.25, 0.75), tokens=256, chunk=64)
    assert asked == ["val"] and set(found) == {0.25, 0.75} and best == min(found, key=lambda a: found[a].ppl)


def test_decode_bytes_count_the_head_and_the_scales(tiny):
    hidden, inter, vocab, kv = 64, 128, 256, 32
    linear = hidden * hidden * 2 + hidden * kv * 2 + 3 * hidden * inter  # q, o; k, v; gate, up, down
    norms = 2 * (2 * hidden) + hidden  # two per block, and the final one
    head = vocab * hidden
    assert kernels.decode_bytes(tiny) == 4 * (2 * linear + norms + head)
    # int4 g32: half a byte per weight, a float32 scale and offset per group; the fp32 head read in full
    assert kernels.decode_bytes(kernels.int4_kernel(tiny, 32)) == 2 * (linear // 2 + linear // 32 * 8) + 4 * (
        norms + head)
    # W8A8: a byte per weight, a float32 scale per output row; the head stays float32
    rows = 2 * hidden + 2 * kv + 2 * inter + hidden
    assert kernels.decode_bytes(w8a8.w8a8(tiny)) == 2 * (linear + 4 * rows) + 4 * (norms + head)


def test_perplexity_of_w8a8_is_close_to_float(tiny):
    base = perplexity(tiny, ByteTokenizer(), TEXT, tokens=512, chunk=64)
    r = perplexity(w8a8.w8a8(tiny), ByteTokenizer(), TEXT, tokens=512, chunk=64)
    assert r.ratio(base).ratio == pytest.approx(1.0, abs=0.02)


def test_the_ablations_put_one_of_torchs_choices_back(tiny):
    x = torch.tensor([[1.0, -4.0, 2.0], [100.0, 0.5, -50.0]])
    codes, scale = w8a8.quantize_per_token(x, "tensor")
    assert torch.allclose(scale[:, 0], torch.tensor([100.0, 100.0]) / 127)  # one grid for both tokens
    assert codes.tolist() == [[1, -5, 3], [127, 1, -64]]
    with pytest.raises(ValueError, match="granularity"):
        w8a8.w8a8(tiny, activations="channel")
    lin = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -2.0, 0.5, 0.0], [0.1, 0.2, -0.3, 127.0]]))
    per_tensor = w8a8.W8A8Linear(lin, weights="tensor")
    assert torch.allclose(per_tensor.weight_scale, torch.tensor([[1.0, 1.0]]))  # one scale, 127 / 127
    assert per_tensor.weight_codes[0].tolist() == [1, -2, 0, 0]  # the small row keeps three levels
    with pytest.raises(ValueError, match="weights"):
        w8a8.w8a8(tiny, weights="group")
    q = w8a8.w8a8(tiny, head=True)
    assert isinstance(q.lm_head, w8a8.W8A8Linear) and type(tiny.lm_head) is nn.Linear
    assert q.model.embed_tokens.weight.dtype == torch.float32  # the table the head was tied to stays float
    assert torch.equal(q.model.embed_tokens.weight, tiny.model.embed_tokens.weight)
