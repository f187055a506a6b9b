import math
import warnings

import numpy as np
import pytest
import torch
from torch.nn.utils import prune as torch_prune

from labkit.core import measure, memory, parts
from labkit.dynamic import gradual, int8, tokens

SENTENCES = ["a good film", "the plot is thin but the actors carry it with charm and wit",
             "bad", "an overlong, dull and lifeless remake of a film nobody asked for"]


def _enc(tokenizer, texts=SENTENCES):
    return dict(tokenizer(texts, padding=True, return_tensors="pt"))


def _eager_cls_attention(model, enc, layer):
    """Reference: the [CLS] row of layer `layer`'s attention, from transformers' own eager attention."""
    ref = parts.clone(model)
    ref.config._attn_implementation = "eager"
    with torch.no_grad():
        att = ref(**enc, output_attentions=True).attentions[layer]  # (batch, heads, n, n)
    return att[:, :, 0, :].mean(1)


@pytest.mark.parametrize("keep_ratio,start_layer", [(0.5, 0), (0.3, 1), (0.75, 1)])
def test_keeps_exact_count_never_drops_cls_and_follows_attention(tiny_model, tokenizer, keep_ratio, start_layer):
    enc = _enc(tokenizer)
    pruned = tokens.token_pruning(tiny_model, keep_ratio, start_layer)
    with torch.no_grad():
        out = pruned(**enc, output_hidden_states=True)
    kept = tokens.last_kept(pruned)
    real = enc["attention_mask"].sum(1).tolist()
    want = [math.ceil(keep_ratio * n) for n in real]
    assert [int((row >= 0).sum()) for row in kept] == want
    assert kept.shape[1] == max(want) == out.hidden_states[-1].shape[1]
    assert (kept[:, 0] == 0).all()  # [CLS] first, in every row
    score = _eager_cls_attention(tiny_model, enc, start_layer)
    for row, n_real, k in zip(range(len(SENTENCES)), real, want):
        positions = kept[row][kept[row] >= 0].tolist()
        assert positions == sorted(positions) and max(positions) < n_real  # order kept, no padding
        s = score[row, 1:n_real].clone()
        top = (torch.topk(s, k - 1).indices + 1).tolist()
        assert set(positions) == {0, *top}


def test_keep_ratio_one_equals_the_unpruned_model(tiny_model, tokenizer):
    enc = _enc(tokenizer)
    pruned = tokens.token_pruning(tiny_model, 1.0, 0)
    with torch.no_grad():
        torch.testing.assert_close(pruned(**enc).logits, tiny_model(**enc).logits, atol=1e-5, rtol=1e-5)


def test_pruning_changes_output_and_does_not_mutate_input(tiny_model, tokenizer):
    enc = _enc(tokenizer)
    with torch.no_grad():
        before = tiny_model(**enc).logits.clone()
        pruned = tokens.token_pruning(tiny_model, 0.3, 0)
        assert not torch.allclose(pruned(**enc).logits, before)
        torch.testing.assert_close(tiny_model(**enc).logits, before)
    assert getattr(tiny_model, "token_pruning", None) is None
    same = tokens.token_pruning(tiny_model, 0.5, 1, inplace=True)
    assert same is tiny_model


def _writes_into_the_copy_leave_the_input(original, returned):
    before = {k: v.clone() for k, v in original.state_dict().items()}
    with torch.no_grad():
        for p in returned.parameters():
            p.add_(1.0)
    assert all(torch.equal(v, before[k]) for k, v in original.state_dict().items())


def test_token_pruning_returns_a_model_of_its_own(tiny_model):
    _writes_into_the_copy_leave_the_input(tiny_model, tokens.token_pruning(tiny_model, 0.5, 1))


@pytest.mark.parametrize("tight", [False, True])
def test_prune_finetune_returns_a_model_of_its_own(tiny_model, tokenizer, monkeypatch, tight):
    monkeypatch.setattr(memory, "tight", lambda: tight)  # lean training freezes the embedding: still not shared
    pruned, _ = gradual.prune_finetune(tiny_model, tokenizer, 0.5, steps=1, batch_size=4)
    _writes_into_the_copy_leave_the_input(tiny_model, pruned)


def test_eager_attention_and_batch_of_one(tiny_model, tokenizer):
    tiny_model.config._attn_implementation = "eager"
    enc = _enc(tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(tokens.token_pruning(tiny_model, 1.0, 1)(**enc).logits,
                                   tiny_model(**enc).logits, atol=1e-5, rtol=1e-5)
        pruned = tokens.token_pruning(tiny_model, 0.5, 1)
        pruned(**_enc(tokenizer, SENTENCES[1:2]))
    assert tokens.last_kept(pruned).shape == (1, math.ceil(0.5 * 15))


@pytest.mark.parametrize("kwargs", [dict(keep_ratio=0, start_layer=0), dict(keep_ratio=1.5, start_layer=0),
                                    dict(keep_ratio=0.5, start_layer=2), dict(keep_ratio=0.5, start_layer=-1)])
def test_bad_arguments_raise(tiny_model, kwargs):
    with pytest.raises(ValueError, match="keep_ratio|start_layer"):
        tokens.token_pruning(tiny_model, **kwargs)


def test_cubic_schedule_hits_its_sparsities():
    assert gradual.cubic_schedule(0, 100, 0.7) == 0.0
    assert gradual.cubic_schedule(100, 100, 0.7) == pytest.approx(0.7)
    assert gradual.cubic_schedule(50, 100, 0.8) == pytest.approx(0.7)
    assert gradual.cubic_schedule(0, 10, 0.9, initial=0.2) == pytest.approx(0.2)
    assert gradual.cubic_schedule(500, 100, 0.7) == pytest.approx(0.7)
    s = [gradual.cubic_schedule(t, 20, 0.7) for t in range(21)]
    assert all(b >= a for a, b in zip(s, s[1:]))
    for bad in (1.0, -0.1, 1.2):
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            gradual.cubic_schedule(1, 10, bad)


def test_length_latency_times_each_batch_size_and_length(tiny_model, tokenizer):
    df = tokens.length_latency(tiny_model, tokenizer, batch_sizes=(1, 2), lengths=(5, 9), repeats=1)
    assert list(zip(df["batch_size"], df["tokens"])) == [(1, 5), (1, 9), (2, 5), (2, 9)]
    assert (df["median_ms"] > 0).all()


def test_prune_smallest_is_greedy_and_monotone():
    torch.manual_seed(0)
    w = torch.randn(16, 8)
    keep = torch.ones_like(w, dtype=torch.bool)
    keep = gradual.prune_smallest(w, keep, 0.25)
    # reference: torch.nn.utils.prune's L1 unstructured on the same weight
    lin = torch.nn.Linear(8, 16)
    lin.weight.data = w.clone()
    torch_prune.l1_unstructured(lin, "weight", amount=32)
    assert torch.equal(keep, lin.weight_mask.bool())
    w2 = w.clone()
    w2[~keep] = 100.0  # a pruned weight that grew back must stay pruned
    keep2 = gradual.prune_smallest(w2, keep, 0.5)
    assert int((~keep2).sum()) == 64 and not (keep2 & ~keep).any()
    assert torch.equal(gradual.prune_smallest(w2, keep2, 0.1), keep2)  # a lower target revives nothing


def test_prune_finetune_reaches_sparsity_and_keeps_mask(tiny_model, tokenizer):
    for schedule in ("cubic", "oneshot"):
        model, hist = gradual.prune_finetune(tiny_model, tokenizer, 0.6, steps=3, schedule=schedule, batch_size=4)
        assert gradual.weight_sparsity(model) == pytest.approx(0.6, abs=1e-3)
        assert hist["sparsity"].iloc[-1] == pytest.approx(0.6)
        assert (hist["sparsity"].iloc[0] == 0.0) == (schedule == "cubic")
    assert gradual.weight_sparsity(tiny_model) == 0.0
    with pytest.raises(ValueError, match="schedule"):
        gradual.prune_finetune(tiny_model, tokenizer, 0.5, 2, schedule="linear")


def test_prune_finetune_with_a_teacher_distils_without_touching_it(tiny_model, tokenizer):
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    model, hist = gradual.prune_finetune(tiny_model, tokenizer, 0.5, steps=2, batch_size=4, teacher=tiny_model)
    assert gradual.weight_sparsity(model) == pytest.approx(0.5, abs=1e-3) and hist["loss"].notna().all()
    assert all(torch.equal(v, before[k]) for k, v in tiny_model.state_dict().items())


def test_dynamic_int8_is_real_and_quiet(tiny_model, tokenizer):
    enc = _enc(tokenizer)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q = int8.dynamic_int8(tiny_model)
    names = [m._get_name() for m in tokens.encoder_layers(q).modules()]
    assert names.count("DynamicQuantizedLinear") == len(parts.linears(tiny_model, "blocks")) > 0
    assert "DynamicQuantizedLinear" not in q.classifier._get_name()
    assert all(type(m) is torch.nn.Linear for m in parts.linears(tiny_model, "blocks").values())
    with torch.no_grad():
        torch.testing.assert_close(q(**enc).logits, tiny_model(**enc).logits, atol=0.05, rtol=0.05)
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    with torch.no_grad():  # the result is the caller's to change: its float parts are its own
        for t in list(q.parameters()) + list(q.buffers()):
            if t.is_floating_point():
                t.add_(1.0)
    assert all(torch.equal(v, before[k]) for k, v in tiny_model.state_dict().items())


def test_mean_score_follows_attention_received_from_all_tokens(tiny_model, tokenizer):
    enc = _enc(tokenizer)
    pruned = tokens.token_pruning(tiny_model, 0.5, 1, score="mean")
    with torch.no_grad():
        pruned(**enc)
        ref = parts.clone(tiny_model)
        ref.config._attn_implementation = "eager"
        att = ref(**enc, output_attentions=True).attentions[1].mean(1)  # (batch, n, n), heads averaged
    kept = tokens.last_kept(pruned)
    for row, n_real in enumerate(enc["attention_mask"].sum(1).tolist()):
        k = math.ceil(0.5 * n_real)
        received = att[row, :n_real, 1:n_real].mean(0)
        top = (torch.topk(received, k - 1).indices + 1).tolist()
        assert set(kept[row][kept[row] >= 0].tolist()) == {0, *top}
    with pytest.raises(ValueError, match="score"):
        tokens.token_pruning(tiny_model, 0.5, 1, score="max")


def test_token_pruning_composes_with_dynamic_int8(tiny_model, tokenizer):
    enc = _enc(tokenizer)
    both = tokens.token_pruning(int8.dynamic_int8(tiny_model), 0.5, 1)
    with torch.no_grad():
        both(**enc)
    counts = [int((row >= 0).sum()) for row in tokens.last_kept(both)]
    assert counts == [math.ceil(0.5 * n) for n in enc["attention_mask"].sum(1).tolist()]


def test_tour_rows_do_not_mutate_the_model(tokenizer):
    from transformers import BertConfig, BertForSequenceClassification


    torch.manual_seed(0)  # four layers: the tour prunes from layer 2
    tiny_model = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                                                          intermediate_size=64)).eval()
    reference = measure.predictions(tiny_model, tokenizer, "test")  # the tour measures the whole test split
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    rows = tokens.tour(tiny_model, tokenizer, reference) + int8.tour(tiny_model, tokenizer, reference)
    assert [r.name for r in rows] == ["token pruning keep 0.5 from layer 2", "token pruning keep 0.5 from layer 2 "
                                      "(mean score)", "dynamic int8 (torch)"]
    assert all(r.snippets == len(reference) for r in rows)  # the whole test split, as the reference
    assert len({r.baseline_b32_ms for r in rows[:2]}) == 1 and all(r.rounds >= 5 for r in rows)  # interleaved groups
    assert getattr(tiny_model, "token_pruning", None) is None
    assert all(torch.equal(v, before[k]) for k, v in tiny_model.state_dict().items())


def test_compare_predictions_carries_intervals_and_paired_differences():
    labels = np.array([0, 1] * 50)
    preds = {"fp32": labels.copy(), "worse": np.where(np.arange(100) < 10, 1 - labels, labels)}
    df = int8.compare_predictions(preds, labels, "fp32")
    assert df.loc["worse", "agreement"] == 0.9 and df.loc["fp32", "accuracy"] == 1.0
    assert df.loc["worse", "minus fp32"].startswith("-0.100 [") and df.loc["worse", "p (McNemar)"] < 0.01
    with pytest.raises(ValueError, match="baseline"):
        int8.compare_predictions(preds, labels, "int8")


def test_prune_finetune_takes_a_schedule_function(tiny_model, tokenizer):
    seen = []

    def half_then_final(step, total, final):
        seen.append((step, total))
        return final / 2 if step < total else final
    model, hist = gradual.prune_finetune(tiny_model, tokenizer, 0.6, steps=3, schedule=half_then_final,
                                         batch_size=4, ramp=0.5)
    assert seen[0] == (0, 1) and hist["sparsity"].tolist() == [0.3, 0.6, 0.6]
    assert gradual.weight_sparsity(model) == pytest.approx(0.6, abs=1e-3)
    with pytest.raises(ValueError, match="not a sparsity"):
        gradual.prune_finetune(tiny_model, tokenizer, 0.6, steps=2, schedule=lambda s, t, f: 1.5, batch_size=4)
    with pytest.raises(ValueError, match="not a number"):
        gradual.prune_finetune(tiny_model, tokenizer, 0.6, steps=2, schedule=lambda s, t, f: None, batch_size=4)


def test_shifted_inputs_and_the_narrow_calibration_set():
    normal, long = int8.shifted_test("normal", 12), int8.shifted_test("long", 12)
    assert len(normal) == len(long) == 12 and long["text"].str.len().min() >= normal["text"].str.len().median()
    rep = int8.shifted_test("repeated", 12)
    assert (rep["text"] == (normal["text"] + " ") * 2 + normal["text"]).all()
    assert (int8.shifted_test("upper", 12)["text"] == normal["text"].str.upper()).all()
    assert (rep["label"] == normal["label"]).all()
    with pytest.raises(ValueError, match="repeated"):
        int8.shifted_test("noisy")
    short = int8.calibration_texts(8)
    assert len(short) == 8 and max(map(len, short)) <= normal["text"].str.len().min()
