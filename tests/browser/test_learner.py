"""The learner edition as a learner meets it: "Run all" with nothing answered, then a wrong answer and its hint."""

from __future__ import annotations

import pytest
from labdriver import NB, TIMEOUT_S, open_notebook, run_all
from playwright.sync_api import expect

NOTEBOOK = "00_baseline_and_myths.ipynb"  # the quickest notebook; its exercises need no trained model of their own
KEY = "00.size_ceiling"


def _cell_of(page, text: str):
    """The code cell whose source contains `text`."""
    return page.locator(f"{NB} .jp-CodeCell", has=page.locator(".jp-InputArea", has_text=text)).first


def test_run_all_unanswered_then_a_wrong_answer_gets_its_hint(page, lab_url, lab_root, shots):
    if not (lab_root / NOTEBOOK).exists():
        pytest.skip(f"{NOTEBOOK} is not in this checkout")
    try:
        open_notebook(page, lab_url, NOTEBOOK)
        run_all(page)  # fails on any error output: nothing may raise with every exercise unanswered
        cell = _cell_of(page, f'checks.check("{KEY}"')
        cell.evaluate("e => e.scrollIntoView({block: 'center'})")
        # A locator, re-found at each poll: after run_all reloads a stalled page, the cells may still be running and
        # their output areas are rendered anew (a handle taken now would go stale).
        expect(cell.locator(".jp-OutputArea")).to_contain_text("not attempted yet", timeout=TIMEOUT_S * 1000)
        page.screenshot(path=shots / "learner-00-run-all-unanswered.png")
        # the learner answers a quarter, as if every part of the model shrank to 1 byte per number
        editor = cell.locator(".cm-content").first
        editor.click()
        page.keyboard.press("Control+a")
        page.keyboard.insert_text(f'answer_1 = 0.25\nchecks.check("{KEY}", answer_1)')
        page.keyboard.press("Shift+Enter")
        out = cell.locator(".jp-OutputArea")
        expect(out).to_contain_text("Hint:", timeout=TIMEOUT_S * 1000)
        text = out.inner_text()
        cell.evaluate("e => e.scrollIntoView({block: 'center'})")
        page.screenshot(path=shots / "learner-00-wrong-answer-hint.png")
    except Exception:
        page.screenshot(path=shots / "learner-00-failed.png", full_page=True)
        raise
    assert "❌" in text and "shrank 4 times" in text and "Traceback" not in text
