"""End to end in headless Chromium: a running app's Circuit page draws the graph canvas, offline.

Needs Debian's chromium + chromium-driver and selenium; run with `make e2e` (installs them).
Left out of `make test` (marked slow, needs root installs).
"""
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(app_setup):
    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                             "--server.headless", "true", "--browser.gatherUsageStats", "false",
                             "--", "--allow-root", str(Path(app_setup["workspace"]).parent)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).read() == b"ok":
                break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("the Streamlit server did not start")
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("needs Debian's chromium and chromium-driver (make e2e installs them)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    yield driver
    driver.quit()


def test_circuit_page_draws_the_graph_canvas(server, browser, app_setup):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    query = urllib.parse.urlencode({k: app_setup[k] for k in ("model", "data", "workspace")}
                                   | {"sample": app_setup["forget"][0]})
    browser.get(f"{server}/Circuit?{query}")
    wait = WebDriverWait(browser, 90)
    frame = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "iframe")))
    browser.switch_to.frame(frame)
    canvas = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#mynetwork canvas")))
    assert canvas.size["width"] > 100 and canvas.size["height"] > 100
    html = browser.page_source
    assert "cdn.jsdelivr" not in html and "unpkg.com" not in html  # nothing fetched from a CDN
    browser.switch_to.default_content()
