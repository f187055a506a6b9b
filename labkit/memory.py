"""Giving freed memory back: a notebook kernel on a classroom hub or Binder has 1-2 GB with Jupyter included.

glibc's malloc keeps the memory of freed tensors in its heap for reuse instead of returning it to the system, so
after a fine-tune a kernel stays near its peak (measured: about 0.8 GB still held after a 16-step pruning
recovery of the 91 MB baseline, though every tensor of it was freed). `release()` hands those pages back.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import os
from pathlib import Path

TIGHT_BELOW = 4 * 2 ** 30  # a kernel limited to less than this trains lean (train.fit)


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim, or None where the C library has none (musl, macOS, Windows)."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError, TypeError):
        return None


def trim() -> None:
    """Return the C allocator's free pages to the system (glibc's malloc_trim; nothing where there is none)."""
    fn = _malloc_trim()
    if fn is not None:
        fn(0)


def release() -> None:
    """Collect garbage (cycles can hold tensors), then `trim`."""
    gc.collect()
    trim()


def _cgroup_limit() -> int | None:
    """This process's cgroup memory limit in bytes (v2, then v1), or None where there is none or it is unreadable."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        return int(text) if text.isdigit() else None  # "max": no limit
    return None


def _size(text: str) -> int | None:
    """Bytes from a JupyterHub-style size ("2G", "512M", "1.5G" or a plain number), None if it is not one."""
    units = {"K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}
    text = text.strip().upper()
    try:
        return int(float(text[:-1]) * units[text[-1]]) if text[-1:] in units else int(float(text))
    except ValueError:
        return None


def tight() -> bool:
    """True where this kernel should spend time to save memory: LABKIT_LEAN=1 (or 0 to say no), else a limit under
    4 GiB, read from MEM_LIMIT (set by JupyterHub and Binder) or the cgroup."""
    said = os.environ.get("LABKIT_LEAN", "").strip()
    if said in ("0", "1"):
        return said == "1"
    limits = [_size(os.environ["MEM_LIMIT"]) if os.environ.get("MEM_LIMIT") else None, _cgroup_limit()]
    return any(limit is not None and limit < TIGHT_BELOW for limit in limits)
