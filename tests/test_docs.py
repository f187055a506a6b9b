"""The Chinese docs keep up with the English ones: every English section heading has its Chinese counterpart, at
the same level and in the same order, and each page links to its counterpart.

A Chinese heading names the English heading it translates in a comment on the line above it:

    <!-- en: Two commands -->
    ## 两条命令

The comment sits off the heading line so that the Chinese heading's anchor (`#两条命令`) stays what GitHub makes of
the heading alone. A Chinese-only section (and any heading nested in it) is allowed where CHINESE_ONLY lists it.
A counterpart also keeps the English commands and table figures, and every relative link in either reaches its file
and heading; the teacher's guide gives the notebooks' own minutes and recorded memory."""

import json
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# English page -> its Chinese counterpart
PAIRS = {
    "README.md": "README.zh.md",
    "docs/install.md": "docs/zh/install.md",
    "docs/teaching.md": "docs/zh/teaching.md",
}
# Chinese page -> headings of sections the English page does not have
CHINESE_ONLY = {
    "README.zh.md": {"中文版", "中文课堂", "术语表"},
}

ANCHOR = re.compile(r"^<!--\s*en:\s*(.+?)\s*-->\s*$")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")


def headings(text):
    """(level, heading, the English heading named in the comment above it or None), fenced code skipped."""
    found, fenced, previous = [], False, ""
    for line in text.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced and (m := HEADING.match(line)):
            anchor = ANCHOR.match(previous)
            found.append((len(m.group(1)), m.group(2), anchor.group(1) if anchor else None))
        if line.strip():
            previous = line.strip()
    return found


def problems(english, chinese, chinese_only=frozenset()):
    """What a Chinese page lacks or gets wrong against its English page's headings; empty when they match."""
    wanted = [(level, text) for level, text, _ in headings(english)]
    found, out, inside = [], [], None
    for level, text, en in headings(chinese):
        if inside is not None and level > inside:
            continue  # nested in a Chinese-only section
        inside = None
        if en is not None:
            found.append((level, en))
        elif text in chinese_only:
            inside = level
        else:
            out.append(f"Chinese heading {'#' * level} {text} names no English heading: put "
                       f"<!-- en: ... --> on the line above it, or list it as Chinese-only in tests/test_docs.py")
    for level, en in found:
        if (level, en) not in wanted:
            out.append(f"<!-- en: {en} --> (level {level}) names no heading of the English page")
    missing = [w for w in wanted if w not in found]
    out += [f"no Chinese counterpart for {'#' * level} {text}" for level, text in missing]
    if not out and found != wanted:
        out.append(f"the Chinese headings are in another order: {[t for _, t in found]} against {[t for _, t in wanted]}")
    return out


@pytest.mark.parametrize("english", sorted(PAIRS))
def test_every_english_heading_has_its_chinese_counterpart_in_order(english):
    chinese = PAIRS[english]
    assert (ROOT / chinese).is_file(), f"{english} has no Chinese counterpart {chinese}"
    found = problems((ROOT / english).read_text(encoding="utf-8"), (ROOT / chinese).read_text(encoding="utf-8"),
                     CHINESE_ONLY.get(chinese, frozenset()))
    assert not found, f"{chinese} against {english}:\n" + "\n".join(found)


@pytest.mark.parametrize("english", sorted(PAIRS))
def test_each_page_links_to_its_counterpart(english):
    chinese = PAIRS[english]
    en_text, zh_text = ((ROOT / p).read_text(encoding="utf-8") for p in (english, chinese))
    to_zh = os.path.relpath(chinese, os.path.dirname(english) or ".")
    assert f"]({to_zh})" in en_text, f"{english} does not link to {to_zh}"
    back = os.path.relpath(english, os.path.dirname(chinese) or ".")
    assert f"]({back})" in zh_text, f"{chinese} does not link to {back}"


def test_a_new_english_section_without_its_chinese_counterpart_is_named():
    english = "# Title\n\n## One\n\n```bash\n# not a heading\n```\n\n### Deeper\n\n## Two\n"
    chinese = "<!-- en: Title -->\n# 标题\n\n<!-- en: One -->\n## 一\n\n<!-- en: Deeper -->\n### 更深\n\n## 只有中文\n\n### 其中\n"
    assert problems(english, chinese, {"只有中文"}) == ["no Chinese counterpart for ## Two"]
    assert problems(english, chinese + "\n<!-- en: Two -->\n## 二\n", {"只有中文"}) == []
    assert any("names no English heading" in p for p in problems(english, chinese))
    swapped = chinese.replace("<!-- en: One -->\n## 一", "<!-- en: Two -->\n## 二") + "\n<!-- en: One -->\n## 一\n"
    assert "another order" in problems(english, swapped, {"只有中文"})[0]


def _family_table(path):
    """The family x technique table's cells, less its first column, from the line naming the families on."""
    lines = (ROOT / path).read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if "| BERT | RoBERTa |" in line)
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append([cell.strip() for cell in line.strip("|").split("|")][1:])
    return table


def test_the_chinese_family_table_says_what_the_english_one_says():
    """README.md's table is the matrix's own (tests/test_families.py); README.zh.md's has the same cells."""
    words = {"可用": "works", "拒绝": "refuses"}
    chinese = [[words.get(cell, cell) for cell in row] for row in _family_table("README.zh.md")]
    assert chinese == _family_table("README.md"), "README.zh.md's family table differs from README.md's"


def _shared(text, chinese_only=frozenset()):
    """The page less its Chinese-only sections."""
    kept, inside, fenced = [], None, False
    for line in text.splitlines():
        fenced ^= line.lstrip().startswith(("```", "~~~"))
        m = None if fenced else HEADING.match(line)
        if m and (inside is None or len(m.group(1)) <= inside):
            inside = len(m.group(1)) if m.group(2) in chinese_only else None
        if inside is None:
            kept.append(line)
    return "\n".join(kept)


def _blocks(text):
    """The fenced code blocks less their comments (a translation may translate them), and the figures of the tables:
    each cell that starts with a number."""
    code = [re.sub(r"[ \t]*#.*$", "", block, flags=re.M) for block in re.findall(r"^```.*?^```", text, flags=re.M | re.S)]
    cells = [cell.strip() for line in text.splitlines() if line.startswith("|") for cell in line.strip("|").split("|")]
    return code, [re.match(r"[\d.,]+( [A-Za-z]+)?", cell).group() for cell in cells if cell[:1].isdigit()]


@pytest.mark.parametrize("english", sorted(PAIRS))
def test_commands_and_table_figures_are_the_english_ones(english):
    """A counterpart keeps the English page's commands and every figure of its tables."""
    en_code, en_numbers = _blocks((ROOT / english).read_text(encoding="utf-8"))
    chinese = PAIRS[english]
    zh_code, zh_numbers = _blocks(_shared((ROOT / chinese).read_text(encoding="utf-8"), CHINESE_ONLY.get(chinese, ())))
    assert zh_code == en_code, f"{chinese}'s code blocks differ from {english}'s"
    assert zh_numbers == en_numbers, f"{chinese}'s tables hold other figures than {english}'s"


def test_teaching_guide_gives_each_notebooks_own_time_and_memory():
    """docs/teaching.md's minutes are each notebook's first cell's; its memory table is notebook_memory.json's."""
    text = (ROOT / "docs" / "teaching.md").read_text(encoding="utf-8")
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")[1:]]
            for line in text.splitlines() if line.startswith("|")}
    for prefix, minutes in zip(rows["notebook"], rows["minutes"]):
        (path,) = (ROOT / "solutions").glob(f"{prefix}_*.ipynb")
        first = next(c for c in json.loads(path.read_text(encoding="utf-8"))["cells"] if c["cell_type"] == "markdown")
        said = re.search(r"about (\d+) minutes", "".join(first["source"]))
        assert said and said.group(1) == minutes, f"docs/teaching.md gives {prefix} {minutes} minutes, its first cell " \
            f"{said.group(1) if said else 'none'}"
    recorded = json.loads((ROOT / "labkit" / "notebook_memory.json").read_text(encoding="utf-8"))
    for name, gib in recorded["fast"].items():
        assert rows[name][0] == f"{gib / 2**30:.2f} GiB", f"docs/teaching.md: {name}'s fast-mode memory"
        assert rows[name][1].startswith(f"{recorded['full'][name] / 2**30:.2f} GiB"), f"docs/teaching.md: {name}, full"


def _slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", re.sub(r"`", "", heading).lower()).replace(" ", "-")


@pytest.mark.parametrize("page", sorted(set(PAIRS) | set(PAIRS.values())))
def test_every_relative_link_reaches_its_file_and_heading(page):
    text = (ROOT / page).read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (ROOT / page).parent / path if path else ROOT / page
        assert file.exists(), f"{page} links to {target}: no such file"
        if anchor and file.suffix == ".md":
            slugs = {_slug(text) for _, text, _ in headings(file.read_text(encoding="utf-8"))}
            assert anchor in slugs, f"{page} links to {target}: {file.name} has no such heading"
