"""Each targeted hint of notebook 03's exercises, reached by the mistake it names (tests/test_checks.py runs the table)."""


import torch
from torch import nn

from labkit.course import checks
from labkit.course.exercises.nb03 import (
    DEAD,
    EX_WEIGHT,
    MIT_MASK,
    MIT_TENSOR,
    MUTE,
    _calibration,
    _tiny_attention,
    _tiny_ffn,
    attend,
)


def _kth_mask(scores, w, num_zeros):
    return scores > torch.kthvalue(scores.flatten(), num_zeros).values


def _signed(w, s):
    return _kth_mask(w, w, round(s * w.numel()))


def _swapped(w, s):
    return _kth_mask(w.abs(), w, round((1 - s) * w.numel()))


def _int_not_round(w, s):
    return _kth_mask(w.abs(), w, int(s * w.numel()))


def _in_place(w, s):
    mask = _kth_mask(w.abs(), w, round(s * w.numel()))
    w.mul_(mask)  # as MIT's lab does: here the caller's weight must stay
    return mask


def _flat(w, s):
    return _kth_mask(w.abs(), w, round(s * w.numel())).flatten()


def _pruned_weights(w, s):
    return w * _kth_mask(w.abs(), w, round(s * w.numel()))


def _keep(n, head, d):
    return torch.tensor([i for i in range(n) if i // d != head])


def _linear(weight, bias):
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new


def _remove(rows_of_output=False, qkv_bias=True, offset=None, in_place=False, as_tensors=False):
    """A remove_head with one chosen mistake."""
    def remove_head(q, k, v, o, head, d):
        keep = _keep(q.out_features, head, d) if offset is None else torch.cat(
            [torch.arange(0, head), torch.arange(head + d, q.out_features)])  # head instead of head * d
        new = [_linear(m.weight[keep], m.bias[keep] if qkv_bias else None) for m in (q, k, v)]
        out = (_linear(o.weight[keep], o.bias[keep]) if rows_of_output else _linear(o.weight[:, keep], o.bias))
        if in_place:
            for old, m in zip((q, k, v, o), new + [out]):
                old.weight = m.weight
            return q, k, v, o
        if as_tensors:
            return tuple(m.weight for m in new + [out])
        return (*new, out)
    return remove_head


def _activation_only(up, down, batches):
    """Fires strongly, never asks whether the output sees it."""
    acts = [torch.nn.functional.gelu(up(h[m])) for h, m in batches]
    return torch.cat(acts).abs().mean(0).detach()


def _all_tokens(up, down, batches):
    acts = [torch.nn.functional.gelu(up(h.flatten(0, 1))) for h, m in batches]  # padding counted as text
    return (torch.cat(acts).abs().mean(0) * down.weight.norm(dim=0)).detach()


def _per_token(up, down, batches):
    return torch.cat([torch.nn.functional.gelu(up(h[m])) for h, m in batches]).detach()  # not reduced


def _normalised(up, down, batches):
    score = up.weight.norm(dim=1) * down.weight.norm(dim=0)
    return (score / score).detach()  # 0 / 0 for the empty neuron


def _sum_of_norms(up, down, batches):
    return (up.weight.norm(dim=1) + down.weight.norm(dim=0) + 1.0).detach()  # the empty neuron scores 1, others more


def _inverted(up, down, batches):
    return -(up.weight.norm(dim=1) * down.weight.norm(dim=0)).detach()


def _writes_calibration(up, down, batches):
    batches[0][0].zero_()
    return (up.weight.norm(dim=1) * down.weight.norm(dim=0)).detach()


MISTAKES = [
    ("03.head_shapes", "output_rows", lambda: ((256, 384), (256,), (256, 384), (384,))),
    ("03.head_shapes", "output_bias", lambda: ((256, 384), (256,), (384, 256), (256,))),
    ("03.head_shapes", "transposed", lambda: ((384, 256), (256,), (384, 256), (384,))),
    ("03.neuron_importance", "ignored_output", lambda: _activation_only),
    ("03.neuron_importance", "padding", lambda: _all_tokens),
    ("03.neuron_importance", "shape", lambda: _per_token),
    ("03.neuron_importance", "not_finite", lambda: _normalised),
    ("03.neuron_importance", "not_scores", lambda: lambda up, down, batches: [1.0] * up.out_features),
    ("03.neuron_importance", "dead_not_last", lambda: _inverted),
    ("03.neuron_importance", "mutated", lambda: _writes_calibration),
    ("03.magnitude_mask", "signed", lambda: EX_WEIGHT >= EX_WEIGHT.flatten().sort(descending=True).values[3]),
    ("03.magnitude_mask", "shape", lambda: EX_WEIGHT.abs().flatten() > 0.3),
    ("03.fine_grained_prune", "signed", lambda: _signed),
    ("03.fine_grained_prune", "swapped", lambda: _swapped),
    ("03.fine_grained_prune", "count_off", lambda: _int_not_round),
    ("03.fine_grained_prune", "mutated", lambda: _in_place),
    ("03.fine_grained_prune", "shape", lambda: _flat),
    ("03.fine_grained_prune", "not_mask", lambda: _pruned_weights),
    ("03.remove_head", "output_rows", lambda: _remove(rows_of_output=True)),
    ("03.remove_head", "biases", lambda: _remove(qkv_bias=False)),
    ("03.remove_head", "wrong_head", lambda: _remove(offset=True)),
    ("03.remove_head", "mutated", lambda: _remove(in_place=True)),
    ("03.remove_head", "not_layers", lambda: _remove(as_tensors=True)),
]


def test_reference_passes_mit_lab1_golden_test():
    fine_grained_prune = checks.solution("03.fine_grained_prune")
    w = MIT_TENSOR.clone()
    assert torch.equal(fine_grained_prune(w, 0.75), MIT_MASK) and torch.equal(w, MIT_TENSOR)
    assert int(fine_grained_prune(MIT_TENSOR, 0.6).sum()) == 10  # the lab's TODO 2: 10 non-zeros


def test_float_masks_are_accepted_like_the_labs():
    ref = checks.solution("03.fine_grained_prune")
    assert checks.diagnose("03.fine_grained_prune", lambda w, s: ref(w, s).to(w.dtype)) is None


def test_removing_a_head_equals_zeroing_its_context():
    layers = _tiny_attention()
    q, k, v, o = checks.solution("03.remove_head")(*layers, 1, 2)
    x = torch.randn(1, 3, 8)
    with torch.no_grad():
        assert torch.allclose(attend(q, k, v, o, x, 2), attend(*layers, x, 2, zero_head=1), atol=1e-6)
        assert not torch.allclose(attend(*layers, x, 2), attend(*layers, x, 2, zero_head=1))


def test_the_neuron_score_is_a_design_not_one_answer():
    # the kit's weight-only score (row norm times column norm) passes the contract as well as the reference
    weights_only = lambda up, down, batches: (up.weight.norm(dim=1) * down.weight.norm(dim=0)).detach()  # noqa: E731
    assert checks.diagnose("03.neuron_importance", weights_only) is None
    scores = checks.solution("03.neuron_importance")(*_tiny_ffn(), _calibration(0.0))
    assert scores[DEAD] == 0 and scores[MUTE] == 0 and scores.shape == (6,)
