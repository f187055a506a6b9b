"""Notebook 00c (where the time goes): a Linear's multiply-adds and bytes (its arithmetic intensity), the forward's
time split into compute-bound and memory-bound parts on a roofline, which layers move the most bytes per
multiply-add, and predictions of the techniques' speed-ups at batch 32."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from labkit.core import roofline
from labkit.course.exercises import Mistake, attempt, close, exercise, given, prediction, written

# --- 00c.linear_cost: multiply-adds and bytes moved by one Linear ------------------------------------------------


def _linear_cost_solution():
    return roofline.linear_cost  # the notebook's #@save cell: one copy of the reference, in the package


def _golden_layers() -> list[tuple[nn.Linear, int, int]]:
    """(layer, rows, act_bytes): a Linear with a bias, one without, a bf16 one, and one row only."""
    with_bias = nn.Linear(6, 4)
    no_bias = nn.Linear(5, 3, bias=False)
    half = nn.Linear(8, 2).to(torch.bfloat16)
    return [(with_bias, 10, 4), (no_bias, 7, 4), (half, 3, 2), (nn.Linear(384, 1536), 1, 4)]


def _cost_by(layer: nn.Linear, rows: int, act: int, *, macs_factor: int = 1, rows_in_macs: bool = True,
             weight_size: int | None = None, bias: bool = True, inputs: bool = True, outputs: bool = True):
    fin, fout = layer.in_features, layer.out_features
    size = layer.weight.element_size() if weight_size is None else weight_size
    moved = fin * fout * size + (fout * size if bias and layer.bias is not None else 0)
    moved += rows * act * ((fin if inputs else 0) + (fout if outputs else 0))
    return macs_factor * (rows if rows_in_macs else 1) * fin * fout, moved


@exercise("00c.linear_cost",
          "Write linear_cost(layer, rows, act_bytes=4): layer is an nn.Linear applied to `rows` input vectors whose "
          "elements take act_bytes bytes each. Return (multiply-adds, bytes moved) as two ints: the multiply-adds "
          "of the whole product, and the bytes read and written once each: the weight and the bias (in their own "
          "dtype) and the input and output activations. Checked on small Linears (with and without a bias, one in "
          "bf16, one applied to a single row) against a hand count.",
          _linear_cost_solution,
          {"flops": "your multiply-adds are twice the count: that is FLOPs (a multiply and an add each). The roofline "
                    "of this lesson counts multiply-adds, as the peak measured above does.",
           "macs_without_rows": "your multiply-adds are those of one row: every one of the `rows` input vectors is "
                                "multiplied by the whole weight.",
           "weights_only": "you counted the weight's bytes only. The activations are read from memory and written "
                           "back too, and with many rows they are most of the traffic.",
           "no_output": "you counted the input activations but not the output the layer writes: it is stored once, "
                        "for the next layer to read.",
           "no_bias": "the bias is read too: a small term, but the count must be exact.",
           "fixed_size": "you assumed 4 bytes per weight: a bf16 layer stores 2. Read each tensor's own element size.",
           "wrong": "count by hand on the smallest layer (6 inputs, 4 outputs, a bias, 10 rows, 4-byte activations): "
                    "multiply-adds, then the weight, bias, input and output bytes one at a time, and compare."},
          kind="code",
          uses="every Linear of the real classifier at batch 1 and 32 and at 64 and 128 tokens: the table of "
               "arithmetic intensities, compared with labkit's cost walker",
          ladder=("A Linear computes y = x W^T + b for each of its input rows. Each output element takes one "
                  "multiply-add per input feature; the bytes moved are everything that must come from memory or "
                  "go back to it once: the weights, the bias, the rows of x and the rows of y.",
                  "The slips: counting one row's multiply-adds instead of all rows', counting FLOPs (2 per "
                  "multiply-add), forgetting that the output is written, and assuming 4 bytes for a weight stored "
                  "in bf16 (each tensor knows its own element size).",
                  "A 2-in, 3-out Linear with a bias, in fp32, applied to 4 rows of fp32: 4 x 2 x 3 = 24 multiply-"
                  "adds; weights 6 x 4 = 24 bytes, bias 3 x 4 = 12, input 4 x 2 x 4 = 32, output 4 x 3 x 4 = 48: "
                  "116 bytes, an intensity of 24 / 116, about 0.21 multiply-adds per byte."))
def _check_linear_cost(answer: Any) -> str | None:
    for layer, rows, act in _golden_layers():
        got = attempt(answer, layer, rows, act)
        if not isinstance(got, tuple) or len(got) != 2:
            raise Mistake("wrong_type", "return a tuple (multiply-adds, bytes)")
        got = (float(got[0]), float(got[1]))
        if got == tuple(map(float, _cost_by(layer, rows, act))):
            continue
        want_macs, want_bytes = _cost_by(layer, rows, act)
        if got[0] == 2 * want_macs:
            return "flops"
        if got[0] != want_macs and got[0] == _cost_by(layer, rows, act, rows_in_macs=False)[0]:
            return "macs_without_rows"
        if got[0] != want_macs:
            return "wrong"
        for mistake, kwargs in (("weights_only", dict(inputs=False, outputs=False)), ("no_output", dict(outputs=False)),
                                ("no_bias", dict(bias=False)), ("fixed_size", dict(weight_size=4))):
            if got[1] == _cost_by(layer, rows, act, **kwargs)[1]:
                return mistake
        return "wrong"
    return None


# --- 00c.forward_split: the forward's time on the roofline, compute-bound and memory-bound ----------------------

def _forward_split_solution():
    def forward_split(ops: list[tuple[float, float]], peak: float, bandwidth: float) -> tuple[float, float]:
        compute_s, memory_s = 0.0, 0.0
        for macs, moved in ops:
            t_compute = macs / peak
            t_memory = moved / bandwidth
            if t_memory >= t_compute:  # the bytes take longer: this layer waits on memory
                memory_s += t_memory
            else:
                compute_s += t_compute
        return compute_s, memory_s
    return forward_split


GOLDEN_OPS = [(1000.0, 100.0), (10.0, 400.0), (0.0, 50.0), (600.0, 300.0)]  # macs, bytes
GOLDEN_PEAK, GOLDEN_BANDWIDTH = 100.0, 50.0  # multiply-adds / s, bytes / s: the ridge at 2 multiply-adds per byte


def _split_by(ops, peak, bw, rule: str) -> tuple[float, float]:
    compute = memory = 0.0
    for macs, moved in ops:
        tc, tm = macs / peak, moved / bw
        if rule == "sum":
            compute, memory = compute + tc, memory + tm
        elif rule == "swapped":
            if tm >= tc:
                compute += tm
            else:
                memory += tc
        elif rule == "min":
            if tm >= tc:
                memory += tc
            else:
                compute += tm
    return compute, memory


@exercise("00c.forward_split",
          "Write forward_split(ops, peak, bandwidth): ops is a list of (multiply-adds, bytes moved) pairs, one per "
          "layer of a forward pass; peak is the machine's multiply-adds per second and bandwidth its bytes per "
          "second. Return (compute_seconds, memory_seconds): the roofline's lower bound on the forward's time, "
          "split into the time of the layers that are compute-bound and of those that are memory-bound. A layer "
          "whose two times are equal counts as memory-bound. Checked on four small layers against a hand count.",
          _forward_split_solution,
          {"sum": "you added both times of every layer. A layer's multiply-adds and its bytes move at the same "
                  "time, so its time is bounded by the longer of the two, not their sum.",
           "swapped": "your two totals are swapped: a layer whose bytes take longer than its arithmetic is limited "
                      "by memory, and its time goes into the memory-bound total.",
           "min": "you took the shorter of a layer's two times. The roofline's bound is the longer: the layer "
                  "cannot finish before both its arithmetic and its bytes are done.",
           "totals": "you placed the whole forward on the roofline at once. Each layer has its own intensity, so "
                     "each is bound by its own roof and the bounds add up layer by layer.",
           "wrong": "work the four golden layers by hand with a peak of 100 and a bandwidth of 50: each layer's two "
                    "times, the longer of them, and which total it joins."},
          kind="code",
          uses="the real classifier's layers (from labkit's cost walker) at batch 1 and batch 32, on this "
               "machine's measured roof, beside the measured latency",
          ladder=("On a roofline a layer runs at best at the peak (if its arithmetic takes longer) or at the "
                  "bandwidth (if its bytes take longer). Its lower bound is the longer of its two times, and the "
                  "forward's bound is the sum over its layers.",
                  "Decide layer by layer, not on the model's totals: a model with a few memory-bound layers and "
                  "many compute-bound ones has time in both columns. And take the longer time, never the sum: "
                  "arithmetic and memory traffic overlap.",
                  "A peak of 10 multiply-adds/s and a bandwidth of 10 bytes/s: a layer of (30 multiply-adds, 10 "
                  "bytes) takes 3 s computing and 1 s moving, so it adds 3 s to the compute-bound total; a layer "
                  "of (5, 20) takes 0.5 s and 2 s, so it adds 2 s to the memory-bound total. Result: (3.0, 2.0)."))
def _check_forward_split(answer: Any) -> str | None:
    got = attempt(answer, list(GOLDEN_OPS), GOLDEN_PEAK, GOLDEN_BANDWIDTH)
    if not isinstance(got, tuple) or len(got) != 2:
        raise Mistake("wrong_type", "return a tuple (compute_seconds, memory_seconds)")
    got = (float(got[0]), float(got[1]))

    def same(want):
        return close(got[0], want[0]) and close(got[1], want[1])

    if same(_forward_split_solution()(GOLDEN_OPS, GOLDEN_PEAK, GOLDEN_BANDWIDTH)):
        return None
    for rule in ("sum", "swapped", "min"):
        if same(_split_by(GOLDEN_OPS, GOLDEN_PEAK, GOLDEN_BANDWIDTH, rule)):
            return rule
    macs, moved = sum(m for m, _ in GOLDEN_OPS), sum(b for _, b in GOLDEN_OPS)
    if close(sum(got), max(macs / GOLDEN_PEAK, moved / GOLDEN_BANDWIDTH)):
        return "totals"
    return "wrong"


# --- 00c.lowest_intensity: which kind of layer moves the most bytes per multiply-add -------------------------------

@exercise("00c.lowest_intensity",
          "Of the layers of MiniLM that multiply (its Linears, and the attention products QK^T and scores x V), "
          "which kind has the lowest arithmetic intensity at batch 32 and 64 tokens? Answer 'linear' or "
          "'attention'.",
          lambda: "attention",
          {"linear": "look at what the attention products multiply: two activation tensors, each read from memory, "
                     "and a scores tensor (tokens x tokens per head) written and read back. There is no weight "
                     "reused across the batch's rows as a Linear's weight is.",
           "wrong": "answer one of the two words, 'linear' or 'attention', from the intensity table above."},
          ladder=("A layer's intensity is high when each byte it reads serves many multiply-adds. A Linear's "
                  "weight is read once and used for every row of the batch.",
                  "The attention products multiply activations by activations: nothing in them is shared across "
                  "the snippets of a batch, and the scores they write grow with the square of the tokens.",
                  "Compare two products of the same size: a weight of 1000 x 1000 applied to 1000 rows reuses each "
                  "weight 1000 times; 1000 separate 1 x 1000 by 1000 x 1 products reuse nothing."))
def _check_lowest_intensity(answer: Any) -> str | None:
    answer = str(given(answer)).strip().lower()
    if answer.startswith("attention"):
        return None
    return "linear" if answer.startswith("linear") else "wrong"


prediction("00c.int8_speedup_b32", "How many times fp32's speed will torch's dynamic int8 classifier run at batch "
           "32 on this machine?", unit="x")
prediction("00c.sparse_speedup_b32", "How many times fp32's speed will the classifier with 90%-sparse FFN layers "
           "(run as CSR) run at batch 32 on this machine?", unit="x")
written("00c.the_gap", "The roofline predicted each technique's speed-up from bytes and multiply-adds, and the "
        "notebook measured it. For int8 and for the sparse layers, explain the gap between the two numbers measured "
        "here, naming what the roofline does not see.", points=2)
