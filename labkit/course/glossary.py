"""The Chinese glossary, enforced (`python -m labkit.course.glossary readme` or `check`).

`i18n/zh/glossary.json` holds, per English term, the chosen Chinese term, the variants a translation must not use
and the words that contain a variant yet are right (位 is refused as "bit", 位置 and 单位 are not). `problems()`
reads every Chinese text of the kit (the notebooks' translations, the exercises' translations, the labels, README.zh.md
and the Chinese docs) and names file, key and the term to use for each variant it finds. 内核 is a compute kernel;
a Jupyter kernel is written "Jupyter 内核", checked by phrases and by the English cell the text translates.
README.zh.md's 术语表 table is written from the file (`readme`), and a test keeps the two equal.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import nbformat

from labkit.lab.labels import STRINGS

ROOT = Path(__file__).resolve().parents[2]  # the repository: labkit/course/ is two levels down
ZH = ROOT / "i18n" / "zh"
GLOSSARY = ZH / "glossary.json"
README_ZH = ROOT / "README.zh.md"
LABELS = "labkit/lab/labels.py"
TABLE_HEADING, TABLE_HEAD = "## 术语表", "| English | 中文 | 不用的译法 | 在本套件中 |"
CJK = re.compile(r"[\u4e00-\u9fff]")


def load(path: Path = GLOSSARY) -> dict:
    """The glossary: {"terms": [{"en", "zh", "variants", "allow", "notebooks", "note"}], "jupyter_kernel", ...}."""
    return json.loads(path.read_text(encoding="utf-8"))


def variants_in(text: str, glossary: dict) -> list[tuple[str, str]]:
    """(variant, the term to write) for each refused variant in `text`, once per variant; allowed words are skipped.

    Code (`...`) and formulas ($...$) are not prose; an English variant (token) is a whole word, and passes as the
    gloss of a Chinese term (词元（token）)."""
    prose = re.sub(r"`[^`]*`|\$[^$]*\$", " ", text)
    glossed = re.sub(r"（[^（）]*）", " ", prose)
    found = []
    for term in glossary["terms"]:
        allow, rest = term.get("allow", []), prose
        for variant in sorted(term.get("variants", []), key=len, reverse=True):  # 位宽 named once, not as 位 too
            english = variant.isascii()
            pattern = rf"(?<![A-Za-z_]){re.escape(variant)}(?![A-Za-z_])" if english else re.escape(variant)
            where = glossed if english else rest
            for m in re.finditer(pattern, where):
                if not any(_covers(where, m.start(), variant, word) for word in allow):
                    found.append((variant, term["variants"][variant]))
                    break
            rest = rest.replace(variant, "\0" * len(variant))
    return found


def _covers(text: str, at: int, variant: str, word: str) -> bool:
    """Whether the `variant` found at `at` is part of an occurrence of the allowed `word` in `text`."""
    offset = word.find(variant)
    while offset != -1:
        if at - offset >= 0 and text.startswith(word, at - offset):
            return True
        offset = word.find(variant, offset + 1)
    return False


def jupyter_kernel_problems(text: str, english: str | None, glossary: dict) -> list[str]:
    """What says 内核 for a Jupyter kernel without "Jupyter " before it, by phrase or by the English it translates."""
    rule = glossary["jupyter_kernel"]
    term, prefix = rule["term"], rule["prefix"]
    bare = text.replace(prefix + term, "")  # the right spelling, out of the way
    said = [p for p in rule["phrases"] if p in bare]
    if english is not None and re.search(rule["english"], english) and term in bare and prefix + term not in text:
        said.append(f"the English says {re.search(rule['english'], english).group(0)!r}")
    return said


def _notebook_english(root: Path, stem: str) -> dict[str, str]:
    path = root / "notebooks" / f"{stem}.ipynb"
    if not path.is_file():
        return {}
    return {c.id: c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "markdown"}


def texts(root: Path = ROOT) -> list[tuple[str, str, str, str | None]]:
    """(file, key, Chinese text, English text or None) for every Chinese text of the kit."""
    out = []
    zh = root / "i18n" / "zh"
    for path in sorted(zh.glob("*.json")):
        if path.name == GLOSSARY.name:
            continue
        english = _notebook_english(root, path.stem)
        for key, entry in json.loads(path.read_text(encoding="utf-8")).items():
            out.append((_rel(path, root), key, str(entry.get("zh", "")), english.get(key)))
    for path in sorted((zh / "exercises").glob("*.json")):
        for key, entry in json.loads(path.read_text(encoding="utf-8")).items():
            out.append((_rel(path, root), key, str(entry.get("zh", "")), None))
    out += [(LABELS, en, zh_text, en) for en, zh_text in STRINGS.items()]
    docs = [root / "README.zh.md", *sorted((root / "docs").rglob("*.md"))]
    for path in docs:
        if not path.is_file():
            continue
        lines = path.read_text(encoding="utf-8").splitlines()
        if path.name != "README.zh.md" and not any(CJK.search(line) for line in lines):
            continue  # an English page
        skip = range(*_table_span(lines)) if path.name == "README.zh.md" else range(0)  # its table names the variants
        out += [(_rel(path, root), f"line {n + 1}", line, None) for n, line in enumerate(lines)
                if CJK.search(line) and n not in skip]
    return out


def _rel(path: Path, root: Path) -> str:
    return str(path.relative_to(root))


def problems(glossary: dict | None = None, root: Path = ROOT) -> list[str]:
    """Each variant term in a translation, naming file, key and the term to use (known exceptions left out)."""
    glossary = load() if glossary is None else glossary
    known = {(e["file"], e["key"], e["variant"]) for e in glossary.get("known_exceptions", {}).get("entries", [])}
    out, used = [], set()
    for file, key, text, english in texts(root):
        found = [(v, f"\"{v}\" is a variant: write \"{chosen}\"") for v, chosen in variants_in(text, glossary)]
        found += [("内核", f"a Jupyter kernel ({said}) is written \"Jupyter 内核\", not \"内核\"")
                  for said in jupyter_kernel_problems(text, english, glossary)]
        for variant, message in found:
            if (file, key, variant) in known:
                used.add((file, key, variant))
            else:
                out.append(f"{file} [{key}]: {message} (i18n/zh/glossary.json)")
    out += [f"i18n/zh/glossary.json: the known exception {file} [{key}] {variant!r} is fixed: remove it"
            for file, key, variant in sorted(known - used)]
    return out


def readme_table(glossary: dict | None = None) -> list[str]:
    """README.zh.md's 术语表 table, one line per term."""
    glossary = load() if glossary is None else glossary
    lines = [TABLE_HEAD, "| --- | --- | --- | --- |"]
    for term in glossary["terms"]:
        where = "（" + "、".join(term["notebooks"]) + "）" if term.get("notebooks") else ""
        lines.append(f"| {term['en']} | {term['zh']} | {'、'.join(term.get('variants', []))} | {term['note']}{where} |")
    return lines


def _table_span(lines: list[str]) -> tuple[int, int]:
    """The [start, end) lines of README.zh.md's glossary table (the first table after its heading)."""
    start = lines.index(TABLE_HEADING)
    while not lines[start].startswith("|"):
        start += 1
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return start, end


def readme_problems(path: Path = README_ZH) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    start, end = _table_span(lines)
    if lines[start:end] != readme_table():
        return [f"{path.name}'s 术语表 table is not i18n/zh/glossary.json's: run `python -m labkit.course.glossary readme`"]
    return []


def write_readme(path: Path = README_ZH) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    start, end = _table_span(lines)
    path.write_text("\n".join(lines[:start] + readme_table() + lines[end:]) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    """`readme` writes README.zh.md's 术语表 table; `check` exits 1 naming each variant term."""
    args = sys.argv[1:] if argv is None else argv
    if args == ["readme"]:
        write_readme()
        print(f"wrote the 术语表 table of {README_ZH.name}")
        return 0
    if args == ["check"]:
        found = problems() + readme_problems()
        for problem in found:
            print(problem)
        return 1 if found else 0
    print("usage: python -m labkit.course.glossary readme | check", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
