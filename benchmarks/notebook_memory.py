"""Peak kernel memory (resident set) of every notebook, run top to bottom as a learner runs it.

    .venv/bin/python benchmarks/notebook_memory.py                  # fast mode, every notebook in notebooks/
    LABKIT_FAST=0 .venv/bin/python benchmarks/notebook_memory.py    # full size
    .venv/bin/python benchmarks/notebook_memory.py notebooks/03*.ipynb
    .venv/bin/python benchmarks/notebook_memory.py --write          # also record the peaks in labkit, where each
                                                                    # notebook's opening cell reads them
    LABKIT_LEAN=0 .venv/bin/python benchmarks/notebook_memory.py    # as on a machine with memory to spare
    .venv/bin/python benchmarks/notebook_memory.py --cells          # also each notebook's three hungriest cells
    .venv/bin/python benchmarks/notebook_memory.py --repeats 3      # each notebook 3 times; the largest peak counts
    .venv/bin/python benchmarks/notebook_memory.py --write --keep-larger   # a second machine: keep the larger of
                                                                    # its peak and the recorded one, per notebook

Kernels train lean (train.fit: recomputed activations, fused AdamW, freed pages handed back) as they do on a hub or
Binder, which set MEM_LIMIT; LABKIT_LEAN=0 measures the default of a machine without a limit.

A hub or Binder limit counts the kernel and the Jupyter server together; Binder gives 1-2 GB in all. The peak is
the kernel's own high-water mark (VmHWM in /proc/<pid>/status, kept by Linux), so nothing is missed between
samples. Each notebook runs in a fresh kernel, one at a time, so one notebook's memory never counts for another.
The same notebook peaks differently from run to run (see RESULTS.md), so a limit should come from the largest of
several runs (`--repeats`).

The latest results, with their machine and date: benchmarks/RESULTS.md#memory-per-notebook.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from labkit.core import machine, memory

ROOT = Path(__file__).resolve().parents[1]
GIB = 1024 ** 3


def _status_kib(pid: int, field: str) -> int:
    """A /proc/<pid>/status field in KiB (VmHWM: peak resident set; VmRSS: current)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise ValueError(f"{field} not found for process {pid}: this benchmark needs Linux's /proc.")


def _reset_peak(pid: int) -> bool:
    """Start the kernel's high-water mark again from its current resident set (Linux: clear_refs 5)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss(path: Path, timeout: int = 1800) -> dict:
    """Run one notebook in a fresh kernel; its peak and final resident memory in bytes, its wall time, and each code
    cell's own peak (`cells`: index, peak bytes, first line), where Linux lets the high-water mark be reset."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=False,
                            resources={"metadata": {"path": str(path.parent)}})
    t0 = time.perf_counter()
    cells, peak = [], 0
    with client.setup_kernel():
        pid = client.km.provisioner.process.pid
        for index, cell in enumerate(nb.cells):
            # The mark is reset only at a cell's start, where it is the current resident set, so the largest of
            # the cells' peaks is the whole run's peak
            peak = max(peak, _status_kib(pid, "VmHWM"))
            resets = cell.cell_type == "code" and _reset_peak(pid)
            client.execute_cell(cell, index)
            if resets:
                first = (cell.source.strip().splitlines() or [""])[0][:60]
                cells.append((index, _status_kib(pid, "VmHWM") * 1024, first))
        peak, last = max(peak, _status_kib(pid, "VmHWM")), _status_kib(pid, "VmRSS")
    return {"notebook": path.name, "peak_bytes": peak * 1024, "final_bytes": last * 1024,
            "seconds": time.perf_counter() - t0, "cells": cells}


def record(mode: str, peaks: dict[str, int], how: str, keep_larger: bool = False) -> Path:
    """Write this mode's peaks into labkit/notebook_memory.json (memory.needs reads it), keeping the other mode's.

    `keep_larger`: each notebook keeps the larger of its recorded peak and this one, and `how` names both
    measurements. Peaks differ between machines (allocators, the CPU's kernels), and a hub's limit must hold the
    largest, so a machine that happens to peak lower never lowers it.
    """
    import json


    table = memory.measured() or {"fast": {}, "full": {}}
    recorded = table.setdefault(mode, {})
    if keep_larger:
        peaks = {name: max(peak, recorded.get(name, 0)) for name, peak in peaks.items()}
        how = f"{table['how']}; the larger kept against {how}" if table.get("how") else how
    recorded.update(peaks)
    table["how"] = how
    tmp = memory.MEASURED.with_suffix(".tmp")
    tmp.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    tmp.replace(memory.MEASURED)  # atomic: a reader never sees half a file
    return memory.MEASURED


def main(argv: list[str]) -> int:
    """Print a markdown table of peak kernel memory per notebook (--write also records it in labkit)."""
    import argparse

    parser = argparse.ArgumentParser(description="Peak kernel memory of each notebook, run top to bottom.")
    parser.add_argument("notebooks", nargs="*", type=Path, help="notebooks to run (default: all in notebooks/)")
    parser.add_argument("--write", action="store_true", help="record the peaks in labkit/notebook_memory.json")
    parser.add_argument("--cells", action="store_true", help="also print each notebook's three hungriest cells")
    parser.add_argument("--repeats", type=int, default=1, help="runs per notebook; the largest peak counts")
    parser.add_argument("--keep-larger", action="store_true",
                        help="with --write: keep each notebook's recorded peak where it is larger (another machine's)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats takes a positive number of runs per notebook, e.g. --repeats 3")
    if args.keep_larger and not args.write:
        parser.error("--keep-larger says what --write records: pass both, e.g. --write --keep-larger")
    missing = [str(p) for p in args.notebooks if not p.is_file()]
    if missing:
        parser.error(f"no such notebook: {', '.join(missing)} (paths are relative to where you run this)")
    write, by_cell, repeats = args.write, args.cells, args.repeats
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("*.ipynb"))
    os.environ.setdefault("LABKIT_FAST", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("LABKIT_LEAN", "1")  # what a hub's kernel does (memory.tight reads its MEM_LIMIT)
    mode = "fast" if os.environ["LABKIT_FAST"] != "0" else "full"
    lean = "lean training" if os.environ["LABKIT_LEAN"] == "1" else "training not lean"
    print(f"Peak kernel RSS, {mode} mode, {lean}, one fresh kernel per notebook\n")
    print("| notebook | peak kernel RSS | at the end | run time |\n| --- | --- | --- | --- |")
    peaks = {}
    for path in paths:
        runs = [peak_rss(path) for _ in range(repeats)]
        r = max(runs, key=lambda run: run["peak_bytes"])
        peaks[path.stem] = r["peak_bytes"]
        sizes = ", ".join(f"{run['peak_bytes'] / GIB:.2f}" for run in runs)
        each = f" (runs: {sizes})" if repeats > 1 else ""
        print(f"| {path.stem} | {r['peak_bytes'] / GIB:.2f} GiB{each} | {r['final_bytes'] / GIB:.2f} GiB | "
              f"{r['seconds']:.0f} s |", flush=True)
        if by_cell:
            for index, size, first in sorted(r["cells"], key=lambda c: -c[1])[:3]:
                print(f"|   cell {index}: {first} | {size / GIB:.2f} GiB | | |", flush=True)
    if write:

        how = f"{lean}, {machine.cpu_name()}, {time.strftime('%Y-%m-%d')}"
        how += f", largest of {repeats} runs" if repeats > 1 else ""
        print(f"\nrecorded in {record(mode, peaks, how, keep_larger=args.keep_larger)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
