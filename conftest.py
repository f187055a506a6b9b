"""Test order for `make test`'s two workers: the longest files first, so no worker is left alone at the end."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent

# Seconds per file in one fresh-clone `make test` in one process beside a CPU-bound process (2 cores). Only the
# order matters: a worker that picks up a long file last keeps the whole run waiting for it.
SECONDS = {"tests/browser/test_sliders.py": 146, "tests/browser/test_learner.py": 124,
           "tests/browser/test_voila.py": 97, "03_pruning.ipynb": 96, "06_three_strategies.ipynb": 92,
           "02_quantization.ipynb": 85, "05_dynamic_pruning.ipynb": 74, "07_capstone_dashboard.ipynb": 55,
           "01_sparse_coding.ipynb": 52, "00_baseline_and_myths.ipynb": 48, "04_dynamic_quantization.ipynb": 45,
           "tests/test_tour.py": 29, "tests/test_model.py": 28, "tests/test_dynamic.py": 18,
           "tests/test_checks.py": 17, "tests/test_prune.py": 14, "tests/test_runtimes.py": 14}


def _seconds(item) -> int:
    path = Path(str(item.fspath))
    rel = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else path.name
    return SECONDS.get(rel, SECONDS.get(path.name if path.suffix == ".ipynb" else rel, 0))


def pytest_collection_modifyitems(session, config, items) -> None:
    """Longest files first; a stable sort, so each file's items (a notebook's cells) keep their order."""
    items.sort(key=lambda item: -_seconds(item))
