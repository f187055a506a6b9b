"""A JupyterLab server on loopback (random port, no token, a copy of the notebooks) and system Chromium."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("LABKIT_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
INSTALL_HINT = ("install with `apt-get install -y chromium` and `.venv/bin/pip install playwright` "
                "(`make test` does both; never `playwright install`: the system Chromium is used)")
SHOTS = ROOT / "test-output" / "browser"


def _missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is missing"
    return None


def _skip_or_fail(reason: str) -> None:
    # CI must never pass by skipping: a missing browser there is a failure.
    if os.environ.get("CI"):
        pytest.fail(f"browser tests cannot run in CI: {reason}; {INSTALL_HINT}")
    pytest.skip(f"{reason}; {INSTALL_HINT}")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    """Poll `url` until it answers 200; fail early if the server process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


def start_server(argv: list[str], root: Path, status_path: str, log: Path) -> tuple[subprocess.Popen, str]:
    """Start a Jupyter-family server (`argv` + a free `--port`, loopback only) in `root`; return (process, url)."""
    port = free_port()
    env = dict(os.environ, LABKIT_FAST=os.environ.get("LABKIT_FAST", "1"), HF_HUB_OFFLINE="1",
               JUPYTER_RUNTIME_DIR=str(root / ".runtime"), JUPYTER_PLATFORM_DIRS="1")
    cmd = argv + [f"--port={port}"]
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + status_path, proc)
    except Exception:
        proc.terminate()
        raise RuntimeError(f"{' '.join(cmd)} failed; log:\n{log.read_text()[-3000:]}")
    return proc, base


def stop(proc: subprocess.Popen) -> None:
    """Terminate a server we started (kernels included) and wait for it."""
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()


def lab_settings(root: Path) -> None:
    """JupyterLab user settings for a driven browser, kept in `root/.settings` (see `lab_argv`)."""
    # Render every cell: with JupyterLab's default windowing, cells far below the fold are hidden
    # and cannot be scrolled to or clicked by the driver.
    tracker = root / ".settings" / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True, exist_ok=True)
    tracker.write_text(json.dumps({"windowingMode": "none"}))
    news = root / ".settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True, exist_ok=True)
    news.write_text(json.dumps({"fetchNews": "false"}))  # no "official Jupyter news?" toast over the panels


def lab_argv(root: Path) -> list[str]:
    """`jupyter lab` on `root`: no token, no news or update checks, settings kept inside `root`."""
    return [sys.executable, "-m", "jupyter", "lab", "--ip=127.0.0.1", "--no-browser", "--allow-root",
            "--IdentityProvider.token=", "--ServerApp.password=", "--ServerApp.disable_check_xsrf=True",
            f"--ServerApp.root_dir={root}",
            f"--LabApp.user_settings_dir={root / '.settings'}", f"--LabApp.workspaces_dir={root / '.workspaces'}",
            "--LabApp.news_url=", "--LabApp.extension_manager=readonly",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]


@pytest.fixture(scope="session")
def lab_root(tmp_path_factory) -> Path:
    """A temporary root holding a copy of the notebooks, the Chinese edition in notebooks_zh/ (runs never touch the
    repository's files)."""
    root = tmp_path_factory.mktemp("lab")
    for nb in (ROOT / "notebooks").glob("*.ipynb"):
        shutil.copy(nb, root / nb.name)
    (root / "notebooks_zh").mkdir()
    for nb in (ROOT / "notebooks_zh").glob("*.ipynb"):
        shutil.copy(nb, root / "notebooks_zh" / nb.name)
    lab_settings(root)
    return root


@pytest.fixture(scope="session")
def lab_url(lab_root):
    """Base URL of a JupyterLab server on 127.0.0.1 (random free port, no token)."""
    reason = _missing()
    if reason:
        _skip_or_fail(reason)
    argv = lab_argv(lab_root)
    proc, base = start_server(argv, lab_root, "/api/status", lab_root / "jupyter-lab.log")
    yield base
    stop(proc)


@pytest.fixture()
def voila_url(lab_root):
    """Base URL of Voila on 127.0.0.1 (random free port) serving the copied notebooks."""
    reason = _missing()
    if reason:
        _skip_or_fail(reason)
    argv = [sys.executable, "-m", "voila", "--no-browser", "--Voila.ip=127.0.0.1", f"--Voila.root_dir={lab_root}"]
    proc, base = start_server(argv, lab_root, "/", lab_root / "voila.log")
    yield base
    stop(proc)


@pytest.fixture(scope="session")
def browser():
    """Headless system Chromium driven by Playwright (no browser download)."""
    reason = _missing()
    if reason:
        _skip_or_fail(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


def shutdown_kernels(base: str) -> None:
    """Stop every kernel of the server at `base` (REST API) so idle notebooks do not hold memory."""
    with urllib.request.urlopen(f"{base}/api/kernels", timeout=10) as r:
        kernels = json.load(r)
    for k in kernels:
        urllib.request.urlopen(urllib.request.Request(f"{base}/api/kernels/{k['id']}", method="DELETE"), timeout=30)


@pytest.fixture()
def page(browser, lab_url):
    """A fresh page (1400x1000) per test; its kernels are stopped afterwards."""
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = ctx.new_page()
    pg.set_default_timeout(300_000)  # see labdriver.TIMEOUT_S
    yield pg
    ctx.close()
    shutdown_kernels(lab_url)


@pytest.fixture(scope="session")
def shots() -> Path:
    """Folder for screenshots (gitignored)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    return SHOTS
