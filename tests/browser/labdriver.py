"""Driving JupyterLab and ipywidgets in a Playwright page: open, run all, move a slider, wait for the output."""

from __future__ import annotations

import time

# The notebook in the visible tab (a restored or earlier tab stays in the page, hidden).
NB = ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook"

# Generous: a timeout is there to catch a hang, not a busy machine. make test runs two workers, on 2 cores maybe shared with
# another job, so a whole notebook can take minutes where it takes one on a quiet machine.
TIMEOUT_S = 600


def open_notebook(page, base: str, name: str) -> None:
    """Open `name` in JupyterLab and wait for an idle kernel (answering the kernel dialog if shown)."""
    page.goto(f"{base}/lab/tree/{name}?reset")  # ?reset: do not reopen the tabs of an earlier test
    _wait_ready(page, name)


def _wait_ready(page, name: str) -> None:
    """Wait until the open notebook shows its cells and an idle kernel (answering the kernel dialog if shown)."""
    page.wait_for_selector(f"{NB} .jp-Cell")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        dialog = page.locator(".jp-Dialog .jp-mod-accept")
        if dialog.count():  # "Select Kernel": accept the proposed (the notebook's) kernel
            dialog.first.click()
        if page.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]').count():
            return
        page.wait_for_timeout(250)
    raise TimeoutError(f"kernel for {name} never became idle")


def menu(page, item: str, top: str = "Run") -> None:
    """Click menu `top` > `item` in JupyterLab's menu bar."""
    page.locator("#jp-MainMenu .lm-MenuBar-itemLabel", has_text=top).first.click()
    page.locator(".lm-Menu-itemLabel", has_text=item).first.click()


def prompt_number(page, index: int) -> int | None:
    """The execution count shown in the prompt of cell `index`, or None before it ran."""
    import re

    text = page.locator(f"{NB} .jp-Cell").nth(index).locator(".jp-InputPrompt").first.inner_text()
    found = re.search(r"\[(\d+)\]", text)
    return int(found.group(1)) if found else None


def wait_prompt(page, index: int, number: int, timeout_s: float = TIMEOUT_S) -> None:
    """Wait until cell `index` shows execution count `number` (fail fast on an error output)."""
    deadline = time.monotonic() + timeout_s
    while prompt_number(page, index) != number:
        if page.locator(f'{NB} [data-mime-type="application/vnd.jupyter.error"]').count():
            err = page.locator(f'{NB} [data-mime-type="application/vnd.jupyter.error"]').first
            raise AssertionError(f"a cell failed:\n{err.inner_text()[-2000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"cell {index} never showed [{number}] (shows {prompt_number(page, index)})")
        page.wait_for_timeout(250)


def _reveal(locator) -> None:
    """Scroll `locator` into view with the DOM's own scrollIntoView (works for cells not yet painted)."""
    locator.evaluate("e => e.scrollIntoView({block: 'center'})")
    locator.wait_for(state="visible")


def _code_cells_through(page, through: int | None) -> int:
    """How many code cells there are from the top down to cell index `through` (all of them when None)."""
    if through is None:
        return page.locator(f"{NB} .jp-CodeCell").count()
    return page.locator(f"{NB} .jp-Cell").nth(through).evaluate(
        "c => [...c.parentElement.children].slice(0, [...c.parentElement.children].indexOf(c) + 1)"
        ".filter(x => x.classList.contains('jp-CodeCell')).length")


def _click_prompt(page, index: int) -> None:
    """Select cell `index` by clicking its prompt (command mode)."""
    prompt = page.locator(f"{NB} .jp-Cell").nth(index).locator(".jp-InputPrompt").first
    _reveal(prompt)
    prompt.click()


def _start_run(page, through: int | None) -> None:
    """Run > Run All Cells, or select cell `through`, run all above it and then it."""
    if through is None:
        menu(page, "Run All Cells")
        return
    _click_prompt(page, through)
    menu(page, "Run All Above Selected Cell")
    _click_prompt(page, through)
    page.keyboard.press("Control+Enter")  # command mode: run the selected cell, stay on it


# Where a run stands: 'error', 'done', 'busy' (the kernel is not idle), or, while the kernel is idle, the index
# (among all cells) of the first code cell without an execution count ("[ ]", or "[*]" for a request never answered).
_STATE_JS = """(n) => {
  const NB = '%s';
  if (document.querySelector(NB + ' [data-mime-type="application/vnd.jupyter.error"]')) return 'error';
  const cells = [...document.querySelectorAll(NB + ' .jp-Cell')];
  const code = cells.filter(c => c.classList.contains('jp-CodeCell')).slice(0, n);
  const text = c => c.querySelector('.jp-InputArea-prompt')?.textContent || '';
  if (code.length > 0 && code.every(c => /\\[\\d+\\]/.test(text(c)))) return 'done';
  const idle = document.querySelector('.jp-Notebook-ExecutionIndicator[data-status="idle"]');
  if (!idle) return 'busy';
  return cells.indexOf(code.find(c => !/\\[\\d+\\]/.test(text(c))));
}""" % NB


def run_all(page, through: int | None = None, timeout_s: float = TIMEOUT_S, stall_s: float = 30) -> int:
    """Run > Run All Cells (or every cell up to cell index `through`), wait until they ran; fail on an error.

    Beside a CPU-bound process, JupyterLab was seen to lose queued run requests: one cell ran, the kernel went
    idle, the rest stayed unrun. A kernel idle for `stall_s` with cells unrun reloads the page (a fresh connection
    to the same kernel) and runs the cells again.
    Returns how many code cells ran."""
    n_code = _code_cells_through(page, through)
    _start_run(page, through)
    deadline = time.monotonic() + timeout_s
    idle_since = None
    while time.monotonic() < deadline:
        state = page.evaluate(_STATE_JS, n_code)
        if state == "error":
            err = page.locator(f'{NB} [data-mime-type="application/vnd.jupyter.error"]').first
            raise AssertionError(f"a cell failed:\n{err.inner_text()[-2000:]}")
        if state == "done":
            return n_code
        if state == "busy":
            idle_since = None
        elif idle_since is None:
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since > stall_s:
            # Resending on the same connection was seen to run the cells without showing their outputs: the
            # page's kernel connection had lost its output channel. A reload connects afresh to the same kernel.
            print(f"run_all: nothing ran for {stall_s:.0f} s with cell {state} unrun; reloading, running again")
            page.reload()
            _wait_ready(page, "the reloaded notebook")
            _start_run(page, through)
            idle_since = None
        page.wait_for_timeout(500)
    raise TimeoutError(f"the cells did not all run within {timeout_s:.0f} s")


def slider(page, description: str):
    """The ipywidgets slider whose label contains `description`."""
    label = page.locator(".widget-label", has_text=description)
    return page.locator(".widget-slider", has=label).first


def panel_output(page, slider_box):
    """The Output area of the `widgets.live` panel that holds `slider_box`."""
    panel = page.locator(".widget-vbox", has=slider_box).last
    return panel.locator(".widget-output").first


def readout(slider_box) -> str:
    """The number the slider shows."""
    return slider_box.locator(".widget-readout").inner_text().strip()


def wait_output(page, output, timeout_s: float = TIMEOUT_S / 3) -> str:
    """Wait until `output` shows something; return its HTML."""
    page.wait_for_function("el => el.innerText.trim().length > 0 || el.querySelector('img')",
                           arg=output.element_handle(), timeout=timeout_s * 1000)
    return output.inner_html()


def move(page, slider_box, output, key: str, timeout_s: float = TIMEOUT_S / 3) -> tuple[float, str]:
    """Press `key` on the slider handle; return (seconds until the output changed, its new HTML)."""
    before = output.inner_html()
    slider_box.locator(".noUi-handle").first.focus()
    el = output.element_handle()
    t0 = time.perf_counter()
    page.keyboard.press(key)
    page.wait_for_function("([el, before]) => el.innerHTML !== before"
                           " && (el.innerText.trim().length > 0 || el.querySelector('img'))",
                           arg=[el, before], timeout=timeout_s * 1000, polling="raf")
    return time.perf_counter() - t0, output.inner_html()


def panel_cell(path) -> int:
    """Index of a notebook's first cell that builds a live panel (`widgets.live(`): found, never hard-coded."""
    import json

    cells = json.loads(open(path, encoding="utf-8").read())["cells"]
    for i, cell in enumerate(cells):
        if "widgets.live(" in "".join(cell["source"]):
            return i
    raise AssertionError(f"{path} has no cell that calls widgets.live(")
