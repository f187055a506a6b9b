"""W8A8 for a causal LM, done as the papers do it: int8 weights with one scale per output channel, int8 activations
with one scale per token (computed at run time), an integer matmul, the head kept in float; then SmoothQuant.

torch's dynamic int8 (labkit.quant.int8) gives each weight matrix one scale, each activation batch one 7-bit scale
(reduce_range) and quantizes the tied head too: on SmolLM2 that collapses perplexity. Per-channel weights and
per-token activations remove two of those causes; the third is the activations' outlier channels, a few inputs
hundreds of times larger than the rest, which stretch every token's grid. SmoothQuant (Xiao et al. 2023,
mit-han-lab/smoothquant's `smooth_lm`) divides each input channel j by

    s_j = max|X_j| ** alpha / max|W_j| ** (1 - alpha)

and multiplies the weights' column j by s_j: the product is unchanged, the activations are flatter and the weights
a little less so. For q/k/v and gate/up the division folds into the RMSNorm before them (its weight / s), so the
smoothed float model computes exactly what the original did and costs nothing at run time. alpha is chosen on
validation text, never the test text.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from labkit.core import data, parts, settings
from labkit.core.memory import release
from labkit.lm.calibration import input_pass
from labkit.lm.perplexity import Perplexity, perplexity
from labkit.lm.slm import check_causal_lm, decoder_linears, eval_text
from labkit.quant import affine

# The norm whose output each group of Linear layers reads (the first layer names the group), in every family of
# labkit.lm.slm.DECODER_FAMILIES: SmoothQuant folds the group's 1 / s into that norm's weight. o_proj and down_proj
# read no norm's output, so they are not smoothed (as smooth_lm leaves them for Llama).
NORM_BEFORE = {"self_attn.q_proj": "input_layernorm", "mlp.gate_proj": "post_attention_layernorm"}
QMIN, QMAX = affine.qrange(8, "symmetric", restricted=True)  # -127 .. 127: 0.0 exact, the grid symmetric


ACTIVATIONS = ("token", "tensor")


def quantize_per_token(x: torch.Tensor, granularity: str = "token") -> tuple[torch.Tensor, torch.Tensor]:
    """int8 codes [n, in] of rows x [n, in], each row (token) on its own symmetric grid, and the scales [n, 1];
    `granularity="tensor"` puts every row on one grid (the ablation: one scale per call, as torch's dynamic int8)."""
    if granularity not in ACTIVATIONS:
        raise ValueError(f"Unknown activation granularity {granularity!r}; choose one of {ACTIVATIONS}.")
    block = affine.block_size_for(x, "channel" if granularity == "token" else "tensor")
    scale, zero_point = affine.choose_qparams_affine(x, "symmetric", block, QMIN, QMAX)
    codes = affine.quantize_affine(x, block, scale, zero_point, QMIN, QMAX)
    return codes, scale.reshape(-1, 1).expand(len(x), 1)


class W8A8Linear(nn.Module):
    """A Linear layer run in int8: int8 weights with a float32 scale per output channel (symmetric), each call's
    activations made int8 per token, multiplied as integers (torch._int_mm, int32 sums) and scaled back."""

    def __init__(self, linear: nn.Linear, activations: str = "token", weights: str = "channel",
                 smoothing: torch.Tensor | None = None):
        super().__init__()
        self.activations = activations
        w = linear.weight.detach().float()
        if smoothing is not None:  # SmoothQuant's s [in]: the columns scaled before rounding, one layer at a time
            w = w * smoothing.to(w)[None, :]
        block = affine.block_size_for(w, weights)
        scale, zero_point = affine.choose_qparams_affine(w, "symmetric", block, QMIN, QMAX)
        codes = affine.quantize_affine(w, block, scale, zero_point, QMIN, QMAX)
        self.in_features, self.out_features = w.shape[1], w.shape[0]
        # [out, in] as nn.Linear keeps it: torch._int_mm reads its transposed view twice as fast at batch 1 as a
        # contiguous [in, out] copy on this CPU, and as fast for a prompt
        self.register_buffer("weight_codes", codes)
        self.register_buffer("weight_scale", scale.reshape(1, -1).expand(1, w.shape[0]).contiguous())  # [1, out]
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        codes, x_scale = quantize_per_token(x.reshape(-1, self.in_features), self.activations)
        y = torch._int_mm(codes, self.weight_codes.T).float() * x_scale * self.weight_scale
        y = y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, int8 weights and activations (per {self.activations})"


def w8a8(model: nn.Module, inplace: bool = False, activations: str = "token", head: bool = False,
         weights: str = "channel", act_absmax: dict[str, torch.Tensor] | None = None,
         alpha: float | None = None) -> nn.Module:
    """A copy sharing no tensor with `model` (the model itself with `inplace`) whose decoder Linear layers are
    W8A8Linear; the embeddings and the (tied) head stay in float. With `act_absmax` (activation_absmax on
    calibration text), SmoothQuant at `alpha` (default 0.5) is folded in first, one layer at a time (no float copy
    of the model). The ablations, each one of torch's dynamic int8 choices: `activations="tensor"` (one scale per
    call), `weights="tensor"` (one scale per matrix) and `head=True` (the head in int8 too)."""
    if weights not in ("channel", "tensor"):
        raise ValueError(f"weights must be 'channel' or 'tensor', got {weights!r}.")
    settings.flags(inplace=inplace, head=head)
    parts.require_fp32(model, "W8A8 conversion")
    quantize_per_token(torch.zeros(1, 1), activations)  # an unknown granularity refused before any copy
    if act_absmax is None and alpha is not None:
        raise ValueError("alpha is SmoothQuant's: pass act_absmax=activation_absmax(model, ids) with it, or leave "
                         "alpha out for W8A8 without smoothing.")
    smoothing = ({}, {}) if act_absmax is None else smoothing_plan(model, act_absmax, 0.5 if alpha is None else alpha)
    norms, columns = smoothing
    out = model if inplace else parts.copy_sharing(model)  # the Linear layers are replaced, never written
    with torch.no_grad():
        for name, s in norms.items():  # a new weight on the copy's norm: the original's is never written
            norm = out.get_submodule(name)
            norm.weight = nn.Parameter(norm.weight.detach() / s.to(norm.weight), requires_grad=False)
    for name, layer in decoder_linears(out).items():
        parts.set_module(out, name, W8A8Linear(layer, activations, weights, columns.get(name)))
    if head:  # the embedding table keeps the float weight it shares with the head
        out.set_output_embeddings(W8A8Linear(out.get_output_embeddings(), activations, weights))
    return (out if inplace else parts.unshare(out, model)).eval()


@torch.inference_mode()
def activation_absmax(model: nn.Module, ids: torch.Tensor, batch_size: int = 4) -> dict[str, torch.Tensor]:
    """max |x| of every input channel of every decoder Linear layer over calibration ids [n, seq_len], by layer name
    (layers fed the same tensor share one record): SmoothQuant's activation statistic."""
    seen: dict[str, torch.Tensor] = {}

    def observe(name: str, x: torch.Tensor) -> None:
        amax = x.abs().amax(dim=0)
        seen[name] = amax if name not in seen else torch.maximum(seen[name], amax)

    sources = input_pass(model, ids, observe, batch_size)
    release()
    return {name: seen[src] for name, src in sources.items()}


def smoothing_factors(act_absmax: torch.Tensor, weights: list[torch.Tensor], alpha: float) -> torch.Tensor:
    """SmoothQuant's s [in] for the layers `weights` ([out_i, in] each) that read one input whose channels reach
    `act_absmax` [in]: max|X_j| ** alpha / max|W_j| ** (1 - alpha), W_j every weight of input j in those layers."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1] (0: no smoothing of the activations, 1: all of it moved to the "
                         f"weights), got {alpha}.")
    w_absmax = torch.cat([w.detach().abs().float() for w in weights]).amax(dim=0).clamp(min=1e-5)
    # clamped as smooth_lm does: a channel never seen active (max 0) keeps a finite, nonzero factor
    return (act_absmax.float().clamp(min=1e-5).pow(alpha) / w_absmax.pow(1 - alpha)).clamp(min=1e-5)


def smoothing_plan(model: nn.Module, act_absmax: dict[str, torch.Tensor],
                   alpha: float) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """SmoothQuant's factors for a causal LM, by module name: ({norm: s}, {Linear: s}). For q/k/v and gate/up, the
    preceding RMSNorm's weight is divided by s and the layers' weight columns multiplied by it (smooth_lm's rule)."""
    fam = check_causal_lm(model)
    parts.require_fp32(model, "SmoothQuant")
    layers = decoder_linears(model)
    if set(layers) - set(act_absmax):
        raise ValueError("act_absmax does not cover every decoder layer of this model: record it on this model with "
                         "activation_absmax(model, ids).")
    norms, columns = {}, {}
    for i in range(len(model.get_submodule(fam.blocks))):
        block = f"{fam.blocks}.{i}"
        for group in fam.same_input:
            if group[0] not in NORM_BEFORE:
                continue
            names = [f"{block}.{name}" for name in group]
            s = smoothing_factors(act_absmax[names[0]], [layers[n].weight for n in names], alpha)
            norms[f"{block}.{NORM_BEFORE[group[0]]}"] = s
            columns |= dict.fromkeys(names, s)
    return norms, columns


def smooth(model: nn.Module, act_absmax: dict[str, torch.Tensor], alpha: float = 0.5,
           inplace: bool = False) -> nn.Module:
    """A copy of a causal LM (the model itself with `inplace`) with SmoothQuant folded in, in float (smoothing_plan):
    it computes what `model` computes (to rounding); `act_absmax` comes from activation_absmax on calibration text."""
    settings.flags(inplace=inplace)
    norms, columns = smoothing_plan(model, act_absmax, alpha)
    out = model if inplace else parts.clone(model)
    with torch.no_grad():
        for name, s in norms.items():
            weight = out.get_submodule(name).weight
            weight.div_(s.to(weight))
        for name, s in columns.items():
            weight = out.get_submodule(name).weight
            weight.mul_(s.to(weight)[None, :])
    return out


def search_alpha(model: nn.Module, tokenizer, act_absmax: dict[str, torch.Tensor],
                 alphas: Sequence[float] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8), tokens: int | None = None,
                 chunk: int | None = None) -> tuple[float, dict[float, Perplexity]]:
    """SmoothQuant's alpha chosen on the validation reviews (never the test text perplexity is reported on): the
    alpha whose smoothed W8A8 model has the lowest perplexity there, and each alpha's perplexity."""
    text = eval_text(data.selection_split("val"))
    found = {}
    for alpha in alphas:
        q = w8a8(model, act_absmax=act_absmax, alpha=float(alpha))
        found[float(alpha)] = perplexity(q, tokenizer, text, tokens=tokens, chunk=chunk)
        del q
        release()
    best = min(found, key=lambda a: found[a].ppl)
    return best, found


def outlier_ratio(act_absmax: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per distinct input (named by its first layer): the largest channel's max |x| over the median channel's, how
    far the outliers stretch every token's grid."""
    seen, out = set(), {}
    for name, amax in act_absmax.items():
        if id(amax) not in seen:
            seen.add(id(amax))
            out[name] = float(amax.max() / amax.median().clamp(min=1e-8))
    return out
