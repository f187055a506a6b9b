"""Notebook 02 (quantization): scale and zero point, symmetric codes, the bytes of a 4-bit weight."""

from __future__ import annotations

from typing import Any

import torch

from . import attempt, close, exercise, given
from ..quantize import qparams, quantize_tensor


def _scale_zero_point() -> tuple[float, int]:
    scale, zp = qparams(torch.tensor(-1.0), torch.tensor(3.0), 8, "asymmetric")
    return float(scale), int(zp)


@exercise("02.scale_zero_point",
          "Values range from -1.0 to 3.0. For an 8-bit asymmetric grid (codes 0..255), give (scale, zero_point).",
          _scale_zero_point,
          {"levels": "the grid has 256 codes but 255 *steps* between them: divide the range by 2^8 - 1.",
           "zero_sign": "the zero point is the code that stands for 0.0: it is -min / scale, a positive code here.",
           "wrong": "scale spreads the range over 255 steps; the zero point is round(-min / scale)."})
def _check_scale_zero_point(answer: Any) -> str | None:
    scale, zp = given(answer)
    want_scale, want_zp = _scale_zero_point()
    if not close(scale, want_scale, 1e-6):
        return "levels" if close(scale, 4.0 / 256, 1e-6) else "wrong"
    if int(round(float(zp))) == -want_zp:
        return "zero_sign"
    return None if int(round(float(zp))) == want_zp else "wrong"


def _symmetric_round():
    def symmetric_codes(w: torch.Tensor, bits: int) -> torch.Tensor:
        scale = w.abs().max() / ((2 ** bits - 1) / 2)
        return torch.clamp(torch.round(w / scale), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return symmetric_codes


@exercise("02.symmetric_round",
          "Write symmetric_codes(w, bits): per-tensor symmetric codes (zero point 0, scale = max|w| / ((2^bits - 1) / 2)).",
          _symmetric_round,
          {"no_clamp": "some codes fall outside [-2^(bits-1), 2^(bits-1) - 1]: clamp after rounding.",
           "no_round": "codes must be whole numbers: round w / scale to the nearest integer before clamping.",
           "wrong": "divide by the scale, round to the nearest integer, then clamp to [-2^(bits-1), 2^(bits-1) - 1]."},
          kind="code")
def _check_symmetric_round(answer: Any) -> str | None:
    gen = torch.Generator().manual_seed(7)
    for bits in (2, 4, 8):
        w = torch.randn(16, 24, generator=gen)
        got = torch.as_tensor(attempt(answer, w, bits)).to(torch.float64)
        want = quantize_tensor(w, bits, "symmetric", "tensor").codes.to(torch.float64)
        if got.shape != want.shape:
            return "wrong"
        if not torch.equal(got, got.round()):
            return "no_round"
        if got.max() > 2 ** (bits - 1) - 1 or got.min() < -(2 ** (bits - 1)):
            return "no_clamp"
        if not torch.equal(got, want):
            return "wrong"
    return None


def _size_4bit() -> int:
    return quantize_tensor(torch.zeros(1536, 384), 4, "asymmetric", "group", 64).nbytes()


@exercise("02.size_4bit",
          "Bytes of a 1536x384 weight at 4 bits, asymmetric, groups of 64 (packed codes + float32 scale "
          "+ one byte zero point per group)?",
          _size_4bit,
          {"no_params": "you counted the packed codes only: every group of 64 also stores its scale and zero point.",
           "wrong": "codes: weights x 4 bits / 8; groups: 1536 rows x (384 / 64); each group stores 4 + 1 bytes."})
def _check_size_4bit(answer: Any) -> str | None:
    answer = float(given(answer))
    if close(answer, 1536 * 384 // 2):
        return "no_params"
    return None if close(answer, _size_4bit()) else "wrong"
