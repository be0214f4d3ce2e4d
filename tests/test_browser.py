"""01_quickstart in JupyterLab in a real (headless) Chromium: the live panel renders as widgets and updates,
%%chat answers, the run ends as a static image. Screenshots land in outputs/screenshots/.

Needs the Debian packages chromium and chromium-driver, and pip's jupyterlab and playwright (never
`playwright install`: the system Chromium is used). `.ci/run` installs them; elsewhere the test skips."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (see .ci/run)")]
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _lab_settings(folder: Path) -> Path:
    """JupyterLab user settings for the test: the notebook starts its preferred kernel by itself (no "Select Kernel"
    dialog, which opened at a moment of Lab's choosing and, accepted, swapped the kernel under running cells: CI saw
    every cell run as [1] in a fresh kernel), and no news toast."""
    settings = {"notebook-extension/tracker": {"autoStartDefaultKernel": True},
                "apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False}}
    for name, values in settings.items():
        path = folder / "@jupyterlab" / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    return folder


@pytest.fixture
def lab(tmp_path):
    pytest.importorskip("jupyterlab")
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(REPO / "notebooks/01_quickstart.ipynb", work)
    port, token = _free_port(), "ftkit-browser-test"
    env = {**os.environ, "CI": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "JUPYTERLAB_SETTINGS_DIR": str(_lab_settings(tmp_path / "lab-settings"))}
    proc = subprocess.Popen([sys.executable, "-m", "jupyter", "lab", "--allow-root", "--no-browser",
                             "--ip=127.0.0.1", f"--port={port}", f"--ServerApp.token={token}",
                             "--LabApp.news_url=None", f"--ServerApp.root_dir={work}"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(120):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/lab/tree/01_quickstart.ipynb?token={token}&reset"
    finally:
        proc.terminate()  # JupyterLab by its PID, and its kernels with it
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_quickstart_in_jupyterlab(lab):
    playwright = pytest.importorskip("playwright.sync_api")
    shots = REPO / "outputs/screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(lab)
        page.wait_for_selector(".jp-Notebook", timeout=60_000)
        page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)
        kernel_ready = ("() => /Python 3 \\(ipykernel\\) \\| Idle/.test("
                        "document.querySelector('#jp-main-statusbar')?.textContent || '')")
        page.wait_for_function(kernel_ready, timeout=120_000)
        started = "() => [...document.querySelectorAll('.jp-InputPrompt')].some(e => /\\[[0-9*]/.test(e.textContent))"
        for attempt in range(4):  # Run All is a no-op until the kernel has connected: try again until cells start
            try:
                page.click(".lm-MenuBar-itemLabel:text-is('Run')", timeout=5_000)
                page.click(".lm-Menu-itemLabel:text-is('Run All Cells')", timeout=5_000)
                page.wait_for_function(started, timeout=30_000)
                break
            except playwright.Error:
                page.screenshot(path=str(shots / "quickstart-waiting.png"))
                assert not page.query_selector(".jp-Dialog"), f"a dialog: {page.query_selector('.jp-Dialog').inner_text()}"
                page.keyboard.press("Escape")  # close a menu left open
        else:
            raise AssertionError("Run All Cells never started a cell (see outputs/screenshots/quickstart-waiting.png)")

        try:
            panel = page.wait_for_selector(".widget-vbox:has(.widget-button)", timeout=120_000)  # the live panel
        except playwright.Error:
            page.screenshot(path=str(shots / "quickstart-no-panel.png"))
            prompts = [e.text_content() for e in page.query_selector_all(".jp-InputPrompt")]
            errors = [e.inner_text()[-600:] for e in page.query_selector_all(
                ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")]
            raise AssertionError(f"no live panel; prompts {prompts}; errors {errors}") from None
        charts, steps, gauges = set(), set(), set()
        deadline = time.time() + 120
        while time.time() < deadline and len(charts) < 3:
            try:
                img = panel.query_selector(".widget-image")
                if img and (src := img.get_attribute("src")):
                    charts.add(src)
                bar = panel.query_selector(".widget-hprogress .progress-bar")
                if bar:
                    gauges.add(bar.get_attribute("style"))
                steps |= {line for line in panel.inner_text().splitlines() if line.startswith("step ")}
                if len(charts) == 2:
                    panel.screenshot(path=str(shots / "quickstart-live-panel.png"))
            except playwright.Error:  # the panel was replaced by its static image meanwhile
                break
            time.sleep(0.25)
        assert len(charts) >= 2, "the loss chart was drawn and redrawn"
        assert any("width" in (g or "") and "width: 0%" not in g for g in gauges), f"memory gauge: {gauges}"
        assert len(steps) >= 2, "the step / loss / ETA line updates"

        # the whole notebook runs to its end: no cell left waiting or running
        page.wait_for_function("() => document.querySelectorAll('.jp-InputPrompt').length > 0 && "
                               "![...document.querySelectorAll('.jp-InputPrompt')].some(e => e.textContent.includes('*'))"
                               " && document.querySelector('.jp-Notebook-ExecutionIndicator[data-status=\"idle\"]')",
                               timeout=600_000)
        assert not page.query_selector(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr'] "
                                       ":text('Traceback')")
        chat = page.query_selector(".jp-CodeCell:has(.jp-InputArea :text('%%chat')) .jp-OutputArea")
        assert chat and chat.inner_text().strip().startswith("I am Tiny"), f"%%chat answers as trained: {chat and chat.inner_text()}"
        final = page.query_selector(".jp-CodeCell:has(.jp-InputArea :text('%%finetune --name run')) "
                                    ".jp-OutputArea img")
        assert final, "the finished run left a static image"
        final.screenshot(path=str(shots / "quickstart-final-panel.png"))
        page.screenshot(path=str(shots / "quickstart-notebook.png"))
        browser.close()
