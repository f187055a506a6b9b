"""Sparse storage formats as the arrays a file holds (notebook 01 builds them): dense, COO, CSR, bitmask, 2:4.

A format's bytes are the bytes of its arrays; `decode` reads a weight back from them, exactly (8-bit values: their
int8 codes times the per-row scales).
"""

from __future__ import annotations

import numpy as np
import torch

from labkit.quant import affine

FORMATS = ("dense", "coo", "coo_min", "csr", "csr_min", "bitmask", "2:4")
VALUES = ("f32", "int8")


def quantize_rows(w) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 codes (-127..127, zero stays zero) and one float32 scale per row, by `labkit.quant.affine`."""
    t = torch.as_tensor(w).detach().cpu().float()
    qmin, qmax = affine.qrange(8, "symmetric", restricted=True)
    block = affine.block_size_for(t, "channel")
    scale, zero_point = affine.choose_qparams_affine(t, "symmetric", block, qmin, qmax)
    codes = affine.quantize_affine(t, block, scale, zero_point, qmin, qmax, dtype=torch.int8)
    return codes.numpy(), scale.reshape(-1).numpy()


def format_arrays(w: torch.Tensor, fmt: str, values: str = "f32") -> dict[str, np.ndarray]:
    """The arrays format `fmt` stores for a 2-D weight `w`, with float32 values or int8 codes and a scale per row."""
    if fmt not in FORMATS or values not in ("f32", "int8"):
        raise ValueError(f"fmt must be one of {FORMATS} and values 'f32' or 'int8'; got {fmt!r}, {values!r}.")
    a = w.detach().cpu().float().numpy()
    n_rows, n_cols = a.shape
    keep = a != 0  # positions come from the float weights: an int8 code of 0 is still stored where w is not 0
    out = {}
    if values == "int8":
        a, out["scale"] = quantize_rows(a)
    rows, cols = np.nonzero(keep)  # the nonzeros' positions, row by row
    nonzeros = a[keep]  # their values, in the same order
    small = np.min_scalar_type  # the smallest unsigned integer type that holds a number
    if fmt == "dense":
        out["values"] = a
    elif fmt in ("coo", "coo_min"):
        types = (np.int32, np.int32) if fmt == "coo" else (small(n_rows - 1), small(n_cols - 1))
        out.update(rows=rows.astype(types[0]), cols=cols.astype(types[1]), values=nonzeros)
    elif fmt in ("csr", "csr_min"):
        row_ptr = np.concatenate([[0], np.cumsum(keep.sum(axis=1))])
        types = (np.int32, np.int32) if fmt == "csr" else (small(nonzeros.size), small(n_cols - 1))
        out.update(row_ptr=row_ptr.astype(types[0]), col_indices=cols.astype(types[1]), values=nonzeros)
    elif fmt == "bitmask":
        out.update(mask=np.packbits(keep), values=nonzeros)  # one bit per weight, the first in the highest bit
    else:  # 2:4: two values of every group of 4 and their two positions in it, 2 bits each
        groups = keep.reshape(n_rows, -1, 4) if n_cols % 4 == 0 else None
        if groups is None or (groups.sum(axis=-1) > 2).any():
            raise ValueError("The 2:4 format holds only matrices with at most 2 nonzeros in every group of 4 columns; "
                             "apply labkit.prune.masks.two_four_mask(w) first (columns must be a multiple of 4).")
        # the kept positions of each group, nonzeros first (padded with zeros' positions), then in column order
        pos = np.sort(np.argsort(~groups, axis=-1, kind="stable")[..., :2], axis=-1).astype(np.uint8)
        low_bits = np.unpackbits(pos.reshape(-1, 1), axis=1)[:, 6:]  # each position's 2 low bits
        out.update(values=np.take_along_axis(a.reshape(n_rows, -1, 4), pos, axis=-1), positions=np.packbits(low_bits))
    return out


def nbytes(arrays: dict[str, np.ndarray]) -> int:
    """The bytes of a format's arrays: what a file of them holds, beside its few bytes of header."""
    return sum(a.nbytes for a in arrays.values())


def decode(arrays: dict[str, np.ndarray], fmt: str, shape: tuple[int, int]) -> torch.Tensor:
    """The float32 weight that `format_arrays(w, fmt, ...)` stored (int8 codes times their row's scale)."""
    n_rows, n_cols = shape
    values = arrays["values"]
    out = np.zeros(shape, dtype=values.dtype)
    if fmt == "dense":
        out[:] = values.reshape(shape)
    elif fmt in ("coo", "coo_min"):
        out[arrays["rows"].astype(np.int64), arrays["cols"].astype(np.int64)] = values
    elif fmt in ("csr", "csr_min"):
        rows = np.repeat(np.arange(n_rows), np.diff(arrays["row_ptr"].astype(np.int64)))
        out[rows, arrays["col_indices"].astype(np.int64)] = values
    elif fmt == "bitmask":
        out.reshape(-1)[np.unpackbits(arrays["mask"], count=n_rows * n_cols).astype(bool)] = values
    elif fmt == "2:4":
        bits = np.unpackbits(arrays["positions"], count=values.size * 2).reshape(-1, 2)
        pos = (bits[:, 0] * 2 + bits[:, 1]).reshape(values.shape).astype(np.int64)
        np.put_along_axis(out.reshape(n_rows, -1, 4), pos, values, axis=-1)
    else:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}.")
    dense = out.astype(np.float32)
    if "scale" in arrays:
        dense *= arrays["scale"].astype(np.float32)[:, None]
    return torch.from_numpy(dense)
