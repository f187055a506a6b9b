import numpy as np
import torch
import torch.nn.utils.prune as tprune

from labkit.core import machine
from labkit.lab import myths


def test_article_quantize_changes_nothing_and_returns_nothing():
    params = [np.ones((2, 3), dtype=np.float32)]
    assert myths.article_quantize(params) is None
    assert params[0].dtype == np.float32


def test_article_prune_flattens_and_empties_the_tensor():
    w = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)
    out = myths.article_prune(w)
    assert out.ndim == 1 and out.size == 0 and out.dtype == np.float64


def test_int8_round_trip_matches_torch_quantize_per_tensor():
    w = torch.randn(64, 32)
    q, deq, scale, zp = myths.int8_roundtrip(w)
    ref = torch.quantize_per_tensor(w, scale, zp, torch.qint8)
    assert torch.equal(q, ref.int_repr())
    assert torch.allclose(deq, ref.dequantize())
    assert (deq - w).abs().max() <= scale / 2 + 1e-6


def test_magnitude_mask_matches_torch_prune():
    w = torch.randn(40, 20)
    lin = torch.nn.Linear(20, 40)
    with torch.no_grad():
        lin.weight.copy_(w)
    tprune.l1_unstructured(lin, "weight", amount=0.5)
    assert torch.equal(myths.magnitude_mask(w, 0.5), lin.weight)
    assert myths.magnitude_mask(w, 0.5).shape == w.shape


def test_training_step_times_runs_both_precisions_on_copies(tiny_model, tokenizer):
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    times = myths.training_step_times(tiny_model, tokenizer, steps=2, batch_size=4, warmup=1)
    assert set(times) == {"fp32", "bf16 autocast"}
    for rec in times.values():
        assert rec["median_ms"] > 0 and rec["steps"] == 2 and np.isfinite(rec["loss"])
    for k, v in tiny_model.state_dict().items():  # each precision trained its own copy
        assert torch.equal(v, before[k]), k


def test_training_step_times_freezes_the_word_embeddings_where_memory_is_tight(tiny_model, tokenizer, monkeypatch):
    trained = []
    real = torch.optim.AdamW

    def spy(params, **k):
        params = list(params)
        trained.append({id(p) for p in params})
        return real(params, **k)
    monkeypatch.setattr(torch.optim, "AdamW", spy)
    for lean in ("0", "1"):
        monkeypatch.setenv("LABKIT_LEAN", lean)
        myths.training_step_times(tiny_model, tokenizer, steps=1, batch_size=4, warmup=0)
    everything, lean = (len(t) for t in trained)
    assert lean == everything - 1  # only the word-embedding matrix left out
    assert tiny_model.get_input_embeddings().weight.requires_grad


def test_training_step_times_refuses_bad_sizes(tiny_model, tokenizer):
    import pytest

    with pytest.raises(ValueError, match="steps"):
        myths.training_step_times(tiny_model, tokenizer, steps=0)


def test_native_bf16_reads_the_cpu_flags(tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    info.write_text("flags\t\t: fpu avx2 avx512f avx512_bf16\n")
    monkeypatch.setattr(machine, "CPUINFO", str(info))
    assert myths.native_bf16()
    info.write_text("flags\t\t: fpu avx2\n")
    assert not myths.native_bf16()
