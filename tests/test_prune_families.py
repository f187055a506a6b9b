"""Pruning on every supported family's tiny random classifier: the intended effect, or a clear refusal."""

import copy

import pytest
import torch

from labkit.core import parts
from labkit.prune import recovery, structured, unstructured

FAMILIES = [f.name for f in parts.FAMILIES]
STRUCTURED = [f.name for f in parts.FAMILIES if f.structured]
REFUSED = [f.name for f in parts.FAMILIES if not f.structured]


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _inputs(model, tokenizer):
    batch = tokenizer(["a quiet, lovely film", "dull and far too long"], padding=True, return_tensors="pt")
    return parts.feed(model, dict(batch))


def _logits(model, tokenizer):
    with torch.no_grad():
        return model(**_inputs(model, tokenizer)).logits


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("scope", ["layer", "global"])
def test_magnitude_zeroes_the_block_layers_and_leaves_head_and_input_alone(family, scope, tokenizer):
    model = parts.tiny_classifier(family, num_labels=3)
    before = _state(model)
    pruned = unstructured.magnitude(model, 0.6, scope)
    assert _same_state(before, model.state_dict())  # the input model is unchanged
    layers = parts.linears(pruned, "blocks")
    if scope == "layer":
        for name, layer in layers.items():
            assert int((layer.weight == 0).sum()) == round(0.6 * layer.weight.numel()), name
    counts = unstructured.sparsity_of(pruned)
    assert counts["total"] == sum(m.weight.numel() for m in layers.values())
    if scope == "global":
        assert counts["zeros"] == round(0.6 * counts["total"])
    for name, layer in parts.head_linears(pruned).items():  # the head stays dense
        assert torch.equal(layer.weight, model.get_submodule(name).weight), name
    assert _logits(pruned, tokenizer).shape == (2, 3)


@pytest.mark.parametrize("family", FAMILIES)
def test_filter_fn_head_prunes_the_head(family):
    model = parts.tiny_classifier(family)
    pruned = unstructured.magnitude(model, 0.5, "layer", filter_fn="head")
    head = parts.head_linears(pruned)
    assert head
    for name, layer in head.items():
        assert int((layer.weight == 0).sum()) == round(0.5 * layer.weight.numel()), name


@pytest.mark.parametrize("family", FAMILIES)
def test_two_four_pattern_on_every_family(family, tokenizer):
    model = parts.tiny_classifier(family)
    before = _state(model)
    pruned = unstructured.two_four(model)
    assert _same_state(before, model.state_dict())
    for name, layer in parts.linears(pruned, "blocks").items():
        groups = layer.weight.detach().reshape(-1, 4)
        assert ((groups == 0).sum(1) == 2).all(), name
        top2 = model.get_submodule(name).weight.detach().reshape(-1, 4).abs().sort(1, descending=True).values[:, :2]
        assert torch.equal(groups.abs().sort(1, descending=True).values[:, :2], top2), name
    for name, layer in parts.head_linears(pruned).items():
        assert torch.equal(layer.weight, model.get_submodule(name).weight), name
    assert unstructured.sparsity_of(pruned)["sparsity"] == 0.5
    assert _logits(pruned, tokenizer).shape == (2, 2)


def _zero_units_reference(model, small):
    """The unpruned model with the removed heads' and neurons' output columns zeroed: the same function."""
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


@pytest.mark.parametrize("family", STRUCTURED)
@pytest.mark.parametrize("score", ["norm", "gradient"])
def test_structured_removes_heads_and_neurons(family, score, tokenizer):
    model = parts.tiny_classifier(family, num_labels=3)
    before = _state(model)
    small = structured.structured(model, heads=0.5, ffn=0.5, score=score, tokenizer=tokenizer)
    assert _same_state(before, model.state_dict())
    shapes = structured.shape_summary(small)
    assert list(shapes["heads"]) == [2, 2] and list(shapes["ffn_neurons"]) == [32, 32]
    for block in parts.blocks(small):
        assert block.get("q").out_features == block.get("o").in_features == 2 * block.head_size
        assert block.get("down").in_features == 32
        assert getattr(block.attention, block.family.n_heads) == 2
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    out = _logits(small, tokenizer)
    assert out.shape == (2, 3)
    torch.testing.assert_close(out, _logits(_zero_units_reference(model, small), tokenizer), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", STRUCTURED)
def test_cut_heads_on_every_structured_family_equals_zeroing_them(family, tokenizer):
    model = parts.tiny_classifier(family)
    small = copy.deepcopy(model)
    structured.cut_heads(parts.blocks(small)[0], torch.tensor([0, 2]))  # heads 1 and 3 of 4 go
    assert list(structured.shape_summary(small)["heads"]) == [2, 4]
    ref = copy.deepcopy(model)
    block = parts.blocks(ref)[0]
    with torch.no_grad():
        for h in (1, 3):
            block.get("o").weight[:, h * block.head_size:(h + 1) * block.head_size] = 0
    torch.testing.assert_close(_logits(small, tokenizer), _logits(ref, tokenizer), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", REFUSED)
def test_structured_refuses_deberta_and_names_the_families_that_work(family):
    model = parts.tiny_classifier(family)
    before = _state(model)
    with pytest.raises(ValueError, match=structured.STRUCTURED_FAMILIES) as err:
        structured.structured(model, heads=0.5, ffn=0.5)
    assert "prune.magnitude" in str(err.value)
    assert _same_state(before, model.state_dict())


def test_structured_families_are_the_ones_the_issue_names():
    assert {"BERT", "RoBERTa", "ELECTRA", "DistilBERT"} <= set(STRUCTURED) and "DeBERTa-v2" in REFUSED


def test_structured_keeps_the_models_dtype():
    model = parts.tiny_classifier("DistilBERT").half()
    small = structured.structured(model, heads=0.5, ffn=0.5)
    assert {p.dtype for p in small.parameters()} == {torch.float16}


@pytest.mark.parametrize("family", FAMILIES)
def test_recover_runs_a_few_steps_and_keeps_the_zeros(family, tokenizer):
    sparse = unstructured.magnitude(parts.tiny_classifier(family), 0.5)
    before = _state(sparse)
    tuned = recovery.recover(sparse, tokenizer, steps=2, batch_size=8, lr=1e-3)
    assert _same_state(before, sparse.state_dict())
    for name, layer in parts.linears(tuned, "blocks").items():
        assert torch.equal(layer.weight == 0, sparse.get_submodule(name).weight == 0), name
    assert not _same_state(before, tuned.state_dict())


def test_recover_with_a_teacher_on_distilbert(tokenizer):
    teacher = parts.tiny_classifier("DistilBERT")
    small = structured.structured(teacher, heads=0.5, ffn=0.5)
    teacher_before = _state(teacher)
    tuned = recovery.recover(small, tokenizer, steps=2, batch_size=8, lr=1e-3, teacher=teacher)
    assert _same_state(teacher_before, teacher.state_dict())
    assert not _same_state(_state(small), tuned.state_dict())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("family", ["BERT", "DistilBERT"])
def test_pruning_stays_on_the_gpu(family, tokenizer):
    model = parts.tiny_classifier(family).cuda()
    small = structured.structured(model, heads=0.5, ffn=0.5, score="gradient", tokenizer=tokenizer)
    tuned = recovery.recover(unstructured.magnitude(small, 0.5), tokenizer, steps=2, batch_size=8, teacher=model)
    assert {p.device.type for p in tuned.parameters()} == {"cuda"}
    inputs = {k: v.cuda() for k, v in _inputs(tuned, tokenizer).items()}
    with torch.no_grad():
        assert tuned(**inputs).logits.shape == (2, 2)
    with pytest.raises(ValueError, match="different devices"):
        recovery.recover(small, tokenizer, steps=1, teacher=model.cpu())
