"""The techniques on a CUDA GPU where one is present (skipped elsewhere; benchmarks/gpu_check.py does more)."""

from __future__ import annotations

import warnings

import pytest
import torch

from labkit.core import machine, measure, parts
from labkit.pipelines import matrix

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")
CPU_ONLY = {"real int8", "dynamic int8", "ONNX export", "pipeline"}  # torch int8 kernels, ONNX Runtime's CPU provider


@cuda
@pytest.mark.parametrize("technique", list(matrix.TECHNIQUES))
@pytest.mark.parametrize("family", ["BERT", "DistilBERT", "RoBERTa"])
def test_technique_on_cuda(family, technique, tokenizer):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cell = matrix.run_cell(family, technique, tokenizer, device="cuda")
    assert cell.status == "works", cell.effect
    if technique in CPU_ONLY:  # handed back on the CPU, and said so
        assert "(on cpu)" in cell.effect
        assert any("CPU" in str(w.message) for w in caught)


@cuda
def test_predict_and_latency_on_cuda(tokenizer):
    m = parts.tiny_classifier("DistilBERT").cuda()
    assert measure.predict(m, tokenizer, ["a film", "another film"]).shape == (2,)
    rec = measure.latency(m, tokenizer, 2, warmup=1, repeats=2, texts=["a film", "another"])
    assert rec["device"] == torch.cuda.get_device_name(0)


def test_cpu_model_reports_the_cpu(tokenizer):
    m = parts.tiny_classifier("DistilBERT")
    rec = measure.latency(m, tokenizer, 2, warmup=1, repeats=2, texts=["a film", "another"])
    assert rec["device"] == machine.cpu_name() and rec["repeats"] == 2
