"""`python -m labkit tour`: every technique measured beside the baseline (or your own classifier), written to a folder.

The tour is robust to the model it is given: a technique, or one of its rows, that cannot run on the model (too few
layers, heads that cannot be cut out, a precision this device lacks) is left out with its reason in the report. The
report (summary.csv, summary.md, tour.json) is rewritten atomically after every technique, so an error or Ctrl-C
later leaves what was measured, marked incomplete. The folder is made only when there is something to write in it.
"""

from __future__ import annotations

import difflib
import importlib
import io
import json
import os
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

import matplotlib
import numpy as np
import pandas as pd
from matplotlib import pyplot as plt
from torch import nn
from tqdm.auto import tqdm

from labkit import fast_mode
from labkit.core import assets, cache, data, floor, machine, measure, model, parts, results, roofline
from labkit.lab import myths, plots
from labkit.pipelines import pareto

# Each module's tour(model, tokenizer, reference) gives its rows of the table.
TECHNIQUES = ("quant.floats", "sparse.sparse", "quant.quantize", "prune.prune", "prune.distill", "dynamic.tokens",
              "dynamic.int8", "runtimes.openvino", "pipelines.pipeline")
RECORD = "tour.json"  # what was measured, skipped and left, and for which model and data
FILES = ("summary.csv", "summary.md", "summary.png", "pareto.png", "floor.json", RECORD)
COLUMNS = ["name", "accuracy", "accuracy_95ci", "val_accuracy", "agreement", "size_mb", "size_ratio",
           "latency_b1_ms", "latency_b32_ms", "speedup_b32", "predicted_speedup_b32", "speedup_b32_range", "rounds",
           "pareto", "notes"]
BASELINE = "fp32 baseline"
# The kit's goal: at least 8x faster at batch 32 and 4x smaller than the fp32 baseline, within 2 accuracy points.
GOAL = {"speedup_b32": 8.0, "size_ratio": 4.0, "points": 2.0}


def technique_names() -> dict[str, str]:
    """Each technique's short name (its module's, e.g. 'prune') -> its module under labkit ('prune.prune')."""
    return {name.rsplit(".", 1)[-1]: name for name in TECHNIQUES}


def pick(names: str | Iterable[str] | None = None) -> tuple[str, ...]:
    """The TECHNIQUES named (short or dotted; a list, or one comma-separated string), in the tour's order; all of them
    for None. An unknown name is refused, naming the choices."""
    if names is None:
        return tuple(TECHNIQUES)
    if isinstance(names, str):
        names = names.split(",")
    short, wanted = technique_names(), set()
    for raw in names:
        if not isinstance(raw, str):
            raise TypeError(f"Technique names are strings such as 'prune', got {raw!r} ({type(raw).__name__}).")
        name = raw.strip()
        if not name:  # 'prune,' or a space: nothing named there
            continue
        if name not in short and name not in TECHNIQUES:
            close = difflib.get_close_matches(name, list(short) + list(TECHNIQUES), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"Unknown technique {raw!r}{hint}: choose from {', '.join(short)}, comma-separated "
                             "(e.g. --techniques prune,int8).")
        wanted.add(short.get(name, name))
    if not wanted:
        raise ValueError(f"No technique named: choose from {', '.join(short)}, comma-separated (e.g. --techniques "
                         "prune,int8), or leave --techniques out to run them all.")
    return tuple(t for t in TECHNIQUES if t in wanted)


def _technique_modules(names: Iterable[str]):
    """(name, module) of every technique named; one that fails to import, or has no tour, is an error."""
    for name in names:
        try:
            mod = importlib.import_module(f"labkit.{name}")
        except Exception as err:  # a skipped technique would leave a table that looks complete but is not
            raise ImportError(f"labkit.{name} failed to import ({type(err).__name__}: {err}); the tour measures "
                              "every technique in TECHNIQUES: fix the module or take it out of TECHNIQUES.") from err
        if not callable(getattr(mod, "tour", None)):
            raise ImportError(f"labkit.{name} has no tour(model, tokenizer, reference); add one or take it out of "
                              "TECHNIQUES.")
        yield name, mod


def identity(model_dir: str | Path | None) -> dict:
    """What a tour measures, as its record keeps it: the model (the kit's baseline or a folder) and the data."""
    td = data.active()
    where = "the kit's MiniLM-L6 baseline" if model_dir is None else str(Path(model_dir).resolve())
    return {"model": where, "data": td.name, "split_sha256": td.split_hash}


def _read_record(out_dir: Path) -> dict | None:
    """The tour record in `out_dir`, or None where there is none or it is not a tour's."""
    try:
        record = json.loads((out_dir / RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and {"model", "split_sha256"} <= set(record) else None


def out_folder(out_dir: str | os.PathLike) -> Path:
    """`out_dir` as a Path; a blank name (which would mean the current folder) or a non-path is refused."""
    if isinstance(out_dir, bool) or not isinstance(out_dir, (str, os.PathLike)):
        raise TypeError(f"The report's folder is a path such as 'reports', got {out_dir!r} ({type(out_dir).__name__}).")
    if not str(out_dir).strip():
        raise ValueError("The report's folder name is empty: name a folder, e.g. --out reports (out_dir='reports').")
    return Path(out_dir)


def check_out(out_dir: Path, ident: dict, overwrite: bool = False) -> None:
    """Refuse a report folder the tour cannot or should not write, before any work: a file, a place this user cannot
    write, or a folder holding another tour's results or files of the same names (unless `overwrite`)."""
    if not isinstance(overwrite, bool):
        raise TypeError(f"overwrite must be True or False, got {overwrite!r}.")
    there = out_dir
    while not there.exists() and there != there.parent:
        there = there.parent
    if there.exists() and not there.is_dir():
        raise ValueError(f"{there} is a file, not a folder: give the tour a folder to write its report in "
                         f"(--out DIR; it is made if missing).")
    if not os.access(there, os.W_OK | os.X_OK):
        raise PermissionError(f"Cannot write in {there}: pass --out a folder you can write to (e.g. --out "
                              f"{Path.home() / 'labkit-reports'}).")
    if overwrite or there != out_dir:
        return
    record = _read_record(out_dir)
    if record is not None:
        if (record["model"], record["split_sha256"]) != (ident["model"], ident["split_sha256"]):
            raise ValueError(f"{out_dir} already holds the results of another tour ({record['model']} on "
                             f"{record.get('data', 'other data')}): pass --overwrite (overwrite=True) to replace "
                             f"them, or another --out folder.")
        return
    present = [name for name in FILES if (out_dir / name).exists()]
    summary = out_dir / "summary.md"
    by_a_tour = summary.is_file() and summary.read_text(errors="replace").startswith("# labkit tour")
    if present and not by_a_tour:
        raise ValueError(f"{out_dir} already holds {', '.join(present)}, not written by a labkit tour: pass "
                         f"--overwrite (overwrite=True) to replace them, or another --out folder.")


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


def best_configuration(df: pd.DataFrame, baseline: str = BASELINE, points: float = GOAL["points"]) -> dict | None:
    """The fastest row at batch 32 among those within `points` accuracy points of `baseline` on the validation
    split (the baseline itself included), with its test accuracy (reported once) and its ratios to GOAL.

    Only rows timed and measured on the same validation snippets as the baseline compete; None where the baseline
    has no validation accuracy or was not timed. `predicted_speedup_b32`: the roofline's prediction for that row,
    where the table has that column (None otherwise).
    """
    if baseline not in set(df["name"]) or "val_accuracy" not in df:
        return None
    base = df[df["name"] == baseline].iloc[0]
    if pd.isna(base["val_accuracy"]):
        return None
    # 1e-9: a row exactly 2 points below is within 2 points, whatever the float rounding of the difference
    near = df["val_accuracy"] >= base["val_accuracy"] - points / 100 - 1e-9
    same = df["val_snippets"] == base["val_snippets"]
    candidates = df[near & same & df["speedup_b32"].notna()]
    if candidates.empty:  # the baseline itself was not timed
        return None
    row = candidates.loc[candidates["speedup_b32"].astype(float).idxmax()]
    predicted = row.get("predicted_speedup_b32")
    return {"name": row["name"], "points": points, "candidates": len(candidates),
            "baseline_val_accuracy": float(base["val_accuracy"]), "val_accuracy": float(row["val_accuracy"]),
            "val_snippets": int(row["val_snippets"]),
            "val_points": 100 * float(row["val_accuracy"] - base["val_accuracy"]),
            "test_accuracy": float(row["accuracy"]), "test_lo": float(row["accuracy_lo"]),
            "test_hi": float(row["accuracy_hi"]), "test_snippets": int(row["snippets"]),
            "speedup_b32": float(row["speedup_b32"]), "size_ratio": float(row["size_ratio"]),
            "of_speedup_goal": float(row["speedup_b32"]) / GOAL["speedup_b32"],
            "of_size_goal": float(row["size_ratio"]) / GOAL["size_ratio"],
            "goal_met": bool(row["speedup_b32"] >= GOAL["speedup_b32"] and row["size_ratio"] >= GOAL["size_ratio"]),
            "predicted_speedup_b32": None if predicted is None or pd.isna(predicted) else float(predicted)}


def describe_best(best: dict | None) -> str:
    """The summary's lines on the best configuration within the goal's points (markdown)."""
    if best is None:
        return "No best configuration: the baseline row has no validation accuracy or was not timed.\n"
    goal = GOAL
    # the roofline's predicted speed-up beside the measured one, where the table carries the prediction
    roofline = (f"predicted {best['predicted_speedup_b32']:.2f}x from bytes and multiply-adds, measured "
                f"{best['speedup_b32']:.2f}x" if best["predicted_speedup_b32"] is not None else
                "not predicted in this table (no predicted_speedup_b32 column)")
    return (f"**Best configuration within {best['points']:g} points: {best['name']}.** Chosen on the validation "
            f"split: the fastest at batch 32 of the {best['candidates']} rows whose validation accuracy is within "
            f"{best['points']:g} points of the fp32 baseline's ({best['baseline_val_accuracy']:.3f} on "
            f"{best['val_snippets']} snippets); its own is {best['val_accuracy']:.3f} ({best['val_points']:+.2f} "
            f"points). Test accuracy, reported once: {best['test_accuracy']:.3f} [{best['test_lo']:.3f}, "
            f"{best['test_hi']:.3f}] on {best['test_snippets']} snippets. Speed-up at batch 32: "
            f"{best['speedup_b32']:.2f}x; {best['size_ratio']:.2f}x smaller.\n\n"
            f"Against the goal (at least {goal['speedup_b32']:g}x at batch 32, at least {goal['size_ratio']:g}x "
            f"smaller, within {goal['points']:g} points): {best['speedup_b32']:.2f}x of {goal['speedup_b32']:g}x "
            f"({best['of_speedup_goal']:.2f}), {best['size_ratio']:.2f}x of {goal['size_ratio']:g}x smaller "
            f"({best['of_size_goal']:.2f}): {'met' if best['goal_met'] else 'open'}.\n\n"
            f"Its place on the roofline: {roofline}.\n")


def run_technique(mod: ModuleType, base: nn.Module, tok, reference: np.ndarray, limit: int | None
                  ) -> tuple[list[results.Result], list[dict]]:
    """A technique's rows on `base`, and the rows it left out with their reasons: all of them where the technique
    refuses this model (a ValueError), else those it skipped (`results.skip_row`). Other warnings pass through."""
    skipped = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", results.RowSkipped)
        try:
            rows = mod.tour(base, tok, reference, limit=limit)
        except ValueError as err:  # the technique's own refusal says what this model lacks
            rows = []
            skipped.append({"row": "every row", "reason": str(err)})
    for w in caught:
        if isinstance(w.message, results.RowSkipped):
            skipped.append({"row": w.message.row, "reason": w.message.reason})
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return rows, skipped


class Report:
    """The tour's report in `out_dir`, rewritten whole (each file atomically) every time `write` is called."""

    def __init__(self, out_dir: Path, ident: dict, planned: tuple[str, ...], limit: int | None):
        self.out_dir, self.ident, self.planned, self.limit = Path(out_dir), ident, planned, limit
        self.rows: list[results.Result] = []
        self.done: list[str] = []
        self.skipped: list[dict] = []
        self.header, self.floor, self.files = "", {}, []
        self.made = not self.out_dir.exists()  # a folder this run makes is removed again if it stays empty

    def _write(self, name: str, payload: bytes) -> None:
        if not self.files:  # the first write of this run: the last run's files would mix with this one's
            for old in FILES:
                (self.out_dir / old).unlink(missing_ok=True)
        cache.atomic_write_bytes(self.out_dir / name, payload)
        if name not in self.files:
            self.files.append(name)

    def tidy(self) -> None:
        """Remove the folder this run made if nothing was written in it (a failure before the first file)."""
        if self.made and self.out_dir.is_dir() and not any(self.out_dir.iterdir()):
            self.out_dir.rmdir()

    def status(self, error: str | None) -> str:
        """'complete', or what stopped the tour and what it had measured: the record's and summary.md's words."""
        left = [t for t in self.planned if t not in self.done]
        if not left and error is None:
            return "complete"
        why = error or "still running, or stopped without a Python error (e.g. killed)"
        return (f"incomplete: {why}. Measured: {', '.join(self.done) or 'the baseline only'}; not reached: "
                f"{', '.join(left) or 'none'}.")

    def write(self, error: str | None = None, figures: bool = False) -> pd.DataFrame:
        """Write the table, summary.md, floor.json and tour.json (and the plots when `figures`); the table."""
        df = results.table(self.rows, baseline=BASELINE)
        df["pareto"] = pareto.pareto_front(df)
        self._write("summary.csv", df.to_csv(index=False).encode())
        df.insert(2, "accuracy_95ci", [f"[{lo:.3f}, {hi:.3f}]" if pd.notna(lo) else "not measured"
                                       for lo, hi in zip(df["accuracy_lo"], df["accuracy_hi"])])
        status = self.status(error)
        text = self.header + ("" if status == "complete" else f"**{status[0].upper()}{status[1:]}**\n\n")
        text += df[COLUMNS].to_markdown(index=False, floatfmt=".3f") + "\n"
        best = best_configuration(df)
        text += f"\n## Best configuration within {GOAL['points']:g} points\n\n{describe_best(best)}"
        if self.skipped:
            text += "\n## Not run on this model\n\n" + "".join(f"- {s['row']} ({s['technique']}): {s['reason']}\n"
                                                                for s in self.skipped)
        self._write("summary.md", text.encode())
        self._write("floor.json", (json.dumps(self.floor, indent=2, default=str) + "\n").encode())
        if figures:
            # pareto.png draws accuracy against batch-32 latency: its front is that two-dimensional one, not the
            # table's three-objective column (which counts size too)
            flat = pareto.pareto_front(df, minimize=("latency_b32_ms",))
            for name, draw in (("summary.png", plots.results_bars),
                               ("pareto.png", lambda d: plots.pareto(d, front=flat))):
                fig, buf = draw(df), io.BytesIO()
                fig.savefig(buf, dpi=120, format="png")
                plt.close(fig)
                self._write(name, buf.getvalue())
        record = dict(self.ident, status="complete" if status == "complete" else "incomplete",
                      error=None if status == "complete" else status, fast=fast_mode(), limit=self.limit,
                      techniques=list(self.planned), measured=list(self.done), skipped=self.skipped,
                      rows=list(df["name"]), best=best, goal=GOAL, files=sorted(set(self.files) | {RECORD}))
        self._write(RECORD, (json.dumps(record, indent=2) + "\n").encode())
        return df


def tour(out_dir: str | Path = Path("reports"), limit: int | None = None, model_dir: str | Path | None = None,
         techniques: str | Iterable[str] | None = None, overwrite: bool = False) -> pd.DataFrame:
    """Run every technique (or those named) on the cached baseline for the active data, or on the classifier in
    `model_dir` fine-tuned on it; print the comparison table and write it to `out_dir`.

    `limit` measures accuracy on the first `limit` test snippets only (for tests); the code path is the same.
    `out_dir` holding another tour's results is refused unless `overwrite`. What cannot run on this model is left
    out with its reason; the report is rewritten after each technique, marked incomplete until the last."""
    matplotlib.use("Agg")  # files only: no window
    start, out_dir = time.perf_counter(), out_folder(out_dir)
    names = pick(techniques)
    ident = identity(model_dir)
    check_out(out_dir, ident, overwrite)
    mods = list(_technique_modules(names))  # a broken module is found before minutes of work
    td = data.active()
    td.split("test", limit)  # a bad limit is refused here, not after the fine-tuning
    base, tok, base_note = _baseline_for_tour(model_dir)
    roof = roofline.measured()  # this machine's roof (cached per CPU and threads): each row's predicted speed-up
    reference = measure.predictions(base, tok, "test", limit)
    low = floor.tfidf_logreg(td, limit=limit)  # the floor the fine-tuned model should beat, on the same test texts
    versus = measure.paired(reference, low["predictions"], td.split("test", limit)["label"].to_numpy())
    report = Report(out_dir, ident, names, limit)
    report.floor = dict({k: v for k, v in low.items() if k != "predictions"}, baseline_minus_floor=versus)
    # The baseline row is timed in one interleaved group with the float64 copy; each technique's tour times its
    # rows in a group of their own beside the baseline, so every speed-up compares runs seconds apart, not minutes.
    report.rows = results.evaluate_group({BASELINE: base, "article: cast to float64": myths.cast_float64(base)},
                                         tok, reference, base, notes={BASELINE: base_note,
                                         "article: cast to float64": "the article's 'quantization': twice the bytes"},
                                         limit=limit)
    report.header = (
        f"# labkit tour\n\nModel: {base_note}. Data: {td.name}, {td.num_labels} classes "
        f"({', '.join(td.label_names)}), split sha256 {td.split_hash[:12]}. Floor: {floor.describe(low)}; the fp32 "
        f"baseline minus the floor: {versus['difference']:+.3f} [{versus['lo']:+.3f}, {versus['hi']:+.3f}], "
        f"McNemar p={versus['p_value']:.3g}.\n\n"
        f"CPU: {machine.cpu_name()} ({machine.cpu_features()}), threads: {report.rows[0].threads}, "
        f"LABKIT_FAST={int(fast_mode())}, test split: {len(reference)} snippets. "
        f"Accuracy: on the test split, with its 95% Wilson interval; val_accuracy: on the validation split, where "
        f"the best configuration is chosen. "
        f"Latency: median of `rounds` timed rounds after warm-up, real snippets. Each technique's rows are "
        f"timed interleaved with the fp32 baseline in one group (round by round); speedup_b32 is the baseline's "
        f"median over the row's in that group, speedup_b32_range the min-max of the per-round ratios; "
        f"predicted_speedup_b32 is the roofline's (notebook 00c) from this machine's roof: "
        f"{roof.triad_gbs:.0f} GB/s, {', '.join(f'{d} {g:.0f}' for d, g in roof.peaks.items())} GMAC/s.\n\n")
    current = "the baseline's rows"
    try:
        report.write()
        for name, mod in tqdm(mods, desc="techniques"):
            current = name
            rows, skipped = run_technique(mod, base, tok, reference, limit)
            report.rows.extend(rows)
            report.skipped.extend(dict(s, technique=name) for s in skipped)
            report.done.append(name)
            report.write()
        df = report.write(figures=True)
    except BaseException as err:  # Ctrl-C too: what was measured stays, marked incomplete, then the error goes on
        why = "interrupted (Ctrl-C)" if isinstance(err, KeyboardInterrupt) else f"{type(err).__name__}: {err}"
        try:
            report.write(error=f"stopped in {current}: {why}")
        finally:
            report.tidy()
        print(f"\nthe tour stopped in {current} ({why}); what it measured is in {out_dir}/summary.md, marked "
              "incomplete")
        raise
    print(report.header.replace("# labkit tour\n\n", "").strip())
    print(df[COLUMNS].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print("\n" + describe_best(best_configuration(df)).replace("**", ""))
    for s in report.skipped:
        print(f"not run: {s['row']} ({s['technique']}): {s['reason']}")
    print(f"\nwrote {out_dir}/{', '.join(f for f in FILES if f in report.files)} in "
          f"{time.perf_counter() - start:.0f} s")
    return df
