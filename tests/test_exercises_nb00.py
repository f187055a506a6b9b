"""Each targeted hint of notebook 00's exercises, reached by the mistake it names (tests/test_checks.py runs the table)."""

import torch

from labkit.course import checks
from labkit.course.exercises.nb00 import GOLDEN_W


def _flattened(w, sparsity):
    k = round(sparsity * w.numel())
    return w[w.abs() > w.abs().flatten().kthvalue(k).values]  # the article's filter: a 1-D array


def _signed(w, sparsity):
    k = round(sparsity * w.numel())
    return torch.where(w > w.flatten().kthvalue(k).values, w, torch.zeros_like(w))


def _kept_fraction(w, sparsity):
    k = round((1 - sparsity) * w.numel())  # zeroes the fraction that should be kept
    return torch.where(w.abs() > w.abs().flatten().kthvalue(k).values, w, torch.zeros_like(w))


def _largest_zeroed(w, sparsity):
    k = round(sparsity * w.numel())
    threshold = w.abs().flatten().kthvalue(w.numel() - k).values
    return torch.where(w.abs() <= threshold, w, torch.zeros_like(w))


def _in_place(w, sparsity):
    k = round(sparsity * w.numel())
    w[w.abs() <= w.abs().flatten().kthvalue(k).values] = 0
    return w


MISTAKES = [
    ("00.float64_bytes", "float32", lambda: 1536 * 384 * 4),
    ("00.int8_bytes", "no_params", lambda: 1536 * 384),
    ("00.mask_shape", "flattened", lambda: (1536 * 384 // 2,)),
    ("00.magnitude_mask", "flattened", lambda: _flattened),
    ("00.magnitude_mask", "signed", lambda: _signed),
    ("00.magnitude_mask", "kept_fraction", lambda: _kept_fraction),
    ("00.magnitude_mask", "largest_zeroed", lambda: _largest_zeroed),
    ("00.magnitude_mask", "mutated", lambda: _in_place),
]



def test_magnitude_mask_reference_matches_the_kit_and_the_worked_example():
    mask = checks.solution("00.magnitude_mask")
    assert torch.equal(mask(GOLDEN_W, 0.5), torch.tensor([[0.0, -2.0, 0.0, 3.0], [0.0, 1.0, -4.0, 0.0]]))
    # against torch's own L1 unstructured pruning (random weights: no ties at the threshold)
    import torch.nn.utils.prune as torch_prune

    layer = torch.nn.Linear(20, 30)
    w = layer.weight.detach().clone()
    torch_prune.l1_unstructured(layer, "weight", amount=0.7)
    assert torch.equal(mask(w, 0.7), layer.weight.detach())
