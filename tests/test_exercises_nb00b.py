"""Each targeted hint of notebook 00b's exercises, reached by the mistake it names (test_checks.py runs the table)."""

import torch

from labkit.course import checks
from labkit.course.exercises.nb00b import GOLDEN


def _truncated(x):
    return (x.view(torch.int32) & -65536).view(torch.float32)  # clears the bits: rounds toward zero


def _ties_away(x):
    return ((x.view(torch.int32) + 0x8000) & -65536).view(torch.float32)


def _ties_down(x):
    return ((x.view(torch.int32) + 0x7FFF) & -65536).view(torch.float32)


def _as_int(x):
    bits = x.view(torch.int32)
    return (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536  # never viewed back as float32


def _as_bf16(x):
    return x.to(torch.bfloat16)  # the right values, in the wrong dtype


def _in_place(x):
    bits = x.view(torch.int32)
    bits += 0x7FFF + ((bits >> 16) & 1)  # writes through the view into the caller's tensor
    bits &= -65536
    return x


MISTAKES = [
    ("00b.fp16_max", "power_of_two", lambda: 65536),
    ("00b.fp16_max", "integer_range", lambda: 65535),
    ("00b.fp16_max", "bf16", lambda: 3.3895e38),
    ("00b.to_bf16", "truncated", lambda: _truncated),
    ("00b.to_bf16", "ties_away", lambda: _ties_away),
    ("00b.to_bf16", "ties_down", lambda: _ties_down),
    ("00b.to_bf16", "as_int", lambda: _as_int),
    ("00b.to_bf16", "dtype", lambda: _as_bf16),
    ("00b.to_bf16", "mutated", lambda: _in_place),
]


def test_reference_is_torch_bf16_on_golden_and_random_bit_patterns():
    to_bf16 = checks.solution("00b.to_bf16")
    gen = torch.Generator().manual_seed(1)
    codes = torch.randint(-2 ** 31, 2 ** 31 - 1, (200_000,), generator=gen, dtype=torch.int64).to(torch.int32)
    x = torch.cat([GOLDEN, codes.view(torch.float32)])
    x = x[~torch.isnan(x)]  # NaN needs a special case the exercise leaves out
    before = x.clone()
    assert torch.equal(to_bf16(x).view(torch.int32), x.to(torch.bfloat16).float().view(torch.int32))
    assert torch.equal(x.view(torch.int32), before.view(torch.int32))


def test_golden_holds_the_ties_each_mistake_needs():
    want = GOLDEN.to(torch.bfloat16).float()
    for wrong in (_truncated, _ties_away, _ties_down):
        assert not torch.equal(wrong(GOLDEN).view(torch.int32), want.view(torch.int32)), wrong.__name__
    assert torch.isinf(want).sum() == 3 and (GOLDEN.abs() < torch.finfo(torch.float32).tiny).sum() > 4


def test_fp16_max_is_torch_finfo():
    assert checks.solution("00b.fp16_max") == 65504.0
    assert torch.tensor(65504.0).half().item() == 65504.0 and torch.isinf(torch.tensor(65520.0).half())
