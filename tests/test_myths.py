import torch

from labkit.core import measure, parts
from labkit.lab import myths


def test_cast_float64_is_an_independent_copy_with_twice_the_bytes(tiny_model):
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    wide = myths.cast_float64(tiny_model)
    assert parts.dtype_of(wide) == "fp64" and parts.dtype_of(tiny_model) == "fp32"
    assert 1.9 < measure.serialized_bytes(wide) / measure.serialized_bytes(tiny_model) <= 2.0
    with torch.no_grad():  # writing into the copy leaves the caller's model as it was
        for p in wide.parameters():
            p.fill_(1.0)
    assert all(torch.equal(v, before[k]) for k, v in tiny_model.state_dict().items())
