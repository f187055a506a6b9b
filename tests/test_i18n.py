"""The Chinese edition (issue 19): every English markdown cell translated and current, no orphan, the committed
notebooks_zh/ what the generator makes with the English code cells; labels follow LABKIT_LANG. No notebook runs."""

import json
import shutil

import ipywidgets as W
import pytest

from labkit.course import glossary, i18n
from labkit.lab import plots, widgets

ENGLISH = i18n.english_notebooks()
IDS = [p.stem.split("_")[0] for p in ENGLISH]


@pytest.mark.parametrize("english", ENGLISH, ids=IDS)
def test_every_markdown_cell_has_a_current_translation_and_no_orphan(english):
    problems = i18n.translation_problems(english)
    assert problems == [], "\n".join(problems)


def test_no_translation_file_or_chinese_notebook_without_its_english_notebook():
    names = {p.stem for p in ENGLISH}
    assert {p.stem for p in i18n.TRANSLATIONS_DIR.glob("*.json")} - {glossary.GLOSSARY.stem} <= names
    assert {p.stem for p in i18n.ZH_DIR.glob("*.ipynb")} <= names


@pytest.mark.parametrize("english", ENGLISH, ids=IDS)
def test_committed_chinese_notebook_equals_what_the_generator_makes(english):
    if i18n.translation_problems(english):
        pytest.fail(f"{english.name}: its translation is incomplete (see the test above)")
    committed = i18n.ZH_DIR / english.name
    assert committed.is_file(), f"{committed} is missing: run `python -m labkit.course.i18n build`"
    assert committed.read_text(encoding="utf-8") == i18n._render(english, i18n.TRANSLATIONS_DIR), \
        "run `python -m labkit.course.i18n build` and commit notebooks_zh/"


@pytest.mark.parametrize("english", ENGLISH, ids=IDS)
def test_chinese_code_cells_are_the_english_ones_plus_the_language_cell(english):
    zh = i18n.ZH_DIR / english.name
    if not zh.is_file():
        pytest.fail(f"{zh} is missing: run `python -m labkit.course.i18n build`")
    cells = json.loads(zh.read_text(encoding="utf-8"))["cells"]
    assert cells[0]["id"] == i18n.LANG_CELL_ID and "".join(cells[0]["source"]) == i18n.LANG_CELL_SOURCE
    assert [c["id"] for c in cells if c["id"] == i18n.LANG_CELL_ID] == [i18n.LANG_CELL_ID]  # exactly one
    assert i18n._code_cells(zh) == i18n._code_cells(english)
    assert i18n.code_differences() == []


def _tiny_edition(tmp_path):
    """A two-cell English notebook, its translation and its built Chinese edition, in tmp_path."""
    en, tr, zh = tmp_path / "notebooks", tmp_path / "i18n", tmp_path / "zh"
    en.mkdir()
    tr.mkdir()
    nb = {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
        {"cell_type": "markdown", "id": "intro", "metadata": {}, "source": ["# Title\n", "Some text."]},
        {"cell_type": "code", "id": "c1", "metadata": {}, "execution_count": None, "outputs": [],
         "source": ["x = 1"]}]}
    (en / "00_x.ipynb").write_text(json.dumps(nb))
    entry = {"en": i18n.digest("# Title\nSome text."), "zh": "# 标题\n一些文字。"}
    (tr / "00_x.json").write_text(json.dumps({"intro": entry}, ensure_ascii=False))
    i18n.build(en, tr, zh)
    return en, tr, zh, nb


def test_build_and_check_agree_on_a_complete_translation(tmp_path):
    en, tr, zh, _ = _tiny_edition(tmp_path)
    assert i18n.check(en, tr, zh, exercises_dir=None) == []
    cells = json.loads((zh / "00_x.ipynb").read_text(encoding="utf-8"))["cells"]
    assert [c["id"] for c in cells] == [i18n.LANG_CELL_ID, "intro", "c1"]
    assert "".join(cells[1]["source"]) == "# 标题\n一些文字。" and "".join(cells[2]["source"]) == "x = 1"


def test_a_changed_english_cell_is_named_by_the_check(tmp_path):
    en, tr, zh, nb = _tiny_edition(tmp_path)
    nb["cells"][0]["source"] = ["# Title\n", "Some text, edited."]
    (en / "00_x.ipynb").write_text(json.dumps(nb))
    problems = i18n.check(en, tr, zh, exercises_dir=None)
    assert any("English cell intro in" in p and "00_x.ipynb changed since it was translated" in p for p in problems)
    with pytest.raises(ValueError, match="English cell intro in .*changed since it was translated"):
        i18n.build(en, tr, zh)


def test_missing_orphaned_and_hand_edited_are_each_named(tmp_path):
    en, tr, zh, nb = _tiny_edition(tmp_path)
    nb["cells"].append({"cell_type": "markdown", "id": "new", "metadata": {}, "source": ["More."]})
    (en / "00_x.ipynb").write_text(json.dumps(nb))
    found = json.loads((tr / "00_x.json").read_text())
    found["gone"] = {"en": "0" * 16, "zh": "旧的"}
    (tr / "00_x.json").write_text(json.dumps(found, ensure_ascii=False))
    problems = "\n".join(i18n.check(en, tr, zh, exercises_dir=None))
    assert "English cell new in" in problems and "has no translation" in problems
    assert "cell gone is not a markdown cell" in problems
    with pytest.raises(ValueError, match="English cell new in"):
        i18n.build(en, tr, zh)  # refuses, naming the cell; --complete-only leaves the notebook out instead
    assert i18n.build(en, tr, zh, complete_only=True)[0] == []
    shutil.copy(en / "00_x.ipynb", zh / "00_x.ipynb")  # a Chinese notebook edited by hand: code or text differs
    del found["gone"], nb["cells"][-1]
    (tr / "00_x.json").write_text(json.dumps(found, ensure_ascii=False))
    (en / "00_x.ipynb").write_text(json.dumps(nb))
    assert any("differs from what the generator makes" in p for p in i18n.check(en, tr, zh, exercises_dir=None))


def test_labels_follow_labkit_lang_read_at_call_time(monkeypatch):
    monkeypatch.delenv("LABKIT_LANG", raising=False)
    assert i18n.t("bits") == "bits"
    monkeypatch.setenv("LABKIT_LANG", "zh")
    assert i18n.t("bits") == "比特宽度" and i18n.t("no such label") == "no such label"
    assert i18n.t("{name} (simulated)", name="int8") == "int8（模拟）"
    assert i18n.t("bits", lang="en") == "bits"


def test_every_template_has_the_fields_of_its_english():
    import string

    def fields(s):
        return {f for _, f, _, _ in string.Formatter().parse(s) if f}

    assert all(fields(en) == fields(zh) for en, zh in i18n.STRINGS.items())


def test_live_panel_shows_chinese_labels_and_passes_english_values(monkeypatch):
    monkeypatch.setenv("LABKIT_LANG", "zh")
    seen = []
    controls = {"bits": W.IntSlider(value=8, min=1, max=8, description="bits"),
                "scheme": W.ToggleButtons(options=("asymmetric", "symmetric"), value="symmetric")}
    widgets.live(lambda bits, scheme: seen.append((bits, scheme)), controls)
    assert controls["bits"].description == "比特宽度"
    assert controls["scheme"].options == (("非对称", "asymmetric"), ("对称", "symmetric"))
    assert controls["scheme"].value == "symmetric" and seen == [(8, "symmetric")]


def test_plots_use_chinese_only_with_a_cjk_font(monkeypatch):
    import matplotlib.pyplot as plt

    monkeypatch.setenv("LABKIT_LANG", "zh")
    with plt.rc_context():  # plots.chinese() puts the font first in rcParams: restored afterwards
        monkeypatch.setattr(plots, "cjk_font", lambda: None)
        assert plots.tr("Pareto front") == "Pareto front"  # no font: English, never empty boxes
        monkeypatch.setattr(plots, "cjk_font", lambda: "Noto Sans CJK SC")
        assert plots.tr("Pareto front") == "帕累托前沿"
        assert plt.rcParams["font.sans-serif"][0] == "Noto Sans CJK SC"
        monkeypatch.setenv("LABKIT_LANG", "en")
        assert plots.tr("Pareto front") == "Pareto front"


# --- the glossary (issue 38): one chosen term per English term, no variant in any Chinese text ----------------

def test_no_variant_term_in_any_chinese_text():
    """Notebook cells, exercise texts, labels, README.zh.md and the Chinese docs use the glossary's terms."""
    problems = glossary.problems()
    assert problems == [], "\n".join(problems)


def test_readme_zh_glossary_table_is_the_glossary_file():
    assert glossary.readme_problems() == []


def test_glossary_file_is_consistent():
    terms = glossary.load()["terms"]
    assert len({t["en"] for t in terms}) == len(terms)
    for term in terms:
        assert term["zh"].strip() and term["note"].strip() and term["notebooks"], term["en"]
        variants = term.get("variants", {})
        for word in term.get("allow", []):  # an allowed word exists to let a variant pass
            assert any(v in word for v in variants), (term["en"], word)
        assert glossary.variants_in(term["zh"], {"terms": [term]}) == [], term["en"]  # the chosen term is no variant
        for variant, write in variants.items():
            assert glossary.variants_in(write, {"terms": [term]}) == [], (term["en"], variant)


def test_variants_are_matched_as_terms_not_as_characters():
    g = glossary.load()
    assert glossary.variants_in("8 位网格", g) == [("位", "比特")]
    assert glossary.variants_in("位宽为 4", g) == [("位宽", "比特宽度")]  # named once, not also as 位
    assert glossary.variants_in("位置、单位、中位数、符号位、位掩码和 8 比特", g) == []
    assert glossary.variants_in("把词片换成子词，用了笔记本", g) == [("词片", "子词"), ("笔记本", "notebook")]
    assert glossary.variants_in("CSR 编码器和 int8 码值", g) == []
    assert glossary.variants_in("int8 编码", g) == [("编码", "码值")]
    assert glossary.variants_in("128 个 token 下", g) == [("token", "词元")]  # an English variant, a whole word
    assert glossary.variants_in("词元（token）、`n_tokens`、`token` 和 $token$、tokenizer", g) == []


def test_a_jupyter_kernel_is_written_jupyter_kernel():
    g = glossary.load()
    assert glossary.jupyter_kernel_problems("int8 矩阵乘法内核", "the int8 kernel", g) == []
    assert glossary.jupyter_kernel_problems("让所有 Jupyter 内核共用一份", None, g) == []
    assert glossary.jupyter_kernel_problems("让所有内核共用一份", None, g) == ["所有内核"]
    assert glossary.jupyter_kernel_problems("然后重启内核。", "Then restart the kernel.", g)
    assert glossary.jupyter_kernel_problems("然后重启 Jupyter 内核。", "Then restart the kernel.", g) == []


def test_a_variant_is_named_with_its_file_key_and_term(tmp_path):
    (tmp_path / "i18n" / "zh" / "exercises").mkdir(parents=True)
    (tmp_path / "docs").mkdir()
    (tmp_path / "i18n" / "zh" / "exercises" / "02.json").write_text(json.dumps(
        {"02.ex|question": {"en": "0" * 16, "zh": "写出 4 位网格的缩放因子"}}, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "i18n" / "zh" / "09_x.json").write_text(json.dumps(
        {"intro": {"en": "0" * 16, "zh": "本笔记本讲剪枝"}}, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "docs" / "teaching.zh.md").write_text("# 备课\n\n每个学员的内核都读同一份缓存。\n", encoding="utf-8")
    (tmp_path / "docs" / "install.md").write_text("# Install\n\nThe 8-bit kernels.\n", encoding="utf-8")
    g = dict(glossary.load(), known_exceptions={})
    found = [p for p in glossary.problems(g, root=tmp_path) if not p.startswith(glossary.LABELS)]
    assert any(p.startswith("i18n/zh/exercises/02.json [02.ex|question]: \"位\"") and "比特" in p for p in found)
    assert any(p.startswith("i18n/zh/09_x.json [intro]: \"笔记本\"") for p in found)
    assert any(p.startswith("docs/teaching.zh.md [line 3]: a Jupyter kernel") for p in found)
    assert len(found) == 3, found
    stale = dict(g, known_exceptions={"entries": [{"file": "i18n/zh/09_x.json", "key": "gone", "variant": "位"}]})
    assert any("is fixed: remove it" in p for p in glossary.problems(stale, root=tmp_path))
