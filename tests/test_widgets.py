"""labkit.lab.widgets.live without a browser: set control values in Python, read the Output's outputs."""

import ipywidgets as W
import pandas as pd
import pytest

from labkit.lab import widgets


def _text(box) -> str:
    return "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for o in box.output.outputs)


def test_initial_render_and_update_shows_latest_result():
    calls = []

    def fn(n, word):
        calls.append((n, word))
        return f"{word} x{n}"

    controls = {"n": W.IntSlider(value=1, min=0, max=9), "word": W.Dropdown(options=["a", "b"])}
    box = widgets.live(fn, controls, draw=print)
    assert _text(box) == "a x1\n"
    controls["n"].value = 4
    assert _text(box) == "a x4\n"
    controls["word"].value = "b"
    assert _text(box) == "b x4\n"
    assert calls == [(1, "a"), (4, "a"), (4, "b")]


def test_sliders_report_on_release_only():
    controls = {"x": W.FloatSlider(value=0.5), "flag": W.Checkbox(value=True)}
    widgets.live(lambda x, flag: x, controls)
    assert controls["x"].continuous_update is False


def test_cache_reuses_points_and_can_be_disabled():
    calls = []
    for cache, expected in [(True, 2), (False, 3)]:
        calls.clear()
        s = W.IntSlider(value=1)
        widgets.live(lambda k: calls.append(k) or k, {"k": s}, cache=cache)
        s.value = 2
        s.value = 1  # back to a visited point
        assert len(calls) == expected


def test_dataframe_result_is_displayed_as_a_table():
    s = W.IntSlider(value=3)
    box = widgets.live(lambda k: pd.DataFrame({"k": [k], "k2": [k * k]}), {"k": s})
    s.value = 5
    assert len(box.output.outputs) == 1
    assert "k2" in _text(box) and "25" in _text(box)  # printed as text without a kernel, HTML in one


def test_stale_result_is_not_drawn_when_values_moved_during_evaluation():
    s = W.IntSlider(value=0, max=100)
    drawn = []

    def fn(k):
        if k == 1:  # the learner moves the slider again while this evaluation runs
            s.value = 2
        return k

    widgets.live(fn, {"k": s}, draw=drawn.append)
    s.value = 1
    assert drawn == [0, 2]  # the result for 1 arrived after the move to 2: never shown


def test_changes_during_a_running_evaluation_collapse_into_one(monkeypatch):
    """In a kernel, changes are deferred to the event loop; queued moves cancel each other."""
    scheduled = []

    class Handle:
        def __init__(self, cb):
            self.cb, self.cancelled = cb, False

        def cancel(self):
            self.cancelled = True

    def later(delay, cb):
        scheduled.append(Handle(cb))
        return scheduled[-1]

    calls = []
    s = W.IntSlider(value=0, max=100)
    box = widgets.live(lambda k: calls.append(k) or k, {"k": s}, draw=print)
    monkeypatch.setattr(widgets, "_later", later)
    for v in (10, 20, 30, 40):  # four moves arrive while the kernel is busy
        s.value = v
    assert calls == [0]  # nothing evaluated yet
    for h in scheduled:  # the event loop runs what was not cancelled
        if not h.cancelled:
            h.cb()
    assert calls == [0, 40]
    assert _text(box) == "40\n"


def test_errors_propagate_without_a_kernel():
    s = W.IntSlider(value=1)

    def fn(k):
        if k == 0:
            raise ValueError("k must be positive")
        return k

    widgets.live(fn, {"k": s})
    with pytest.raises(ValueError, match="positive"):
        s.value = 0


def test_a_foreign_event_loop_is_not_mistaken_for_a_kernel():
    """A running asyncio loop that is not a Jupyter kernel's (a browser driver's, say) keeps updates synchronous."""
    import asyncio
    import concurrent.futures

    async def inside_a_loop():
        s = W.IntSlider(value=1)
        box = widgets.live(lambda k: k * 10, {"k": s}, draw=print)
        s.value = 2
        return _text(box)

    # A thread of its own: this test session may already run a loop here (the browser tests' driver).
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        assert pool.submit(asyncio.run, inside_a_loop()).result() == "20\n"


def test_a_refused_setting_shows_its_message_in_a_kernel(monkeypatch):
    """In a kernel, a ValueError (a combination the function refuses) is shown as its message, not a traceback."""
    monkeypatch.setattr(widgets, "_loop", lambda: object())  # as if a kernel's event loop ran
    monkeypatch.setattr(widgets, "_later", lambda delay, cb: None)  # ...but evaluate at once

    def fn(k):
        if k == 0:
            raise ValueError("k must be positive; move the slider right")
        if k == 5:
            raise KeyError("a bug")
        return k

    s = W.IntSlider(value=1)
    box = widgets.live(fn, {"k": s}, draw=print)
    s.value = 0
    assert _text(box) == "Not possible with these settings: k must be positive; move the slider right\n"
    s.value = 5
    assert "Traceback" in _text(box) and "KeyError" in _text(box)
    s.value = 2
    assert _text(box) == "2\n"
