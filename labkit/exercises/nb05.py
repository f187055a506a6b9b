"""Notebook 05 (dynamic pruning): tokens kept at run time, the cubic sparsity schedule."""

from __future__ import annotations

import math
from typing import Any

from . import close, exercise, given


def _keep_count() -> int:
    return math.ceil(0.3 * 26)  # ceil(7.8)


@exercise("05.keep_count",
          "A snippet of 26 real tokens ([CLS] and [SEP] included) goes through token pruning with keep_ratio=0.3. "
          "How many tokens do the later layers see?",
          _keep_count,
          {"round_down": "rounding down could leave a short snippet with no token at all; labkit rounds UP.",
           "wrong": "labkit keeps ceil(keep_ratio * real length) tokens: multiply, then round UP."})
def _check_keep_count(answer: Any) -> str | None:
    answer = float(given(answer))
    if answer in (math.floor(0.3 * 26), 7.8):
        return "round_down"
    return None if answer == _keep_count() else "wrong"


def _cubic_midpoint() -> float:
    return 0.8 * (1 - (1 - 50 / 100) ** 3)


@exercise("05.cubic_midpoint",
          "A cubic schedule from 0 to 80% sparsity over 100 steps: what sparsity is reached at step 50?",
          _cubic_midpoint,
          {"linear": "that is a straight line; the cubic schedule prunes fast early: s = final * (1 - (1 - t/T)^3).",
           "wrong": "s = final * (1 - (1 - step/total)**3): at half time most of the pruning is already done."})
def _check_cubic_midpoint(answer: Any) -> str | None:
    answer = float(given(answer))
    if close(answer, 0.4):
        return "linear"
    return None if close(answer, _cubic_midpoint()) else "wrong"
