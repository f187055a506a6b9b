"""Bad data files, labels and model folders: each refused with what was seen and what to do, or handled right."""

import gzip
import re
import zipfile

import numpy as np
import pandas as pd
import pytest
import torch

from labkit import __main__ as cli
from labkit.core import assets, data, measure, model, parts

SMALL = model.TrainConfig(epochs=1, batch_size=16, lr=1e-3)


@pytest.fixture(autouse=True)
def reviews_again(tmp_path, monkeypatch):
    """Every test starts and ends on the default data, with a cache of its own."""
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LABKIT_CACHE_READONLY", raising=False)
    data.use(None)
    yield
    data.use(None)


def frame(n: int = 10) -> pd.DataFrame:
    """n texts in each of two classes, in columns `text` and `label`."""
    return pd.DataFrame({"text": [f"the {w} film number {i}" for w in ("good", "bad") for i in range(n)],
                         "label": ["pos"] * n + ["neg"] * n})


def toy() -> data.TextData:
    return data.from_frame(frame(), name="toy")


def write(path, content: bytes):
    path.write_bytes(content)
    return path


def csv_bytes(sep: str = ",") -> bytes:
    return frame().to_csv(index=False, sep=sep).encode()


def saved_model(tmp_path, tokenizer=None, name="mine", classes=2):
    """A tiny classifier saved with save_pretrained (and its tokenizer, when given)."""
    folder = tmp_path / name
    parts.tiny_classifier("BERT", classes).save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


def gpt2_folder(tmp_path, tokenizer):
    import transformers as tf

    folder = tmp_path / "gpt2"
    tf.GPT2ForSequenceClassification(tf.GPT2Config(n_layer=1, n_embd=32, n_head=2)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def meta_model():
    with torch.device("meta"):
        return parts.tiny_classifier("BERT", 2)


def placeholder_tokenizer(tmp_path):
    """What transformers builds from a model folder without tokenizer files: every word is [UNK]."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(saved_model(tmp_path, name="bare")))


def xlsx(path):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        z.writestr("xl/workbook.xml", "<workbook/>")
    return path


# --- refused: (call, exception, the fix the message must name) ------------------------------------------------------

def _with_labels(values):
    df = frame()
    df["label"] = values
    return df


CASES = [
    # files
    pytest.param(lambda t, k: data.from_csv(write(t / "a.csv", csv_bytes("\t"))), ValueError,
                 r"tab-separated.*pass sep='\\t' \(--sep", id="tsv-named-csv"),
    pytest.param(lambda t, k: data.from_csv(write(t / "a.csv", csv_bytes(";"))), ValueError,
                 r"semicolon-separated.*pass sep=';' \(--sep", id="semicolon-csv"),
    pytest.param(lambda t, k: data.from_csv(write(t / "a.csv", gzip.compress(csv_bytes()))), ValueError,
                 r"gzip-compressed.*decompress it .*name it \.csv\.gz", id="gzip-named-csv"),
    pytest.param(lambda t, k: data.from_csv(write(t / "a.csv", b"text,label\n\xa3 five,a\ncheap,b\n")), ValueError,
                 r"not UTF-8.*encoding='latin-1'.*--encoding latin-1", id="not-utf8"),
    pytest.param(lambda t, k: data.from_csv(write(t / "a.csv", csv_bytes().decode().encode("utf-16"))), ValueError,
                 r"UTF-16.*encoding='utf-16'", id="utf16-without-encoding"),
    pytest.param(lambda t, k: data.from_csv(write(t / "a.csv", csv_bytes()), encoding="klingon"), ValueError,
                 r"Unknown encoding 'klingon'.*'latin-1'", id="unknown-encoding"),
    pytest.param(lambda t, k: data.from_csv(xlsx(t / "a.csv")), ValueError, r"Excel.*pd\.read_excel\(path\)",
                 id="xlsx-named-csv"),
    pytest.param(lambda t, k: data.from_csv(write(t / "a.csv", b"PAR1" + bytes(64))), ValueError,
                 r"Parquet.*pd\.read_parquet\(path\).*from_frame", id="parquet-named-csv"),
    pytest.param(lambda t, k: data.from_csv(write(t / "a.csv", b"")), ValueError,
                 "empty; pass a CSV whose first line names its columns", id="empty-csv"),
    pytest.param(lambda t, k: data.from_csv(write(t / "a.csv", b"text,label\n")), ValueError,
                 r"no rows, only the columns \['text', 'label'\].*a row per text", id="header-only-csv"),
    pytest.param(lambda t, k: data.from_csv(t), ValueError, r"is a folder.*data\.read_folder\(path\)",
                 id="folder-given-as-csv"),
    pytest.param(lambda t, k: data.read_folder(t / "nope"), FileNotFoundError, r"No folder .*one sub-folder",
                 id="read-folder-missing"),
    pytest.param(lambda t, k: data.load("bbc", sep=";"), ValueError, "not the shipped data set 'bbc'; leave it out",
                 id="sep-for-bbc"),
    # labels and columns
    pytest.param(lambda t, k: data.from_frame(_with_labels([0] * 9 + [np.inf] + [1] * 10)), ValueError,
                 r"inf at row 9 .*drop them first \(df = df\.drop\(index=\[9\]\)\)", id="label-inf"),
    pytest.param(lambda t, k: data.from_frame(_with_labels([0] * 10 + [1] * 9 + [1.5])), ValueError,
                 r"non-integer numbers: 1\.5 at row 19.*bin continuous values", id="label-fraction"),
    pytest.param(lambda t, k: data.from_frame(_with_labels([0] * 10 + [1] * 9 + [np.nan])), ValueError,
                 r"1 row\(s\) have no label.*dropna", id="label-nan"),
    pytest.param(lambda t, k: data.from_frame(frame().rename(columns={"label": "y"})), ValueError,
                 r"no column\(s\) \['label'\]; it has \['text', 'y'\].*label=\.\.\.", id="label-column-missing"),
    pytest.param(lambda t, k: data.from_frame(frame().assign(text=range(20))), ValueError,
                 r"holds numbers .*not text\. Name the column with the texts: text=\.\.\.", id="text-column-numbers"),
    pytest.param(lambda t, k: data.from_frame(frame().assign(label="pos")), ValueError,
                 "only one class.*Check that 'label' is the label column", id="one-class"),
    pytest.param(lambda t, k: data.from_frame(frame(2)), ValueError, "at least 3 distinct texts.*Add examples",
                 id="fewer-rows-than-splits"),
    pytest.param(lambda t, k: data.from_frame(frame(), label_names=["neg", "neg"]), ValueError,
                 "names a class twice; pass each class's name once", id="label-names-twice"),
    pytest.param(lambda t, k: data.from_frame(pd.concat([frame(), frame()["text"]], axis=1)), ValueError,
                 "more than one column is named 'text'.*rename them apart", id="two-text-columns"),
    pytest.param(lambda t, k: toy().split("tset"), ValueError, "did you mean 'test'", id="split-typo"),
    pytest.param(lambda t, k: toy().split("validation"), ValueError, "did you mean 'val'", id="split-validation"),
    pytest.param(lambda t, k: data.use(str(t / "a.csv")), ValueError, r"data\.use\(data\.from_csv\(path\)\)",
                 id="use-a-csv-path"),
    pytest.param(lambda t, k: toy().split("train", 0), ValueError, "positive number", id="limit-zero"),
    pytest.param(lambda t, k: toy().split("train", "10"), TypeError, "whole number of snippets", id="limit-string"),
    pytest.param(lambda t, k: model.TrainConfig(epochs=0), ValueError, "epochs=0.*whole numbers >= 1",
                 id="train-zero-epochs"),
    pytest.param(lambda t, k: model.TrainConfig(lr=-1e-3, batch_size=2.5), ValueError,
                 r"batch_size=2\.5, lr=-0\.001.*0 < lr < 1", id="train-negative-lr"),
    # files and calls
    pytest.param(lambda t, k: data.from_csv(write(t / "a.csv", csv_bytes()), sep=";"), ValueError,
                 r"read as one column, 'text,label': its delimiter looks like ',', so pass sep=','",
                 id="wrong-sep-given"),
    pytest.param(lambda t, k: data.from_csv(write(t / "a.csv", csv_bytes().replace(b",neg", b",NA"))), ValueError,
                 r"reads \['NA'\] as missing.*keep_default_na=False", id="class-named-na"),
    pytest.param(lambda t, k: data.from_csv(123), TypeError, r"file path.*data\.from_frame\(df\)", id="csv-path-int"),
    pytest.param(lambda t, k: data.load(" "), ValueError, "pass 'reviews', 'bbc' or the path of a CSV",
                 id="load-empty-name"),
    pytest.param(lambda t, k: data.load(None), TypeError, "'reviews', 'bbc' or a CSV path", id="load-none"),
    pytest.param(lambda t, k: list(data.batches(["a", "b"], [0], k)), ValueError, "one label per text",
                 id="batches-labels-short"),
    pytest.param(lambda t, k: list(data.batches(["a"], None, k, "2")), ValueError, "whole number >= 1",
                 id="batches-size-string"),
    # labels, label names and the frame
    pytest.param(lambda t, k: data.from_frame(_with_labels([0] * 10 + [1e20] * 10)), ValueError,
                 r"not a class: 1e\+20 at row 10", id="label-too-large"),
    pytest.param(lambda t, k: data.from_frame(frame(), label_names="neg,pos"), TypeError,
                 r"list of class names, e\.g\. \['neg', 'pos'\]", id="label-names-string"),
    pytest.param(lambda t, k: data.from_frame(_with_labels([0, 1] * 10), label_names=["a", "b", "c"]), ValueError,
                 "'c' has 0.*leave it out of label_names", id="label-names-unused"),
    pytest.param(lambda t, k: data.TextData("x", pd.DataFrame({"text": ["a"]}), ("a",)), ValueError,
                 r"columns 'text' and 'label'.*data\.from_frame", id="textdata-without-label-column"),
    # model folders and tokenizers
    pytest.param(lambda t, k: model.fine_tune(parts.tiny_classifier(), None, toy(), SMALL), TypeError,
                 r"tokenizer is None: pass the tokenizer object", id="tokenizer-none"),
    pytest.param(lambda t, k: assets.load_tokenizer("bert-base-uncased"), FileNotFoundError,
                 r"No tokenizer folder at bert-base-uncased.*tokenizer\.save_pretrained\(folder\).*HF_HUB_OFFLINE=0",
                 id="tokenizer-hub-id-offline"),
    pytest.param(lambda t, k: assets.load_tokenizer(saved_model(t)), ValueError,
                 r"holds no tokenizer files.*tokenizer\.save_pretrained\(folder\)", id="load-tokenizer-no-files"),
    pytest.param(lambda t, k: model.fine_tune(saved_model(t), saved_model(t), toy(), SMALL), ValueError,
                 r"no tokenizer files.*tokenizer\.save_pretrained\(folder\)", id="fine-tune-folder-no-tokenizer"),
    pytest.param(lambda t, k: model.fine_tune(parts.tiny_classifier(), placeholder_tokenizer(t), toy(), SMALL),
                 ValueError, r"turns 100% .* into \[UNK\].*tokenizer\.save_pretrained\(folder\)",
                 id="tokenizer-mostly-unknown"),
    pytest.param(lambda t, k: model.fine_tune(t / "nonexistent", k, toy(), SMALL), FileNotFoundError,
                 r"No model folder at .*nonexistent: pass a folder saved with save_pretrained", id="model-missing"),
    pytest.param(lambda t, k: model.fine_tune(saved_model(t) / "config.json", k, toy(), SMALL), ValueError,
                 r"config\.json is a file, not a model folder: pass the folder save_pretrained wrote",
                 id="model-folder-is-a-file"),
    pytest.param(lambda t, k: model.fine_tune(t, k, toy(), SMALL), ValueError,
                 r"no config\.json.*model\.save_pretrained\(folder\)", id="model-folder-without-config"),
    pytest.param(lambda t, k: model.fine_tune((saved_model(t) / "model.safetensors").unlink() or t / "mine", k,
                                              toy(), SMALL), ValueError,
                 r"no model weights .*save it with model\.save_pretrained\(folder\)",
                 id="model-folder-without-weights"),
    # a model without weights
    pytest.param(lambda t, k: parts.clone(meta_model()), ValueError,
                 r"no weights \(meta device.*from_pretrained\(\.\.\.\), or \.to_empty", id="meta-clone"),
    pytest.param(lambda t, k: measure.predict(meta_model(), k, ["a film"]), ValueError,
                 r"no weights \(meta device.*from_pretrained", id="meta-measure"),
    pytest.param(lambda t, k: model.fine_tune(meta_model(), k, toy(), SMALL), ValueError,
                 r"no weights \(meta device.*to_empty", id="meta-fine-tune"),
]


@pytest.mark.parametrize("call, error, fix", CASES)
def test_bad_input_is_refused_with_the_fix(call, error, fix, tmp_path, tokenizer):
    with pytest.raises(error, match=fix):
        call(tmp_path, tokenizer)


def test_a_refused_file_and_frame_are_left_as_they_were(tmp_path):
    path = write(tmp_path / "a.csv", csv_bytes(";"))
    raw = path.read_bytes()
    df = _with_labels([0] * 9 + [np.inf] + [1] * 10)
    before = df.copy(deep=True)
    with pytest.raises(ValueError):
        data.from_csv(path)
    with pytest.raises(ValueError):
        data.from_frame(df)
    assert path.read_bytes() == raw
    pd.testing.assert_frame_equal(df, before)


# --- the command line: one or two lines, exit status 2, no traceback ------------------------------------------------

CLI_CASES = [
    pytest.param(lambda t, k: ["tour", "--model", str(t / "nonexistent")],
                 r"No model folder at .*nonexistent: pass a folder saved with save_pretrained \(config\.json, model "
                 r"weights, tokenizer files\)", id="cli-model-missing"),
    pytest.param(lambda t, k: ["tour", "--model", str(saved_model(t))], r"tokenizer\.save_pretrained\(folder\)",
                 id="cli-model-without-tokenizer"),
    pytest.param(lambda t, k: ["tour", "--model", str(t)], r"no config\.json", id="cli-folder-without-config"),
    pytest.param(lambda t, k: ["tour", "--data", str(write(t / "a.csv", csv_bytes("\t")))],
                 r"tab-separated.*--sep '\\t'", id="cli-tsv-named-csv"),
    pytest.param(lambda t, k: ["prepare", "--data", str(write(t / "a.csv", b"text,label\n\xa3 five,a\ncheap,b\n"))],
                 "--encoding latin-1", id="cli-not-utf8"),
    pytest.param(lambda t, k: ["prepare", "--data", str(t / "missing.csv")], r"No file .*missing\.csv; pass the path",
                 id="cli-data-missing"),
    pytest.param(lambda t, k: ["prepare", "--data", "reviews", "--encoding", "latin-1"], "leave it out",
                 id="cli-encoding-for-reviews"),
    pytest.param(lambda t, k: ["prepare", "--sep", ";"], "go with --data FILE.csv", id="cli-sep-without-data"),
    pytest.param(lambda t, k: ["tour", "--model", str(saved_model(t, k, classes=3))],
                 "with 3 labels, but the data has 2 classes.*fine-tune it on data with the same classes",
                 id="cli-model-label-count"),
    pytest.param(lambda t, k: ["tour", "--model", str(gpt2_folder(t, k))],
                 "Supported families: BERT.*Fine-tune one of those", id="cli-model-family"),
]


@pytest.mark.parametrize("argv, fix", CLI_CASES)
def test_the_cli_says_it_in_two_lines_and_exits_2(argv, fix, tmp_path, tokenizer, capsys, monkeypatch):
    monkeypatch.delenv("LABKIT_DATA", raising=False)
    csv = write(tmp_path / "ok.csv", csv_bytes())
    args = argv(tmp_path, tokenizer)
    if args[0] == "tour" and "--data" not in args:
        args += ["--data", str(csv)]
    with pytest.raises(SystemExit) as exit_:
        cli.main(args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) <= 2, err
    assert re.search(fix, err), err


# --- handled: legitimate input, the right result ---------------------------------------------------------------------

def test_a_text_with_two_labels_stays_in_one_split_and_is_counted():
    df = pd.DataFrame({"text": [f"t{i % 5}" for i in range(40)], "label": [i % 2 for i in range(40)]})
    with pytest.warns(UserWarning, match=r"5 of 5 distinct texts carry more than one label.*transform\('nunique'\)"):
        td = data.from_frame(df)
    seen = [set(td.split(s)["text"]) for s in data.SPLITS]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    assert sum(len(td.split(s)) for s in data.SPLITS) == 40  # every row kept
    assert td.describe()["all"].tolist() == [20, 20]


def test_texts_with_one_label_each_give_no_warning_and_the_pinned_splits(recwarn):
    td = data.from_frame(frame())
    assert not [w for w in recwarn if "more than one label" in str(w.message)]
    assert data.reviews().split_hash == data.SPLIT_SHA256  # the shipped splits are as they were
    assert len(td.split("test")) == 2


def test_the_cli_reads_sep_and_encoding(tmp_path):
    semi = write(tmp_path / "semi.csv", csv_bytes(";"))
    tab = write(tmp_path / "tab.csv", csv_bytes("\t"))
    latin = write(tmp_path / "latin.csv", frame().to_csv(index=False).replace("the", "th\xe9").encode("latin-1"))
    for argv in (["--data", str(semi), "--sep", ";"], ["--data", str(tab), "--sep", "\\t"],
                 ["--data", str(tab), "--sep", "tab"], ["--data", str(latin), "--encoding", "latin-1"]):
        td = cli.use_data(cli.parser().parse_args(["prepare", *argv]))
        assert td.num_labels == 2 and len(td.frame) == 20, argv
    assert td.frame["text"].str.startswith("th\xe9").all()


def test_a_compressed_file_named_for_its_compression_and_a_bom_are_read(tmp_path):
    gz = write(tmp_path / "a.csv.gz", gzip.compress(csv_bytes()))
    bom = write(tmp_path / "bom.csv", b"\xef\xbb\xbf" + csv_bytes())
    utf16 = write(tmp_path / "u16.csv", csv_bytes().decode().encode("utf-16"))
    for td in (data.from_csv(gz), data.from_csv(bom), data.from_csv(utf16, encoding="utf-16"),
               data.from_csv(write(tmp_path / "b.csv", gzip.compress(csv_bytes())), compression="gzip")):
        assert len(td.frame) == 20 and td.label_names == ("neg", "pos")


def test_a_class_named_na_is_kept_with_keep_default_na(tmp_path):
    td = data.from_csv(write(tmp_path / "a.csv", csv_bytes().replace(b",neg", b",NA")), keep_default_na=False)
    assert td.label_names == ("NA", "pos") and len(td.frame) == 20


def test_a_model_folder_with_its_tokenizer_passes_the_checks(tmp_path, tokenizer):
    folder = saved_model(tmp_path, tokenizer)
    assert assets.check_model_folder(folder) == folder
    assert model.check_vocabulary(assets.load_tokenizer(folder), toy().split("train")["text"]) < 0.05
