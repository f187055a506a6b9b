"""Thin ipywidgets panels: every control calls a plain labkit function that tests can call directly."""

from __future__ import annotations

from typing import Any, Callable

import pandas as pd


def live(fn: Callable[..., Any], controls: dict[str, Any], draw: Callable[[Any], None] | None = None,
         cache: bool = True):
    """A panel of `controls` (name -> ipywidget); each change calls `fn(**values)` and shows its result.

    `fn` is the plain function (cached per value set, so revisiting a point is instant); `draw`
    renders its result (a DataFrame or text is displayed as is). Returns the VBox, with `.refresh()`.
    """
    import ipywidgets as W
    from IPython.display import display

    out = W.Output()
    memo: dict[tuple, Any] = {}

    def values() -> dict[str, Any]:
        return {k: c.value for k, c in controls.items()}

    def refresh(*_):
        vals = values()
        key = tuple(sorted(vals.items()))
        if not cache or key not in memo:
            memo[key] = fn(**vals)
        if values() != vals:  # the learner moved on while we computed: the latest value wins
            return
        with out:
            out.clear_output(wait=True)
            result = memo[key]
            if draw is not None:
                draw(result)
            else:
                display(result if isinstance(result, pd.DataFrame) else result)

    for c in controls.values():
        c.observe(refresh, names="value")
    box = W.VBox([W.HBox(list(controls.values())), out])
    box.refresh = refresh
    refresh()
    return box
