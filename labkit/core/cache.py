"""The ground floor: where labkit keeps what it builds (the cache folder), atomic writes and sha256 of files.

`data`, `assets`, `model` and `checkpoint` all write here; nothing in this module imports the rest of labkit.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


def cache_dir() -> Path:
    """Where trained models and cached sweeps live: $LABKIT_CACHE, else ~/.cache/labkit."""
    return Path(os.environ.get("LABKIT_CACHE") or Path.home() / ".cache" / "labkit")


def cache_writable() -> bool:
    """False for a shared, prepared cache: LABKIT_CACHE_READONLY=1, or a folder this user cannot write."""
    if os.environ.get("LABKIT_CACHE_READONLY", "0").strip().lower() in {"1", "true", "yes", "on"}:
        return False
    folder = cache_dir()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return os.access(folder, os.W_OK)


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write to a temporary file beside `path`, fsync, then rename: readers see all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def tree_sha256(files: dict[str, bytes]) -> str:
    """sha256 over files given as {relative path: bytes}, in sorted path order (path, length and bytes of each)."""
    h = hashlib.sha256()
    for rel in sorted(files):
        payload = files[rel]
        h.update(f"{rel}\0{len(payload)}\0".encode())
        h.update(payload)
    return h.hexdigest()


def read_tree(folder: Path, suffix: str = ".txt") -> dict[str, bytes]:
    """Every `suffix` file under `folder` as {relative path: bytes}, for tree_sha256."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob(f"*{suffix}") if p.is_file()}
