"""Calibration for GPTQ-style and AWQ-style quantization: what each decoder Linear layer's input looked like on text.

One pass of the float model over calibration text (review snippets of the train split, never the perplexity text),
with a forward pre-hook per distinct input, records H = X^T X / n (GPTQ), the mean |x| of each input channel and a
sample of token activations (AWQ). Layers fed the same tensor (q, k, v; gate, up) share one record.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from labkit import fast_mode
from labkit.core.memory import release
from labkit.core.parts import device_of
from labkit.lm.slm import calibration_texts, decoder_linears, input_source, token_ids


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


def calibration_ids(tokenizer, texts: str | Sequence[str] | None = None, tokens: int | None = None,
                    seq_len: int = 256) -> torch.Tensor:
    """Calibration token ids [tokens // seq_len, seq_len] from `texts` (the kit's calibration snippets unless given);
    a ValueError for empty text."""
    texts = calibration_texts() if texts is None else texts
    if isinstance(texts, str) and not texts.strip() or not isinstance(texts, str) and not any(
            str(t).strip() for t in texts):
        raise ValueError("The calibration text is empty: GPTQ-style and AWQ-style quantization need some text to "
                         "record layer inputs on, e.g. labkit.lm.slm.calibration_texts().")
    if tokenizer is None:
        raise ValueError("Pass the model's tokenizer to turn the calibration text into tokens.")
    # 4096 by default: with 1024, GPTQ calibrated in one pass (the gptq-one-pass ablation) fitted SmolLM2's
    # calibration text and did worse than RTN on other text; benchmarks/bench_slm.py measures GPTQ's curve
    tokens = tokens or (2048 if fast_mode() else 4096)
    if tokens < seq_len:
        raise ValueError(f"tokens ({tokens}) must be at least seq_len ({seq_len}).")
    return token_ids(tokenizer, texts, tokens // seq_len * seq_len).reshape(-1, seq_len)


class Calibration(dict):
    """calibration_stats' records by layer name, with the token ids [n, seq_len] they were recorded on (`ids`):
    GPTQ's sequential calibration and AWQ's block-wise search run the blocks on those ids again."""

    def __init__(self, records: dict[str, InputStats], ids: torch.Tensor):
        super().__init__(records)
        self.ids = ids


@torch.inference_mode()
def input_pass(model: nn.Module, ids: torch.Tensor, observe: Callable[[str, torch.Tensor], None],
               batch_size: int = 4) -> dict[str, str]:
    """One pass of the model over token ids [n, seq_len], batch by batch, showing `observe(name, x)` the input
    x [tokens, in] (float32, on the CPU) of every decoder Linear layer that reads a tensor of its own; returns each
    decoder layer's source, the layer whose input it shares (q, k, v read q's; gate, up read gate's)."""
    layers = decoder_linears(model)
    sources = {name: input_source(model, name) for name in layers}

    def hook_for(name: str):
        n_in = layers[name].in_features
        return lambda module, args: observe(name, args[0].detach().reshape(-1, n_in).float().cpu())

    handles = [layers[src].register_forward_pre_hook(hook_for(src)) for src in set(sources.values())]
    try:
        for start in range(0, len(ids), batch_size):
            # the hooks see every layer's input; the logits are not needed (logits_to_keep=1 skips most of the head),
            # nor is the KV cache
            model(input_ids=ids[start:start + batch_size].to(device_of(model)), logits_to_keep=1, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return sources


@torch.inference_mode()
def calibration_stats(model: nn.Module, ids: torch.Tensor, keep: int | None = None,
                      batch_size: int = 4) -> Calibration:
    """Inputs of every decoder Linear layer on the calibration token ids [n, seq_len], from one pass of the model.

    Layers fed the same tensor (q, k, v; gate, up) share one record. `keep` tokens of activations are sampled for
    AWQ's search: 256, or 128 when LABKIT_FAST=1.
    """
    layers = decoder_linears(model)
    keep = (128 if fast_mode() else 256) if keep is None else keep
    if ids.dim() != 2 or ids.numel() == 0:
        raise ValueError(f"ids must be a non-empty [sequences, tokens] tensor, got shape {tuple(ids.shape)}.")
    if keep < 1:
        raise ValueError(f"keep must be at least 1 (tokens of activations kept for AWQ's search), got {keep}.")
    stride = max(1, ids.numel() // keep)
    rows = -(-ids.numel() // stride)  # token indices 0, stride, 2 * stride, ... below ids.numel()
    acc: dict[str, dict] = {}

    # What is kept is allocated here, once, before the pass. Records grown between the pass's short-lived tensors, or
    # a transient copy here (int(mask.sum()) made an int64 one), left 0.25-0.3 GiB of freed pages in malloc's heap in
    # some runs and not others (full mode: +0.34 to +0.57 GiB, once +1.08; now +0.35-0.36).
    for name in sorted({input_source(model, layer) for layer in layers}):
        n_in = layers[name].in_features
        acc[name] = {"upper": torch.zeros(n_in * (n_in + 1) // 2), "abs": torch.zeros(n_in),
                     "sample": torch.empty(rows, n_in), "n": 0, "mask": _upper_mask(n_in)}

    def observe(name: str, x: torch.Tensor) -> None:
        rec = acc[name]
        rec["upper"] += (x.T @ x)[rec["mask"]]  # H is symmetric: its upper triangle is all InputStats keeps
        rec["abs"] += x.abs().sum(dim=0)
        first = -(-rec["n"] // stride)  # the next sampled token, counted over all passes
        picked = x[(first * stride - rec["n"])::stride]
        rec["sample"][first:first + len(picked)] = picked
        rec["n"] += len(x)

    sources = input_pass(model, ids, observe, batch_size)
    stats = {}
    for src, rec in acc.items():
        n = rec["n"]
        rec["upper"] /= n  # in place: H is the largest thing calibration keeps
        sample = rec["sample"][:keep] if rows == keep else rec["sample"][:keep].clone()
        stats[src] = InputStats(rec["upper"], rec["abs"] / n, sample, n)
    acc.clear()
    release()  # the forward passes' activations were freed; hand their pages back
    return Calibration({name: stats[src] for name, src in sources.items()}, ids)
