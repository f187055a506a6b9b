"""Real-browser tests: JupyterLab in system Chromium runs each slider notebook, a slider moves, the panel updates."""

from __future__ import annotations

from pathlib import Path

import pytest
from labdriver import (
    NB,
    menu,
    move,
    open_notebook,
    panel_cell,
    panel_output,
    prompt_number,
    readout,
    run_all,
    slider,
    wait_output,
    wait_prompt,
)

from labkit.lab.labels import t

# notebook (under the lab root), slider label, key that moves it one step from its initial value.
# Each notebook runs from the top through its panel (Run All Above + the cell): the rest (nbval covers it)
# would not fit the 5-minute budget of these tests on 2 cores.
# Two notebooks: a lesson's slider, in the Chinese edition (its labels in Chinese), and the capstone's panel; the
# other lessons' sliders are the same widget (widgets.live), each exercised by nbval through the function it calls.
CASES = [
    ("notebooks_zh/02_quantization.ipynb", t("bits", lang="zh"), "ArrowLeft"),
    ("07_capstone_dashboard.ipynb", "sparsity", "ArrowRight"),
]
RESTART = ("02_quantization.ipynb", "bits", "ArrowLeft")  # the English 02, so both editions meet a browser


def _tag(notebook: str) -> str:
    """A short name for screenshots and test ids: "zh-02", "07"."""
    return ("zh-" if notebook.startswith("notebooks_zh/") else "") + Path(notebook).name[:2]


def _chinese_rendered(page, shots, notebook: str) -> None:
    """The Chinese edition shows its Chinese text and a plot: screenshot the first figure with the text around it."""
    assert "量化" in page.locator(NB).first.inner_text(), "the Chinese markdown did not render"
    figure = page.locator(f"{NB} .jp-OutputArea-output img").first
    figure.evaluate("e => e.scrollIntoView({block: 'center'})")
    figure.wait_for(state="visible")
    assert figure.evaluate("e => e.naturalWidth") > 0, "the plot did not render"
    page.screenshot(path=shots / f"{_tag(notebook)}-text-and-plot.png")


@pytest.mark.parametrize("notebook, label, key", CASES, ids=[_tag(c[0]) for c in CASES])
def test_slider_updates_panel(page, lab_url, lab_root, shots, notebook, label, key):
    if not (lab_root / notebook).exists():
        pytest.skip(f"{notebook} is not in this checkout")
    through = panel_cell(lab_root / notebook)
    tag = _tag(notebook)
    try:
        open_notebook(page, lab_url, notebook)
        run_all(page, through)
        if notebook.startswith("notebooks_zh/"):
            _chinese_rendered(page, shots, notebook)
        box = slider(page, label)
        box.scroll_into_view_if_needed()
        out = panel_output(page, box)
        first = wait_output(page, out)
        value = readout(box)
        page.screenshot(path=shots / f"{tag}-before.png")
        seconds, after = move(page, box, out, key)
    except Exception:  # keep what the browser showed for whoever reads the failure
        page.screenshot(path=shots / f"{tag}-failed.png", full_page=True)
        (shots / f"{tag}-failed.txt").write_text(page.locator(NB).first.inner_text())
        raise
    assert readout(box) != value, "the slider's readout did not change"
    assert after != first, "the panel's output did not change"
    assert "Traceback" not in out.inner_text()
    page.screenshot(path=shots / f"{tag}-after.png")
    print(f"{notebook}: {label} {value} -> {readout(box)}, output updated in {seconds:.2f} s")


def test_kernel_restart_then_run_again(page, lab_url, lab_root, shots):
    """A learner restarts the kernel mid-notebook and runs down to the panel again: it works and still answers."""
    notebook, label, key = RESTART
    through = panel_cell(lab_root / notebook)
    try:
        open_notebook(page, lab_url, notebook)
        ran = run_all(page, through)  # code cells down to the panel: a fresh kernel's count there
        count = prompt_number(page, through)  # more than `ran` where run_all had to resume a stalled run
        page.locator(f"{NB} .jp-Cell").nth(through).locator(".jp-InputPrompt").first.click()
        page.keyboard.press("Control+Enter")  # the panel cell once more: its count moves on by one
        wait_prompt(page, through, count + 1)
        menu(page, "Restart Kernel and Run up to Selected Cell", top="Kernel")
        page.locator(".jp-Dialog .jp-mod-accept").click()  # "Restart Kernel?"
        wait_prompt(page, through, ran)  # a fresh kernel counted from 1 again, down to the panel
        box = slider(page, label)
        box.scroll_into_view_if_needed()
        out = panel_output(page, box)
        first, value = wait_output(page, out), readout(box)
        seconds, after = move(page, box, out, key)
    except Exception:
        page.screenshot(path=shots / "restart-failed.png", full_page=True)
        raise
    assert readout(box) != value and after != first
    assert "Traceback" not in out.inner_text()
    page.screenshot(path=shots / "restart-after.png")
    print(f"{notebook} after a kernel restart: {label} {value} -> {readout(box)} in {seconds:.2f} s")
