"""Each targeted hint of notebook 06's exercises, reached by the mistake it names."""

import pytest

from labkit import checks

MISTAKES = [
    ("06.pareto", "dominated", lambda: ["fp32", "int8", "pruned", "pruned+int8", "tiny"]),
    ("06.pareto", "too_few", lambda: ["pruned+int8"]),
    ("06.order", "int8_first", lambda: ["int8", "structured", "recover"]),
    ("06.order", "recover_first", lambda: ["recover", "structured", "int8"]),
    ("06.throughput", "milliseconds", lambda: 32 / 250),
    ("06.throughput", "inverted", lambda: 0.25 / 32),
]


@pytest.mark.parametrize("key, hint, answer", MISTAKES, ids=[f"{k}-{h}" for k, h, _ in MISTAKES])
def test_mistake_gets_its_hint(key, hint, answer):
    assert checks.diagnose(key, answer()).startswith(checks.get(key).hint(hint))
