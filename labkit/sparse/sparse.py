"""Sparse coding: what sparse storage and sparse compute really cost, and dictionary coding of weight rows.

Storage: `encode(w, fmt, values, compress)` writes a weight matrix into real bytes (a small explicit binary
layout), `decode(blob)` reads it back; `format_sizes(w)` tables every format, `break_even(shape, fmt)`
computes the sparsity at which a format starts to beat dense. Compute: `matmul_times` times sparse x dense
against dense at a layer's shape, `to_sparse(model, sparsity)` runs a classifier with CSR Linear layers.
Sparse coding proper: `dictionary_code(model, layer, n_atoms, k)` writes each weight row as k dictionary atoms.
"""

from __future__ import annotations

import hashlib
import lzma
import statistics
import struct
import time
import warnings
import zlib
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from labkit import fast_mode
from labkit.core import data, measure, parts, results
from labkit.core.cache import cache_dir
from labkit.core.parts import clone
from labkit.lab.plots import tr

FORMATS = ("dense", "coo", "coo_min", "csr", "csr_min", "bitmask", "2:4")
VALUES = ("f32", "int8")
COMPRESSORS = (None, "zlib", "lzma")

_MAGIC = b"LKS1"
_OUTER = struct.Struct("<4sB")  # magic, compressor code
_INNER = struct.Struct("<BBII")  # format code, value code, rows, cols
_COUNT = struct.Struct("<IBB")  # nnz, dtype code of the first and second index arrays (coo / csr)
_DTYPES = (np.dtype("<i4"), np.dtype("u1"), np.dtype("<u2"), np.dtype("<u4"))  # index dtype codes 0..3


# --- checks of the learner's input ----------------------------------------------------------------------

def _matrix(w: Any) -> np.ndarray:
    """A 2-D float32 numpy copy of a tensor or array; anything else is a ValueError."""
    if isinstance(w, torch.Tensor):
        w = w.detach().cpu().to(torch.float32).numpy()
    w = np.asarray(w)
    if w.ndim != 2:
        raise ValueError(f"A weight matrix must be 2-D (rows x columns), got shape {tuple(w.shape)}; "
                         "pass a Linear layer's .weight, or reshape your tensor to 2-D first.")
    return np.ascontiguousarray(w, dtype=np.float32)


def _check_sparsity(sparsity: float) -> float:
    if not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"sparsity is the fraction of zeroed weights and must be in [0, 1), got {sparsity}.")
    return float(sparsity)


def _check_choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"Unknown {name} {value!r}; choose one of {', '.join(map(repr, allowed))}.")


# --- masks ----------------------------------------------------------------------------------------------

def magnitude_mask(w: Any, sparsity: float) -> torch.Tensor:
    """Boolean keep-mask zeroing the round(sparsity * n) smallest-magnitude weights of a matrix."""
    a = _matrix(w)
    n_zero = int(round(_check_sparsity(sparsity) * a.size))
    keep = np.ones(a.size, dtype=bool)
    if n_zero:
        # A stable argsort breaks ties by position, so the mask zeroes exactly n_zero weights.
        keep[np.argsort(np.abs(a).ravel(), kind="stable")[:n_zero]] = False
    return torch.from_numpy(keep.reshape(a.shape))


def sparsify(w: Any, sparsity: float) -> torch.Tensor:
    """The matrix with its smallest-magnitude fraction `sparsity` of weights set to zero."""
    a = torch.from_numpy(_matrix(w))
    return a * magnitude_mask(a, sparsity)


def mask_2_4(w: Any) -> torch.Tensor:
    """The matrix keeping the 2 largest-magnitude weights of every group of 4 along each row (2:4 sparsity)."""
    a = _matrix(w)
    if a.shape[1] % 4:
        raise ValueError(f"2:4 sparsity groups 4 consecutive columns; {a.shape[1]} columns is not a multiple of 4.")
    g = a.reshape(a.shape[0], -1, 4)
    order = np.argsort(-np.abs(g), axis=-1, kind="stable")[..., :2]
    keep = np.zeros_like(g, dtype=bool)
    np.put_along_axis(keep, order, True, axis=-1)
    return torch.from_numpy((g * keep).reshape(a.shape))


def is_2_4(w: Any) -> bool:
    """True when every group of 4 consecutive weights in a row holds at most 2 nonzeros."""
    a = _matrix(w)
    return a.shape[1] % 4 == 0 and bool(((a.reshape(a.shape[0], -1, 4) != 0).sum(-1) <= 2).all())


# --- 8-bit values ---------------------------------------------------------------------------------------

def quantize_rows(w: Any) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 codes with one float32 scale per row (zero stays exactly zero)."""
    a = _matrix(w)
    scale = (np.abs(a).max(axis=1) / 127.0).astype(np.float32)
    scale[scale == 0] = 1.0  # an all-zero row: any scale decodes it to zeros
    codes = np.clip(np.rint(a / scale[:, None]), -127, 127).astype(np.int8)
    return codes, scale


def dequantize_rows(codes: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """float32 weights from int8 codes and per-row scales (the one formula every 8-bit format decodes with)."""
    return codes.astype(np.float32) * scale.astype(np.float32)[:, None]


def quantized(w: Any) -> torch.Tensor:
    """What an 8-bit-value format gives back for `w`: the per-row int8 round trip of the matrix."""
    return torch.from_numpy(dequantize_rows(*quantize_rows(w)))


# --- encode / decode ------------------------------------------------------------------------------------

def _min_dtype(max_value: int) -> np.dtype:
    """Smallest unsigned integer type that holds 0..max_value."""
    for dt in _DTYPES[1:]:
        if max_value <= np.iinfo(dt).max:
            return dt
    raise ValueError(f"{max_value} does not fit a 32-bit index.")


def _pack_2bit(idx: np.ndarray) -> bytes:
    """Four 2-bit numbers per byte, first in the low bits."""
    flat = np.zeros(-(-idx.size // 4) * 4, dtype=np.uint8)
    flat[:idx.size] = idx.ravel()
    q = flat.reshape(-1, 4)
    return (q[:, 0] | (q[:, 1] << 2) | (q[:, 2] << 4) | (q[:, 3] << 6)).astype(np.uint8).tobytes()


def _unpack_2bit(buf: bytes, count: int) -> np.ndarray:
    b = np.frombuffer(buf, dtype=np.uint8)
    return np.stack([(b >> s) & 3 for s in (0, 2, 4, 6)], axis=1).ravel()[:count]


def _encode_body(a: np.ndarray, fmt: str, values: str) -> bytes:
    rows, cols = a.shape
    parts = [_INNER.pack(FORMATS.index(fmt), VALUES.index(values), rows, cols)]
    if values == "int8":
        codes, scale = quantize_rows(a)
        parts.append(scale.astype("<f4").tobytes())
        vals = codes
    else:
        vals = a.astype("<f4")
    nz = a != 0  # positions come from the float weights, so an 8-bit code may be a stored 0: still exact
    if fmt == "dense":
        parts.append(vals.tobytes())
    elif fmt in ("coo", "coo_min"):
        r, c = np.nonzero(nz)
        rt, ct = (_min_dtype(rows - 1), _min_dtype(cols - 1)) if fmt == "coo_min" else (_DTYPES[0],) * 2
        parts += [_COUNT.pack(r.size, _DTYPES.index(rt), _DTYPES.index(ct)),
                  r.astype(rt).tobytes(), c.astype(ct).tobytes(), vals[nz].tobytes()]
    elif fmt in ("csr", "csr_min"):
        r, c = np.nonzero(nz)  # row-major order is CSR order
        indptr = np.concatenate([[0], np.cumsum(nz.sum(axis=1))])
        pt, ct = (_min_dtype(r.size), _min_dtype(cols - 1)) if fmt == "csr_min" else (_DTYPES[0],) * 2
        parts += [_COUNT.pack(r.size, _DTYPES.index(pt), _DTYPES.index(ct)),
                  indptr.astype(pt).tobytes(), c.astype(ct).tobytes(), vals[nz].tobytes()]
    elif fmt == "bitmask":
        parts += [np.packbits(nz.ravel()).tobytes(), vals[nz].tobytes()]
    else:  # 2:4: two values per group of 4 and their two positions, 2 bits each
        if not is_2_4(a):
            raise ValueError("The 2:4 format holds only matrices with at most 2 nonzeros in every group of 4 "
                             "columns; apply sparse.mask_2_4(w) first (columns must be a multiple of 4).")
        g = nz.reshape(rows, -1, 4)
        # Nonzeros first (stable keeps their order), padded with zero positions; sorted so the layout is canonical.
        pos = np.sort(np.argsort(~g, axis=-1, kind="stable")[..., :2], axis=-1)
        kept = np.take_along_axis(vals.reshape(rows, -1, 4), pos, axis=-1)
        parts += [kept.tobytes(), _pack_2bit(pos.astype(np.uint8))]
    return b"".join(parts)


def encode(w: Any, fmt: str = "csr", values: str = "f32", compress: str | None = None) -> bytes:
    """Serialize a 2-D weight matrix into real bytes in one storage format (optionally zlib/lzma on top)."""
    _check_choice("format", fmt, FORMATS)
    _check_choice("values", values, VALUES)
    _check_choice("compress", compress, COMPRESSORS)
    body = _encode_body(_matrix(w), fmt, values)
    if compress == "zlib":
        body = zlib.compress(body, 9)
    elif compress == "lzma":
        body = lzma.compress(body, preset=6)
    return _OUTER.pack(_MAGIC, COMPRESSORS.index(compress)) + body


class _Reader:
    """Reads consecutive arrays out of a bytes body."""
    def __init__(self, buf: bytes, pos: int):
        self.buf, self.pos = buf, pos

    def array(self, dtype, count: int) -> np.ndarray:
        dtype = np.dtype(dtype)
        out = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos)
        self.pos += dtype.itemsize * count
        return out

    def struct(self, st: struct.Struct) -> tuple:
        out = st.unpack_from(self.buf, self.pos)
        self.pos += st.size
        return out


def decode(blob: bytes) -> torch.Tensor:
    """The dense float32 matrix stored in `blob` (8-bit formats give back the dequantized int8 codes)."""
    magic, comp = _OUTER.unpack_from(blob, 0)
    if magic != _MAGIC:
        raise ValueError("These bytes were not written by sparse.encode (wrong magic number).")
    body = blob[_OUTER.size:]
    if COMPRESSORS[comp] == "zlib":
        body = zlib.decompress(body)
    elif COMPRESSORS[comp] == "lzma":
        body = lzma.decompress(body)
    rd = _Reader(body, 0)
    f, v, rows, cols = rd.struct(_INNER)
    fmt, values = FORMATS[f], VALUES[v]
    scale = rd.array("<f4", rows) if values == "int8" else None
    vdt = np.int8 if values == "int8" else np.dtype("<f4")
    out = np.zeros((rows, cols), dtype=vdt)
    if fmt == "dense":
        out[:] = rd.array(vdt, rows * cols).reshape(rows, cols)
    elif fmt in ("coo", "coo_min"):
        nnz, rt, ct = rd.struct(_COUNT)
        r, c = rd.array(_DTYPES[rt], nnz), rd.array(_DTYPES[ct], nnz)
        out[r.astype(np.int64), c.astype(np.int64)] = rd.array(vdt, nnz)
    elif fmt in ("csr", "csr_min"):
        nnz, pt, ct = rd.struct(_COUNT)
        indptr = rd.array(_DTYPES[pt], rows + 1).astype(np.int64)
        c = rd.array(_DTYPES[ct], nnz).astype(np.int64)
        r = np.repeat(np.arange(rows), np.diff(indptr))
        out[r, c] = rd.array(vdt, nnz)
    elif fmt == "bitmask":
        mask = np.unpackbits(rd.array(np.uint8, -(-rows * cols // 8)), count=rows * cols).astype(bool)
        out.ravel()[mask] = rd.array(vdt, int(mask.sum()))
    else:
        groups = rows * cols // 4
        kept = rd.array(vdt, groups * 2).reshape(rows, -1, 2)
        pos = _unpack_2bit(body[rd.pos:rd.pos + -(-groups * 2 // 4)], groups * 2).reshape(rows, -1, 2)
        np.put_along_axis(out.reshape(rows, -1, 4), pos.astype(np.int64), kept, axis=-1)
    dense = dequantize_rows(out, scale) if values == "int8" else out
    return torch.from_numpy(np.ascontiguousarray(dense, dtype=np.float32))


def predicted_bytes(shape: tuple[int, int], nnz: int, fmt: str, values: str = "f32") -> int:
    """Uncompressed size of `encode` for a rows x cols matrix with nnz nonzeros, from the layout alone."""
    _check_choice("format", fmt, FORMATS)
    _check_choice("values", values, VALUES)
    rows, cols = (int(s) for s in shape)
    n = rows * cols
    vb = 1 if values == "int8" else 4
    size = _OUTER.size + _INNER.size + (4 * rows if values == "int8" else 0)
    if fmt == "dense":
        return size + n * vb
    if fmt == "coo":
        return size + _COUNT.size + nnz * (4 + 4 + vb)
    if fmt == "coo_min":
        return size + _COUNT.size + nnz * (_min_dtype(rows - 1).itemsize + _min_dtype(cols - 1).itemsize + vb)
    if fmt == "csr":
        return size + _COUNT.size + 4 * (rows + 1) + nnz * (4 + vb)
    if fmt == "csr_min":
        return size + _COUNT.size + _min_dtype(nnz).itemsize * (rows + 1) + nnz * (_min_dtype(cols - 1).itemsize + vb)
    if fmt == "bitmask":
        return size + -(-n // 8) + nnz * vb
    return size + (n // 2) * vb + -(-(n // 2) // 4)  # 2:4: half the values, 2 bits per kept value


def header_size(fmt: str, values: str = "f32") -> int:
    """Bytes `encode` writes before a format's arrays (magic, format, shape; counts for COO / CSR; int8 scales not included)."""
    _check_choice("format", fmt, FORMATS)
    _check_choice("values", values, VALUES)
    return _OUTER.size + _INNER.size + (_COUNT.size if fmt in ("coo", "coo_min", "csr", "csr_min") else 0)


def as_bytes(*arrays: Any) -> bytes:
    """The raw bytes of tensors / numpy arrays / bytes laid end to end, each in its own dtype (what a file would hold)."""
    out = []
    for a in arrays:
        if isinstance(a, (bytes, bytearray)):
            out.append(bytes(a))
            continue
        if isinstance(a, torch.Tensor):
            a = a.detach().cpu().numpy()
        out.append(np.ascontiguousarray(np.asarray(a)).tobytes())
    return b"".join(out)


def break_even(shape: tuple[int, int], fmt: str, values: str = "f32") -> float:
    """Lowest sparsity at which `fmt` takes no more bytes than dense with the same values (uncompressed)."""
    rows, cols = (int(s) for s in shape)
    if rows < 1 or cols < 1:
        raise ValueError(f"shape must be two positive sizes (rows, cols), got {shape}.")
    dense = predicted_bytes((rows, cols), rows * cols, "dense", values)
    if fmt == "2:4":
        # 2:4 needs exactly its pattern: half the weights zero, whatever the savings.
        return 0.5
    n = rows * cols
    # Size grows with nnz (min-index types only step up), so a binary search finds the largest nnz that fits.
    lo, hi = 0, n
    if predicted_bytes((rows, cols), 0, fmt, values) > dense:
        return 1.0
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if predicted_bytes((rows, cols), mid, fmt, values) <= dense:
            lo = mid
        else:
            hi = mid - 1
    return 1.0 - lo / n


def format_sizes(w: Any, values: tuple = VALUES, compress: tuple = COMPRESSORS, verify: bool = True) -> pd.DataFrame:
    """Real serialized bytes of `w` in every format, value type and compressor, with the round trip checked."""
    a = _matrix(w)
    dense_bytes = len(encode(a, "dense"))
    fits_2_4 = a.shape[1] % 4 == 0 and is_2_4(a)
    rows = []
    for fmt in FORMATS:
        if fmt == "2:4" and a.shape[1] % 4:
            continue
        src = a if fmt != "2:4" or fits_2_4 else mask_2_4(a).numpy()
        for val in values:
            expect = src if val == "f32" else quantized(src).numpy()
            for comp in compress:
                blob = encode(src, fmt, val, comp)
                exact = bool(np.array_equal(decode(blob).numpy(), expect)) if verify else None
                rows.append({"format": fmt, "values": val, "compress": comp or "-", "bytes": len(blob),
                             "x_smaller": dense_bytes / len(blob), "holds_w": fmt != "2:4" or fits_2_4,
                             "round_trip_exact": exact})
    return pd.DataFrame(rows)


def best_format(w: Any, values: str = "f32", compress: tuple = (None,)) -> tuple[str, str | None, int]:
    """(format, compressor, bytes) of the smallest format that holds `w` exactly."""
    df = format_sizes(w, values=(values,), compress=compress, verify=False)
    row = df[df["holds_w"]].sort_values("bytes", kind="stable").iloc[0]
    return row["format"], (None if row["compress"] == "-" else row["compress"]), int(row["bytes"])


# --- sparse compute -------------------------------------------------------------------------------------

@contextmanager
def quiet_sparse():
    """torch warns that CSR support is beta on every conversion; the lab measures it, the warning adds nothing."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]parse.*")
        yield


def to_csr(w: torch.Tensor) -> torch.Tensor:
    """A torch sparse CSR matrix with int32 indices (MKL's native index type on CPU)."""
    with quiet_sparse():
        c = w.detach().to_sparse_csr()
        return torch.sparse_csr_tensor(c.crow_indices().int(), c.col_indices().int(), c.values(), c.shape)


def _median_ms(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1000)
    return statistics.median(ts)


BACKENDS = ("dense", "torch_csr", "scipy_csr")
DEFAULT_TOKENS = 32 * 30  # a batch of 32 snippets of ~30 word pieces
_TIMES: dict[tuple, float] = {}


_LAYERS: dict[tuple, torch.Tensor] = {}


def _random_layer(shape: tuple[int, int], density: float, seed: int = 0) -> torch.Tensor:
    """A random layer of `shape` keeping a fraction `density` of its weights (cached: sliders revisit them)."""
    key = (tuple(shape), round(density, 6), seed)
    if key not in _LAYERS:
        _LAYERS[key] = _random_layer_uncached(shape, density, seed)
    return _LAYERS[key]


def _random_layer_uncached(shape: tuple[int, int], density: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g)
    return w * magnitude_mask(w, 1.0 - density)


def matmul_times(shape: tuple[int, int] = (1536, 384), densities=(1.0, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01),
                 tokens: int = DEFAULT_TOKENS, repeats: int | None = None) -> pd.DataFrame:
    """Median ms of y = x W^T (x: tokens x in) with W dense, torch CSR and scipy CSR, per density (cached)."""
    import scipy.sparse as sps

    rows, cols = (int(s) for s in shape)
    repeats = repeats or (5 if fast_mode() else 15)
    x = torch.randn(tokens, cols, generator=torch.Generator().manual_seed(1))
    xn = x.numpy()
    out = []
    for d in densities:
        d = float(d)
        if not 0.0 < d <= 1.0:
            raise ValueError(f"density is the fraction of kept weights and must be in (0, 1], got {d}.")
        key = (rows, cols, round(d, 4), tokens, torch.get_num_threads())
        if key + ("dense",) not in _TIMES:
            w = _random_layer((rows, cols), d)
            wc, ws = to_csr(w), sps.csr_matrix(w.numpy())
            with torch.inference_mode(), quiet_sparse():
                fns = {"dense": lambda: torch.nn.functional.linear(x, w),
                       "torch_csr": lambda: torch.sparse.mm(wc, x.T).T,
                       "scipy_csr": lambda: xn @ ws.T}
                for name, fn in fns.items():
                    _TIMES[key + (name,)] = _median_ms(fn, repeats)
        out.append({"density": d, "sparsity": 1 - d, **{b: _TIMES[key + (b,)] for b in BACKENDS}})
    df = pd.DataFrame(out)
    for b in BACKENDS[1:]:
        df[f"{b}_speedup"] = df["dense"] / df[b]
    return df


def crossover(times: pd.DataFrame, backend: str = "torch_csr", interpolate: bool = False) -> float | None:
    """Highest measured density at which `backend` beats dense (None: it never does in this sweep).

    With `interpolate`, the density where the speedup crosses 1, between the last win and the next
    (denser) loss, interpolated in log density and log speedup.
    """
    _check_choice("backend", backend, BACKENDS[1:])
    df = times.sort_values("density")
    wins = df[df[backend] < df["dense"]]
    if wins.empty:
        return None
    best = float(wins["density"].max())
    denser = df[df["density"] > best]
    if not interpolate or denser.empty:
        return best
    d0, d1 = best, float(denser["density"].iloc[0])
    s0 = np.log(float(wins[wins["density"] == d0]["dense"].iloc[0] / wins[wins["density"] == d0][backend].iloc[0]))
    s1 = np.log(float(denser["dense"].iloc[0] / denser[backend].iloc[0]))
    t = s0 / (s0 - s1)  # s0 > 0 >= s1
    return float(np.exp(np.log(d0) + t * (np.log(d1) - np.log(d0))))


# --- a classifier with sparse Linear layers -------------------------------------------------------------

def csr_arrays(encoder: Callable, w: torch.Tensor, name: str = "the weight") -> tuple[torch.Tensor, ...]:
    """(values, col_indices int32, row_ptr int32) from `encoder(w)`, checked to decode back to exactly `w`.

    `encoder` is a function like the notebook's csr_encode: dense 2-D tensor -> (values, col_indices, row_ptr)."""
    rows, cols = w.shape
    out = encoder(w.detach().clone())  # a copy: an encoder that writes into its input cannot touch the model
    if not isinstance(out, (tuple, list)) or len(out) != 3:
        raise ValueError(f"The encoder must return three arrays (values, col_indices, row_ptr) for {name}; "
                         f"it returned {type(out).__name__}.")
    try:
        values, col, ptr = (torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a).reshape(-1)
                            for a in out)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"The encoder's three results for {name} are not arrays ({err}).") from err
    if col.is_floating_point() or ptr.is_floating_point() or ptr.numel() != rows + 1 or col.numel() != values.numel():
        raise ValueError(f"The encoder's arrays for {name} are not CSR (integer indices, rows + 1 row pointers, one "
                         "column per value); check it with checks.check('01.csr_encode', csr_encode).")
    try:
        with quiet_sparse():
            # check_invariants: arrays that break CSR's rules raise here instead of reading out of bounds.
            back = torch.sparse_csr_tensor(ptr.long(), col.long(), values.to(w.dtype), (rows, cols),
                                           check_invariants=True).to_dense()
    except (RuntimeError, IndexError) as err:
        raise ValueError(f"The encoder's arrays for {name} do not form a valid CSR matrix ({err}); "
                         "check it with checks.check('01.csr_encode', csr_encode).") from err
    if not torch.equal(back, w.detach()):
        raise ValueError(f"The encoder's arrays for {name} do not decode to the weight they were given; "
                         "check it with checks.check('01.csr_encode', csr_encode).")
    return values.to(w.dtype).contiguous(), col.to(torch.int32), ptr.to(torch.int32)


class SparseLinear(nn.Module):
    """A Linear layer whose weight is stored and multiplied as a CSR matrix (int32 indices)."""
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, encoder: Callable | None = None):
        super().__init__()
        if encoder is None:
            c = to_csr(weight)
            values, col, ptr = c.values(), c.col_indices(), c.crow_indices()
        else:  # a learner's csr_encode writes the arrays; csr_arrays checks them first
            values, col, ptr = csr_arrays(encoder, weight)
        self.out_features, self.in_features = weight.shape
        # Plain buffers, so state_dict / safetensors hold the CSR arrays themselves.
        self.register_buffer("crow_indices", ptr.clone())
        self.register_buffer("col_indices", col.clone())
        self.register_buffer("values", values.clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    @classmethod
    def from_linear(cls, layer: nn.Linear) -> "SparseLinear":
        """The same layer, its (already pruned) weight kept as CSR."""
        return cls(layer.weight.detach(), layer.bias)

    def weight_csr(self) -> torch.Tensor:
        """The CSR weight matrix (views of the buffers, no copy)."""
        with quiet_sparse():
            return torch.sparse_csr_tensor(self.crow_indices, self.col_indices, self.values,
                                           (self.out_features, self.in_features))

    def dense_weight(self) -> torch.Tensor:
        """The weight as a dense matrix (for checks)."""
        with quiet_sparse():
            return self.weight_csr().to_dense()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """y = x W^T + b, with W sparse: (W @ x^T)^T."""
        x2 = x.reshape(-1, self.in_features)
        with quiet_sparse():
            y = torch.sparse.mm(self.weight_csr(), x2.T).T
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        n = self.out_features * self.in_features
        return f"in={self.in_features}, out={self.out_features}, density={self.values.numel() / n:.3f}"


def linear_layers(model: nn.Module, which: str = "encoder") -> list[str]:
    """Names of the Linear layers: 'encoder' (the blocks' attention and feed-forward layers), 'ffn' (the
    feed-forward up and down projections) or 'all' (every Linear, the head included), found by `labkit.core.parts`."""
    _check_choice("which", which, ("encoder", "ffn", "all"))
    return list(parts.linears(model, {"encoder": "blocks", "ffn": "ffn", "all": "all"}[which]))


_CSR_OK: dict[tuple, bool] = {}


def _csr_runs_on(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether torch's CSR x dense matmul runs on `device` in `dtype` (tried once on a 2x2 matrix, remembered)."""
    key = (str(device), dtype)
    if key not in _CSR_OK:
        try:
            w = torch.eye(2, dtype=dtype, device=device)
            with quiet_sparse():
                torch.sparse.mm(to_csr(w), torch.ones(2, 1, dtype=dtype, device=device))
            _CSR_OK[key] = True
        except (RuntimeError, NotImplementedError):
            _CSR_OK[key] = False
    return _CSR_OK[key]


def to_sparse(model: nn.Module, sparsity: float, which: str = "ffn", values: str = "f32",
              inplace: bool = False, encoder: Callable | None = None) -> nn.Module:
    """The model with `which` Linear layers magnitude-pruned to `sparsity` and run as CSR (`SparseLinear`).

    values="int8" keeps the per-row int8 round trip of the weights (what an 8-bit sparse artifact decodes to).
    encoder: your own `csr_encode(dense) -> (values, col_indices, row_ptr)` writes each layer's CSR arrays
    (checked to decode back exactly); None uses torch's conversion. The sparse layers stay on the model's
    device; where torch has no CSR matmul for that device and dtype, the model is moved to the CPU, with a warning.
    """
    _check_sparsity(sparsity)
    _check_choice("values", values, VALUES)

    out = model if inplace else clone(model)
    first = next(iter(out.parameters()), None)
    if first is not None and first.device.type != "cpu" and not _csr_runs_on(first.device, first.dtype):
        warnings.warn(f"torch has no sparse CSR matmul on {first.device} for {first.dtype}: to_sparse returns "
                      "a CPU model.", stacklevel=2)
        out = out.cpu()
    for name in linear_layers(out, which):
        lin = out.get_submodule(name)
        w = sparsify(lin.weight, sparsity)  # a CPU float32 copy
        if values == "int8":
            w = quantized(w)
        # Built from CPU arrays (a learner's encoder may use numpy), then moved to the model's device.
        layer = SparseLinear(w.to(lin.weight.dtype), None if lin.bias is None else lin.bias.detach().cpu(), encoder)
        parts.set_module(out, name, layer.to(lin.weight.device))
    return out.eval()


def pruned_dense(model: nn.Module, sparsity: float, which: str = "ffn", inplace: bool = False) -> nn.Module:
    """The same magnitude pruning, the zeros kept in dense Linear weights (same numbers, dense speed)."""
    _check_sparsity(sparsity)

    out = model if inplace else clone(model)
    with torch.no_grad():
        for name in linear_layers(out, which):
            lin = out.get_submodule(name)
            lin.weight.copy_(sparsify(lin.weight, sparsity))
    return out.eval()


def model_artifact(model: nn.Module, fmt: str = "csr_min", values: str = "f32", compress: str | None = None) -> bytes:
    """Real bytes of the whole model: SparseLinear weights in `fmt`, every other tensor dense float32."""
    parts, skip = [], set()
    for name, mod in model.named_modules():
        if isinstance(mod, SparseLinear):
            parts.append((f"{name}.weight", encode(mod.dense_weight(), fmt, values, compress)))
            skip |= {f"{name}.{b}" for b in ("crow_indices", "col_indices", "values")}
    for name, t in model.state_dict().items():
        if name not in skip:  # the CSR buffers are stored once, in `fmt`, above
            parts.append((name, encode(t.detach().cpu().float().reshape(1, -1), "dense", "f32", compress)))
    out = [struct.pack("<I", len(parts))]
    for name, blob in parts:
        nb = name.encode()
        out += [struct.pack("<HI", len(nb), len(blob)), nb, blob]
    return b"".join(out)


def read_artifact(blob: bytes) -> dict[str, torch.Tensor]:
    """The tensors stored by `model_artifact` (Linear weights as dense matrices, the rest flat)."""
    (count,), pos, out = struct.unpack_from("<I", blob, 0), 4, {}
    for _ in range(count):
        ln, lb = struct.unpack_from("<HI", blob, pos)
        pos += 6
        name = blob[pos:pos + ln].decode()
        out[name] = decode(blob[pos + ln:pos + ln + lb])
        pos += ln + lb
    return out


# --- dictionary learning (sparse coding proper) ---------------------------------------------------------

class CodedLinear(nn.Module):
    """A Linear layer whose weight rows are sparse codes over a learned dictionary: W = C D."""
    def __init__(self, dictionary: torch.Tensor, codes: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.register_buffer("dictionary", dictionary.float().contiguous())  # n_atoms x in
        self.register_buffer("codes", codes.float().contiguous())  # out x n_atoms, k nonzeros per row
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.out_features, self.in_features = codes.shape[0], dictionary.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """y = (x D^T) C^T + b: project on the atoms, then mix them."""
        return nn.functional.linear(nn.functional.linear(x, self.dictionary), self.codes, self.bias)

    def weight(self) -> torch.Tensor:  # noqa: D401 - a method, not the nn.Linear attribute
        """The reconstructed weight matrix C D."""
        return self.codes @ self.dictionary


_DICTS: dict[tuple, np.ndarray] = {}


def _weight_key(w: np.ndarray) -> str:
    return hashlib.sha256(w.tobytes()).hexdigest()[:16]


def learn_dictionary(w: Any, n_atoms: int, seed: int = 0) -> np.ndarray:
    """A dictionary of n_atoms unit-norm atoms for the rows of `w` (MiniBatchDictionaryLearning, cached)."""
    from sklearn.decomposition import MiniBatchDictionaryLearning

    a = _matrix(w)
    if not 1 <= int(n_atoms) <= a.shape[0]:
        raise ValueError(f"n_atoms must be between 1 and the number of rows ({a.shape[0]}), got {n_atoms}.")
    key = (_weight_key(a), int(n_atoms), seed)
    if key not in _DICTS:

        path = cache_dir() / "sparse" / f"dict-{key[0]}-{n_atoms}-{seed}.npy"
        if path.is_file():
            _DICTS[key] = np.load(path)
        else:
            # One pass of coordinate descent keeps the fit to about a second per layer and errs within a few
            # percent of slower fits; scaled rows let one alpha fit every layer.
            scale = np.abs(a).mean() or 1.0
            dl = MiniBatchDictionaryLearning(n_components=int(n_atoms), alpha=1.0, batch_size=256, max_iter=1,
                                             random_state=seed, fit_algorithm="cd")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # convergence warnings of the inner lasso: one pass is the point
                dl.fit(a / scale)
            _DICTS[key] = dl.components_.astype(np.float32)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                np.save(path, _DICTS[key])
            except OSError:
                pass  # a read-only cache only costs a refit
    return _DICTS[key]


def sparse_codes(w: Any, dictionary: np.ndarray, k: int) -> np.ndarray:
    """Codes with k nonzeros per row so that codes @ dictionary approximates w (orthogonal matching pursuit)."""
    from sklearn.decomposition import sparse_encode

    a = _matrix(w)
    if not 1 <= int(k) <= dictionary.shape[0]:
        raise ValueError(f"k (atoms per row) must be between 1 and n_atoms={dictionary.shape[0]}, got {k}.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # OMP stops early on dependent atoms: the error shows it
        return sparse_encode(a, dictionary, algorithm="omp", n_nonzero_coefs=int(k)).astype(np.float32)


def coded_bytes(shape: tuple[int, int], n_atoms: int, k: int) -> int:
    """Bytes of a dictionary-coded matrix: the float32 dictionary plus k (uint16 atom index, float32 value) per row."""
    rows, cols = shape
    return n_atoms * cols * 4 + rows * k * (_min_dtype(n_atoms - 1).itemsize + 4)


def relative_error(w: Any, approx: Any) -> float:
    """||w - approx||_F / ||w||_F."""
    a, b = _matrix(w), _matrix(approx)
    return float(np.linalg.norm(a - b) / (np.linalg.norm(a) or 1.0))


def dictionary_code(model: nn.Module, layer: str, n_atoms: int, k: int, inplace: bool = False) -> nn.Module:
    """The model with Linear `layer` (a module name) replaced by k-sparse codes over an n_atoms dictionary."""
    try:
        lin = model.get_submodule(layer)
    except AttributeError as err:
        raise ValueError(f"No layer {layer!r}; use one of sparse.linear_layers(model).") from err
    if not isinstance(lin, nn.Linear):
        raise ValueError(f"{layer!r} is a {type(lin).__name__}, not an nn.Linear; use one of sparse.linear_layers(model).")
    if int(k) > int(n_atoms):
        raise ValueError(f"k={k} atoms per row cannot exceed the dictionary's n_atoms={n_atoms}; lower k.")
    d = learn_dictionary(lin.weight, n_atoms)
    c = sparse_codes(lin.weight, d, k)
    out = model if inplace else clone(model)
    # The codes are computed on the CPU (scikit-learn); the new layer goes where the old one was.
    coded = CodedLinear(torch.from_numpy(d), torch.from_numpy(c), None if lin.bias is None else lin.bias.detach().cpu())
    parts.set_module(out, layer, coded.to(lin.weight.device, lin.weight.dtype))
    return out.eval()


def dictionary_tradeoff(model: nn.Module, tokenizer, layer: str, settings, limit: int | None = 200,
                        split: str = "val") -> pd.DataFrame:
    """Per (n_atoms, k): bytes, reconstruction error and accuracy with its 95% interval, next to magnitude
    pruning at the same bytes, and the paired difference between the two on the same snippets.

    A sweep over settings is something you choose from, so it runs on the validation split (`split="test"` is
    refused): the test split is kept for reporting a chosen setting once."""

    split = data.selection_split(split)
    labels = data.split(split, limit)["label"].to_numpy()
    w = model.get_submodule(layer).weight.detach()
    dense = predicted_bytes(tuple(w.shape), w.numel(), "dense")
    rows = []
    for n_atoms, k in settings:
        coded = dictionary_code(model, layer, n_atoms, k)
        b = coded_bytes(tuple(w.shape), n_atoms, k)
        # Magnitude pruning with the same budget: the nnz that csr_min fits in b bytes.
        nnz = max(0, min(w.numel(), (b - predicted_bytes(tuple(w.shape), 0, "csr_min")) // 6))
        sp = 1 - nnz / w.numel()
        pruned = model if sp == 0 else _replace_weight(model, layer, sparsify(w, min(sp, 0.9999)))
        pc, pp = (measure.predictions(m, tokenizer, split, limit) for m in (coded, pruned))
        cc, cp, diff = measure.accuracy_ci(pc, labels), measure.accuracy_ci(pp, labels), measure.paired(pc, pp, labels)
        rows.append({"n_atoms": n_atoms, "k": k, "bytes": b, "x_smaller": dense / b,
                     "coded_error": relative_error(w, coded.get_submodule(layer).weight()),
                     "coded_accuracy": cc["accuracy"], "coded_lo": cc["lo"], "coded_hi": cc["hi"],
                     "pruned_sparsity": sp, "pruned_error": relative_error(w, sparsify(w, min(sp, 0.9999))),
                     "pruned_accuracy": cp["accuracy"], "pruned_lo": cp["lo"], "pruned_hi": cp["hi"],
                     "coded_minus_pruned": diff["difference"], "diff_lo": diff["lo"], "diff_hi": diff["hi"],
                     "p_value": diff["p_value"], "n": cc["n"]})
        del coded, pruned  # two copies of the model: gone before the next setting builds its own
    return pd.DataFrame(rows)


def _replace_weight(model: nn.Module, layer: str, w: torch.Tensor) -> nn.Module:

    out = clone(model)
    with torch.no_grad():
        out.get_submodule(layer).weight.copy_(w)
    return out.eval()


# --- slider functions -----------------------------------------------------------------------------------

def sparsity_view(sparsity: float, layer_shape: tuple[int, int] = (1536, 384), tokens: int = DEFAULT_TOKENS,
                  compress: tuple = (None,)) -> dict:
    """Bytes per format and matmul times for one random layer at `sparsity` (layers and timings cached)."""
    _check_sparsity(sparsity)
    w = _random_layer(tuple(layer_shape), 1.0 - sparsity)
    sizes = format_sizes(w, compress=compress, verify=False)
    times = matmul_times(tuple(layer_shape), densities=(round(1.0 - sparsity, 4),), tokens=tokens)
    return {"sparsity": sparsity, "shape": tuple(layer_shape), "sizes": sizes, "times": times.iloc[0].to_dict()}


def bytes_curve(shape: tuple[int, int] = (1536, 384), sparsities=None, values: str = "f32") -> pd.DataFrame:
    """Real encoded bytes of a random layer per format across sparsities (2:4 only where it holds the layer)."""
    sparsities = np.round(np.linspace(0, 0.95, 20), 3) if sparsities is None else sparsities
    rows = []
    for s in sparsities:
        w = _random_layer(tuple(shape), 1.0 - float(s))
        for fmt in FORMATS[:-1]:
            rows.append({"sparsity": float(s), "format": fmt, "bytes": len(encode(w, fmt, values))})
    return pd.DataFrame(rows)


def dictionary_view(model: nn.Module, tokenizer, layer: str, n_atoms: int, k: int, limit: int | None = 200,
                    split: str = "val") -> dict:
    """Slider point: bytes, reconstruction error and validation accuracy (95% interval) of one (n_atoms, k) coding."""
    split = data.selection_split(split)  # a slider is for choosing: never on the test split
    w = model.get_submodule(layer).weight.detach()
    coded = dictionary_code(model, layer, n_atoms, k)
    ci = measure.accuracy_ci(measure.predictions(coded, tokenizer, split, limit),
                             data.split(split, limit)["label"].to_numpy())
    return {"n_atoms": n_atoms, "k": k, "bytes": coded_bytes(tuple(w.shape), n_atoms, k),
            "dense_bytes": w.numel() * 4, "error": relative_error(w, coded.get_submodule(layer).weight()),
            "accuracy": ci["accuracy"], "accuracy_ci": measure.format_accuracy(ci)}


# --- drawing (the notebook's figures; functions only draw what they are given) -------------------------

def plot_bytes(curve: pd.DataFrame, breaks: dict[str, float] | None = None, ax=None):
    """Bytes per format against sparsity, with computed break-even points marked."""
    import matplotlib.pyplot as plt


    ax = ax or plt.subplots(figsize=(7, 4))[1]
    for fmt, g in curve.groupby("format", sort=False):
        line, = ax.plot(g["sparsity"], g["bytes"] / 1e3, label=fmt)
        if breaks and fmt in breaks and 0 < breaks[fmt] < 1:
            ax.axvline(breaks[fmt], color=line.get_color(), ls=":", lw=1)
    ax.set_xlabel(tr("sparsity"))
    ax.set_ylabel(tr("kB"))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return ax


def plot_matmul(times: dict, ax=None):
    """Matmul ms against density per shape: dense vs torch CSR vs scipy CSR (log scales)."""
    import matplotlib.pyplot as plt


    axes = ax if ax is not None else plt.subplots(1, len(times), figsize=(4.2 * len(times), 3.6), sharey=True)[1]
    for a, (shape, df) in zip(np.atleast_1d(axes), times.items()):
        for b in BACKENDS:
            a.plot(df["density"], df[b], marker="o", label=b)
        a.set_xscale("log")
        a.set_yscale("log")
        a.set_title(f"{shape[0]}x{shape[1]}")
        a.set_xlabel(tr("density (kept fraction)"))
        a.grid(alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel(tr("ms (median)"))
    np.atleast_1d(axes)[0].legend(fontsize=8)
    return axes


def draw_view(view: dict) -> None:
    """Render a `sparsity_view` point: bytes per format and the three matmul times."""
    import matplotlib.pyplot as plt


    sizes = view["sizes"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.4))
    for i, (val, g) in enumerate(sizes.groupby("values", sort=False)):
        a1.barh(np.arange(len(g)) + 0.4 * i, g["bytes"] / 1e3, height=0.4, label=val)
    labels = sizes[sizes["values"] == sizes["values"].iloc[0]]["format"]
    a1.set_yticks(np.arange(len(labels)) + 0.2, labels)
    a1.set_xlabel(tr("kB"))
    a1.legend(fontsize=8)
    a1.set_title(tr("{rows}x{cols} at sparsity {sparsity}", rows=view["shape"][0], cols=view["shape"][1],
                    sparsity=f"{view['sparsity']:.2f}"))
    a2.bar(list(BACKENDS), [view["times"][b] for b in BACKENDS], color=["#4c72b0", "#dd8452", "#55a868"])
    a2.set_ylabel(tr("ms (median), 32 x 30 tokens"))
    fig.tight_layout()
    plt.show()


def plot_tradeoff(df: pd.DataFrame, ax=None):
    """Accuracy against bytes: dictionary coding vs magnitude pruning at the same bytes."""
    import matplotlib.pyplot as plt


    ax = ax or plt.subplots(figsize=(6, 4))[1]
    for col, marker, label in (("coded", "o", "dictionary codes (k atoms/row)"),
                               ("pruned", "s", "magnitude pruning, same bytes")):
        acc = df[f"{col}_accuracy"]
        err = [acc - df[f"{col}_lo"], df[f"{col}_hi"] - acc] if f"{col}_lo" in df else None
        ax.errorbar(df["bytes"] / 1e3, acc, yerr=err, marker=marker, capsize=3, label=tr(label))
    for _, r in df.iterrows():
        ax.annotate(f"{int(r.n_atoms)}/{int(r.k)}", (r.bytes / 1e3, r.coded_accuracy), fontsize=7)
    ax.set_xlabel(tr("layer kB"))
    ax.set_ylabel(tr("accuracy, 95% interval (validation subset)"))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return ax


# --- tour ----------------------------------------------------------------------------------------------

def tour(model: nn.Module, tokenizer, reference, limit: int | None = None) -> list:
    """Rows for the main job: FFN layers at 90% sparsity stored in their best format and run as CSR, timed beside
    `model`. Accuracy on 200 test snippets in fast mode, or the first `limit` (tests); the same code path."""

    limit = (200 if fast_mode() else None) if limit is None else limit
    ref = results.reference_on(model, tokenizer, reference, limit)
    labels = measure.data.split("test", limit)["label"].to_numpy()
    rows, models = [], []
    for values in VALUES:
        sparse_model = to_sparse(model, 0.9, which="ffn", values=values)
        fmts = {fmt: len(model_artifact(sparse_model, fmt, values)) for fmt in ("csr", "csr_min", "bitmask", "coo_min")}
        best = min(fmts, key=fmts.get)
        preds = measure.predictions(sparse_model, tokenizer, "test", limit)
        ci = measure.accuracy_ci(preds, labels)
        rows.append(results.Result(
            name=f"sparse: FFN 90% magnitude, {best} {values}", accuracy=ci["accuracy"], accuracy_lo=ci["lo"],
            accuracy_hi=ci["hi"], snippets=ci["n"], agreement=measure.agreement(preds, ref), size_bytes=fmts[best],
            notes="no fine-tuning; run with torch CSR matmul; size = real artifact bytes"))
        models.append(sparse_model)
    return results.timed_group(rows, models, model, tokenizer)
