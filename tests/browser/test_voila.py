"""Workshop mode: Voila serves a notebook as a page of widgets and outputs only (no code)."""

from __future__ import annotations

from labdriver import readout, slider

NOTEBOOK = "02_quantization.ipynb"  # the quickest notebook with a slider; `make workshop` serves the capstone


def test_voila_page_renders_widgets_without_code(browser, voila_url, shots):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(f"{voila_url}/voila/render/{NOTEBOOK}", timeout=240_000)
        box = slider(page, "bits")
        box.wait_for(timeout=240_000)
        assert readout(box) == "8"
        assert page.locator(".widget-output").first.inner_text(timeout=60_000)
        assert "widgets.live" not in page.content()  # sources stripped: only widgets and outputs
        page.screenshot(path=shots / "voila-02.png", full_page=True)
    finally:
        page.close()
