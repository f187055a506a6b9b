"""Each targeted hint of notebook 03's exercises, reached by the mistake it names."""

import pytest

from labkit import checks

from labkit.exercises.nb03 import EX_WEIGHT  # noqa: E402

MISTAKES = [
    ("03.remaining_weights", "removed", lambda: round(0.7 * 1536 * 384)),
    ("03.head_params", "no_output", lambda: 4 * 32 * (3 * 384 + 3)),
    ("03.magnitude_mask", "signed", lambda: EX_WEIGHT >= EX_WEIGHT.flatten().sort(descending=True).values[3]),
    ("03.magnitude_mask", "shape", lambda: EX_WEIGHT.abs().flatten() > 0.3),
    ("03.zeros_speedup", "halved", lambda: 2.0),
]


@pytest.mark.parametrize("key, hint, answer", MISTAKES, ids=[f"{k}-{h}" for k, h, _ in MISTAKES])
def test_mistake_gets_its_hint(key, hint, answer):
    assert checks.diagnose(key, answer()).startswith(checks.get(key).hint(hint))
