"""Each targeted hint of notebook 02's exercises, reached by the mistake it names."""

import pytest

from labkit import checks

import torch  # noqa: E402


def _scale(w, bits):
    return w.abs().max() / ((2 ** bits - 1) / 2)


MISTAKES = [
    ("02.scale_zero_point", "levels", lambda: (4 / 256, 64)),
    ("02.scale_zero_point", "zero_sign", lambda: (4 / 255, -64)),
    ("02.symmetric_round", "no_clamp", lambda: lambda w, bits: torch.round(w / _scale(w, bits))),
    ("02.symmetric_round", "no_round", lambda: lambda w, bits: torch.clamp(w / _scale(w, bits), -2 ** (bits - 1),
                                                                           2 ** (bits - 1) - 1)),
    ("02.size_4bit", "no_params", lambda: 1536 * 384 // 2),
]


@pytest.mark.parametrize("key, hint, answer", MISTAKES, ids=[f"{k}-{h}" for k, h, _ in MISTAKES])
def test_mistake_gets_its_hint(key, hint, answer):
    assert checks.diagnose(key, answer()).startswith(checks.get(key).hint(hint))
