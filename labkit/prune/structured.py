"""Structured pruning: whole attention heads and FFN neurons cut out of every block, so the Linear layers, the saved
file and the time all shrink. Notebook 03 writes the cuts (`cut_heads`, `cut_neurons`) with transformers'
`prune_linear_layer`; `structured` ranks the units of every block and cuts the weakest."""

from __future__ import annotations

import pandas as pd
import torch
from torch import nn
from transformers.pytorch_utils import prune_linear_layer

from labkit.core import data, parts, settings

SCORES = ("norm", "gradient")
STRUCTURED_FAMILIES = ", ".join(f.name for f in parts.FAMILIES if f.structured)


def structured_blocks(model: nn.Module) -> list[parts.Block]:
    """The model's blocks, after checking its family's heads and neurons can be removed; a ValueError otherwise."""
    if not parts.is_hf(model):
        raise ValueError(f"{type(model).__name__} has no transformer attention layers: structured pruning removes "
                         f"heads and FFN neurons from a Hugging Face classifier of these families: "
                         f"{STRUCTURED_FAMILIES}.")
    fam = parts.family_of(model)
    if not fam.structured:
        raise ValueError(f"Structured pruning does not support {fam.name}: its relative-position attention reuses "
                         f"projections across heads, so heads cannot simply be cut out. It works on "
                         f"{STRUCTURED_FAMILIES}; on {fam.name}, use prune.magnitude or prune.two_four instead.")
    parts.linears(model, "blocks")  # refuses a quantized model, and NaN or integer weights (they rank as garbage)
    return parts.blocks(model)


def square(w: torch.Tensor) -> torch.Tensor:
    """A weight's entries squared: summed over a unit's weights, the unit's squared L2 norm."""
    return w.detach().float() ** 2


def head_scores(block: parts.Block, stat=square) -> torch.Tensor:
    """One importance per head: `stat` summed over its rows of query, key and value and its columns of the output."""
    rows = sum(stat(block.get(part).weight).sum(1) for part in ("q", "k", "v"))
    cols = stat(block.get("o").weight).sum(0)
    return (rows + cols).reshape(-1, block.head_size).sum(1)


def neuron_scores(block: parts.Block, stat=square) -> torch.Tensor:
    """One importance per FFN neuron: `stat` of its up-projection row times that of its down-projection column."""
    return stat(block.get("up").weight).sum(1) * stat(block.get("down").weight).sum(0)


def set_head_count(block: parts.Block, n: int) -> None:
    """Record that `block` now has `n` heads where its family keeps the count (and any width made from it)."""
    attention, old, d = block.attention, block.n_heads, block.head_size
    setattr(attention, block.family.n_heads, n)
    for attr in ("all_head_size", "dim"):  # BERT-like attention keeps all_head_size, DistilBERT dim
        if getattr(attention, attr, None) == old * d:
            setattr(attention, attr, n * d)


def cut_heads(block: parts.Block, keep: torch.Tensor) -> None:
    """Keep only the heads `keep` (sorted indices) of `block`: their rows of query, key and value, and their
    columns of the output projection."""
    d = block.head_size
    index = (keep[:, None] * d + torch.arange(d, device=keep.device)).flatten()  # head h owns h*d ... h*d + d - 1
    for part, dim in (("q", 0), ("k", 0), ("v", 0), ("o", 1)):
        old = block.get(part)
        # prune_linear_layer makes the new layer in the default dtype: cast it back, so an fp16 model stays fp16
        block.set(part, prune_linear_layer(old, index, dim).to(old.weight.dtype))
    set_head_count(block, len(keep))


def cut_neurons(block: parts.Block, keep: torch.Tensor) -> None:
    """Keep only the FFN neurons `keep` of `block`: their rows of the up-projection, columns of the down-projection."""
    for part, dim in (("up", 0), ("down", 1)):
        old = block.get(part)
        block.set(part, prune_linear_layer(old, keep, dim).to(old.weight.dtype))


def _taylor(model: nn.Module, tokenizer, batches: int = 4, batch_size: int = 32):
    """A `stat` scoring each weight by |w * dL/dw|, summed over a few training batches (first-order Taylor)."""
    work = parts.clone(model).train()
    dev = parts.device_of(work)
    split = data.split("train", limit=batches * batch_size)
    for batch in data.batches(split["text"], split["label"], tokenizer, batch_size, shuffle_seed=0):
        batch = batch.to(dev)
        work(**parts.feed(work, batch.inputs), labels=batch.labels).loss.backward()
    grads = dict(work.named_parameters())
    # Keyed by the original's weights: the scores are read before any of its layers is cut.
    scores = {id(p): (p.detach() * grads[n].grad).abs() for n, p in model.named_parameters()
              if grads[n].grad is not None}
    return lambda w: scores[id(w)]


def _keep_top(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """Sorted indices of the units kept after removing round(fraction * n) of the lowest (at least one kept)."""
    n = scores.numel()
    drop = min(round(fraction * n), n - 1)
    return torch.sort(torch.topk(scores, n - drop).indices).values


def _fraction(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name} must be a fraction in [0, 1) (e.g. 0.3 for 30%), got {value!r}.")
    return float(value)


def structured(model: nn.Module, heads: float = 0.3, ffn: float = 0.3, score: str = "norm",
               tokenizer=None, inplace: bool = False) -> nn.Module:
    """A physically smaller copy: `heads` of every block's attention heads and `ffn` of its FFN neurons removed.

    score="norm" ranks units by the L2 norm of their weights; score="gradient" by |w * grad| over a few training
    batches (needs `tokenizer`). Works on BERT, RoBERTa, ELECTRA and DistilBERT; DeBERTa-v2 is refused.
    Returns a new model; the input is unchanged unless inplace=True.
    """
    settings.flags(inplace=inplace)
    heads, ffn = _fraction("heads", heads), _fraction("ffn", ffn)
    if score not in SCORES:
        raise ValueError(f"score must be one of {', '.join(map(repr, SCORES))}, got {score!r}.")
    if score == "gradient" and tokenizer is None:
        raise ValueError("score='gradient' runs a few training batches: pass tokenizer=... (or use score='norm').")
    structured_blocks(model)  # refuse before copying
    out = model if inplace else parts.clone(model)
    stat = square if score == "norm" else _taylor(out, tokenizer)
    removed = {}
    for block in structured_blocks(out):
        keep_heads = _keep_top(head_scores(block, stat), heads)
        keep_neurons = _keep_top(neuron_scores(block, stat), ffn)
        removed[block.index] = sorted(set(range(block.n_heads)) - set(keep_heads.tolist()))
        cut_heads(block, keep_heads)
        cut_neurons(block, keep_neurons)
    # What was cut, as transformers records it (layer -> removed heads); the per-layer sizes live on the modules.
    out.config.pruned_heads = removed
    return out


def shape_summary(model: nn.Module) -> pd.DataFrame:
    """Heads and FFN neurons left in every transformer block."""
    return pd.DataFrame([{"layer": b.index, "heads": b.n_heads, "ffn_neurons": b.ffn_size}
                         for b in parts.blocks(model)])
