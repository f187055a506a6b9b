"""Notebook 00's article snippet that the tour runs too: its float64 "quantization", done so that it runs."""

from __future__ import annotations

import copy

import torch


def cast_float64(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of the model in float64: the article's idea done so it runs. Twice the bytes."""
    return copy.deepcopy(model).to(torch.float64)
