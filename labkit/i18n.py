"""The Chinese edition (`python -m labkit.i18n build` or `check`) and labkit's labels in the learner's language.

Labels: `t(text)` gives a user-visible English label (a widget's description, a choice, a plot's axis, a readout
template) in the language LABKIT_LANG names, read at each call: "zh" gives Chinese from the one table STRINGS,
anything else (or a text the table lacks) the English. A Chinese notebook's first cell sets LABKIT_LANG=zh.

Notebooks: `notebooks_zh/<stem>.ipynb` is made from the learner edition `notebooks/<stem>.ipynb` and the
translation file `i18n/zh/<stem>.json`, which holds, per markdown cell id, the Chinese text and a hash of the
English it was translated from ({"<id>": {"en": "<16 hex of sha256>", "zh": "..."}}). Markdown cells take the
Chinese text; code cells stay the English ones; one code cell (id LANG_CELL_ID) is put first to set LABKIT_LANG.
`check` names every English cell without a translation, changed since it was translated, every translation
whose cell is gone, and every Chinese notebook out of step with what `build` makes.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
ENGLISH_DIR, TRANSLATIONS_DIR, ZH_DIR = ROOT / "notebooks", ROOT / "i18n" / "zh", ROOT / "notebooks_zh"
LANG_CELL_ID = "labkit-zh-lang"
LANG_CELL_SOURCE = 'import os\nos.environ["LABKIT_LANG"] = "zh"  # 中文标签：控件与图表'

# Every label labkit shows that has a Chinese form, keyed by its English. Texts with {fields} are templates
# (t(text, field=...) fills them). A label missing here is shown in English: nothing breaks.
STRINGS: dict[str, str] = {
    # widget descriptions (set in the notebooks' code cells, shown through widgets.live)
    "bits": "位宽",
    "bits (sim.)": "位宽（模拟）",
    "precision": "精度",
    "batch": "批大小",
    "sparsity": "稀疏度",
    "atoms": "原子数",
    "keep ratio": "保留比例",
    "start layer": "起始层",
    "structured": "结构化",
    "quantization": "量化",
    # choices (the values stay English: only their labels change)
    "asymmetric": "非对称",
    "symmetric": "对称",
    "tensor": "逐张量",
    "channel": "逐通道",
    "group": "逐组",
    "layer": "逐层",
    "global": "全局",
    "magnitude": "幅值",
    "random": "随机",
    "none": "无",
    "simulated": "模拟",
    "real int8": "真实 int8",
    # widgets.live's message when a function refuses a setting
    "Not possible with these settings: {error}": "这组设置无法运行：{error}",
    # plots
    "test accuracy": "测试集准确率",
    "batch-32 latency (ms, median)": "批大小 32 的延迟（毫秒，中位数）",
    "serialized size (MB)": "序列化大小（MB）",
    "Pareto front": "帕累托前沿",
    "current": "当前",
    "accuracy": "准确率",
    "latency_b32_ms": "批大小 32 的延迟（毫秒）",
    "latency_b1_ms": "批大小 1 的延迟（毫秒）",
    "size_mb": "大小（MB）",
    "batch-32 latency, ms (grey: simulated, runs at float speed)":
        "批大小 32 的延迟，毫秒（灰色：模拟量化，以浮点速度运行）",
    "accuracy (quick validation subset)": "准确率（验证集快速子集）",
    "accuracy %": "准确率 %",
    "agreement %": "一致率 %",
    "latency ms": "延迟（毫秒）",
    "size MB": "大小（MB）",
    "{name} (simulated)": "{name}（模拟）",
    "sign": "符号位",
    "exponent": "指数位",
    "mantissa": "尾数位",
    "{bits} bits, max {max}, eps {eps}": "{bits} 位，最大值 {max}，eps {eps}",
    "bits (sign | exponent: the range | mantissa: the precision)": "位（符号 | 指数：范围 | 尾数：精度）",
    "accuracy on the quick subset": "快速子集上的准确率",
    "global magnitude, before and after recovery": "全局幅值剪枝：恢复训练前后",
    "accuracy drop (points, validation split)": "准确率下降（百分点，验证集）",
    "stage": "阶段",
    "before": "恢复前",
    "after": "恢复后",
    "kB": "kB",
    "ms (median), 32 x 30 tokens": "毫秒（中位数），32 × 30 个词元",
    "{rows}x{cols} at sparsity {sparsity}": "{rows}x{cols}，稀疏度 {sparsity}",
    "density (kept fraction)": "密度（保留比例）",
    "ms (median)": "毫秒（中位数）",
    "layer kB": "该层 kB",
    "accuracy, 95% interval (validation subset)": "准确率，95% 置信区间（验证集子集）",
    "dictionary codes (k atoms/row)": "字典编码（每行 k 个原子）",
    "magnitude pruning, same bytes": "幅值剪枝，字节数相同",
    "{kept} of {total} word pieces survive": "{total} 个词片中保留了 {kept} 个",
    "{score} score": "{score} 得分",
    "batch-32 latency (ms, median; each point timed on its own)": "批大小 32 的延迟（毫秒，中位数；每个点单独计时）",
    "accuracy, 95% interval (quick {split} subset)": "准确率，95% 置信区间（{split} 快速子集）",
    # the capstone's readout (strategies.readout); Chinese puts no space after a full stop
    "a real difference (p < 0.05)": "差异真实存在（p < 0.05）",
    "no difference shown on this subset (it reliably shows about {points} points or more)":
        "在这个子集上未显示出差异（它能可靠检测约 {points} 个百分点及以上的差异）",
    "{name}: accuracy {accuracy}; vs baseline {delta} points [{lo}, {hi}], p = {p}: {verdict}.":
        "{name}：准确率 {accuracy}；相对基线 {delta} 个百分点 [{lo}, {hi}]，p = {p}：{verdict}。",
    " (the float model the simulation runs)": "（模拟量化所运行的浮点模型）",
    " This CPU computes {precision} natively.": "这颗 CPU 原生支持 {precision} 计算。",
    " This CPU has no native {precision} instructions: torch converts to fp32 around each operation, so it can "
    "run slower than fp32 here.": "这颗 CPU 没有原生 {precision} 指令：torch 在每次运算前后与 fp32 互相转换，"
                                  "因此在这里可能比 fp32 更慢。",
    " Batch 32: {ms} ms{sim}, {speedup}x the baseline's speed {range} (min-max per round) over {rounds} rounds "
    "timed interleaved with it.": "批大小 32：{ms} 毫秒{sim}，速度为基线的 {speedup} 倍 {range}（每轮最小–最大），"
                                  "与基线交替计时 {rounds} 轮。",
}


def language() -> str:
    """The learner's language, read at each call (so a notebook can set it): "zh" or "en"."""
    return "zh" if os.environ.get("LABKIT_LANG", "").strip().lower().startswith("zh") else "en"


def t(text: str, lang: str | None = None, **fields) -> str:
    """`text` in `lang` (default: LABKIT_LANG's), English where STRINGS has no entry; `fields` fill a template."""
    out = STRINGS.get(text, text) if (lang or language()) == "zh" else text
    return out.format(**fields) if fields else out


# --- the Chinese edition of the notebooks ---------------------------------------------------------------

def digest(source: str) -> str:
    """The hash a translation records of the English cell it was made from (16 hex digits of sha256)."""
    return hashlib.sha256(source.encode()).hexdigest()[:16]


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
    markdown = {c.id: c.source for c in nb.cells if c.cell_type == "markdown"}
    problems = []
    for cid, source in markdown.items():
        entry = found.get(cid)
        if not isinstance(entry, dict) or not str(entry.get("zh", "")).strip():
            problems.append(f"English cell {cid} in {_rel(english)} has no translation in {_rel(file)}")
        elif entry.get("en") != digest(source):
            problems.append(f"English cell {cid} in {_rel(english)} changed since it was translated: update its "
                            f"\"zh\" and set its \"en\" to {digest(source)} in {_rel(file)}")
    problems += [f"{_rel(file)}: cell {cid} is not a markdown cell of {_rel(english)} any more: remove it"
                 for cid in found if cid not in markdown]
    return problems


def zh_edition(english: Path, translations_dir: Path = TRANSLATIONS_DIR) -> nbformat.NotebookNode:
    """The Chinese notebook made from `english`; a ValueError naming the cells when the translation is not complete."""
    problems = translation_problems(english, translations_dir)
    if problems:
        raise ValueError("cannot build the Chinese edition of " + english.name + ":\n  " + "\n  ".join(problems))
    nb = nbformat.read(english, as_version=4)
    found = load_translations(english.stem, translations_dir)
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = found[cell.id]["zh"]
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
                         + "\n(`python -m labkit.i18n build --complete-only` writes the complete ones)")
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
            problems.append(f"{_rel(target)} is missing: run `python -m labkit.i18n build`")
        elif target.read_text(encoding="utf-8") != _render(english, translations_dir):
            problems.append(f"{_rel(target)} differs from what the generator makes: run `python -m labkit.i18n build`")
    problems += [f"{_rel(p)} has no English notebook {_rel(english_dir / p.name)}: remove it"
                 for p in sorted(zh_dir.glob("*.ipynb")) if p.name not in names]
    problems += [f"{_rel(p)} translates no English notebook ({_rel(english_dir / (p.stem + '.ipynb'))} is missing)"
                 for p in sorted(translations_dir.glob("*.json")) if p.stem + ".ipynb" not in names]
    return problems


def check(english_dir: Path = ENGLISH_DIR, translations_dir: Path = TRANSLATIONS_DIR,
          zh_dir: Path = ZH_DIR) -> list[str]:
    """Every problem of the Chinese edition: translations missing or stale, orphans, notebooks out of step."""
    problems = [p for e in english_notebooks(english_dir) for p in translation_problems(e, translations_dir)]
    return problems + stale(english_dir, translations_dir, zh_dir) + code_differences(english_dir, zh_dir)


def coverage(english_dir: Path = ENGLISH_DIR, translations_dir: Path = TRANSLATIONS_DIR) -> dict[str, tuple[int, int]]:
    """Per English notebook: (markdown cells with a current translation, markdown cells)."""
    out = {}
    for english in english_notebooks(english_dir):
        nb = nbformat.read(english, as_version=4)
        found = load_translations(english.stem, translations_dir) or {}
        cells = [c for c in nb.cells if c.cell_type == "markdown"]
        done = sum(isinstance(found.get(c.id), dict) and found[c.id].get("en") == digest(c.source)
                   and str(found[c.id].get("zh", "")).strip() != "" for c in cells)
        out[english.stem] = (done, len(cells))
    return out


def main(argv: list[str] | None = None) -> int:
    """`build [--complete-only]` writes notebooks_zh/; `check` exits 1 naming each problem; `coverage` counts."""
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
    if args == ["check"]:
        problems = check()
        for problem in problems:
            print(problem)
        return 1 if problems else 0
    if args == ["coverage"]:
        for stem, (done, total) in coverage().items():
            print(f"{stem}: {done}/{total} markdown cells translated")
        return 0
    print("usage: python -m labkit.i18n build [--complete-only] | check | coverage", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
