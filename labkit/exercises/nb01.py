"""Notebook 01 (sparse coding): bytes of sparse formats."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import close, exercise, given


def _csr_bytes() -> int:
    rows, nnz = 384, int(round(0.1 * 384 * 1536))
    return 4 * (rows + 1) + 4 * nnz + 4 * nnz  # int32 row pointers, int32 column indices, float32 values


@exercise("01.csr_bytes",
          "A 384x1536 float32 matrix keeps 10% of its weights (round to whole weights). How many bytes do its CSR "
          "arrays take with int32 indices (row pointers + column indices + values, no header)?",
          _csr_bytes,
          {"no_row_ptr": "you counted the values and column indices; CSR also stores rows + 1 row pointers.",
           "wrong": "CSR stores rows+1 row pointers, then one column index and one value per nonzero; 4 bytes each here."})
def _check_csr_bytes(answer: Any) -> str | None:
    answer = float(given(answer))
    if close(answer, _csr_bytes() - 4 * 385):
        return "no_row_ptr"
    return None if close(answer, _csr_bytes()) else "wrong"


def _bitmask_break_even() -> float:
    return 1 / 32  # n/8 mask bytes + 4 bytes per kept weight <= 4n bytes  <=>  sparsity >= 1/32


@exercise("01.bitmask_break_even",
          "Ignoring headers, at what sparsity does bitmask + float32 values take exactly as many bytes as dense "
          "float32? (a fraction)",
          _bitmask_break_even,
          {"bytes_not_bits": "the mask costs one *bit* per weight, not one byte: 1/8 of a byte.",
           "wrong": "the mask costs 1 bit per weight; each zeroed weight saves 32 bits. Set mask bits = saved bits."})
def _check_bitmask_break_even(answer: Any) -> str | None:
    answer = float(given(answer))
    if close(answer, 1 / 4, rel=1e-3):
        return "bytes_not_bits"
    return None if close(answer, _bitmask_break_even(), rel=1e-3) else "wrong"


def _index_dtype() -> str:
    return "uint16"


@exercise("01.min_index_dtype",
          "What is the smallest unsigned integer type that can hold every column index of a 384x1536 matrix?",
          _index_dtype,
          {"too_small": "uint8 holds 0..255, and the column indices go up to 1535.",
           "wrong": "column indices go from 0 to 1535; compare with the largest number 8, 16 and 32 bits can hold."})
def _check_index_dtype(answer: Any) -> str | None:
    dtype = np.dtype(given(answer))
    if dtype == np.uint8:
        return "too_small"
    return None if dtype == np.dtype(_index_dtype()) else "wrong"


def _two_four_bytes() -> int:
    n = 384 * 384
    return (n // 2) * 4 + (n // 2) * 2 // 8  # half the values in float32, 2 bits of position per kept value


@exercise("01.two_four_bytes",
          "A 384x384 matrix has 2:4 sparsity. How many bytes do its packed float32 values plus 2-bit positions take?",
          _two_four_bytes,
          {"no_positions": "the kept values alone cannot be put back: each needs 2 bits saying where in its group it sat.",
           "wrong": "2 of every 4 weights are kept (4 bytes each), and each kept weight needs 2 bits to say where it sat."})
def _check_two_four_bytes(answer: Any) -> str | None:
    answer = float(given(answer))
    if close(answer, 384 * 384 // 2 * 4):
        return "no_positions"
    return None if close(answer, _two_four_bytes()) else "wrong"
