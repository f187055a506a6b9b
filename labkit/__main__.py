"""`python -m labkit tour`: measure every technique on the cached baseline, write reports/.

`python -m labkit prepare`: train or verify the cached baseline once, e.g. before a class."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path

TECHNIQUES = ("sparse", "quantize", "prune", "dynamic", "strategies")  # each may define tour(model, tokenizer, reference)


def _technique_modules():
    for name in TECHNIQUES:
        try:
            mod = importlib.import_module(f"labkit.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"labkit.{name}":
                continue  # not built yet
            raise
        if hasattr(mod, "tour"):
            yield name, mod


def tour(out_dir: Path = Path("reports")) -> "pd.DataFrame":
    """Run every technique that exists on the cached baseline; print and write the comparison table."""
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd
    from tqdm.auto import tqdm

    from . import measure, model, myths, plots, strategies

    start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    base, tok = model.load_baseline()
    reference = measure.predictions(base, tok, "test")
    results = [measure.evaluate("fp32 baseline", base, tok, reference, notes="fine-tuned MiniLM-L6")]
    results.append(measure.evaluate("article: cast to float64", myths.cast_float64(base), tok, reference,
                                    notes="the article's 'quantization': twice the bytes"))
    mods = list(_technique_modules())
    for name, mod in tqdm(mods, desc="techniques"):
        results.extend(mod.tour(base, tok, reference))
    df = measure.table(results, baseline="fp32 baseline")
    df["pareto"] = strategies.pareto_front(df)
    df.to_csv(out_dir / "summary.csv", index=False)
    df.insert(2, "accuracy_95ci", [f"[{lo:.3f}, {hi:.3f}]" if pd.notna(lo) else "not measured"
                                   for lo, hi in zip(df["accuracy_lo"], df["accuracy_hi"])])
    cols = ["name", "accuracy", "accuracy_95ci", "agreement", "size_mb", "size_ratio", "latency_b1_ms", "latency_b32_ms",
            "speedup_b32", "pareto", "notes"]
    header = (f"# labkit tour\n\nCPU: {measure.cpu_name()} ({measure.cpu_features()}), threads: {results[0].threads}, "
              f"LABKIT_FAST={os.environ.get('LABKIT_FAST', '0')}, test split: {len(reference)} snippets. "
              f"Accuracy: on the test split, with its 95% Wilson interval. "
              f"Latency: median of timed runs after warm-up, real snippets.\n\n")
    (out_dir / "summary.md").write_text(header + df[cols].to_markdown(index=False, floatfmt=".3f") + "\n")
    plots.results_bars(df, out_dir / "summary.png")
    plots.pareto(df, path=out_dir / "pareto.png")
    print(df[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"\nwrote {out_dir}/summary.csv, summary.md, summary.png, pareto.png "
          f"in {time.perf_counter() - start:.0f} s")
    return df


def prepare() -> dict:
    """Train or verify the cached baseline once (e.g. for a whole class) and say what was done."""
    from . import model

    path = model.baseline_path()
    try:
        model.read_checkpoint(path)
        existed = True
    except (FileNotFoundError, ValueError):
        existed = False
    model.load_baseline()
    record = model.baseline_record()
    action = "verified" if existed else "trained"
    print(f"{action} baseline: {path}\n  sha256 {record['sha256']}\n  test accuracy {record['test_accuracy']:.4f}, "
          f"{record['steps']} steps, {record['train_seconds']} s training on {record['device']}\n"
          f"  learners use it with LABKIT_CACHE={path.parent}")
    return dict(record, action=action, path=str(path))


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m labkit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_tour = sub.add_parser("tour", help="measure every technique and write reports/")
    p_tour.add_argument("--fast", action="store_true", help="small data and few steps (same code path)")
    p_tour.add_argument("--out", type=Path, default=Path("reports"))
    p_prep = sub.add_parser("prepare", help="train or verify the cached baseline (once for a whole class)")
    p_prep.add_argument("--fast", action="store_true", help="the small CI baseline")
    args = parser.parse_args(argv)
    if args.fast:
        os.environ["LABKIT_FAST"] = "1"
    if args.command == "tour":
        tour(args.out)
    elif args.command == "prepare":
        prepare()
    return 0


if __name__ == "__main__":
    sys.exit(main())
