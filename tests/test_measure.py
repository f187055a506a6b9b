import io

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from labkit.core import machine, measure, results
from labkit.lab import myths
from labkit.quant import quantize


def test_agreement_counts_equal_predictions():
    assert measure.agreement(np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0])) == 0.75
    with pytest.raises(ValueError, match="same split"):
        measure.agreement(np.zeros(3), np.zeros(4))


def test_serialized_bytes_is_the_size_of_the_saved_file(tmp_path, tiny_model):
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_model.state_dict().items()}, str(path))
    assert measure.serialized_bytes(tiny_model) == path.stat().st_size


def test_quantized_modules_are_sized_as_torch_saves_them_and_nothing_is_left(tmp_path, tiny_model, monkeypatch):
    import tempfile


    q = quantize.to_int8(tiny_model)
    buf = io.BytesIO()
    torch.save(q.state_dict(), buf)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "scratch"))
    (tmp_path / "scratch").mkdir()
    assert measure.serialized_bytes(q) == buf.getbuffer().nbytes
    assert list((tmp_path / "scratch").iterdir()) == []  # the temporary artifact is gone


def test_float64_copy_doubles_the_bytes(tiny_model):
    ratio = measure.serialized_bytes(myths.cast_float64(tiny_model)) / measure.serialized_bytes(tiny_model)
    assert 1.99 < ratio <= 2.0


def test_latency_record_names_its_conditions(tiny_model, tokenizer):
    rec = measure.latency(tiny_model, tokenizer, batch_size=4, warmup=1, repeats=3)
    assert rec["batch_size"] == 4 and rec["repeats"] == 3 and rec["threads"] == torch.get_num_threads()
    assert len(rec["times_ms"]) == 3 and rec["median_ms"] == sorted(rec["times_ms"])[1] and rec["device"]
    assert rec["seq_len"] > 2  # real snippets, not an empty input


def test_latency_at_batch_one_uses_one_real_snippet():
    texts = measure.latency_texts(1)
    assert len(texts) == 1 and len(texts[0].split()) > 3


def test_predict_keeps_input_order(tiny_model, tokenizer):
    texts = ["a", "a much longer review text that goes on", "b", "mid length one"]
    preds = measure.predict(tiny_model, tokenizer, texts, batch_size=2)
    one_by_one = [int(measure.predict(tiny_model, tokenizer, [t])[0]) for t in texts]
    assert preds.tolist() == one_by_one


def test_table_ratios_against_the_baseline():
    rows = [results.Result("base", 0.8, 1.0, 1000, 10.0, 100.0), results.Result("small", 0.79, 0.97, 250, 8.0, 50.0)]
    df = results.table(rows, baseline="base").set_index("name")
    assert df.loc["small", "size_ratio"] == 4.0 and df.loc["small", "speedup_b32"] == 2.0
    with pytest.raises(ValueError, match="No result named"):
        results.table(rows, baseline="nope")


def test_speedups_come_from_one_interleaved_run():
    timing = {"base": {"median_ms": 100.0, "times_ms": [90.0, 100.0, 120.0]},
              "fast": {"median_ms": 50.0, "times_ms": [60.0, 50.0, 40.0]}}
    s = measure.speedups(timing, "base")
    assert s["fast"] == {"speedup": 2.0, "lo": 1.5, "hi": 3.0, "rounds": 3}  # per-round ratios 1.5, 2, 3
    assert s["base"]["lo"] == s["base"]["hi"] == 1.0
    with pytest.raises(ValueError, match="No timing named"):
        measure.speedups(timing, "nope")


def test_timed_group_times_every_row_beside_the_baseline(tiny_model, tokenizer):
    wide = myths.cast_float64(tiny_model)
    rows = [results.Result("base", 0.8, 1.0, 10), results.Result("f64", 0.8, 1.0, 20)]
    out = results.timed_group(rows, [tiny_model, wide], tiny_model, tokenizer, warmup=1, repeats=5)
    assert [r.name for r in out] == ["base", "f64"] and all(r.rounds == 5 for r in out)
    assert out[0].baseline_b32_ms == out[1].baseline_b32_ms == out[0].latency_b32_ms  # one group, one baseline
    assert out[0].speedup_b32 == out[0].speedup_b32_lo == out[0].speedup_b32_hi == 1.0
    assert out[1].speedup_b32_lo <= out[1].speedup_b32 <= out[1].speedup_b32_hi
    assert out[1].speedup_b32 == pytest.approx(out[1].baseline_b32_ms / out[1].latency_b32_ms)
    df = results.table(out + [results.Result("other", 0.8, 1.0, 5, 1.0, out[0].latency_b32_ms / 3)], baseline="base")
    assert df["speedup_b32_range"].iloc[0] == "[1.00, 1.00]" and df["speedup_b32_range"].iloc[2] == ""
    assert df["speedup_b32"].iloc[2] == pytest.approx(3.0)  # a row timed on its own: divided by the baseline row
    with pytest.raises(ValueError, match="one model per row"):
        results.timed_group(rows, [tiny_model], tiny_model, tokenizer)


def test_cpu_features_reads_the_vnni_flag(monkeypatch, tmp_path):
    fake = tmp_path / "cpuinfo"
    monkeypatch.setattr(machine, "CPUINFO", str(fake))
    for flags, expected in [("fpu avx2 fma", "no VNNI, no native bf16, no native fp16"),
                            ("fpu avx2 avx512f avx512_vnni", "with VNNI, no native bf16, no native fp16"),
                            ("fpu avx2 avx_vnni", "with VNNI, no native bf16, no native fp16"),
                            ("fpu avx512_vnni avx512_bf16", "with VNNI, native bf16, no native fp16"),
                            ("fpu amx_tile amx_bf16 amx_int8 avx512_fp16", "with VNNI, native bf16, native fp16, AMX")]:
        fake.write_text(f"processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: {flags}\n")
        text = machine.cpu_features()
        assert text == f"{torch.backends.cpu.get_cpu_capability()}, {expected}", text
    assert machine.cpuinfo("model name") == "Test CPU"  # what cpu_name() reports (cached per process)
    fake.unlink()  # no cpuinfo at all: only what torch itself reports
    assert machine.cpu_features() == torch.backends.cpu.get_cpu_capability()


def test_wilson_matches_scipy():
    from scipy.stats import binomtest


    for k, n in [(166, 200), (0, 50), (50, 50), (1060, 1276)]:
        ref = binomtest(k, n).proportion_ci(0.95, method="wilson")
        assert measure.wilson(k, n) == pytest.approx((ref.low, ref.high), abs=1e-9)
    with pytest.raises(ValueError, match="correct"):
        measure.wilson(5, 3)


def test_paired_is_mcnemars_exact_test():
    import numpy as np


    labels = np.ones(100, dtype=int)
    a = labels.copy()
    b = labels.copy()
    a[:2] = 0   # 2 snippets only B gets right
    b[2:12] = 0  # 10 snippets only A gets right
    r = measure.paired(a, b, labels)
    assert (r["only_a_right"], r["only_b_right"]) == (10, 2)
    assert r["difference"] == pytest.approx(0.08)
    assert r["p_value"] == pytest.approx(2 * (1 + 12 + 66) / 4096)  # two-sided binomial tail, n=12, k<=2
    assert r["lo"] < r["difference"] < r["hi"]
    assert measure.paired(a, a, labels)["p_value"] == 1.0


def test_footprint_finds_embeddings_blocks_and_head(tiny_model):
    fp = measure.footprint(tiny_model, seq_len=10)
    params = sum(p.numel() for p in tiny_model.parameters())
    assert fp["params"].sum() == params and fp["bytes"].sum() == 4 * params
    assert list(fp.index) == ["embeddings", "block 0", "block 1", "head"]
    assert fp.loc["embeddings", "macs_per_snippet"] == 0
    # each block: q, k, v, o (32x32) and the FFN (32x64 twice), every token
    assert fp.loc["block 0", "macs_per_snippet"] == 10 * (4 * 32 * 32 + 2 * 32 * 64)


def test_compare_latency_times_plain_functions_interleaved_without_a_tokenizer():
    calls = []
    timing = measure.compare_latency({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                                     warmup=1, repeats=3)
    assert calls == ["a", "b"] * 4  # round by round, the warm-up first
    assert len(timing["a"]["times_ms"]) == 3 and timing["b"]["repeats"] == 3 and "seq_len" not in timing["a"]
    assert set(measure.speedups(timing, "a")) == {"a", "b"}
    with pytest.raises(ValueError, match="tokenizer"):
        measure.compare_latency({"model": torch.nn.Linear(2, 2)})
