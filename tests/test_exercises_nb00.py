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
    ("00.size_ceiling", "everything", lambda: 0.25),
    ("00.size_ceiling", "blocks_only", lambda: 0.47 / 4),
    ("00.size_ceiling", "saved", lambda: 0.35),
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


def test_size_ceiling_counts_are_minilms():
    import transformers

    from labkit.course.exercises import nb00

    # MiniLM-L6-H384's shape with random weights (nothing downloaded), a 2-class head as the baseline has
    cfg = transformers.BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                                  intermediate_size=1536, num_labels=2)
    m = transformers.BertForSequenceClassification(cfg)

    def count(module):
        return sum(p.numel() for p in module.parameters())
    assert count(m.bert.embeddings) == nb00.EMBEDDINGS and count(m.bert.encoder.layer[0]) == nb00.BLOCK
    assert count(m.bert.pooler) + count(m.classifier) == nb00.HEAD
    assert 0.6 < checks.solution("00.size_ceiling") < 0.7
