"""Notebook 00 (baseline and myths): what the article's float64 cast and 1-D "pruning" really do to bytes and shapes."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from labkit.course.exercises import attempt, close, exercise, given
from labkit.prune import masks


def _float64_bytes() -> int:
    # The FFN up-projection of one layer: 1536 x 384 weights, 8 bytes each after the cast.
    return 1536 * 384 * 8


@exercise("00.float64_bytes",
          "How many bytes does one 1536x384 float32 weight matrix take after the cast to float64?",
          _float64_bytes,
          {"float32": "that is the float32 size: a float64 number takes 8 bytes, not 4.",
           "wrong": "count the weights (rows x columns), then multiply by the bytes of one float64 number."})
def _check_float64_bytes(answer: Any) -> str | None:
    answer = float(given(answer))
    if close(answer, 1536 * 384 * 4):
        return "float32"
    return None if close(answer, _float64_bytes()) else "wrong"


def _int8_bytes() -> int:
    return 1536 * 384 * 1 + 4 + 4  # int8 codes plus one float32 scale and one int32 zero point


@exercise("00.int8_bytes",
          "And with one int8 code per weight plus a float32 scale and an int32 zero point for the matrix?",
          _int8_bytes,
          {"no_params": "the codes alone are not enough to read the weights back: add the scale and zero point.",
           "wrong": "one byte per weight, plus 4 bytes for the scale and 4 for the zero point."})
def _check_int8_bytes(answer: Any) -> str | None:
    answer = float(given(answer))
    if close(answer, 1536 * 384):
        return "no_params"
    return None if close(answer, _int8_bytes()) else "wrong"


def _mask_shape() -> tuple[int, int]:
    return (1536, 384)


@exercise("00.mask_shape",
          "What shape does the weight keep after a correct 50% magnitude mask? (a tuple)",
          _mask_shape,
          {"flattened": "that is what the article's filtering gives: a 1-D array the layer cannot use. A mask "
                        "multiplies, so the weight keeps its rows and columns.",
           "wrong": "a mask multiplies: it zeroes entries but keeps every row and column where the layer expects it."})
def _check_mask_shape(answer: Any) -> str | None:
    shape = tuple(int(x) for x in np.atleast_1d(given(answer)))
    if len(shape) == 1:
        return "flattened"
    return None if shape == _mask_shape() else "wrong"


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
          "Write magnitude_mask(w, sparsity): the same-shaped tensor with the `sparsity` fraction of entries of "
          "smallest |w| set to zero (the rest unchanged).",
          _magnitude_mask,
          {"flattened": "your result lost the matrix shape: that is the article's filter (`w[keep]` gives a 1-D "
                        "array). Keep every position and write zeros: `torch.where(keep, w, torch.zeros_like(w))`.",
           "signed": "you ranked the weights by their signed value, so large negative weights were zeroed: rank by "
                     "magnitude, `w.abs()`.",
           "kept_fraction": "sparsity is the fraction set to ZERO: with sparsity 0.25, a quarter of the entries "
                            "become 0 and three quarters stay.",
           "largest_zeroed": "you zeroed the largest magnitudes: keep the big weights (they matter most) and zero "
                             "the small ones.",
           "wrong": "k = round(sparsity * w.numel()) entries become zero: those with the k smallest |w|; every other "
                    "entry stays as it was, and the shape stays the same."},
          kind="code", uses="the masked FFN layer of the real baseline (accuracy before and after)")
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
