"""The llama.cpp anchor's code path, with a stand-in `llama_cpp` module (llama-cpp-python takes minutes to build and
is an optional extra): the stand-in runs the tiny Llama, so llama.cpp's perplexity must equal labkit's."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from labkit.lm import generation, kernels, llamacpp, slm
from labkit.lm.perplexity import perplexity
from labkit.lm.slm import ByteTokenizer

ROOT = Path(__file__).resolve().parents[1]
TEXT = " ".join(f"review {i}: the film was {'good' if i % 3 else 'dull'} and {'long' if i % 2 else 'short'}."
                for i in range(60))


class FakeLlama:
    """What labkit uses of llama_cpp.Llama 0.3.x: reset, eval (extends the context), sample, scores, n_tokens."""

    __module__ = "llama_cpp.llama"  # where llama_cpp.Llama is defined: how labkit tells it from a function

    opened: list[dict] = []

    def __init__(self, model_path, n_ctx, n_batch, n_threads, n_threads_batch, logits_all, verbose):
        FakeLlama.opened.append(dict(model_path=model_path, n_ctx=n_ctx, logits_all=logits_all, n_threads=n_threads))
        self.model = slm.tiny_llama(seed=0)
        self.logits_all = logits_all
        self.scores = np.zeros((n_ctx, 256), dtype=np.float32)
        self.ids: list[int] = []
        self.n_tokens = 0

    def reset(self):
        self.n_tokens = 0

    @torch.inference_mode()
    def eval(self, tokens):
        self.ids = self.ids[:self.n_tokens] + list(tokens)
        logits = self.model(input_ids=torch.tensor([self.ids])).logits[0].numpy()
        if self.logits_all:
            self.scores[self.n_tokens:len(self.ids)] = logits[self.n_tokens:]
        self.last = logits[-1]
        self.n_tokens = len(self.ids)

    def sample(self, temp=0.8, **kwargs):
        assert temp == 0.0  # greedy, as labkit's decoding
        return int(self.last.argmax())


@pytest.fixture
def fake_llama_cpp(monkeypatch):
    FakeLlama.opened = []
    monkeypatch.setitem(sys.modules, "llama_cpp", types.SimpleNamespace(Llama=FakeLlama))
    return FakeLlama


def test_llamacpp_perplexity_scores_the_same_tokens_as_labkit(fake_llama_cpp):
    llm = llamacpp.open_gguf("model.gguf", n_ctx=64, threads=2, logits_all=True)
    assert fake_llama_cpp.opened == [dict(model_path="model.gguf", n_ctx=64, logits_all=True, n_threads=2)]
    tiny = slm.tiny_llama(seed=0)
    for half in (False, True):
        ours = perplexity(tiny, ByteTokenizer(), TEXT, tokens=256, chunk=64, second_half=half)
        theirs = llamacpp.perplexity(llm, ByteTokenizer(), TEXT, tokens=256, chunk=64, second_half=half)
        assert theirs.nll == pytest.approx(ours.nll, rel=1e-5) and theirs.scored == ours.scored
        assert theirs.ratio(ours).ratio == pytest.approx(1.0, rel=1e-5)


def test_llamacpp_is_timed_in_the_same_rounds_and_decodes_greedily(fake_llama_cpp):
    tiny = slm.tiny_llama(seed=0)
    llm = llamacpp.open_gguf("model.gguf", n_ctx=128)
    t = generation.tokens_per_second({"labkit": tiny, "llama.cpp": llamacpp.runner(llm)}, ByteTokenizer(),
                                     prompt_tokens=16, new_tokens=4, warmup=0, repeats=2)
    assert list(t.index) == ["labkit", "llama.cpp"] and (t["decode_tok_s"] > 0).all()
    # the last run left prompt + first token + 4 decoded tokens in the context, the tokens labkit's greedy picks
    assert llm.n_tokens == 16 + 4
    ids = slm.token_ids(ByteTokenizer(), generation.eval_text(), 16)[None]
    from transformers import DynamicCache

    with torch.inference_mode():
        first = generation.greedy(tiny, ids, 1, DynamicCache())
    assert llm.ids[16] == int(first)


def test_a_llama_object_is_timed_as_it_is_beside_the_kernels(fake_llama_cpp):
    tiny = slm.tiny_llama(seed=0)
    make = {"llama.cpp": lambda: sys.modules["llama_cpp"].Llama(model_path="model.gguf", n_ctx=128, n_batch=128,
                                                               n_threads=2, n_threads_batch=2, logits_all=False,
                                                               verbose=False)}
    base = perplexity(tiny, ByteTokenizer(), tokens=128, chunk=32)
    table = kernels.kernel_speeds(tiny, ByteTokenizer(), make, base=base, prompt_tokens=16, new_tokens=2, warmup=0,
                                  repeats=1)
    row = table.loc["llama.cpp"]
    assert row["status"] == "ran" and row["decode_tok_s"] > 0 and row["decode_x"] > 0
    assert "perplexity [95% CI]" not in table.columns  # another runtime's quality is the benchmark's to score
    assert fake_llama_cpp.opened[0]["n_threads"] == 2


def test_without_llama_cpp_python_the_flag_says_how_to_install_it_and_exits_2(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import fails
    assert llamacpp.llama_cpp_module() is None
    with pytest.raises(ImportError, match="anchors"):
        llamacpp.open_gguf("model.gguf")
    spec = importlib.util.spec_from_file_location("bench_slm", ROOT / "benchmarks" / "bench_slm.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--llamacpp"]) == 2
    out = capsys.readouterr().out
    assert "CMAKE_ARGS=" in out and "-DGGML_OPENMP=OFF" in out and "'.[anchors]'" in out


def test_the_anchor_is_an_optional_extra_pinned_in_the_constraints():
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["anchors"] == ["llama-cpp-python"]
    assert f"llama-cpp-python=={llamacpp.VERSION}" in (ROOT / "constraints.txt").read_text().splitlines()
