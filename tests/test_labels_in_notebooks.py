"""Labels written in the notebooks' own code (plot titles, axes, legends, widget descriptions) go through the label
table: every one has a STRINGS entry, an f-string through its template, and a figure drawn in a Chinese notebook is
shown with them. No notebook runs: the code cells are parsed."""

from __future__ import annotations

import ast
import io
import string

import matplotlib
import nbformat
import pytest
from matplotlib.backend_bases import FigureCanvasBase

from labkit.course import i18n
from labkit.lab import labels, plots

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 (after the backend is chosen)

NOTEBOOKS = i18n.english_notebooks()  # the learner edition, 08 included
# Calls whose first argument is a label, and keywords that are labels wherever they are passed.
LABEL_CALLS = {"set_title", "set_xlabel", "set_ylabel", "suptitle", "title", "xlabel", "ylabel"}
LABEL_KEYWORDS = {"description", "label", "title", "xlabel", "ylabel"}


def template(node: ast.AST) -> tuple[str, bool] | None:
    """(text, is an f-string) of a string literal, an f-string's fields written `{}`; None for anything else."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value, False
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values), True
    return None


def labels_in_code(source: str) -> list[tuple[str, bool]]:
    """The labels a code cell writes as literals: the first argument of LABEL_CALLS, every entry given to `legend`,
    and the LABEL_KEYWORDS of any call. IPython lines (`%matplotlib`, `!pip`) are skipped."""
    tree = ast.parse("\n".join("" if ln.lstrip().startswith(("%", "!")) else ln for ln in source.split("\n")))
    found = []
    for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
        name = call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", None)
        given = [k.value for k in call.keywords if k.arg in LABEL_KEYWORDS]
        if name in LABEL_CALLS:
            given += call.args[:1]
        if name == "legend":
            given += [e for a in call.args for e in (a.elts if isinstance(a, (ast.List, ast.Tuple)) else [a])]
        found += [t for t in map(template, given) if t is not None]
    return found


def _shape(key: str) -> str:
    """A STRINGS key with its fields written `{}`, as `template` writes an f-string."""
    return "".join(lit + ("{}" if field is not None else "") for lit, field, *_ in string.Formatter().parse(key))


SHAPES = {_shape(key): key for key in labels.STRINGS}


def missing_labels(source: str) -> list[str]:
    """The labels of a code cell the table cannot show in Chinese: no entry, or an f-string whose entry a filled-in
    text does not find (its template too short to be recognised)."""
    missing = []
    for text, formatted in labels_in_code(source):
        key = SHAPES.get(text) if formatted else (text if text in labels.STRINGS else None)
        if key is None:
            missing.append(text)
        elif formatted and labels.STRINGS[key] != key:
            filled = key.format(**{f: "7" for _, f, *_ in string.Formatter().parse(key) if f})
            if labels.translated(filled, "zh") == filled:
                missing.append(text)
    return missing


def test_the_scanner_finds_literal_labels_and_their_templates():
    source = ('%matplotlib inline\nax.set_title("a title"); plt.xlabel(f"{n} things")\n'
              'ax.plot(x, y, label="mine"); ax.legend(["one", name])\nW.IntSlider(description="k")\n'
              'ax.set_ylabel(name); print("not a label")')
    assert labels_in_code(source) == [("a title", False), ("{} things", True), ("mine", False), ("one", False),
                                      ("k", False)]
    assert missing_labels('ax.set_xlabel("no such label"); ax.set_ylabel("batch size")') == ["no such label"]
    assert missing_labels('plt.plot(x, label=f"{t} thread(s)")') == []  # found through "{threads} thread(s)"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem.split("_")[0] for p in NOTEBOOKS])
def test_every_label_written_in_notebook_code_has_an_entry(notebook):
    nb = nbformat.read(notebook, as_version=4)
    missing = {cell.id: m for cell in nb.cells if cell.cell_type == "code" and (m := missing_labels(cell.source))}
    assert not missing, (f"{notebook.name}: labels without a STRINGS entry in labkit/lab/labels.py (an f-string's "
                         f"entry is its template, fields named: f\"{{n}} snippets\" -> \"{{n}} snippets\"): {missing}")


def test_a_filled_template_is_translated_and_a_short_one_is_not_guessed(monkeypatch):
    assert labels.translated("4 thread(s)", "zh") == "4 个线程"
    assert labels.translated("accuracy (200 validation snippets, 95% interval)", "zh").startswith("准确率（200 ")
    assert labels.translated("batch size", "zh") == "批大小"
    assert labels.translated("max value", "zh") == "max value"  # "{speedup}x {spread}" is too short to guess from
    assert labels.translated("4 thread(s)", "en") == "4 thread(s)"
    monkeypatch.delenv("LABKIT_LANG", raising=False)
    assert labels.translated("batch size") == "batch size"


def test_a_figure_drawn_by_notebook_code_is_shown_with_chinese_labels(monkeypatch):
    if plots.cjk_font() is None:
        pytest.skip("no CJK font here: figures stay English (never empty boxes)")
    monkeypatch.setattr(FigureCanvasBase, "print_figure", FigureCanvasBase.print_figure)  # put back afterwards
    monkeypatch.setenv("LABKIT_LANG", "zh")
    with plt.rc_context():
        plots.translate_figures()
        plots.translate_figures()  # twice is once
        fig, ax = plt.subplots()
        ax.plot([1, 2], [3, 4], label="4 thread(s)")
        ax.set_xlabel("batch size")
        ax.set_title("not in the table")
        ax.legend()
        fig.savefig(io.BytesIO(), format="png")  # what the inline backend does when a figure is shown
        assert (ax.get_xlabel(), ax.get_title()) == ("批大小", "not in the table")
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["4 个线程"]
        monkeypatch.setenv("LABKIT_LANG", "en")
        ax.set_xlabel("batch size")
        fig.savefig(io.BytesIO(), format="png")
        assert ax.get_xlabel() == "batch size"
        plt.close(fig)
