"""A labelled text data set and its fixed split: `TextData`, made from a DataFrame, a CSV, a Hugging Face dataset or
a folder of text files per class. Rows are sorted by text, so the split does not depend on the source's order, and
identical texts stay in one split."""

from __future__ import annotations

import codecs
import difflib
import functools
import hashlib
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

SPLITS = ("train", "val", "test")


SEED = 1234


FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}


MIN_PER_CLASS = 3  # one row in each split: the fewest a class can have and still be trained, chosen on and tested


def _split_sizes(n: int) -> tuple[int, int]:
    """(train, val) rows of a class of `n` rows; the rest is test. At least one row per split when n >= 3."""
    n_train = int(round(FRACTIONS["train"] * n))
    n_val = int(round(FRACTIONS["val"] * n))
    if n >= MIN_PER_CLASS:  # rounding can leave a small class out of val or test; take that row from train
        n_val = max(1, n_val)
        n_train = min(n_train, n - n_val - 1)
    return n_train, n_val


@dataclass(eq=False)
class TextData:
    """A labelled text data set: `frame` (columns `text`, integer `label`), its label names and a fixed split.

    Rows are sorted by text (then label), so the split does not depend on the order of the source file. Make one
    with from_frame, from_csv, from_dataset or bbc_news; `use(...)` makes it the one the whole kit reads.
    """

    name: str
    frame: pd.DataFrame
    label_names: tuple[str, ...]
    source: str = ""
    expected_sha256: str | None = None  # the split hash recorded for a shipped data set (None for your own)
    _index: dict[str, np.ndarray] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.label_names = tuple(str(n) for n in self.label_names)
        if not {"text", "label"} <= set(self.frame.columns):
            raise ValueError(f"{self.name}: a TextData's frame has the columns 'text' and 'label', this one "
                             f"{list(self.frame.columns)}; build it with data.from_frame(df, text=..., label=...).")
        labels = self.frame["label"].to_numpy()
        if not (np.issubdtype(labels.dtype, np.integer) and len(labels) and labels.min() >= 0
                and labels.max() < len(self.label_names)):
            raise ValueError(f"{self.name}: labels must be integers 0..{len(self.label_names) - 1}, one per label "
                             "name; build a TextData with data.from_frame(df, text=..., label=...) instead.")
        self._warn_mixed_labels()
        self._index = self._split_index()

    def _warn_mixed_labels(self) -> None:
        """Warn, with a count, about texts that carry more than one label: kept, all copies in one split."""
        per_text = self.frame.groupby("text", sort=False)["label"].nunique()
        mixed = per_text[per_text > 1]
        if len(mixed):
            warnings.warn(
                f"{self.name}: {len(mixed)} of {len(per_text)} distinct texts carry more than one label "
                f"(e.g. {str(mixed.index[0])[:60]!r}). Each is kept with all its labels, every copy in one split, "
                "so no test text is also a training text; no model can get both labels right. To drop them: "
                "df = df[df.groupby('text')['label'].transform('nunique') == 1] (with your column names).", UserWarning,
                stacklevel=5)

    def __repr__(self) -> str:
        counts = ", ".join(f"{n}: {c}" for n, c in zip(self.label_names, self.class_counts()))
        sizes = ", ".join(f"{s} {len(self._index[s])}" for s in SPLITS)
        return f"TextData({self.name!r}: {len(self.frame)} texts, {self.num_labels} classes ({counts}); {sizes})"

    @property
    def num_labels(self) -> int:
        """How many classes."""
        return len(self.label_names)

    def class_counts(self) -> list[int]:
        """Rows per class, in label order."""
        return np.bincount(self.frame["label"].to_numpy(), minlength=self.num_labels).tolist()

    def _groups(self, label: int) -> list[np.ndarray]:
        """Row indices of one class, grouped by identical text (in order of first appearance)."""
        mask = self.frame["label"].to_numpy() == label
        idx = self.frame.index[mask].to_numpy()
        codes, _ = pd.factorize(self.frame["text"].to_numpy()[mask])
        order = np.argsort(codes, kind="stable")
        return np.split(idx[order], np.cumsum(np.bincount(codes))[:-1]) if len(idx) else []

    def _split_index(self) -> dict[str, np.ndarray]:
        """Row indices of each split, stratified by label, from a fixed seed (numpy's PCG64 is portable).

        Copies of one text stay together, so no test text is also a training text (BBC News holds 98 articles
        twice). A text that carries several labels goes where its first class put it, and its other classes fill
        their remaining places around it. With every text distinct this is a plain per-class shuffle and cut.
        """
        groups = [self._groups(k) for k in range(self.num_labels)]
        small = [(self.label_names[k], len(g)) for k, g in enumerate(groups) if len(g) < MIN_PER_CLASS]
        if small:
            listed = ", ".join(f"{n!r} has {c}" for n, c in small)
            unused = " A class with none is a name in label_names that no row carries: leave it out of label_names." \
                if any(c == 0 for _, c in small) else ""
            raise ValueError(
                f"{self.name}: every class needs at least {MIN_PER_CLASS} distinct texts, one for each split "
                f"(train/val/test, {', '.join(f'{v:.0%}' for v in FRACTIONS.values())}), and far more to be "
                f"learned and measured; {listed}. Add examples of those classes, or drop them first "
                f"(e.g. df = df[~df['label'].isin([...])]).{unused}")
        rng = np.random.default_rng(SEED)
        texts = self.frame["text"].to_dict()  # by index label, as the groups hold them
        placed: dict[str, str] = {}  # text -> its split, for a text that a later class carries too
        parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
        for class_groups in groups:
            fixed = [placed.get(texts[g[0]]) for g in class_groups]
            free = [i for i, s in enumerate(fixed) if s is None]
            perm = np.asarray(free)[rng.permutation(len(free))] if len(free) < len(class_groups) else \
                rng.permutation(len(class_groups))
            n_train, n_val = _split_sizes(len(class_groups))
            # the places this class's texts already hold elsewhere count towards its own fractions
            n_train = max(0, n_train - fixed.count("train"))
            n_val = max(0, min(n_val - fixed.count("val"), len(free) - n_train))
            cuts = {"train": perm[:n_train], "val": perm[n_train:n_train + n_val], "test": perm[n_train + n_val:]}
            cuts = {s: list(chosen) + [i for i, f in enumerate(fixed) if f == s] for s, chosen in cuts.items()}
            for s, chosen in cuts.items():
                parts[s].extend(class_groups[i] for i in chosen)
                placed.update((texts[class_groups[i][0]], s) for i in chosen)
        return {s: np.sort(np.concatenate(p)) for s, p in parts.items()}

    def split(self, name: str, limit: int | None = None) -> pd.DataFrame:
        """One split (`train`, `val` or `test`) as a new DataFrame; `limit` takes a fixed, shuffled head of it."""
        if name not in SPLITS:
            close = difflib.get_close_matches(str(name), SPLITS, n=1, cutoff=0.4)  # 'validation' -> 'val'
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"Unknown split {name!r}{hint}; choose one of {', '.join(SPLITS)}.")
        df = self.frame.loc[self._index[name]]
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)):
                raise TypeError(f"limit must be a whole number of snippets, or None for the whole split; got "
                                f"{limit!r} ({type(limit).__name__}).")
            if limit < 1:
                raise ValueError(f"limit must be a positive number of snippets, got {limit}.")
            # Shuffle with the fixed seed before cutting, so a small subset still holds every label.
            df = df.sample(frac=1.0, random_state=SEED).head(limit)
        return df.reset_index(drop=True)

    @functools.cached_property
    def split_hash(self) -> str:
        """sha256 over every split's texts and labels: equal on every machine that has the same data and code."""
        h = hashlib.sha256()
        for name in SPLITS:
            df = self.split(name)
            h.update(name.encode())
            for text, label in zip(df["text"], df["label"]):
                h.update(f"{label}\t{text}\n".encode())
        return h.hexdigest()

    def describe(self) -> pd.DataFrame:
        """Rows per class in each split (and in all), one row per class."""
        out = pd.DataFrame({s: np.bincount(self.frame["label"].to_numpy()[self._index[s]],
                                           minlength=self.num_labels) for s in SPLITS},
                           index=pd.Index(self.label_names, name="label"))
        out["all"] = out.sum(axis=1)
        return out


def _label_column(values: pd.Series, column: str, label_names: Sequence[str] | None) -> tuple[np.ndarray, tuple]:
    """Integer labels 0..K-1 and the K names: string labels in sorted order, numbers in numeric order."""
    is_text = values.map(lambda v: isinstance(v, str)).to_numpy()
    if label_names is not None:
        names = tuple(str(n) for n in label_names)
        if is_text.all():  # names given for string labels: map by name, in the order given
            unknown = sorted(set(values) - set(names))
            if unknown:
                raise ValueError(f"Labels {unknown[:5]} in column {column!r} are not among label_names {list(names)}; "
                                 "add them to label_names or drop those rows.")
            return values.map({n: i for i, n in enumerate(names)}).to_numpy(np.int64), names
        ints = _as_ints(values, column)
        bad = sorted({int(v) for v in ints if not 0 <= v < len(names)})
        if bad:
            raise ValueError(f"Labels {bad[:5]} in column {column!r} are not indices into label_names ({len(names)} "
                             f"names, so 0..{len(names) - 1}); pass one name per class.")
        return ints, names
    if is_text.any():
        # Any text label makes every label text ("1" and 1 are one class); sorted, so the order never depends
        # on which label the file happens to list first.
        text = values.map(lambda v: v.strip() if isinstance(v, str) else str(v))
        names = tuple(sorted(set(text)))
        return text.map({n: i for i, n in enumerate(names)}).to_numpy(np.int64), names
    ints = _as_ints(values, column)
    uniq = np.unique(ints)
    names = tuple(str(v) for v in uniq)
    return np.searchsorted(uniq, ints).astype(np.int64), names


def _as_ints(values: pd.Series, column: str) -> np.ndarray:
    """Numeric labels as int64; an infinite or fractional label is refused with its row and value."""
    try:
        arr = values.to_numpy(dtype=float)
    except (TypeError, ValueError) as err:
        raise ValueError(f"Column {column!r} holds labels labkit cannot read as classes ({values.dtype}); "
                         "use strings or integers.") from err
    bad = ~np.isfinite(arr) | (arr != np.round(arr)) | (np.abs(arr) >= 2 ** 53)  # beyond 2**53, not whole numbers
    if bad.any():
        at = int(np.argmax(bad))
        row, value = values.index[at], arr[at].item()
        row = row.item() if hasattr(row, "item") else row  # a numpy scalar prints as np.int64(9)
        what = "non-integer numbers" if (np.abs(arr) < 2 ** 53).all() else "a value that is not a class"
        raise ValueError(f"Column {column!r} holds {what}: {value!r} at row {row!r} ({int(bad.sum())} such row(s) "
                         f"of {len(arr)}). labkit trains classifiers: labels are whole numbers or names. Pick the "
                         f"column with the class labels, fix those rows in the source, or drop them first "
                         f"(df = df.drop(index=[{row!r}])), or bin continuous values into classes.")
    return arr.astype(np.int64)


def _rows_help(n_missing: int, n_empty: int, total: int, text: str, label: str) -> str:
    said = []
    if n_missing:
        said.append(f"{n_missing} row(s) have no label in column {label!r}")
    if n_empty:
        said.append(f"{n_empty} row(s) have an empty text in column {text!r}")
    return (f"{' and '.join(said)} (of {total}). labkit does not drop rows silently: fix them in the source, or "
            f"drop them first, e.g. df = df.dropna(subset=[{label!r}]); "
            f"df = df[df[{text!r}].fillna('').astype(str).str.strip() != ''].")


def from_frame(df: pd.DataFrame, text: str = "text", label: str = "label", name: str = "frame",
               label_names: Sequence[str] | None = None, source: str = "") -> TextData:
    """A TextData from a DataFrame's `text` and `label` columns; the DataFrame itself is never modified.

    String labels become 0..K-1 in sorted order of their names; integer labels keep their numeric order (with
    `label_names`, integer labels are indices into it, and string labels take its order). A text that carries
    more than one label is kept, every copy in one split, with a UserWarning that counts such texts.
    """
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"Expected a pandas DataFrame, got {type(df).__name__}; for a file use data.from_csv(path), "
                         "for a datasets.Dataset data.from_dataset(ds).")
    columns = [str(c) for c in df.columns]
    missing = [c for c in (text, label) if c not in df.columns]
    if missing:
        raise ValueError(f"{name}: no column(s) {missing}; it has {columns}. Name the text and label columns: "
                         "text=..., label=... (on the command line --text-column/--label-column; in the "
                         "environment LABKIT_TEXT_COLUMN/LABKIT_LABEL_COLUMN).")
    if text == label:
        raise ValueError(f"text and label name the same column {text!r}; pass two different columns.")
    twice = [c for c in (text, label) if (df.columns == c).sum() > 1]
    if twice:
        raise ValueError(f"{name}: more than one column is named {twice[0]!r} ({columns}); rename them apart, e.g. "
                         "df.columns = [...], and pass the one you mean.")
    if df.empty:
        raise ValueError(f"{name}: no rows, only the columns {columns}; a classifier needs labelled texts. Check that "
                         "the file is the one you meant, and that it holds a row per text under its header.")
    texts, labels = df[text], df[label]
    if pd.api.types.is_numeric_dtype(texts) or pd.api.types.is_bool_dtype(texts):
        raise ValueError(f"{name}: column {text!r} holds numbers ({texts.dtype}, e.g. {texts.iloc[0]!r}), not text. "
                         f"Name the column with the texts: text=... (--text-column on the command line); the "
                         f"columns are {columns}.")
    if isinstance(label_names, str):
        raise TypeError(f"label_names is a list of class names, e.g. ['neg', 'pos'], not the string {label_names!r}.")
    if label_names is not None and len(set(map(str, label_names))) < len(label_names):
        raise ValueError(f"label_names {list(label_names)} names a class twice; pass each class's name once, in "
                         "label order.")
    no_label = labels.isna() | labels.map(lambda v: isinstance(v, str) and not v.strip())
    no_text = texts.isna() | (texts.astype(str).str.strip() == "")
    if no_label.any() or no_text.any():
        raise ValueError(f"{name}: " + _rows_help(int(no_label.sum()), int(no_text.sum()), len(df), text, label))
    ints, names = _label_column(labels, label, label_names)
    if len(set(ints.tolist())) < 2:
        raise ValueError(f"{name}: column {label!r} holds only one class ({names[ints[0]] if len(ints) else 'none'!r}, "
                         f"{len(df)} rows); a classifier needs at least two. Check that {label!r} is the label "
                         f"column (columns: {columns}) and that the file holds every class.")
    frame = pd.DataFrame({"text": texts.astype(str).str.strip().to_numpy(), "label": ints})
    frame = frame.sort_values(["text", "label"], kind="stable").reset_index(drop=True)
    return TextData(name, frame, names, source or f"DataFrame columns {text!r}, {label!r}")


# What a file that is not plain CSV text starts with, and what to do about it.
_MAGIC = {
    b"\x1f\x8b": ("gzip-compressed", "decompress it (gunzip) or name it .csv.gz, which is read as it is "
                                      "(or pass compression='gzip')"),
    b"BZh": ("bzip2-compressed", "decompress it (bunzip2) or name it .csv.bz2 (or pass compression='bz2')"),
    b"\xfd7zXZ\x00": ("xz-compressed", "decompress it (unxz) or name it .csv.xz (or pass compression='xz')"),
    b"(\xb5/\xfd": ("zstd-compressed", "decompress it (unzstd) or name it .csv.zst (or pass compression='zstd')"),
    b"PAR1": ("a Parquet file", "read it with df = pd.read_parquet(path), then data.from_frame(df, text=..., "
                                "label=...)"),
    b"\xd0\xcf\x11\xe0": ("an Excel workbook (.xls)", "read it with df = pd.read_excel(path), then "
                                                      "data.from_frame(df, text=..., label=...), or save it as CSV"),
}
_ZIP = b"PK\x03\x04"
_SEPARATORS = {"\t": "tab-separated", ";": "semicolon-separated", "|": "pipe-separated"}


def _check_file(path: Path, read_csv: dict) -> None:
    """A ValueError, naming the fix, for a file that pandas would misread as a one-column or garbled CSV."""
    encoding = read_csv.get("encoding") or "utf-8"
    try:
        codecs.lookup(encoding)
    except LookupError as err:
        raise ValueError(f"Unknown encoding {encoding!r}; pass one Python knows, e.g. 'latin-1', 'cp1252' or "
                         "'utf-16'.") from err
    with path.open("rb") as f:
        head = f.read(4096)
    if not head.strip():
        raise ValueError(f"{path} is empty; pass a CSV whose first line names its columns (e.g. text,label) and "
                         "whose other lines hold one text and its label each.")
    if "compression" not in read_csv and path.suffix.lower() in {".csv", ".tsv", ".tab", ".txt"}:
        for magic, (what, fix) in _MAGIC.items():
            if head.startswith(magic):
                raise ValueError(f"{path} is {what}, not CSV text (it starts with bytes {magic[:2].hex(' ')}): "
                                 f"{fix}.")
        if head.startswith(_ZIP):
            if b"[Content_Types].xml" in head or b"xl/" in head:
                raise ValueError(f"{path} is an Excel workbook (.xlsx), not CSV text: read it with "
                                 "df = pd.read_excel(path), then data.from_frame(df, text=..., label=...), or save "
                                 "it as CSV.")
            raise ValueError(f"{path} is a zip archive, not CSV text: unzip it, or name it .csv.zip (or pass "
                             "compression='zip').")
    if "encoding" not in read_csv and head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise ValueError(f"{path} is UTF-16 text (it starts with a byte-order mark): pass encoding='utf-16' "
                         "(--encoding utf-16 on the command line).")
    compressed = "compression" in read_csv or path.suffix.lower() in {".gz", ".bz2", ".zip", ".xz", ".zst", ".tar"}
    if "sep" not in read_csv and "delimiter" not in read_csv and not compressed:
        header = head.decode(encoding, errors="replace").lstrip("\ufeff")
        header = header.splitlines()[0] if header.splitlines() else ""
        found = [(sep, what) for sep, what in _SEPARATORS.items() if sep in header]
        if "," not in header and found:
            sep, what = found[0]
            raise ValueError(f"{path} looks {what} (its header line {header[:60]!r} holds {sep!r} and no comma): "
                             f"pass sep={sep!r} (--sep {sep!r} on the command line).")


def _check_columns(path: Path, df: pd.DataFrame, text: str, label: str, read_csv: dict) -> None:
    """A ValueError for a CSV read with the wrong delimiter, or with a label or text that pandas took for missing."""
    if len(df.columns) == 1 and text not in df.columns:
        found = [sep for sep in (",", *_SEPARATORS) if sep in str(df.columns[0])]
        if found:
            raise ValueError(f"{path} was read as one column, {str(df.columns[0])[:60]!r}: its delimiter looks like "
                             f"{found[0]!r}, so pass sep={found[0]!r} (--sep {found[0]!r} on the command line).")
    if (read_csv.get("keep_default_na") is not False and all(c in df.columns for c in (text, label))
            and df[[text, label]].isna().any().any()):  # read again only to say why a cell is missing
        kept = pd.read_csv(path, **dict(read_csv, keep_default_na=False, dtype=str, usecols=[text, label]))
        words = {w for c in (text, label) for w in kept[c][df[c].isna().to_numpy()] if w.strip()}
        if words:
            raise ValueError(f"{path}: pandas reads {sorted(words)[:3]} as missing values, but here they are texts or "
                             "labels; pass keep_default_na=False to keep them as they are.")


def from_csv(path: str | Path, text: str = "text", label: str = "label", name: str | None = None,
             label_names: Sequence[str] | None = None, **read_csv) -> TextData:
    """A TextData from a CSV (or .tsv) file's text and label columns; the file is only read.

    Extra keyword arguments go to pandas.read_csv (e.g. encoding='latin-1', sep=';'). A file that looks
    tab- or semicolon-separated, compressed, UTF-16, Excel or Parquet is refused with the argument that reads it.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"from_csv takes a file path (str or Path), got {type(path).__name__}; for a DataFrame use "
                        "data.from_frame(df).")
    path = Path(path).expanduser()
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a CSV file; for one sub-folder of text files per class use "
                         "data.read_folder(path), else pass the CSV file's path.")
    if not path.is_file():
        raise FileNotFoundError(f"No file {path}; pass the path of a CSV with a text and a label column.")
    if path.suffix.lower() in {".tsv", ".tab"}:
        read_csv.setdefault("sep", "\t")
    _check_file(path, read_csv)
    try:
        df = pd.read_csv(path, **read_csv)
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not {read_csv.get('encoding') or 'UTF-8'} text ({err.reason} at byte "
                         f"{err.start}); pass its encoding, e.g. data.from_csv(path, ..., encoding='latin-1') "
                         "(--encoding latin-1 on the command line).") from err
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as err:
        raise ValueError(f"{path} could not be read as a CSV ({err}); check the file, or pass sep=... for "
                         "another delimiter (--sep on the command line).") from err
    _check_columns(path, df, text, label, read_csv)
    return from_frame(df, text, label, name=name or path.stem, label_names=label_names, source=str(path))


def from_dataset(ds, text: str = "text", label: str = "label", name: str | None = None,
                 label_names: Sequence[str] | None = None) -> TextData:
    """A TextData from a Hugging Face `datasets.Dataset` (one split: labkit makes its own); keeps ClassLabel names."""
    if isinstance(ds, dict) or isinstance(getattr(ds, "column_names", None), dict):
        raise ValueError("This is a DatasetDict (several splits); labkit makes its own stratified split. Pass one "
                         "Dataset, e.g. ds['train'], or join them: datasets.concatenate_datasets(list(ds.values())).")
    if not hasattr(ds, "column_names"):
        raise ValueError(f"Expected a datasets.Dataset, got {type(ds).__name__}; for a DataFrame use "
                         "data.from_frame(df), for a file data.from_csv(path).")
    name = name or getattr(getattr(ds, "info", None), "dataset_name", None) or "dataset"
    cols = list(ds.column_names)
    missing = [c for c in (text, label) if c not in cols]
    if missing:
        raise ValueError(f"{name}: no column(s) {missing}; it has {cols}. Pass text=..., label=....")
    feature = getattr(ds, "features", {}).get(label) if hasattr(getattr(ds, "features", None), "get") else None
    if label_names is None and getattr(feature, "names", None):
        label_names = list(feature.names)  # a ClassLabel: integers with names, in the dataset's order
    df = pd.DataFrame({text: list(ds[text]), label: list(ds[label])})
    return from_frame(df, text, label, name=name, label_names=label_names, source=f"datasets.Dataset {name}")


def _decode(payload: bytes) -> str:
    """UTF-8, else Latin-1: one BBC article (sport/199) was saved in Latin-1 ('\\xa315.8m' is £15.8m)."""
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        return payload.decode("latin-1")


def read_folder(folder: Path, name: str | None = None, suffix: str = ".txt") -> TextData:
    """A TextData from one sub-folder per class of text files; labels are the sub-folder names, sorted."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"No folder {folder}; pass a folder that holds one sub-folder of {suffix} files per "
                                "class (for a CSV file use data.from_csv(path)).")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())  # sorted names, never listing order
    rows = [(_decode(f.read_bytes()).strip(), c) for c in classes for f in sorted((folder / c).glob(f"*{suffix}"))]
    if not rows:
        raise ValueError(f"{folder} holds no <class>/*{suffix} files; put each class's texts in a folder named "
                         "after the class.")
    df = pd.DataFrame(rows, columns=["text", "label"])
    return from_frame(df, name=name or folder.name, source=str(folder))
