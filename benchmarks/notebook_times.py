"""Per-notebook and per-test-file run times from the last `make test` (test-output/junit.xml).

    .venv/bin/python benchmarks/notebook_times.py [path/to/junit.xml]

Teachers use it to plan a session: it sums the cells of each notebook as nbval ran them (fast mode in CI).

The latest results, with their machine and date: benchmarks/RESULTS.md#time.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path


def times(junit: Path) -> dict[str, float]:
    """Seconds per file (notebook or test module), summed over its test cases."""
    totals: dict[str, float] = defaultdict(float)
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = case.get("classname", "")  # "tests.test_data" or "notebooks.00_baseline_and_myths.ipynb"
        if name.endswith(".ipynb"):  # the learner edition (notebooks/) and the solved one (solutions/) apart
            folder, _, rest = name[:-len(".ipynb")].partition(".")
            name = f"{folder}/{rest}.ipynb"
        else:
            name = name.rsplit(".", 1)[-1]
        totals[name] += float(case.get("time", 0))
    return dict(totals)


def main(argv: list[str]) -> int:
    """Print the table."""
    junit = Path(argv[0] if argv else "test-output/junit.xml")
    if not junit.is_file():
        raise SystemExit(f"{junit} not found: run `make test` first.")
    rows = sorted(times(junit).items(), key=lambda kv: (not kv[0].endswith(".ipynb"), kv[0]))
    for name, sec in rows:
        print(f"{name:48s} {sec:7.1f} s")
    print(f"{'total':48s} {sum(s for _, s in rows):7.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
