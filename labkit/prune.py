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

from . import data, fast_mode, measure
from . import model as lk_model

SCOPES = ("layer", "global")
METHODS = ("magnitude", "random")
SCORES = ("norm", "gradient")
QUICK_LIMIT = data.QUICK_LIMIT  # the quick subset the slider and the sensitivity scan evaluate on

SEMI_STRUCTURED_NOTE = (
    "2:4 sparsity zeroes two of every four weights. On a CPU the weights stay a dense float32 matrix, so the "
    "file and the latency do not change at all. Only a GPU with sparse tensor cores (NVIDIA compute capability "
    ">= 8.0, fp16/bf16) can skip the zeros, via torch.sparse.to_sparse_semi_structured.")


# --- finding the layers ---------------------------------------------------------------------------

def _head_module_ids(model: nn.Module) -> set[int]:
    """ids of the task head's Linear layers: outside the HF base model, or in its pooler."""
    base = getattr(model, "base_model", model)
    inside = {id(m) for m in base.modules()} if base is not model else {id(m) for m in model.modules()}
    pooler = getattr(base, "pooler", None)
    pooled = {id(m) for m in pooler.modules()} if isinstance(pooler, nn.Module) else set()
    return {id(m) for m in model.modules() if isinstance(m, nn.Linear) and (id(m) not in inside or id(m) in pooled)}


def prunable_linears(model: nn.Module, include_head: bool = False) -> dict[str, nn.Linear]:
    """The Linear layers pruning acts on, by name (the classification head only with `include_head=True`)."""
    head = set() if include_head else _head_module_ids(model)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and id(m) not in head}
    if not layers:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layers to prune; pass a transformer "
                         "classifier such as the one from labkit.model.load_baseline().")
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
    return model if inplace else lk_model.clone(model)


# --- unstructured masks ---------------------------------------------------------------------------

def _smallest_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean keep-mask: False at the k lowest scores (exactly k), like torch.nn.utils.prune's topk."""
    keep = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    if k > 0:
        keep[torch.topk(scores.reshape(-1), k, largest=False).indices] = False
    return keep.view_as(scores)


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
    scores = {n: _scores(m.weight, method, gen) for n, m in layers.items()}
    if scope == "layer":
        return {n: _smallest_mask(s, round(sparsity * s.numel())) for n, s in scores.items()}
    flat = torch.cat([s.reshape(-1) for s in scores.values()])
    keep = _smallest_mask(flat, round(sparsity * flat.numel()))
    out, start = {}, 0
    for n, s in scores.items():
        out[n] = keep[start:start + s.numel()].view_as(s)
        start += s.numel()
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
    """The same 50%-style global L1 pruning done by torch.nn.utils.prune (mask kept as a buffer, weight recomputed)."""
    import torch.nn.utils.prune as tprune

    sparsity = _check_fraction("sparsity", sparsity)
    out = _target(model, inplace)
    params = [(m, "weight") for m in prunable_linears(out).values()]
    tprune.global_unstructured(params, pruning_method=tprune.L1Unstructured, amount=sparsity)
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

def _blocks(model: nn.Module) -> list[nn.Module]:
    """Transformer layers shaped like BERT's (attention.self/.output, intermediate, output): BERT, RoBERTa..."""
    found = []
    for m in model.modules():
        att = getattr(m, "attention", None)
        if (att is not None and hasattr(att, "self") and hasattr(getattr(att, "output", None), "dense")
                and hasattr(getattr(m, "intermediate", None), "dense") and hasattr(getattr(m, "output", None), "dense")
                and hasattr(att.self, "attention_head_size")):
            found.append(m)
    if not found:
        raise ValueError(f"{type(model).__name__} has no BERT-style attention layers (attention.self with "
                         "query/key/value, intermediate.dense, output.dense); structured pruning needs an "
                         "encoder such as BERT or RoBERTa.")
    return found


def _slice_linear(layer: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A smaller Linear keeping `index` of its outputs (dim=0) or of its inputs (dim=1)."""
    w = layer.weight.detach().index_select(dim, index.to(layer.weight.device)).clone()
    out_f, in_f = w.shape
    new = nn.Linear(in_f, out_f, bias=layer.bias is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if layer.bias is not None:
            new.bias.copy_(layer.bias.detach() if dim == 1 else layer.bias.detach()[index.to(w.device)])
    return new


def _head_scores(block: nn.Module, stat) -> torch.Tensor:
    """One importance per head: the statistic summed over its query/key/value rows and output columns."""
    att = block.attention
    d = att.self.attention_head_size
    rows = sum(stat(getattr(att.self, p).weight).sum(1) for p in ("query", "key", "value"))
    cols = stat(att.output.dense.weight).sum(0)
    return (rows + cols).reshape(-1, d).sum(1)


def _ffn_scores(block: nn.Module, stat) -> torch.Tensor:
    """One importance per FFN neuron: its input row's statistic times its output column's."""
    return stat(block.intermediate.dense.weight).sum(1) * stat(block.output.dense.weight).sum(0)


def _taylor(model: nn.Module, tokenizer, batches: int = 4, batch_size: int = 32) -> dict[int, torch.Tensor]:
    """|w * dL/dw| per weight, accumulated over a few training batches (first-order Taylor importance)."""
    work = lk_model.clone(model).train()
    for p in work.parameters():
        p.grad = None
    dev = measure._device_of(work)
    train = data.split("train", limit=batches * batch_size)
    for batch in data.batches(train["text"], train["label"], tokenizer, batch_size, shuffle_seed=0):
        batch = batch.to(dev)
        work(**batch.inputs, labels=batch.labels).loss.backward()
    # Map the copy's gradients back onto the original's parameters, by name.
    grads = dict(work.named_parameters())
    return {id(p): (p.detach() * grads[n].grad).abs() for n, p in model.named_parameters()
            if grads[n].grad is not None}


def _keep_top(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """Sorted indices of the units to keep after removing round(fraction * n) of the lowest (>= 1 kept)."""
    n = scores.numel()
    drop = min(round(fraction * n), n - 1)
    return torch.sort(torch.topk(scores, n - drop).indices).values


def structured(model: nn.Module, heads: float = 0.3, ffn: float = 0.3, score: str = "norm",
               tokenizer=None, inplace: bool = False) -> nn.Module:
    """A physically smaller copy: `heads` of every layer's attention heads and `ffn` of its FFN neurons removed.

    score="norm" ranks units by weight L2 norm; score="gradient" by |w * grad| on a few training batches
    (needs `tokenizer`). The removed rows/columns are gone from the Linear layers, so bytes and time drop.
    """
    heads = _check_fraction("heads", heads)
    ffn = _check_fraction("ffn", ffn)
    _check_choice("score", score, SCORES)
    if score == "gradient" and tokenizer is None:
        raise ValueError("score='gradient' runs a few training batches: pass tokenizer=... (or use score='norm').")
    out = _target(model, inplace)
    blocks = _blocks(out)
    if score == "norm":
        def stat(w):
            return w.detach().float() ** 2
    else:
        taylor = _taylor(out, tokenizer)

        def stat(w):
            return taylor[id(w)]
    pruned_heads = {}
    for i, block in enumerate(blocks):
        att, d = block.attention, block.attention.self.attention_head_size
        keep_h = _keep_top(_head_scores(block, stat), heads)
        keep_f = _keep_top(_ffn_scores(block, stat), ffn)
        pruned_heads[i] = sorted(set(range(att.self.num_attention_heads)) - set(keep_h.tolist()))
        cols = (keep_h[:, None] * d + torch.arange(d)).reshape(-1)
        for name in ("query", "key", "value"):
            setattr(att.self, name, _slice_linear(getattr(att.self, name), cols, 0))
        att.output.dense = _slice_linear(att.output.dense, cols, 1)
        # BERT's attention reads these two attributes to reshape q/k/v and size the output.
        att.self.num_attention_heads = len(keep_h)
        att.self.all_head_size = len(keep_h) * d
        block.intermediate.dense = _slice_linear(block.intermediate.dense, keep_f, 0)
        block.output.dense = _slice_linear(block.output.dense, keep_f, 1)
    out.config.pruned_heads = pruned_heads  # a record of what was cut (layer -> removed head indices)
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
    out = _target(model, inplace)
    blocks = _blocks(out)
    pruned = {int(k): list(v) for k, v in (getattr(out.config, "pruned_heads", None) or {}).items()}
    for layer, drop in heads.items():
        if not 0 <= layer < len(blocks):
            raise ValueError(f"layer {layer} does not exist: the model has layers 0..{len(blocks) - 1}.")
        att = blocks[layer].attention
        d, n_heads = att.self.attention_head_size, att.self.num_attention_heads
        if len(set(drop)) >= n_heads or any(not 0 <= h < n_heads for h in drop):
            raise ValueError(f"layer {layer} has heads 0..{n_heads - 1}; remove some of them, and keep at least one.")
        for h in sorted(set(drop), reverse=True):
            old = (att.self.query, att.self.key, att.self.value, att.output.dense)
            new = remove_fn(*old, h, d)
            n = att.self.query.out_features - d
            if (not isinstance(new, tuple) or len(new) != 4 or not all(isinstance(m, nn.Linear) for m in new)
                    or any(m.out_features != n for m in new[:3]) or new[3].in_features != n
                    or new[3].out_features != old[3].out_features):
                raise ValueError("remove_fn must return four nn.Linear layers (query, key, value, output) with "
                                 f"{n} query/key/value outputs and {n} output-projection inputs.")
            att.self.query, att.self.key, att.self.value, att.output.dense = new
            att.self.num_attention_heads -= 1
            att.self.all_head_size = att.self.num_attention_heads * d
        pruned[layer] = sorted(set(pruned.get(layer, [])) | set(drop))
    out.config.pruned_heads = pruned
    return out


def shape_summary(model: nn.Module) -> pd.DataFrame:
    """Heads and FFN neurons left in every transformer layer."""
    return pd.DataFrame([{"layer": i, "heads": b.attention.self.num_attention_heads,
                          "ffn_neurons": b.intermediate.dense.out_features}
                         for i, b in enumerate(_blocks(model))])


# --- recovery: a short fine-tune ------------------------------------------------------------------

def _distill_loss(logits: torch.Tensor, teacher: nn.Module, batch, temperature: float) -> torch.Tensor:
    """KL divergence from the teacher's softened predictions to the student's (scaled by T^2, as usual)."""
    with torch.no_grad():
        target = torch.softmax(measure._logits(teacher(**batch.inputs)) / temperature, -1)
    log_student = torch.log_softmax(logits / temperature, -1)
    return torch.nn.functional.kl_div(log_student, target, reduction="batchmean") * temperature ** 2


def recover(model: nn.Module, tokenizer, steps: int | None = None, lr: float = 1e-4, batch_size: int = 32,
            seed: int = 0, inplace: bool = False, keep_zeros: bool = True, teacher: nn.Module | None = None,
            temperature: float = 2.0) -> nn.Module:
    """Fine-tune a pruned copy for `steps` batches of the train split; zero weights stay zero (mask fixed).

    With `keep_zeros`, each prunable weight's zero pattern is re-applied after every step, so unstructured
    sparsity survives; a structurally pruned model has no zeros, so this is then plain fine-tuning.
    With a `teacher` (the unpruned model), the loss also pulls the pruned model's output distribution
    towards the teacher's (knowledge distillation at `temperature`), which carries more than the labels.
    """
    steps = (20 if fast_mode() else 100) if steps is None else steps
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}.")
    out = _target(model, inplace)
    keep = {n: m.weight != 0 for n, m in prunable_linears(out).items()} if keep_zeros else {}
    dev = measure._device_of(out)
    train = data.split("train")
    opt = torch.optim.AdamW(out.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / max(1, steps)))
    torch.manual_seed(seed)
    out.train()
    if teacher is not None:
        teacher.eval()  # no dropout in the targets
    done, epoch = 0, 0
    while done < steps:
        for batch in data.batches(train["text"], train["label"], tokenizer, batch_size, shuffle_seed=seed + epoch):
            if done >= steps:
                break
            batch = batch.to(dev)
            result = out(**batch.inputs, labels=batch.labels)
            loss = result.loss
            if teacher is not None:
                loss = 0.5 * loss + 0.5 * _distill_loss(result.logits, teacher, batch, temperature)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(out.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            apply_masks(out, keep)
            done += 1
        epoch += 1
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
                      else _smallest_mask(w.detach().abs(), round(s * w.numel())))
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


@lru_cache(maxsize=4)
def _ranked(base: nn.Module, scope: str, method: str) -> dict[str, torch.Tensor]:
    """`base`'s prunable weights ranked once, lowest score first (per layer, or all together)."""
    gen = torch.Generator().manual_seed(0)  # the same scores `masks` draws for the random control
    scores = {n: _scores(m.weight, method, gen).reshape(-1) for n, m in prunable_linears(base).items()}
    # int32 positions: half the memory of argsort's int64, and every layer has far fewer than 2**31 weights.
    if scope == "global":
        return {"*": torch.argsort(torch.cat(list(scores.values())), stable=True).to(torch.int32)}
    return {n: torch.argsort(s, stable=True).to(torch.int32) for n, s in scores.items()}


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
         steps: int | None = None) -> list[measure.Result]:
    """Rows for `python -m labkit tour`: 50% global magnitude (zeros, no speed) and structured pruning, timed
    beside `model`. `limit` (test snippets) and `steps` (recovery batches) shrink the work for tests only."""
    steps = (20 if fast_mode() else 60) if steps is None else steps
    t0 = time.perf_counter()
    sparse = recover(magnitude(model, 0.5, "global"), tokenizer, steps)
    small = recover(structured(model, heads=1 / 3, ffn=0.7), tokenizer, steps)
    kept, shape = shape_summary(small).iloc[0], shape_summary(model).iloc[0]
    label = f"{kept['heads']}/{shape['heads']} heads, {kept['ffn_neurons']}/{shape['ffn_neurons']} FFN"
    models = {f"prune: 50% global magnitude +{steps} steps": sparse, f"prune: {label} +{steps} steps": small}
    notes = dict(zip(models, ["zeros in dense tensors: same bytes, same speed as fp32",
                              f"structured: smaller Linear layers ({time.perf_counter() - t0:.0f} s)"]))
    return measure.evaluate_group(models, tokenizer, measure.reference_on(model, tokenizer, reference, limit), model,
                                  notes, limit=limit)


def recovery_curve(model: nn.Module, tokenizer, sparsities, steps: int | None = None, scope: str = "global",
                   limit: int = QUICK_LIMIT) -> pd.DataFrame:
    """Quick-subset accuracy (with 95% intervals) at each sparsity before and after `recover` (mask kept fixed)."""
    rows = []
    for s in sparsities:
        pruned = magnitude(model, float(s), scope)
        tuned = recover(pruned, tokenizer, steps)
        before, after = _quick_ci(pruned, tokenizer, limit), _quick_ci(tuned, tokenizer, limit)
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
        small = structured(model, heads=heads, ffn=ffn)
        tuned = recover(small, tokenizer, steps)
        name = f"-{heads:.0%} heads, -{ffn:.0%} FFN"
        models[name] = tuned
        rows.append({"model": name, "accuracy_pruned": _quick_accuracy(small, tokenizer, limit)})
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
