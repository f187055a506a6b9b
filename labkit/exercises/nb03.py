"""Notebook 03 (pruning): what is left after pruning, what a head costs, a magnitude mask, zeros and speed."""

from __future__ import annotations

from typing import Any

import torch

from . import close, exercise, given

EX_WEIGHT = torch.tensor([[0.9, -0.1, 0.4, -0.05], [0.2, -0.7, 0.03, 0.6]])


def _remaining() -> int:
    return 1536 * 384 - round(0.7 * 1536 * 384)


@exercise("03.remaining_weights",
          "A 1536x384 FFN weight is magnitude-pruned to 70% sparsity. How many weights are left non-zero?",
          _remaining,
          {"removed": "that is how many were removed; the question asks how many are left.",
           "wrong": "count the weights, then remove round(0.7 * count) of them."})
def _check_remaining(answer: Any) -> str | None:
    answer = float(given(answer))
    if close(answer, round(0.7 * 1536 * 384)):
        return "removed"
    return None if close(answer, _remaining()) else "wrong"


def _head_params() -> int:
    # 4 heads of size 32: rows of query/key/value (weights + biases) and columns of the output projection.
    return 4 * 32 * (3 * 384 + 3) + 4 * 32 * 384


@exercise("03.head_params",
          "How many parameters disappear when 4 of the 12 heads (head size 32, hidden 384) are removed from "
          "one layer's attention?",
          _head_params,
          {"no_output": "a head also owns 32 input columns of the output projection: they go too.",
           "wrong": "each head owns 32 rows (and 32 biases) in query, key and value, and 32 input columns of the "
                    "output projection (its bias stays)."})
def _check_head_params(answer: Any) -> str | None:
    answer = float(given(answer))
    if close(answer, 4 * 32 * (3 * 384 + 3)):
        return "no_output"
    return None if close(answer, _head_params()) else "wrong"


def _magnitude_mask() -> torch.Tensor:
    return EX_WEIGHT.abs() >= EX_WEIGHT.abs().flatten().sort(descending=True).values[3]


@exercise("03.magnitude_mask",
          "Write the keep-mask (True = keep) that prunes 50% of EX_WEIGHT by magnitude, layer scope.",
          _magnitude_mask,
          {"signed": "rank by magnitude, |w|: -0.7 is a large weight, not a small one.",
           "shape": "the mask must have the weight's shape (2x4), so it can multiply it.",
           "wrong": "keep the 4 largest |w| of the 8 weights: compare weight.abs() with the 4th largest."})
def _check_magnitude_mask(answer: Any) -> str | None:
    mask = torch.as_tensor(given(answer)).bool()
    if mask.shape != EX_WEIGHT.shape:
        return "shape"
    if torch.equal(mask, EX_WEIGHT >= EX_WEIGHT.flatten().sort(descending=True).values[3]):
        return "signed"
    return None if torch.equal(mask, _magnitude_mask()) else "wrong"


def _zeros_speedup() -> float:
    return 1.0


@exercise("03.zeros_speedup",
          "Roughly what b32 speedup does 50% unstructured sparsity give on a CPU, with weights stored dense?",
          _zeros_speedup,
          {"halved": "2x would need the multiply to skip zeros; a dense matmul reads and multiplies every stored number.",
           "wrong": "the matrix multiply still reads and multiplies every stored number, zero or not."})
def _check_zeros_speedup(answer: Any) -> str | None:
    answer = float(given(answer))
    if answer >= 1.7:
        return "halved"
    return None if 0.7 <= answer <= 1.3 else "wrong"  # "about 1x": timing noise, not a speedup
