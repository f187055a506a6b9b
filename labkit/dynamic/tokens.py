"""Token pruning: each input drops its least-attended tokens from a chosen layer on, while it runs (notebook 05).

No retraining and real speed: later layers see shorter sequences. Notebook 05 writes the hook for BERT; this is the
general version (every family in labkit.core.parts, sdpa or eager attention, DeBERTa-v2's relative positions) that
the tour, the dashboard and the family matrix use.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from labkit.core import measure, parts, results, settings


def checked_blocks(model: nn.Module) -> list[parts.Block]:
    """The model's transformer blocks; a ValueError naming the supported families for any other model."""
    bs = parts.blocks(model)
    if not bs:
        raise ValueError(f"{type(model).__name__} has no transformer blocks; pass a classifier of one of these "
                         f"families: {parts.SUPPORTED}.")
    return bs


def encoder_layers_name(model: nn.Module) -> str:
    """Dotted name of the encoder's list of transformer blocks in the model ('bert.encoder.layer')."""
    return checked_blocks(model)[0].prefix.rpartition(".")[0]


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The encoder's list of transformer blocks (found through labkit.core.parts, for every supported family)."""
    return model.get_submodule(encoder_layers_name(model))


def keep_count(real_length: int, keep_ratio: float) -> int:
    """Tokens kept of an input with `real_length` real tokens ([CLS] and [SEP] included): ceil(keep_ratio * length)."""
    # Rounding up guarantees keep_ratio=1 keeps everything and [CLS] always fits; the epsilon absorbs float noise
    # such as 0.7 * 10 = 7.000000000000001.
    return max(1, math.ceil(keep_ratio * real_length - 1e-9))


def _real_tokens(mask: torch.Tensor | None, batch: int, length: int, device) -> torch.Tensor:
    """(batch, length) bool: True for real tokens, read back from the mask the model built for its layers."""
    if mask is None:
        return torch.ones(batch, length, dtype=torch.bool, device=device)
    if mask.dim() == 2:
        return mask.bool()
    row = mask[:, 0, 0, :]  # the [CLS] query's row: which keys it may attend to
    if row.dtype == torch.bool or not row.dtype.is_floating_point:  # bool (sdpa) or 0/1 integers (DeBERTa-v2)
        return row.bool()
    return row > torch.finfo(row.dtype).min / 2  # additive (eager): 0 for real tokens, a huge negative for padding


def _layer_mask(valid: torch.Tensor, like: torch.Tensor | None) -> torch.Tensor | None:
    """A layer mask in the same form the model built (bool for sdpa, additive float for eager, 0/1 integers)."""
    integer = like is not None and like.dtype != torch.bool and not like.dtype.is_floating_point
    if bool(valid.all()) and not integer:
        return None  # no padding left: sdpa may take its fast path (an integer mask is always expected)
    b, n = valid.shape
    if like is not None and like.dim() == 2:
        return valid.to(like.dtype)
    keep = valid[:, None, None, :].expand(b, 1, n, n)
    if integer:
        return keep.to(like.dtype)
    if like is None or like.dtype == torch.bool:
        return keep
    zero = torch.zeros((), dtype=like.dtype, device=valid.device)
    return torch.where(keep, zero, torch.finfo(like.dtype).min)


def cls_attention(hidden: torch.Tensor, real: torch.Tensor, query: nn.Module, key: nn.Module,
                  heads: int) -> torch.Tensor:
    """(batch, length): the attention [CLS] pays to each token in a layer, averaged over heads (0 on padding)."""
    b, n, _ = hidden.shape
    q = query(hidden[:, :1]).view(b, 1, heads, -1).transpose(1, 2)  # (b, heads, 1, d): only the [CLS] query
    k = key(hidden).view(b, n, heads, -1).transpose(1, 2)  # (b, heads, n, d): every token's key
    logits = (q @ k.transpose(-1, -2)).squeeze(2) / math.sqrt(q.shape[-1])  # (b, heads, n)
    logits = logits.masked_fill(~real[:, None, :], float("-inf"))  # no attention to padding
    return logits.softmax(-1).mean(1)


def mean_attention(hidden: torch.Tensor, real: torch.Tensor, query: nn.Module, key: nn.Module,
                   heads: int) -> torch.Tensor:
    """(batch, length): the attention each token receives from all real tokens in a layer, averaged over heads."""
    b, n, _ = hidden.shape
    q = query(hidden).view(b, n, heads, -1).transpose(1, 2)  # (b, heads, n, d): every query this time
    k = key(hidden).view(b, n, heads, -1).transpose(1, 2)
    logits = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])  # (b, heads, n queries, n keys)
    probs = logits.masked_fill(~real[:, None, None, :], float("-inf")).softmax(-1)
    return (probs * real[:, None, :, None]).sum(2).mean(1) / real.sum(1, keepdim=True)  # real queries only


SCORES = {"cls": cls_attention, "mean": mean_attention}


def _relative_positions(pos: torch.Tensor, attention: nn.Module, heads: int) -> torch.Tensor:
    """Relative positions between the kept tokens' original positions, for DeBERTa-v2's disentangled attention.

    Its blocks get positions built for the full sequence (and would assume 0..w-1 for a shorter one). Each row keeps
    different tokens, so there is one (w, w) map per row, repeated per head: (1, batch x heads, w, w), the form its
    attention indexes directly; bucketed as the model buckets them.
    """
    from transformers.models.deberta_v2.modeling_deberta_v2 import make_log_bucket_position

    rel = pos[:, :, None] - pos[:, None, :]
    buckets = int(getattr(attention, "position_buckets", -1))
    max_position = int(getattr(attention, "max_relative_positions", -1))
    if buckets > 0 and max_position > 0:
        rel = make_log_bucket_position(rel, buckets, max_position)
    return rel.long().repeat_interleave(heads, dim=0).unsqueeze(0)


def _kept_positions(kwargs: dict, state: dict, attention: nn.Module, heads: int) -> dict:
    """The block's keyword arguments with relative positions of the kept tokens, where the block takes them."""
    if kwargs.get("relative_pos") is None:  # BERT-like blocks: absolute positions were added before the blocks
        return kwargs
    return dict(kwargs, relative_pos=_relative_positions(state["positions"], attention, heads))


class _TokenPruner:
    """Forward pre-hook of the first pruned layer: scores tokens, keeps the top ones, shrinks the sequence."""
    def __init__(self, keep_ratio: float, query: nn.Module, key: nn.Module, heads: int, state: dict,
                 score: str = "cls", attention: nn.Module | None = None):
        self.keep_ratio, self.query, self.key, self.heads, self.state = keep_ratio, query, key, heads, state
        self.score, self.attention = score, attention

    def __call__(self, module, args, kwargs):
        hidden, mask, args, kwargs = _split_args(args, kwargs)
        b, n, d = hidden.shape
        real = _real_tokens(mask, b, n, hidden.device)
        raw = SCORES[self.score](hidden, real, self.query, self.key, self.heads)
        counts = torch.tensor([keep_count(int(r), self.keep_ratio) for r in real.sum(1)], device=hidden.device)
        width = int(counts.max())
        slot = torch.arange(width, device=hidden.device)
        valid = slot[None, :] < counts[:, None]
        score = raw.masked_fill(~real, float("-inf"))  # padding goes first
        score[:, 0] = float("inf")  # [CLS] feeds the classifier: never dropped
        best = score.argsort(dim=1, descending=True, stable=True)[:, :width]
        # Kept tokens go back to their original order; empty slots (shorter rows) sort to the end.
        pos = torch.where(valid, best, n + slot[None, :]).sort(dim=1).values
        gather = pos.clamp(max=n - 1)
        hidden = hidden.gather(1, gather[..., None].expand(b, width, d))
        new_mask = _layer_mask(valid, mask)
        self.state.update(mask=new_mask, kept=torch.where(valid, pos, -1), score=score.detach(), positions=gather)
        return _join_args(hidden, new_mask, args, _kept_positions(kwargs, self.state, self.attention, self.heads))


class _MaskSwap:
    """Forward pre-hook of the later layers: the shortened mask (and relative positions) instead of the model's."""
    def __init__(self, state: dict, attention: nn.Module | None = None, heads: int = 0):
        self.state, self.attention, self.heads = state, attention, heads

    def __call__(self, module, args, kwargs):
        hidden, _, args, kwargs = _split_args(args, kwargs)
        kwargs = _kept_positions(kwargs, self.state, self.attention, self.heads)
        return _join_args(hidden, self.state["mask"], args, kwargs)


def _split_args(args: tuple, kwargs: dict):
    hidden, rest = args[0], list(args[1:])
    if rest:
        mask = rest.pop(0)
        return hidden, mask, ("pos", rest), kwargs
    return hidden, kwargs.get("attention_mask"), ("kw", rest), kwargs


def _join_args(hidden, mask, args, kwargs):
    kind, rest = args
    if kind == "pos":
        return (hidden, mask, *rest), kwargs
    return (hidden,), dict(kwargs, attention_mask=mask)


def start_layer_for(model: nn.Module, preferred: int = 2) -> int:
    """The layer the tour and its pipelines start pruning tokens at: `preferred`, or the last of a shallower model."""
    return min(preferred, len(checked_blocks(model)) - 1)


def check_prunable(model: nn.Module, start_layer: int) -> None:
    """Refuse (ValueError) a model whose tokens cannot be pruned from `start_layer` on; nothing is copied or run."""
    layers = checked_blocks(model)
    if isinstance(start_layer, bool) or not isinstance(start_layer, int) or not 0 <= start_layer < len(layers):
        raise ValueError(f"start_layer must be a layer index from 0 to {len(layers) - 1} "
                         f"(this model has {len(layers)} layers), got {start_layer!r}.")
    encoder = model.get_submodule(encoder_layers_name(model).rpartition(".")[0])
    if start_layer == 0 and getattr(encoder, "conv", None) is not None:
        raise ValueError("This model's encoder mixes layer 0's output with its full-length input through a "
                         "convolution (DeBERTa-v2 with conv_kernel_size): use start_layer >= 1.")
    if getattr(model, "token_pruning", None) is not None:
        raise ValueError("This model is already token-pruned; call token_pruning on the unpruned model.")
    impl = getattr(model.config, "_attn_implementation", "sdpa")
    if impl not in (None, "eager", "sdpa"):
        raise ValueError(f"Token pruning supports the 'sdpa' and 'eager' attention implementations, got {impl!r}.")


def token_pruning(model: nn.Module, keep_ratio: float, start_layer: int, inplace: bool = False,
                  score: str = "cls") -> nn.Module:
    """A copy of `model` whose layers from `start_layer` on see only the top ceil(keep_ratio * real length) tokens.

    Tokens are ranked by the attention [CLS] pays them in layer `start_layer` (computed from that layer's own
    query/key projections on the full sequence, averaged over heads); padding is dropped first and [CLS] is never
    dropped. Layers before `start_layer` run unchanged; `start_layer` and later run on the shorter sequence.
    `score="mean"` ranks by the attention received from all tokens instead (better for encoders such as
    MiniLM-L6 here, pretrained for mean pooling, whose early [CLS] query is not yet a summary of the input).
    Works on every family in labkit.core.parts; DeBERTa-v2's blocks get the kept tokens' relative positions (its
    ranking uses the content attention only). The copy owns its weights; `inplace=True` hooks `model` itself.
    """
    settings.flags(inplace=inplace)
    if score not in SCORES:
        raise ValueError(f"score must be one of {', '.join(SCORES)}, got {score!r}.")
    if isinstance(keep_ratio, bool) or not isinstance(keep_ratio, (int, float)) or not 0 < keep_ratio <= 1:
        raise ValueError(f"keep_ratio must be a fraction in (0, 1] (1 keeps every real token), got {keep_ratio!r}.")
    check_prunable(model, start_layer)
    model = model if inplace else parts.clone(model)
    blocks = checked_blocks(model)
    state: dict[str, Any] = {}
    first = blocks[start_layer]
    # The block's own query/key (any module: an int8 Linear from dynamic_int8 ranks tokens too) and its own head
    # count (structured pruning may have removed some).
    first.module.register_forward_pre_hook(
        _TokenPruner(float(keep_ratio), first.get("q"), first.get("k"), first.n_heads, state, score, first.attention),
        with_kwargs=True)
    for block in blocks[start_layer + 1:]:
        block.module.register_forward_pre_hook(_MaskSwap(state, block.attention, block.n_heads), with_kwargs=True)
    model.token_pruning = {"keep_ratio": float(keep_ratio), "start_layer": start_layer, "score": score, "state": state}
    return model


def last_kept(model: nn.Module) -> torch.Tensor:
    """(batch, width) positions kept by the last forward pass of a token-pruned model (-1 marks an empty slot)."""
    info = getattr(model, "token_pruning", None)
    if info is None or "kept" not in info["state"]:
        raise ValueError("Run a forward pass of a model returned by token_pruning first.")
    return info["state"]["kept"]


def length_latency(model: nn.Module, tokenizer, batch_sizes=(1, 32), lengths=(13, 26, 52),
                   repeats: int | None = None) -> pd.DataFrame:
    """Median latency of `model` at each batch size on inputs cut to each token length: where shorter sequences pay."""
    words = " ".join(measure.latency_texts(32)).split()
    # n word pieces exactly: [CLS] + (n - 2) pieces + [SEP], the same ones in every row of the batch.
    ids = tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]
    rows = []
    for size in batch_sizes:
        for n in lengths:
            text = tokenizer.decode(ids[: n - 2])
            lat = measure.latency(model, tokenizer, size, repeats=repeats, texts=[text] * size)
            rows.append({"batch_size": size, "tokens": lat["seq_len"], "median_ms": lat["median_ms"],
                         "repeats": lat["repeats"]})
    return pd.DataFrame(rows)


def tour(model: nn.Module, tokenizer, reference: np.ndarray, limit: int | None = None) -> list[results.Result]:
    """Rows for the main job: token pruning (keep 0.5 from layer 2, or the last of a shallower model; two scores),
    timed beside `model`.

    `limit` measures accuracy on the first `limit` test snippets only (tests); the code path is the same."""
    start = start_layer_for(model)
    # Hooks on copies that share `model`'s weights: they are only measured here, never handed back.
    models = {f"token pruning keep 0.5 from layer {start}": token_pruning(parts.copy_sharing(model), 0.5, start,
                                                                          inplace=True),
              f"token pruning keep 0.5 from layer {start} (mean score)": token_pruning(
                  parts.copy_sharing(model), 0.5, start, inplace=True, score="mean")}
    notes = dict(zip(models, ["dynamic: tokens ranked by [CLS] attention, dropped at run time",
                              "tokens ranked by attention received from all tokens"]))
    return results.evaluate_group(models, tokenizer, results.reference_on(model, tokenizer, reference, limit), model,
                                  notes, limit=limit)
