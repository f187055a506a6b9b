"""The map of a classifier's parts, per family, checked against what the families really hold."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from labkit.core import parts

FAMILIES = [f.name for f in parts.FAMILIES]


@pytest.mark.parametrize("family", FAMILIES)
def test_map_finds_every_block_linear_and_the_head(family):
    m = parts.tiny_classifier(family, num_labels=3)
    s = parts.summary(m)
    assert s["family"] == family and s["blocks"] == 2 and s["heads"] == [4, 4] and s["ffn"] == [64, 64]
    blocks = parts.linears(m, "blocks")
    head = parts.head_linears(m)
    extra = 4 if family == "DeBERTa-v2" else 0  # its relative-position projections (pos_key_proj, pos_query_proj)
    assert len(blocks) == 12 + extra and len(parts.linears(m, "ffn")) == 4 and len(parts.linears(m, "attention")) == 8
    # Together with the head they are every Linear of the model (ELECTRA's embedding projection aside).
    every = {n for n, x in m.named_modules() if isinstance(x, nn.Linear)}
    assert set(blocks) | set(head) <= every and not set(blocks) & set(head)
    assert len(every - set(blocks) - set(head)) <= 1
    # The last head layer produces the logits.
    assert list(head.values())[-1].out_features == 3 or any(h.out_features == 3 for h in head.values())
    b = parts.blocks(m)[0]
    assert b.get("up").out_features == b.ffn_size == b.get("down").in_features
    assert b.get("q").out_features == b.n_heads * b.head_size


def test_plain_module_has_only_other_linears():
    toy = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    assert list(parts.linears(toy)) == ["0", "2"] and parts.head_linears(toy) == {}
    with pytest.raises(ValueError, match="not a Hugging Face"):
        parts.family_of(toy)


def test_a_base_model_without_a_head_is_refused():
    from transformers import BertConfig, BertModel

    base = BertModel(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                intermediate_size=64))
    with pytest.raises(ValueError, match="AutoModelForSequenceClassification"):
        parts.check_classifier(base)


def test_feed_drops_inputs_a_family_does_not_take(tokenizer):
    enc = dict(tokenizer(["a film"], return_tensors="pt"))
    distil = parts.tiny_classifier("DistilBERT")
    assert "token_type_ids" in enc and "token_type_ids" not in parts.feed(distil, enc)
    assert set(parts.feed(parts.tiny_classifier("BERT"), enc)) == set(enc)
    assert parts.input_names(distil, tokenizer) == ["input_ids", "attention_mask"]


def test_set_module_replaces_by_dotted_name():
    m = parts.tiny_classifier("DistilBERT")
    name = next(iter(parts.linears(m, "ffn")))
    new = nn.Linear(32, 64)
    parts.set_module(m, name, new)
    assert m.get_submodule(name) is new
    with torch.inference_mode():
        m(input_ids=torch.tensor([[101, 2000, 102]]))


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def test_copy_sharing_shares_storage_but_not_parameter_objects():
    m = parts.tiny_classifier("BERT")
    c = parts.copy_sharing(m)
    for (name, p), q in zip(m.named_parameters(), c.parameters()):
        assert q is not p and _storage(q) == _storage(p), name  # no new memory, yet the copy's own Parameter
    assert all(_storage(a) == _storage(b) for a, b in zip(m.buffers(), c.buffers()))
    name = next(iter(parts.linears(c, "ffn")))
    parts.set_module(c, name, nn.Identity())  # replacing a layer in the copy leaves the original's in place
    assert isinstance(m.get_submodule(name), nn.Linear)


def test_a_cast_copy_leaves_the_original_in_float32():
    m = parts.tiny_classifier("BERT")
    before = {k: v.clone() for k, v in m.state_dict().items()}
    c = parts.copy_sharing(m).to(torch.bfloat16)  # torch's own cast on the shared copy: new tensors in the copy only
    assert all(p.dtype == torch.bfloat16 for p in c.parameters())
    assert all(torch.equal(v, before[k]) and v.dtype == before[k].dtype for k, v in m.state_dict().items())
    d = parts.clone(m, lambda t: t.to(torch.bfloat16) if t.is_floating_point() else t)
    assert all(torch.equal(a, b) for a, b in zip(c.state_dict().values(), d.state_dict().values()))


def test_copy_sharing_clones_all_but_what_convert_returns_as_it_is():
    m = parts.tiny_classifier("DistilBERT")
    emb = m.get_input_embeddings().weight
    c = parts.copy_sharing(m, lambda t: t if t is emb else t.clone())  # convert sees the model's own tensors
    assert _storage(c.get_input_embeddings().weight) == _storage(emb)
    others = [(p, q) for p, q in zip(m.parameters(), c.parameters()) if p is not emb]
    assert others and all(_storage(p) != _storage(q) and torch.equal(p, q) for p, q in others)
    with torch.no_grad():
        for _, q in others:
            q.add_(1.0)  # training the copy
    assert all(not torch.equal(p, q) for p, q in others)


def test_copies_keep_tied_weights_tied():
    lm = nn.Module()
    lm.embed = nn.Embedding(10, 4)
    lm.head = nn.Linear(4, 10, bias=False)
    lm.head.weight = lm.embed.weight
    for c in (parts.copy_sharing(lm), parts.clone(lm)):
        assert c.head.weight is c.embed.weight and c.embed.weight is not lm.embed.weight
