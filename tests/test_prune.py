import copy

import pandas as pd
import pytest
import torch
import torch.nn.utils.prune as tprune
from torch import nn
from transformers.pytorch_utils import prune_linear_layer

from labkit.core import measure, parts
from labkit.course import checks
from labkit.prune import masks, plan, prune, recovery, structured, unstructured


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _inputs(tokenizer):
    return dict(tokenizer(["a quiet, lovely film", "dull and far too long"], padding=True, return_tensors="pt"))


def _blocks(model):
    return parts.linears(model, "blocks")


# --- the one mask ---------------------------------------------------------------------------------

def test_smallest_mask_drops_exactly_k_as_topk_does():
    torch.manual_seed(0)
    for n, k in [(10, 3), (1000, 500), (7, 7), (5, 0)]:
        scores = torch.randn(n)
        ref = torch.ones(n, dtype=torch.bool)
        ref[torch.topk(scores, k, largest=False).indices] = False
        assert torch.equal(masks.smallest_mask(scores, k), ref), (n, k)
    ties = torch.tensor([0.0, 0.0, 0.0, 1.0, 2.0, 0.0])  # an already pruned layer: many equal scores at the cut
    assert masks.smallest_mask(ties, 2).tolist() == [False, False, True, True, True, True]


def test_magnitude_mask_matches_torch_l1_unstructured_and_refuses_bad_sparsity():
    w = torch.randn(30, 20, generator=torch.Generator().manual_seed(3))
    lin = nn.Linear(20, 30)
    with torch.no_grad():
        lin.weight.copy_(w)
    tprune.l1_unstructured(lin, "weight", amount=0.6)
    assert torch.equal(masks.magnitude_mask(w, 0.6), lin.weight_mask.bool())
    for bad in (1.0, -0.1, True, "half"):
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            masks.magnitude_mask(w, bad)


def test_two_four_mask_keeps_the_two_largest_of_every_four():
    w = torch.tensor([[0.1, -0.9, 0.3, 0.2, 1.0, 1.0, 1.0, 1.0]])
    assert masks.two_four_mask(w).tolist() == [[False, True, True, False, False, False, True, True]]
    with pytest.raises(ValueError, match="multiple of 4"):
        masks.two_four_mask(torch.ones(2, 6))


# --- unstructured ---------------------------------------------------------------------------------

@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9])
def test_layer_scope_matches_torch_l1_unstructured(tiny_model, sparsity):
    pruned = unstructured.magnitude(tiny_model, sparsity, "layer")
    ref = copy.deepcopy(tiny_model)
    for layer in _blocks(ref).values():
        tprune.l1_unstructured(layer, "weight", amount=sparsity)
    ours = _blocks(pruned)
    for name, layer in _blocks(ref).items():
        assert torch.equal(ours[name].weight != 0, layer.weight_mask.bool()), name
        assert int((ours[name].weight == 0).sum()) == round(sparsity * layer.weight.numel())


def test_global_scope_matches_torch_global_unstructured(tiny_model):
    pruned = unstructured.magnitude(tiny_model, 0.6, "global")
    ref = copy.deepcopy(tiny_model)
    tprune.global_unstructured([(m, "weight") for m in _blocks(ref).values()], pruning_method=tprune.L1Unstructured,
                               amount=0.6)
    for name, layer in _blocks(ref).items():
        assert torch.equal(_blocks(pruned)[name].weight != 0, layer.weight_mask.bool()), name
    counts = unstructured.sparsity_of(pruned)
    assert counts["zeros"] == round(0.6 * counts["total"])
    per_layer = [float((m.weight == 0).float().mean()) for m in _blocks(pruned).values()]
    assert max(per_layer) - min(per_layer) > 0.01  # global ranking prunes layers unevenly


def test_random_control_has_exact_counts_and_ignores_magnitude(tiny_model):
    pruned = unstructured.magnitude(tiny_model, 0.5, "layer", method="random", seed=1)
    again = unstructured.magnitude(tiny_model, 0.5, "layer", method="random", seed=1)
    by_mag = unstructured.magnitude(tiny_model, 0.5, "layer")
    for name, layer in _blocks(pruned).items():
        assert int((layer.weight == 0).sum()) == round(0.5 * layer.weight.numel())
        assert torch.equal(layer.weight, _blocks(again)[name].weight)
    assert not _same_state(pruned.state_dict(), by_mag.state_dict())


def test_filter_fn_chooses_the_layers_and_the_head_is_left_alone_by_default(tiny_model):
    pruned = unstructured.magnitude(tiny_model, 0.9, "global")
    assert torch.equal(pruned.classifier.weight, tiny_model.classifier.weight)
    assert torch.equal(pruned.bert.pooler.dense.weight, tiny_model.bert.pooler.dense.weight)
    head = unstructured.magnitude(tiny_model, 0.5, "layer", filter_fn="head")
    assert int((head.classifier.weight == 0).sum()) == round(0.5 * tiny_model.classifier.weight.numel())
    assert unstructured.sparsity_of(head)["zeros"] == 0  # the blocks untouched
    query = unstructured.magnitude(tiny_model, 0.5, filter_fn=lambda module, name: name.endswith("query"))
    zeros = {n: int((m.weight == 0).sum()) for n, m in _blocks(query).items()}
    assert all((z > 0) == n.endswith("query") for n, z in zeros.items())


@pytest.mark.parametrize("kwargs, match", [
    (dict(sparsity=1.0), r"\[0, 1\)"), (dict(sparsity=-0.1), r"\[0, 1\)"),
    (dict(sparsity=0.5, scope="net"), "'layer' or 'global'"), (dict(sparsity=0.5, method="l2"), "'random'"),
    (dict(sparsity=0.5, filter_fn="convs"), "filter_fn"),
])
def test_bad_unstructured_input_says_what_is_allowed(tiny_model, kwargs, match):
    before = _state(tiny_model)
    with pytest.raises(ValueError, match=match):
        unstructured.magnitude(tiny_model, **kwargs)
    assert _same_state(before, tiny_model.state_dict())


def test_models_without_linear_or_attention_layers_are_refused():
    with pytest.raises(ValueError, match="no nn.Linear"):
        unstructured.magnitude(nn.Sequential(nn.ReLU()), 0.5)
    with pytest.raises(ValueError, match="attention"):
        structured.structured(nn.Sequential(nn.Linear(4, 4)), heads=0.5)


def test_sparsity_of_counts_zeros(tiny_model):
    layers = _blocks(tiny_model)
    first = next(iter(layers.values()))
    with torch.no_grad():
        first.weight[:2] = 0
    counts = unstructured.sparsity_of(tiny_model)
    assert counts["total"] == sum(m.weight.numel() for m in layers.values())
    assert counts["zeros"] == 2 * first.weight.shape[1]
    assert counts["remaining"] == counts["total"] - counts["zeros"]


def test_zeros_do_not_shrink_the_file(tiny_model):
    assert measure.serialized_bytes(unstructured.magnitude(tiny_model, 0.9)) == measure.serialized_bytes(tiny_model)


def test_two_four_keeps_the_two_largest_of_every_four(tiny_model):
    pruned = unstructured.two_four(tiny_model)
    for name, layer in _blocks(tiny_model).items():
        groups = layer.weight.detach().reshape(-1, 4)
        kept = _blocks(pruned)[name].weight.detach().reshape(-1, 4)
        assert ((kept == 0).sum(1) == 2).all()
        top2 = groups.abs().sort(1, descending=True).values[:, :2]
        assert torch.allclose(kept.abs().sort(1, descending=True).values[:, :2], top2)
    assert unstructured.sparsity_of(pruned)["sparsity"] == 0.5
    with pytest.raises(ValueError, match="multiple of 4"):
        unstructured.two_four(nn.Sequential(nn.Linear(6, 4)))


# --- structured -----------------------------------------------------------------------------------

def _zero_units_reference(model, small):
    """The original model with the removed heads' and neurons' output columns zeroed: the same function."""
    ref = copy.deepcopy(model)
    for i, (block, cut) in enumerate(zip(parts.blocks(ref), parts.blocks(small))):
        d = block.head_size
        with torch.no_grad():
            mask = torch.ones(block.get("o").in_features)
            for h in small.config.pruned_heads[i]:
                mask[h * d:(h + 1) * d] = 0
            block.get("o").weight.mul_(mask)
            kept = (block.get("up").weight[:, None, :] == cut.get("up").weight[None]).all(-1).any(1).float()
            block.get("down").weight.mul_(kept)
    return ref


@pytest.mark.parametrize("score", ["norm", "gradient"])
def test_structured_removes_units_and_equals_zeroing_them(tiny_model, tokenizer, score):
    small = structured.structured(tiny_model, heads=0.5, ffn=0.5, score=score, tokenizer=tokenizer)
    shapes = structured.shape_summary(small)
    assert (shapes["heads"] == 2).all() and (shapes["ffn_neurons"] == 32).all()
    block = parts.blocks(small)[0]
    assert block.get("q").out_features == 16 and block.get("o").in_features == 16
    assert block.get("down").in_features == 32
    assert block.attention.all_head_size == 16 and block.n_heads == 2
    inputs = _inputs(tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(small(**inputs).logits, _zero_units_reference(tiny_model, small)(**inputs).logits,
                                   atol=1e-5, rtol=1e-4)
    assert measure.serialized_bytes(small) < measure.serialized_bytes(tiny_model)


def test_norm_score_removes_the_weakest_head(tiny_model):
    block = parts.blocks(tiny_model)[0]
    with torch.no_grad():
        block.get("o").weight[:, 8:16] *= 1e-3  # head 1's output columns
        for p in ("q", "k", "v"):
            block.get(p).weight[8:16] *= 1e-3
    small = structured.structured(tiny_model, heads=0.25, ffn=0.0)
    assert small.config.pruned_heads[0] == [1]


def test_cut_heads_and_neurons_are_prune_linear_layer_and_the_exercise_agrees(tiny_model):
    original = parts.blocks(tiny_model)[0]
    layers = {p: original.get(p) for p in ("q", "k", "v", "o", "up", "down")}
    small = copy.deepcopy(tiny_model)
    block = parts.blocks(small)[0]
    keep = torch.tensor([0, 1, 3])  # head 2 of 4 (head size 8) goes
    structured.cut_heads(block, keep)
    rows = torch.tensor([i for i in range(32) if i // 8 != 2])
    for p, dim in (("q", 0), ("k", 0), ("v", 0), ("o", 1)):
        hf = prune_linear_layer(layers[p], rows, dim)
        assert torch.equal(block.get(p).weight, hf.weight) and torch.equal(block.get(p).bias, hf.bias), p
    mine = checks.solution("03.remove_head")(*(layers[p] for p in ("q", "k", "v", "o")), 2, 8)
    assert all(torch.equal(a.weight, block.get(p).weight) for a, p in zip(mine, ("q", "k", "v", "o")))
    assert block.n_heads == 3 and block.attention.all_head_size == 24
    neurons = torch.tensor([5, 9, 40])
    structured.cut_neurons(block, neurons)
    assert torch.equal(block.get("up").weight, layers["up"].weight[neurons])
    assert torch.equal(block.get("down").weight, layers["down"].weight[:, neurons])


@pytest.mark.parametrize("kwargs, match", [
    (dict(heads=1.0), "heads"), (dict(ffn=-0.2), "ffn"), (dict(score="l1"), "'norm'"),
    (dict(score="gradient"), "tokenizer"),
])
def test_bad_structured_input(tiny_model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        structured.structured(tiny_model, **kwargs)


# --- recovery -------------------------------------------------------------------------------------

def test_recover_trains_but_keeps_the_zeros(tiny_model, tokenizer):
    sparse = unstructured.magnitude(tiny_model, 0.5)
    before = _state(sparse)
    tuned = recovery.recover(sparse, tokenizer, steps=2, batch_size=8, lr=1e-3)
    assert _same_state(before, sparse.state_dict())
    for name, layer in _blocks(tuned).items():
        old = _blocks(sparse)[name].weight
        assert torch.equal(layer.weight == 0, old == 0), name
        assert not torch.equal(layer.weight, old)


def test_recovery_with_a_teacher_leaves_the_teacher_alone(tiny_model, tokenizer):
    small = structured.structured(tiny_model, heads=0.5, ffn=0.5)
    teacher_before = _state(tiny_model)
    tuned = recovery.recover(small, tokenizer, steps=2, batch_size=8, lr=1e-3, teacher=tiny_model)
    assert _same_state(teacher_before, tiny_model.state_dict())
    name = "bert.encoder.layer.0.intermediate.dense"
    assert not torch.equal(tuned.get_submodule(name).weight, small.get_submodule(name).weight)


# --- every returned model is the caller's to change --------------------------------------------------

@pytest.mark.parametrize("lean", ["1", "0"])
def test_writing_into_every_returned_model_leaves_the_input_alone(tiny_model, tokenizer, monkeypatch, lean):
    monkeypatch.setenv("LABKIT_LEAN", lean)  # lean: recovery freezes the embedding; the copy must still own it
    before = _state(tiny_model)
    made = [unstructured.magnitude(tiny_model, 0.5), unstructured.magnitude(tiny_model, 0.5, "global", "random"),
            unstructured.two_four(tiny_model), structured.structured(tiny_model, heads=0.5, ffn=0.5),
            recovery.recover(tiny_model, tokenizer, steps=1, batch_size=4), prune.magnitude(tiny_model, 0.3)]
    for out in made:
        assert out is not tiny_model
        with torch.no_grad():
            for t in list(out.parameters()) + list(out.buffers()):
                t.fill_(7) if t.is_floating_point() else t.fill_(1)
        assert _same_state(before, tiny_model.state_dict())
    same = unstructured.magnitude(tiny_model, 0.5, inplace=True)
    assert same is tiny_model and unstructured.sparsity_of(tiny_model)["sparsity"] == pytest.approx(0.5, abs=1e-3)


# --- a plan from a scan ----------------------------------------------------------------------------


def test_plan_from_scan_hits_the_total_and_spares_sensitive_groups():
    sizes = {"query": 100, "ffn": 400}
    scan = pd.DataFrame({0.5: [10.0, 0.0], 0.9: [40.0, 1.0]}, index=["query", "ffn"])
    levels = plan.plan_from_scan(scan, sizes, total=0.5)
    assert sum(levels[g] * n for g, n in sizes.items()) / 500 == pytest.approx(0.5, abs=1e-4)
    assert levels["query"] < levels["ffn"]


@pytest.mark.parametrize("change, total, match", [
    ({"split": "test"}, 0.5, "validation"), ({}, 0.95, "highest scanned"), ({}, 1.0, "fraction"),
])
def test_plan_from_scan_refuses_what_it_cannot_do(change, total, match):
    scan = pd.DataFrame({0.9: [1.0, 1.0]}, index=["a", "b"])
    scan.attrs.update(change)
    with pytest.raises(ValueError, match=match):
        plan.plan_from_scan(scan, {"a": 10, "b": 10}, total)
    with pytest.raises(ValueError, match="no row"):
        plan.plan_from_scan(pd.DataFrame({0.9: [1.0]}, index=["a"]), {"a": 10, "b": 10}, 0.5)


# --- the tour's names ------------------------------------------------------------------------------

def test_prune_gathers_the_names_the_pipelines_use():
    assert prune.magnitude is unstructured.magnitude and prune.two_four is unstructured.two_four
    assert prune.structured is structured.structured and prune.recover is recovery.recover
