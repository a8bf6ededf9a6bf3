"""The "GPU cells" sidebar in real JupyterLab under Debian's Chromium: pick, run, watch, release, batch job, reload, outage."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import wait_for
from gpucell.client.jobs_client import JobsClient
from gpucell.client.embedded import EmbeddedBroker, start_embedded_broker
from gpucell.settings import ENV_BROKER, ENV_CONFIG, ENV_TOKEN

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
REPO = Path(__file__).resolve().parent.parent
# Set GPUCELL_UPDATE_SCREENSHOTS=1 to refresh the committed images under docs/img/.
DOCS_IMG = REPO / "docs" / "img"
TIMEOUT_MS = 30_000

POOLS_TOML = """
[pools.T4]
simulate = true
max_workers = 2
idle_timeout = 600
price_per_hour = 0.35

[pools.cpu]
max_workers = 2
idle_timeout = 600
"""


def _require_browser() -> None:
    """Skip only on a developer's machine without Chromium; under CI a missing browser is a failure."""
    missing = []
    if not Path(CHROMIUM).exists():
        missing.append(f"{CHROMIUM} (apt-get install chromium; `make chromium`)")
    try:
        import playwright.sync_api  # noqa: F401, PLC0415 - only this test needs it
    except ImportError:
        missing.append("the playwright package (pip install -e '.[test]')")
    if missing:
        reason = "sidebar e2e needs " + " and ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason, allow_module_level=True)
    labext = Path(sys.prefix, "share", "jupyter", "labextensions", "gpucell", "package.json")
    if not labext.exists():
        pytest.fail(f"the gpucell lab extension is not installed at {labext.parent}: run pip install -e .",
                    pytrace=False)


_require_browser()

from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402

expect.set_options(timeout=TIMEOUT_MS)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Lab:
    url: str
    token: str
    root: Path
    env: dict[str, str]
    broker: EmbeddedBroker

    def gpucell_status(self) -> dict[str, Any]:
        """What `gpucell status --json` says, run as a user would in a terminal of this server."""
        out = subprocess.run([sys.executable, "-m", "gpucell.cli", "status", "--json"], env=self.env,
                             capture_output=True, text=True, timeout=60, check=True)
        return json.loads(out.stdout)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """JupyterLab on 127.0.0.1 with temp Jupyter dirs, told about a broker with a simulated T4 pool."""
    config = tmp_path / "gpucell.toml"
    config.write_text(POOLS_TOML)
    broker = start_embedded_broker(str(config))
    jupyter = tmp_path / "jupyter"
    root = tmp_path / "notebooks"
    root.mkdir()
    env = {**os.environ, ENV_BROKER: broker.address, ENV_TOKEN: broker.token, ENV_CONFIG: str(config),
           "JUPYTER_CONFIG_DIR": str(jupyter / "config"), "JUPYTER_DATA_DIR": str(jupyter / "data"),
           "JUPYTER_RUNTIME_DIR": str(jupyter / "runtime"), "IPYTHONDIR": str(jupyter / "ipython"),
           "JUPYTER_PLATFORM_DIRS": "1", "PYTHONUNBUFFERED": "1"}
    # The news toast would cover the panel; disabled for this server only, not for the environment.
    labconfig = jupyter / "config" / "labconfig"
    labconfig.mkdir(parents=True)
    (labconfig / "page_config.json").write_text(
        json.dumps({"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))
    token = secrets.token_hex(16)
    port = free_port()
    log = (tmp_path / "lab.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip", "127.0.0.1",
         "--port", str(port), f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"jupyter lab exited: {(tmp_path / 'lab.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, ConnectionError):
            return False

    try:
        wait_for(ready, 60, interval=0.1, what="jupyter lab to answer")
        yield Lab(url, token, root, env, broker)
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        log.close()
        broker.stop()


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield launched
        finally:
            launched.close()


def screenshot(page: Page, name: str, tmp_path: Path) -> None:
    """Save the panel's picture next to the test's files, and into docs/img when asked to refresh them."""
    target = tmp_path / name
    panel = page.locator("#gpucell-sidebar")
    box = panel.bounding_box()
    assert box is not None
    # Down to the last section only: the panel's empty lower part makes a poor picture.
    bottom = panel.evaluate("n => Math.max(...Array.from(n.children, c => c.getBoundingClientRect().bottom))")
    height = min(box["height"], bottom - box["y"] + 8)
    page.screenshot(path=str(target), clip={"x": box["x"], "y": box["y"], "width": box["width"], "height": height})
    if os.environ.get("GPUCELL_UPDATE_SCREENSHOTS") == "1":
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(target, DOCS_IMG / name)


def open_panel(page: Page) -> None:
    panel = page.locator("#gpucell-sidebar")
    if not panel.is_visible():
        page.locator('.jp-SideBar .lm-TabBar-tab[data-id="gpucell-sidebar"]').click()
    expect(panel).to_be_visible(timeout=TIMEOUT_MS)


def run_cell(page: Page, source: str) -> None:
    """Type `source` into the active notebook's last cell and run it with Shift+Enter."""
    editor = page.locator(".jp-Notebook .jp-Cell").last.locator(".cm-content")
    editor.click()
    # insert_text: no key events, so the editor's auto-closing brackets and indentation do not interfere.
    page.keyboard.insert_text(source)
    expect(editor).to_have_text(source.replace("\n", ""), timeout=TIMEOUT_MS)
    page.keyboard.press("Shift+Enter")


def cell_output(page: Page, index: int) -> Any:
    return page.locator(".jp-Notebook .jp-Cell").nth(index).locator(".jp-OutputArea-output")


def run_as_batch_job(page: Page, lab: Lab, tmp_path: Path) -> None:
    """The notebook just prototyped, run from the palette as a detached job with a parameter, on the picked T4."""
    page.keyboard.press("Control+Shift+C")
    palette = page.locator(".lm-CommandPalette-input")
    palette.fill("Run notebook as batch job")
    page.locator(".lm-CommandPalette-item", has_text="Run notebook as batch job").first.click()
    form = page.get_by_test_id("gpucell-batch-form")
    expect(form).to_contain_text("Untitled.ipynb")
    expect(form.get_by_test_id("gpucell-batch-hardware")).to_have_value("T4")  # the sidebar's pick
    form.get_by_test_id("gpucell-batch-parameters").fill("greeting=hello batch")
    page.locator(".jp-Dialog-button.jp-mod-accept").click()

    job = page.get_by_test_id("gpucell-job")
    expect(job).to_have_count(1)
    expect(job.get_by_test_id("gpucell-job-notebook")).to_have_text("Untitled.ipynb")
    expect(job).to_have_attribute("data-state", "succeeded", timeout=120_000)
    expect(job.get_by_test_id("gpucell-job-numbers")).to_contain_text("T4 · ")
    screenshot(page, "sidebar-jobs.png", tmp_path)

    # What ran is the saved notebook with the parameter injected, its bare %%gpu cell on T4.
    client = JobsClient(lab.broker.address, lab.broker.token)
    try:
        data, info = client.fetch(str(job.get_attribute("data-job-id")))
    finally:
        client.close()
    assert info["hardware"] == "T4" and info["cost"] > 0
    cells = json.loads(data)["cells"]
    assert 'greeting = "hello batch"' in "".join(cells[0]["source"])   # injected as papermill writes it
    outputs = "".join(o.get("text", "") if isinstance(o.get("text"), str) else "".join(o.get("text", []))
                      for cell in cells for o in cell.get("outputs", []))
    assert "T4" in outputs and "done" in outputs


def test_sidebar_pick_run_watch_release_reload_outage(lab: Lab, browser: Browser, tmp_path: Path) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(f"{lab.url}/lab?reset&token={lab.token}")
    page.locator(".jp-LauncherCard").first.wait_for()

    open_panel(page)
    banner = page.get_by_test_id("gpucell-broker")
    expect(banner).to_have_attribute("data-state", "ok")
    expect(banner).to_contain_text(lab.broker.address)
    t4 = page.get_by_test_id("gpucell-hw-T4")
    expect(t4).to_contain_text("$0.35/h")
    expect(page.get_by_test_id("gpucell-hw-counts-T4")).to_have_text("0 warm · 2 available")
    t4.locator("input").check()

    page.locator('.jp-LauncherCard[data-category="Notebook"]').first.click()
    expect(page.locator("#jp-main-statusbar")).to_contain_text("Idle", timeout=60_000)
    # The picker tells the user that the pick waits for the extension in this notebook.
    expect(page.get_by_test_id("gpucell-kernel-default")).to_contain_text("%load_ext gpucell")

    run_cell(page, "%load_ext gpucell")
    expect(page.get_by_test_id("gpucell-kernel-default")).to_contain_text("runs on T4")
    page.locator(".jp-Notebook .jp-Cell").nth(1).wait_for()
    run_cell(page, '%%gpu\nimport os; print(os.environ["GPUCELL_HARDWARE"])')
    expect(cell_output(page, 1).last).to_contain_text("T4", timeout=60_000)

    # A cell that stays busy until the test has seen it busy (a flag file, not a sleep).
    flag = tmp_path / "finish-busy-cell"
    run_cell(page, "%%gpu\nimport os, time\ndeadline = time.time() + 60\n"
                   f"while not os.path.exists({str(flag)!r}) and time.time() < deadline: time.sleep(0.05)\n"
                   "print('done')")
    worker = page.get_by_test_id("gpucell-worker")
    expect(worker).to_have_count(1)
    expect(worker).to_have_attribute("data-state", "busy")
    expect(worker.get_by_test_id("gpucell-worker-label")).to_have_text("T4")
    expect(worker.get_by_test_id("gpucell-worker-notebook")).to_have_text("Untitled.ipynb")
    screenshot(page, "sidebar-busy.png", tmp_path)
    flag.write_text("go")
    expect(cell_output(page, 2).last).to_contain_text("done")
    expect(worker).to_have_attribute("data-state", "idle")
    expect(worker.get_by_test_id("gpucell-worker-idle")).to_contain_text("released in")
    expect(page.get_by_test_id("gpucell-usage-row")).to_contain_text("Untitled.ipynb")
    screenshot(page, "sidebar.png", tmp_path)

    (pool_worker,) = lab.gpucell_status()["pools"]["T4"]["workers"]
    assert pool_worker["id"] == worker.get_attribute("data-worker-id")
    worker.get_by_test_id("gpucell-release").click()
    expect(worker).to_have_count(0)
    expect(page.get_by_test_id("gpucell-no-workers")).to_be_visible()
    wait_for(lambda: lab.gpucell_status()["pools"]["T4"]["workers"] == [], 30, interval=0.1,
             what="gpucell status to drop the worker")

    run_as_batch_job(page, lab, tmp_path)

    page.reload()
    open_panel(page)
    expect(page.get_by_test_id("gpucell-hw-T4").locator("input")).to_be_checked()

    lab.broker.stop()
    expect(banner).to_have_attribute("data-state", "unreachable")
    expect(banner).to_contain_text("Broker unreachable")
    expect(banner).to_contain_text(f"broker unreachable at {lab.broker.address}")
    screenshot(page, "sidebar-unreachable.png", tmp_path)
