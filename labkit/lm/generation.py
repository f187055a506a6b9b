"""Generation and its speed: greedy continuations side by side, and tokens per second for reading a prompt (prefill)
and for generating (decode), timed apart, interleaved model by model.

Tokens per second is a different measure from a classifier's batch latency (labkit.core.measure.compare_latency):
one forward over the prompt, then one forward per new token through the KV cache.
"""

from __future__ import annotations

import statistics
import time
from typing import Sequence

import pandas as pd
import torch
from torch import nn

from labkit import fast_mode
from labkit.core import parts, settings
from labkit.lm.llamacpp import runner
from labkit.lm.slm import check_causal_lm, eval_text, token_ids


def _prompt_inputs(tokenizer, prompt: str, chat: bool) -> dict:
    if chat and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        return dict(tokenizer(text, add_special_tokens=False, return_tensors="pt"))
    return dict(tokenizer(prompt, return_tensors="pt"))


def greedy(model: nn.Module, ids: torch.Tensor, new_tokens: int, cache, stop: int | None = None) -> torch.Tensor:
    """Greedy decoding: one forward over the prompt ids [1, n] (prefill), then one forward per new token that reads
    every earlier key and value from `cache` (decode). Returns the new tokens [1, k], the last one `stop` if met."""
    logits = model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1).logits
    new = []
    for i in range(new_tokens):
        token = logits[:, -1:].argmax(dim=-1)  # [1, 1]: the most likely next token
        new.append(token)
        if i == new_tokens - 1 or int(token) == stop:
            break
        logits = model(input_ids=token, cache=cache, use_cache=True).logits  # one token in, its keys and values kept
    return torch.cat(new, dim=1) if new else ids[:, :0]


@torch.inference_mode()
def generate(model: nn.Module, tokenizer, prompts: Sequence[str], max_new_tokens: int = 40, chat: bool = True,
             cache_factory=None) -> list[str]:
    """Greedy continuations of `prompts` (one at a time, no padding, up to the end-of-text token); with `chat`, as
    replies via the chat template. `cache_factory` makes each prompt's KV cache (a DynamicCache by default)."""
    settings.flags(chat=chat)
    from transformers import DynamicCache

    check_causal_lm(model)
    if isinstance(prompts, str):
        prompts = [prompts]
    out = []
    for prompt in prompts:
        ids = _prompt_inputs(tokenizer, prompt, chat)["input_ids"].to(parts.device_of(model))
        cache = cache_factory() if cache_factory else DynamicCache()
        new = greedy(model, ids, max_new_tokens, cache, stop=tokenizer.eos_token_id)
        out.append(tokenizer.decode(new[0], skip_special_tokens=True).strip())
    return out


def side_by_side(models: dict[str, nn.Module], tokenizer, prompts: Sequence[str], max_new_tokens: int = 40,
                 chat: bool = True) -> pd.DataFrame:
    """Greedy generations of several models (or cache settings) for the same prompts: one row per prompt."""
    settings.flags(chat=chat)
    table = {"prompt": list(prompts)}
    for name, m in models.items():
        if isinstance(m, tuple):  # (model, cache_factory)
            table[name] = generate(m[0], tokenizer, prompts, max_new_tokens, chat, cache_factory=m[1])
        else:
            table[name] = generate(m, tokenizer, prompts, max_new_tokens, chat)
    return pd.DataFrame(table)


@torch.inference_mode()
def _one_run(model: nn.Module, ids: torch.Tensor, new_tokens: int) -> tuple[float, float]:
    """Seconds for the prefill of `ids` and for `new_tokens` greedy decode steps after it (batch 1, KV cache)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    t0 = time.perf_counter()
    first = greedy(model, ids, 1, cache)  # prefill: one forward over the prompt, and its next token
    t1 = time.perf_counter()
    greedy(model, first, new_tokens, cache)  # decode: new_tokens forwards of one token each, through the cache
    return t1 - t0, time.perf_counter() - t1


def tokens_per_second(models: nn.Module | dict, tokenizer, prompt_tokens: int | None = None,
                      new_tokens: int | None = None, warmup: int | None = None,
                      repeats: int | None = None) -> pd.DataFrame:
    """Tokens per second for prompt processing (prefill) and for generation (decode), batch 1, per model.

    Models are timed interleaved, round by round (drift on the machine hits all alike); median and min-max over
    the rounds. Prefill is one forward over the prompt (compute-bound); decode is one token per forward,
    reading every weight each step (memory-bound). A value that is not a torch module is another runtime timed in the
    same rounds: a llama_cpp.Llama (timed by labkit.lm.llamacpp.runner), or a function (prompt ids [1, n],
    new_tokens) -> (prefill seconds, decode seconds) that does what `greedy` does.
    """
    models = models if isinstance(models, dict) else {"model": models}
    prompt_tokens = prompt_tokens or (32 if fast_mode() else 128)
    new_tokens = new_tokens or (8 if fast_mode() else 32)
    warmup = (1 if fast_mode() else 2) if warmup is None else warmup
    repeats = (3 if fast_mode() else 7) if repeats is None else repeats
    if min(prompt_tokens, new_tokens, repeats) < 1:
        raise ValueError("prompt_tokens, new_tokens and repeats must all be at least 1.")
    ids = token_ids(tokenizer, eval_text(), prompt_tokens)[None]
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in models}
    for i in range(warmup + repeats):
        for name, m in models.items():
            if isinstance(m, nn.Module):
                check_causal_lm(m)
                timing = _one_run(m.eval(), ids, new_tokens)
            elif type(m).__module__.startswith("llama_cpp"):
                timing = runner(m)(ids, new_tokens)
            else:
                timing = m(ids, new_tokens)
            if i >= warmup:
                runs[name].append(timing)
    rows = {}
    for name, ts in runs.items():
        pre = [prompt_tokens / p for p, _ in ts]
        dec = [new_tokens / d for _, d in ts]
        rows[name] = {"prefill_tok_s": statistics.median(pre), "prefill_min": min(pre), "prefill_max": max(pre),
                      "decode_tok_s": statistics.median(dec), "decode_min": min(dec), "decode_max": max(dec),
                      "prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "repeats": repeats,
                      "threads": torch.get_num_threads()}
    return pd.DataFrame.from_dict(rows, orient="index")


def bf16(model: nn.Module) -> nn.Module:
    """A new model with bfloat16 weights; the input is unchanged, and so are the buffers' dtypes (RoPE's inv_freq
    stays float32, as transformers computes it). On a CPU without native bf16, torch converts around each op: it
    may be slower than fp32."""
    parts.require_float_layers(model)  # codes and packed layers have no float weights to cast
    return parts.clone(model, lambda t: t.to(torch.bfloat16) if t.is_floating_point() else t, buffers=False).eval()
