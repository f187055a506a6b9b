"""Each targeted hint of notebook 05's exercises, reached by the mistake it names."""

import pytest

from labkit import checks

MISTAKES = [
    ("05.keep_count", "round_down", lambda: 7),
    ("05.cubic_midpoint", "linear", lambda: 0.4),
]


@pytest.mark.parametrize("key, hint, answer", MISTAKES, ids=[f"{k}-{h}" for k, h, _ in MISTAKES])
def test_mistake_gets_its_hint(key, hint, answer):
    assert checks.diagnose(key, answer()).startswith(checks.get(key).hint(hint))
