"""labkit.lab.points: one slider-point type, measured the kit's way, computed once per setting."""

import pytest

from labkit.core import data, measure
from labkit.lab import points


def test_a_point_of_the_baseline_agrees_with_itself_and_reads_in_one_line(baseline):
    base, tok = baseline
    p = points.measure_point(base, {"bits": 32}, tok, time=False)
    rows = data.split(data.QUICK_SPLIT, data.QUICK_LIMIT)
    want = measure.accuracy_ci(measure.predict(base, tok, rows["text"]), rows["label"].to_numpy())
    assert (p.accuracy, p.lo, p.hi, p.n) == (want["accuracy"], want["lo"], want["hi"], want["n"])
    assert p.agreement == 1.0 and p.size_bytes == p.baseline_bytes == measure.serialized_bytes(base)
    assert p.row()["bits"] == 32 and "accuracy" in p.row()
    assert p.readout().startswith("accuracy ") and "agreement 1.000" in p.readout()


def test_a_changed_model_is_timed_beside_the_baseline(baseline):
    base, tok = baseline
    copy = base.__class__(base.config)
    copy.load_state_dict(base.state_dict())
    p = points.measure_point(copy.eval(), {"copy": True}, tok, size=123, note="same weights")
    assert p.agreement == 1.0 and p.size_bytes == 123 and p.extra == {"note": "same weights"}
    assert p.latency_ms > 0 and p.baseline_ms > 0 and p.speedup_lo <= p.speedup <= p.speedup_hi


def test_cached_points_are_computed_once_per_setting():
    calls = []

    @points.cached
    def point(x, y=1):
        calls.append((x, y))
        return x + y

    assert point(1) == point(1) == 2 and point(1, y=2) == 3
    assert point(x=1) == point(1, 1) == point(y=2, x=1) - 1  # by name, by position or by default: one point
    assert calls == [(1, 1), (1, 2)]
    point.cache_clear()
    point(1)
    assert calls[-1] == (1, 1) and len(calls) == 3


def test_points_make_one_table():
    a = points.Point({"bits": 4}, 0.8, 0.75, 0.85, 200, agreement=0.9)
    b = points.Point({"bits": 8}, 0.85, 0.8, 0.9, 200, agreement=0.99, extra={"note": "x"})
    df = points.table([a, b])
    assert list(df["bits"]) == [4, 8] and list(df["lo"]) == [0.75, 0.8] and df["note"].iloc[1] == "x"


def test_a_bad_size_is_refused(baseline):
    with pytest.raises((TypeError, ValueError)):
        points.measure_point(baseline[0], {}, baseline[1], time=False, size="big")


def test_a_point_carries_its_paired_difference_from_the_baseline(baseline):
    base, tok = baseline
    rows = data.split(data.QUICK_SPLIT, data.QUICK_LIMIT)
    flipped = 1 - measure.predict(base, tok, rows["text"])  # a reference that disagrees everywhere (two labels)
    p = points.measure_point(base, {}, tok, time=False, size=False, reference=flipped)
    want = measure.paired(measure.predict(base, tok, rows["text"]), flipped, rows["label"].to_numpy())
    assert (p.delta, p.delta_lo, p.delta_hi, p.p_value) == (want["difference"], want["lo"], want["hi"],
                                                             want["p_value"])
    assert "vs baseline" in p.readout() and "vs baseline" not in points.measure_point(base, {}, tok, time=False,
                                                                                        size=False).readout()


def test_calls_binding_the_same_arguments_share_one_cache_entry():
    calls = []

    @points.cached
    def point(bits=8, scheme="asymmetric", **extra):
        calls.append(bits)
        return bits

    assert point() == point(8) == point(bits=8) == point(8, "asymmetric") == 8
    assert point(extra=1) == point(extra=1) == 8
    assert calls == [8, 8]
