import copy

import pandas as pd
import pytest
import torch
import torch.nn.utils.prune as tprune
from torch import nn

from labkit.core import measure, parts
from labkit.course import checks
from labkit.prune import masks, prune


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _inputs(tokenizer):
    return dict(tokenizer(["a quiet, lovely film", "dull and far too long"], padding=True, return_tensors="pt"))


# --- unstructured ---------------------------------------------------------------------------------

@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9])
def test_layer_scope_matches_torch_l1_unstructured(tiny_model, sparsity):
    pruned = prune.magnitude(tiny_model, sparsity, "layer")
    ref = copy.deepcopy(tiny_model)
    for name, layer in prune.prunable_linears(ref).items():
        tprune.l1_unstructured(layer, "weight", amount=sparsity)
    ours = prune.prunable_linears(pruned)
    for name, layer in prune.prunable_linears(ref).items():
        assert torch.equal(ours[name].weight != 0, layer.weight_mask.bool()), name
        assert int((ours[name].weight == 0).sum()) == round(sparsity * layer.weight.numel())


def _torch_global(model, sparsity):
    ref = copy.deepcopy(model)
    params = [(m, "weight") for m in prune.prunable_linears(ref).values()]
    tprune.global_unstructured(params, pruning_method=tprune.L1Unstructured, amount=sparsity)
    return ref


def test_global_scope_matches_torch_global_unstructured(tiny_model):
    pruned = prune.magnitude(tiny_model, 0.6, "global")
    ref = _torch_global(tiny_model, 0.6)
    for name, layer in prune.prunable_linears(ref).items():
        assert torch.equal(prune.prunable_linears(pruned)[name].weight != 0, layer.weight_mask.bool()), name
    counts = prune.sparsity_of(pruned)
    assert counts["zeros"] == round(0.6 * counts["total"])
    per_layer = prune.layer_sparsity(pruned)["sparsity"]
    assert per_layer.max() - per_layer.min() > 0.01  # global ranking prunes layers unevenly


def test_random_control_has_exact_counts_and_ignores_magnitude(tiny_model):
    pruned = prune.magnitude(tiny_model, 0.5, "layer", method="random", seed=1)
    again = prune.magnitude(tiny_model, 0.5, "layer", method="random", seed=1)
    by_mag = prune.magnitude(tiny_model, 0.5, "layer")
    for name, layer in prune.prunable_linears(pruned).items():
        assert int((layer.weight == 0).sum()) == round(0.5 * layer.weight.numel())
        assert torch.equal(layer.weight, prune.prunable_linears(again)[name].weight)
    assert not _same_state(pruned.state_dict(), by_mag.state_dict())


def test_input_is_never_mutated_unless_inplace(tiny_model):
    before = _state(tiny_model)
    out = prune.magnitude(tiny_model, 0.5, "global")
    assert out is not tiny_model and _same_state(before, tiny_model.state_dict())
    prune.structured(tiny_model, heads=0.5, ffn=0.5)
    prune.two_four(tiny_model)
    assert _same_state(before, tiny_model.state_dict())
    same = prune.magnitude(tiny_model, 0.5, inplace=True)
    assert same is tiny_model and prune.sparsity_of(tiny_model)["sparsity"] == pytest.approx(0.5, abs=1e-3)


def test_classifier_and_pooler_are_excluded_by_default(tiny_model):
    pruned = prune.magnitude(tiny_model, 0.9, "global")
    assert torch.equal(pruned.classifier.weight, tiny_model.classifier.weight)
    assert torch.equal(pruned.bert.pooler.dense.weight, tiny_model.bert.pooler.dense.weight)
    with_head = prune.magnitude(tiny_model, 0.5, "layer", include_head=True)
    assert int((with_head.classifier.weight == 0).sum()) == round(0.5 * tiny_model.classifier.weight.numel())


def _kth_mask(w, sparsity):
    return w.abs() > torch.kthvalue(w.abs().flatten(), round(sparsity * w.numel())).values


def test_mask_fn_prunes_like_the_built_in_layer_ranking(tiny_model):
    before = _state(tiny_model)
    ours = prune.magnitude(tiny_model, 0.5, "layer", mask_fn=_kth_mask)
    ref = prune.magnitude(tiny_model, 0.5, "layer")
    assert _same_state(ours.state_dict(), ref.state_dict()) and _same_state(before, tiny_model.state_dict())


def test_mask_fn_gets_a_copy_and_is_not_asked_for_zero_sparsity(tiny_model):
    def in_place(w, sparsity):
        keep = _kth_mask(w, sparsity)
        w.mul_(keep)
        return keep

    before = _state(tiny_model)
    pruned = prune.magnitude(tiny_model, 0.5, mask_fn=in_place)
    assert _same_state(before, tiny_model.state_dict())
    assert prune.sparsity_of(pruned)["sparsity"] == pytest.approx(0.5, abs=1e-3)

    def never(w, sparsity):
        raise AssertionError("called at sparsity 0")
    assert prune.sparsity_of(prune.magnitude(tiny_model, 0.0, mask_fn=never))["zeros"] == 0


@pytest.mark.parametrize("fn, kwargs, match", [
    (lambda w, s: _kth_mask(w, s).flatten(), {}, "shape"),
    (lambda w, s: w * _kth_mask(w, s), {}, "0/1"),
    (lambda w, s: None, {}, "keep-mask"),
    (_kth_mask, {"scope": "global"}, "scope='layer'"),
])
def test_a_bad_mask_fn_gets_a_clear_error(tiny_model, fn, kwargs, match):
    with pytest.raises(ValueError, match=match):
        prune.magnitude(tiny_model, 0.5, mask_fn=fn, **kwargs)


def test_the_exercise_reference_plugs_into_prune_plan(tiny_model):
    plan = {n: 0.6 for n in prune.prunable_linears(tiny_model)}
    mine = prune.prune_plan(tiny_model, plan, mask_fn=checks.solution("03.fine_grained_prune"))
    assert _same_state(mine.state_dict(), prune.prune_plan(tiny_model, plan).state_dict())


def test_a_plan_that_prunes_the_classifier_head_is_refused(tiny_model):
    with pytest.raises(ValueError, match="classification head"):
        prune.prune_plan(tiny_model, {"classifier": 0.5})
    pruned = prune.prune_plan(tiny_model, {"classifier": 0.5}, include_head=True)
    assert int((pruned.classifier.weight == 0).sum()) == round(0.5 * tiny_model.classifier.weight.numel())


def test_sparsity_of_counts_zeros(tiny_model):
    layers = prune.prunable_linears(tiny_model)
    first = next(iter(layers.values()))
    with torch.no_grad():
        first.weight[:2] = 0
    counts = prune.sparsity_of(tiny_model)
    assert counts["total"] == sum(m.weight.numel() for m in layers.values())
    assert counts["zeros"] == 2 * first.weight.shape[1]
    assert counts["remaining"] == counts["total"] - counts["zeros"]


@pytest.mark.parametrize("kwargs, match", [
    (dict(sparsity=1.0), r"\[0, 1\)"), (dict(sparsity=-0.1), r"\[0, 1\)"),
    (dict(sparsity=0.5, scope="net"), "'layer', 'global'"), (dict(sparsity=0.5, method="l2"), "'magnitude'"),
])
def test_bad_unstructured_input_says_what_is_allowed(tiny_model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        prune.magnitude(tiny_model, **kwargs)


def test_models_without_linear_or_attention_layers_are_refused():
    with pytest.raises(ValueError, match="no nn.Linear"):
        prune.magnitude(nn.Sequential(nn.ReLU()), 0.5)
    with pytest.raises(ValueError, match="attention"):
        prune.structured(nn.Sequential(nn.Linear(4, 4)), heads=0.5)


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9])
def test_torch_prune_is_torch_global_unstructured_kept_the_same_way(tiny_model, tokenizer, sparsity):
    before = _state(tiny_model)
    ours, ref = prune.torch_prune(tiny_model, sparsity), _torch_global(tiny_model, sparsity)
    assert _same_state(tiny_model.state_dict(), before)  # the caller's model is untouched
    assert ours.state_dict().keys() == ref.state_dict().keys()  # weight_orig and weight_mask, as torch keeps them
    for k, v in ref.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v), k
    with torch.no_grad():
        assert torch.equal(ours(**_inputs(tokenizer)).logits, ref(**_inputs(tokenizer)).logits)


def test_the_sliders_keep_one_ranking_where_memory_is_tight(monkeypatch, tiny_model):
    prune._ranking.cache_clear(), prune._ranking_last.cache_clear()
    monkeypatch.setenv("LABKIT_LEAN", "1")
    first = prune._ranked(tiny_model, "layer", "magnitude")
    prune._ranked(tiny_model, "global", "magnitude")
    assert prune._ranking_last.cache_info().currsize == 1 and prune._ranking.cache_info().currsize == 0
    monkeypatch.setenv("LABKIT_LEAN", "0")
    again = prune._ranked(tiny_model, "layer", "magnitude")
    prune._ranked(tiny_model, "global", "magnitude")
    assert prune._ranking.cache_info().currsize == 2
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    prune._ranking.cache_clear(), prune._ranking_last.cache_clear()


def test_zeros_do_not_shrink_the_file_and_torch_prune_adds_a_mask(tiny_model):
    dense = measure.serialized_bytes(tiny_model)
    assert measure.serialized_bytes(prune.magnitude(tiny_model, 0.9)) == dense
    reparam = prune.torch_prune(tiny_model, 0.9)
    assert measure.serialized_bytes(reparam) > dense  # weight_orig + weight_mask are both saved
    for layer in prune.prunable_linears(reparam).values():
        tprune.remove(layer, "weight")
    assert measure.serialized_bytes(reparam) == dense


# --- 2:4 ------------------------------------------------------------------------------------------

def test_two_four_keeps_the_two_largest_of_every_four(tiny_model):
    pruned = prune.two_four(tiny_model)
    for name, layer in prune.prunable_linears(tiny_model).items():
        groups = layer.weight.detach().reshape(-1, 4)
        kept = prune.prunable_linears(pruned)[name].weight.detach().reshape(-1, 4)
        assert ((kept == 0).sum(1) == 2).all()
        top2 = groups.abs().sort(1, descending=True).values[:, :2]
        assert torch.allclose(kept.abs().sort(1, descending=True).values[:, :2], top2)
    assert prune.sparsity_of(pruned)["sparsity"] == 0.5


@pytest.mark.skipif(prune.semi_structured_available(), reason="a capable GPU is present")
def test_semi_structured_path_explains_itself_on_cpu(tiny_model):
    with pytest.raises(ValueError, match="CUDA GPU"):
        prune.to_semi_structured(prune.two_four(tiny_model))


@pytest.mark.skipif(not prune.semi_structured_available(), reason="needs a CUDA GPU with compute capability >= 8")
def test_semi_structured_matches_dense_on_gpu(tiny_model):
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=4, intermediate_size=128)
    m = prune.two_four(BertForSequenceClassification(cfg).eval())
    ids = torch.randint(0, 1000, (32, 64))
    dense = m.half().cuda()(input_ids=ids.cuda()).logits
    fast = prune.to_semi_structured(m)(input_ids=ids.cuda()).logits
    assert torch.allclose(dense, fast, atol=2e-2)


# --- structured -----------------------------------------------------------------------------------

def _zero_units_reference(model, small):
    """The original model with the removed heads' and neurons' output columns zeroed: same function."""
    ref = copy.deepcopy(model)
    for i, (block, cut) in enumerate(zip(parts.blocks(ref), parts.blocks(small))):
        d = block.head_size
        kept_heads = [h for h in range(block.n_heads) if h not in small.config.pruned_heads[i]]
        with torch.no_grad():
            mask = torch.zeros(block.get("o").in_features)
            for h in kept_heads:
                mask[h * d:(h + 1) * d] = 1
            block.get("o").weight.mul_(mask)
            # A neuron survives if its input row is still present in the small model.
            rows = block.get("up").weight
            kept = (rows[:, None, :] == cut.get("up").weight[None]).all(-1).any(1).float()
            block.get("down").weight.mul_(kept)
    return ref


@pytest.mark.parametrize("score", ["norm", "gradient"])
def test_structured_removes_units_and_equals_zeroing_them(tiny_model, tokenizer, score):
    small = prune.structured(tiny_model, heads=0.5, ffn=0.5, score=score, tokenizer=tokenizer)
    shapes = prune.shape_summary(small)
    assert (shapes["heads"] == 2).all() and (shapes["ffn_neurons"] == 32).all()
    block = parts.blocks(small)[0]
    assert block.get("q").out_features == 16 and block.get("o").in_features == 16
    assert block.get("down").in_features == 32
    assert block.attention.all_head_size == 16 and block.n_heads == 2
    inputs = _inputs(tokenizer)
    with torch.no_grad():
        ours = small(**inputs).logits
        ref = _zero_units_reference(tiny_model, small)(**inputs).logits
    assert torch.allclose(ours, ref, atol=1e-5)
    assert measure.serialized_bytes(small) < measure.serialized_bytes(tiny_model)


def test_norm_score_removes_the_weakest_head(tiny_model):
    block = parts.blocks(tiny_model)[0]
    with torch.no_grad():
        block.get("o").weight[:, 8:16] *= 1e-3  # head 1's output columns
        for p in ("q", "k", "v"):
            block.get(p).weight[8:16] *= 1e-3
    small = prune.structured(tiny_model, heads=0.25, ffn=0.0)
    assert small.config.pruned_heads[0] == [1]


def _zero_head_reference(model, layer, head):
    ref = copy.deepcopy(model)
    block = parts.blocks(ref)[layer]
    d = block.head_size
    with torch.no_grad():
        block.get("o").weight[:, head * d:(head + 1) * d] = 0
    return ref


def test_drop_heads_equals_zeroing_the_heads_output(tiny_model, tokenizer):
    before = _state(tiny_model)
    small = prune.drop_heads(tiny_model, {0: [1, 3], 1: [0]})
    assert _same_state(before, tiny_model.state_dict())
    assert list(prune.shape_summary(small)["heads"]) == [2, 3]
    ref = _zero_head_reference(_zero_head_reference(_zero_head_reference(tiny_model, 0, 1), 0, 3), 1, 0)
    inputs = _inputs(tokenizer)
    with torch.no_grad():
        assert torch.allclose(small(**inputs).logits, ref(**inputs).logits, atol=1e-5)
    assert small.config.pruned_heads == {0: [1, 3], 1: [0]}


def test_remove_head_matches_transformers_prune_linear_layer_and_the_exercise(tiny_model):
    from transformers.pytorch_utils import prune_linear_layer

    block = parts.blocks(tiny_model)[0]
    layers = tuple(block.get(p) for p in parts.ATTENTION)
    keep = torch.tensor([i for i in range(32) if i // 8 != 2])
    hf = [prune_linear_layer(m, keep, dim=0) for m in layers[:3]] + [prune_linear_layer(layers[3], keep, dim=1)]
    for ours in (prune.remove_head(*layers, 2, 8), checks.solution("03.remove_head")(*layers, 2, 8)):
        for a, b in zip(ours, hf):
            assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)


def test_drop_heads_runs_a_learner_function_and_checks_what_it_returns(tiny_model):
    mine = checks.solution("03.remove_head")
    a, b = prune.drop_heads(tiny_model, {1: [2]}, remove_fn=mine), prune.drop_heads(tiny_model, {1: [2]})
    assert _same_state(a.state_dict(), b.state_dict())
    with pytest.raises(ValueError, match="four nn.Linear"):
        prune.drop_heads(tiny_model, {0: [0]}, remove_fn=lambda q, k, v, o, h, d: (q, k, v, o))


@pytest.mark.parametrize("heads, match", [({5: [0]}, "layers 0..1"), ({0: [0, 1, 2, 3]}, "keep at least one"),
                                           ({0: [4]}, "heads 0..3")])
def test_drop_heads_bad_input(tiny_model, heads, match):
    with pytest.raises(ValueError, match=match):
        prune.drop_heads(tiny_model, heads)


@pytest.mark.parametrize("kwargs, match", [
    (dict(heads=1.0), "heads"), (dict(ffn=-0.2), "ffn"), (dict(score="l1"), "'norm'"),
    (dict(score="gradient"), "tokenizer"),
])
def test_bad_structured_input(tiny_model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        prune.structured(tiny_model, **kwargs)


# --- recovery, sensitivity, plan, slider -----------------------------------------------------------

def test_recover_trains_but_keeps_the_zeros(tiny_model, tokenizer):
    sparse = prune.magnitude(tiny_model, 0.5)
    before = _state(sparse)
    tuned = prune.recover(sparse, tokenizer, steps=2, batch_size=8, lr=1e-3)
    assert _same_state(before, sparse.state_dict())
    for name, layer in prune.prunable_linears(tuned).items():
        old = prune.prunable_linears(sparse)[name].weight
        assert torch.equal(layer.weight == 0, old == 0), name
        assert not torch.equal(layer.weight, old)


def test_distill_loss_is_zero_against_itself_and_recovery_with_a_teacher_leaves_it_alone(tiny_model, tokenizer):
    batch = next(iter(prune.data.batches(["a fine film", "dull"], [1, 0], tokenizer, 2)))
    logits = tiny_model.eval()(**batch.inputs).logits
    assert prune._distill_loss(logits, tiny_model, batch, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    small = prune.structured(tiny_model, heads=0.5, ffn=0.5)
    teacher_before = _state(tiny_model)
    tuned = prune.recover(small, tokenizer, steps=2, batch_size=8, lr=1e-3, teacher=tiny_model)
    assert _same_state(teacher_before, tiny_model.state_dict())
    assert not torch.equal(prune.prunable_linears(tuned)["bert.encoder.layer.0.intermediate.dense"].weight,
                           prune.prunable_linears(small)["bert.encoder.layer.0.intermediate.dense"].weight)


def test_plan_from_scan_hits_the_total_and_spares_sensitive_groups(tiny_model):
    g = prune.groups(tiny_model, "type")
    scan = pd.DataFrame({0.5: [0.0] * len(g), 0.9: [1.0] * len(g)}, index=list(g))
    sensitive = next(k for k in g if k.endswith("query"))
    scan.loc[sensitive] = [10.0, 40.0]
    plan = prune.plan_from_scan(tiny_model, scan, total=0.5)
    layers = prune.prunable_linears(tiny_model)
    mean = sum(plan[n] * layers[n].weight.numel() for n in plan) / sum(m.weight.numel() for m in layers.values())
    assert mean == pytest.approx(0.5, abs=1e-4)
    q = next(n for n in plan if n.endswith("query"))
    ffn = next(n for n in plan if n.endswith("intermediate.dense"))
    assert plan[q] < plan[ffn]
    pruned = prune.prune_plan(tiny_model, plan)
    assert prune.sparsity_of(pruned)["sparsity"] == pytest.approx(0.5, abs=1e-3)


def test_sensitivity_scan_has_a_row_per_group(tiny_model, tokenizer):
    scan = prune.sensitivity(tiny_model, tokenizer, sparsities=(0.5,), by="layer", limit=16)
    assert set(scan.index) == {"layer 0", "layer 1"} and list(scan.columns) == [0.5]
    assert scan.attrs["split"] == "val"  # a scan chooses a plan: validation, never test


def test_the_scan_and_the_plan_refuse_the_test_split(tiny_model, tokenizer):
    with pytest.raises(ValueError, match="validation"):
        prune.sensitivity(tiny_model, tokenizer, sparsities=(0.5,), limit=16, split="test")
    g = prune.groups(tiny_model, "type")
    scan = pd.DataFrame({0.9: [1.0] * len(g)}, index=list(g))
    scan.attrs["split"] = "test"
    with pytest.raises(ValueError, match="validation"):
        prune.plan_from_scan(tiny_model, scan, total=0.5)


def test_sparsity_point_on_the_baseline(baseline):
    p = prune.sparsity_point(0.5, "layer", "magnitude")
    assert set(p) >= {"accuracy", "agreement", "remaining_weights"}
    assert p["remaining_weights"] == pytest.approx(0.5 * p["total_weights"], abs=40)
    # above the 56% majority label by a margin a broken model cannot reach; measured 0.765 and 0.915
    assert p["accuracy"] >= 0.68 and 0.8 <= p["agreement"] < 1.0
    assert p["accuracy_lo"] < p["accuracy"] < p["accuracy_hi"]  # a 95% interval on 200 snippets has width
    assert prune.sparsity_point(0.5, "layer", "magnitude") is p  # cached: a revisited slider point is instant
    assert prune.sparsity_point(0.0)["agreement"] == 1.0


def test_sliders_read_the_validation_split_never_the_test_split(baseline):
    base, tok = baseline
    on_val = measure.accuracy(base, tok, "val", prune.QUICK_LIMIT)
    assert prune.sparsity_point(0.0)["accuracy"] == on_val


def test_structured_table_reports_smaller_models(tiny_model, tokenizer):
    table = prune.structured_table(tiny_model, tokenizer, [(0.5, 0.5)], steps=1, limit=16)
    assert list(table["model"]) == ["dense", "-50% heads, -50% FFN"]
    assert table["size_ratio"].iloc[1] > 1.0 and table["b32_ms"].gt(0).all()
    assert (table["accuracy_lo"] <= table["accuracy"]).all() and (table["accuracy"] <= table["accuracy_hi"]).all()


@pytest.mark.parametrize("lean", ["1", "0"])
def test_recovery_curve_keeps_sparsity_and_the_input(tiny_model, tokenizer, monkeypatch, lean):
    monkeypatch.setenv("LABKIT_LEAN", lean)  # lean: the copies share the embedding that recovery freezes
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    rec = prune.recovery_curve(tiny_model, tokenizer, [0.5], steps=1, limit=16)
    assert rec.loc[0, "still_sparse"] == pytest.approx(0.5, abs=1e-3)
    assert rec.loc[0, "after_lo"] <= rec.loc[0, "after"] <= rec.loc[0, "after_hi"]
    prune.structured_table(tiny_model, tokenizer, [(0.5, 0.5)], steps=1, limit=16)
    assert all(torch.equal(v, before[k]) for k, v in tiny_model.state_dict().items())


@pytest.mark.parametrize("scope, method", [("layer", "magnitude"), ("global", "magnitude"), ("global", "random")])
def test_slider_fast_path_matches_magnitude(baseline, scope, method):
    """The sliders' pre-ranked pruning zeroes the same weights as prune.magnitude (up to ties in |w|)."""
    base, _, _ = prune._quick_setup()
    reference = prune.magnitude(base, 0.6, scope, method)
    fast = prune._pruned_baseline(0.6, scope, method)
    ref_layers, fast_layers = prune.prunable_linears(reference), prune.prunable_linears(fast)
    differ = sum(int(((ref_layers[n].weight == 0) != (fast_layers[n].weight == 0)).sum()) for n in ref_layers)
    assert prune.sparsity_of(fast)["zeros"] == prune.sparsity_of(reference)["zeros"]
    assert differ <= 2e-5 * prune.sparsity_of(fast)["total"]
    assert prune.sparsity_of(base)["sparsity"] < 0.01  # the shared baseline is never touched
    for n, m in fast_layers.items():  # kept weights hold the baseline's values
        kept = m.weight != 0
        assert torch.equal(m.weight[kept], prune.prunable_linears(base)[n].weight[kept])


def test_smallest_mask_drops_exactly_k_as_topk_does():
    torch.manual_seed(0)
    for n, k in [(10, 3), (1000, 500), (7, 7), (5, 0)]:
        scores = torch.randn(n)
        ref = torch.ones(n, dtype=torch.bool)
        ref[torch.topk(scores, k, largest=False).indices] = False
        assert torch.equal(masks.smallest_mask(scores, k), ref), (n, k)
    ties = torch.tensor([0.0, 0.0, 0.0, 1.0, 2.0, 0.0])  # an already pruned layer: many equal scores at the cut
    assert masks.smallest_mask(ties, 2).tolist() == [False, False, True, True, True, True]
