"""Sparse compute: a Linear layer kept and multiplied as CSR (notebook 01 writes it), and a classifier built of them.

`to_sparse(model, sparsity)` prunes the chosen Linear layers by magnitude and runs them with torch's CSR kernel;
`saved_bytes` is the size on disk of such a model with its sparse weights stored in one of `formats.FORMATS`.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from labkit.core import parts, settings
from labkit.prune.masks import magnitude_mask
from labkit.sparse.formats import FORMATS, decode, format_arrays


class SparseLinear(nn.Module):
    """A Linear layer whose weight is kept, and multiplied, as a CSR matrix: three arrays instead of a dense one."""

    def __init__(self, values: torch.Tensor, col_indices: torch.Tensor, row_ptr: torch.Tensor,
                 shape: tuple[int, int], bias: torch.Tensor | None = None):
        super().__init__()
        self.out_features, self.in_features = shape
        # Buffers, so the state_dict (and a saved file) holds the three arrays; int32 is MKL's own index type.
        self.register_buffer("values", values.detach().clone())
        self.register_buffer("col_indices", col_indices.to(torch.int32, copy=True))
        self.register_buffer("crow_indices", row_ptr.to(torch.int32, copy=True))
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def csr(self) -> torch.Tensor:
        """The weight as torch's sparse CSR matrix (views of the buffers; they were checked when the layer was made)."""
        return torch.sparse_csr_tensor(self.crow_indices, self.col_indices, self.values,
                                       (self.out_features, self.in_features), check_invariants=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """y = x W^T + b, computed as (W x^T)^T by torch's sparse x dense kernel."""
        y = torch.sparse.mm(self.csr(), x.reshape(-1, self.in_features).T).T
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)

    def roofline_cost(self, batch: int, tokens: int) -> list[tuple]:
        """For notebook 00c's roofline: one multiply-add per stored weight per row; bytes of the three arrays, the
        bias and the activations. (name, multiply-adds, bytes, dtype of the products)"""
        rows = batch * tokens
        stored = sum(t.numel() * t.element_size() for t in (self.values, self.col_indices, self.crow_indices))
        stored += 0 if self.bias is None else self.bias.numel() * self.bias.element_size()
        moved = stored + rows * (self.in_features + self.out_features) * 4
        return [("CSR", rows * self.values.numel(), moved, self.values.dtype)]

    def extra_repr(self) -> str:
        n = self.out_features * self.in_features
        return f"in={self.in_features}, out={self.out_features}, stored={self.values.numel()} of {n} weights"


def torch_csr(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """torch's own CSR arrays of a 2-D tensor: (values, col_indices, row_ptr)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's note that CSR support is in beta
        c = dense.to_sparse_csr()
    return c.values(), c.col_indices(), c.crow_indices()


def csr_arrays(encoder: Callable, w: torch.Tensor, name: str = "the weight") -> tuple[torch.Tensor, ...]:
    """(values, col_indices, row_ptr) from `encoder(w)` (a function like notebook 01's csr_encode), checked to
    decode back to exactly `w`; a ValueError saying what is wrong otherwise."""
    rows, cols = w.shape
    out = encoder(w.detach().clone())  # a copy: an encoder that writes into its input cannot touch the model
    if not isinstance(out, (tuple, list)) or len(out) != 3:
        raise ValueError(f"The encoder must return three arrays (values, col_indices, row_ptr) for {name}; "
                         f"it returned {type(out).__name__}.")
    try:
        values, col, ptr = (torch.as_tensor(a if isinstance(a, torch.Tensor) else np.asarray(a)).reshape(-1)
                            for a in out)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"The encoder's three results for {name} are not arrays ({err}).") from err
    if col.is_floating_point() or ptr.is_floating_point() or ptr.numel() != rows + 1 or col.numel() != values.numel():
        raise ValueError(f"The encoder's arrays for {name} are not CSR (integer indices, rows + 1 row pointers, one "
                         "column per value); check it with checks.check('01.csr_encode', csr_encode).")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's note that CSR support is in beta
            # check_invariants: arrays that break CSR's rules raise here instead of reading out of bounds
            back = torch.sparse_csr_tensor(ptr.long(), col.long(), values.to(w.dtype), (rows, cols),
                                           check_invariants=True).to_dense()
    except (RuntimeError, IndexError) as err:
        raise ValueError(f"The encoder's arrays for {name} do not form a valid CSR matrix ({err}); "
                         "check it with checks.check('01.csr_encode', csr_encode).") from err
    if not torch.equal(back, w.detach()):
        raise ValueError(f"The encoder's arrays for {name} do not decode to the weight they were given; "
                         "check it with checks.check('01.csr_encode', csr_encode).")
    return values.to(w.dtype), col.to(torch.int32), ptr.to(torch.int32)


_CSR_OK: dict[tuple, bool] = {}


def _csr_runs_on(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether torch's CSR x dense matmul runs on `device` in `dtype` (tried once on a 2x2 matrix, remembered)."""
    key = (str(device), dtype)
    if key not in _CSR_OK:
        try:
            layer = SparseLinear(*torch_csr(torch.eye(2, dtype=dtype)), (2, 2)).to(device)
            layer(torch.ones(1, 2, dtype=dtype, device=device))
            _CSR_OK[key] = True
        except (RuntimeError, NotImplementedError):
            _CSR_OK[key] = False
    return _CSR_OK[key]


def to_sparse(model: nn.Module, sparsity: float, filter_fn="ffn", values: str = "f32",
              encoder: Callable | None = None, inplace: bool = False) -> nn.Module:
    """A copy of `model` whose chosen Linear layers (`parts.linears` filter) are magnitude-pruned to `sparsity`
    and run as CSR (`SparseLinear`).

    values="int8" keeps each weight's per-row int8 round trip (what an 8-bit sparse file decodes to). `encoder`:
    your own csr_encode(dense) -> (values, col_indices, row_ptr), checked to decode back exactly; None: torch's.
    Where torch has no CSR matmul for the model's device and dtype, the model is moved to the CPU, with a warning.
    Returns a new model; the input is unchanged unless inplace=True.
    """
    settings.flags(inplace=inplace)
    if values not in ("f32", "int8"):
        raise ValueError(f"values must be 'f32' or 'int8', got {values!r}.")
    out = model if inplace else parts.clone(model)
    dev = parts.device_of(out)
    if dev.type != "cpu" and not _csr_runs_on(dev, next(out.parameters()).dtype):
        warnings.warn(f"torch has no sparse CSR matmul on {dev} for this dtype: to_sparse returns a CPU model.",
                      stacklevel=2)
        out = out.cpu()
    for name, lin in parts.linears(out, filter_fn).items():
        w = (lin.weight.detach() * magnitude_mask(lin.weight, sparsity)).cpu().float()
        if values == "int8":
            w = decode(format_arrays(w, "dense", "int8"), "dense", tuple(w.shape))
        # Built from CPU arrays (an encoder may use numpy), then moved where the layer was, in its dtype.
        arrays = csr_arrays(encoder or torch_csr, w.to(lin.weight.dtype), name)
        bias = None if lin.bias is None else lin.bias.detach().cpu()
        parts.set_module(out, name, SparseLinear(*arrays, tuple(w.shape), bias).to(lin.weight.device, lin.weight.dtype))
    return out.eval()


def dense_weight(layer: SparseLinear) -> torch.Tensor:
    """A SparseLinear's weight as a dense matrix."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's note that CSR support is in beta
        return layer.csr().to_dense()


def save(model: nn.Module, path: str | Path, fmt: str = "csr_min", values: str = "f32") -> None:
    """An uncompressed .npz of `model`: each SparseLinear weight as the arrays of format `fmt`, every other tensor
    as it is (floats as float32)."""
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}.")
    arrays, stored = {}, set()
    for name, mod in model.named_modules():
        if isinstance(mod, SparseLinear):
            for key, a in format_arrays(dense_weight(mod), fmt, values).items():
                arrays[f"{name}.weight.{key}"] = a
            stored |= {f"{name}.{b}" for b in ("values", "col_indices", "crow_indices")}
    for name, t in model.state_dict().items():
        if name not in stored:
            arrays[name] = (t.float() if t.is_floating_point() else t).detach().cpu().numpy()
    np.savez(path, **arrays)


def saved_bytes(model: nn.Module, fmt: str = "csr_min", values: str = "f32") -> int:
    """Bytes on disk of `save(model, ..., fmt, values)`."""
    with tempfile.TemporaryDirectory(prefix="labkit-sparse-") as folder:
        path = Path(folder) / "model.npz"
        save(model, path, fmt, values)
        return path.stat().st_size
