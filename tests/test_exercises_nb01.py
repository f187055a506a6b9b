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


# --- csr_matvec --------------------------------------------------------------------------------------------

def mv_per_column(values, cols, ptr, x):
    y = torch.zeros_like(x)  # one entry per column of A: wrong length
    for i in range(len(ptr) - 1):
        y[i] = (values[ptr[i]:ptr[i + 1]] * x[cols[ptr[i]:ptr[i + 1]]]).sum()
    return y


def mv_off_by_one(values, cols, ptr, x):
    y = torch.zeros(len(ptr) - 1)
    for i in range(len(ptr) - 1):
        s, e = int(ptr[i]), int(ptr[i + 1]) - 1  # drops each row's last nonzero
        y[i] = (values[s:e] * x[cols[s:e]]).sum()
    return y


def mv_row_index(values, cols, ptr, x):
    y = torch.zeros(len(ptr) - 1)
    for i in range(len(ptr) - 1):
        y[i] = (values[ptr[i]:ptr[i + 1]] * x[i]).sum()
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
    ("01.csr_bytes", "no_row_ptr", lambda: 8 * round(0.1 * 384 * 1536)),
    ("01.bitmask_break_even", "bytes_not_bits", lambda: 0.25),
    ("01.min_index_dtype", "too_small", lambda: "uint8"),
    ("01.two_four_bytes", "no_positions", lambda: 384 * 384 // 2 * 4),
    ("01.csr_encode", "kept_zeros", lambda: enc_kept_zeros),
    ("01.csr_encode", "column_major", lambda: enc_column_major),
    ("01.csr_encode", "float_indices", lambda: enc_float_indices),
    ("01.csr_encode", "no_leading_zero", lambda: enc_no_leading_zero),
    ("01.csr_encode", "row_counts", lambda: enc_row_counts),
    ("01.csr_encode", "row_ptr_length", lambda: enc_short_row_ptr),
    ("01.csr_encode", "row_index", lambda: enc_row_index),
    ("01.csr_matvec", "one_per_row", lambda: mv_per_column),
    ("01.csr_matvec", "off_by_one", lambda: mv_off_by_one),
    ("01.csr_matvec", "row_index", lambda: mv_row_index),
    ("01.bitmask_encode", "not_packed", lambda: bm_not_packed),
    ("01.bitmask_encode", "bit_order", lambda: bm_bit_order),
    ("01.bitmask_encode", "no_padding", lambda: bm_no_padding),
    ("01.bitmask_encode", "kept_zeros", lambda: bm_kept_zeros),
]



def test_mutating_x_gets_the_mutated_hint():
    assert checks.diagnose("01.csr_matvec", mv_in_place) == GENERIC_HINTS["mutated"]


@pytest.mark.parametrize("key", ["01.csr_encode", "01.csr_matvec", "01.bitmask_encode"])
def test_the_reference_passes_and_numpy_or_int32_answers_are_accepted_too(key):
    assert checks.diagnose(key, checks.solution(key)) is None


def test_csr_encode_accepts_numpy_arrays_and_int32_indices():
    def numpy_csr(dense):
        a = dense.numpy()
        r, c = np.nonzero(a)
        ptr = np.concatenate([[0], np.cumsum((a != 0).sum(1))]).astype(np.int32)
        return a[r, c], c.astype(np.int32), ptr
    assert checks.diagnose("01.csr_encode", numpy_csr) is None


def test_a_vectorized_matvec_passes():
    def vectorized(values, cols, ptr, x):
        rows = torch.repeat_interleave(torch.arange(len(ptr) - 1), torch.diff(ptr))
        return torch.zeros(len(ptr) - 1).index_add_(0, rows, values * x[cols])
    assert checks.diagnose("01.csr_matvec", vectorized) is None


def test_wrong_kind_of_answer_gets_a_hint_not_a_traceback(capsys):
    assert not checks.check("01.csr_encode", lambda dense: dense)
    assert not checks.check("01.bitmask_encode", lambda dense: (1, 2, 3))
    assert "Traceback" not in capsys.readouterr().out
