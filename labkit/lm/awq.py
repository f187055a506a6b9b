"""AWQ as mit-han-lab/llm-awq runs it: scales searched per input group on a module's output, folded into the layer
before, then per-group clipping searched on each layer's output (Lin et al., 2023; awq/quantize/auto_scale.py,
auto_clip.py).

Block by block, on the float model's calibration inputs:
- one scale vector s per group of layers reading one tensor: q/k/v (scored on the attention's output, folded into
  input_layernorm's weight), gate/up (scored on the MLP's output, folded into post_attention_layernorm), down
  (scored on its own output, folded into up_proj's output rows), and o_proj (folded into v_proj's output rows)
  only where v_proj and o_proj have the same shape: with grouped-query attention, as SmolLM2's, one value head
  feeds several query heads and the reference skips it;
- s = mean|x|^alpha, alpha = 0, 1/grid, ..., (grid - 1)/grid, normalised so that sqrt(max s * min s) = 1; the alpha
  whose rounded weights rtn(W * s) / s change the module's output least wins;
- `auto_clip`: for every layer but q and k (their errors pass through the q.k product), each group's weights are
  clipped to +-max|w| * (1 - i/grid) for the i (at most half the range cut) whose rounded output is closest.

The folded float model computes what the original computes (to rounding): the multiply by s sits in the weights.
After rounding, every layer is a plain Linear on its grid: nothing multiplies at run time. The grid is labkit's
(min-max with a float offset, GGUF Q4_1's), where llm-awq's has an integer zero point.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from labkit.lm.blocks import BlockInputs, blocks_of, first_block_inputs, run_block
from labkit.lm.weightonly import check_bits, check_grid, rtn

# (layer before, layers scaled, module whose output scores the scales; None: the one layer itself)
SCALE_GROUPS = (("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "self_attn"),
                ("self_attn.v_proj", ("self_attn.o_proj",), None),
                ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"), "mlp"),
                ("mlp.up_proj", ("mlp.down_proj",), None))
NO_CLIP = ("q_proj", "k_proj")  # llm-awq: "due to qk bmm, it is hard to clip precisely"


@dataclass
class AWQResult:
    """What the search chose, per block: the alpha of each scaled group and which groups were skipped."""
    alphas: dict[str, float]
    skipped: list[str]


def _get(block: nn.Module, name: str) -> nn.Module:
    out = block
    for part in name.split("."):
        out = getattr(out, part)
    return out


def _set_weight(module: nn.Module, w: torch.Tensor) -> None:
    # a new Parameter, never a write into the old tensor: a copy that shares tensors with the input model stays safe
    module.weight = nn.Parameter(w.to(module.weight.dtype), requires_grad=False)


def _run(module: nn.Module, x: torch.Tensor, kwargs: dict) -> torch.Tensor:
    y = module(x, **kwargs)  # the attention takes the block's arguments (RoPE's cos and sin, the mask); others none
    return y[0] if isinstance(y, tuple) else y


def _record(block: nn.Module, inputs: BlockInputs,
            names: list[str]) -> tuple[dict[str, list[torch.Tensor]], BlockInputs]:
    """The inputs each named layer of the block sees, batch by batch ([b, seq, in] each), and the block's outputs."""
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    handles = [_get(block, n).register_forward_pre_hook(lambda m, a, n=n: seen[n].append(a[0].detach()))
               for n in names]
    try:
        following = run_block(block, inputs)
    finally:
        for h in handles:
            h.remove()
    return seen, following


@torch.no_grad()
def search_scale(module: nn.Module, layers: list[nn.Linear], xs: list[torch.Tensor], kwargs: list[dict],
                 absmean: torch.Tensor, bits: int, group_size: int, grid: int = 20) -> tuple[torch.Tensor, float]:
    """llm-awq's `_search_module_scale`: the scales s [in] (and their alpha) for which `module`'s output on the
    inputs `xs` moves least when `layers` hold rtn(W * s) / s instead of W. The layers are left as they were."""
    originals = [fc.weight.data for fc in layers]
    expected = [_run(module, x, kw) for x, kw in zip(xs, kwargs)]
    best = (float("inf"), None, 0.0)
    try:
        for k in range(grid):
            alpha = k / grid
            s = absmean.pow(alpha).clamp(min=1e-4)
            s = s / (s.max() * s.min()).sqrt()
            for fc, w in zip(layers, originals):
                fc.weight.data = (rtn(w.float() * s, bits, group_size) / s).to(w.dtype)
            total = sum(float((_run(module, x, kw) - y).float().pow(2).sum())
                        for x, kw, y in zip(xs, kwargs, expected))
            loss = total / sum(y.numel() for y in expected)
            if loss < best[0]:
                best = (loss, s, alpha)
    finally:
        for fc, w in zip(layers, originals):
            fc.weight.data = w
    return best[1], best[2]


def fold_scale(block: nn.Module, prev: str, names: tuple[str, ...], s: torch.Tensor) -> None:
    """llm-awq's `apply_scale`: the layer before divides its output channels by s, the scaled layers multiply their
    input columns by s. A norm's weight (and bias) or a Linear's output rows take the division."""
    before = _get(block, prev)
    if isinstance(before, nn.Linear):
        _set_weight(before, before.weight.detach().float() / s[:, None])
    else:
        _set_weight(before, before.weight.detach().float() / s)
    if getattr(before, "bias", None) is not None:
        before.bias = nn.Parameter(before.bias.detach() / s.to(before.bias.dtype), requires_grad=False)
    for n in names:
        fc = _get(block, n)
        _set_weight(fc, fc.weight.detach().float() * s[None, :])


@torch.no_grad()
def auto_clip(weight: torch.Tensor, x: torch.Tensor, bits: int, group_size: int, grid: int = 20,
              max_shrink: float = 0.5, tokens: int = 512, rows: int = 256) -> torch.Tensor:
    """llm-awq's `auto_clip_layer`: the clipping bound [out, groups] of each group, max|w| * (1 - i/grid) for the
    i < max_shrink * grid whose rounded group gives the closest partial outputs on `tokens` of the inputs x."""
    out_f, in_f = weight.shape
    groups = in_f // group_size
    x = x.reshape(-1, in_f).float()
    x = x[::max(1, len(x) // tokens)].reshape(-1, groups, group_size)
    best_all = []
    for r in range(0, out_f, rows):  # output rows in batches: the partial outputs are [rows, tokens, groups]
        w = weight[r:r + rows].float().reshape(-1, groups, group_size)
        top = w.abs().amax(dim=-1)  # [rows, groups]
        expected = torch.einsum("ngk,ogk->ong", x, w)
        best, least = top.clone(), torch.full_like(top, float("inf"))
        for i in range(int(max_shrink * grid)):
            bound = top * (1 - i / grid)
            clipped = torch.maximum(torch.minimum(w, bound[..., None]), -bound[..., None])
            q = rtn(clipped.reshape(len(w), in_f), bits, group_size).reshape(w.shape)
            err = (torch.einsum("ngk,ogk->ong", x, q) - expected).pow(2).mean(dim=1)
            better = err < least
            least[better], best[better] = err[better], bound[better]
        best_all.append(best)
    return torch.cat(best_all)


def apply_clip(layer: nn.Linear, bound: torch.Tensor, group_size: int) -> None:
    """Every group of the layer's weight clamped to +-its bound [out, groups]."""
    w = layer.weight.detach().float().reshape(len(bound), bound.shape[1], group_size)
    _set_weight(layer, torch.maximum(torch.minimum(w, bound[..., None]), -bound[..., None]).reshape(layer.weight.shape))


def _first_sequences(inputs: BlockInputs, xs: list[torch.Tensor], seqs: int) -> tuple[list, list]:
    """The first `seqs` calibration sequences of recorded inputs, with their block arguments: the search's sample."""
    out_x, out_kw, left = [], [], seqs
    for x, kw in zip(xs, inputs.kwargs):
        if left <= 0:
            break
        b = x.shape[0]
        take = min(b, left)
        out_x.append(x[:take])
        out_kw.append({k: (v[:take] if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == b > 1 else v)
                       for k, v in kw.items()})
        left -= take
    return out_x, out_kw


@torch.no_grad()
def awq_fold(model: nn.Module, ids: torch.Tensor, bits: int, group_size: int, grid: int = 20, clip: bool = True,
             search_seqs: int = 2, on_block=None) -> AWQResult:
    """Search AWQ's scales block by block on the calibration ids [n, seq], fold them in, and (with `clip`) clip
    every group: `model` is changed, its changed tensors replaced by new ones (never written into). Rounding the
    result with rtn gives AWQ's quantized model. The scales are scored on the first `search_seqs` sequences (the
    reference uses all; two keep the search minutes long on a CPU), their mean |x| on all of them. `on_block(index,
    block)` is called as each block is done (to round it, while the later blocks are searched)."""
    bits, grid = check_bits(bits), check_grid(grid)
    inputs = first_block_inputs(model, ids)
    result = AWQResult({}, [])
    for index, block in enumerate(blocks_of(model)):
        # the next block reads the float block's outputs, as llm-awq's does
        feats, following = _record(block, inputs, [group[0] for _, group, _ in SCALE_GROUPS])
        plans = []
        for prev, group, inspect in SCALE_GROUPS:
            layers = [_get(block, n) for n in group]
            if prev == "self_attn.v_proj" and _get(block, prev).weight.shape != layers[0].weight.shape:
                result.skipped.append(f"{index}.{group[0]}")
                continue
            xs = feats[group[0]]
            absmean = torch.cat([x.reshape(-1, x.shape[-1]) for x in xs]).abs().float().mean(dim=0)
            sx, skw = _first_sequences(inputs, xs, search_seqs)
            skw = skw if inspect == "self_attn" else [{} for _ in sx]
            module = layers[0] if inspect is None else _get(block, inspect)
            s, alpha = search_scale(module, layers, sx, skw, absmean, bits, group_size, grid)
            plans.append((prev, group, s))
            result.alphas[f"{index}.{group[0]}"] = alpha
        for prev, group, s in plans:  # searched on the block as it was, folded after, as apply_scale does
            fold_scale(block, prev, group, s)
            feats[group[0]] = [x / s.to(x.dtype) for x in feats[group[0]]]
        if clip:
            for prev, group, _ in SCALE_GROUPS:
                x = torch.cat([f.reshape(-1, f.shape[-1]) for f in feats[group[0]]])
                for n in group:
                    if not n.endswith(NO_CLIP):
                        layer = _get(block, n)
                        apply_clip(layer, auto_clip(layer.weight.detach(), x, bits, group_size, grid), group_size)
        if on_block is not None:
            on_block(index, block)
        inputs = following
    return result
