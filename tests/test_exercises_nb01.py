"""Each targeted hint of notebook 01's exercises, reached by the mistake it names."""

import pytest

from labkit import checks

MISTAKES = [
    ("01.csr_bytes", "no_row_ptr", lambda: 8 * round(0.1 * 384 * 1536)),
    ("01.bitmask_break_even", "bytes_not_bits", lambda: 0.25),
    ("01.min_index_dtype", "too_small", lambda: "uint8"),
    ("01.two_four_bytes", "no_positions", lambda: 384 * 384 // 2 * 4),
]


@pytest.mark.parametrize("key, hint, answer", MISTAKES, ids=[f"{k}-{h}" for k, h, _ in MISTAKES])
def test_mistake_gets_its_hint(key, hint, answer):
    assert checks.diagnose(key, answer()).startswith(checks.get(key).hint(hint))
