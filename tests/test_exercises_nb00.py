"""Each targeted hint of notebook 00's exercises, reached by the mistake it names."""

import pytest

from labkit import checks

MISTAKES = [
    ("00.float64_bytes", "float32", lambda: 1536 * 384 * 4),
    ("00.int8_bytes", "no_params", lambda: 1536 * 384),
    ("00.mask_shape", "flattened", lambda: (1536 * 384 // 2,)),
]


@pytest.mark.parametrize("key, hint, answer", MISTAKES, ids=[f"{k}-{h}" for k, h, _ in MISTAKES])
def test_mistake_gets_its_hint(key, hint, answer):
    assert checks.diagnose(key, answer()).startswith(checks.get(key).hint(hint))
