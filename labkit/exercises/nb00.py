"""Notebook 00 (baseline and myths): what the article's float64 cast and 1-D "pruning" really do to bytes and shapes."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import close, exercise, given


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
