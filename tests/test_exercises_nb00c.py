"""Each targeted hint of notebook 00c's exercises, reached by the mistake it names (test_checks.py runs the table),
and the references against labkit's roofline, which the tour runs."""

import torch
from torch import nn

from labkit.core import parts, roofline
from labkit.course import checks


def _cost(layer, rows, act_bytes=4, *, factor=1, per_row=True, inputs=True, outputs=True, bias=True, size=None):
    size = layer.weight.element_size() if size is None else size
    moved = layer.weight.numel() * size
    if bias and layer.bias is not None:
        moved += layer.bias.numel() * size  # the learner who assumes 4 bytes assumes it for the bias too
    moved += rows * act_bytes * ((layer.in_features if inputs else 0) + (layer.out_features if outputs else 0))
    return factor * (rows if per_row else 1) * layer.in_features * layer.out_features, moved


def _split(rule):
    def split(ops, peak, bandwidth):
        compute = memory = 0.0
        for macs, moved in ops:
            tc, tm = macs / peak, moved / bandwidth
            if rule == "sum":
                compute, memory = compute + tc, memory + tm
            elif rule == "swapped":
                compute, memory = (compute + tm, memory) if tm >= tc else (compute, memory + tc)
            elif rule == "min":
                compute, memory = (compute, memory + tc) if tm >= tc else (compute + tm, memory)
        if rule == "totals":
            total = max(sum(m for m, _ in ops) / peak, sum(b for _, b in ops) / bandwidth)
            return total, 0.0
        return compute, memory
    return split


MISTAKES = [
    ("00c.linear_cost", "flops", lambda: lambda layer, rows, act_bytes=4: _cost(layer, rows, act_bytes, factor=2)),
    ("00c.linear_cost", "macs_without_rows",
     lambda: lambda layer, rows, act_bytes=4: _cost(layer, rows, act_bytes, per_row=False)),
    ("00c.linear_cost", "weights_only",
     lambda: lambda layer, rows, act_bytes=4: _cost(layer, rows, act_bytes, inputs=False, outputs=False)),
    ("00c.linear_cost", "no_output", lambda: lambda layer, rows, act_bytes=4: _cost(layer, rows, act_bytes,
                                                                                    outputs=False)),
    ("00c.linear_cost", "no_bias", lambda: lambda layer, rows, act_bytes=4: _cost(layer, rows, act_bytes, bias=False)),
    ("00c.linear_cost", "fixed_size", lambda: lambda layer, rows, act_bytes=4: _cost(layer, rows, act_bytes, size=4)),
    ("00c.forward_split", "sum", lambda: _split("sum")),
    ("00c.forward_split", "swapped", lambda: _split("swapped")),
    ("00c.forward_split", "totals", lambda: _split("totals")),
    ("00c.forward_split", "min", lambda: _split("min")),
    ("00c.lowest_intensity", "linear", lambda: "linear"),
]


def test_the_linear_cost_reference_is_the_roofline_walkers():
    mine = checks.solution("00c.linear_cost")
    for layer in (nn.Linear(7, 5), nn.Linear(4, 9, bias=False).to(torch.bfloat16)):
        assert mine(layer, 11, layer.weight.element_size()) == roofline.linear_cost(layer, 11,
                                                                                      layer.weight.element_size())
    model = parts.tiny_classifier("BERT")
    assert roofline.cost(model, 2, 8, linear=mine).bytes == roofline.cost(model, 2, 8).bytes


def test_the_forward_split_reference_agrees_with_the_roofline_bound():
    split = checks.solution("00c.forward_split")
    model = parts.tiny_classifier("BERT")
    roof = roofline.Roof(copy_gbs=10.0, triad_gbs=12.0, peaks={"fp32": 50.0})
    cost = roofline.cost(model, 4, 16)
    compute_s, memory_s = split([(op.macs, op.bytes) for op in cost.ops], roof.peak("fp32"), roof.bandwidth)
    bound = roofline.time_bound(cost, roof)
    assert abs(compute_s - bound["compute_s"]) < 1e-12 and abs(memory_s - bound["memory_s"]) < 1e-12
