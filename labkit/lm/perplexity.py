"""A language model's quality, measured: perplexity with its 95% interval over chunks, paired ratios, and the LM's
slider point.

Perplexity is exp(mean negative log-likelihood per predicted token) on a fixed review text (the test split, never
used for calibration), read in equal chunks. The chunks' mean NLLs give a t-interval; two models read on the same
chunks give a paired, much tighter ratio, since the hard chunks are hard for both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from labkit import fast_mode
from labkit.core import settings
from labkit.core.parts import device_of
from labkit.lm.slm import check_causal_lm, eval_text, token_ids


def _t_interval(values: np.ndarray) -> tuple[float, float]:
    """The mean of `values` and the half-width of its 95% t-interval."""
    from scipy import stats

    mean, sem = float(values.mean()), float(values.std(ddof=1) / math.sqrt(len(values)))
    return mean, float(stats.t.ppf(0.975, len(values) - 1)) * sem


@dataclass(frozen=True)
class Ratio:
    """ppl(a) / ppl(b) on the same chunks, with its 95% paired interval: below 1, a is better."""

    ratio: float
    lo: float
    hi: float

    def __str__(self) -> str:
        return f"x{self.ratio:.3f} [{self.lo:.3f}, {self.hi:.3f}]"


@dataclass(frozen=True)
class Perplexity:
    """A perplexity with its 95% interval over chunks, and each chunk's mean NLL (nats per token) for paired ratios."""

    ppl: float
    lo: float
    hi: float
    nll: tuple[float, ...]
    chunk: int

    @property
    def chunks(self) -> int:
        return len(self.nll)

    @property
    def tokens(self) -> int:
        return len(self.nll) * self.chunk

    def ratio(self, other: Perplexity) -> Ratio:
        """ppl(self) / ppl(other) with a 95% paired t-interval over the same chunks."""
        if (self.chunks, self.chunk) != (other.chunks, other.chunk):
            raise ValueError("Compare perplexities measured on the same chunks (same text, tokens and chunk).")
        mean, half = _t_interval(np.array(self.nll) - np.array(other.nll))
        return Ratio(math.exp(mean), math.exp(mean - half), math.exp(mean + half))

    def __str__(self) -> str:
        return f"{self.ppl:.2f} [{self.lo:.2f}, {self.hi:.2f}]"


def default_tokens() -> tuple[int, int]:
    """(tokens, chunk) for perplexity: 4096 tokens in 16 chunks, or 1024 in 8 chunks when LABKIT_FAST=1."""
    return (1024, 128) if fast_mode() else (4096, 256)


@torch.inference_mode()
def stepwise_nll(model: nn.Module, piece: torch.Tensor, cache_factory=None) -> float:
    """Mean NLL of one piece of ids read one token per forward, as generation reads it: every earlier key and
    value comes from the cache (`cache_factory()`, a DynamicCache by default)."""
    from transformers import DynamicCache

    cache = cache_factory() if cache_factory else DynamicCache()
    piece = piece.to(device_of(model))
    nll = []
    for t in range(len(piece) - 1):
        logits = model(input_ids=piece[None, t:t + 1], cache=cache, use_cache=True).logits[0, -1:].float()
        nll.append(float(nn.functional.cross_entropy(logits, piece[t + 1:t + 2])))
    return float(np.mean(nll))


@torch.inference_mode()
def chunk_nll(model: nn.Module, ids: torch.Tensor, chunk: int, cache_factory=None,
              stepwise: bool = False) -> np.ndarray:
    """Mean negative log-likelihood (nats per token) of each `chunk`-token piece of `ids`, each read on its own.

    One piece per forward: the logits take vocabulary x tokens floats (4 x 256 tokens of SmolLM2: 200 MB, and as
    much again for the loss), and batching saved no time on a 2-core CPU. `stepwise`: see stepwise_nll.
    """
    settings.flags(stepwise=stepwise)
    pieces = ids[: len(ids) // chunk * chunk].reshape(-1, chunk)
    if stepwise:
        return np.array([stepwise_nll(model, p, cache_factory) for p in pieces])
    out = []
    for piece in pieces:
        piece = piece[None].to(device_of(model))
        kwargs = {"cache": cache_factory(), "use_cache": True} if cache_factory else {}
        logits = model(input_ids=piece, **kwargs).logits[0].float()
        # position t predicts token t + 1: the first token of each chunk is context only
        out.append(float(nn.functional.cross_entropy(logits[:-1], piece[0, 1:])))
    return np.array(out)


def perplexity(model: nn.Module, tokenizer, text: str | None = None, tokens: int | None = None,
               chunk: int | None = None, cache_factory=None, stepwise: bool = False) -> Perplexity:
    """Perplexity on the first `tokens` tokens of `text` (the kit's test-split reviews unless given), in chunks.

    The interval is exp of the 95% t-interval of the chunks' mean NLLs. `cache_factory` (e.g. kvcache.Int8KVCache)
    makes every attention read its keys and values through that cache. `stepwise` reads one token per forward, as
    generation does: needed for caches that pass a forward's own states through unquantized (transformers'
    QuantizedCache); slower.
    """
    check_causal_lm(model)
    d_tokens, d_chunk = default_tokens()
    tokens, chunk = tokens or d_tokens, chunk or d_chunk
    if chunk < 2 or tokens < 2 * chunk:
        raise ValueError(f"Need chunk >= 2 and at least two chunks (tokens >= 2 * chunk); got tokens={tokens}, "
                         f"chunk={chunk}.")
    model.eval()
    ids = token_ids(tokenizer, eval_text() if text is None else text, tokens)
    nll = chunk_nll(model, ids, chunk, cache_factory=cache_factory, stepwise=stepwise)
    mean, half = _t_interval(nll)
    return Perplexity(math.exp(mean), math.exp(mean - half), math.exp(mean + half), tuple(nll.tolist()), chunk)


@dataclass(frozen=True)
class LMPoint:
    """One setting of a language model, measured: its perplexity, the paired ratio to the base model's on the same
    chunks, the bytes of what it stores and of the float32 layers it replaces. (labkit.lab.points.Point is a
    classifier's: accuracy on labelled snippets, which a language model has none of.)"""

    settings: dict
    perplexity: Perplexity
    ratio: Ratio | None = None
    size_bytes: int | None = None
    float_bytes: int | None = None
    extra: dict = field(default_factory=dict)  # what a lesson adds (seconds to quantize, ...)

    def row(self) -> dict:
        """Settings, numbers and extras in one flat dict: a row of a table of points (labkit.lab.points.table)."""
        p, r = self.perplexity, self.ratio
        out = {**self.settings, "ppl": p.ppl, "ppl_lo": p.lo, "ppl_hi": p.hi}
        if r is not None:
            out |= {"ratio": r.ratio, "ratio_lo": r.lo, "ratio_hi": r.hi}
        if self.size_bytes is not None:
            out |= {"size_bytes": self.size_bytes, "x_smaller": self.float_bytes / self.size_bytes
                    if self.float_bytes else None}
        return out | self.extra

    def readout(self) -> str:
        """The point in one line, as every slider shows it."""
        text = f"perplexity {self.perplexity}"
        if self.ratio is not None:
            text += f", {self.ratio} the base model's"
        if self.size_bytes is not None:
            text += f" · {self.size_bytes / 1e6:.1f} MB"
            if self.float_bytes:
                text += f" ({self.float_bytes / self.size_bytes:.2f}x smaller than fp32)"
        return text + "".join(f" · {k} {v:.1f}" if isinstance(v, float) else f" · {k} {v}"
                              for k, v in self.extra.items())

    def __str__(self) -> str:
        return self.readout()


def measure_point(model: nn.Module, tokenizer, settings: dict, base: Perplexity | None = None,
                  size_bytes: int | None = None, float_bytes: int | None = None, **extra) -> LMPoint:
    """Measure a language model at one setting: its perplexity, and its paired ratio to `base` (same chunks)."""
    r = perplexity(model, tokenizer, tokens=base.tokens if base else None, chunk=base.chunk if base else None)
    return LMPoint(dict(settings), r, None if base is None else r.ratio(base), size_bytes, float_bytes, dict(extra))
