"""Notebook 04 (dynamic quantization): activation scales computed per batch."""

from __future__ import annotations

from typing import Any

from . import close, exercise, given


def _dynamic_scale() -> float:
    return (3.1 - (-2.0)) / 255


@exercise("04.dynamic_scale",
          "Dynamic quantization sees a batch whose Linear input spans [-2.0, 3.1]. What asymmetric 8-bit scale "
          "does it use for that batch?",
          _dynamic_scale,
          {"symmetric": "that is a symmetric scale from max|x| alone; asymmetric spans max - min of the batch.",
           "levels": "256 codes have 255 steps between them: divide by 2^8 - 1, not 2^8.",
           "wrong": "the 256 codes 0..255 must span max - min of THIS batch: scale = (max - min) / 255."})
def _check_dynamic_scale(answer: Any) -> str | None:
    answer = float(given(answer))
    if close(answer, _dynamic_scale(), 1e-6):
        return None
    if close(answer, 3.1 / 127.5, 1e-6) or close(answer, 3.1 / 127, 1e-6):
        return "symmetric"
    return "levels" if close(answer, 5.1 / 256, 1e-6) else "wrong"
