"""Notebook 01 (sparse coding): CSR and bitmask written by hand, the bytes of sparse formats read, predictions."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from labkit.course.exercises import Mistake, attempt, exercise, given, prediction, written

# --- predictions and the written question ------------------------------------------------------------------

prediction("01.my_csr_x_smaller",
           "How many times smaller than dense float32 are your encoder's CSR arrays (narrowest index types) for "
           "the 90%-pruned 1536x384 FFN weight?", unit="x")
prediction("01.bitmask_break_even",
           "At what sparsity does a bitmask plus float32 values take as many bytes as dense float32?")
prediction("01.csr_kernel_speedup",
           "At density 0.1 on the 1536x384 layer shape, how many times faster than dense is torch's CSR matmul "
           "(batch 32)?", unit="x")
written("01.why_not_faster",
        "The CSR classifier does a tenth of the FFN multiply-adds at 90% sparsity; why is it not close to 10x "
        "faster than dense?", points=2)


# --- number exercises: which format, which change ----------------------------------------------------------

_FORMATS = ("dense", "coo", "coo_min", "csr", "csr_min", "bitmask", "2:4")


def _name(answer: Any) -> str:
    if not isinstance(given(answer), str):
        raise Mistake("wrong_type", "answer with a name in quotes, got {type}", type=type(answer).__name__)
    return answer.strip().lower()


def _smallest_at_half() -> str:
    # Bytes per weight at half kept: dense 4; bitmask 1/8 + 2; csr_min 0.5 * (4 + 2) + row pointers; coo more.
    return "bitmask"


@exercise("01.smallest_at_half",
          "A 1536x384 float32 weight is pruned to 50% sparsity, unstructured (its zeros anywhere). Which format of "
          f"section 4 stores it in the fewest bytes, with float32 values? One of {', '.join(_FORMATS)}.",
          _smallest_at_half,
          {"two_four": "2:4 cannot hold it: an unstructured 50% pattern has groups of four with three or four weights "
                       "kept, and 2:4 keeps two per group (section 4 had to re-prune the weight for its 2:4 row).",
           "index_format": "an index format pays, for every kept weight, its value and at least one index; with "
                           "half the weights kept, compare that with a format whose cost per weight is a fraction "
                           "of a byte plus the kept values.",
           "dense": "at 50% sparsity one format is already below dense: the one whose break-even sparsity section 5 "
                    "measured lowest.",
           "wrong": f"name one of {', '.join(_FORMATS)}, the one with the fewest bytes per weight at half kept."},
          ladder=("Cost each format per weight of the matrix: what it pays for every weight, plus what it pays for "
                  "each kept weight, times the fraction kept.",
                  "The pattern is unstructured, so a format that needs a fixed pattern is out; and an index of 2 "
                  "bytes on every kept weight costs more than one bit on every weight once many are kept.",
                  "A 1x8 row with 4 nonzeros, float32: dense 32 bytes; one bit each for 8 weights is 1 byte, plus 4 "
                  "values of 4 bytes = 17; 4 values with a 1-byte column each and 2 row pointers = 22 or more."))
def _check_smallest_at_half(answer: Any) -> str | None:
    name = _name(answer)
    if name == _smallest_at_half():
        return None
    if name in ("2:4", "24", "2_4"):
        return "two_four"
    if name in ("coo", "coo_min", "csr", "csr_min"):
        return "index_format"
    return "dense" if name == "dense" else "wrong"


def _bigger_saving() -> str:
    # Per kept weight: int8 codes save 3 bytes (minus a 4-byte scale per row); 2-byte columns save 2.
    return "values"


@exercise("01.bigger_saving",
          "The 90%-pruned 1536x384 weight is stored as CSR with float32 values and int32 indices. Which one change "
          "makes its file smaller: 'indices' (column indices in the narrowest type that holds them) or 'values' "
          "(int8 codes with one float32 scale per row)?",
          _bigger_saving,
          {"indices": "narrower columns save bytes on every kept weight, but fewer than int8 codes do; the per-row "
                      "scales cost little next to tens of thousands of kept weights.",
           "wrong": "answer 'indices' or 'values': the change that saves more bytes per kept weight."},
          ladder=("Both changes act on every kept weight: count the bytes each saves per kept weight, then subtract "
                  "what it adds.",
                  "The column type that holds 0..383 is not one byte; and the int8 scales are one per row, not one "
                  "per weight.",
                  "A 10x1000 matrix with 2000 kept weights: int8 codes save 3 x 2000 = 6000 bytes and add 10 x 4 = 40; "
                  "2-byte columns save 2 x 2000 = 4000."))
def _check_bigger_saving(answer: Any) -> str | None:
    name = _name(answer)
    if name in ("value", "values"):
        return None
    return "indices" if name in ("index", "indices", "columns", "col_indices") else "wrong"


# --- code exercises: CSR and bitmask by hand ----------------------------------------------------------------

# Golden matrices, small enough to check on paper. The 4x5 one has an all-zero row in the middle and an empty
# last row (row_ptr must still end with an entry for it); the random one has float values that must come back
# bit for bit. The wide one has 300 columns but nonzeros only up to column 255 (its index type follows the
# shape, not the data) and 257 nonzeros (its row pointers outgrow a byte); the long one has a column past 32767.
# Integer-valued floats keep the products of csr_matvec exact whatever the summation order.
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


def _wide_golden() -> torch.Tensor:
    w = torch.zeros(3, 300)
    w[0, :256] = torch.arange(1, 257, dtype=torch.float32) % 7 - 3 + 0.5  # never 0
    w[2, 7] = 2.0
    return w


def _long_golden() -> torch.Tensor:
    w = torch.zeros(2, 40000)
    w[0, 3], w[1, 39999] = 1.5, -2.0
    return w


def _goldens() -> list[torch.Tensor]:
    return [_PAPER, _GAPS, _random_golden(), _wide_golden(), _long_golden()]


def _csr_encode():
    def csr_encode(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """CSR arrays (values, col_indices, row_ptr) of a 2-D tensor, rows in order, zeros left out, each index
        array in the integer type of fewest bytes that holds every index a matrix of this shape can need."""
        keep = dense != 0
        values = dense[keep]  # boolean indexing walks the matrix row by row: CSR order
        col_indices = keep.nonzero()[:, 1]
        row_ptr = torch.zeros(dense.shape[0] + 1, dtype=torch.int64)
        row_ptr[1:] = torch.cumsum(keep.sum(dim=1), dim=0)

        def narrowest(largest: int) -> torch.dtype:
            for dtype in (torch.uint8, torch.int16, torch.int32):  # torch's integer types that index arithmetic has
                if largest <= torch.iinfo(dtype).max:
                    return dtype
            return torch.int64

        # a column can be as large as the shape allows; a row pointer as large as the number of nonzeros
        return values, col_indices.to(narrowest(dense.shape[1] - 1)), row_ptr.to(narrowest(values.numel()))
    return csr_encode


def _as_tensor(x: Any) -> torch.Tensor:
    """A learner's array (tensor, numpy array, list) as a tensor; anything else is the wrong kind of answer."""
    try:
        return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    except (TypeError, ValueError, RuntimeError) as err:
        raise Mistake("wrong_type", "could not read {type} as an array", type=type(x).__name__) from err


def _three(out: Any, names: str) -> list[torch.Tensor]:
    if not isinstance(out, (tuple, list)) or len(out) != 3:
        raise Mistake("wrong_type", "return a tuple of three arrays: {names}", names=names)
    return [_as_tensor(o).reshape(-1) for o in out]


def _holds(dtype: torch.dtype, largest: int) -> bool:
    return not dtype.is_floating_point and dtype != torch.bool and torch.iinfo(dtype).max >= largest


@exercise("01.csr_encode",
          "Write csr_encode(dense) -> (values, col_indices, row_ptr): the CSR arrays of a 2-D float tensor (zeros "
          "left out, row_ptr with rows + 1 entries starting at 0), each index array in an integer type of the "
          "fewest bytes that holds every index a matrix of this shape could need. Checked on five golden "
          "matrices against torch's CSR, index types included.",
          _csr_encode,
          {"kept_zeros": "values holds zeros: CSR stores only the nonzero weights, and the zeros' places are what "
                         "the indices encode.",
           "column_major": "your values come out column by column (as if the matrix were transposed): CSR walks "
                           "row 0 left to right, then row 1, ...",
           "float_indices": "your indices are floats: column indices and row pointers are integers; a float "
                            "cannot address an array, and it spends its bits on a fraction that is always 0.",
           "no_leading_zero": "row_ptr has one entry per row, the running totals without the first one: it needs "
                              "rows + 1 entries, so that every row, the first included, has a start and an end.",
           "row_counts": "row_ptr holds how many nonzeros each row has; it should hold where each row starts in "
                         "values, which is the running total of those counts, starting at 0.",
           "row_ptr_length": "row_ptr must have rows + 1 entries, even when the last rows are all zero.",
           "row_index": "col_indices holds each value's ROW; CSR stores its COLUMN (the row is implied by row_ptr).",
           "too_narrow": "an index array's type cannot hold the largest index it may need, so big indices wrap "
                         "around: a column index can reach the number of columns minus one, a row pointer the "
                         "number of nonzeros.",
           "by_data": "your column type holds the columns this matrix happens to use, not every column its shape "
                      "allows: a file format is chosen from the shape, so that any matrix of that shape fits.",
           "too_wide": "your indices are right but wider than needed (torch's default is 8 bytes): the point is "
                       "the fewest bytes whose range still holds the largest index the shape allows.",
           "wrong": "values: the nonzeros row by row; col_indices: the column of each; row_ptr: where each row "
                    "starts in values, plus one entry for the end; each index array in the narrowest integer "
                    "type that holds its largest possible entry."},
          kind="code",
          uses="section 3: encodes a real 90%-sparse FFN weight (its bytes compared with scipy's and torch's CSR); "
               "section 6: writes the CSR arrays of every FFN layer of the classifier (to_sparse(..., encoder=...)).",
          ladder=("CSR keeps three arrays: the nonzeros in reading order, the column of each, and for each row where "
                  "its values start (one more entry closes the last row). An index array's type is a storage "
                  "choice: the fewest bytes whose range covers the largest index the shape allows.",
                  "The row pointers are running totals of the nonzeros per row, starting at 0, and an empty row "
                  "still gets its entry. For the types: torch.iinfo(dtype).max says how large a type goes; a "
                  "column needs up to columns - 1, a row pointer up to the number of nonzeros.",
                  "A 2x3 matrix [[0, 7, 0], [8, 0, 9]]: values [7, 8, 9], columns [1, 0, 2], row pointers "
                  "[0, 1, 3]. Columns reach at most 2 and pointers at most 3, so one byte holds each. With 1000 "
                  "columns a column index needs two bytes, whatever columns the nonzeros happen to use."))
def _check_csr_encode(answer: Any) -> str | None:
    ref = _csr_encode()
    for dense in _goldens():
        out = attempt(answer, dense.clone())
        values, cols, ptr = _three(out, "(values, col_indices, row_ptr)")
        want_v, want_c, want_p = ref(dense)
        want_c, want_p = want_c.long(), want_p.long()
        if values.numel() == dense.numel() or bool((values == 0).any()):
            return "kept_zeros"
        if values.numel() == want_v.numel() and not torch.equal(values.float(), want_v) \
                and torch.equal(values.float(), dense.T[dense.T != 0]):
            return "column_major"
        if cols.is_floating_point() or ptr.is_floating_point():
            return "float_indices"
        col_type, ptr_type = cols.dtype, ptr.dtype
        if not (_holds(col_type, int(want_c.max()) if want_c.numel() else 0) and _holds(ptr_type, int(want_p[-1]))):
            return "too_narrow"  # the numbers below would have wrapped around: name the type, not the numbers
        cols, ptr = cols.long(), ptr.long()
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
        if not (_holds(col_type, dense.shape[1] - 1) and _holds(ptr_type, values.numel())):
            return "by_data" if not _holds(col_type, dense.shape[1] - 1) else "too_narrow"
        narrow = ref(dense)
        if col_type.itemsize > narrow[1].dtype.itemsize or ptr_type.itemsize > narrow[2].dtype.itemsize:
            return "too_wide"
    return None


def _csr_matvec():
    def csr_matvec(values: torch.Tensor, col_indices: torch.Tensor, row_ptr: torch.Tensor,
                   x: torch.Tensor) -> torch.Tensor:
        """y = A @ x for A given by its CSR arrays (indices of any integer type): one dot product per row."""
        cols = col_indices.long()  # stored narrow; torch indexes with int64 (uint8 would be read as a mask)
        starts = row_ptr.long()
        rows = len(starts) - 1
        y = torch.zeros(rows, dtype=values.dtype)
        for i in range(rows):
            start, end = int(starts[i]), int(starts[i + 1])
            y[i] = (values[start:end] * x[cols[start:end]]).sum()
        return y
    return csr_matvec


def _matvec_variant(values, cols, ptr, x, d_start: int = 0, d_end: int = 0, pick: str = "column") -> torch.Tensor:
    """What a matvec with a given mistake computes: row slices shifted by d_start/d_end, or x read at the row
    number ('row') or at the value's position in the array ('position') instead of at its column."""
    nnz, y, cols = values.numel(), [], cols.long()
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
          "Write csr_matvec(values, col_indices, row_ptr, x) -> y: y = A @ x computed from A's CSR arrays as "
          "csr_encode stores them (indices in any integer type, uint8 and int16 included), touching only the "
          "stored nonzeros; y has one entry per row of A. Checked against torch's CSR kernel on the golden matrices.",
          _csr_matvec,
          {"one_per_row": "y needs one entry per ROW of A, and A has one row fewer than row_ptr has entries; not "
                          "one entry per entry of x.",
           "off_by_one": "row i's nonzeros run from its start up to, not including, the next row's start; a Python "
                         "slice already stops before its end, so neither bound needs a correction.",
           "row_index": "each value multiplies the entry of x at its COLUMN; not x at the row number, nor x at the "
                        "value's position in the values array.",
           "narrow_index": "torch indexes a tensor only with int64 or int32 positions (a uint8 tensor is read as a "
                           "mask of booleans): the narrow storage type must be widened before it is used to index.",
           "wrong": "for each row, take its slice of values and the matching columns, multiply the values by x at "
                    "those columns, and sum into that row's entry of y."},
          kind="code",
          uses="section 3: computes y = W x for a real token's hidden vector with the 90%-sparse FFN weight and "
               "compares it with the dense layer.",
          ladder=("A row of A @ x is a dot product of that row with x; in CSR a row is a slice of values, and each "
                  "value's column says which entry of x it meets.",
                  "The slice of row i is bounded by two neighbouring row pointers, and an empty row gives an empty "
                  "slice (a sum of 0). The indices arrive in the narrow type they were stored in: widen them before "
                  "you index with them.",
                  "values [7, 8, 9], columns [1, 0, 2], row pointers [0, 1, 3] and x = [1, 10, 100]: row 0 is the "
                  "slice 0..1, 7 at column 1, so 7 x 10 = 70; row 1 is the slice 1..3, 8 x 1 + 9 x 100 = 908."))
def _check_csr_matvec(answer: Any) -> str | None:
    g = torch.Generator().manual_seed(5)
    for dense in _goldens():
        values, cols, ptr = _csr_encode()(dense)  # narrow index types, as a file holds them
        x = torch.randint(-3, 4, (dense.shape[1],), generator=g).float()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's note that CSR support is in beta
            want = torch.sparse_csr_tensor(ptr.long(), cols.long(), values, tuple(dense.shape)) @ x  # torch's kernel
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch's note that indexing with uint8 is deprecated
                got = _as_tensor(attempt(answer, values.clone(), cols.clone(), ptr.clone(), x.clone()))
        except (IndexError, RuntimeError) as err:
            if "indices" in str(err) or "mask" in str(err):
                return "narrow_index"
            raise
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
          "(first weight in the highest bit, the last byte padded with 0 bits) and the nonzero values in the "
          "same order. Checked on three golden matrices: 16 weights, 15 and 42.",
          _bitmask_encode,
          {"not_packed": "your mask has one entry per weight: a bitmask packs 8 weights into each byte, which is "
                         "what makes it 1/32 of float32.",
           "bit_order": "your bits are in the right bytes but reversed inside each byte: the first weight goes in "
                        "the highest bit (value 128).",
           "no_padding": "the last weights were dropped: 15 weights need 2 bytes, the last byte padded with 0 bits.",
           "kept_zeros": "values holds zeros: only the weights whose mask bit is 1 are stored.",
           "wrong": "read the matrix row by row: one bit per weight, 1 where it is kept, eight bits to a byte, "
                    "then the kept values in the same order."},
          kind="code",
          uses="section 3: encodes the real 90%-sparse FFN weight; np.unpackbits decodes it back to the weight exactly.",
          ladder=("A bitmask says where with one bit per weight, kept or not, and stores no index at all; the values "
                  "follow in the same reading order.",
                  "Bits must be packed eight to a byte, the first weight in the highest bit, and the last byte "
                  "padded; numpy has a function that packs a boolean array exactly this way.",
                  "The row [3, 0, 0, 0, 0, 0, 0, 1, 2] has flags 1000 0001 1: bytes 129 and 128 (the second padded "
                  "with seven 0 bits), values [3, 1, 2]."))
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
