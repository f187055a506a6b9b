"""Giving freed memory back: a notebook kernel on a classroom hub or Binder has 1-2 GB with Jupyter included.

glibc's malloc keeps the memory of freed tensors in its heap for reuse instead of returning it to the system, so
after a fine-tune a kernel stays near its peak (about 0.8 GB still held after a 16-step pruning recovery of the
91 MB baseline, though every tensor of it was freed). `release()` hands those pages back.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import json
from pathlib import Path

from labkit.core import settings

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


def gives_back(fn):
    """`fn`, then `trim`: for a slider's point, whose copy of the model is freed when it returns, so that a learner
    who visits many points does not keep every copy's pages."""
    @functools.wraps(fn)
    def after(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        finally:
            trim()
    return after


def release() -> None:
    """Collect garbage (cycles can hold tensors), then `trim`."""
    gc.collect()
    trim()


def trim_after_cells() -> bool:
    """Where memory is tight (`tight`), hand freed pages back after every notebook cell; True if the hook is on.

    A cell that frees a model copy leaves its pages in malloc's heap, and the next cell's peak starts from there.
    Nothing happens outside an IPython kernel, and calling it twice installs one hook.
    """
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    ip = get_ipython()
    if ip is None or not tight():
        return False
    if not any(getattr(fn, "__name__", "") == "_trim_after_cell" for fn in ip.events.callbacks["post_run_cell"]):
        ip.events.register("post_run_cell", _trim_after_cell)
    return True


def _trim_after_cell(*_) -> None:
    trim()  # no gc.collect: it would add a tenth of a second to every cell


def _cgroup_limit() -> int | None:
    """This process's cgroup memory limit in bytes (v2, then v1), or None where there is none or it is unreadable."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        return int(text) if text.isdigit() else None  # "max": no limit
    return None


def tight() -> bool:
    """True where this kernel should spend time to save memory: LABKIT_LEAN=1 (or 0 to say no), else a limit under
    4 GiB, read from MEM_LIMIT (set by JupyterHub and Binder) or the cgroup."""
    said = settings.lean()
    if said is not None:
        return said
    return any(limit is not None and limit < TIGHT_BELOW for limit in (_env_limit(), _cgroup_limit()))


def _env_limit() -> int | None:
    """MEM_LIMIT in bytes (JupyterHub and Binder set it), or None when unset; a value that is no size is refused."""
    return settings.mem_limit()


MEASURED = Path(__file__).resolve().parents[1] / "notebook_memory.json"  # written by benchmarks/notebook_memory.py --write


def measured() -> dict:
    """The recorded peak kernel memory per notebook ({"fast"|"full": {stem: bytes}, "how": ...}), {} if none."""
    try:
        return json.loads(MEASURED.read_text())
    except (OSError, ValueError):
        return {}


def needs(notebook: str) -> str:
    """One line for a notebook's opening cell: its measured peak kernel memory here, and this kernel's limit."""
    mode = "fast" if settings.fast() else "full"
    table = measured().get(mode, {})
    stem = next((k for k in table if k == notebook or k.split("_")[0] == notebook), None)
    if stem is None:
        return f"memory: {notebook} has no measured peak in {mode} mode yet (benchmarks/notebook_memory.py --write)."
    text = f"memory: this notebook's kernel peaked at {table[stem] / 2 ** 30:.2f} GiB in {mode} mode " \
           f"(benchmarks/notebook_memory.py, {measured().get('how', 'measured')})"
    limit = _env_limit()
    if limit is not None:
        text += f"; your limit is {limit / 2 ** 30:.2f} GiB for this kernel, the server and any other open notebook"
    return text + "."
