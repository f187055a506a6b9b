"""Notebook 08's model in a learner's kernel: private and shared memory, with and without the decoded model in the
cache (what `python -m labkit prepare` writes there).

    .venv/bin/python benchmarks/slm_memory.py              # 2 kernels at once in each case
    .venv/bin/python benchmarks/slm_memory.py --kernels 3

Each kernel is a fresh Python process that loads the model as notebook 08's first cell does and computes one
perplexity, then waits while this script reads its /proc files (Linux): RssAnon is memory no other process can
share; Shared_Clean counts file pages another process maps too; Pss splits each shared page between its processes.
"With the decoded model" reads LABKIT_CACHE (prepared first if it is not); "decoding its own" points the kernels at
an empty read-only cache, as on a hub whose cache holds only the baseline.

The latest results, with their machine and date: benchmarks/RESULTS.md#memory-per-kernel.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from labkit import fast_mode
from labkit.lm import slm

GIB = 1024 ** 3
KERNEL = """
import sys
from labkit.lm import slm
model, tok = slm.load_slm()
slm.perplexity(model, tok)
print("ready", flush=True)
sys.stdin.readline()  # stay alive until the parent has read this process's memory
"""


def _kib(path: Path, fields: tuple[str, ...]) -> dict[str, int]:
    """The named `Field:   N kB` lines of a /proc file, in bytes."""
    out = {}
    for line in path.read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in fields:
            out[name] = int(rest.split()[0]) * 1024
    return out


def kernels_memory(env: dict[str, str], kernels: int) -> list[dict[str, int]]:
    """Start `kernels` processes at once, each loading the model; their memory once all of them hold it."""
    procs = [subprocess.Popen([sys.executable, "-c", KERNEL], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True) for _ in range(kernels)]
    try:
        for p in procs:
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError(f"a kernel exited with code {p.wait()} before loading the model; run "
                                   f"`{sys.executable} -c 'from labkit import slm; slm.load_slm()'` to see why.")
        return [_kib(Path(f"/proc/{p.pid}/status"), ("VmHWM", "RssAnon", "RssFile"))
                | _kib(Path(f"/proc/{p.pid}/smaps_rollup"), ("Pss", "Shared_Clean")) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.stdin.write("\n")
                p.stdin.flush()
            p.wait(timeout=60)


def main(argv: list[str]) -> int:
    """Print one table row per kernel: with the decoded model in the cache, then decoding its own."""
    parser = argparse.ArgumentParser(description="Private and shared memory of notebook 08's model per kernel.")
    parser.add_argument("--kernels", type=int, default=2, help="kernels running at once in each case")
    args = parser.parse_args(argv)
    if args.kernels < 1:
        parser.error("--kernels takes a positive number, e.g. --kernels 2")
    if not Path("/proc/self/smaps_rollup").is_file():
        parser.error("this benchmark reads Linux's /proc/<pid>/smaps_rollup")

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(f"decoded model in the cache: {slm.prepare_decoded()}")
    print(f"\n| cache | kernel | RssAnon (private) | RssFile | Shared_Clean | Pss | peak RSS |\n"
          f"| --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as empty:
        cases = {"with the decoded model": dict(os.environ),
                 "decoding its own": dict(os.environ, LABKIT_CACHE=empty, LABKIT_CACHE_READONLY="1")}
        for case, env in cases.items():
            for i, m in enumerate(kernels_memory(env, args.kernels), 1):
                print(f"| {case} | {i} of {args.kernels} | {m['RssAnon'] / GIB:.2f} GiB | {m['RssFile'] / GIB:.2f} GiB | "
                      f"{m['Shared_Clean'] / GIB:.2f} GiB | {m['Pss'] / GIB:.2f} GiB | {m['VmHWM'] / GIB:.2f} GiB |",
                      flush=True)
    print(f"\n{'fast' if fast_mode() else 'full'} mode (the perplexity's text length); Pss counts each shared page "
          f"once in all, split between the kernels that map it")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
