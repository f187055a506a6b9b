"""A classroom on one hub: each learner's limits, and a memory check that warns a learner near theirs.

The limits are read by hub/jupyterhub_config.py (`make hub`), and tests/test_hub.py checks hub/z2jh-config.yaml
(Zero to JupyterHub) against them, so there is one source of truth.

The check runs in the learner's kernel before every cell (an IPython extension: the hub's kernels start with
`--ext=labkit.classroom.hub`, see hub/jupyter/kernels/). JupyterHub puts the learner's limit in the environment as MEM_LIMIT
(bytes). A hub on one machine (LocalProcessSpawner) does not enforce it, and on Kubernetes going over it kills
the kernel with no word of why; so the kernel says, before that, how much the learner uses and what to close.

    python -m labkit.classroom.hub check    # make hub: refuse to start without the prepared, shared baseline
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from labkit import fast_mode
from labkit.core import cache, model, settings
from labkit.lm import slm

GIB = 1024 ** 3

# Memory per learner: the Jupyter server and all of the learner's kernels together. From
# benchmarks/notebook_memory.py --write (labkit/notebook_memory.json, the peak kernel RSS of each notebook in a fresh
# kernel, lean training as on a hub): the largest fast-mode peak plus SERVER_ALLOWANCE for the Jupyter server,
# rounded up to a quarter GiB (tests/test_hub.py checks it against the recorded table). One notebook at a time fits;
# a second open notebook is what the kernels' memory check tells the learner to close.
SERVER_ALLOWANCE = 0.25 * 1024 ** 3  # an allowance for the single-user Jupyter server, not a measurement
MEM_LIMIT = "2304M"  # 2.25 GiB: the largest recorded peak (notebook 08) plus the allowance, rounded up
# Kubernetes reserves the guarantee on a node. A class runs the same notebook at the same time, so peaks
# coincide: reserving less than the limit would let a full node kill kernels mid-lesson.
MEM_GUARANTEE = MEM_LIMIT
# CPU (cores) per learner. Not measured: one core each, so that N learners on an N-core machine do not fight over
# threads; the local hub gives each kernel that many torch threads (OMP_NUM_THREADS), Kubernetes enforces it.
CPU_LIMIT = 1.0
CPU_GUARANTEE = 0.5
# A learner's server idle this long is stopped (jupyterhub-idle-culler); the files in their home stay.
CULL_IDLE_SECONDS = 3600
# A kernel whose notebook tab was closed (no browser connected) and idle this long is shut down by the server.
KERNEL_CULL_IDLE_SECONDS = 1200
# The kernel warns from this share of the limit on: the next cell may need more than is left.
WARN_AT = 0.8


@dataclass(frozen=True)
class Usage:
    """One learner's memory: this kernel's resident set, theirs in all (server and kernels), and the limit."""
    kernel_bytes: int
    total_bytes: int
    kernels: int
    limit_bytes: int


def _gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB"


def message(use: Usage, notebook: str | None = None) -> str | None:
    """What to tell the learner about `use`, or None while it is below WARN_AT of the limit."""
    if use.limit_bytes <= 0 or use.total_bytes < WARN_AT * use.limit_bytes:
        return None
    where = f"notebook {notebook}" if notebook else "this notebook"
    text = (f"Memory: this kernel uses {_gib(use.kernel_bytes)}; your {use.kernels} running "
            f"kernel{'s' if use.kernels != 1 else ''} and Jupyter use {_gib(use.total_bytes)} of your "
            f"{_gib(use.limit_bytes)} limit. ")
    if use.kernels > 1:
        text += (f"Close the other notebooks (in each: Kernel > Shut Down Kernel, or the Running panel) before "
                 f"running {where}.")
    else:
        text += f"Restart this kernel (Kernel > Restart Kernel) to free what earlier cells kept, then run {where}."
    if use.total_bytes >= use.limit_bytes:
        text += " Over the limit the hub may stop the kernel ('Kernel died') and its variables are lost."
    return text


def usage(limit: str | int | None = None) -> Usage | None:
    """This kernel's and this learner's memory (resident sets), or None where no limit is set (MEM_LIMIT).

    The learner's processes are the Jupyter server that started this kernel and everything under it. Resident
    sets count shared libraries in every process (about 0.1 GiB per kernel here), so the sum errs high.
    """
    limit_bytes = settings.parse_bytes(limit) if limit is not None else settings.mem_limit()
    if not limit_bytes:
        return None
    import psutil

    me = psutil.Process()
    server = me.parent()
    try:  # only a Jupyter server's own processes: never a whole machine's under init or a shell
        ours = server is not None and "jupyter" in " ".join(server.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        ours = False
    procs = [server, *server.children(recursive=True)] if ours else [me]
    total, kernels = 0, 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
            kernels += "ipykernel" in " ".join(proc.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass  # a process that ended between listing and reading holds no memory
    return Usage(me.memory_info().rss, total, max(kernels, 1), limit_bytes)


def _notebook() -> str | None:
    """The running notebook's name, e.g. '02_quantization' (Jupyter's server tells its kernels)."""
    path = settings.session_name()
    return Path(path).stem if path else None


class _Watch:
    """Warn before a cell when memory is high; again only when it has grown by a tenth of the limit or more."""
    def __init__(self) -> None:
        self.warned_at = 0

    def __call__(self, *_) -> None:
        use = usage()
        if use is None:
            return
        if use.total_bytes < WARN_AT * use.limit_bytes:
            self.warned_at = 0  # back under: warn again next time it climbs
            return
        if use.total_bytes - self.warned_at < use.limit_bytes / 10:
            return
        text = message(use, _notebook())
        if text:
            self.warned_at = use.total_bytes
            print(text, file=sys.stderr, flush=True)


def load_ipython_extension(ip) -> None:
    """`--ext=labkit.classroom.hub` (or %load_ext labkit.classroom.hub): check memory before each cell; nothing without MEM_LIMIT."""
    if settings.mem_limit():
        ip.events.register("pre_run_cell", _Watch())


def check_cache() -> str:
    """The prepared baseline learners will read, checked; a ValueError says what is wrong and what to run.

    With LABKIT_CACHE_READONLY=1, as `python -m labkit.classroom.hub check` runs it, nothing is ever trained."""
    path = model.baseline_path()
    problem = _unshared(path)
    if problem is None:
        try:
            model.load_baseline(progress=False)
        except (ValueError, FileNotFoundError, OSError) as err:
            problem = str(err.__cause__ or err)  # the checkpoint's own words, not the read-only cache's wrapper
    if problem is not None:
        fast = "LABKIT_FAST=1 " if fast_mode() else ""
        raise ValueError(f"The hub needs the prepared baseline {path}: {problem}\nRun `{fast}LABKIT_CACHE="
                         f"{cache.cache_dir()} .venv/bin/python -m labkit prepare` (add --group NAME for a class "
                         "group) as the cache's owner, then check again.")
    return f"learners read the prepared baseline {path} ({cache.describe(path)})\n{_slm_line()}"


def _unshared(path: Path) -> str | None:
    """What keeps learners (other users than the one who prepared it) from reading the baseline at `path`."""
    root = cache.cache_dir()
    if not root.exists():
        return f"the cache folder {root} does not exist."
    if not root.is_dir():
        return f"LABKIT_CACHE={root} is a file, not a folder: point LABKIT_CACHE at the prepared folder."
    if not path.is_file() or not path.with_suffix(".json").is_file():
        return (f"{path.name} (or its record {path.with_suffix('.json').name}) is missing from {root}: it was not "
                "prepared with these settings (LABKIT_FAST, LABKIT_DATA).")
    for item in (root, path, path.with_suffix(".json")):
        why = cache.unreadable(item)
        if why:
            return f"{why}."
        # This user may be the owner; learners are not: they need the group's or everyone's read bit.
        mode, others = item.stat().st_mode, 0o005 if item.is_dir() else 0o004
        if mode & others != others and mode & (others << 3) != others << 3:
            return f"{item} can be read by its owner only ({cache.describe(item)}), not by learners' kernels."
    return None


def _slm_line() -> str:
    """Whether notebook 08's decoded model is in the cache; without it every learner's kernel decodes its own."""
    folder = slm.decoded_path()
    if folder is not None:
        return f"and the decoded small language model {folder}, one copy in memory for every learner of notebook 08"
    return ("the small language model is not decoded in this cache: each learner's kernel in notebook 08 decodes "
            "its own (about 0.5 GiB more private memory each). Run `python -m labkit prepare` with labkit[slm] "
            "installed to decode it once.")


def main(argv: list[str]) -> int:
    """`python -m labkit.classroom.hub check`: exit 1 with a message when the shared baseline is not prepared."""
    if argv != ["check"]:
        print("usage: python -m labkit.classroom.hub check", file=sys.stderr)
        return 2
    os.environ["LABKIT_CACHE_READONLY"] = "1"  # this command's own process: check the cache, never train
    try:
        print(check_cache())
    except (ValueError, PermissionError) as err:  # what is wrong and what to run, without a traceback
        print(err, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
