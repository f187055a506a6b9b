"""A notebook's first cell: which data it reads, its memory, and what it needs of this machine."""

from __future__ import annotations

from labkit.core import data, memory
from labkit.core.textdata import TextData
from labkit.lab import labels, plots


def setup(notebook: str) -> TextData:
    """Point the kit at LABKIT_DATA (the reviews unless set), hand freed pages back after every cell where memory is
    tight (a hub, Binder), and print this notebook's measured peak memory; returns the data set in use. In the
    Chinese edition (LABKIT_LANG=zh), the figures the notebook's own code draws are labelled in Chinese too."""
    td = data.from_env()
    if labels.language() == "zh":
        plots.translate_figures()
    memory.trim_after_cells()
    print(memory.needs(notebook))
    return td
