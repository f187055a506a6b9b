"""Memory for classroom hubs (issue 17): weights read into place, recomputed activations, freed pages returned."""

from pathlib import Path

import pytest
import torch

from labkit.core import checkpoint, data, measure, memory, parts, train

TRAIN = (["a fine film", "a dull film", "great acting", "boring plot"] * 4, [1, 0, 1, 0] * 4)


@pytest.mark.parametrize("env, want", [({"LABKIT_LEAN": "1"}, True), ({"LABKIT_LEAN": "0", "MEM_LIMIT": "1G"}, False),
                                       ({"MEM_LIMIT": "2G"}, True), ({"MEM_LIMIT": "2147483648"}, True),
                                       ({"MEM_LIMIT": "16G"}, False)])
def test_tight_reads_the_override_then_the_hubs_limit(monkeypatch, env, want):
    monkeypatch.setattr(memory, "_cgroup_limit", lambda: None)
    for name in ("LABKIT_LEAN", "MEM_LIMIT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert memory.tight() is want


def test_needs_reads_the_measured_table_and_names_the_limit(monkeypatch, tmp_path):
    table = tmp_path / "m.json"
    table.write_text('{"fast": {"02_quantization": 1073741824}, "full": {}, "how": "a test"}')
    monkeypatch.setattr(memory, "MEASURED", table)
    monkeypatch.setenv("LABKIT_FAST", "1")
    monkeypatch.setenv("MEM_LIMIT", "2G")
    line = memory.needs("02")
    assert "1.00 GiB in fast mode" in line and "a test" in line and "limit is 2.00 GiB" in line
    assert "no measured peak" in memory.needs("05")
    monkeypatch.setattr(memory, "MEASURED", tmp_path / "absent.json")
    assert "no measured peak" in memory.needs("02")


def test_every_notebook_has_a_measured_fast_peak():
    stems = {p.stem for p in (Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb")}
    assert stems <= set(memory.measured()["fast"]), "run benchmarks/notebook_memory.py --write"


def test_a_small_cgroup_limit_is_tight(monkeypatch):
    for name in ("LABKIT_LEAN", "MEM_LIMIT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(memory, "_cgroup_limit", lambda: 2 * 2 ** 30)
    assert memory.tight()
    monkeypatch.setattr(memory, "_cgroup_limit", lambda: 64 * 2 ** 30)
    assert not memory.tight()


def test_release_and_trim_run_everywhere():
    assert memory.release() is None and memory.trim() is None  # glibc: malloc_trim; elsewhere nothing to trim


@pytest.mark.parametrize("family", [f.name for f in parts.FAMILIES])
def test_lean_fine_tuning_trains_to_the_same_weights_and_is_undone(family, tokenizer):
    lean, plain = parts.tiny_classifier(family), parts.tiny_classifier(family)
    hist = train.fit(lean, tokenizer, *TRAIN, steps=3, lr=1e-2, batch_size=8, lean=True, freeze_embeddings=False)
    ref = train.fit(plain, tokenizer, *TRAIN, steps=3, lr=1e-2, batch_size=8, lean=False)
    # dropout's random state is replayed in the recomputation; the fused AdamW rounds its last bit differently
    assert [h["loss"] for h in hist] == pytest.approx([h["loss"] for h in ref], abs=1e-5)
    for (name, a), b in zip(lean.state_dict().items(), plain.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5, msg=name)
    assert not lean.is_activation_checkpointing and not getattr(lean, "_require_grads_hooks", [])
    assert not lean.get_input_embeddings()._forward_hooks  # the embeddings' hook is gone again


@pytest.mark.parametrize("family", [f.name for f in parts.FAMILIES])
def test_lean_fine_tuning_freezes_the_word_embeddings_and_trains_the_rest(family, tokenizer):
    lean, start = parts.tiny_classifier(family), parts.tiny_classifier(family)
    train.fit(lean, tokenizer, *TRAIN, steps=3, lr=1e-2, batch_size=8, lean=True)
    embed = lean.get_input_embeddings().weight
    assert torch.equal(embed, start.get_input_embeddings().weight)  # not one bit moved
    assert embed.requires_grad  # and trainable again afterwards
    changed = [n for (n, a), b in zip(lean.named_parameters(), start.parameters()) if not torch.equal(a, b)]
    assert len(changed) == sum(1 for p in lean.parameters()) - 1, changed  # every other weight trained


@pytest.mark.parametrize("tight", [True, False])
def test_a_copy_to_fit_shares_only_the_embedding_fit_freezes(monkeypatch, tokenizer, tight):
    monkeypatch.setenv("LABKIT_LEAN", "1" if tight else "0")
    monkeypatch.delenv("MEM_LIMIT", raising=False)
    start = parts.tiny_classifier("BERT")
    before = {k: v.clone() for k, v in start.state_dict().items()}
    work = train.copy_sharing_embedding(start)
    embed = start.get_input_embeddings().weight
    assert (work.get_input_embeddings().weight.data_ptr() == embed.data_ptr()) is tight
    train.fit(work, tokenizer, *TRAIN, steps=2, lr=1e-2, batch_size=8)  # lean and frozen exactly where tight
    assert all(torch.equal(v, before[k]) for k, v in start.state_dict().items())  # the caller's model untouched
    assert torch.equal(work.get_input_embeddings().weight, embed) is tight  # frozen where shared, trained elsewhere


def test_frozen_embeddings_leaves_a_tied_embedding_alone(tokenizer):
    from transformers import AutoModelForCausalLM, GPT2Config

    lm = AutoModelForCausalLM.from_config(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64))
    assert lm.get_output_embeddings().weight is lm.get_input_embeddings().weight  # tied: it is also the LM head
    with train.frozen_embeddings(lm):
        assert lm.get_input_embeddings().weight.requires_grad
    clf = parts.tiny_classifier(parts.FAMILIES[0].name)
    clf.get_input_embeddings().weight.requires_grad_(False)  # frozen by the caller: still frozen afterwards
    with train.frozen_embeddings(clf):
        pass
    assert not clf.get_input_embeddings().weight.requires_grad


def test_recomputed_activations_give_the_same_gradients(tiny_model, tokenizer):
    enc = dict(tokenizer(TRAIN[0][:4], padding=True, return_tensors="pt"))
    grads = []
    for on in (True, False):
        tiny_model.zero_grad()
        tiny_model.train()
        torch.manual_seed(0)  # the same dropout masks in both runs
        with train.recomputed_activations(tiny_model, on):
            tiny_model(**enc, labels=torch.tensor(TRAIN[1][:4])).loss.backward()
        grads.append([p.grad.clone() for p in tiny_model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_a_model_already_recomputing_is_left_so(tokenizer):
    m = parts.tiny_classifier("BERT")
    m.activation_checkpointing_enable({"use_reentrant": False})
    train.fit(m, tokenizer, *TRAIN, steps=1, batch_size=8)
    assert m.is_activation_checkpointing


def test_weights_are_read_into_place_all_or_nothing(tmp_path, tiny_model):
    path = tmp_path / "m.safetensors"
    checkpoint.save_checkpoint(tiny_model, path, {})
    target = parts.clone(tiny_model)
    with torch.no_grad():
        for p in target.parameters():
            p.zero_()
    storage = next(target.parameters()).data_ptr()
    assert checkpoint.read_weights_into(target, path) is target
    assert next(target.parameters()).data_ptr() == storage  # the model's own tensors, no second copy
    for (name, a), b in zip(target.state_dict().items(), tiny_model.state_dict().values()):
        assert torch.equal(a, b), name

    other = parts.tiny_classifier("BERT", num_labels=3)  # the head's shape differs
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ValueError, match="rebuild"):
        checkpoint.read_weights_into(other, path)
    assert all(torch.equal(v, before[k]) for k, v in other.state_dict().items())  # nothing was written
    with pytest.raises(ValueError, match="does not fit"):
        checkpoint.read_weights_into(parts.tiny_classifier("DistilBERT"), path)


def test_trim_after_cells_hooks_once_and_only_where_memory_is_tight(monkeypatch):
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    calls = []
    monkeypatch.setattr(memory, "trim", lambda: calls.append(1))
    try:
        monkeypatch.setenv("LABKIT_LEAN", "0")
        assert memory.trim_after_cells() is False
        shell.run_cell("x = 1")
        assert calls == []
        monkeypatch.setenv("LABKIT_LEAN", "1")
        assert memory.trim_after_cells() is True and memory.trim_after_cells() is True
        shell.run_cell("x = 2")
        assert calls == [1]  # one hook, run once after the cell
    finally:
        for fn in list(shell.events.callbacks["post_run_cell"]):
            if fn is memory._trim_after_cell:
                shell.events.unregister("post_run_cell", fn)
        InteractiveShell.clear_instance()


def test_trim_after_cells_does_nothing_outside_a_kernel(monkeypatch):
    monkeypatch.setenv("LABKIT_LEAN", "1")
    assert memory.trim_after_cells() is False


def test_gives_back_trims_after_the_point_even_when_it_fails(monkeypatch):
    calls = []
    monkeypatch.setattr(memory, "trim", lambda: calls.append(1))

    @memory.gives_back
    def point(x: int) -> int:
        """A point."""
        if x < 0:
            raise ValueError("negative")
        return 2 * x

    assert point(3) == 6 and calls == [1] and point.__doc__ == "A point."
    with pytest.raises(ValueError, match="negative"):
        point(-1)
    assert calls == [1, 1]


def test_micro_batches_add_up_to_the_whole_batch(tokenizer):
    import contextlib


    model = parts.tiny_classifier(parts.FAMILIES[0].name).train()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0  # each slice draws its own dropout masks: without dropout the sums must agree
    batch = next(iter(data.batches(*TRAIN, tokenizer, 8, shuffle_seed=0)))
    grads, losses = [], []
    for micro in (None, 3):  # whole, then slices of 3, 3 and 2 rows
        model.zero_grad(set_to_none=True)
        losses.append(train._backward(model, batch, None, 2.0, contextlib.nullcontext(), None, micro))
        grads.append([p.grad.clone() for p in model.parameters()])
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="micro_batch"):
        train.fit_steps(model, tokenizer, *TRAIN, steps=1, micro_batch=0)


def test_predict_hands_pages_back_only_where_memory_is_tight(monkeypatch, tiny_model, tokenizer):
    calls = []
    monkeypatch.setattr(memory, "trim", lambda: calls.append(1))
    monkeypatch.setenv("LABKIT_LEAN", "0")
    plain = measure.predict(tiny_model, tokenizer, ["a good film", "a bad one"])
    assert calls == []
    monkeypatch.setenv("LABKIT_LEAN", "1")
    lean = measure.predict(tiny_model, tokenizer, ["a good film", "a bad one"])
    assert calls == [1] and (lean == plain).all()


def _benchmark(name: str = "notebook_memory"):
    """benchmarks/<name>.py as a module (the benchmarks folder is not a package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_recording_peaks_from_a_second_machine_keeps_the_larger_and_names_both(monkeypatch, tmp_path):
    import json

    bench = _benchmark()
    table = tmp_path / "m.json"
    table.write_text(json.dumps({"fast": {"02": 100, "06": 300}, "full": {"02": 7}, "how": "machine A"}))
    monkeypatch.setattr(memory, "MEASURED", table)
    bench.record("fast", {"02": 150, "06": 200, "08": 50}, "machine B", keep_larger=True)
    got = json.loads(table.read_text())
    assert got["fast"] == {"02": 150, "06": 300, "08": 50} and got["full"] == {"02": 7}
    assert got["how"] == "machine A; the larger kept against machine B"
    bench.record("fast", {"06": 200}, "machine C")  # without keep_larger: this run's peak and words replace them
    got = json.loads(table.read_text())
    assert got["fast"]["06"] == 200 and got["how"] == "machine C"
    assert not list(tmp_path.glob("*.tmp"))  # written whole, then moved into place


def test_keep_larger_needs_write(capsys):
    with pytest.raises(SystemExit) as stop:
        _benchmark().main(["--keep-larger"])
    assert stop.value.code == 2 and "--write --keep-larger" in capsys.readouterr().err


def test_slm_memory_reads_proc_fields_in_bytes_and_refuses_no_kernels(capsys):
    bench = _benchmark("slm_memory")
    mine = bench._kib(Path("/proc/self/status"), ("VmRSS", "RssAnon"))
    assert set(mine) == {"VmRSS", "RssAnon"} and 0 < mine["RssAnon"] <= mine["VmRSS"]
    assert mine["VmRSS"] % 1024 == 0  # kB in the file, bytes out
    with pytest.raises(SystemExit) as stop:
        bench.main(["--kernels", "0"])
    assert stop.value.code == 2 and "--kernels 2" in capsys.readouterr().err
