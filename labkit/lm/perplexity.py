"""A language model's quality, measured: perplexity with its 95% interval over chunks, paired ratios, agreement
with a reference model (KL divergence, top-1), and the LM's slider point.

Perplexity is exp(mean negative log-likelihood per predicted token) on a fixed review text (the test split, never
used for calibration), read in equal chunks. The chunks' mean NLLs give a t-interval; two models read on the same
chunks give a paired, much tighter ratio, since the hard chunks are hard for both. A chunk of n tokens scores n - 1
of them (its first token is context only), or, with `second_half` as llama.cpp's perplexity does, only the tokens
predicted with at least half a chunk of context: n - 1 - n // 2.
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
    second_half: bool = False

    @property
    def chunks(self) -> int:
        return len(self.nll)

    @property
    def tokens(self) -> int:
        """Tokens of text read (chunks x chunk): pass it back as `tokens` to read the same text again."""
        return len(self.nll) * self.chunk

    @property
    def scored(self) -> int:
        """Tokens whose likelihood counts: chunks x (chunk - 1), or chunks x (chunk - 1 - chunk // 2) with
        `second_half`."""
        return len(self.nll) * (self.chunk - first_scored(self.chunk, self.second_half))

    def ratio(self, other: Perplexity) -> Ratio:
        """ppl(self) / ppl(other) with a 95% paired t-interval over the same chunks."""
        if (self.chunks, self.chunk, self.second_half) != (other.chunks, other.chunk, other.second_half):
            raise ValueError("Compare perplexities measured on the same chunks (same text, tokens, chunk and "
                             "second_half).")
        mean, half = _t_interval(np.array(self.nll) - np.array(other.nll))
        return Ratio(math.exp(mean), math.exp(mean - half), math.exp(mean + half))

    def __str__(self) -> str:
        return f"{self.ppl:.2f} [{self.lo:.2f}, {self.hi:.2f}]"


def default_tokens() -> tuple[int, int]:
    """(tokens, chunk) for perplexity: 4096 tokens in 16 chunks, or 1024 in 8 chunks when LABKIT_FAST=1."""
    return (1024, 128) if fast_mode() else (4096, 256)


def first_scored(chunk: int, second_half: bool = False) -> int:
    """Index of the first token of a chunk whose likelihood is scored: 1 (token 0 is context only), or, as llama.cpp's
    perplexity does with `second_half`, the first predicted from the chunk's second half: 1 + chunk // 2."""
    return 1 + (chunk // 2 if second_half else 0)


def pieces(ids: torch.Tensor, chunk: int) -> torch.Tensor:
    """`ids` cut into whole chunks [n, chunk] (a tail shorter than a chunk is dropped)."""
    return ids[: len(ids) // chunk * chunk].reshape(-1, chunk)


@torch.inference_mode()
def stepwise_nll(model: nn.Module, piece: torch.Tensor, cache_factory=None, second_half: bool = False) -> float:
    """Mean NLL of one piece of ids read one token per forward, as generation reads it: every earlier key and
    value comes from the cache (`cache_factory()`, a DynamicCache by default)."""
    from transformers import DynamicCache

    cache = cache_factory() if cache_factory else DynamicCache()
    piece = piece.to(device_of(model))
    first = first_scored(len(piece), second_half)
    nll = []
    for t in range(len(piece) - 1):
        logits = model(input_ids=piece[None, t:t + 1], cache=cache, use_cache=True).logits[0, -1:].float()
        if t + 1 >= first:
            nll.append(float(nn.functional.cross_entropy(logits, piece[t + 1:t + 2])))
    return float(np.mean(nll))


@torch.inference_mode()
def chunk_nll(model: nn.Module, ids: torch.Tensor, chunk: int, cache_factory=None,
              stepwise: bool = False, second_half: bool = False) -> np.ndarray:
    """Mean negative log-likelihood (nats per token) of each `chunk`-token piece of `ids`, each read on its own.

    One piece per forward: the logits take vocabulary x tokens floats (4 x 256 tokens of SmolLM2: 200 MB, and as
    much again for the loss), and batching saved no time on a 2-core CPU. `stepwise`: see stepwise_nll.
    `second_half` scores only the tokens from first_scored(chunk, True) on, as llama.cpp's perplexity does.
    """
    settings.flags(stepwise=stepwise, second_half=second_half)
    if stepwise:
        return np.array([stepwise_nll(model, p, cache_factory, second_half) for p in pieces(ids, chunk)])
    first = first_scored(chunk, second_half)
    out = []
    for piece in pieces(ids, chunk):
        piece = piece[None].to(device_of(model))
        kwargs = {"cache": cache_factory(), "use_cache": True} if cache_factory else {}
        logits = model(input_ids=piece, **kwargs).logits[0].float()
        # position t predicts token t + 1: the first token of each chunk is context only
        out.append(float(nn.functional.cross_entropy(logits[first - 1:-1], piece[0, first:])))
    return np.array(out)


def perplexity(model: nn.Module, tokenizer, text: str | None = None, tokens: int | None = None,
               chunk: int | None = None, cache_factory=None, stepwise: bool = False,
               second_half: bool = False) -> Perplexity:
    """Perplexity on the first `tokens` tokens of `text` (the kit's test-split reviews unless given), in chunks.

    The interval is exp of the 95% t-interval of the chunks' mean NLLs. `cache_factory` (e.g. kvcache.Int8KVCache)
    makes every attention read its keys and values through that cache. `stepwise` reads one token per forward, as
    generation does: needed for caches that pass a forward's own states through unquantized (transformers'
    QuantizedCache); slower. `second_half` scores only each chunk's second half (llama.cpp's perplexity).
    """
    check_causal_lm(model)
    tokens, chunk = checked_tokens(tokens, chunk, second_half)
    model.eval()
    ids = token_ids(tokenizer, eval_text() if text is None else text, tokens)
    nll = chunk_nll(model, ids, chunk, cache_factory=cache_factory, stepwise=stepwise, second_half=second_half)
    return from_nll(nll, chunk, second_half)


def from_nll(nll: np.ndarray, chunk: int, second_half: bool = False) -> Perplexity:
    """The Perplexity of chunks' mean NLLs (nats per scored token): exp of their mean and of its 95% t-interval."""
    mean, half = _t_interval(np.asarray(nll, dtype=float))
    return Perplexity(math.exp(mean), math.exp(mean - half), math.exp(mean + half), tuple(np.asarray(nll).tolist()),
                      chunk, second_half)


def checked_tokens(tokens: int | None, chunk: int | None, second_half: bool) -> tuple[int, int]:
    """(tokens, chunk), the defaults filled in; a ValueError when fewer than two chunks or no token is scored."""
    d_tokens, d_chunk = default_tokens()
    tokens, chunk = tokens or d_tokens, chunk or d_chunk
    if chunk < (4 if second_half else 2) or tokens < 2 * chunk:
        raise ValueError(f"Need chunk >= {4 if second_half else 2} and at least two chunks (tokens >= 2 * chunk); "
                         f"got tokens={tokens}, chunk={chunk}.")
    return tokens, chunk


@dataclass(frozen=True)
class Agreement:
    """A model's next-token distributions beside a reference model's (the decoded model) on the same chunks: the mean
    KL(reference || model) in nats per scored token and the top-1 agreement (the share of scored positions where
    both rank the same token first), each with its 95% t-interval over the chunks, and the model's perplexity from
    the same forwards. Perplexity can hide errors that cancel; these compare the distributions themselves."""

    kl: float
    kl_lo: float
    kl_hi: float
    top1: float
    top1_lo: float
    top1_hi: float
    kl_chunks: tuple[float, ...]
    top1_chunks: tuple[float, ...]
    perplexity: Perplexity

    def __str__(self) -> str:
        return (f"KL {self.kl:.4f} [{self.kl_lo:.4f}, {self.kl_hi:.4f}] nats/token, top-1 agreement "
                f"{100 * self.top1:.1f}% [{100 * self.top1_lo:.1f}, {100 * self.top1_hi:.1f}]")


@torch.inference_mode()
def chunk_agreement(model: nn.Module, reference: nn.Module, ids: torch.Tensor, chunk: int,
                    second_half: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per chunk of `ids`: the mean KL(reference || model) over the scored positions, the share of them where both
    models' most likely next token is the same, and the model's mean NLL. One chunk of both models' logits alive at a
    time (2 x vocabulary x chunk floats)."""
    settings.flags(second_half=second_half)
    first = first_scored(chunk, second_half)
    kl, top1, nll = [], [], []
    for piece in pieces(ids, chunk):
        logq = torch.log_softmax(model(input_ids=piece[None].to(device_of(model))).logits[0, first - 1:-1].float(), -1)
        logp = torch.log_softmax(
            reference(input_ids=piece[None].to(device_of(reference))).logits[0, first - 1:-1].float(), -1).to(logq.device)
        kl.append(float((logp.exp() * (logp - logq)).sum(-1).mean()))
        top1.append(float((logp.argmax(-1) == logq.argmax(-1)).float().mean()))
        nll.append(float(nn.functional.nll_loss(logq, piece[first:].to(logq.device))))
    return np.array(kl), np.array(top1), np.array(nll)


def agreement(model: nn.Module, reference: nn.Module, tokenizer, text: str | None = None, tokens: int | None = None,
              chunk: int | None = None, second_half: bool = False) -> Agreement:
    """KL divergence and top-1 agreement of `model` against `reference` on the chunks `perplexity` reads (same text,
    tokens, chunk and second_half), with the model's perplexity from the same forwards."""
    check_causal_lm(model)
    check_causal_lm(reference)
    tokens, chunk = checked_tokens(tokens, chunk, second_half)
    model.eval(), reference.eval()
    ids = token_ids(tokenizer, eval_text() if text is None else text, tokens)
    kl, top1, nll = chunk_agreement(model, reference, ids, chunk, second_half)
    (k, kh), (t, th) = _t_interval(kl), _t_interval(top1)
    return Agreement(k, max(0.0, k - kh), k + kh, t, t - th, min(1.0, t + th), tuple(kl.tolist()),
                     tuple(top1.tolist()), from_nll(nll, chunk, second_half))


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
