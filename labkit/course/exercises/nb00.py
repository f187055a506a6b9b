"""Notebook 00 (baseline and myths): where the bytes are, a magnitude mask, and predictions about float64, bf16
training and a masked layer."""

from __future__ import annotations

from typing import Any

import torch

from labkit.course.exercises import attempt, exercise, given, prediction, written
from labkit.prune import masks

# The baseline's parameters by part (measure.footprint of MiniLM-L6 with a 2-class head): the embedding tables,
# one transformer block (6 of them), the pooler and classifier. Bytes are 4 per parameter in float32.
EMBEDDINGS, BLOCK, HEAD = 11_918_592, 1_774_464, 148_610


def _size_ceiling() -> float:
    total = EMBEDDINGS + 6 * BLOCK + HEAD
    return (EMBEDDINGS + 6 * BLOCK / 4 + HEAD) / total  # only the blocks go from 4 bytes a number to 1


@exercise("00.size_ceiling",
          "Every number in the 6 transformer blocks is stored in 1 byte instead of 4; the embeddings and the head "
          "stay float32. What fraction of the float32 model's bytes remains? (a number between 0 and 1, read from "
          "the footprint table; checked to within 0.02)",
          _size_ceiling,
          {"everything": "that is what would remain if every part shrank 4 times. The embeddings are not touched: "
                         "they keep all of their bytes, and they are about half the model.",
           "blocks_only": "that is what remains of the blocks alone. The question asks for the whole model: the "
                          "parts that were not touched are still in the file.",
           "saved": "that is the fraction saved, not the fraction that remains.",
           "wrong": "add up what each part still holds after the change, as shares of the float32 model: a part "
                    "that is not touched keeps its whole share, a part stored in a quarter of the bytes keeps a "
                    "quarter of its share."},
          ladder=("A file's bytes are the sum of its parts' bytes. A technique that touches some parts leaves the "
                  "others' bytes exactly as they were, so the parts it cannot touch set a floor under the size.",
                  "The usual slip is to apply the 4x to the whole model. Read the two share columns of the table: "
                  "only the blocks' share shrinks; the embeddings' (the largest single part) and the head's stay.",
                  "A smaller case: a model that is 60% embeddings and 40% layers, with the layers stored in half "
                  "the bytes, keeps 0.6 + 0.4 / 2 = 0.8 of its size: at best 1.25x smaller, however good the "
                  "technique."))
def _check_size_ceiling(answer: Any) -> str | None:
    answer = float(given(answer))
    right = _size_ceiling()
    if abs(answer - right) <= 0.02:
        return None
    blocks = 6 * BLOCK / (EMBEDDINGS + 6 * BLOCK + HEAD)
    if abs(answer - 0.25) <= 0.02:
        return "everything"
    if abs(answer - blocks / 4) <= 0.02:
        return "blocks_only"
    if abs(answer - (1 - right)) <= 0.02:
        return "saved"
    return "wrong"


prediction("00.float64_slowdown", "How many times the float32 model's batch-32 latency will the float64 copy take?",
           unit="x")
prediction("00.bf16_train_speedup", "How many times as fast as a float32 fine-tuning step will a bf16-autocast "
           "step run on this machine?", unit="x")
prediction("00.mask_accuracy_change", "By how many points will accuracy on the quick subset change when half of "
           "block 0's feed-forward up-projection is masked (masked minus baseline)?", unit=" points")
written("00.mask_verdict", "The masked model's accuracy moved by the measured difference, with its interval and "
        "McNemar's p, on the quick subset. Does this show that masking half of the layer costs no accuracy? What "
        "would it take to show that it costs less than 1 point?", points=2)


# The worked example of the notebook, small enough to do on paper: 8 weights, half of them zeroed.
GOLDEN_W = torch.tensor([[0.5, -2.0, 0.1, 3.0],
                         [-0.3, 1.0, -4.0, 0.2]])


def _magnitude_mask():
    def magnitude_mask(w: torch.Tensor, sparsity: float) -> torch.Tensor:
        return torch.where(masks.magnitude_mask(w, sparsity), w, torch.zeros_like(w))  # the kit's keep-mask
    return magnitude_mask


def _zeroed_by(w: torch.Tensor, score: torch.Tensor, k: int) -> torch.Tensor:
    """w with the k entries of smallest `score` set to zero (the shapes of the usual mistakes)."""
    out = w.clone().flatten()
    out[score.flatten().argsort()[:k]] = 0
    return out.reshape(w.shape)


@exercise("00.magnitude_mask",
          "Write magnitude_mask(w, sparsity): w is a float tensor of any shape, 0 <= sparsity <= 1. Return a new "
          "tensor of w's shape and dtype in which round(sparsity * w.numel()) entries, those of smallest magnitude, "
          "are 0 and every other entry is unchanged; leave w as it was. Checked on the worked example (sparsity "
          "0.25 and 0.5) and on a random 16x24 matrix at 0.9.",
          _magnitude_mask,
          {"flattened": "your result lost the matrix shape: indexing with a boolean tensor (the article's filter) "
                        "gathers the kept values into a 1-D tensor, which no layer can use. A mask decides position "
                        "by position: every position stays, and a dropped weight becomes a zero where it was.",
           "signed": "you ranked the weights by their signed value, so large negative weights were zeroed. A "
                     "weight's importance here is its size, whatever its sign: -4.0 matters more than 0.1.",
           "kept_fraction": "sparsity is the fraction set to ZERO: with sparsity 0.25, a quarter of the entries "
                            "become 0 and three quarters stay.",
           "largest_zeroed": "you zeroed the largest magnitudes: keep the big weights (they matter most) and zero "
                             "the small ones.",
           "wrong": "count the entries that must become zero, find the magnitude at that rank, and zero the entries "
                    "whose magnitude is at or below it; every other entry, and the shape, stay as they were."},
          kind="code", uses="the masked FFN layer of the real baseline (accuracy before and after)",
          ladder=("A magnitude mask takes a weight's size |w| as its importance: the smallest weights change the "
                  "layer's output least when they become 0. The mask decides per position, so the result has w's "
                  "shape, with zeros where weights were dropped.",
                  "The step that usually goes wrong is the cut. Sparsity is the fraction that becomes zero, so the "
                  "cut is the k-th smallest magnitude, k being that fraction of the number of entries (rounded); "
                  "compare magnitudes with it, not signed values, and build a new tensor rather than writing into w.",
                  "A smaller case: w = [[1.0, -0.2], [0.4, -3.0]] at sparsity 0.5. Two entries become zero; the "
                  "magnitudes sorted are 0.2, 0.4 | 1.0, 3.0, so the cut is 0.4, and every entry with |w| <= 0.4 "
                  "becomes 0: [[1.0, 0.0], [0.0, -3.0]]. The -3.0 stays: it is the largest."))
def _check_magnitude_mask(answer: Any) -> str | None:
    gen = torch.Generator().manual_seed(0)
    cases = [(GOLDEN_W, 0.25), (GOLDEN_W, 0.5), (torch.randn(16, 24, generator=gen), 0.9)]
    for w, sparsity in cases:
        got = torch.as_tensor(attempt(answer, w, sparsity))
        if got.shape != w.shape:
            return "flattened"
        got = got.to(w.dtype)
        k = round(sparsity * w.numel())
        if torch.equal(got, _magnitude_mask()(w, sparsity)):
            continue
        if int((got == 0).sum()) == w.numel() - k and sparsity != 0.5:
            return "kept_fraction"
        if torch.equal(got, _zeroed_by(w, -w.abs(), k)):
            return "largest_zeroed"
        if torch.equal(got, _zeroed_by(w, w, k)):
            return "signed"
        return "wrong"
    return None
