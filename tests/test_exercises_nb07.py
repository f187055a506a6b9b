"""Each targeted hint of notebook 07's exercises, reached by the mistake it names."""

import pytest

from labkit import checks

from labkit import strategies  # noqa: E402


def _a_simulated_point() -> str:
    # a simulated point is never fast for real, however low its latency reads (it runs the float model)
    return strategies.dashboard_point(quantization="simulated", bits=4)["name"]


MISTAKES = [
    ("07.fastest_within_2_points", "simulated", _a_simulated_point),
]


@pytest.mark.parametrize("key, hint, answer", MISTAKES, ids=[f"{k}-{h}" for k, h, _ in MISTAKES])
def test_mistake_gets_its_hint(key, hint, answer):
    assert checks.diagnose(key, answer()).startswith(checks.get(key).hint(hint))
