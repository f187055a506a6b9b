"""Each targeted hint of notebook 01's exercises, reached by the mistake it names (tests/test_checks.py runs the table)."""

import numpy as np
import pytest
import torch

from labkit.course import checks
from labkit.course.exercises import GENERIC_HINTS

# --- csr_encode, each with one real mistake ---------------------------------------------------------------

def _ptr(dense):
    return torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum((dense != 0).sum(1), 0)])


def enc_kept_zeros(dense):
    rows, cols = dense.shape
    return dense.flatten(), torch.arange(cols).repeat(rows), torch.arange(rows + 1) * cols


def enc_column_major(dense):
    t = dense.T
    return t[t != 0], (t != 0).nonzero()[:, 0], _ptr(dense)  # walks columns: values in the transposed order


def enc_float_indices(dense):
    keep = dense != 0
    row_ptr = torch.zeros(dense.shape[0] + 1)  # float32 by default
    row_ptr[1:] = torch.cumsum(keep.sum(1), 0)
    return dense[keep], keep.nonzero()[:, 1], row_ptr


def enc_no_leading_zero(dense):
    keep = dense != 0
    return dense[keep], keep.nonzero()[:, 1], torch.cumsum(keep.sum(1), 0)


def enc_row_counts(dense):
    keep = dense != 0
    return dense[keep], keep.nonzero()[:, 1], torch.cat([torch.zeros(1, dtype=torch.int64), keep.sum(1)])


def enc_short_row_ptr(dense):
    keep = dense != 0
    ptr = [0]
    for r in range(dense.shape[0]):
        if keep[r].any():  # skips empty rows: the trailing all-zero row loses its pointer
            ptr.append(ptr[-1] + int(keep[r].sum()))
    return dense[keep], keep.nonzero()[:, 1], torch.tensor(ptr)


def enc_row_index(dense):
    keep = dense != 0
    return dense[keep], keep.nonzero()[:, 0], _ptr(dense)


def enc_int64(dense):
    keep = dense != 0
    return dense[keep], keep.nonzero()[:, 1], _ptr(dense)  # right numbers, torch's default 8-byte indices


def enc_one_byte(dense):
    keep = dense != 0
    return dense[keep], keep.nonzero()[:, 1].to(torch.uint8), _ptr(dense).to(torch.uint8)  # 257 nonzeros wrap to 1


def enc_by_data(dense):
    keep = dense != 0
    cols, ptr = keep.nonzero()[:, 1], _ptr(dense)
    def fit(largest):  # chosen from the indices this matrix uses, not from its shape
        return next(t for t in (torch.uint8, torch.int16, torch.int32, torch.int64) if largest <= torch.iinfo(t).max)
    return dense[keep], cols.to(fit(int(cols.max()))), ptr.to(fit(int(ptr[-1])))


# --- csr_matvec --------------------------------------------------------------------------------------------

def mv_per_column(values, cols, ptr, x):
    cols, ptr = cols.long(), ptr.long()
    y = torch.zeros_like(x)  # one entry per column of A: wrong length
    for i in range(len(ptr) - 1):
        y[i] = (values[ptr[i]:ptr[i + 1]] * x[cols[ptr[i]:ptr[i + 1]]]).sum()
    return y


def mv_off_by_one(values, cols, ptr, x):
    cols = cols.long()
    y = torch.zeros(len(ptr) - 1)
    for i in range(len(ptr) - 1):
        s, e = int(ptr[i]), int(ptr[i + 1]) - 1  # drops each row's last nonzero
        y[i] = (values[s:e] * x[cols[s:e]]).sum()
    return y


def mv_row_index(values, cols, ptr, x):
    ptr = ptr.long()
    y = torch.zeros(len(ptr) - 1)
    for i in range(len(ptr) - 1):
        y[i] = (values[ptr[i]:ptr[i + 1]] * x[i]).sum()
    return y


def mv_narrow(values, cols, ptr, x):
    y = torch.zeros(len(ptr) - 1)
    for i in range(len(ptr) - 1):
        y[i] = (values[ptr[i]:ptr[i + 1]] * x[cols[ptr[i]:ptr[i + 1]]]).sum()  # indexes with the stored uint8
    return y


def mv_in_place(values, cols, ptr, x):
    x.mul_(1.0)
    x[0] = x[0] + 1  # changes the caller's vector
    return checks.solution("01.csr_matvec")(values, cols, ptr, x)


# --- bitmask_encode ---------------------------------------------------------------------------------------

def bm_not_packed(dense):
    keep = (dense != 0).flatten()
    return keep.to(torch.uint8), dense.flatten()[keep]


def bm_bit_order(dense):
    keep = (dense != 0).flatten()
    return np.packbits(keep.numpy(), bitorder="little"), dense.flatten()[keep]


def bm_no_padding(dense):
    keep = (dense != 0).flatten().numpy().astype(np.uint8)
    n = keep.size // 8 * 8  # whole bytes only: the tail is lost
    return bytes(int("".join(map(str, keep[i:i + 8])), 2) for i in range(0, n, 8)), dense.flatten()[dense.flatten() != 0]


def bm_kept_zeros(dense):
    return np.packbits((dense != 0).flatten().numpy()), dense.flatten()


MISTAKES = [
    ("01.smallest_at_half", "two_four", lambda: "2:4"),
    ("01.smallest_at_half", "index_format", lambda: "csr_min"),
    ("01.smallest_at_half", "dense", lambda: "dense"),
    ("01.bigger_saving", "indices", lambda: "indices"),
    ("01.csr_encode", "kept_zeros", lambda: enc_kept_zeros),
    ("01.csr_encode", "column_major", lambda: enc_column_major),
    ("01.csr_encode", "float_indices", lambda: enc_float_indices),
    ("01.csr_encode", "no_leading_zero", lambda: enc_no_leading_zero),
    ("01.csr_encode", "row_counts", lambda: enc_row_counts),
    ("01.csr_encode", "row_ptr_length", lambda: enc_short_row_ptr),
    ("01.csr_encode", "row_index", lambda: enc_row_index),
    ("01.csr_encode", "too_wide", lambda: enc_int64),
    ("01.csr_encode", "too_narrow", lambda: enc_one_byte),
    ("01.csr_encode", "by_data", lambda: enc_by_data),
    ("01.csr_matvec", "one_per_row", lambda: mv_per_column),
    ("01.csr_matvec", "off_by_one", lambda: mv_off_by_one),
    ("01.csr_matvec", "row_index", lambda: mv_row_index),
    ("01.csr_matvec", "narrow_index", lambda: mv_narrow),
    ("01.bitmask_encode", "not_packed", lambda: bm_not_packed),
    ("01.bitmask_encode", "bit_order", lambda: bm_bit_order),
    ("01.bitmask_encode", "no_padding", lambda: bm_no_padding),
    ("01.bitmask_encode", "kept_zeros", lambda: bm_kept_zeros),
]



def test_mutating_x_gets_the_mutated_hint():
    assert checks.diagnose("01.csr_matvec", mv_in_place) == GENERIC_HINTS["mutated"]


@pytest.mark.parametrize("key", ["01.csr_encode", "01.csr_matvec", "01.bitmask_encode"])
def test_the_reference_passes(key):
    assert checks.diagnose(key, checks.solution(key)) is None


def test_csr_encode_accepts_numpy_arrays_and_unsigned_16_bit_indices():
    def numpy_csr(dense):
        a = dense.numpy()
        r, c = np.nonzero(a)
        ptr = np.concatenate([[0], np.cumsum((a != 0).sum(1))])
        small = np.min_scalar_type  # uint16 where torch's narrowest signed type would be int32: fewer bytes, fine
        return a[r, c], c.astype(small(a.shape[1] - 1)), ptr.astype(small(ptr[-1]))
    assert checks.diagnose("01.csr_encode", numpy_csr) is None


def test_a_vectorized_matvec_passes():
    def vectorized(values, cols, ptr, x):
        ptr, cols = ptr.long(), cols.long()
        rows = torch.repeat_interleave(torch.arange(len(ptr) - 1), torch.diff(ptr))
        return torch.zeros(len(ptr) - 1).index_add_(0, rows, values * x[cols])
    assert checks.diagnose("01.csr_matvec", vectorized) is None


def test_wrong_kind_of_answer_gets_a_hint_not_a_traceback(capsys):
    assert not checks.check("01.csr_encode", lambda dense: dense)
    assert not checks.check("01.bitmask_encode", lambda dense: (1, 2, 3))
    assert "Traceback" not in capsys.readouterr().out
