"""The KV cache: the keys and values of every earlier token, kept for generation; its bytes, and an int8 cache.

`Int8KVCache` is labkit's own (transformers' int8 caches need optimum-quanto or hqq): every key and value vector is
stored as int8 codes with one float32 scale (symmetric, -127..127, through labkit.quant.affine).
"""

from __future__ import annotations

from typing import Sequence

import pandas as pd
import torch

from labkit.quant.affine import choose_qparams_affine, dequantize_affine, qrange, quantize_affine

KV_DTYPES = ("float32", "bfloat16", "float16", "int8")


def _kv_dtype_name(dtype) -> str:
    name = str(dtype).replace("torch.", "")
    if name not in KV_DTYPES:
        raise ValueError(f"Unknown KV cache dtype {dtype!r}; choose one of {', '.join(KV_DTYPES)}.")
    return name


def kv_shape(config) -> tuple[int, int, int]:
    """(layers, kv_heads, head_dim) of a decoder config: what one token adds to the cache, per K and per V."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return config.num_hidden_layers, kv_heads, head_dim


def kv_cache_bytes(config, tokens: int, dtype="float32", batch: int = 1) -> int:
    """Bytes of the KV cache after `tokens` tokens: layers x 2 (K and V) x kv_heads x head_dim x bytes per value.

    int8 adds one float32 scale per token, head and K/V (labkit's Int8KVCache: symmetric, per token per head).
    """
    name = _kv_dtype_name(dtype)
    if tokens < 0 or batch < 1:
        raise ValueError(f"tokens must be >= 0 and batch >= 1; got tokens={tokens}, batch={batch}.")
    layers, kv_heads, head_dim = kv_shape(config)
    per_vector = head_dim + 4 if name == "int8" else head_dim * torch.finfo(getattr(torch, name)).bits // 8
    return layers * 2 * kv_heads * per_vector * tokens * batch


def kv_table(config, contexts: Sequence[int] = (256, 1024, 2048, 4096, 8192),
             dtypes: Sequence[str] = ("float32", "bfloat16", "int8")) -> pd.DataFrame:
    """KV-cache MB at each context length (rows) and dtype (columns), batch 1."""
    return pd.DataFrame({d: [kv_cache_bytes(config, n, d) / 1e6 for n in contexts] for d in dtypes},
                        index=pd.Index(list(contexts), name="tokens"))


KV_QMIN, KV_QMAX = qrange(8, "symmetric", restricted=True)


def _int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 codes of `x` [..., head_dim] with one float32 scale per vector (per token, per head)."""
    block = (1,) * (x.dim() - 1) + (x.shape[-1],)
    scale, zero = choose_qparams_affine(x, "symmetric", block, KV_QMIN, KV_QMAX, eps=1e-8)
    return quantize_affine(x, block, scale, zero, KV_QMIN, KV_QMAX), scale


def _cache_layer_class():
    from transformers.cache_utils import DynamicLayer

    class Int8KVLayer(DynamicLayer):
        """One layer's cache holding K and V as int8 codes plus a float32 scale per token and head."""
        is_croppable = False

        def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
            super().lazy_initialization(key_states, value_states)
            self.codes = {"k": None, "v": None}
            self.scales = {"k": None, "v": None}

        def _append(self, which: str, x: torch.Tensor) -> torch.Tensor:
            codes, scale = _int8(x)
            if self.codes[which] is not None:
                codes = torch.cat([self.codes[which], codes], dim=-2)
                scale = torch.cat([self.scales[which], scale], dim=-2)
            self.codes[which], self.scales[which] = codes, scale
            block = (1,) * (codes.dim() - 1) + (codes.shape[-1],)
            # what attention reads: every key and value came back from int8
            return dequantize_affine(codes, block, scale, torch.zeros_like(scale, dtype=torch.int64), dtype=x.dtype)

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            return self._append("k", key_states), self._append("v", value_states)

        def get_seq_length(self) -> int:
            return 0 if not self.is_initialized or self.codes["k"] is None else self.codes["k"].shape[-2]

        def nbytes(self) -> int:
            """Bytes this layer really holds: int8 codes and float32 scales of K and V."""
            if not self.is_initialized or self.codes["k"] is None:
                return 0
            return sum(t.numel() * t.element_size() for d in (self.codes, self.scales) for t in d.values())

    return Int8KVLayer


def Int8KVCache():
    """A KV cache storing keys and values in int8 (symmetric, one scale per token and head): labkit's own.

    Every key and value attention reads, the prompt's included, comes back from int8, so perplexity measured
    through it shows the whole effect. transformers' QuantizedCache would need optimum-quanto or hqq for int8;
    it keeps the newest 128 tokens in full precision, this one keeps none.
    """
    from transformers.cache_utils import Cache

    return Cache(layer_class_to_replicate=_cache_layer_class())


def transformers_kv_cache(backend: str, config):
    """transformers' own QuantizedCache ('quanto' or 'hqq': int2/int4 needing those packages; 'fp8': built in).

    It keeps the states of each forward's own tokens (and the newest 128, for quanto and hqq) unquantized, so
    only a stepwise perplexity sees its effect.
    """
    from transformers.cache_utils import QuantizedCache

    return QuantizedCache(backend=backend, config=config)


def cache_nbytes(cache) -> int:
    """Bytes of keys and values a cache really holds (int8 codes and scales for Int8KVCache)."""
    total = 0
    for layer in cache.layers:
        if hasattr(layer, "nbytes"):
            total += layer.nbytes()
        elif getattr(layer, "is_initialized", False):
            total += sum(t.numel() * t.element_size() for t in (layer.keys, layer.values))
    return total
