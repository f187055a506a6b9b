"""Unstructured pruning: zeros written into dense Linear weights. The tensors keep their shapes, so the saved file
and the CPU latency stay those of the dense model (notebook 03 measures both)."""

from __future__ import annotations

import torch
from torch import nn

from labkit.core import parts, settings
from labkit.prune.masks import magnitude_mask, two_four_mask

SCOPES = ("layer", "global")
METHODS = ("magnitude", "random")


def magnitude(model: nn.Module, sparsity: float, scope: str = "layer", method: str = "magnitude",
              filter_fn="blocks", seed: int = 0, inplace: bool = False) -> nn.Module:
    """A copy of `model` whose chosen Linear weights are `sparsity` zeros: the smallest |w|, or random ones (the
    control); in every layer alike (scope="layer") or ranked all together (scope="global")."""
    if scope not in ("layer", "global") or method not in ("magnitude", "random"):
        raise ValueError(f"scope must be 'layer' or 'global' and method 'magnitude' or 'random'; "
                         f"got scope={scope!r}, method={method!r}.")
    out = model if inplace else parts.clone(model)
    layers = parts.linears(out, filter_fn)  # "blocks": attention and FFN of every block, never the classifier head
    if not layers:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer for filter_fn={filter_fn!r} to prune; "
                         "pass a transformer classifier such as labkit.core.model.load_baseline()'s.")
    gen = torch.Generator().manual_seed(seed)
    groups = [[name] for name in layers] if scope == "layer" else [list(layers)]  # ranked alone, or all together
    with torch.no_grad():
        for group in groups:
            weights = [layers[name].weight for name in group]
            scores = weights if method == "magnitude" else [torch.rand(w.shape, generator=gen) for w in weights]
            keep = magnitude_mask(torch.cat([s.flatten() for s in scores]), sparsity)  # drops the smallest |score|
            for w, k in zip(weights, keep.split([w.numel() for w in weights])):
                w.mul_(k.view_as(w).to(w.device))
    return out


# The lesson's text above; its boolean argument is checked here, outside what the lesson shows.
magnitude = settings.with_flags(magnitude, "inplace")


def two_four(model: nn.Module, filter_fn="blocks", inplace: bool = False) -> nn.Module:
    """A copy of `model` where every 4 consecutive weights of a row of the chosen Linear layers keep their 2
    largest |w| (2:4 sparsity: on a CPU, the same bytes and the same time as dense).
    Returns a new model; the input is unchanged unless inplace=True."""
    settings.flags(inplace=inplace)
    out = model if inplace else parts.clone(model)
    with torch.no_grad():
        for name, layer in parts.linears(out, filter_fn).items():
            if layer.in_features % 4:
                raise ValueError(f"{name} has {layer.in_features} inputs, not a multiple of 4: 2:4 needs groups "
                                 "of 4; leave it out with filter_fn.")
            layer.weight.mul_(two_four_mask(layer.weight))
    return out


def sparsity_of(model: nn.Module, filter_fn="blocks") -> dict:
    """Counts over the chosen Linear weights: total, zeros, remaining, and the sparsity (zeros / total)."""
    layers = parts.linears(model, filter_fn).values()
    total = sum(m.weight.numel() for m in layers)
    if not total:
        raise ValueError(f"{type(model).__name__} has no nn.Linear weights for filter_fn={filter_fn!r}.")
    zeros = sum(int((m.weight == 0).sum()) for m in layers)
    return {"total": total, "zeros": zeros, "remaining": total - zeros, "sparsity": zeros / total}
