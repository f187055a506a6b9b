import pickle

import pandas as pd
import pytest
import torch

from labkit.core import checkpoint, data, measure, parts
from labkit.pipelines import strategies
from labkit.prune import prune
from labkit.quant import floats as precision
from labkit.quant import quantize


def test_pareto_front_keeps_only_undominated_rows():
    df = pd.DataFrame({"accuracy": [0.80, 0.79, 0.70, 0.80], "latency_b32_ms": [100, 50, 60, 100],
                       "size_bytes": [90, 20, 30, 80]})
    # row 2 is beaten by row 1 on everything; row 0 by row 3 (same accuracy and latency, smaller)
    assert strategies.pareto_front(df).tolist() == [False, True, False, True]


@pytest.mark.parametrize("steps, match", [
    ([("int8", {}), ("structured", {"heads": 0.3})], "before 'int8'"),
    ([("int8", {}), ("token_pruning", {"keep_ratio": 0.5, "start_layer": 2})], "before 'int8'"),
    ([("distill", {})], "Unknown step"),
    (["int8"], r"\(name, options\) pair"),
    ([("token_pruning", {}), ("token_pruning", {})], "twice"),
    ([("token_pruning", {}), ("int8", {"backend": "onnxruntime"})], "backend='torch'"),
])
def test_impossible_pipelines_are_refused_with_the_fix(steps, match):
    with pytest.raises(ValueError, match=match):
        strategies.validate(steps)


def test_pipeline_returns_a_new_model_and_leaves_the_input_alone(tiny_model, tokenizer):
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    out = strategies.run_pipeline(tiny_model, tokenizer, [("magnitude", {"sparsity": 0.5}), ("int8", {})])
    assert out is not tiny_model
    for k, v in tiny_model.state_dict().items():
        assert torch.equal(v, before[k]), k
    ids = torch.tensor([[101, 2307, 3185, 102]])
    assert out(input_ids=ids).logits.shape == (1, 2)


@pytest.mark.parametrize("steps, shared", [([("token_pruning", {"keep_ratio": 0.5, "start_layer": 1})], True),
                                           ([("precision", {"precision": "bf16"})], False),
                                           ([("magnitude", {"sparsity": 0.5})], False)])
def test_read_only_pipelines_share_the_input_weights_and_leave_them_alone(tiny_model, tokenizer, steps, shared):
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    out = strategies.run_pipeline(tiny_model, tokenizer, steps)
    ptrs = {p.data_ptr() for p in tiny_model.parameters()}
    assert all(p.data_ptr() in ptrs for p in out.parameters()) is shared  # a bf16 cast or pruning: new tensors
    assert all(torch.equal(v, before[k]) and v.dtype == before[k].dtype for k, v in tiny_model.state_dict().items())


def test_distilled_recovery_learns_from_the_input_model(tiny_model, tokenizer, monkeypatch):
    seen = {}
    real = prune.recover

    def spy(model, tokenizer, **options):
        seen.update(options)
        return real(model, tokenizer, **options)

    monkeypatch.setattr(prune, "recover", spy)
    steps = [("structured", {"heads": 0.5, "ffn": 0.5}), ("recover", {"steps": 1, "batch_size": 4, "distill": True})]
    out = strategies.run_pipeline(tiny_model, tokenizer, steps)
    assert seen["teacher"] is tiny_model and "distill" not in seen
    assert steps[1][1]["distill"] is True  # the caller's options are not consumed
    assert out.bert.encoder.layer[0].intermediate.dense.out_features == 32


def test_every_shipped_configuration_is_valid():
    for name, steps in strategies.configurations().items():
        strategies.validate(steps)
        assert strategies.describe(steps).split(" -> ")[0].split("(")[0] == steps[0][0], name


def test_safetensors_round_trip_and_tampered_file_is_refused(tmp_path, tiny_model):
    path = tmp_path / "m.safetensors"
    record = checkpoint.save_model(tiny_model, path)
    loaded = checkpoint.load_model(path, tiny_model)
    for (k, a), b in zip(tiny_model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF  # one flipped byte
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="Refusing to load"):
        checkpoint.load_model(path, tiny_model)
    assert len(record["sha256"]) == 64
    with pytest.raises(ValueError, match="safetensors"):
        checkpoint.save_model(tiny_model, tmp_path / "m.pt")


def test_pickle_hazard_runs_code_only_without_weights_only(tmp_path):
    demo = strategies.pickle_hazard(tmp_path)
    assert demo["plain_unpickle_ran_code"] and demo["weights_only_refused"]
    assert not demo["ran_under_weights_only"]
    with pytest.raises(pickle.UnpicklingError):
        checkpoint.safe_torch_load(tmp_path / "innocent_looking_checkpoint.pt")


def test_plain_tensors_still_load_with_weights_only(tmp_path):
    torch.save({"w": torch.ones(3)}, tmp_path / "ok.pt")
    assert torch.equal(checkpoint.safe_torch_load(tmp_path / "ok.pt")["w"], torch.ones(3))


def test_every_torch_load_in_labkit_is_weights_only():
    from pathlib import Path

    for src in Path(strategies.__file__).parent.glob("*.py"):
        for line in src.read_text().splitlines():
            if "torch.load(" in line and not line.strip().startswith(("#", '"')):
                assert "weights_only=True" in line, f"{src.name}: {line.strip()}"


def test_perturbations_are_reproducible_and_keep_words():
    texts = ["A thoroughly enjoyable film with wonderful performances"]
    typo = strategies.perturb(texts, "typos", rate=1.0)
    assert typo == strategies.perturb(texts, "typos", rate=1.0) and typo != texts
    assert len(typo[0].split()) == len(texts[0].split())
    assert sorted(typo[0]) == sorted(texts[0])  # letters swapped, none lost
    assert strategies.perturb(texts, "upper")[0] == texts[0].upper()
    with pytest.raises(ValueError, match="typos"):
        strategies.perturb(texts, "emoji")


def test_robustness_table_on_a_small_subset(tiny_model, tokenizer):
    df = strategies.robustness({"tiny": tiny_model}, tokenizer, kinds=("clean", "upper"), limit=16)
    assert list(df["input"]) == ["clean", "upper"]
    # The clean row is the model's ordinary test accuracy; the drop is measured from it, in points.
    clean, upper = df["accuracy"]
    assert clean == measure.accuracy(tiny_model, tokenizer, "test", 16)
    assert df["drop_points"].tolist() == pytest.approx([0.0, 100 * (clean - upper)])
    assert (df["accuracy_lo"] <= df["accuracy"]).all() and (df["accuracy"] <= df["accuracy_hi"]).all()


def test_thread_scaling_restores_the_thread_count(tiny_model, tokenizer):
    before = torch.get_num_threads()
    df = strategies.thread_scaling(tiny_model, tokenizer, threads=(1,), batch_sizes=(1, 4))
    assert torch.get_num_threads() == before
    assert list(df["batch_size"]) == [1, 4]
    # throughput is the batch over its own median time, not another row's
    assert df["snippets_per_s"].tolist() == pytest.approx((1000 * df["batch_size"] / df["median_ms"]).tolist())
    with pytest.raises(ValueError, match="threads"):
        strategies.thread_scaling(tiny_model, tokenizer, threads=(10_000,))


def test_texts_of_length_reach_about_the_requested_tokens(tokenizer):
    texts = strategies.texts_of_length(64, batch_size=4)
    lengths = [len(tokenizer(t)["input_ids"]) for t in texts]
    assert all(40 <= n <= 90 for n in lengths), lengths


def test_devices_lists_cpu_first():
    assert strategies.devices()[0] == "cpu"
    assert ("cuda" in strategies.devices()) == torch.cuda.is_available()


def test_token_pruning_runs_on_a_structurally_pruned_model(tiny_model, tokenizer):
    # Layers keep fewer heads than config.num_attention_heads says after structured pruning.
    out = strategies.run_pipeline(tiny_model, tokenizer, [("structured", {"heads": 0.5, "ffn": 0.5}),
                                                         ("token_pruning", {"keep_ratio": 0.5, "start_layer": 1})])
    enc = tokenizer(["a fine, funny and moving film", "dull"], padding=True, return_tensors="pt")
    assert out(**enc).logits.shape == (2, 2)


def test_dashboard_point_refuses_unknown_quantization():
    with pytest.raises(ValueError, match="real int8"):
        strategies.dashboard_point(quantization="int4")


def test_unmeasured_rows_are_never_on_the_front():
    df = pd.DataFrame({"accuracy": [0.8, 0.9], "latency_b32_ms": [100.0, float("nan")], "size_bytes": [90, 10]})
    assert strategies.pareto_front(df).tolist() == [True, False]


def test_compare_records_intervals_split_and_a_learners_front(tiny_model, tokenizer):
    reference = measure.predictions(tiny_model, tokenizer, "val", 20)
    seen = []

    def front(df):
        seen.append(len(df))
        return pd.Series([True] * len(df), index=df.index)

    df = strategies.compare({"a": tiny_model, "b": tiny_model}, tokenizer, reference, limit=20, progress=False,
                            split="val", front=front)
    assert seen == [2] and df["pareto"].all() and set(df["split"]) == {"val"} and (df["n"] == 20).all()
    assert (df["accuracy_lo"] <= df["accuracy"]).all() and (df["accuracy"] <= df["accuracy_hi"]).all()
    assert strategies.choose(df) in {"a", "b"}


def test_choose_refuses_a_table_measured_on_the_test_split():
    df = pd.DataFrame({"name": ["base", "fast"], "accuracy": [0.8, 0.8], "latency_b32_ms": [100.0, 50.0],
                       "size_bytes": [90, 20], "pareto": [False, True], "split": ["test", "test"]})
    with pytest.raises(ValueError, match="validation"):
        strategies.choose(df)
    df["split"] = "val"
    assert strategies.choose(df) == "fast"
    df["accuracy"] = [0.8, 0.7]  # too far below the baseline: keep the baseline
    assert strategies.choose(df, max_drop=0.01) == "base"


def test_mark_front_refuses_an_answer_that_is_not_one_flag_per_row():
    df = pd.DataFrame({"accuracy": [0.8, 0.7], "latency_b32_ms": [1.0, 2.0], "size_bytes": [1, 2]})
    with pytest.raises(ValueError, match="one True/False per row"):
        strategies.mark_front(df, lambda d: d[d["accuracy"] > 0.75])
    assert strategies.mark_front(df).tolist() == [True, False]


def test_readout_gives_the_interval_and_the_paired_difference():
    point = {"name": "int8", "simulated": False, "accuracy": 0.82, "accuracy_lo": 0.76, "accuracy_hi": 0.87,
             "n": 200, "delta": -0.01, "delta_lo": -0.03, "delta_hi": 0.01, "p_value": 0.45, "agreement": 0.97}
    text = strategies.readout(point)
    assert "0.820 [0.760, 0.870] (n=200)" in text and "-1.0 points" in text and "cannot" not in text
    assert "no difference" in text


def test_pipeline_with_a_precision_step_and_the_orders_it_refuses(tokenizer):
    import torch


    tiny = parts.tiny_classifier("DistilBERT")
    out = strategies.run_pipeline(tiny, tokenizer, [("structured", {"heads": 0.25, "ffn": 0.5}),
                                                    ("precision", {"precision": "bf16"})])
    assert parts.dtype_of(out) == "bf16" and parts.dtype_of(tiny) == "fp32"
    assert parts.blocks(out)[0].ffn_size == 32  # half of 64 neurons kept, then cast
    with torch.inference_mode():
        out(**parts.feed(out, dict(tokenizer(["a film"], return_tensors="pt"))))
    for steps in ([("precision", {"precision": "bf16"}), ("int8", {})],
                  [("precision", {"precision": "bf16"}), ("recover", {})],
                  [("int8", {}), ("precision", {"precision": "bf16"})]):
        with pytest.raises(ValueError, match="precision"):
            strategies.validate(steps)
    with pytest.raises(ValueError, match="float32"):
        quantize.to_int8(precision.to_precision(tiny, "bf16"))


def _cheap(steps):
    """A shipped pipeline shrunk for a 2-layer model: one recovery step, token pruning from layer 1."""
    shrink = {"recover": {"steps": 1, "batch_size": 4}, "token_pruning": {"start_layer": 1}}
    return [(name, dict(options, **shrink.get(name, {}))) for name, options in steps]


def test_shipped_precision_pipelines_run_and_give_a_bf16_model(tokenizer):
    tiny = parts.tiny_classifier("BERT")
    configs = {k: v for k, v in strategies.configurations().items() if v[-1][0] == "precision"}
    assert {"bf16", "structured + recover + bf16", "token pruning + bf16"} <= set(configs)
    enc = dict(tokenizer(["a fine, funny and moving film", "dull"], padding=True, return_tensors="pt"))
    for name, steps in configs.items():
        out = strategies.run_pipeline(tiny, tokenizer, _cheap(steps))
        assert parts.dtype_of(out) == "bf16" and parts.dtype_of(tiny) == "fp32", name
        with torch.inference_mode():
            assert out(**parts.feed(out, enc)).logits.shape == (2, 2), name


@pytest.fixture()
def tiny_dashboard(monkeypatch, tokenizer):
    """The dashboard on a tiny random classifier (its reference: its own quick-subset answers), history emptied."""
    tiny = parts.tiny_classifier("BERT")
    reference = measure.predictions(tiny, tokenizer, data.QUICK_SPLIT, strategies.QUICK_LIMIT)
    monkeypatch.setattr(strategies, "_dash_baseline", lambda: (tiny, tokenizer, reference))
    monkeypatch.setitem(strategies._DASH, "points", {})
    return tiny


def test_dashboard_point_in_bf16_is_named_cached_and_half_the_size(tiny_dashboard):
    fp32 = strategies.dashboard_point()
    bf16 = strategies.dashboard_point(precision="bf16")
    assert fp32["name"] == "fp32" and bf16["name"] == "bf16" and bf16["precision"] == "bf16"
    assert 0.45 < bf16["size_mb"] / fp32["size_mb"] < 0.55  # two bytes per weight instead of four
    assert strategies.dashboard_point(precision="bf16") is bf16  # cached under its own key
    sim = strategies.dashboard_point(quantization="simulated", bits=4, precision="bf16")
    assert sim["name"] == "4b-sim bf16" and sim["simulated"]
    assert sim["size_mb"] < strategies.dashboard_point(quantization="simulated", bits=4)["size_mb"]
    history = strategies.dashboard_history()
    assert list(history["precision"]) == ["fp32", "bf16", "bf16", "fp32"]
    assert "bf16" in strategies.readout(bf16)


def test_dashboard_refuses_combinations_that_cannot_run(tiny_dashboard, monkeypatch):
    for p in ("bf16", "fp16"):
        with pytest.raises(ValueError, match="Set precision to fp32 to run real int8"):
            strategies.dashboard_point(quantization="real int8", precision=p)
    with pytest.raises(ValueError, match="fp32, bf16, fp16"):
        strategies.dashboard_point(precision="fp8")
    # a CPU whose torch has no fp16 kernels: the point is refused with the way out, not a crash mid-measurement
    monkeypatch.setattr(precision, "_fp16_error", lambda device: '"addmm_impl_cpu_" not implemented for "Half"')
    with pytest.raises(ValueError, match="Use 'bf16'"):
        strategies.dashboard_point(precision="fp16")
    assert strategies._DASH["points"] == {}  # nothing half-measured was recorded
