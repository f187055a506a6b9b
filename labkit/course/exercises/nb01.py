"""Notebook 01 (sparse coding): CSR and bitmask written by hand, then the bytes of sparse formats."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from labkit.course.exercises import Mistake, attempt, close, exercise, given


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


# --- code exercises: CSR and bitmask by hand ----------------------------------------------------------------

# Golden matrices, small enough to check on paper. The 4x5 one has an all-zero row in the middle and an empty
# last row (row_ptr must still end with an entry for it); the random one has float values that must come back
# bit for bit. Integer-valued floats keep the products of csr_matvec exact whatever the summation order.
_PAPER = torch.tensor([[5., 0., 0., 1.],
                       [0., 0., 0., 0.],
                       [0., 2., 3., 0.],
                       [4., 0., 0., 6.]])
_GAPS = torch.tensor([[0., 2., 0., 0., 1.],
                      [0., 0., 0., 0., 0.],
                      [3., 0., 0., 4., 0.],
                      [0., 0., 0., 0., 0.]])


def _random_golden() -> torch.Tensor:
    g = torch.Generator().manual_seed(11)
    w = torch.randn(6, 7, generator=g)
    return w * (torch.rand(6, 7, generator=g) < 0.45)


def _goldens() -> list[torch.Tensor]:
    return [_PAPER, _GAPS, _random_golden()]


def _csr_encode():
    def csr_encode(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """CSR arrays (values, col_indices, row_ptr) of a 2-D tensor, rows in order, zeros left out."""
        keep = dense != 0
        values = dense[keep]  # boolean indexing walks the matrix row by row: CSR order
        col_indices = keep.nonzero()[:, 1]
        row_ptr = torch.zeros(dense.shape[0] + 1, dtype=torch.int64)
        row_ptr[1:] = torch.cumsum(keep.sum(dim=1), dim=0)
        return values, col_indices, row_ptr
    return csr_encode


def _as_tensor(x: Any) -> torch.Tensor:
    """A learner's array (tensor, numpy array, list) as a tensor; anything else is the wrong kind of answer."""
    try:
        return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    except (TypeError, ValueError, RuntimeError) as err:
        raise Mistake("wrong_type", f"could not read {type(x).__name__} as an array") from err


def _three(out: Any, names: str) -> list[torch.Tensor]:
    if not isinstance(out, (tuple, list)) or len(out) != 3:
        raise Mistake("wrong_type", f"return a tuple of three arrays: {names}")
    return [_as_tensor(o).reshape(-1) for o in out]


@exercise("01.csr_encode",
          "Write csr_encode(dense) -> (values, col_indices, row_ptr): the CSR arrays of a 2-D tensor, row by row, "
          "zeros left out, integer indices, row_ptr of length rows + 1 starting at 0.",
          _csr_encode,
          {"kept_zeros": "values holds zeros: CSR stores only the nonzero weights (keep = dense != 0).",
           "column_major": "your values come out column by column (as if the matrix were transposed): CSR walks "
                           "row 0 left to right, then row 1, ...",
           "float_indices": "your indices are floats: column indices and row pointers are integers "
                            "(e.g. torch.zeros(n, dtype=torch.int64)); a float index cannot address an array.",
           "no_leading_zero": "row_ptr has one entry per row, the running totals without the leading 0: it needs "
                              "rows + 1 entries, row i's values being values[row_ptr[i]:row_ptr[i + 1]].",
           "row_counts": "row_ptr holds how many nonzeros each row has; it should hold the running total "
                         "(cumulative sum) of those counts, starting at 0.",
           "row_ptr_length": "row_ptr must have rows + 1 entries, even when the last rows are all zero.",
           "row_index": "col_indices holds each value's ROW; CSR stores its COLUMN (the row is implied by row_ptr).",
           "wrong": "values: the nonzeros row by row; col_indices: the column of each; row_ptr: 0, then the running "
                    "count of nonzeros after each row (rows + 1 entries)."},
          kind="code",
          uses="section 3: encodes a real 90%-sparse FFN weight (bytes compared with scipy's and torch's CSR); "
               "section 6: writes the CSR arrays of every FFN layer of the classifier (to_sparse(..., encoder=...)).")
def _check_csr_encode(answer: Any) -> str | None:
    ref = _csr_encode()
    for dense in _goldens():
        values, cols, ptr = _three(attempt(answer, dense.clone()), "(values, col_indices, row_ptr)")
        want_v, want_c, want_p = ref(dense)
        if values.numel() == dense.numel() or bool((values == 0).any()):
            return "kept_zeros"
        if values.numel() == want_v.numel() and not torch.equal(values.float(), want_v) \
                and torch.equal(values.float(), dense.T[dense.T != 0]):
            return "column_major"
        if cols.is_floating_point() or ptr.is_floating_point():
            return "float_indices"
        cols, ptr = cols.long(), ptr.long()  # int32 and int64 are both fine: compare the numbers
        if torch.equal(ptr, want_p[1:]):
            return "no_leading_zero"
        if torch.equal(ptr, torch.diff(want_p)) or torch.equal(ptr, torch.cat([want_p[:1], torch.diff(want_p)])):
            return "row_counts"
        if ptr.numel() != dense.shape[0] + 1:
            return "row_ptr_length"
        if cols.numel() == want_c.numel() and not torch.equal(cols, want_c) \
                and torch.equal(cols, (dense != 0).nonzero()[:, 0]):
            return "row_index"
        if not (torch.equal(values.float(), want_v) and torch.equal(cols, want_c) and torch.equal(ptr, want_p)):
            return "wrong"
    return None


def _csr_matvec():
    def csr_matvec(values: torch.Tensor, col_indices: torch.Tensor, row_ptr: torch.Tensor,
                   x: torch.Tensor) -> torch.Tensor:
        """y = A @ x for A given by its CSR arrays: one dot product per row, over that row's nonzeros only."""
        rows = len(row_ptr) - 1
        y = torch.zeros(rows, dtype=values.dtype)
        for i in range(rows):
            start, end = int(row_ptr[i]), int(row_ptr[i + 1])
            y[i] = (values[start:end] * x[col_indices[start:end]]).sum()
        return y
    return csr_matvec


def _matvec_variant(values, cols, ptr, x, d_start: int = 0, d_end: int = 0, pick: str = "column") -> torch.Tensor:
    """What a matvec with a given mistake computes: row slices shifted by d_start/d_end, or x read at the row
    number ('row') or at the value's position in the array ('position') instead of at its column."""
    nnz, y = values.numel(), []
    for i in range(len(ptr) - 1):
        s = min(max(int(ptr[i]) + d_start, 0), nnz)
        e = min(max(int(ptr[i + 1]) + d_end, s), nnz)
        if pick == "row":
            xs = x[i].expand(e - s)
        elif pick == "position":
            xs = x[s:e] if e <= x.numel() else torch.full((e - s,), float("nan"))
        else:
            xs = x[cols[s:e]]
        y.append((values[s:e] * xs).sum())
    return torch.stack(y)


@exercise("01.csr_matvec",
          "Write csr_matvec(values, col_indices, row_ptr, x) -> y: y = A @ x computed from A's CSR arrays "
          "(y has one entry per row of A), touching only the stored nonzeros.",
          _csr_matvec,
          {"one_per_row": "y needs one entry per ROW of A (len(row_ptr) - 1 of them), not one per entry of x: "
                          "create it with torch.zeros(len(row_ptr) - 1).",
           "off_by_one": "row i's nonzeros are values[row_ptr[i]:row_ptr[i + 1]] - a Python slice already stops "
                         "before its end, so no - 1 or + 1 on either bound.",
           "row_index": "each value multiplies x at its COLUMN, x[col_indices[start:end]]; not x at the row number "
                        "i, nor x at the value's position in the values array.",
           "wrong": "for each row i: take values[row_ptr[i]:row_ptr[i + 1]] and the matching col_indices, multiply "
                    "the values by x at those columns, and sum into y[i]."},
          kind="code",
          uses="section 3: computes y = W x for a real token's hidden vector with the 90%-sparse FFN weight and "
               "compares it with the dense layer.")
def _check_csr_matvec(answer: Any) -> str | None:
    g = torch.Generator().manual_seed(5)
    for dense in _goldens():
        values, cols, ptr = _csr_encode()(dense)
        x = torch.randint(-3, 4, (dense.shape[1],), generator=g).float()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's note that CSR support is in beta
            want = torch.sparse_csr_tensor(ptr, cols, values, tuple(dense.shape)) @ x  # torch's own CSR kernel
        got = _as_tensor(attempt(answer, values.clone(), cols.clone(), ptr.clone(), x.clone()))
        if got.reshape(-1).numel() != dense.shape[0]:
            return "one_per_row"
        got = got.reshape(-1).to(want.dtype)
        if torch.allclose(got, want, atol=1e-5):
            continue
        for ds, de in ((0, -1), (0, 1), (1, 0), (-1, 0), (1, 1), (-1, -1), (1, -1), (-1, 1)):
            if torch.allclose(got, _matvec_variant(values, cols, ptr, x, ds, de), atol=1e-5):
                return "off_by_one"
        for pick in ("row", "position"):
            if torch.allclose(got, _matvec_variant(values, cols, ptr, x, pick=pick), atol=1e-5):
                return "row_index"
        return "wrong"
    return None


def _bitmask_encode():
    def bitmask_encode(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mask, values): one bit per weight packed 8 to a byte (first weight in the highest bit), the nonzeros."""
        keep = (dense != 0).flatten()
        mask = torch.from_numpy(np.packbits(keep.numpy()))  # pads the last byte with zero bits
        return mask, dense.flatten()[keep]
    return bitmask_encode


def _as_bytes(x: Any) -> np.ndarray:
    """A mask given as bytes, a numpy array or a tensor, as a flat uint8 array."""
    if isinstance(x, (bytes, bytearray)):
        return np.frombuffer(bytes(x), dtype=np.uint8)
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return a.reshape(-1).astype(np.uint8)


@exercise("01.bitmask_encode",
          "Write bitmask_encode(dense) -> (mask, values): the keep-mask as bits packed 8 per byte in row-major order "
          "(first weight in the highest bit, the last byte padded with 0 bits, as np.packbits does) and the "
          "nonzero values in the same order.",
          _bitmask_encode,
          {"not_packed": "your mask has one entry per weight: a bitmask packs 8 weights into each byte "
                         "(np.packbits), which is what makes it 1/32 of float32.",
           "bit_order": "your bits are in the right bytes but reversed inside each byte: the first weight goes in "
                        "the highest bit (value 128), as np.packbits does by default.",
           "no_padding": "the last weights were dropped: 15 weights need 2 bytes, the last byte padded with 0 bits "
                         "(ceil(n / 8) bytes).",
           "kept_zeros": "values holds zeros: only the weights whose mask bit is 1 are stored.",
           "wrong": "flatten the matrix row by row, mask = (w != 0) packed 8 bits per byte, values = the nonzeros."},
          kind="code",
          uses="section 3: encodes the real 90%-sparse FFN weight; np.unpackbits decodes it back to the weight exactly.")
def _check_bitmask_encode(answer: Any) -> str | None:
    ref = _bitmask_encode()
    for dense in (_PAPER, _GAPS[:3], _random_golden()):  # 16, 15 and 42 weights: exact, padded, padded
        out = attempt(answer, dense.clone())
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise Mistake("wrong_type", "return a tuple of two arrays: (mask, values)")
        mask, values = _as_bytes(out[0]), _as_tensor(out[1]).reshape(-1)
        want_m, want_v = ref(dense)
        want_m = want_m.numpy()
        keep = (dense != 0).flatten().numpy()
        if mask.size == dense.numel():
            return "not_packed"
        if values.numel() == dense.numel() or bool((values == 0).any()):
            return "kept_zeros"
        if not np.array_equal(mask, want_m) and np.array_equal(mask, np.packbits(keep, bitorder="little")):
            return "bit_order"
        if dense.numel() % 8 and np.array_equal(mask, want_m[:dense.numel() // 8]):
            return "no_padding"
        if not (np.array_equal(mask, want_m) and torch.equal(values.float(), want_v)):
            return "wrong"
    return None
