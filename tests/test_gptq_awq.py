"""GPTQ and AWQ as their reference code runs them: IST-DASLab/gptq's `fasterquant` (act_order, static_groups,
sequential calibration) and mit-han-lab/llm-awq's block-wise scale search, folding and auto_clip.

The references are transcribed below line by line on small tensors (their quantizer swapped for labkit's grid),
and labkit's functions must give their results.
"""

import copy

import pytest
import torch

from labkit.core import parts
from labkit.lm import awq, calibration, quantized, slm
from labkit.lm import weightonly as wo


def fasterquant(W, H, bits, groupsize, blocksize=128, percdamp=.01, actorder=False, static_groups=False):
    """IST-DASLab/gptq gptq.py GPTQ.fasterquant, with `Quantizer.find_params` + `quantize` replaced by labkit's
    min-max offset grid (group_params) and the Cholesky steps in float64 as labkit's hessian_factor runs them."""
    class Quantizer:
        def find_params(self, x):
            self.scale, self.zero = wo.group_params(x, bits, x.shape[1])

    W, H = W.clone().float(), H.clone()
    columns = W.shape[1]
    quantizer = Quantizer()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    if static_groups:
        groups = []
        for i in range(0, columns, groupsize):
            quantizer = copy.deepcopy(quantizer)
            quantizer.find_params(W[:, i:(i + groupsize)])
            groups.append(quantizer)
    if actorder:
        perm = torch.argsort(torch.diag(H), descending=True)
        W = W[:, perm]
        H = H[perm][:, perm]
        invperm = torch.argsort(perm)
    Q = torch.zeros_like(W)
    H = H.double()
    damp = percdamp * torch.mean(torch.diag(H))
    diag = torch.arange(columns)
    H[diag, diag] += damp
    H = torch.linalg.cholesky(H)
    H = torch.cholesky_inverse(H)
    Hinv = torch.linalg.cholesky(H, upper=True).float()
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            if not static_groups:
                if (i1 + i) % groupsize == 0:
                    quantizer.find_params(W[:, (i1 + i):(i1 + i + groupsize)])
            else:
                idx = i1 + i
                if actorder:
                    idx = perm[idx]
                quantizer = groups[idx // groupsize]
            codes = torch.clamp(torch.round((w - quantizer.zero[:, 0]) / quantizer.scale[:, 0]), 0, 2 ** bits - 1)
            q = codes * quantizer.scale[:, 0] + quantizer.zero[:, 0]
            Q1[:, i] = q
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        Q[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    if actorder:
        Q = Q[:, invperm]
    return Q


def _weight_and_hessian(out=48, n_in=256, tokens=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(tokens, n_in, generator=g) * torch.rand(n_in, generator=g) * 3  # uneven channels: act_order matters
    X[:, 5] = 0  # one input never seen: a dead column
    return torch.randn(out, n_in, generator=g), X.T @ X / tokens


@pytest.mark.parametrize("act_order,static_groups", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("blocksize", [None, 128])
def test_gptq_quantize_gives_fasterquants_weights(act_order, static_groups, blocksize):
    W, H = _weight_and_hessian()
    mine, scale, offset = wo.gptq_quantize(W, H, 3, 32, act_order=act_order, static_groups=static_groups,
                                           blocksize=blocksize)
    theirs = fasterquant(W, H, 3, 32, blocksize=blocksize or 32, actorder=act_order, static_groups=static_groups)
    assert torch.allclose(mine, theirs, atol=1e-5)
    if act_order and not static_groups:
        assert scale is None and offset is None  # groups of the new order: no contiguous grid describes them
    else:  # every weight sits on its own group's grid, in the weight's column order
        assert torch.allclose(wo.dequantize(wo.quantize_codes(mine, scale, offset, 3, 32), scale, offset, 32), mine,
                              atol=1e-5)


def test_gptq_quantize_at_blocksize_group_is_the_notebooks_column_loop():
    W, H = _weight_and_hessian(seed=1)
    H[5, 5] = 1e-3  # no dead column: the notebook's loop keeps those weights, fasterquant zeroes them
    Q, scale, offset = wo.gptq_quantize(W, H, 4, 32)
    Q2, scale2, offset2 = wo.gptq_columns(W, wo.hessian_factor(H), 4, 32, wo.gptq_column)
    assert torch.equal(Q, Q2) and torch.equal(scale, scale2) and torch.equal(offset, offset2)


def test_act_order_lowers_the_output_error_on_uneven_inputs():
    W, H = _weight_and_hessian(seed=2)
    err = {}
    for act in (False, True):
        Q = wo.gptq_quantize(W, H, 3, 32, act_order=act, static_groups=True)[0]
        d = (Q - W).double()
        err[act] = float(torch.einsum("oi,ij,oj->", d, H.double(), d))
    assert err[True] < err[False]


def test_gptq_quantize_refuses_a_bad_blocksize():
    W, H = _weight_and_hessian()
    with pytest.raises(ValueError, match="blocksize"):
        wo.gptq_quantize(W, H, 4, 32, blocksize=0)


# --- sequential calibration ------------------------------------------------------------------------------------

def _llama(kv_heads=2, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=kv_heads, vocab_size=256, max_position_embeddings=512)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 256, (6, 48), generator=torch.Generator().manual_seed(3))


def _inputs_of(model, name, ids):
    seen = []
    handle = model.get_submodule(name).register_forward_pre_hook(lambda m, a: seen.append(a[0].reshape(-1, 64)))
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    handle.remove()
    return torch.cat(seen).float()


def test_sequential_gptq_calibrates_each_layer_on_the_quantized_layers_before_it(ids):
    model = _llama()
    stats = calibration.calibration_stats(model, ids)
    q = quantized.quantize_model(model, "gptq", 3, 32, stats=stats)
    # by hand, as llama.py does: q/k/v on the float inputs, then o_proj on what the quantized q/k/v give it
    hand = parts.clone(model)
    X = _inputs_of(hand, "model.layers.0.self_attn.q_proj", ids)
    for n in ("q_proj", "k_proj", "v_proj"):
        layer = hand.get_submodule(f"model.layers.0.self_attn.{n}")
        layer.weight.data = wo.gptq_quantize(layer.weight, X.T @ X / len(X), 3, 32)[0]
        assert torch.equal(layer.weight, q.get_submodule(f"model.layers.0.self_attn.{n}").weight)
    X = _inputs_of(hand, "model.layers.0.self_attn.o_proj", ids)
    o = wo.gptq_quantize(hand.get_submodule("model.layers.0.self_attn.o_proj").weight, X.T @ X / len(X), 3, 32)[0]
    assert torch.allclose(o, q.get_submodule("model.layers.0.self_attn.o_proj").weight, atol=1e-6)
    one_pass = quantized.quantize_model(model, "gptq-one-pass", 3, 32, stats=stats)
    assert not torch.equal(one_pass.get_submodule("model.layers.1.mlp.down_proj").weight,
                           q.get_submodule("model.layers.1.mlp.down_proj").weight)


def test_gptq_options_reach_the_model_and_act_order_alone_cannot_be_kept_as_codes(ids):
    model = _llama()
    stats = calibration.calibration_stats(model, ids)
    plain = quantized.quantize_model(model, "gptq", 3, 32, stats=stats)
    ordered = quantized.quantize_model(model, "gptq", 3, 32, stats=stats, act_order=True, static_groups=True,
                                       store="codes")
    assert not torch.equal(plain.get_submodule("model.layers.0.mlp.down_proj").weight,
                           ordered.get_submodule("model.layers.0.mlp.down_proj").weight)
    with pytest.raises(ValueError, match="static_groups=True"):
        quantized.quantize_model(model, "gptq", 3, 32, stats=stats, act_order=True, store="codes")


def test_blockwise_methods_need_the_calibration_ids(ids):
    model = _llama()
    stats = dict(calibration.calibration_stats(model, ids))  # a plain dict: the ids are lost
    for method in ("gptq", "awq"):
        with pytest.raises(ValueError, match="calibration_stats"):
            quantized.quantize_model(model, method, 3, 32, stats=stats)
    quantized.quantize_model(model, "gptq-one-pass", 3, 32, stats=stats)  # the ablation reads the statistics only


# --- AWQ -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kv_heads", [2, 4])
def test_awq_scales_fold_into_the_layers_before_and_leave_the_float_model_unchanged(kv_heads, ids):
    model = _llama(kv_heads)
    folded = parts.clone(model)
    result = awq.awq_fold(folded, ids, 3, 32, grid=10, clip=False)
    # grouped-query attention (2 KV heads for 4 query heads): v_proj and o_proj differ in shape, o_proj is skipped
    assert (len(result.skipped) == 2) == (kv_heads == 2)
    before, after = dict(model.named_parameters()), dict(folded.named_parameters())
    for i in range(2):
        assert not torch.equal(before[f"model.layers.{i}.post_attention_layernorm.weight"],
                               after[f"model.layers.{i}.post_attention_layernorm.weight"])
    x = torch.randint(0, 256, (2, 40))
    with torch.no_grad():
        want, got = model(input_ids=x).logits, folded(input_ids=x).logits
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4)  # the same function, to rounding


def test_awqs_quantized_model_has_no_run_time_scale_multiply(ids):
    model = _llama()
    stats = calibration.calibration_stats(model, ids)
    q = quantized.quantize_model(model, "awq", 3, 32, stats=stats, grid=4, store="codes")
    rtn = quantized.quantize_model(model, "rtn", 3, 32, store="codes")
    assert [type(m) for m in q.modules()] == [type(m) for m in rtn.modules()]  # no module added anywhere
    assert all(not (m._forward_hooks or m._forward_pre_hooks) for m in q.modules())
    for name in slm.decoder_linears(model):
        assert q.get_submodule(name).in_scale is None, name  # a plain GroupLinear: codes, scale, offset
    norms = [n for n, _ in model.named_parameters() if "layernorm" in n]
    # the scales went into the norms (a group whose best alpha is 0 keeps its norm as it was)
    assert any(not torch.equal(q.get_parameter(n), model.get_parameter(n)) for n in norms)
    per_linear = quantized.quantize_model(model, "awq-per-linear", 3, 32, stats=stats, grid=4, store="codes")
    assert all(per_linear.get_submodule(n).in_scale is not None for n in slm.decoder_linears(model))


def _search_module_scale(block, linears2scale, x, w_quantize_func, n_grid):
    """llm-awq auto_scale.py `_search_module_scale`, as written there (x_max is get_act_scale(x); the reference
    runs it under torch.no_grad)."""
    org_out = block(x)
    x_max = x.abs().view(-1, x.shape[-1]).mean(0)
    best_error, best_ratio, best_scales = float("inf"), -1, None
    org_sd = {k: v.clone() for k, v in block.state_dict().items()}
    for ratio in range(n_grid):
        ratio = ratio * 1 / n_grid
        scales = x_max.pow(ratio).clamp(min=1e-4).view(-1)
        scales = scales / (scales.max() * scales.min()).sqrt()
        for fc in linears2scale:
            fc.weight.mul_(scales.view(1, -1))
            fc.weight.data = w_quantize_func(fc.weight.data) / (scales.view(1, -1))
        out = block(x)
        loss = (org_out - out).float().pow(2).mean().item()
        if loss < best_error:
            best_error, best_ratio, best_scales = loss, ratio, scales
        block.load_state_dict(org_sd)
    return best_scales.view(-1), best_ratio


def auto_clip_layer(w, input_feat, group_size, quantize, n_grid=20, max_shrink=0.5, n_sample_token=512):
    """llm-awq auto_clip.py `auto_clip_layer`, as written there (pseudo_quantize_tensor swapped for labkit's rtn)."""
    input_feat = input_feat.view(-1, input_feat.shape[-1])
    input_feat = input_feat.reshape(1, input_feat.shape[0], -1, group_size)
    input_feat = input_feat[:, 0::input_feat.shape[1] // n_sample_token]
    w = w.reshape(w.shape[0], 1, -1, group_size)
    oc_batch_size = 256 if w.shape[0] % 256 == 0 else 64
    w_all = w
    best_max_val_all = []
    for i_b in range(w.shape[0] // oc_batch_size):
        w = w_all[i_b * oc_batch_size:(i_b + 1) * oc_batch_size]
        org_max_val = w.abs().amax(dim=-1, keepdim=True)
        best_max_val = org_max_val.clone()
        min_errs = torch.ones_like(org_max_val) * 1e9
        org_out = (input_feat * w).sum(dim=-1)
        for i_s in range(int(max_shrink * n_grid)):
            max_val = org_max_val * (1 - i_s / n_grid)
            min_val = -max_val
            cur_w = torch.clamp(w, min_val, max_val)
            q_w = quantize(cur_w.reshape(len(w), -1)).reshape(cur_w.shape)
            cur_out = (input_feat * q_w).sum(dim=-1)
            err = (cur_out - org_out).pow(2).mean(dim=1).view(min_errs.shape)
            cur_best_idx = err < min_errs
            min_errs[cur_best_idx] = err[cur_best_idx]
            best_max_val[cur_best_idx] = max_val[cur_best_idx]
        best_max_val_all.append(best_max_val)
    return torch.cat(best_max_val_all, dim=0).squeeze(1)


@torch.no_grad()
def test_awqs_scale_search_and_auto_clip_are_llm_awqs():
    g = torch.Generator().manual_seed(4)
    layer = torch.nn.Linear(128, 64, bias=False)
    layer.weight.data = torch.randn(64, 128, generator=g)
    x = torch.randn(2, 300, 128, generator=g) * torch.linspace(0.1, 4, 128)
    quant = lambda w: wo.rtn(w, 3, 32)  # noqa: E731
    ref_layer = copy.deepcopy(layer)
    theirs, ratio = _search_module_scale(ref_layer, [ref_layer], x, quant, 10)
    absmean = x.abs().reshape(-1, 128).mean(0)
    mine, alpha = awq.search_scale(layer, [layer], [x], [{}], absmean, 3, 32, grid=10)
    assert alpha == ratio and torch.allclose(mine, theirs)
    assert torch.equal(layer.weight, ref_layer.weight)  # the search leaves the layer as it found it
    bound = awq.auto_clip(layer.weight, x, 3, 32, grid=20, rows=64)
    assert torch.allclose(bound, auto_clip_layer(layer.weight, x, 32, quant)[..., 0])
