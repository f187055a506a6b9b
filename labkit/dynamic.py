"""Decisions made at run time: token pruning, dynamic int8 quantization, gradual magnitude pruning.

Static methods decide once, ahead of time (a calibrated activation scale, a fixed weight mask).
Dynamic methods decide per input or per step:
- `token_pruning` drops the least-attended tokens of *each input* while it runs (real speed, no retraining);
- `dynamic_int8` computes each batch's activation scale at run time (real int8 kernels on the CPU);
- `prune_finetune` raises weight sparsity step by step *during* fine-tuning (a cubic schedule).

Each accepts a learner's own piece of the mechanism: `token_pruning(select=...)` (which tokens survive),
`with_linear(model, linear_fn)` (a dynamic int8 Linear), `prune_finetune(schedule=callable)` (the sparsity schedule).
"""

from __future__ import annotations

import copy
import math
import warnings
from functools import lru_cache
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import data, measure, memory, parts, quantize, train


# --- finding the parts (through labkit.parts) ------------------------------------------------------------

def _blocks(model: nn.Module) -> list[parts.Block]:
    """The model's transformer blocks; a ValueError naming the supported families for any other model."""
    bs = parts.blocks(model)
    if not bs:
        raise ValueError(f"{type(model).__name__} has no transformer blocks; pass a classifier of one of these "
                         f"families: {parts.SUPPORTED}.")
    return bs


def encoder_layers_name(model: nn.Module) -> str:
    """Dotted name of the encoder's list of transformer blocks in the model ('bert.encoder.layer')."""
    return _blocks(model)[0].prefix.rpartition(".")[0]


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The encoder's list of transformer blocks (found through labkit.parts, for every supported family)."""
    return model.get_submodule(encoder_layers_name(model))


def _target(model: nn.Module, inplace: bool) -> nn.Module:
    return model if inplace else copy.deepcopy(model)


# --- token pruning -----------------------------------------------------------------------------------

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
    Works on every family in labkit.parts; DeBERTa-v2's blocks get the kept tokens' relative positions (its
    ranking uses the content attention only). The copy only adds hooks, so it shares the input's weights
    (parts.copy_with): fine-tune a labkit.model.clone of it, not the copy itself.
    """
    if select is not None and not callable(select):
        raise ValueError(f"select must be a function (hidden, scores, mask, keep) -> (kept, indices), got {select!r}.")
    if score not in SCORES:
        raise ValueError(f"score must be one of {', '.join(SCORES)}, got {score!r}.")
    if isinstance(keep_ratio, bool) or not isinstance(keep_ratio, (int, float)) or not 0 < keep_ratio <= 1:
        raise ValueError(f"keep_ratio must be a fraction in (0, 1] (1 keeps every real token), got {keep_ratio!r}.")
    layers = _blocks(model)
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
    blocks = _blocks(model)
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


# --- the quick subset behind the sliders -------------------------------------------------------------

QUICK_LIMIT = data.QUICK_LIMIT


def _baseline() -> tuple[nn.Module, Any]:
    from . import model as model_mod

    return model_mod.shared_baseline()[:2]


def _reference() -> np.ndarray:
    from . import model as model_mod

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

    from .plots import tr

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

    from .plots import tr

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


# --- dynamic vs static activation quantization -------------------------------------------------------

def linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Every Linear inside the transformer blocks, named within the block list ('0.attention.self.query').

    The blocks' layers of `parts.linears(model, "blocks")`; the classifier head and pooler stay in float.
    """
    start = len(encoder_layers_name(model)) + 1
    return {name[start:]: m for name, m in parts.linears(model, "blocks").items()}


def dynamic_int8(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Real dynamic int8: int8 weights ahead of time, each batch's activation scale computed at run time (CPU)."""
    _blocks(model)  # a supported classifier, or a ValueError naming the families
    layers = list(parts.linears(model, "blocks"))  # full names, the same in the copy
    model = quantize._cpu_target(model, inplace, "torch's dynamic int8 Linear (torch.ao)")
    quantize_dynamic = quantize._torch_ao_quantize_dynamic()
    if quantize_dynamic is None:  # a torch without torch.ao: the same recipe in ONNX Runtime, with a warning
        return quantize._torch_dynamic_int8(model)
    with warnings.catch_warnings():
        # torch.ao.quantization is deprecated but still the CPU's int8 Linear; the warning is for us, not learners.
        warnings.simplefilter("ignore")
        quantize_dynamic(model, set(layers), dtype=torch.qint8, inplace=True)  # these layers only, by full name
    return model


# --- your own dynamic int8 Linear in the real model ----------------------------------------------------

# linear_fn(x (rows, in) float, w_codes (out, in) int8, w_scale (out,) float, bias (out,) float or None) -> (rows, out)
LinearFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def int8_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8 codes of a Linear weight (out, in) and their float scales (out,)."""
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError("int8_weight needs a Linear's 2-D weight tensor of shape (out_features, in_features).")
    w = weight.detach().float()
    # One scale per output channel: a row with small weights keeps its own fine grid. Codes stop at -127 so the
    # grid is symmetric around 0 (what torch's int8 weights do too).
    scale = (w.abs().amax(dim=1) / 127).clamp_min(1e-12)
    codes = torch.clamp(torch.round(w / scale[:, None]), -127, 127).to(torch.int8)
    return codes, scale


class FnLinear(nn.Module):
    """A Linear on int8 weights whose forward is `linear_fn(x, w_codes, w_scale, bias)` (float in, float out)."""

    def __init__(self, linear: nn.Linear, linear_fn: LinearFn):
        super().__init__()
        codes, scale = int8_weight(linear.weight)
        self.register_buffer("w_codes", codes)
        self.register_buffer("w_scale", scale)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())
        self.in_features, self.out_features, self.linear_fn = linear.in_features, linear.out_features, linear_fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).float()
        y = self.linear_fn(rows, self.w_codes, self.w_scale, self.bias)
        if not isinstance(y, torch.Tensor) or tuple(y.shape) != (rows.shape[0], self.out_features):
            got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise ValueError(f"linear_fn must return a float tensor of shape (rows, out_features) = "
                             f"({rows.shape[0]}, {self.out_features}), got {got}; check it with "
                             "checks.check('04.dynamic_linear', fn) first.")
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights, " \
               f"fn={getattr(self.linear_fn, '__name__', 'linear_fn')}"


def with_linear(model: nn.Module, linear_fn: LinearFn, inplace: bool = False) -> nn.Module:
    """A copy of `model` whose encoder Linears run `linear_fn` on int8 weights (notebook 04's `dynamic_linear`).

    Each Linear's weight becomes symmetric per-channel int8 codes and scales (`int8_weight`); every forward pass
    calls `linear_fn(x, w_codes, w_scale, bias)` with the layer's input flattened to (rows, in_features).
    The classifier head and pooler stay in float, as in `dynamic_int8`. This runs at Python speed: it shows
    that your arithmetic gives the model's answers, not that it is fast (torch's int8 kernel is what is timed).
    """
    if not callable(linear_fn):
        raise ValueError(f"linear_fn must be a function (x, w_codes, w_scale, bias) -> y, got {linear_fn!r}.")
    model = _target(model, inplace)
    for name, lin in parts.linears(model, "blocks").items():
        parts.set_module(model, name, FnLinear(lin, linear_fn))
    return model


def _torch_dynamic_linear(linear: nn.Linear) -> nn.Module:
    """torch's own dynamic int8 Linear made from a float one (a copy)."""
    quantize_dynamic = quantize._torch_ao_quantize_dynamic()
    if quantize_dynamic is None:
        raise RuntimeError(f"torch {torch.__version__} has no torch.ao.quantization, whose int8 Linear this compares "
                           "against; run this comparison with torch 2.x up to 2.13, or skip it.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice is for us, not learners
        return quantize_dynamic(nn.Sequential(copy.deepcopy(linear).float().cpu()), {nn.Linear},
                                dtype=torch.qint8)[0]


@torch.inference_mode()
def linear_errors(model: nn.Module, tokenizer, linear_fn: LinearFn, texts: list[str], name: str | None = None
                  ) -> pd.DataFrame:
    """On one encoder Linear's real input: how far `linear_fn` and torch's dynamic int8 Linear land from float.

    The error is relative, ||y - y_float|| / ||y_float||, over every row of the captured input (all tokens of
    `texts`). `name` is a key of `linears(model)`; the first encoder Linear by default.
    """
    lins = linears(model)
    if name is None:
        name = next(iter(lins))
    if name not in lins:
        raise ValueError(f"No encoder Linear named {name!r}; choose one of {', '.join(list(lins)[:6])}, ...")
    lin = lins[name]
    seen: list[torch.Tensor] = []
    handle = lin.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    try:
        measure.predict(model, tokenizer, list(texts))
    finally:
        handle.remove()
    x = torch.cat([t.reshape(-1, lin.in_features) for t in seen]).float().cpu()
    w = lin.weight
    ref = (lin if w.device.type == "cpu" and w.dtype == torch.float32 else copy.deepcopy(lin).float().cpu())(x)
    codes, scale = int8_weight(lin.weight.cpu())
    bias = None if lin.bias is None else lin.bias.detach().float().cpu()
    outs = {"your linear_fn (int8 weights per channel)": linear_fn(x, codes, scale, bias),
            "torch dynamic int8 Linear": _torch_dynamic_linear(lin)(x)}
    norm = float(ref.norm())
    return pd.DataFrame([{"layer": name, "version": k, "rows": x.shape[0],
                          "relative_error": float((y.float() - ref).norm()) / max(norm, 1e-12)}
                         for k, y in outs.items()])


def compare_predictions(preds: dict[str, np.ndarray], labels, baseline: str) -> pd.DataFrame:
    """One row per model: accuracy with its 95% interval, agreement with `baseline`, paired difference from it."""
    if baseline not in preds:
        raise ValueError(f"baseline {baseline!r} is not one of the models: {', '.join(preds)}.")
    labels = np.asarray(labels)
    rows = []
    for name, p in preds.items():
        ci = measure.accuracy_ci(p, labels)
        row = {"model": name, "accuracy": ci["accuracy"], "accuracy (95% interval)": measure.format_accuracy(ci),
               "agreement": measure.agreement(p, preds[baseline])}
        if name != baseline:
            d = measure.paired(p, preds[baseline], labels)
            row.update({"minus " + baseline: f"{d['difference']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]",
                        "p (McNemar)": round(d["p_value"], 3)})
        rows.append(row)
    return pd.DataFrame(rows).set_index("model")


def fake_int8(x: torch.Tensor, lo: torch.Tensor | float, hi: torch.Tensor | float) -> torch.Tensor:
    """Round x to the asymmetric 8-bit grid spanning [lo, hi] (values outside are clipped), back in float."""
    lo, hi = torch.as_tensor(lo, dtype=x.dtype), torch.as_tensor(hi, dtype=x.dtype)
    lo, hi = torch.minimum(lo, torch.zeros_like(lo)), torch.maximum(hi, torch.zeros_like(hi))  # 0 is exact
    scale = ((hi - lo) / 255).clamp_min(1e-12)
    zero = torch.round(-lo / scale)
    return (torch.clamp(torch.round(x / scale) + zero, 0, 255) - zero) * scale


def fake_int8_weights(w: torch.Tensor) -> torch.Tensor:
    """Symmetric per-tensor int8 weights (what torch's dynamic int8 Linear stores), back in float."""
    scale = (w.abs().max() / 127).clamp_min(1e-12)
    return torch.clamp(torch.round(w / scale), -127, 127) * scale


class _ActQuant:
    """Forward pre-hook: fake-quantize a Linear's input with a fixed range (static) or this batch's range (dynamic)."""

    def __init__(self, lo: float | None = None, hi: float | None = None):
        self.lo, self.hi = lo, hi

    def __call__(self, module, args):
        x = args[0]
        lo, hi = (x.min(), x.max()) if self.lo is None else (self.lo, self.hi)
        return (fake_int8(x, lo, hi), *args[1:])


@torch.inference_mode()
def calibrate_ranges(model: nn.Module, tokenizer, texts: list[str], batch_size: int = 32) -> dict[str, tuple]:
    """Min/max of every encoder Linear's input over calibration texts (the static decision)."""
    ranges: dict[str, list[float]] = {}

    def observer(name):
        def hook(module, args):
            x = args[0]
            lo, hi = ranges.get(name, (math.inf, -math.inf))
            ranges[name] = (min(lo, float(x.min())), max(hi, float(x.max())))
        return hook

    handles = [m.register_forward_pre_hook(observer(n)) for n, m in linears(model).items()]
    try:
        model.eval()
        dev = parts.device_of(model)
        for batch in data.batches(texts, None, tokenizer, batch_size):
            model(**parts.feed(model, batch.to(dev).inputs))
    finally:
        for h in handles:
            h.remove()
    return ranges


def simulated_int8(model: nn.Module, ranges: dict[str, tuple] | None = None, inplace: bool = False) -> nn.Module:
    """SIMULATED int8 (float math, not faster): int8 weights plus activations on a static range or per-batch range.

    With `ranges` (from `calibrate_ranges`) each Linear input is clipped to its calibrated range: static.
    Without, each batch's own min/max sets the scale: dynamic. Same weights either way, so only that decision differs.
    """
    model = _target(model, inplace)
    for name, lin in linears(model).items():
        with torch.no_grad():
            lin.weight.copy_(fake_int8_weights(lin.weight))
        if ranges is None:
            lin.register_forward_pre_hook(_ActQuant())
        else:
            if name not in ranges:
                raise ValueError(f"No calibrated range for {name!r}; calibrate on this model's architecture.")
            lin.register_forward_pre_hook(_ActQuant(*ranges[name]))
    return model


def calibration_texts(size: int = 64) -> list[str]:
    """The `size` shortest training snippets: a deliberately narrow calibration set."""
    train = data.split("train")
    return list(train.loc[train["text"].str.len().sort_values(kind="stable").index[:size], "text"])


def shifted_test(kind: str, limit: int = QUICK_LIMIT) -> pd.DataFrame:
    """Test inputs unlike the calibration set: 'normal', 'long' (longest snippets), 'repeated' (x3), 'upper'."""
    test = data.split("test")
    if kind == "normal":
        return data.split("test", limit)
    if kind == "long":
        return test.loc[test["text"].str.len().sort_values(kind="stable").index[-limit:]].reset_index(drop=True)
    base = data.split("test", limit).copy()
    if kind == "repeated":
        base["text"] = (base["text"] + " ") * 2 + base["text"]
    elif kind == "upper":
        base["text"] = base["text"].str.upper()
    else:
        raise ValueError(f"Unknown kind {kind!r}; choose normal, long, repeated or upper.")
    return base


def quantization_robustness(model: nn.Module, tokenizer, kinds=("normal", "long", "repeated", "upper"),
                            calibration_size: int = 64, limit: int = QUICK_LIMIT) -> pd.DataFrame:
    """Accuracy (with its 95% interval) and agreement with fp32 of fp32, real dynamic int8, simulated dynamic and
    simulated static int8, on each kind of input."""
    ranges = calibrate_ranges(model, tokenizer, calibration_texts(calibration_size))
    builders = {"fp32": lambda: model, "dynamic int8 (real)": lambda: dynamic_int8(model),
                "dynamic int8 (simulated)": lambda: simulated_int8(model),
                "static int8 (simulated)": lambda: simulated_int8(model, ranges)}
    shifted = {kind: shifted_test(kind, limit) for kind in kinds}
    refs = {kind: measure.predict(model, tokenizer, df["text"]) for kind, df in shifted.items()}
    rows = {}
    for name, build in builders.items():  # one compressed copy alive at a time: a classroom hub has 1-2 GB
        m = build()
        for kind, df in shifted.items():
            preds = refs[kind] if m is model else measure.predict(m, tokenizer, df["text"])
            ci = measure.accuracy_ci(preds, df["label"].to_numpy())
            rows[kind, name] = {"inputs": kind, "model": name, "accuracy": ci["accuracy"], "lo": ci["lo"],
                                "hi": ci["hi"], "n": ci["n"], "agreement": measure.agreement(preds, refs[kind])}
        del m
        memory.release()  # hand this copy's pages back before the next one is built
    return pd.DataFrame([rows[kind, name] for kind in kinds for name in builders])


# --- gradual magnitude pruning during fine-tuning ----------------------------------------------------

def cubic_schedule(step: int, total: int, final_sparsity: float, initial: float = 0.0) -> float:
    """Sparsity at `step` of `total`: initial + (final - initial) * (1 - (1 - step/total)^3), fast early, flat late."""
    if not 0 <= final_sparsity < 1:
        raise ValueError(f"final_sparsity must be in [0, 1) (1 would remove every weight), got {final_sparsity!r}.")
    if not 0 <= initial <= final_sparsity:
        raise ValueError(f"initial must be in [0, final_sparsity={final_sparsity}], got {initial!r}.")
    if total < 1 or step < 0:
        raise ValueError(f"Need total >= 1 and step >= 0, got step={step}, total={total}.")
    t = min(step, total) / total
    return initial + (final_sparsity - initial) * (1 - (1 - t) ** 3)


def prune_smallest(weight: torch.Tensor, keep: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Greedy step: the new keep-mask removes the smallest surviving |w| until `sparsity` of the entries are gone."""
    n_prune = int(round(sparsity * weight.numel()))
    already = int((~keep).sum())
    if n_prune <= already:
        return keep
    score = weight.detach().abs().masked_fill(~keep, -1.0).flatten()  # pruned weights stay pruned
    idx = torch.topk(score, n_prune, largest=False).indices
    new = torch.ones_like(score, dtype=torch.bool)
    new[idx] = False
    return new.view_as(keep)


def _apply(model_linears: dict[str, nn.Linear], keep: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, lin in model_linears.items():
            lin.weight.mul_(keep[name])


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of zero weights over the encoder's Linear layers."""
    ws = [lin.weight for lin in linears(model).values()]
    return float(sum(int((w == 0).sum()) for w in ws) / sum(w.numel() for w in ws))


Schedule = Callable[[int, int, float], float]  # (step, total, final_sparsity) -> target sparsity at that step


def _target_sparsity(schedule: str | Schedule, step: int, total: int, final_sparsity: float) -> float:
    """The target sparsity a schedule (a name or a function) gives at `step` of a ramp of `total` steps."""
    if schedule == "oneshot":
        return final_sparsity
    if schedule == "cubic":
        return cubic_schedule(step, total, final_sparsity)
    value = schedule(step, total, final_sparsity)
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"schedule({step}, {total}, {final_sparsity}) returned {value!r}, not a number; check it "
                         "with checks.check('05.cubic_schedule', fn) first.") from None
    if not 0 <= value < 1 or math.isnan(value):
        raise ValueError(f"schedule({step}, {total}, {final_sparsity}) returned {value}, not a sparsity in [0, 1).")
    return value


def prune_finetune(model: nn.Module, tokenizer, final_sparsity: float, steps: int,
                   schedule: str | Schedule = "cubic", ramp: float = 0.7, batch_size: int = 16, lr: float = 5e-5,
                   seed: int = 0, inplace: bool = False, teacher: nn.Module | None = None
                   ) -> tuple[nn.Module, pd.DataFrame]:
    """Fine-tune while pruning encoder Linears by magnitude: 'cubic' (gradual) or 'oneshot' (all at step 0).

    The cubic schedule reaches `final_sparsity` after `ramp` of the steps; the rest recover at that sparsity.
    `schedule` may also be your own function `(step, total, final_sparsity) -> sparsity` (notebook 05), called with
    total = the ramp's steps and steps past it, so it must stay at `final_sparsity` after `total`.
    Both take the same `steps` optimizer steps on the same batches, so only the pruning schedule differs.
    With a `teacher` (the dense model), half the loss is distillation towards its outputs (as prune.recover).
    Returns the pruned model and its history (step, target sparsity, loss).
    """
    if not 0 < ramp <= 1:
        raise ValueError(f"ramp must be a fraction of the steps in (0, 1], got {ramp!r}.")
    if schedule not in ("cubic", "oneshot") and not callable(schedule):
        raise ValueError(f"schedule must be 'cubic', 'oneshot' or a function (step, total, final) -> sparsity, "
                         f"got {schedule!r}.")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}.")
    cubic_schedule(0, steps, final_sparsity)  # validates final_sparsity
    model = model if inplace else train.copy_to_fit(model)  # the embedding fit freezes stays shared
    lins = linears(model)
    keep = {n: torch.ones_like(m.weight, dtype=torch.bool) for n, m in lins.items()}
    ramp_steps = max(1, int(ramp * steps))
    targets: list[float] = []

    def before_step(step: int) -> None:
        target = _target_sparsity(schedule, step, ramp_steps, final_sparsity)
        if not targets or target != targets[-1]:  # greedy: remove the smallest surviving weights up to this target
            for n, lin in lins.items():
                keep[n] = prune_smallest(lin.weight, keep[n], target)
        targets.append(target)
        _apply(lins, keep)

    def after_step(step: int) -> None:
        _apply(lins, keep)  # the optimizer step must not revive pruned weights

    train_split = data.split("train")
    # A constant learning rate (no warm-up, no decay): the schedule that varies is the sparsity's.
    history = train.fit(model, tokenizer, train_split["text"], train_split["label"], steps, lr=lr,
                        batch_size=batch_size, seed=seed, decay=False, teacher=teacher, temperature=2.0,
                        before_step=before_step, after_step=after_step, desc="pruning while fine-tuning")
    return model, pd.DataFrame([{"step": h["step"], "sparsity": t, "loss": h["loss"]}
                                for h, t in zip(history, targets)])


# --- tour ----------------------------------------------------------------------------------------------

def tour(model: nn.Module, tokenizer, reference: np.ndarray, limit: int | None = None) -> list[measure.Result]:
    """Rows for the main job: token pruning (keep 0.5 from layer 2) and real dynamic int8, timed beside `model`.

    `limit` measures accuracy on the first `limit` test snippets only (tests); the code path is the same."""
    start = min(2, len(parts.blocks(model)) - 1)  # layer 2, or the last one of a shallower model
    models = {f"token pruning keep 0.5 from layer {start}": token_pruning(model, 0.5, start),
              f"token pruning keep 0.5 from layer {start} (mean score)": token_pruning(model, 0.5, start, score="mean"),
              "dynamic int8 (torch)": dynamic_int8(model)}
    notes = dict(zip(models, ["dynamic: tokens ranked by [CLS] attention, dropped at run time",
                              "tokens ranked by attention received from all tokens",
                              "int8 weights, per-batch activation scales"]))
    return measure.evaluate_group(models, tokenizer, measure.reference_on(model, tokenizer, reference, limit), model,
                                  notes, limit=limit)
