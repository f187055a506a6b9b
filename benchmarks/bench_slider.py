"""Slider responsiveness in the browser: time from a key press on a slider to the updated panel output.

JupyterLab in headless system Chromium (Playwright) runs the quantization, pruning and capstone notebooks, then moves
each slider step by step to new values (fresh: evaluated) and back over the same values (cached), and prints
the median seconds per notebook. Targets: fresh <= 2 s, cached <= 0.5 s (2 cores).

    LABKIT_FAST=1 .venv/bin/python benchmarks/bench_slider.py [--moves 5]

The latest results, with their machine and date: benchmarks/RESULTS.md#time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "browser"))

from labdriver import move, open_notebook, panel_cell, panel_output, run_all, slider, wait_output  # noqa: E402

import conftest as lab  # noqa: E402  (server and browser settings shared with the browser tests)

# notebook, slider label, key towards new values, key back (the panel's cell is found in the notebook)
NOTEBOOKS = [("02_quantization.ipynb", "bits", "ArrowLeft", "ArrowRight"),
             ("03_pruning.ipynb", "sparsity", "ArrowRight", "ArrowLeft"),
             ("07_capstone_dashboard.ipynb", "sparsity", "ArrowRight", "ArrowLeft")]


def bench(page, base: str, notebook: str, label: str, fwd: str, back: str, moves: int) -> dict:
    """Run the notebook down to its panel, then `moves` fresh moves and `moves` moves back over cached points."""
    open_notebook(page, base, notebook)
    run_all(page, panel_cell(ROOT / "notebooks" / notebook))
    box = slider(page, label)
    box.scroll_into_view_if_needed()
    out = panel_output(page, box)
    wait_output(page, out)
    fresh = [move(page, box, out, fwd)[0] for _ in range(moves)]
    cached = [move(page, box, out, back)[0] for _ in range(moves)]
    return {"notebook": notebook, "fresh": fresh, "cached": cached}


def main() -> None:
    """Measure every notebook in one browser and print medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--moves", type=int, default=5, help="moves each way per notebook")
    args = parser.parse_args()
    if reason := lab._missing():
        sys.exit(f"{reason}; {lab.INSTALL_HINT}")
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for nb, *_ in NOTEBOOKS:
            (root / nb).write_bytes((ROOT / "notebooks" / nb).read_bytes())
        lab.lab_settings(root)
        argv = lab.lab_argv(root)
        proc, base = lab.start_server(argv, root, "/api/status", root / "jupyter-lab.log")
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=str(lab.CHROMIUM), args=lab.CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.set_default_timeout(300_000)
                rows = [bench(page, base, *nb, moves=args.moves) for nb in NOTEBOOKS]
                browser.close()
        finally:
            lab.stop(proc)
    mode = "fast" if os.environ.get("LABKIT_FAST", "1") == "1" else "full"
    print(f"slider move -> updated output, headless Chromium + JupyterLab, {mode} baseline, "
          f"{os.cpu_count()} CPUs, {args.moves} moves each")
    print(f"{'notebook':28s} {'fresh median s':>15s} {'fresh max s':>12s} "
          f"{'cached median s':>16s} {'cached max s':>13s}")
    for r in rows:
        print(f"{r['notebook']:28s} {statistics.median(r['fresh']):15.2f} {max(r['fresh']):12.2f} "
              f"{statistics.median(r['cached']):16.2f} {max(r['cached']):13.2f}")


if __name__ == "__main__":
    main()
