"""Weight-only, per-group quantization of a causal LM's decoder Linear layers: round-to-nearest, GPTQ-style, AWQ-style.

Each method rounds a weight to a `bits`-bit grid per group of `group_size` consecutive inputs of a row:
w ~ offset + scale * q, q in 0..2^bits - 1, with the group's minimum as its offset. That is GGUF Q4_1's grid
(the format SmolLM2's file comes in) and the one torch's CPU int4 kernel computes with; GPTQ's and AWQ's packed
formats use an integer zero point instead (labkit.quant.quantize's grid), which in general misses Q4_1's levels. The
methods return float weights on the grid (fake quantization: the numbers a packed model computes with);
`packed_bytes` counts what the packed format stores, and `Int4Linear` runs real 4-bit codes with torch's kernel.
`GroupLinear` keeps a method's codes (a byte each) and rebuilds its float weight at every call: the same outputs in
a third of the memory, for the slider's copies (`point`).

- `rtn`: round every group to its min-max grid, independently.
- `gptq`: quantize the columns one at a time; each column's rounding error is spread over the columns not yet
  quantized through the inverse Hessian H^-1 (H = X^T X of calibration inputs), so the layer's *output* on those
  inputs moves as little as possible (Frantar et al., 2022, GPTQ, Algorithm 1 without its lazy batching).
- `awq`: scale input channel j by s_j = mean|x_j|^alpha before rounding and divide it back after, so channels
  that see large activations get a finer grid; alpha in [0, 1] is searched to minimise the output error on
  calibration activations (Lin et al., 2023, AWQ, per layer). alpha = 0 is plain RTN, so it never does worse there.

Calibration inputs are recorded once from the float model (`calibration_stats`) and reused for every setting.
"""

from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from labkit import fast_mode
from labkit.core.memory import release
from labkit.core.parts import copy_with, device_of, set_module
from labkit.lm import slm
from labkit.lm.slm import check_causal_lm, decoder_linears, input_source, token_ids

BITS = tuple(range(2, 9))
METHODS = ("rtn", "gptq", "awq")
STORES = ("float", "codes")


# --- checks ---------------------------------------------------------------------------------------------------------

def check_bits(bits) -> int:
    """`bits` as an int, after checking it is one of 2..8; a ValueError otherwise."""
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in BITS:
        raise ValueError(f"bits must be an integer from 2 to 8 for weight-only quantization, got {bits!r}.")
    return bits


def check_group(in_features: int, group_size, name: str = "this layer") -> int:
    """`group_size`, after checking it is a positive integer that divides `in_features`; a ValueError otherwise."""
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive integer, got {group_size!r}.")
    if in_features % group_size:
        divisors = [d for d in (16, 32, 64, 128, 256) if in_features % d == 0]
        raise ValueError(f"group_size {group_size} does not divide the {in_features} inputs of {name}; use a "
                         f"divisor of {in_features} such as {divisors or [in_features]}.")
    return group_size


# --- the grid: scale and offset per group ----------------------------------------------------------------------

def group_params(w: torch.Tensor, bits: int, group_size: int, half: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and offset of each group of `w` [out, in]: two [out, in // group_size] tensors.

    The group's min-max range cut into 2^bits - 1 steps: offset = min, scale = (max - min) / (2^bits - 1), both
    rounded to float16 as the packed formats store them (`half=False` keeps them float32, as notebook 08's
    exercise does).
    """
    store = (lambda t: t.half().float()) if half else (lambda t: t)
    groups = w.float().reshape(w.shape[0], -1, group_size)
    lo, hi = store(groups.amin(dim=-1)), groups.amax(dim=-1)
    # 2^-24, the smallest float16 above 0, keeps a constant group's scale from rounding to 0
    scale = store(((hi - lo) / (2 ** bits - 1)).clamp(min=2 ** -24))
    return scale, lo


def quantize_codes(w: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, bits: int,
                   group_size: int) -> torch.Tensor:
    """Integer codes in [0, 2^bits - 1] (as floats): clamp(round((w - offset) / scale)), per group."""
    groups = w.float().reshape(w.shape[0], -1, group_size)  # [out, groups, group_size]; scale is [out, groups]
    codes = torch.clamp(torch.round((groups - offset[..., None]) / scale[..., None]), 0, 2 ** bits - 1)
    return codes.reshape(w.shape)


def dequantize(codes: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, group_size: int) -> torch.Tensor:
    """Floats back from codes: offset + codes * scale, per group."""
    groups = codes.float().reshape(codes.shape[0], -1, group_size)
    return (offset[..., None] + groups * scale[..., None]).reshape(codes.shape)


# --- the three methods ------------------------------------------------------------------------------------------

def rtn(weight: torch.Tensor, bits: int, group_size: int, half: bool = True) -> torch.Tensor:
    """Round-to-nearest: every group of `group_size` inputs on its own min-max grid of 2^bits levels.

    `half`: scale and offset stored as float16 (the packed formats), or kept float32 (`half=False`)."""
    return dequantize(*_rtn_codes(weight, bits, group_size, half), group_size).to(weight.dtype)


def _rtn_codes(weight: torch.Tensor, bits: int, group_size: int,
               half: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes, scale, offset) of `rtn`: the weight it returns is dequantize of these."""
    bits = check_bits(bits)
    check_group(weight.shape[1], group_size)
    scale, offset = group_params(weight, bits, group_size, half)
    return quantize_codes(weight, scale, offset, bits, group_size), scale, offset


def hessian_factor(H: torch.Tensor, damp: float = 0.01) -> torch.Tensor:
    """Upper Cholesky factor U of (H + damp * mean(diag H) * I)^-1: row i says how column i's error is spread."""
    H = H.double().clone()
    dead = torch.diag(H) == 0  # inputs never seen in calibration: give them a unit curvature
    H[dead, dead] = 1.0
    H += damp * torch.diag(H).mean() * torch.eye(len(H), dtype=H.dtype)
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(H))
    return torch.linalg.cholesky(inverse, upper=True).float()


def gptq(weight: torch.Tensor, H: torch.Tensor, bits: int, group_size: int, damp: float = 0.01,
         factor: torch.Tensor | None = None, step=None) -> torch.Tensor:
    """GPTQ-style: quantize column by column, spreading each column's error over the remaining columns.

    H = X^T X / n of the layer's calibration inputs X [n, in]. A group's grid is chosen when its first column
    comes up, from the weights as updated so far. `factor`: hessian_factor(H, damp), when already computed.
    `step`: the one-column update to use (gptq_column's signature; a learner's own, in notebook 08).
    """
    bits = check_bits(bits)
    check_group(weight.shape[1], group_size)
    if H.shape != (weight.shape[1], weight.shape[1]):
        raise ValueError(f"H must be [in, in] = {(weight.shape[1],) * 2} for this weight, got {tuple(H.shape)}.")
    if not 0 <= damp < 1:
        raise ValueError(f"damp must be in [0, 1), got {damp!r}.")
    Q, _, _ = _gptq(weight, H, bits, group_size, damp, factor, step or gptq_column)
    return Q.to(weight.dtype)


def _gptq(weight: torch.Tensor, H: torch.Tensor, bits: int, group_size: int, damp: float,
          factor: torch.Tensor | None, step) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """gptq's float32 weight Q, with the scale and offset [out, in // group_size] each group was rounded on."""
    W = weight.detach().float().clone()
    # calibration statistics live on the CPU; the weights may be on a GPU
    U = (hessian_factor(H, damp) if factor is None else factor).to(W.device)
    Q = torch.zeros_like(W)
    grids = []
    for start in range(0, W.shape[1], group_size):
        end = start + group_size
        scale, offset = group_params(W[:, start:end], bits, group_size)
        grids.append((scale, offset))
        errors = torch.zeros(W.shape[0], group_size, device=W.device)
        for i in range(start, end):
            Q[:, i], W[:, i + 1:end] = step(W[:, i], W[:, i + 1:end], U[i, i:end], scale[:, 0], offset[:, 0], bits)
            errors[:, i - start] = (W[:, i] - Q[:, i]) / U[i, i]
        # The columns after the group get all of its columns' corrections at once, in one matrix product: the
        # same sums as correcting them after every column (up to float rounding), with far less memory traffic
        # (GPTQ's "lazy batch" updates).
        W[:, end:] -= errors @ U[start:end, end:]
    return Q, torch.cat([g[0] for g in grids], dim=1), torch.cat([g[1] for g in grids], dim=1)


def gptq_column(column: torch.Tensor, rest: torch.Tensor, u_row: torch.Tensor, scale: torch.Tensor,
                offset: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One GPTQ step: the column rounded to its group's grid, and the rest of the group corrected for its error.

    `column` [out] is column i of the weights as updated so far, `rest` [out, k] the k columns after it in its
    group, `u_row` = U[i, i:i + k + 1] (U: hessian_factor). The error divided by U[i, i] moves column j by
    -error * U[i, j] (GPTQ, eq. 3: the change of the not-yet-quantized weights that keeps the layer's output on
    the calibration inputs closest). Returns (quantized column, corrected rest); the inputs are left unchanged.
    """
    q = offset + torch.clamp(torch.round((column - offset) / scale), 0, 2 ** bits - 1) * scale
    err = (column - q) / u_row[0]
    return q, rest - err[:, None] * u_row[None, 1:]


def output_error(weight: torch.Tensor, new_weight: torch.Tensor, x: torch.Tensor) -> float:
    """Mean squared change of the layer's output x @ W^T over the inputs `x` [n, in] when W becomes `new_weight`."""
    return float(((x.float().to(weight.device) @ (new_weight.float() - weight.float()).T) ** 2).mean())


def awq_scales(weight: torch.Tensor, act_absmean: torch.Tensor, x: torch.Tensor, bits: int, group_size: int,
               grid: int = 20) -> tuple[torch.Tensor, float]:
    """AWQ-style per-input-channel scales s = mean|x|^alpha, alpha on a grid in [0, 1], and the alpha chosen.

    Each candidate quantizes W * s, divides s back out, and is scored by the output error on the calibration
    activations `x` [n, in]. alpha = 0 (s = 1) is plain RTN.
    """
    bits = check_bits(bits)
    check_group(weight.shape[1], group_size)
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 1:
        raise ValueError(f"grid must be a positive integer (the number of alpha steps), got {grid!r}.")
    W = weight.detach().float()
    mean, x = act_absmean.float().clamp(min=1e-5).to(W.device), x.to(W.device)  # statistics are kept on the CPU
    best = (math.inf, torch.ones_like(mean), 0.0)
    for k in range(grid + 1):
        alpha = k / grid
        s = mean ** alpha
        s = s / (s.max() * s.min()).sqrt()  # centre the scales around 1 (as AWQ does); the grid is scale-free
        err = output_error(W, rtn(W * s, bits, group_size) / s, x)
        if err < best[0]:
            best = (err, s, alpha)
    return best[1], best[2]


def awq(weight: torch.Tensor, act_absmean: torch.Tensor, x: torch.Tensor, bits: int, group_size: int,
        grid: int = 20) -> torch.Tensor:
    """AWQ-style weight: rtn(W * s) / s with the searched per-input-channel scales s (see awq_scales)."""
    s, _ = awq_scales(weight, act_absmean, x, bits, group_size, grid)
    return (rtn(weight.float() * s, bits, group_size) / s).to(weight.dtype)


# --- a layer that keeps the codes ---------------------------------------------------------------------------------

class GroupLinear(nn.Module):
    """A Linear layer that stores what a weight-only method produced: integer codes (one byte each), a scale and an
    offset per group, and optionally AWQ's per-input scales s; it rebuilds the float weight at every call.

    It computes exactly what the method's float weight computes, in about a third of its memory (a byte per code
    and two float32 numbers per group, against four bytes per weight): the slider points of notebook 08 keep one
    of these copies beside the float model. Rebuilding costs time at every call, which is why `quantize_model`
    returns float weights by default (faster to generate with).
    """

    def __init__(self, linear: nn.Linear, codes: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor,
                 group_size: int, in_scale: torch.Tensor | None = None):
        super().__init__()
        self.in_features, self.out_features, self.group_size = linear.in_features, linear.out_features, group_size
        self.dtype = linear.weight.dtype
        self.register_buffer("codes", codes.to(torch.uint8))  # bits <= 8: every code fits a byte
        self.register_buffer("scale", scale)
        self.register_buffer("offset", offset)
        self.register_buffer("in_scale", in_scale)
        self.bias = linear.bias

    @property
    def weight(self) -> torch.Tensor:
        """The float weight, rebuilt from the codes (a new tensor each time)."""
        w = dequantize(self.codes, self.scale, self.offset, self.group_size)
        return (w if self.in_scale is None else w / self.in_scale).to(self.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight.to(x.dtype), self.bias)


def _group_linear(layer: nn.Linear, method: str, bits: int, group_size: int, stats: InputStats | None,
                  factor: torch.Tensor | None, grid: int, damp: float) -> GroupLinear:
    """`layer` quantized by `method`, kept as codes: its weight is what quantize_model's float copy would hold."""
    w = layer.weight.detach()
    if method == "rtn":
        return GroupLinear(layer, *_rtn_codes(w, bits, group_size), group_size)
    if method == "awq":
        s, _ = awq_scales(w, stats.absmean, stats.sample, bits, group_size, grid)
        return GroupLinear(layer, *_rtn_codes(w.float() * s, bits, group_size), group_size, in_scale=s)
    Q, scale, offset = _gptq(w, stats.H, bits, group_size, damp, factor, gptq_column)
    # Q's every entry is offset + code * scale, computed as dequantize computes it: the codes give Q back exactly
    return GroupLinear(layer, quantize_codes(Q, scale, offset, bits, group_size), scale, offset, group_size)


# --- calibration ---------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=4)
def _upper_mask(n: int) -> torch.Tensor:
    return torch.ones(n, n, dtype=torch.bool).triu()  # 2.4 MB for SmolLM2's widest input (1536)


@dataclass
class InputStats:
    """What calibration saw at one Linear layer's input: H = X^T X / n (GPTQ), mean |x| per channel and a sample of
    token activations (AWQ).

    H is symmetric, so only its upper triangle is kept (`upper`), and `H` unpacks it: SmolLM2-135M's H matrices
    take 0.20 GB instead of 0.40 GB, in a notebook that also holds the model and a quantized copy.
    """

    upper: torch.Tensor  # H's upper triangle, row by row: [in * (in + 1) / 2]
    absmean: torch.Tensor  # [in]
    sample: torch.Tensor  # [keep, in]: every stride-th token
    tokens: int

    @classmethod
    def of(cls, H: torch.Tensor, absmean: torch.Tensor, sample: torch.Tensor, tokens: int) -> "InputStats":
        """The record of a full, symmetric H [in, in]."""
        return cls(H[_upper_mask(len(H))], absmean, sample, tokens)

    @property
    def H(self) -> torch.Tensor:
        """H [in, in], unpacked (a new tensor each time): the upper triangle, mirrored below the diagonal."""
        n = len(self.absmean)
        full = self.upper.new_zeros(n, n)
        full[_upper_mask(n)] = self.upper
        return full + full.triu(1).T  # exact: each entry below the diagonal is one copied value

    def factor(self, damp: float = 0.01) -> torch.Tensor:
        """hessian_factor(H, damp). Not kept: for a whole model the factors would double the memory H takes
        (quantize_model shares one per input among the layers that read it, for the length of one call)."""
        return hessian_factor(self.H, damp)


def calibration_ids(tokenizer, texts: str | Sequence[str] | None, tokens: int | None = None,
                    seq_len: int = 256) -> torch.Tensor:
    """Calibration token ids [tokens // seq_len, seq_len] from `texts`; a ValueError for empty text."""
    if texts is None or isinstance(texts, str) and not texts.strip() or \
            not isinstance(texts, str) and not any(str(t).strip() for t in texts):
        raise ValueError("The calibration text is empty: GPTQ-style and AWQ-style quantization need some text to "
                         "record layer inputs on, e.g. labkit.lm.slm.calibration_texts().")
    if tokenizer is None:
        raise ValueError("Pass the model's tokenizer to turn the calibration text into tokens.")
    # 4096 by default: with 1024, GPTQ fitted SmolLM2's calibration text and did worse than RTN on other text
    tokens = tokens or (2048 if fast_mode() else 4096)
    if tokens < seq_len:
        raise ValueError(f"tokens ({tokens}) must be at least seq_len ({seq_len}).")
    return token_ids(tokenizer, texts, tokens // seq_len * seq_len).reshape(-1, seq_len)


@torch.inference_mode()
def calibration_stats(model: nn.Module, ids: torch.Tensor, keep: int = 256,
                      batch_size: int = 4) -> dict[str, InputStats]:
    """Inputs of every decoder Linear layer on the calibration token ids [n, seq_len], from one pass of the model.

    Layers fed the same tensor (q, k, v; gate, up) share one record.
    """

    layers = decoder_linears(model)
    if ids.dim() != 2 or ids.numel() == 0:
        raise ValueError(f"ids must be a non-empty [sequences, tokens] tensor, got shape {tuple(ids.shape)}.")
    if keep < 1:
        raise ValueError(f"keep must be at least 1 (tokens of activations kept for AWQ's search), got {keep}.")
    stride = max(1, ids.numel() // keep)
    rows = -(-ids.numel() // stride)  # token indices 0, stride, 2 * stride, ... below ids.numel()
    acc: dict[str, dict] = {}

    def recorder(name: str, layer: nn.Linear):
        mask, n_in = _upper_mask(layer.in_features), layer.in_features
        # What is kept is allocated here, once, before the passes. Records grown between the passes' short-lived
        # tensors, or a transient copy here (int(mask.sum()) made an int64 one), left 0.25-0.3 GiB of freed pages
        # in malloc's heap in some runs and not others (full mode: +0.34 to +0.57 GiB, once +1.08; now +0.35-0.36).
        acc[name] = {"upper": torch.zeros(n_in * (n_in + 1) // 2), "abs": torch.zeros(n_in),
                     "sample": torch.empty(rows, n_in), "n": 0}

        def hook(module, args):
            x = args[0].detach().reshape(-1, n_in).float().cpu()
            rec = acc[name]
            rec["upper"] += (x.T @ x)[mask]  # H is symmetric: its upper triangle is all InputStats keeps
            rec["abs"] += x.abs().sum(dim=0)
            first = -(-rec["n"] // stride)  # the next sampled token, counted over all passes
            picked = x[(first * stride - rec["n"])::stride]
            rec["sample"][first:first + len(picked)] = picked
            rec["n"] += len(x)

        return layer.register_forward_pre_hook(hook)

    sources = {name: input_source(model, name) for name in layers}
    handles = [recorder(name, layers[name]) for name in set(sources.values())]
    try:
        for start in range(0, len(ids), batch_size):
            # the hooks see every layer's input; the logits are not needed (logits_to_keep=1 skips most of the head),
            # nor is the KV cache
            model(input_ids=ids[start:start + batch_size].to(device_of(model)), logits_to_keep=1, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    stats = {}
    for src, rec in acc.items():
        n = rec["n"]
        rec["upper"] /= n  # in place: H is the largest thing calibration keeps
        sample = rec["sample"][:keep] if rows == keep else rec["sample"][:keep].clone()
        stats[src] = InputStats(rec["upper"], rec["abs"] / n, sample, n)
    del acc
    release()  # the forward passes' activations were freed; hand their pages back
    return {name: stats[src] for name, src in sources.items()}


# --- the model ----------------------------------------------------------------------------------------------------

def quantize_model(model: nn.Module, method: str = "rtn", bits: int = 4, group_size: int = 32,
                   calib_texts: str | Sequence[str] | None = None, tokenizer=None, *,
                   stats: dict[str, InputStats] | None = None, inplace: bool = False, damp: float = 0.01,
                   grid: int = 20, store: str = "float") -> nn.Module:
    """A copy of a causal LM whose decoder Linear weights are quantized by `method` ('rtn', 'gptq' or 'awq').

    GPTQ and AWQ need calibration: `calib_texts` with the `tokenizer`, or `stats` from calibration_stats (reuse
    them across settings). The head and embeddings stay as they are. The input model is left unchanged unless
    `inplace`. `store="codes"` replaces each layer by a GroupLinear (the same outputs, a third of the memory,
    slower: it rebuilds the weight at every call); "float" writes the quantized float weights.
    """
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; choose one of {', '.join(map(repr, METHODS))}.")
    if store not in STORES:
        raise ValueError(f"store must be one of {', '.join(map(repr, STORES))}, got {store!r}.")
    bits = check_bits(bits)
    layers = decoder_linears(model)  # also checks it is a causal LM of a known family
    if any(isinstance(m, GroupLinear) for m in model.modules()):
        raise ValueError("This model's layers are already quantized (GroupLinear): quantize the float model.")
    for name, layer in layers.items():
        check_group(layer.in_features, group_size, name)
    if method != "rtn" and stats is None:
        stats = calibration_stats(model, calibration_ids(tokenizer, calib_texts))
    if method != "rtn" and set(layers) - set(stats):
        raise ValueError("stats do not cover every decoder layer of this model: record them on this model with "
                         "calibration_stats(model, ids).")
    if store == "codes":
        return _quantize_to_codes(model, method, bits, group_size, stats, inplace, damp, grid)
    out = model if inplace else _copy_for(model)
    factors: dict[int, torch.Tensor] = {}  # q, k and v read one input: one factor for the three, freed on return
    with torch.no_grad():
        for name, layer in decoder_linears(out).items():
            w = layer.weight
            if method == "rtn":
                new = rtn(w, bits, group_size)
            elif method == "gptq":
                key = id(stats[name])
                if key not in factors:
                    factors = {key: stats[name].factor(damp)}  # layers sharing an input come one after another
                new = gptq(w, stats[name].H, bits, group_size, damp, factor=factors[key])
            else:
                new = awq(w, stats[name].absmean, stats[name].sample, bits, group_size, grid)
            w.copy_(new)
    out.weightonly = {"method": method, "bits": bits, "group_size": group_size, "store": "float"}
    return out


def _quantize_to_codes(model: nn.Module, method: str, bits: int, group_size: int, stats: dict | None, inplace: bool,
                       damp: float, grid: int) -> nn.Module:
    """quantize_model with store="codes": each decoder Linear replaced by its GroupLinear."""
    out = model if inplace else copy_with(model)  # shared tensors: the layers are replaced, never written
    factors: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        for name, layer in decoder_linears(out).items():
            s = None if stats is None else stats[name]
            if method == "gptq" and id(s) not in factors:
                factors = {id(s): s.factor(damp)}
            set_module(out, name, _group_linear(layer, method, bits, group_size, s, factors.get(id(s)), grid, damp))
    out.weightonly = {"method": method, "bits": bits, "group_size": group_size, "store": "codes"}
    return out


def map_weights(model: nn.Module, fn, inplace: bool = False) -> nn.Module:
    """A copy of a causal LM whose decoder Linear weights are fn(weight) (a function [out, in] -> [out, in]).

    Notebook 08 passes a learner's own rounding through it. The input model is left unchanged unless `inplace`."""
    check_causal_lm(model)  # before a copy is made
    out = model if inplace else _copy_for(model)
    with torch.no_grad():
        for name, layer in decoder_linears(out).items():
            new = fn(layer.weight.detach().clone())
            if not isinstance(new, torch.Tensor) or new.shape != layer.weight.shape:
                raise ValueError(f"fn must return a tensor of the weight's shape {tuple(layer.weight.shape)} for "
                                 f"{name}, got {getattr(new, 'shape', type(new).__name__)}.")
            layer.weight.copy_(new)
    return out


def _copy_for(model: nn.Module) -> nn.Module:
    """A copy with its own decoder Linear weights, to be quantized in place, and every other tensor (embeddings,
    head, norms) shared with `model`: a quantized copy of SmolLM2-135M costs 0.43 GB, not 0.54 GB.

    The decoder weights are cloned all at once, before any quantizing, as deepcopy did: new weights allocated one
    by one between the quantizers' temporaries left the heap fragmented (measured: RTN's copy held 0.65 GB).
    """
    own = {id(layer.weight) for layer in decoder_linears(model).values()}
    return copy_with(model, lambda t: t.clone() if id(t) in own else t)


def point(model: nn.Module, tokenizer, method: str = "rtn", bits: int = 4, group_size: int = 32,
          stats: dict[str, InputStats] | None = None, base: dict | None = None, grid: int | None = None) -> dict:
    """One setting for a slider: perplexity of the quantized model (95% interval), its paired ratio to `base` (the
    decoded model's perplexity on the same chunks), the packed bytes of the quantized layers and the seconds taken.

    The quantized copy is freed before returning. GPTQ and AWQ need `stats` (calibration_stats)."""
    import time


    if method != "rtn" and stats is None:
        raise ValueError(f"{method} needs calibration: pass stats=calibration_stats(model, ids) (record them once).")
    t0 = time.perf_counter()
    grid = grid or (10 if fast_mode() else 20)
    # codes, not float weights: the copy takes a third of the memory, beside the float model and the statistics
    q = quantize_model(model, method, bits, group_size, stats=stats, grid=grid, store="codes")
    took = time.perf_counter() - t0
    r = slm.perplexity(q, tokenizer)
    del q
    release()  # hand the copy's pages back: a slider visits many points
    packed = packed_bytes(model, bits, group_size)
    out = {"method": method, "bits": bits, "group_size": group_size, **r, "packed_bytes": packed,
           "x_smaller": float_bytes(model) / packed, "quantize_s": took}
    if base is not None:
        c = slm.ppl_ratio(r, base)
        out |= {"ratio": c["ratio"], "ratio_lo": c["lo"], "ratio_hi": c["hi"]}
    return out


def _layers(model_or_layers) -> dict[str, nn.Linear]:
    if isinstance(model_or_layers, nn.Linear):
        return {"layer": model_or_layers}
    if isinstance(model_or_layers, dict):
        return model_or_layers
    return decoder_linears(model_or_layers)


def packed_bytes(model_or_layers, bits: int, group_size: int, channel_scales: bool = False) -> int:
    """Bytes of the layers packed: `bits`-bit codes, a float16 scale and a float16 offset per group (+ bias).

    A causal LM counts its decoder Linear layers. AWQ's per-input-channel scales fold into the previous layer in
    a real deployment (no bytes); `channel_scales=True` counts them as one float16 per input instead.
    """
    bits = check_bits(bits)
    total = 0
    for name, layer in _layers(model_or_layers).items():
        out_f, in_f = layer.weight.shape
        groups = out_f * (in_f // check_group(in_f, group_size, name))
        total += math.ceil(out_f * in_f * bits / 8) + 2 * groups + 2 * groups
        total += 2 * in_f if channel_scales else 0
        total += 0 if layer.bias is None else layer.bias.numel() * layer.bias.element_size()
    return total


def float_bytes(model_or_layers, dtype: torch.dtype = torch.float32) -> int:
    """Bytes of the same layers' weights and biases stored as `dtype` (float32: 4 bytes each)."""
    size = torch.finfo(dtype).bits // 8
    return sum(p.numel() * size for layer in _layers(model_or_layers).values() for p in layer.parameters())


# --- a real 4-bit kernel: torch's own CPU int4 matmul ------------------------------------------------------------

class Int4Linear(nn.Module):
    """A Linear whose weight is stored as packed 4-bit codes and run by torch's CPU int4 kernel.

    torch.ops.aten._weight_int4pack_mm_for_cpu computes with w = (q - 8) * scale + zero per group (a float
    zero); labkit's grid offset + q * scale is the same with zero = offset + 8 * scale, so it runs the very
    weights `rtn` gives.
    """

    def __init__(self, linear: nn.Linear, group_size: int = 32):
        super().__init__()
        w = linear.weight.detach().float()
        check_group(w.shape[1], group_size, "this layer")
        scale, offset = group_params(w, 4, group_size)
        codes = quantize_codes(w, scale, offset, 4, group_size).to(torch.int32)
        self.in_features, self.out_features, self.group_size = w.shape[1], w.shape[0], group_size
        self.register_buffer("packed", torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1))
        # [in // group, out, 2]: scale and zero per group, the layout the kernel reads
        self.register_buffer("scale_zero", torch.stack([scale, offset + 8 * scale], dim=-1).transpose(0, 1)
                             .contiguous())
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.packed, self.group_size,
                                                        self.scale_zero.to(x.dtype))
        y = y.reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias.to(y.dtype)


def int4_kernel(model: nn.Module, group_size: int = 32, inplace: bool = False) -> nn.Module:
    """A copy (the model itself with `inplace`) whose decoder Linear layers are Int4Linear (RTN 4-bit codes, torch's
    CPU int4 kernel)."""

    out = model if inplace else copy_with(model)  # shared tensors: the Linear layers are replaced, never written
    for name, layer in decoder_linears(out).items():
        set_module(out, name, Int4Linear(layer, group_size))
    return out.eval()


def buffer_bytes(model: nn.Module) -> int:
    """Bytes the decoder blocks really hold in memory (parameters and buffers: packed codes, scales, norms)."""
    fam = check_causal_lm(model)
    blocks = model.get_submodule(fam.blocks)
    return sum(t.numel() * t.element_size() for t in list(blocks.parameters()) + list(blocks.buffers()))


TORCHAO_CONFIGS = ("Int4WeightOnlyConfig", "IntxWeightOnlyConfig(int4)", "Int8DynamicActivationIntxWeightConfig(int4)")


def torchao_int4(model: nn.Module, config: str, group_size: int = 32) -> nn.Module:
    """A copy with torchao's `config` (one of TORCHAO_CONFIGS) on the decoder Linear layers; torchao's error if not.

    torchao is not a labkit dependency (it is measured where it imports); ImportError when it is not installed.
    """
    import warnings

    import torchao.quantization as ao
    from torchao.quantization.granularity import PerGroup

    makers = {
        "Int4WeightOnlyConfig": lambda: ao.Int4WeightOnlyConfig(group_size=group_size),
        "IntxWeightOnlyConfig(int4)": lambda: ao.IntxWeightOnlyConfig(weight_dtype=torch.int4,
                                                                      granularity=PerGroup(group_size)),
        "Int8DynamicActivationIntxWeightConfig(int4)": lambda: ao.Int8DynamicActivationIntxWeightConfig(
            weight_dtype=torch.int4, weight_granularity=PerGroup(group_size)),
    }
    if config not in makers:
        raise ValueError(f"Unknown torchao config {config!r}; choose one of {', '.join(makers)}.")
    names = set(decoder_linears(model))
    out = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ao.quantize_(out, makers[config](), filter_fn=lambda m, fqn: fqn in names)
    return out.eval()



def kernel_makers(model: nn.Module, group_size: int = 32) -> dict:
    """Every precision labkit can run a causal LM in besides fp32, as builders (name -> function making a copy).

    bf16, torch's dynamic int8, torch's CPU int4 kernel (RTN codes) on fp32 and on bf16 activations, and torchao's
    int4 configurations where torchao imports (it is not a labkit dependency).
    """
    import importlib.metadata
    import importlib.util


    check_causal_lm(model)
    makers = {"bf16": lambda: slm.bf16(model), "dynamic int8 (torch.ao)": lambda: slm.dynamic_int8(model),
              f"int4 g{group_size} torch kernel, fp32 activations": lambda: int4_kernel(model, group_size),
              f"int4 g{group_size} torch kernel, bf16 activations": lambda: int4_kernel(slm.bf16(model), group_size, inplace=True)}
    if importlib.util.find_spec("torchao") is not None:
        version = importlib.metadata.version("torchao")
        makers |= {f"torchao {version} {cfg} g{group_size}": (lambda cfg=cfg: torchao_int4(model, cfg, group_size))
                   for cfg in TORCHAO_CONFIGS}
    return makers


def try_kernel(make) -> tuple[nn.Module | None, str]:
    """(the model `make()` builds, "ran") when it runs one forward here; (None, "failed: <the error>") otherwise."""
    try:
        m = make()
        with torch.inference_mode():
            m(input_ids=(torch.arange(16)[None] + 100).to(next(m.parameters()).device))
        return m, "ran"
    except Exception as err:  # noqa: BLE001 - which precision fails here, and why, is the result
        return None, f"failed: {type(err).__name__}: {str(err).splitlines()[0][:200]}"


def kernel_speeds(model: nn.Module, tokenizer, makers: dict | None = None, **timing) -> "pd.DataFrame":
    """Each precision timed beside fp32, in pairs, one copy alive at a time: prefill and decode tokens/s and their
    ratios to fp32 in the same rounds (tokens_per_second; `timing` goes to it), or the error it failed with."""
    import pandas as pd


    rows = {}
    for name, make in (makers or kernel_makers(model)).items():
        m, status = try_kernel(make)
        row = {"status": status}
        if m is not None:
            t = slm.tokens_per_second({"fp32": model, name: m}, tokenizer, **timing)
            row |= t.loc[name].to_dict() | {
                "fp32_prefill_tok_s": t.loc["fp32", "prefill_tok_s"], "fp32_decode_tok_s": t.loc["fp32", "decode_tok_s"],
                "prefill_x": t.loc[name, "prefill_tok_s"] / t.loc["fp32", "prefill_tok_s"],
                "decode_x": t.loc[name, "decode_tok_s"] / t.loc["fp32", "decode_tok_s"]}
        del m
        release()
        rows[name] = row
    return pd.DataFrame.from_dict(rows, orient="index")
