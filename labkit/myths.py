"""The article's two snippets, reproduced in the kit's own code, next to what they were meant to do."""

from __future__ import annotations

import numpy as np
import torch

from . import model as model_lib


def article_quantize(params: list[np.ndarray]) -> None:
    """What the article's 'quantization' does: a loop that casts float32 arrays to float64.

    Rebinding the loop variable changes nothing the caller holds, and nothing is returned.
    Even done 'right' (see `cast_float64`) the cast doubles memory; it is not quantization.
    """
    for p in params:
        if p.dtype == np.float32:
            p = p.astype(np.float64)  # noqa: F841 - the point: this copy is dropped


def article_prune(param: np.ndarray) -> np.ndarray:
    """What the article's 'pruning' does to one array: keep values < 0, then of those keep values > 0.

    The result is a 1-D array (the shape is gone) and, since no value is both, it is empty.
    """
    p = param.astype(np.float64)
    p = p[p < 0]
    p = p[p > 0]
    return p


def cast_float64(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of the model in float64: the article's idea done so it runs. Twice the bytes."""
    return model_lib.clone(model).double()


def int8_roundtrip(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float, int]:
    """A correct 8-bit affine round trip of one tensor: (int8 codes, dequantized tensor, scale, zero point)."""
    lo, hi = min(float(w.min()), 0.0), max(float(w.max()), 0.0)
    scale = (hi - lo) / 255 or 1.0
    zero_point = int(round(-128 - lo / scale))
    q = torch.clamp(torch.round(w / scale) + zero_point, -128, 127).to(torch.int8)
    return q, (q.float() - zero_point) * scale, scale, zero_point


def magnitude_mask(w: torch.Tensor, sparsity: float) -> torch.Tensor:
    """A correct magnitude mask: the smallest |w| set to zero, shape kept, so the layer still works."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}.")
    k = int(round(sparsity * w.numel()))
    if k == 0:
        return w.clone()
    threshold = w.abs().flatten().kthvalue(k).values
    return torch.where(w.abs() > threshold, w, torch.zeros_like(w))
