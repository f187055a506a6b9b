"""Thin ipywidgets panels: every control calls a plain labkit function that tests can call directly."""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from labkit.core import settings
from labkit.lab.labels import language, t

# Changes arriving within this window are merged into one evaluation (a drag, or keys pressed quickly).
DEBOUNCE_S = 0.1


def _loop() -> asyncio.AbstractEventLoop | None:
    """The kernel's running event loop, or None in plain Python (scripts, unit tests)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    # Only a Jupyter kernel's loop delivers widget changes; another library's loop running in this
    # thread (a browser driver in a test session, say) must not turn deferred updates on.
    if getattr(get_ipython(), "kernel", None) is None:
        return None
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _later(delay: float, callback: Callable[[], None]):
    """Schedule `callback` on the kernel's event loop; None when no loop runs."""
    loop = _loop()
    return None if loop is None else loop.call_later(delay, callback)


def _captured(draw: Callable[[], None]) -> tuple[dict, ...]:
    """Run `draw` and return what it printed/displayed as Output-widget outputs (nbformat dicts)."""
    from IPython.utils.capture import capture_output

    with capture_output() as cap:
        draw()
    outputs: list[dict] = []
    if cap.stdout:
        outputs.append({"output_type": "stream", "name": "stdout", "text": cap.stdout})
    if cap.stderr:
        outputs.append({"output_type": "stream", "name": "stderr", "text": cap.stderr})
    for rich in cap.outputs:
        outputs.append({"output_type": "display_data", "data": rich.data, "metadata": rich.metadata or {}})
    return tuple(outputs)


def _translate(control: Any) -> None:
    """Show a control's description and choices in the learner's language (LABKIT_LANG); its values stay English."""
    if language() == "en":
        return
    if getattr(control, "description", ""):
        control.description = t(control.description)
    options = getattr(control, "options", None)
    # Plain string choices become (label, value) pairs: `fn` still receives the English value it knows.
    if options and all(isinstance(o, str) for o in options) and any(t(o) != o for o in options):
        value = control.value
        control.options = [(t(o), o) for o in options]
        control.value = value  # setting options selects the first one


def live(fn: Callable[..., Any], controls: dict[str, Any], draw: Callable[[Any], None] | None = None,
         cache: bool = True):
    """A panel of `controls` (name -> ipywidget); each change calls `fn(**values)` and shows its result.

    `fn` is the plain function (cached per value set, so revisiting a point is instant); `draw`
    renders its result (a DataFrame or text is displayed as is). Returns the VBox, with `.refresh()`.
    Sliders report only on release, and moves made while an evaluation runs are merged: when it ends,
    only the latest values are evaluated (stale ones are skipped, never queued). In a kernel, a ValueError
    (a combination `fn` refuses) shows its message in the panel; other errors show their traceback.
    With LABKIT_LANG=zh, the controls' descriptions and string choices are shown in Chinese (labkit.lab.labels).
    """
    settings.flags(cache=cache)
    import ipywidgets as W
    from IPython.display import display

    out = W.Output()
    memo: dict[tuple, Any] = {}
    pending: dict[str, Any] = {"handle": None}
    for c in controls.values():
        _translate(c)
        if hasattr(c, "continuous_update"):  # a drag would otherwise send every intermediate value
            c.continuous_update = False

    def values() -> dict[str, Any]:
        return {k: c.value for k, c in controls.items()}

    def show(result: Any) -> None:
        if draw is not None:
            draw(result)
        elif callable(getattr(result, "readout", None)):  # a slider point (labkit.lab.points.Point)
            print(result.readout())
        else:
            display(result)

    def refresh(*_):
        pending["handle"] = None
        vals = values()
        key = tuple(sorted(vals.items()))
        try:
            if not cache or key not in memo:
                memo[key] = fn(**vals)
            if values() != vals:  # the learner moved on while we computed: the latest value wins
                return
            # Outputs are swapped in one assignment: no flicker, and it works without a browser.
            out.outputs = _captured(lambda: show(memo[key]))
        except Exception as err:
            if _loop() is None:  # no kernel: let the caller see the error
                raise
            if isinstance(err, ValueError):  # labkit's refusal of a setting says what to do: show just that
                text = t("Not possible with these settings: {error}", error=err) + "\n"
            else:  # anything else is a bug: the whole traceback helps whoever reports it
                import traceback
                text = traceback.format_exc()
            out.outputs = ({"output_type": "stream", "name": "stderr", "text": text},)

    def changed(*_):
        # Deferred to the event loop: value changes queued behind a running evaluation are applied
        # first, each cancelling the previous request, so only the last one is evaluated.
        if pending["handle"] is not None:
            pending["handle"].cancel()
        pending["handle"] = _later(DEBOUNCE_S, refresh)
        if pending["handle"] is None:
            refresh()

    for c in controls.values():
        c.observe(changed, names="value")
    # Controls wrap onto a second row rather than running off a narrow notebook's edge.
    box = W.VBox([W.HBox(list(controls.values()), layout=W.Layout(flex_flow="row wrap")), out])
    box.refresh = refresh
    box.output = out
    refresh()
    return box
