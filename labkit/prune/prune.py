"""Pruning: masks that zero weights (same file, same speed) and structured cuts that really shrink the model.

Unstructured pruning (`magnitude`, `two_four`) writes zeros into dense Linear weights: the tensors keep their
shape, so the saved file and the latency stay those of the dense model. Structured pruning (`structured`)
removes whole attention heads and FFN neurons, which gives smaller Linear layers: fewer bytes, less time.

The task head is left alone by default (`include_head=False`): every Linear outside `model.base_model`
(BERT's `classifier`) and the pooler, whose weights are tiny in MiniLM, so a global magnitude ranking would
delete almost all of it and with it the sentence representation the classifier reads.
"""

from __future__ import annotations

import re
import time
from functools import lru_cache

import numpy as np
import pandas as pd
import torch
from torch import nn

from labkit import fast_mode
from labkit.core import data, measure, memory, parts, results
from labkit.core import model as lk_model
from labkit.core import train as lk_train
from labkit.prune.masks import smallest_mask

SCOPES = ("layer", "global")
METHODS = ("magnitude", "random")
SCORES = ("norm", "gradient")
QUICK_LIMIT = data.QUICK_LIMIT  # the quick subset the slider and the sensitivity scan evaluate on

SEMI_STRUCTURED_NOTE = (
    "2:4 sparsity zeroes two of every four weights. On a CPU the weights stay a dense float32 matrix, so the "
    "file and the latency do not change at all. Only a GPU with sparse tensor cores (NVIDIA compute capability "
    ">= 8.0, fp16/bf16) can skip the zeros, via torch.sparse.to_sparse_semi_structured.")


# --- finding the layers ---------------------------------------------------------------------------

def prunable_linears(model: nn.Module, include_head: bool = False) -> dict[str, nn.Linear]:
    """The Linear layers pruning acts on, by name: the blocks' attention and feed-forward layers (from
    `labkit.core.parts`), plus the classification head (pooler / pre-classifier included) with `include_head=True`.

    Layers that are neither (ELECTRA's `embeddings_project`, DeBERTa-v2's relative-position projections) are
    never pruned: every token's representation passes through them, so they are not part of the block budget.
    A plain nn.Module (a learner's toy network) prunes all its Linear layers.
    """
    layers = parts.linears(model, "blocks")
    if include_head:
        layers = {**layers, **parts.head_linears(model)}
    if not layers:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layers to prune; pass a transformer "
                         "classifier such as the one from labkit.core.model.load_baseline().")
    return layers


def _check_fraction(name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name} must be a fraction in [0, 1) (e.g. 0.5 for half), got {value!r}.")
    return float(value)


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"Unknown {name} {value!r}; choose one of {', '.join(map(repr, allowed))}.")
    return value


def _target(model: nn.Module, inplace: bool) -> nn.Module:
    return model if inplace else parts.clone(model)


# --- unstructured masks ---------------------------------------------------------------------------

def _scores(weight: torch.Tensor, method: str, gen: torch.Generator) -> torch.Tensor:
    if method == "magnitude":
        return weight.detach().abs()
    return torch.rand(weight.shape, generator=gen).to(weight.device)  # random control: scores ignore weights


def _mask_from_fn(mask_fn, weight: torch.Tensor, sparsity: float, name: str) -> torch.Tensor:
    """A keep-mask for one weight from a learner-supplied `mask_fn(w, sparsity)`, checked before it is applied.

    A sparsity that removes no weight at all is answered here (all kept), so `mask_fn` never has to handle
    k = 0 in torch.kthvalue; it gets a detached copy, so a function that prunes in place cannot touch the model.
    """
    if round(sparsity * weight.numel()) == 0:
        return torch.ones_like(weight, dtype=torch.bool)
    got = mask_fn(weight.detach().clone(), sparsity)
    mask = torch.as_tensor(got) if isinstance(got, torch.Tensor) else None
    if mask is None or mask.shape != weight.shape:
        shape = tuple(mask.shape) if mask is not None else type(got).__name__
        raise ValueError(f"mask_fn returned {shape} for {name} of shape {tuple(weight.shape)}: it must return a "
                         "keep-mask of the weight's shape (True = keep).")
    if not ((mask == 0) | (mask == 1)).all():
        raise ValueError(f"mask_fn returned values other than 0/1 for {name}: return the keep-mask "
                         "(True = keep), not the pruned weights.")
    return mask.to(weight.device).bool()


def masks(model: nn.Module, sparsity: float, scope: str = "layer", method: str = "magnitude",
          include_head: bool = False, seed: int = 0, mask_fn=None) -> dict[str, torch.Tensor]:
    """Keep-masks (True = keep) that zero `sparsity` of each layer's weights, or of all of them together.

    `mask_fn(w, sparsity) -> keep-mask` replaces the built-in per-layer magnitude ranking (layer scope only),
    e.g. a `fine_grained_prune` written in notebook 03.
    """
    sparsity = _check_fraction("sparsity", sparsity)
    _check_choice("scope", scope, SCOPES)
    _check_choice("method", method, METHODS)
    layers = prunable_linears(model, include_head)
    if mask_fn is not None:
        if scope != "layer" or method != "magnitude":
            raise ValueError("mask_fn prunes each layer on its own: use it with scope='layer', method='magnitude'.")
        return {n: _mask_from_fn(mask_fn, m.weight, sparsity, n) for n, m in layers.items()}
    gen = torch.Generator().manual_seed(seed)
    if scope == "layer":
        return {n: smallest_mask(_scores(m.weight, method, gen), round(sparsity * m.weight.numel()))
                for n, m in layers.items()}
    # One layer's scores at a time go into the flat vector: no second whole-model copy beside it.
    flat = torch.cat([_scores(m.weight, method, gen).reshape(-1) for m in layers.values()])
    keep = smallest_mask(flat, round(sparsity * flat.numel()))
    out, start = {}, 0
    for n, m in layers.items():
        out[n] = keep[start:start + m.weight.numel()].view_as(m.weight)
        start += m.weight.numel()
    return out


def apply_masks(model: nn.Module, keep: dict[str, torch.Tensor]) -> nn.Module:
    """Multiply each named Linear weight by its mask, in place: zeros stored in a dense tensor."""
    layers = dict(model.named_modules())
    with torch.no_grad():
        for name, mask in keep.items():
            layers[name].weight.mul_(mask.to(layers[name].weight.device, layers[name].weight.dtype))
    return model


def magnitude(model: nn.Module, sparsity: float, scope: str = "layer", method: str = "magnitude",
              inplace: bool = False, include_head: bool = False, seed: int = 0, mask_fn=None) -> nn.Module:
    """A copy with `sparsity` of the Linear weights set to zero: smallest |w| (or random ones, the control).

    scope="layer" prunes that fraction of every layer; scope="global" ranks all weights together, so some
    layers lose more than others. The head is excluded unless `include_head=True`. `mask_fn(w, sparsity)`
    (layer scope) supplies each layer's keep-mask instead of the built-in ranking.
    """
    keep = masks(model, sparsity, scope, method, include_head, seed, mask_fn)
    return apply_masks(_target(model, inplace), keep)


def two_four(model: nn.Module, inplace: bool = False, include_head: bool = False) -> nn.Module:
    """A copy where, in every group of 4 consecutive input weights, the 2 smallest |w| are zero (2:4)."""
    out = _target(model, inplace)
    with torch.no_grad():
        for name, layer in prunable_linears(out, include_head).items():
            w = layer.weight
            if w.shape[1] % 4:
                raise ValueError(f"{name} has {w.shape[1]} inputs, not a multiple of 4: 2:4 needs groups of 4; "
                                 "exclude it or pad the layer.")
            groups = w.abs().reshape(-1, 4)
            drop = torch.topk(groups, 2, dim=1, largest=False).indices
            keep = torch.ones_like(groups, dtype=torch.bool).scatter_(1, drop, False)
            w.mul_(keep.view_as(w))
    return out


def sparsity_of(model: nn.Module, include_head: bool = False) -> dict:
    """Counts over the prunable Linear weights: total, zeros, remaining, and the sparsity (zeros / total)."""
    layers = prunable_linears(model, include_head)
    total = sum(m.weight.numel() for m in layers.values())
    zeros = sum(int((m.weight == 0).sum()) for m in layers.values())
    return {"total": total, "zeros": zeros, "remaining": total - zeros, "sparsity": zeros / total}


def layer_sparsity(model: nn.Module, include_head: bool = False) -> pd.DataFrame:
    """One row per prunable Linear: its shape, weights and fraction of zeros."""
    rows = [{"layer": n, "shape": tuple(m.weight.shape), "weights": m.weight.numel(),
             "sparsity": float((m.weight == 0).float().mean())}
            for n, m in prunable_linears(model, include_head).items()]
    return pd.DataFrame(rows)


def torch_prune(model: nn.Module, sparsity: float, inplace: bool = False) -> nn.Module:
    """Global L1 pruning kept the way torch.nn.utils.prune keeps it: weight_orig, a weight_mask buffer, and the
    weight recomputed before every forward. The masks are torch's global_unstructured ones (tested)."""
    import torch.nn.utils.prune as tprune

    sparsity = _check_fraction("sparsity", sparsity)
    keep = masks(model, sparsity, "global")
    out = _target(model, inplace)
    # Layer by layer: global_unstructured builds several whole-model vectors at once (the fast baseline's call
    # peaked 0.58 GB above the kernel), where these masks cost one.
    for name, layer in prunable_linears(out).items():
        tprune.custom_from_mask(layer, "weight", keep[name].to(layer.weight.device))
    return out


def semi_structured_available() -> bool:
    """True where torch can run 2:4 sparse matmuls: a CUDA GPU with compute capability >= 8.0."""
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8


def to_semi_structured(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Move a 2:4-pruned model to fp16 on the GPU with sparse semi-structured weights (CUDA only)."""
    if not semi_structured_available():
        raise ValueError("to_semi_structured needs a CUDA GPU with compute capability >= 8.0. " + SEMI_STRUCTURED_NOTE)
    from torch.sparse import to_sparse_semi_structured

    out = _target(model, inplace).half().cuda()
    for layer in prunable_linears(out).values():
        w = layer.weight.detach()
        groups = (w.reshape(-1, 4) != 0).sum(1)
        if (groups > 2).any():
            raise ValueError("The weights are not 2:4 sparse; run prune.two_four(model) first.")
        layer.weight = nn.Parameter(to_sparse_semi_structured(w), requires_grad=False)
    return out


# --- structured: remove heads and FFN neurons -----------------------------------------------------

STRUCTURED_FAMILIES = ", ".join(f.name for f in parts.FAMILIES if f.structured)


def _structured_blocks(model: nn.Module) -> list[parts.Block]:
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
    return parts.blocks(model)


def _slice_linear(layer: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A smaller Linear keeping `index` of its outputs (dim=0) or of its inputs (dim=1), on the layer's device and dtype."""
    from transformers.pytorch_utils import prune_linear_layer

    # prune_linear_layer builds the new layer in the default dtype: cast back, so an fp16 model stays fp16.
    return prune_linear_layer(layer, index.to(layer.weight.device), dim).to(dtype=layer.weight.dtype)


def _set_head_count(block: parts.Block, n: int) -> None:
    """Record that `block` now has `n` heads: the count attribute and any width derived from it."""
    att, d, old = block.attention, block.head_size, block.n_heads
    setattr(att, block.family.n_heads, n)
    # BERT-like attention keeps all_head_size, DistilBERT dim (older transformers reshape with them).
    for attr in ("all_head_size", "dim"):
        if getattr(att, attr, None) == old * d:
            setattr(att, attr, n * d)


def _head_scores(block: parts.Block, stat) -> torch.Tensor:
    """One importance per head: the statistic summed over its query/key/value rows and output columns."""
    rows = sum(stat(block.get(p).weight).sum(1) for p in ("q", "k", "v"))
    cols = stat(block.get("o").weight).sum(0)
    return (rows + cols).reshape(-1, block.head_size).sum(1)


def _ffn_scores(block: parts.Block, stat) -> torch.Tensor:
    """One importance per FFN neuron: its input row's statistic times its output column's."""
    return stat(block.get("up").weight).sum(1) * stat(block.get("down").weight).sum(0)


def _taylor(model: nn.Module, tokenizer, batches: int = 4, batch_size: int = 32) -> dict[int, torch.Tensor]:
    """|w * dL/dw| per weight, accumulated over a few training batches (first-order Taylor importance)."""
    work = parts.clone(model).train()
    for p in work.parameters():
        p.grad = None
    dev = parts.device_of(work)
    split = data.split("train", limit=batches * batch_size)
    for batch in data.batches(split["text"], split["label"], tokenizer, batch_size, shuffle_seed=0):
        batch = batch.to(dev)
        work(**parts.feed(work, batch.inputs), labels=batch.labels).loss.backward()
    # Map the copy's gradients back onto the original's parameters, by name.
    grads = dict(work.named_parameters())
    return {id(p): (p.detach() * grads[n].grad).abs() for n, p in model.named_parameters()
            if grads[n].grad is not None}


def _keep_top(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """Sorted indices of the units to keep after removing round(fraction * n) of the lowest (>= 1 kept)."""
    n = scores.numel()
    drop = min(round(fraction * n), n - 1)
    return torch.sort(torch.topk(scores, n - drop).indices).values


def _cut_heads(block: parts.Block, keep: torch.Tensor) -> None:
    """Keep only the heads `keep` (sorted indices) of `block`: q/k/v rows and output-projection columns."""
    d = block.head_size
    cols = (keep[:, None] * d + torch.arange(d, device=keep.device)).reshape(-1)
    for part in ("q", "k", "v"):
        block.set(part, _slice_linear(block.get(part), cols, 0))
    block.set("o", _slice_linear(block.get("o"), cols, 1))
    _set_head_count(block, len(keep))


def _cut_neurons(block: parts.Block, keep: torch.Tensor) -> None:
    """Keep only the FFN neurons `keep` of `block`: up-projection rows and down-projection columns."""
    block.set("up", _slice_linear(block.get("up"), keep, 0))
    block.set("down", _slice_linear(block.get("down"), keep, 1))


def structured(model: nn.Module, heads: float = 0.3, ffn: float = 0.3, score: str = "norm",
               tokenizer=None, inplace: bool = False) -> nn.Module:
    """A physically smaller copy: `heads` of every layer's attention heads and `ffn` of its FFN neurons removed.

    score="norm" ranks units by weight L2 norm; score="gradient" by |w * grad| on a few training batches
    (needs `tokenizer`). The removed rows/columns are gone from the Linear layers, so bytes and time drop.
    Works on BERT, RoBERTa, ELECTRA and DistilBERT; DeBERTa-v2 is refused with a ValueError.
    """
    heads = _check_fraction("heads", heads)
    ffn = _check_fraction("ffn", ffn)
    _check_choice("score", score, SCORES)
    if score == "gradient" and tokenizer is None:
        raise ValueError("score='gradient' runs a few training batches: pass tokenizer=... (or use score='norm').")
    _structured_blocks(model)  # refuse before copying
    out = _target(model, inplace)
    blocks = _structured_blocks(out)
    if score == "norm":
        def stat(w):
            return w.detach().float() ** 2
    else:
        taylor = _taylor(out, tokenizer)

        def stat(w):
            return taylor[id(w)]
    pruned_heads = {}
    for block in blocks:
        keep_h = _keep_top(_head_scores(block, stat), heads)
        keep_f = _keep_top(_ffn_scores(block, stat), ffn)
        pruned_heads[block.index] = sorted(set(range(block.n_heads)) - set(keep_h.tolist()))
        _cut_heads(block, keep_h)
        _cut_neurons(block, keep_f)
    # A record of what was cut (layer -> removed head indices). The config's head count and FFN width stay
    # those of the unpruned model: per-layer counts live on the modules (see shape_summary / parts.summary).
    out.config.pruned_heads = pruned_heads
    return out


def remove_head(query: nn.Linear, key: nn.Linear, value: nn.Linear, output: nn.Linear, head: int,
                head_size: int) -> tuple[nn.Linear, nn.Linear, nn.Linear, nn.Linear]:
    """New, smaller query/key/value/output layers without head `head` (the inputs are left as they were).

    Head h owns rows h*head_size .. (h+1)*head_size - 1 of query, key and value (weights and biases) and the
    same input columns of the output projection, whose bias stays whole.
    """
    n = query.out_features
    if head_size < 1 or n % head_size or not 0 <= head < n // head_size:
        raise ValueError(f"head must be in 0..{n // max(head_size, 1) - 1} for {n} outputs and head_size={head_size}.")
    keep = torch.tensor([i for i in range(n) if not head * head_size <= i < (head + 1) * head_size])
    return (_slice_linear(query, keep, 0), _slice_linear(key, keep, 0), _slice_linear(value, keep, 0),
            _slice_linear(output, keep, 1))


def drop_heads(model: nn.Module, heads: dict[int, list[int]], remove_fn=None, inplace: bool = False) -> nn.Module:
    """A copy without the listed attention heads ({layer index: [head, ...]}), each cut by `remove_fn`.

    `remove_fn(query, key, value, output, head, head_size)` returns the four smaller Linear layers (default
    `remove_head`; notebook 03 plugs in the learner's). Heads go highest index first, so the indices of the
    ones still to remove do not shift.
    """
    remove_fn = remove_head if remove_fn is None else remove_fn
    _structured_blocks(model)  # refuse before copying
    out = _target(model, inplace)
    blocks = _structured_blocks(out)
    pruned = {int(k): list(v) for k, v in (getattr(out.config, "pruned_heads", None) or {}).items()}
    for layer, drop in heads.items():
        if not 0 <= layer < len(blocks):
            raise ValueError(f"layer {layer} does not exist: the model has layers 0..{len(blocks) - 1}.")
        block = blocks[layer]
        d, n_heads = block.head_size, block.n_heads
        if len(set(drop)) >= n_heads or any(not 0 <= h < n_heads for h in drop):
            raise ValueError(f"layer {layer} has heads 0..{n_heads - 1}; remove some of them, and keep at least one.")
        for h in sorted(set(drop), reverse=True):
            old = tuple(block.get(p) for p in parts.ATTENTION)
            new = remove_fn(*old, h, d)
            n = old[0].out_features - d
            if (not isinstance(new, tuple) or len(new) != 4 or not all(isinstance(m, nn.Linear) for m in new)
                    or any(m.out_features != n for m in new[:3]) or new[3].in_features != n
                    or new[3].out_features != old[3].out_features):
                raise ValueError("remove_fn must return four nn.Linear layers (query, key, value, output) with "
                                 f"{n} query/key/value outputs and {n} output-projection inputs.")
            dev, dtype = old[0].weight.device, old[0].weight.dtype
            for part, m in zip(parts.ATTENTION, new):
                block.set(part, m.to(dev, dtype))  # a learner's function may build its layers on the CPU
            _set_head_count(block, n_heads - 1)
            n_heads -= 1
        pruned[layer] = sorted(set(pruned.get(layer, [])) | set(drop))
    out.config.pruned_heads = pruned
    return out


def shape_summary(model: nn.Module) -> pd.DataFrame:
    """Heads and FFN neurons left in every transformer layer."""
    return pd.DataFrame([{"layer": b.index, "heads": b.n_heads, "ffn_neurons": b.ffn_size}
                         for b in parts.blocks(model)])


# --- recovery: a short fine-tune ------------------------------------------------------------------

def _distill_loss(logits: torch.Tensor, teacher: nn.Module, batch, temperature: float) -> torch.Tensor:
    """`train.distill_loss` for a Batch (or an inputs dict): kept for callers that pass a whole batch."""
    return lk_train.distill_loss(logits, teacher, getattr(batch, "inputs", batch), temperature)


def recover(model: nn.Module, tokenizer, steps: int | None = None, lr: float = 1e-4, batch_size: int = 32,
            seed: int = 0, inplace: bool = False, keep_zeros: bool = True, teacher: nn.Module | None = None,
            temperature: float = 2.0, precision: str = "fp32") -> nn.Module:
    """Fine-tune a pruned copy for `steps` batches of the train split; zero weights stay zero (mask fixed).

    With `keep_zeros`, each prunable weight's zero pattern is re-applied after every step, so unstructured
    sparsity survives; a structurally pruned model has no zeros, so this is then plain fine-tuning.
    With a `teacher` (the unpruned model), the loss also pulls the pruned model's output distribution
    towards the teacher's (knowledge distillation at `temperature`), which carries more than the labels.
    Training runs in `labkit.core.train.fit`, on the model's device; `precision="bf16"` runs it under bf16 autocast
    (fp16 with loss scaling on CUDA), the weights staying fp32.
    """
    steps = (20 if fast_mode() else 100) if steps is None else steps
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}.")
    if teacher is not None and parts.device_of(teacher) != parts.device_of(model):
        raise ValueError(f"The teacher is on {parts.device_of(teacher)} and the model on "
                         f"{parts.device_of(model)}: move the teacher to the model's device first "
                         "(teacher.to(device)).")
    out = model if inplace else lk_train.copy_to_fit(model)  # the embedding fit freezes stays shared
    keep = {n: m.weight != 0 for n, m in prunable_linears(out).items()} if keep_zeros else {}
    split = data.split("train")
    # The optimizer step must not revive a pruned weight: re-apply the zero pattern after every step.
    lk_train.fit(out, tokenizer, split["text"], split["label"], steps, lr=lr, batch_size=batch_size, seed=seed,
                 teacher=teacher, temperature=temperature, precision=precision,
                 after_step=(lambda _step: apply_masks(out, keep)) if keep else None, desc="recovery")
    return out.eval()


# --- sensitivity scan and a per-layer plan ---------------------------------------------------------

def _group_of(name: str, by: str) -> str:
    if by == "type":
        return re.sub(r"\.\d+\.", ".*.", name)
    match = re.search(r"\.(\d+)\.", name)
    return f"layer {match.group(1)}" if match else name


def groups(model: nn.Module, by: str = "type") -> dict[str, list[str]]:
    """Prunable layer names grouped by type (query of every layer, ...) or by transformer layer index."""
    _check_choice("by", by, ("type", "layer"))
    out: dict[str, list[str]] = {}
    for name in prunable_linears(model):
        out.setdefault(_group_of(name, by), []).append(name)
    return out


def _quick_ci(model: nn.Module, tokenizer, limit: int, split: str = data.QUICK_SPLIT) -> dict:
    """Accuracy on the first `limit` snippets of `split`, with its 95% Wilson interval."""
    preds = measure.predictions(model, tokenizer, split, limit)
    return measure.accuracy_ci(preds, data.split(split, limit)["label"].to_numpy())


def _quick_accuracy(model: nn.Module, tokenizer, limit: int, split: str = data.QUICK_SPLIT) -> float:
    return measure.accuracy(model, tokenizer, split, limit)


def prune_plan(model: nn.Module, plan: dict[str, float], inplace: bool = False, include_head: bool = False,
               mask_fn=None) -> nn.Module:
    """Magnitude-prune each named layer at its own sparsity (layer scope), e.g. a plan from `plan_from_scan`.

    A plan that names the classification head is refused unless `include_head=True`; `mask_fn(w, sparsity)`
    supplies each layer's keep-mask instead of the built-in ranking (see `masks`).
    """
    out = _target(model, inplace)
    layers = prunable_linears(out, include_head)
    head = {n for n in prunable_linears(out, include_head=True) if n not in prunable_linears(out)}
    keep = {}
    for name, s in plan.items():
        if name in head and not include_head:
            raise ValueError(f"{name!r} belongs to the classification head: its few weights carry the whole "
                             "decision, so pruning it costs far more than it saves. Leave it out of the plan "
                             "(or pass include_head=True if you mean it).")
        if name not in layers:
            raise ValueError(f"{name!r} is not a prunable layer; names are like {next(iter(layers))!r}.")
        s = _check_fraction(f"sparsity of {name}", s)
        w = layers[name].weight
        keep[name] = (_mask_from_fn(mask_fn, w, s, name) if mask_fn is not None
                      else smallest_mask(w.detach().abs(), round(s * w.numel())))
    return apply_masks(out, keep)


def sensitivity(model: nn.Module, tokenizer, sparsities=(0.5, 0.7, 0.9), by: str = "type",
                limit: int = QUICK_LIMIT, split: str = "val") -> pd.DataFrame:
    """Accuracy drop (points) when only one group of layers is magnitude-pruned, for each group and sparsity.

    The scan chooses a plan, so it is measured on the validation split (`split="test"` is refused): the test
    split then reports the chosen plan once, unbiased. The scan remembers its split in `scan.attrs["split"]`.
    """
    split = data.selection_split(split)
    base = _quick_accuracy(model, tokenizer, limit, split)
    rows = []
    for group, names in groups(model, by).items():
        for s in sparsities:
            pruned = prune_plan(model, {n: s for n in names})
            rows.append({"group": group, "sparsity": s,
                         "drop_points": 100 * (base - _quick_accuracy(pruned, tokenizer, limit, split))})
    scan = pd.DataFrame(rows).pivot(index="group", columns="sparsity", values="drop_points")
    scan.attrs["split"] = split
    return scan


def _drop_at(row: pd.Series, s: float) -> float:
    """A group's accuracy drop at sparsity s, interpolated through (0, 0) and the scanned points (made monotone)."""
    xs = np.array([0.0] + [float(c) for c in row.index])
    ys = np.maximum.accumulate(np.array([0.0] + [max(0.0, float(v)) for v in row.to_numpy()]))
    return float(np.interp(s, xs, ys))


def plan_from_scan(model: nn.Module, scan: pd.DataFrame, total: float, by: str = "type",
                   step: float = 0.05) -> dict[str, float]:
    """Per-layer sparsities averaging `total` over all weights, chosen greedily from the scan.

    Starting from zero, repeatedly give `step` more sparsity to the group whose scanned accuracy drop grows
    least per weight removed, never past the highest scanned sparsity, until the weighted mean is `total`.
    A scan made on the test split (`scan.attrs["split"] == "test"`) is refused: choose on validation.
    """
    total = _check_fraction("total", total)
    data.selection_split(scan.attrs.get("split", "val"))  # a scan measured on the test split must not choose
    layers = prunable_linears(model)
    members = groups(model, by)
    missing = set(members) - set(scan.index)
    if missing:
        raise ValueError(f"The scan has no row for {sorted(missing)}; scan with the same `by` ({by!r}).")
    size = {g: sum(layers[n].weight.numel() for n in names) for g, names in members.items()}
    cap = max(float(c) for c in scan.columns)
    if total > cap:
        raise ValueError(f"total={total} is above the highest scanned sparsity {cap}; scan higher sparsities.")
    n_all = sum(size.values())
    level = {g: 0.0 for g in members}
    left = total * n_all  # weights still to remove
    while left > 0.5:
        def cost(g):
            s = min(cap, level[g] + step)
            return (_drop_at(scan.loc[g], s) - _drop_at(scan.loc[g], level[g])) / (size[g] * (s - level[g]))
        g = min((g for g in members if level[g] < cap - 1e-9), key=cost)
        delta = min(step, cap - level[g], left / size[g])
        level[g] += delta
        left -= delta * size[g]
    return {n: level[g] for g, names in members.items() for n in names}


# --- the slider ---------------------------------------------------------------------------------

def _quick_setup() -> tuple:
    """The baseline, its tokenizer and its predictions on the quick subset (shared by every slider)."""
    return lk_model.shared_baseline()


def _ranked(base: nn.Module, scope: str, method: str) -> dict[str, torch.Tensor]:
    """`base`'s prunable weights ranked once, lowest score first (per layer, or all together); where memory is tight
    (`memory.tight`) only the last ranking is kept: each one is as large as the weights."""
    return (_ranking_last if memory.tight() else _ranking)(base, scope, method)


def _rank(base: nn.Module, scope: str, method: str) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)  # the same scores `masks` draws for the random control
    scores = {n: _scores(m.weight, method, gen).reshape(-1) for n, m in prunable_linears(base).items()}
    # int32 positions: half the memory of argsort's int64, and every layer has far fewer than 2**31 weights.
    if scope == "global":
        return {"*": torch.argsort(torch.cat(list(scores.values())), stable=True).to(torch.int32)}
    return {n: torch.argsort(s, stable=True).to(torch.int32) for n, s in scores.items()}


_ranking, _ranking_last = lru_cache(maxsize=4)(_rank), lru_cache(maxsize=1)(_rank)


@lru_cache(maxsize=1)
def _scratch(base: nn.Module) -> nn.Module:
    return _target(base, inplace=False)


def _pruned_baseline(sparsity: float, scope: str, method: str) -> nn.Module:
    """What `magnitude(baseline, ...)` returns, computed faster for the sliders.

    The ranking is sorted once per scope and method, and the result is written into one reused copy of the
    baseline (overwritten by the next call), so a slider move only zeroes the first k weights of the ranking.
    """
    sparsity = _check_fraction("sparsity", sparsity)
    _check_choice("scope", scope, SCOPES)
    _check_choice("method", method, METHODS)
    base = _quick_setup()[0]
    src, dst = prunable_linears(base), prunable_linears(_scratch(base))
    order = _ranked(base, scope, method)
    with torch.no_grad():
        if scope == "global":
            flat = torch.cat([m.weight.reshape(-1) for m in src.values()])
            flat[order["*"][:round(sparsity * flat.numel())]] = 0
            start = 0
            for n, m in dst.items():
                m.weight.copy_(flat[start:start + m.weight.numel()].view_as(m.weight))
                start += m.weight.numel()
        else:
            for n, m in dst.items():
                m.weight.copy_(src[n].weight)
                m.weight.view(-1)[order[n][:round(sparsity * m.weight.numel())]] = 0
    return _scratch(base)


@lru_cache(maxsize=256)
def sparsity_point(sparsity: float, scope: str = "layer", method: str = "magnitude") -> dict:
    """Prune the baseline and measure it on the quick subset: accuracy (95% interval), agreement, weights left."""
    base, tok, reference = _quick_setup()
    pruned = _pruned_baseline(sparsity, scope, method)  # = magnitude(base, sparsity, scope, method), faster
    preds = measure.predictions(pruned, tok, data.QUICK_SPLIT, QUICK_LIMIT)
    ci = measure.accuracy_ci(preds, data.split(data.QUICK_SPLIT, QUICK_LIMIT)["label"].to_numpy())
    counts = sparsity_of(pruned)
    return {"sparsity": sparsity, "scope": scope, "method": method, "accuracy": ci["accuracy"],
            "accuracy_lo": ci["lo"], "accuracy_hi": ci["hi"],
            "agreement": measure.agreement(preds, reference), "remaining_weights": counts["remaining"],
            "total_weights": counts["total"]}


def curve(sparsities, scope: str = "layer", method: str = "magnitude") -> pd.DataFrame:
    """sparsity_point over several sparsities, as a table (one row each)."""
    return pd.DataFrame([sparsity_point(float(s), scope, method) for s in sparsities])


# --- the main job ---------------------------------------------------------------------------------

def tour(model: nn.Module, tokenizer, reference: np.ndarray, limit: int | None = None,
         steps: int | None = None) -> list[results.Result]:
    """Rows for `python -m labkit tour`: 50% global magnitude (zeros, no speed) and structured pruning, timed
    beside `model`. `limit` (test snippets) and `steps` (recovery batches) shrink the work for tests only."""
    steps = (20 if fast_mode() else 60) if steps is None else steps
    t0 = time.perf_counter()
    # Each pruned copy is new here, so it is trained in place: no second copy while it trains.
    sparse = recover(magnitude(model, 0.5, "global"), tokenizer, steps, inplace=True)
    small = recover(structured(model, heads=1 / 3, ffn=0.7), tokenizer, steps, inplace=True)
    kept, shape = shape_summary(small).iloc[0], shape_summary(model).iloc[0]
    label = f"{kept['heads']}/{shape['heads']} heads, {kept['ffn_neurons']}/{shape['ffn_neurons']} FFN"
    models = {f"prune: 50% global magnitude +{steps} steps": sparse, f"prune: {label} +{steps} steps": small}
    notes = dict(zip(models, ["zeros in dense tensors: same bytes, same speed as fp32",
                              f"structured: smaller Linear layers ({time.perf_counter() - t0:.0f} s)"]))
    return results.evaluate_group(models, tokenizer, results.reference_on(model, tokenizer, reference, limit), model,
                                  notes, limit=limit)


def recovery_curve(model: nn.Module, tokenizer, sparsities, steps: int | None = None, scope: str = "global",
                   limit: int = QUICK_LIMIT) -> pd.DataFrame:
    """Quick-subset accuracy (with 95% intervals) at each sparsity before and after `recover` (mask kept fixed)."""
    rows = []
    for s in sparsities:
        # a copy sharing the embedding that recover freezes where memory is tight (train.copy_to_fit), pruned in place
        pruned = magnitude(lk_train.copy_to_fit(model), float(s), scope, inplace=True)
        before = _quick_ci(pruned, tokenizer, limit)
        tuned = recover(pruned, tokenizer, steps, inplace=True)  # measured before: no second copy to train
        after = _quick_ci(tuned, tokenizer, limit)
        rows.append({"sparsity": float(s), "before": before["accuracy"], "before_lo": before["lo"],
                     "before_hi": before["hi"], "after": after["accuracy"], "after_lo": after["lo"],
                     "after_hi": after["hi"], "still_sparse": sparsity_of(tuned)["sparsity"]})
    return pd.DataFrame(rows)


def structured_table(model: nn.Module, tokenizer, settings, steps: int | None = None,
                     limit: int = QUICK_LIMIT) -> pd.DataFrame:
    """For each (heads, ffn) fraction pair: quick accuracy before/after recovery (95% interval), bytes, b32 latency.

    Latencies are timed interleaved (`measure.compare_latency`); one run's speedup is a measurement, not a
    guarantee, on a busy machine."""
    models, rows = {"dense": model}, []
    for heads, ffn in settings:
        small = structured(lk_train.copy_to_fit(model), heads=heads, ffn=ffn, inplace=True)  # as in recovery_curve
        name = f"-{heads:.0%} heads, -{ffn:.0%} FFN"
        rows.append({"model": name, "accuracy_pruned": _quick_accuracy(small, tokenizer, limit)})
        models[name] = recover(small, tokenizer, steps, inplace=True)  # measured before: no second copy to train
    lat = measure.compare_latency(models, tokenizer, 32)
    out = pd.DataFrame([{"model": "dense", "accuracy_pruned": None}] + rows)
    cis = [_quick_ci(m, tokenizer, limit) for m in models.values()]
    out["accuracy"] = [c["accuracy"] for c in cis]
    out["accuracy_lo"], out["accuracy_hi"] = [c["lo"] for c in cis], [c["hi"] for c in cis]
    out["bytes"] = [measure.serialized_bytes(m) for m in models.values()]
    out["b32_ms"] = [lat[n]["median_ms"] for n in models]
    out["speedup_b32"] = out["b32_ms"].iloc[0] / out["b32_ms"]
    out["size_ratio"] = out["bytes"].iloc[0] / out["bytes"]
    return out
