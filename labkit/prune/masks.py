"""The one magnitude mask (notebook 03 teaches it): a boolean keep-mask that drops exactly the k lowest scores.

Every technique that zeroes weights by size builds its mask here: unstructured pruning per layer or across the
model, the sparse formats of notebook 01, gradual pruning's schedule in notebook 05, notebook 00's correct version
of the article's snippet.
"""

from __future__ import annotations

import numpy as np
import torch


def smallest_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean keep-mask: False at the k lowest scores (exactly k; of equal scores at the cut, the first ones go).

    The k-th lowest score comes from numpy's partition (one float copy): torch.topk's k int64 indices and sort
    buffers took six times the scores' memory (0.28 GB above the kernel to rank the fast baseline globally).
    """
    flat = scores.reshape(-1)
    if k <= 0:
        return torch.ones_like(scores, dtype=torch.bool)
    if k > flat.numel():
        raise ValueError(f"cannot drop {k} of {flat.numel()} scores; k must be at most their number.")
    cut = float(np.partition(flat.detach().float().cpu().numpy(), k - 1)[k - 1])  # the k-th lowest score
    below = flat < cut
    keep = ~below
    at_cut = (flat == cut).nonzero().reshape(-1)
    keep[at_cut[:k - int(below.sum())]] = False  # the first scores equal to the cut go, up to exactly k
    return keep.view_as(scores)


def magnitude_mask(w: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask of `w` that drops the round(sparsity * n) smallest |w| (True = keep): `w * mask` prunes."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"sparsity must be a fraction in [0, 1) (e.g. 0.5 for half), got {sparsity!r}.")
    return smallest_mask(w.detach().abs(), round(float(sparsity) * w.numel()))
