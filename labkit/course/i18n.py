"""The Chinese edition (`python -m labkit.course.i18n build` or `check`) and labkit's labels in the learner's language.

The labels widgets, plots and readouts show in Chinese live in labkit.lab.labels (STRINGS, t), re-exported here.
The exercises' texts live in `i18n/zh/exercises/<prefix>.json` (labkit.course.translations): `check` names those
missing, stale or gone too, and `exercises` writes empty entries for a translator to fill.

Notebooks: `notebooks_zh/<stem>.ipynb` is made from the learner edition `notebooks/<stem>.ipynb` and the
translation file `i18n/zh/<stem>.json`, which holds, per markdown cell id, the Chinese text and a hash of the
English it was translated from ({"<id>": {"en": "<16 hex of sha256>", "zh": "..."}}). Markdown cells take the
Chinese text; code cells stay the English ones; one code cell (id LANG_CELL_ID) is put first to set LABKIT_LANG.
`check` names every English cell without a translation, changed since it was translated, every translation
whose cell is gone, every Chinese notebook out of step with what `build` makes, and (labkit.course.glossary) every
variant term in a Chinese text.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat

from labkit.course import glossary
from labkit.course.build import ANSWER_STUB
from labkit.course.translations import EXERCISES_DIR, compare, digest, write_skeletons
from labkit.course.translations import problems as exercise_problems
from labkit.lab.labels import STRINGS, language, t  # noqa: F401 (the labels of this edition, one import away)

ROOT = Path(__file__).resolve().parents[2]  # the repository: labkit/course/ is two levels down
ENGLISH_DIR, TRANSLATIONS_DIR, ZH_DIR = ROOT / "notebooks", ROOT / "i18n" / "zh", ROOT / "notebooks_zh"
LANG_CELL_ID = "labkit-zh-lang"
LANG_CELL_SOURCE = 'import os\nos.environ["LABKIT_LANG"] = "zh"  # 中文标签：控件与图表'
# A written answer's empty cell needs no translation file entry: it is always this.
ANSWER_STUB_ZH = "在这里写下你的回答（YOUR ANSWER HERE）"

# --- the Chinese edition of the notebooks ---------------------------------------------------------------

def _rel(path: Path) -> str:
    """`path` relative to the repository where it lies inside it (messages name what a person edits)."""
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def english_notebooks(english_dir: Path = ENGLISH_DIR) -> list[Path]:
    """The learner notebooks the Chinese edition is made from."""
    return sorted(english_dir.glob("*.ipynb"))


def load_translations(stem: str, translations_dir: Path = TRANSLATIONS_DIR) -> dict | None:
    """The translation file of notebook `stem` ({cell id: {"en": hash, "zh": text}}), or None when it is missing."""
    path = translations_dir / f"{stem}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def translation_problems(english: Path, translations_dir: Path = TRANSLATIONS_DIR) -> list[str]:
    """What keeps one English notebook's translation from being complete and current (empty when it is)."""
    nb = nbformat.read(english, as_version=4)
    file = translations_dir / f"{english.stem}.json"
    found = load_translations(english.stem, translations_dir)
    if found is None:
        return [f"{_rel(english)} has no translation file {_rel(file)}"]
    markdown = {c.id: c.source for c in nb.cells if c.cell_type == "markdown" and c.source != ANSWER_STUB}
    missing, changed, orphans = compare(markdown, found)
    return ([f"English cell {cid} in {_rel(english)} has no translation in {_rel(file)}" for cid in missing]
            + [f"English cell {cid} in {_rel(english)} changed since it was translated: update its \"zh\" and set "
               f"its \"en\" to {new} in {_rel(file)}" for cid, new in changed]
            + [f"{_rel(file)}: cell {cid} is not a markdown cell of {_rel(english)} any more: remove it"
               for cid in orphans])


def zh_edition(english: Path, translations_dir: Path = TRANSLATIONS_DIR) -> nbformat.NotebookNode:
    """The Chinese notebook made from `english`; a ValueError naming the cells when the translation is not complete."""
    problems = translation_problems(english, translations_dir)
    if problems:
        raise ValueError("cannot build the Chinese edition of " + english.name + ":\n  " + "\n  ".join(problems))
    nb = nbformat.read(english, as_version=4)
    found = load_translations(english.stem, translations_dir)
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = ANSWER_STUB_ZH if cell.source == ANSWER_STUB else found[cell.id]["zh"]
        elif cell.cell_type == "code":  # stripped, even where an English notebook was saved with outputs
            cell.outputs, cell.execution_count = [], None
    nb.cells.insert(0, nbformat.v4.new_code_cell(LANG_CELL_SOURCE, id=LANG_CELL_ID))
    nb.metadata["labkit"] = {"language": "zh-CN", "english": f"notebooks/{english.name}"}
    return nb


def _render(english: Path, translations_dir: Path) -> str:
    return nbformat.writes(zh_edition(english, translations_dir)) + "\n"


def build(english_dir: Path = ENGLISH_DIR, translations_dir: Path = TRANSLATIONS_DIR, zh_dir: Path = ZH_DIR,
          complete_only: bool = False) -> tuple[list[Path], list[str]]:
    """Write the Chinese edition; returns (files written, problems of the notebooks left out).

    Without `complete_only`, any incomplete or stale translation is a ValueError and nothing is written; with
    it, only the notebooks whose translations are complete and current are written."""
    todo, problems = [], []
    for english in english_notebooks(english_dir):
        found = translation_problems(english, translations_dir)
        problems += found
        if not found:
            todo.append(english)
    if problems and not complete_only:
        raise ValueError("translations are missing or out of date; nothing was written:\n  " + "\n  ".join(problems)
                         + "\n(`python -m labkit.course.i18n build --complete-only` writes the complete ones)")
    zh_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for english in todo:
        target = zh_dir / english.name
        tmp = target.with_suffix(".tmp")
        tmp.write_text(_render(english, translations_dir), encoding="utf-8")
        tmp.replace(target)  # atomic: a half-written notebook never replaces a good one
        written.append(target)
    return written, problems


def _code_cells(path: Path) -> list[tuple[str, str]]:
    """(id, source) of every code cell of a notebook but the Chinese edition's language cell."""
    nb = nbformat.read(path, as_version=4)
    return [(c.id, c.source) for c in nb.cells if c.cell_type == "code" and c.id != LANG_CELL_ID]


def code_differences(english_dir: Path = ENGLISH_DIR, zh_dir: Path = ZH_DIR) -> list[str]:
    """Chinese notebooks whose code cells (but the language cell) are not the English ones, in order."""
    return [f"{_rel(zh)}: its code cells differ from {_rel(english_dir / zh.name)}'s (rebuild it)"
            for zh in sorted(zh_dir.glob("*.ipynb"))
            if (english_dir / zh.name).is_file() and _code_cells(zh) != _code_cells(english_dir / zh.name)]


def stale(english_dir: Path = ENGLISH_DIR, translations_dir: Path = TRANSLATIONS_DIR,
          zh_dir: Path = ZH_DIR) -> list[str]:
    """Chinese notebooks that differ from what `build` makes, are missing, or have no English notebook."""
    names = {p.name for p in english_notebooks(english_dir)}
    problems = []
    for english in english_notebooks(english_dir):
        if translation_problems(english, translations_dir):
            continue  # named by translation_problems; there is nothing to compare with
        target = zh_dir / english.name
        if not target.is_file():
            problems.append(f"{_rel(target)} is missing: run `python -m labkit.course.i18n build`")
        elif target.read_text(encoding="utf-8") != _render(english, translations_dir):
            problems.append(f"{_rel(target)} differs from what the generator makes: run `python -m labkit.course.i18n build`")
    problems += [f"{_rel(p)} has no English notebook {_rel(english_dir / p.name)}: remove it"
                 for p in sorted(zh_dir.glob("*.ipynb")) if p.name not in names]
    problems += [f"{_rel(p)} translates no English notebook ({_rel(english_dir / (p.stem + '.ipynb'))} is missing)"
                 for p in sorted(translations_dir.glob("*.json"))
                 if p.stem + ".ipynb" not in names and p.name != glossary.GLOSSARY.name]
    return problems


def check(english_dir: Path = ENGLISH_DIR, translations_dir: Path = TRANSLATIONS_DIR,
          zh_dir: Path = ZH_DIR, exercises_dir: Path | None = EXERCISES_DIR) -> list[str]:
    """Every problem of the Chinese edition: translations missing or stale, orphans, notebooks out of step, and
    the exercises' texts without a current translation in `exercises_dir` (None: the notebooks alone)."""
    problems = [p for e in english_notebooks(english_dir) for p in translation_problems(e, translations_dir)]
    problems += stale(english_dir, translations_dir, zh_dir) + code_differences(english_dir, zh_dir)
    return problems + (exercise_problems(exercises_dir) if exercises_dir is not None else [])


def coverage(english_dir: Path = ENGLISH_DIR, translations_dir: Path = TRANSLATIONS_DIR) -> dict[str, tuple[int, int]]:
    """Per English notebook: (markdown cells with a current translation, markdown cells)."""
    out = {}
    for english in english_notebooks(english_dir):
        nb = nbformat.read(english, as_version=4)
        found = load_translations(english.stem, translations_dir) or {}
        cells = [c for c in nb.cells if c.cell_type == "markdown" and c.source != ANSWER_STUB]
        done = sum(isinstance(found.get(c.id), dict) and found[c.id].get("en") == digest(c.source)
                   and str(found[c.id].get("zh", "")).strip() != "" for c in cells)
        out[english.stem] = (done, len(cells))
    return out


def main(argv: list[str] | None = None) -> int:
    """`build [--complete-only]` writes notebooks_zh/; `check` exits 1 naming each problem; `coverage` counts;
    `exercises [--prefix P]` adds empty entries for the exercise texts with no translation yet."""
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "build" and set(args[1:]) <= {"--complete-only"}:
        try:
            written, left_out = build(complete_only="--complete-only" in args)
        except ValueError as err:
            print(err, file=sys.stderr)
            return 1
        for path in written:
            print(f"wrote {_rel(path)}")
        for problem in left_out:
            print(f"left out: {problem}")
        return 0
    if args == ["check"]:  # and the glossary: no variant term in any Chinese text
        problems = check() + glossary.problems() + glossary.readme_problems()
        for problem in problems:
            print(problem)
        return 1 if problems else 0
    if args == ["coverage"]:
        for stem, (done, total) in coverage().items():
            print(f"{stem}: {done}/{total} markdown cells translated")
        return 0
    if args[:1] == ["exercises"] and (len(args) == 1 or (len(args) == 3 and args[1] == "--prefix")):
        try:
            written = write_skeletons(args[2] if len(args) == 3 else None)
        except ValueError as err:
            print(err, file=sys.stderr)
            return 1
        for path in written:
            print(f"wrote empty entries into {_rel(path)}: fill their \"zh\"")
        return 0
    print("usage: python -m labkit.course.i18n build [--complete-only] | check | coverage | "
          "exercises [--prefix P]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
