"""The roofline (labkit.core.roofline): the cost walker against hand counts on a tiny model, the roof's numbers,
and no prediction (with its reason) for a module the walker does not know. No timed assert: only signs and ratios
loose enough for a busy machine."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from labkit.core import parts, roofline

HIDDEN, FFN, HEADS, LAYERS = 32, 64, 4, 2  # parts.tiny_classifier's BERT


def _roof(**peaks) -> roofline.Roof:
    return roofline.Roof(copy_gbs=10.0, triad_gbs=12.0, peaks=peaks or {"fp32": 100.0, "bf16": 200.0, "int8": 400.0})


def test_linear_cost_counts_weights_bias_and_activations_by_hand():
    layer = nn.Linear(3, 2)
    macs, moved = roofline.linear_cost(layer, rows=5)
    assert macs == 5 * 3 * 2
    assert moved == (3 * 2 + 2) * 4 + 5 * (3 + 2) * 4
    half = nn.Linear(3, 2, bias=False).to(torch.bfloat16)
    assert roofline.linear_cost(half, rows=5, act_bytes=2) == (30, 3 * 2 * 2 + 5 * 5 * 2)


def test_cost_of_a_tiny_bert_matches_a_hand_count():
    model = parts.tiny_classifier("BERT")
    batch, tokens = 2, 8
    c = roofline.cost(model, batch, tokens)
    assert c.unknown == []
    rows = batch * tokens
    per_block = rows * (4 * HIDDEN * HIDDEN + 2 * HIDDEN * FFN)  # q, k, v, o, up, down
    attention = 2 * batch * HEADS * tokens * tokens * (HIDDEN // HEADS)
    head = batch * (HIDDEN * HIDDEN + HIDDEN * 2)  # pooler and classifier: one vector per snippet
    assert c.macs == LAYERS * (per_block + attention) + head
    linears = [o for o in c.ops if o.dtype == "fp32"]
    assert len(linears) == LAYERS * 6 + 2
    q = next(o for o in c.ops if o.name.endswith("layer.0.attention.self.query"))
    assert q.bytes == (HIDDEN * HIDDEN + HIDDEN) * 4 + rows * 2 * HIDDEN * 4


def test_time_bound_and_prediction_follow_the_roof():
    model = parts.tiny_classifier("BERT")
    roof = _roof()
    bound = roofline.time_bound(roofline.cost(model, 32, 16), roof)
    assert bound["seconds"] == pytest.approx(bound["compute_s"] + bound["memory_s"])
    assert roofline.predicted_speedup(model, model, roof) == (1.0, "")
    half = copy.deepcopy(model).to(torch.bfloat16)
    speedup, _ = roofline.predicted_speedup(half, model, roof)
    assert 1.0 < speedup <= 2.0 + 1e-9  # twice the peak and half the bytes: at most 2x
    assert roof.ridge("int8") == pytest.approx(400e9 / 12e9)


def test_an_unknown_module_gives_no_prediction_but_its_reason():
    class Mystery(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(4))

    model = parts.tiny_classifier("BERT")
    odd = copy.deepcopy(model)
    odd.classifier = nn.Sequential(Mystery())
    speedup, reason = roofline.predicted_speedup(odd, model, _roof())
    assert speedup is None and "Mystery" in reason
    no_bf16 = _roof(fp32=100.0)
    speedup, reason = roofline.predicted_speedup(copy.deepcopy(model).to(torch.bfloat16), model, no_bf16)
    assert speedup is None and "bf16" in reason


def test_int8_sparse_and_token_pruned_models_are_costed():
    from labkit.dynamic.int8 import dynamic_int8
    from labkit.dynamic.tokens import token_pruning
    from labkit.sparse.layers import to_sparse

    model = parts.tiny_classifier("BERT")
    base = roofline.cost(model, 4, 16)
    int8 = roofline.cost(dynamic_int8(model), 4, 16)
    assert int8.unknown == [] and int8.macs == base.macs
    assert {o.dtype for o in int8.ops if "layer." in o.name and o.macs and "attention products" not in o.name} \
        == {"int8"}
    sparse = roofline.cost(to_sparse(model, 0.9, "ffn"), 4, 16)
    assert sparse.unknown == [] and sparse.macs < base.macs
    pruned = roofline.cost(token_pruning(model, 0.5, 1), 4, 16)
    assert pruned.unknown == [] and pruned.macs < base.macs
    declared = roofline.Declared(model, "int8", dynamic=True)(4, 16)
    assert sum(o.macs for o in declared) == base.macs


def test_the_roof_measured_here_is_positive_and_consistent():
    roof = roofline.measure_roof(array_bytes=8 * 2 ** 20, sizes=(64, 128))
    assert roof.copy_gbs > 0 and roof.triad_gbs > 0
    assert 0.1 < roof.triad_gbs / roof.copy_gbs < 10  # the same memory, two access patterns
    assert roof.peaks["fp32"] > 0 and roof.bandwidth > 0
    assert set(roof.peak_sizes["fp32"]) == {64, 128}
    assert roofline.last_level_cache() is None or roofline.last_level_cache() > 0


def test_timed_group_predicts_beside_measuring_once_a_roof_is_current(tiny_model, tokenizer, monkeypatch):
    from labkit.core import results

    half = copy.deepcopy(tiny_model).to(torch.bfloat16)
    rows = [results.Result("base", 0.8, 1.0, 10), results.Result("bf16", 0.8, 1.0, 5)]
    out = results.timed_group(rows, [tiny_model, half], tiny_model, tokenizer, warmup=0, repeats=1)
    assert roofline.current() is not None or all(r.predicted_speedup_b32 is None for r in out)
    monkeypatch.setattr(roofline, "current", lambda: _roof())  # no file written: the real cache keeps its roof
    out = results.timed_group(rows, [tiny_model, half], tiny_model, tokenizer, warmup=0, repeats=1)
    assert out[0].predicted_speedup_b32 == 1.0 and 1.0 < out[1].predicted_speedup_b32 <= 2.0 + 1e-9
    assert "predicted_speedup_b32" in results.table(out, baseline="base").columns
