"""The family x technique matrix: each public technique works on each family's tiny model, or refuses clearly."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

from labkit.core import parts
from labkit.pipelines import matrix

FAMILIES = [f.name for f in parts.FAMILIES]
# DeBERTa-v2's relative-position attention shares projections across heads: heads are not removed there.
REFUSED = {("DeBERTa-v2", "structured pruning"), ("DeBERTa-v2", "pipeline")}
EXPECTED = {(f, t): "refuses" if (f, t) in REFUSED else "works" for f in FAMILIES for t in matrix.TECHNIQUES}


@pytest.mark.parametrize("technique", list(matrix.TECHNIQUES))
@pytest.mark.parametrize("family", FAMILIES)
def test_cell(family, technique, tokenizer):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cell = matrix.run_cell(family, technique, tokenizer)
    assert cell.status == EXPECTED[family, technique], cell.effect
    if cell.status == "refuses":
        assert family in cell.effect


def test_readme_prints_the_matrix():
    cells = [matrix.Cell(f, t, s, "") for (f, t), s in EXPECTED.items()]
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert matrix.markdown(cells) in readme, "README's family x technique table is out of date: " \
                                             "paste the output of `python -m labkit matrix`"


def test_every_family_is_tested_and_named_in_refusals():
    assert len(FAMILIES) >= 5
    with pytest.raises(ValueError, match=re.escape(parts.SUPPORTED)):
        parts.family_of(_OtherFamily())


class _OtherFamily(__import__("torch").nn.Module):
    class config:  # noqa: N801 - looks like a Hugging Face config of a family labkit does not know
        model_type = "gpt2"
