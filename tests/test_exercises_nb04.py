"""Each targeted hint of notebook 04's exercises, reached by the mistake it names."""

import pytest

from labkit import checks

MISTAKES = [
    ("04.dynamic_scale", "symmetric", lambda: 3.1 / 127),
    ("04.dynamic_scale", "levels", lambda: 5.1 / 256),
]


@pytest.mark.parametrize("key, hint, answer", MISTAKES, ids=[f"{k}-{h}" for k, h, _ in MISTAKES])
def test_mistake_gets_its_hint(key, hint, answer):
    assert checks.diagnose(key, answer()).startswith(checks.get(key).hint(hint))
