"""The one magnitude mask (notebook 03 teaches it): a boolean keep-mask that drops exactly the k lowest scores.

Every technique that zeroes weights by size builds its mask here: unstructured pruning per layer or across the
model, the sparse formats of notebook 01, gradual pruning's schedule in notebook 05, notebook 00's correct version
of the article's snippet. The 2:4 pattern is the same ranking inside each group of four weights.
"""

from __future__ import annotations

import numpy as np
import torch


def smallest_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean keep-mask: False at the k lowest scores (exactly k; of equal scores at the cut, the first ones go).

    The k-th lowest score comes from numpy's partition (one float copy): torch.topk's k int64 indices and sort
    buffers take about six times the scores' memory.
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


def two_four_mask(w: torch.Tensor) -> torch.Tensor:
    """Keep-mask of a 2-D `w` holding the 2 largest |w| of every 4 consecutive weights in a row (2:4 sparsity).

    Of equal magnitudes in a group, the first ones go, as in `smallest_mask`.
    """
    if w.dim() != 2 or w.shape[1] % 4:
        raise ValueError(f"2:4 sparsity groups 4 consecutive weights of a row: it needs a 2-D weight whose columns "
                         f"are a multiple of 4, got shape {tuple(w.shape)}; leave this layer out or pad it.")
    groups = w.detach().abs().reshape(-1, 4)
    drop = groups.argsort(dim=1, stable=True)[:, :2]  # the two smallest of each group
    return torch.ones_like(groups, dtype=torch.bool).scatter_(1, drop, False).view_as(w)
