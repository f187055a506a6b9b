"""Token pruning: each input drops its least-attended tokens from a chosen layer on, while it runs (notebook 05).

No retraining and real speed: later layers see shorter sequences. `token_pruning(select=...)` runs a learner's own
token selector.
"""

from __future__ import annotations

import copy
import math
from functools import lru_cache
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from torch import nn

from labkit.core import data, measure, parts, results
from labkit.core import model as model_mod
from labkit.lab.plots import tr


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


def _target(model: nn.Module, inplace: bool) -> nn.Module:
    return model if inplace else copy.deepcopy(model)


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


def cls_attention(hidden: torch.Tensor, real: torch.Tensor, query: nn.Linear, key: nn.Linear,
                  heads: int) -> torch.Tensor:
    """(batch, length): the attention [CLS] pays to each token in a layer, averaged over heads (0 on padding)."""
    b, n, _ = hidden.shape
    q = query(hidden[:, :1]).view(b, 1, heads, -1).transpose(1, 2)  # (b, heads, 1, d): only the [CLS] query
    k = key(hidden).view(b, n, heads, -1).transpose(1, 2)  # (b, heads, n, d)
    logits = (q @ k.transpose(-1, -2)).squeeze(2) / math.sqrt(q.shape[-1])
    logits = logits.masked_fill(~real[:, None, :], float("-inf"))
    return logits.softmax(-1).mean(1)


def mean_attention(hidden: torch.Tensor, real: torch.Tensor, query: nn.Linear, key: nn.Linear,
                   heads: int) -> torch.Tensor:
    """(batch, length): the attention each token receives from all real tokens in a layer, averaged over heads."""
    b, n, _ = hidden.shape
    q = query(hidden).view(b, n, heads, -1).transpose(1, 2)
    k = key(hidden).view(b, n, heads, -1).transpose(1, 2)
    logits = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    probs = logits.masked_fill(~real[:, None, None, :], float("-inf")).softmax(-1)
    return (probs * real[:, None, :, None]).sum(2).mean(1) / real.sum(1, keepdim=True)


SCORES = {"cls": cls_attention, "mean": mean_attention}


# select(hidden (b, n, d), scores (b, n), mask (b, n) of 0/1, keep) -> (kept hidden (b, keep, d), indices (b, keep))
Select = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]


def _selected(select: Select, hidden: torch.Tensor, score: torch.Tensor, real: torch.Tensor,
              counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a learner's `select` on each group of rows that keep the same count; pad the groups to one width."""
    b, n, d = hidden.shape
    width = int(counts.max())
    out = hidden.new_zeros(b, width, d)
    pos = torch.full((b, width), -1, dtype=torch.long, device=hidden.device)
    for c in sorted(set(counts.tolist())):
        rows = (counts == c).nonzero().flatten()
        got = select(hidden[rows], score[rows], real[rows].long(), int(c))
        kept, idx = got if isinstance(got, tuple) and len(got) == 2 else (None, None)
        if not isinstance(kept, torch.Tensor) or kept.shape != (len(rows), c, d) \
                or not isinstance(idx, torch.Tensor) or idx.shape != (len(rows), c):
            raise ValueError(f"select must return (kept hidden states of shape (rows, keep, dim), kept indices of "
                             f"shape (rows, keep)) = ({len(rows)}, {c}, {d}) and ({len(rows)}, {c}); check it with "
                             "checks.check('05.keep_top_tokens', fn) first.")
        idx = idx.to(torch.long)
        if bool(((idx < 0) | (idx >= n)).any()):
            raise ValueError(f"select returned token indices outside 0..{n - 1}; return positions in the sequence.")
        out[rows, :c] = kept.to(hidden.dtype)
        pos[rows, :c] = idx
    return out, pos


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
    def __init__(self, keep_ratio: float, query: nn.Linear, key: nn.Linear, heads: int, state: dict,
                 score: str = "cls", select: Select | None = None, attention: nn.Module | None = None):
        self.keep_ratio, self.query, self.key, self.heads, self.state = keep_ratio, query, key, heads, state
        self.score, self.select, self.attention = score, select, attention

    def __call__(self, module, args, kwargs):
        hidden, mask, args, kwargs = _split_args(args, kwargs)
        b, n, d = hidden.shape
        real = _real_tokens(mask, b, n, hidden.device)
        raw = SCORES[self.score](hidden, real, self.query, self.key, self.heads)
        counts = torch.tensor([keep_count(int(r), self.keep_ratio) for r in real.sum(1)], device=hidden.device)
        width = int(counts.max())
        slot = torch.arange(width, device=hidden.device)
        valid = slot[None, :] < counts[:, None]
        if self.select is not None:  # the learner's choice of tokens, on the raw scores and the 0/1 mask
            hidden, pos = _selected(self.select, hidden, raw, real, counts)
            score = raw
        else:
            score = raw.masked_fill(~real, float("-inf"))  # padding goes first
            score[:, 0] = float("inf")  # [CLS] feeds the classifier: never dropped
            best = score.argsort(dim=1, descending=True, stable=True)[:, :width]
            # Kept tokens go back to their original order; empty slots (shorter rows) sort to the end.
            pos = torch.where(valid, best, n + slot[None, :]).sort(dim=1).values
            gather = pos.clamp(max=n - 1)
            hidden = hidden.gather(1, gather[..., None].expand(b, width, d))
        new_mask = _layer_mask(valid, mask)
        self.state.update(mask=new_mask, kept=torch.where(valid, pos, -1), score=score.detach(),
                          positions=pos.clamp(max=n - 1))
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


def token_pruning(model: nn.Module, keep_ratio: float, start_layer: int, inplace: bool = False,
                  score: str = "cls", select: Select | None = None) -> nn.Module:
    """A model whose layers from `start_layer` on see only the top ceil(keep_ratio * real length) tokens per input.

    Tokens are ranked by the attention [CLS] pays them in layer `start_layer` (computed from that layer's own
    query/key projections on the full sequence, averaged over heads); padding is dropped first and [CLS] is never
    dropped. Layers before `start_layer` run unchanged; `start_layer` and later run on the shorter sequence.
    `score="mean"` ranks by the attention received from all tokens instead (better for encoders such as
    MiniLM-L6 here, pretrained for mean pooling, whose early [CLS] query is not yet a summary of the input).
    `select(hidden, scores, mask, keep)` replaces labkit's choice of tokens (notebook 05's `keep_top_tokens`): it gets
    the raw scores (padding is not pre-filtered, [CLS] not protected) and must return the kept hidden states and
    their positions, in their original order.
    Works on every family in labkit.core.parts; DeBERTa-v2's blocks get the kept tokens' relative positions (its
    ranking uses the content attention only). The copy only adds hooks, so it shares the input's weights
    (parts.copy_with): fine-tune a labkit.core.model.clone of it, not the copy itself.
    """
    if select is not None and not callable(select):
        raise ValueError(f"select must be a function (hidden, scores, mask, keep) -> (kept, indices), got {select!r}.")
    if score not in SCORES:
        raise ValueError(f"score must be one of {', '.join(SCORES)}, got {score!r}.")
    if isinstance(keep_ratio, bool) or not isinstance(keep_ratio, (int, float)) or not 0 < keep_ratio <= 1:
        raise ValueError(f"keep_ratio must be a fraction in (0, 1] (1 keeps every real token), got {keep_ratio!r}.")
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
    model = model if inplace else parts.copy_with(model)  # hooks only: the copy shares every weight
    blocks = checked_blocks(model)
    state: dict[str, Any] = {}
    first = blocks[start_layer]
    # The block's own query/key (any module: an int8 Linear from dynamic_int8 ranks tokens too) and its own head
    # count (structured pruning may have removed some).
    first.module.register_forward_pre_hook(
        _TokenPruner(float(keep_ratio), first.get("q"), first.get("k"), first.n_heads, state, score, select,
                     first.attention), with_kwargs=True)
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


@torch.inference_mode()
def surviving_tokens(model: nn.Module, tokenizer, sentence: str, keep_ratio: float, start_layer: int,
                     score: str = "cls") -> pd.DataFrame:
    """One row per word piece of `sentence`: its [CLS]-attention score and whether it survived token pruning."""
    if not isinstance(sentence, str) or not sentence.strip():
        raise ValueError("sentence must be a non-empty string.")
    pruned = token_pruning(model, keep_ratio, start_layer, score=score)
    enc = tokenizer([sentence], truncation=True, max_length=data.MAX_LENGTH, return_tensors="pt")
    pruned.eval()(**parts.feed(pruned, {k: v.to(parts.device_of(pruned)) for k, v in enc.items()}))
    kept = set(last_kept(pruned)[0].tolist())
    ranks = pruned.token_pruning["state"]["score"][0].cpu()
    tokens = tokenizer.convert_ids_to_tokens(enc["input_ids"][0])
    return pd.DataFrame({"token": tokens, "score": [0.0 if i == 0 else float(ranks[i]) for i in range(len(tokens))],
                         "kept": [i in kept for i in range(len(tokens))]})


QUICK_LIMIT = data.QUICK_LIMIT


def _baseline() -> tuple[nn.Module, Any]:

    return model_mod.shared_baseline()[:2]


def _reference() -> np.ndarray:

    return model_mod.shared_baseline()[2]


@lru_cache(maxsize=4)
def _split_reference(split: str) -> np.ndarray:
    """The unpruned baseline's predictions on the quick subset of `split` (what agreement is measured against)."""
    if split == data.QUICK_SPLIT:  # the shared baseline's own reference, computed once per process
        return _reference()
    base, tok = _baseline()
    return measure.predict(base, tok, data.split(split, QUICK_LIMIT)["text"])


def token_predictions(keep_ratio: float, start_layer: int, score: str = "cls", split: str = "val",
                      select: Select | None = None) -> np.ndarray:
    """Predicted labels of the token-pruned baseline on the quick subset of `split` (cached: paired comparisons)."""
    return _token_predictions(keep_ratio, start_layer, score, split, select)


@lru_cache(maxsize=64)
def _token_predictions(keep_ratio: float, start_layer: int, score: str, split: str, select: Select | None
                       ) -> np.ndarray:
    if split not in data.SPLITS:
        raise ValueError(f"Unknown split {split!r}; choose 'val' (to choose settings) or 'test' (to report once).")
    base, tok = _baseline()
    pruned = token_pruning(base, keep_ratio, start_layer, score=score, select=select)
    preds = measure.predict(pruned, tok, data.split(split, QUICK_LIMIT)["text"])
    preds.setflags(write=False)  # shared by every caller of the cache
    return preds


def token_point(keep_ratio: float, start_layer: int, score: str = "cls", split: str = "val",
                select: Select | None = None) -> dict:
    """Accuracy (95% interval), agreement with the baseline and batch-32 latency (ms) of token pruning.

    Measured on the quick subset (200 snippets) of `split`: the validation split by default, because the sliders
    and sweeps that call this are where a keep ratio gets chosen; the test split is for reporting the choice once.
    Cached per point, however the arguments are passed (a slider passes them by name, a sweep by position).
    """
    return _token_point(keep_ratio, start_layer, score, split, select)


@lru_cache(maxsize=128)
def _token_point(keep_ratio: float, start_layer: int, score: str, split: str, select: Select | None) -> dict:
    preds = _token_predictions(keep_ratio, start_layer, score, split, select)
    base, tok = _baseline()
    pruned = token_pruning(base, keep_ratio, start_layer, score=score, select=select)
    ci = measure.accuracy_ci(preds, data.split(split, QUICK_LIMIT)["label"].to_numpy())
    lat = measure.latency(pruned, tok, 32, measure.SLIDER_WARMUP, measure.SLIDER_REPEATS)
    return {"keep_ratio": keep_ratio, "start_layer": start_layer, "score": score, "split": split,
            "accuracy": ci["accuracy"], "lo": ci["lo"], "hi": ci["hi"], "n": ci["n"],
            "agreement": measure.agreement(preds, _split_reference(split)), "latency_ms": lat["median_ms"],
            "repeats": lat["repeats"]}


def token_sweep(keep_ratios=(1.0, 0.7, 0.5, 0.3), start_layer: int = 2, scores=("cls", "mean"),
                split: str = "val") -> pd.DataFrame:
    """`token_point` for several keep ratios and scores (the latency-vs-accuracy curve), on the validation split."""
    return pd.DataFrame([token_point(float(r), start_layer, s, split) for s in scores for r in keep_ratios])


def choose_keep_ratio(sweep: pd.DataFrame, min_agreement: float = 0.95) -> dict:
    """The sweep's smallest keep ratio whose agreement with the unpruned model is >= `min_agreement` (val only).

    Ties in keep ratio go to the score with the higher agreement. Refuses a sweep measured on the test split:
    a setting chosen there would make the test accuracy reported for it optimistic.
    """
    if sweep.empty or not {"keep_ratio", "agreement", "split"} <= set(sweep.columns):
        raise ValueError("Pass the DataFrame returned by token_sweep(..., split='val').")
    for split in set(sweep["split"]):
        data.selection_split(split)
    if not 0 < min_agreement <= 1:
        raise ValueError(f"min_agreement must be a fraction in (0, 1], got {min_agreement!r}.")
    ok = sweep[sweep["agreement"] >= min_agreement]
    if ok.empty:  # nothing is close enough: keep everything rather than invent a choice
        ok = sweep[sweep["keep_ratio"] == sweep["keep_ratio"].max()]
    best = ok.sort_values(["keep_ratio", "agreement"], ascending=[True, False], kind="stable").iloc[0]
    return best.to_dict()


def length_latency(model: nn.Module, tokenizer, batch_size: int, lengths=(13, 26, 52), repeats: int | None = None
                   ) -> pd.DataFrame:
    """Median latency of `model` on `batch_size` inputs cut to each token length: where shorter sequences pay."""
    texts = measure.latency_texts(32)
    words = " ".join(texts).split()
    rows = []
    for n in lengths:
        # n word pieces exactly: [CLS] + (n - 2) pieces + [SEP], the same ones in every row of the batch.
        ids = tokenizer(" ".join(words), add_special_tokens=False)["input_ids"][: n - 2]
        text = tokenizer.decode(ids)
        batch = [text] * batch_size
        lat = measure.latency(model, tokenizer, batch_size, repeats=repeats, texts=batch)
        rows.append({"batch_size": batch_size, "tokens": lat["seq_len"], "median_ms": lat["median_ms"]})
    return pd.DataFrame(rows)


def draw_surviving(df: pd.DataFrame, ax=None):
    """The sentence's word pieces, kept ones in bold green, dropped ones grey and struck through (text figure)."""
    import matplotlib.pyplot as plt


    if ax is None:
        _, ax = plt.subplots(figsize=(10, 1.2))
    ax.axis("off")
    x = 0.0
    for token, kept in zip(df["token"], df["kept"]):
        t = ax.text(x, 0.5, token, fontsize=12, va="center", color="#2a9d3f" if kept else "#999999",
                    fontweight="bold" if kept else "normal", transform=ax.transAxes)
        if not kept:
            t.set_text("\u0336".join(token) + "\u0336")  # combining strike-through: dropped
        x += 0.012 * (len(token) + 2)
    ax.set_title(tr("{kept} of {total} word pieces survive", kept=int(df["kept"].sum()), total=len(df)), fontsize=10,
                 loc="left")
    return ax


def draw_tradeoff(df: pd.DataFrame, baseline_ms: float | None = None, ax=None):
    """Accuracy against batch-32 latency, one line per score, points labelled by keep ratio."""
    import matplotlib.pyplot as plt


    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 4))
    for score, part in df.groupby("score"):
        line, = ax.plot(part["latency_ms"], part["accuracy"], "o-", label=tr("{score} score", score=score))
        if {"lo", "hi"} <= set(part.columns):  # the 95% interval of each accuracy
            ax.errorbar(part["latency_ms"], part["accuracy"], yerr=[part["accuracy"] - part["lo"],
                        part["hi"] - part["accuracy"]], fmt="none", ecolor=line.get_color(), alpha=0.4, capsize=3)
        for _, r in part.iterrows():
            ax.annotate(f"{r['keep_ratio']:.1f}", (r["latency_ms"], r["accuracy"]), fontsize=8,
                        xytext=(3, 3), textcoords="offset points")
    split = df["split"].iloc[0] if "split" in df.columns and len(df) else "test"
    ax.set_xlabel(tr("batch-32 latency (ms, median; each point timed on its own)"))
    ax.set_ylabel(tr("accuracy, 95% interval (quick {split} subset)", split=split))
    ax.grid(alpha=0.3)
    ax.legend()
    return ax


def tour(model: nn.Module, tokenizer, reference: np.ndarray, limit: int | None = None) -> list[results.Result]:
    """Rows for the main job: token pruning (keep 0.5 from layer 2, two scores), timed beside `model`.

    `limit` measures accuracy on the first `limit` test snippets only (tests); the code path is the same."""
    start = min(2, len(parts.blocks(model)) - 1)  # layer 2, or the last one of a shallower model
    models = {f"token pruning keep 0.5 from layer {start}": token_pruning(model, 0.5, start),
              f"token pruning keep 0.5 from layer {start} (mean score)": token_pruning(model, 0.5, start, score="mean")}
    notes = dict(zip(models, ["dynamic: tokens ranked by [CLS] attention, dropped at run time",
                              "tokens ranked by attention received from all tokens"]))
    return results.evaluate_group(models, tokenizer, results.reference_on(model, tokenizer, reference, limit), model,
                                  notes, limit=limit)
