import numpy as np
import torch
import torch.nn.utils.prune as tprune

from labkit import myths


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
