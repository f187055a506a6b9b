"""llama.cpp as the anchor: the same GGUF file run by the runtime a practitioner would deploy it with, through
llama-cpp-python, timed in the same rounds as labkit's kernels and scored on the same text.

llama-cpp-python is an optional extra (`pip install '.[anchors]'`) that builds llama.cpp from source (minutes);
nothing else in labkit needs it. llama.cpp reads the file's Q4_1 blocks straight into integer dot products: it is
the yardstick for labkit's 4-bit decode speed.
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path

import numpy as np
import torch

from labkit.lm.perplexity import Perplexity, checked_tokens, first_scored, from_nll, pieces
from labkit.lm.slm import eval_text, token_ids

VERSION = "0.3.36"
# The default native build crashed in its first decode of this file on a Xeon with AMX (with and without OpenMP);
# a build without AMX ran. These flags make that build on any x86-64 CPU with AVX-512.
CMAKE_ARGS = ("-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON "
              "-DGGML_FMA=ON -DGGML_F16C=ON -DGGML_OPENMP=OFF")
INSTALL_HINT = (f"llama-cpp-python is not installed. Build it once (about 7 minutes on 2 cores):\n"
                f"    CMAKE_ARGS=\"{CMAKE_ARGS}\" pip install -c constraints.txt '.[anchors]'\n"
                f"(llama-cpp-python=={VERSION}; on a CPU without AVX-512 drop the four AVX512 flags)")


def llama_cpp_module():
    """The `llama_cpp` module, or None when llama-cpp-python is not installed."""
    try:
        return importlib.import_module("llama_cpp")
    except ImportError:
        return None


def open_gguf(path: str | Path, n_ctx: int = 512, threads: int | None = None, logits_all: bool = False):
    """A llama_cpp.Llama on the GGUF file at `path`: `threads` as torch uses (the same cores for both), a batch as
    long as the context (a prompt or a chunk in one decode call), quiet. `logits_all` keeps every position's logits
    (perplexity needs them; timing does not: labkit's prefill computes the last position's only)."""
    llama_cpp = llama_cpp_module()
    if llama_cpp is None:
        raise ImportError(INSTALL_HINT)
    threads = threads or torch.get_num_threads()
    return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_threads=threads,
                           n_threads_batch=threads, logits_all=logits_all, verbose=False)


def runner(llm):
    """A timing function for generation.tokens_per_second: (prompt ids [1, n], new_tokens) -> (prefill seconds,
    decode seconds), doing what labkit's greedy decoding does: one evaluation of the prompt and its next token
    (greedy), then new_tokens evaluations of one token each."""

    def run(ids: torch.Tensor, new_tokens: int) -> tuple[float, float]:
        llm.reset()  # the next eval overwrites the KV cache from position 0
        t0 = time.perf_counter()
        llm.eval(ids[0].tolist())
        token = llm.sample(temp=0.0)  # greedy
        t1 = time.perf_counter()
        for _ in range(new_tokens):
            llm.eval([token])
            token = llm.sample(temp=0.0)
        return t1 - t0, time.perf_counter() - t1

    return run


def chunk_nll(llm, ids: torch.Tensor, chunk: int, second_half: bool = False) -> np.ndarray:
    """Mean NLL of each `chunk`-token piece of `ids` under llama.cpp, scored exactly as perplexity.chunk_nll scores
    labkit's models (same tokens; `llm` opened with logits_all)."""
    first = first_scored(chunk, second_half)
    out = []
    for piece in pieces(ids, chunk):
        llm.reset()
        llm.eval(piece.tolist())
        logits = torch.from_numpy(np.array(llm.scores[:chunk], dtype=np.float32))
        out.append(float(torch.nn.functional.cross_entropy(logits[first - 1:-1], piece[first:])))
    return np.array(out)


def perplexity(llm, tokenizer, text: str | None = None, tokens: int | None = None, chunk: int | None = None,
               second_half: bool = False) -> Perplexity:
    """llama.cpp's perplexity on the very token ids labkit's perplexity reads (the GGUF's own tokenizer, through
    transformers), so that `ratio` pairs it with any labkit model's on the same chunks."""
    tokens, chunk = checked_tokens(tokens, chunk, second_half)
    ids = token_ids(tokenizer, eval_text() if text is None else text, tokens)
    return from_nll(chunk_nll(llm, ids, chunk, second_half), chunk, second_half)
