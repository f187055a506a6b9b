"""labkit.quant.int8: the one dynamic int8 path; its result is the caller's to change."""

import pytest
import torch

from labkit.core import parts
from labkit.quant import int8


def _snapshot(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


@pytest.mark.parametrize("filter_fn, count", [("blocks", 12), ("all", 14), ("ffn", 4)])
def test_the_chosen_layers_run_int8_and_the_input_is_untouched(filter_fn, count):
    m = parts.tiny_classifier("BERT")
    before = _snapshot(m)
    q = int8.dynamic_int8(m, filter_fn)
    assert sum(type(x).__name__ == "Linear" and "quantized" in type(x).__module__ for x in q.modules()) == count
    with torch.no_grad():  # write into every float tensor the result holds
        for t in list(q.parameters()) + list(q.buffers()):
            if t.is_floating_point():
                t.add_(1.0)
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())


def test_int8_predicts_like_float_on_a_small_model():
    m = parts.tiny_classifier("BERT")
    ids = torch.randint(1000, 2000, (4, 12))
    with torch.no_grad():
        a, b = m(input_ids=ids).logits, int8.dynamic_int8(m)(input_ids=ids).logits
    assert (a - b).abs().max() < 0.1 * a.abs().max() + 1e-3


def test_a_filter_that_picks_nothing_says_what_to_use():
    with pytest.raises(ValueError, match="picks no Linear"):
        int8.dynamic_int8(parts.tiny_classifier("BERT"), lambda module, fqn: False)
