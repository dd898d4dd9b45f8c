"""End to end in headless Chromium, as a newcomer uses the app (`make e2e`):

1. the Circuit page of a finished calibration draws its graph canvas, offline;
2. fresh workspace → Home → Demo preset → every page shows CUD-bearing content (screenshots of every
   page go to `E2E_SHOTS`, default `e2e-screenshots/`) → a long unlearning run started on the
   Unlearning page is stopped within 5 s → an uploaded dataset survives navigation through the sidebar.

The newcomer path runs on the embedded model and world-facts (the Demo takes 4–5 min on 2 cores);
`CUD_E2E_MODEL=tiny` runs it on the test fixture's tiny model instead (a minute, for development).
Needs Debian's chromium + chromium-driver and selenium; run with `make e2e` (installs them).
Left out of `make test` (marked slow, needs root installs).
"""
import json
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

from cud_core.cli import main

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
SHOTS = Path(os.environ.get("E2E_SHOTS", ROOT / "e2e-screenshots"))
RESULT_PAGES = ("Rankings", "Circuit", "Depth", "Unlearning", "Annotations", "Validation")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(allow_root: Path):
    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                             "--", "--allow-root", str(allow_root)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://localhost:{port}"
    for _ in range(120):
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).read() == b"ok":
                return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    pytest.fail("the Streamlit server did not start")


@pytest.fixture(scope="module")
def server(app_setup):
    proc, url = start_server(Path(app_setup["workspace"]).parent)
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


# ----------------------------------------------------------------------------- helpers

def body_text(browser) -> str:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        return browser.find_element(By.TAG_NAME, "body").text
    except StaleElementReferenceException:  # Streamlit redrew the page under us
        return ""


def wait_for(browser, condition, timeout: float, what: str, every: float = 0.2):
    """condition()'s first true value within `timeout` s (checked every `every` s: reading the page's
    text costs the browser a layout, so long waits poll slowly); fails at once when a job reports a failure."""
    end = time.time() + timeout
    while time.time() < end:
        if " failed: " in body_text(browser):
            shot(browser, f"failed-{what.replace(' ', '-')[:40]}")
            pytest.fail(f"a job failed while waiting for {what}:\n{body_text(browser)[-2000:]}")
        try:
            value = condition()
            if value:
                return value
        except Exception:  # elements come and go while Streamlit reruns  # noqa: BLE001
            pass
        time.sleep(every)
    shot(browser, f"failed-{what.replace(' ', '-')[:40]}")
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}; page text:\n{body_text(browser)[-2000:]}")


def wait_text(browser, text: str, timeout: float = 120) -> None:
    wait_for(browser, lambda: text in body_text(browser), timeout, repr(text))


def settled(browser, timeout: float = 120) -> None:
    """Until Streamlit has no script running (its status widget gone) and the page has a title."""
    from selenium.webdriver.common.by import By

    def idle():
        running = browser.find_elements(By.CSS_SELECTOR, '[data-testid="stStatusWidget"]')
        return not running and browser.find_elements(By.TAG_NAME, "h1")
    time.sleep(0.5)
    wait_for(browser, idle, timeout, "the page to finish running")


def button(browser, starts_with: str):
    from selenium.webdriver.common.by import By

    xpath = f"//button[starts-with(normalize-space(.), {json.dumps(starts_with)})]"
    return wait_for(browser, lambda: [b for b in browser.find_elements(By.XPATH, xpath) if b.is_enabled()],
                    120, f"an enabled button {starts_with!r}")[0]


def sidebar_link(browser, title: str):
    from selenium.webdriver.common.by import By

    def links():
        return [a for a in browser.find_elements(By.CSS_SELECTOR, "[data-testid='stSidebarNav'] a")
                if a.text.splitlines()[-1:] == [title]]  # the icon comes first
    return wait_for(browser, links, 30, f"the sidebar link {title!r}")[0]


def shot(browser, name: str) -> None:
    """The whole page (Streamlit scrolls inside its main container) as SHOTS/name.png."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    SHOTS.mkdir(parents=True, exist_ok=True)
    titles = browser.find_elements(By.TAG_NAME, "h1")
    if titles:  # no tooltip of the last clicked button over the picture
        ActionChains(browser).move_to_element(titles[0]).perform()
    height = browser.execute_script(
        "return Math.max(...Array.from(document.querySelectorAll('[data-testid=\"stMain\"], "
        "[data-testid=\"stAppViewContainer\"], section.main')).map(e => e.scrollHeight), "
        "document.body.scrollHeight)") or 1000
    browser.set_window_size(1400, max(1000, min(int(height), 6000)))
    browser.save_screenshot(str(SHOTS / f"{name}.png"))
    browser.set_window_size(1400, 1000)


def query(browser) -> dict:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlparse(browser.current_url).query))


# ----------------------------------------------------------------------------- tests

def test_circuit_page_draws_the_graph_canvas(server, browser, app_setup):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    query_ = urllib.parse.urlencode({k: app_setup[k] for k in ("model", "data", "workspace")}
                                    | {"sample": app_setup["forget"][0]})
    browser.get(f"{server}/Circuit?{query_}")
    wait = WebDriverWait(browser, 90)
    frame = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "iframe")))
    browser.switch_to.frame(frame)
    canvas = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#mynetwork canvas")))
    assert canvas.size["width"] > 100 and canvas.size["height"] > 100
    html = browser.page_source
    assert "cdn.jsdelivr" not in html and "unpkg.com" not in html  # nothing fetched from a CDN
    browser.switch_to.default_content()


def test_a_newcomer_goes_from_demo_to_every_page_stops_a_job_and_keeps_an_upload(browser, app_setup,
                                                                                    tmp_path_factory):
    from selenium.webdriver.common.by import By

    root = tmp_path_factory.mktemp("e2e")
    tiny = os.environ.get("CUD_E2E_MODEL") == "tiny"
    model, data = (app_setup["model"], str(root / "facts.jsonl")) if tiny else ("embedded", "builtin:world-facts")
    if tiny:  # the Demo forgets a quarter of the file: 24 facts give 6
        (root / "facts.jsonl").write_text("".join(json.dumps({"id": f"d{i}", "question": f"Where is place {i}?",
                                                              "answer": f"Place {i} is in Oslo."}) + "\n"
                                                  for i in range(24)))
    proc, url = start_server(root if not tiny else Path(os.path.commonpath([root, app_setup["workspace"]])))
    try:
        params = {"model": model, "data": data, "workspace": str(root / "ws")}
        browser.get(f"{url}/?{urllib.parse.urlencode(params)}")
        wait_text(browser, "Nothing computed yet", 300)  # a fresh workspace; the model loaded
        assert [a.text.splitlines()[-1] for a in browser.find_elements(
            By.CSS_SELECTOR, "[data-testid='stSidebarNav'] a")] == ["Home", *RESULT_PAGES]
        shot(browser, "0-home-fresh")

        # 1. the Demo preset, watched from Home until it is done
        started = time.time()
        button(browser, "Demo").click()
        wait_text(browser, "Demo: calibrating", 30)
        wait_for(browser, lambda: "Validation of CUD" in body_text(browser), 1800, "the Demo calibration to finish",
                 every=5.0)
        demo_s = time.time() - started
        settled(browser)
        assert "Demo calibration" in body_text(browser)
        shot(browser, "1-home-after-demo")

        # 2. every page, through the sidebar: the selection follows, and each shows CUD-bearing content
        expect = {"Rankings": "on a row to open its circuit", "Circuit": "of up to 75 edges",
                  "Depth": "Circuit nodes per layer", "Unlearning": "Mean answer NLL per bucket",
                  "Annotations": "Annotation queue", "Validation": "distinguishable from chance"}
        for i, page in enumerate(RESULT_PAGES, start=2):
            sidebar_link(browser, page).click()
            wait_text(browser, expect[page], 180)
            settled(browser)
            text = body_text(browser)
            assert query(browser)["workspace"] == params["workspace"] and query(browser)["data"] == data, page
            assert "No scored samples" not in text and "Score the forget set" not in text, page
            if page != "Annotations":
                assert "Demo calibration" in text, page  # the demo is marked as such everywhere
            if page == "Rankings":
                assert "Bucket" in text  # the CUD bucket filter: the table has CUD
            if page == "Circuit":
                assert browser.find_elements(By.CSS_SELECTOR, "iframe"), "no circuit graph"
            if page in ("Depth", "Unlearning", "Validation"):
                wait_for(browser, lambda: browser.find_elements(By.CSS_SELECTOR, ".vega-embed"), 60, f"{page} charts")
            shot(browser, f"{i}-{page.lower()}")

        # 3. Stop: a long unlearning run on the Unlearning page stops within 5 s
        browser.get(f"{url}/Unlearning?{urllib.parse.urlencode(params | {'steps': 2000, 'eval_every': 100})}")
        settled(browser)
        button(browser, "Start unlearning").click()
        wait_for(browser, lambda: "step 0/2000" in body_text(browser) or "step 100/2000" in body_text(browser)
                 or "measuring" in body_text(browser), 300, "the unlearning run to start")
        shot(browser, "8-unlearning-running")
        stop = button(browser, "Stop")
        clicked = time.time()
        stop.click()
        wait_for(browser, lambda: ": stopped" in body_text(browser), 30, "the job to show as stopped")
        stop_s = time.time() - clicked
        wait_for(browser, lambda: "is stopped" in body_text(browser) or "**stopped**" in body_text(browser)
                 or "\nstopped · " in body_text(browser), 30, "the page to show the run as stopped")
        settled(browser)
        shot(browser, "9-unlearning-stopped")
        assert stop_s <= 5, f"Stop took {stop_s:.1f} s"

        # 4. an uploaded dataset survives navigation through the sidebar
        upload = root / "my facts.jsonl"
        upload.write_text("".join(json.dumps({"id": f"u{i}", "question": f"What is my fact {i}?",
                                              "answer": f"My fact {i}."}) + "\n" for i in range(12)))
        sidebar_link(browser, "Home").click()
        settled(browser)
        dataset = wait_for(browser, lambda: [b for b in browser.find_elements(By.CSS_SELECTOR,
                                             "[data-testid='stSidebar'] [data-testid='stSelectbox']")
                                             if "Dataset" in b.text], 60, "the dataset picker")[0]
        if not browser.find_elements(By.CSS_SELECTOR, "[data-testid='stSidebar'] input[type='file']"):
            dataset.find_element(By.TAG_NAME, "input").click()  # a built-in dataset: switch to uploading
            wait_for(browser, lambda: [o for o in browser.find_elements(By.CSS_SELECTOR, "[role='option']")
                                       if o.text == "upload a file"], 30, "the upload option")[0].click()
        picker = wait_for(browser, lambda: browser.find_elements(By.CSS_SELECTOR, "input[type='file']"), 30,
                          "the file uploader")[0]
        picker.send_keys(str(upload))
        wait_text(browser, "my facts.jsonl: 12 samples", 60)
        settled(browser)
        shot(browser, "10-home-uploaded")
        assert query(browser)["data"].endswith("my facts.jsonl")
        sidebar_link(browser, "Rankings").click()
        wait_text(browser, "my facts.jsonl", 60)
        settled(browser)
        assert query(browser)["data"].endswith("my facts.jsonl"), browser.current_url
        shot(browser, "11-rankings-uploaded")
        sidebar_link(browser, "Home").click()
        wait_text(browser, "my facts.jsonl: 12 samples", 60)  # and back: still the uploaded file
        print(json.dumps({"demo_s": round(demo_s, 1), "stop_s": round(stop_s, 2), "model": model,
                          "screenshots": str(SHOTS)}))
    finally:
        proc.terminate()
        proc.wait(10)


# ----------------------------------------------------------------------------- a speaker and an annotator

MAIN_RESULT = {"Rankings": "[data-testid='stDataFrame']", "Circuit": "iframe", "Depth": ".vega-embed",
               "Unlearning": ".vega-embed", "Annotations": "[data-testid='stProgress']", "Validation": ".vega-embed"}


def first_screen(browser, selector: str) -> bool:
    """The first element matching `selector` starts in the window's first screen with at least 150 px of it
    showing (Streamlit's main area scrolled to the top)."""
    return browser.execute_script(
        "const e = document.querySelector(arguments[0]); if (!e) return false;"
        "const r = e.getBoundingClientRect(); return r.height > 0 && r.top >= 0 && r.top < window.innerHeight - 150;",
        selector)


def test_presentation_mode_shows_each_result_first_at_projector_and_laptop_sizes(server, browser, app_setup):
    base = {k: app_setup[k] for k in ("model", "data", "workspace")} | {"present": "1"}
    measured = {}
    try:
        for width, height in ((1920, 1080), (1280, 800)):
            browser.set_window_size(width, height)
            for page in RESULT_PAGES:
                browser.get(f"{server}/{page}?{urllib.parse.urlencode(base)}")
                settled(browser)
                wait_for(browser, lambda page=page: first_screen(browser, MAIN_RESULT[page]), 60,
                         f"{page}'s result in the first screen at {width}x{height}")
                SHOTS.mkdir(parents=True, exist_ok=True)
                browser.save_screenshot(str(SHOTS / f"present-{width}x{height}-{page.lower()}.png"))
                assert query(browser).get("present") == "1", page
                if page == "Circuit":  # the graph's frame grows to the window and pushes its caption down
                    gap = browser.execute_script(
                        "const f = document.querySelector('[data-testid=\"stIFrame\"]').getBoundingClientRect();"
                        "const below = [...document.querySelectorAll('[data-testid=\"stCaptionContainer\"]')]"
                        ".map(c => c.getBoundingClientRect()).filter(r => r.height > 0 && r.top > f.top);"
                        "return [f.bottom, Math.min(...below.map(r => r.top))];")
                    assert gap[1] >= gap[0] - 1, f"the caption overlaps the graph at {width}x{height}: {gap}"
                measured[f"{page}@{width}"] = browser.execute_script(
                    "return Math.round(document.querySelector(arguments[0]).getBoundingClientRect().top)",
                    MAIN_RESULT[page])
    finally:
        browser.set_window_size(1400, 1000)
    print(json.dumps({"result_top_px": measured}))


def test_runs_side_by_side_share_one_axis(server, browser, app_setup):
    from selenium.webdriver.common.by import By

    keys = [f"{app_setup['calibration']} (curve-npo)", app_setup["unlearn"]]
    params = {k: app_setup[k] for k in ("model", "data", "workspace")} | {"compare": ",".join(keys)}
    browser.get(f"{server}/Unlearning?{urllib.parse.urlencode(params)}")
    wait_text(browser, "mean ± 95% band per run", 120)
    settled(browser)
    chart = next(e for e in browser.find_elements(By.CSS_SELECTOR, ".vega-embed")
                 if "mean ± 95% band per run" in e.text)
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", chart)
    time.sleep(0.5)
    SHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SHOTS / "unlearning-side-by-side.png"))
    assert len(chart.find_elements(By.CSS_SELECTOR, "g.role-axis")) >= 2  # one x and one shared y axis, one chart


def test_the_annotation_queue_by_keyboard_alone(server, browser, app_setup):
    """Three samples labelled with the keyboard (author typed, labels on key 1), the author kept."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from cud_core.store.workspace import Workspace

    ws = Workspace(app_setup["workspace"])
    before = {a["id"] for a in ws.annotations()}
    params = {k: app_setup[k] for k in ("model", "data", "workspace")}
    browser.get(f"{server}/Annotations?{urllib.parse.urlencode(params)}")
    settled(browser)
    author = wait_for(browser, lambda: browser.find_element(By.CSS_SELECTOR, "input[aria-label='Author']"), 60,
                      "the author field")
    author.send_keys("keyboard-kim", Keys.ENTER)
    settled(browser)
    for k in range(3):
        browser.execute_script("document.activeElement && document.activeElement.blur()")
        ActionChains(browser).send_keys("1").perform()  # the first label's shortcut
        wait_for(browser, lambda k=k: f"{k + 1} of " in body_text(browser) and "annotated by keyboard-kim"
                 in body_text(browser), 60, f"annotation {k + 1} saved")
        settled(browser)
    SHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SHOTS / "annotation-queue-keyboard.png"))
    mine = [a for a in ws.annotations() if a["id"] not in before]
    assert [a["author"] for a in mine] == ["keyboard-kim"] * 3 and len({a["sample_id"] for a in mine}) == 3
    assert browser.find_element(By.CSS_SELECTOR, "input[aria-label='Author']").get_attribute("value") == "keyboard-kim"


def test_a_click_on_a_ranking_row_opens_its_circuit(server, browser, app_setup):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    params = {k: app_setup[k] for k in ("model", "data", "workspace")}
    browser.get(f"{server}/Rankings?{urllib.parse.urlencode(params)}")
    settled(browser)
    grid = wait_for(browser, lambda: browser.find_element(By.CSS_SELECTOR, "[data-testid='stDataFrame'] canvas"),
                    60, "the ranking table")
    # the question cell of the first row (glide data grid: header ~35 px, rows ~35 px); not the checkbox column
    ActionChains(browser).move_to_element_with_offset(grid, -grid.size["width"] // 2 + 420,
                                                      -grid.size["height"] // 2 + 52).click().perform()
    wait_for(browser, lambda: "/Circuit" in browser.current_url and query(browser).get("sample"), 60,
             "the Circuit page of the clicked sample")
    settled(browser)
    SHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SHOTS / "rankings-row-click-circuit.png"))


def test_the_talk_pack_opens_offline_and_each_slide_fits_the_screen(browser, app_setup, tmp_path):
    """Every slide of a calibration's talk pack, at a projector's and a laptop's size: its figures lie inside
    the window (no scrolling on stage), from a file:// address."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    out = tmp_path / "talk"
    assert main(["talk-pack", "--workspace", app_setup["workspace"], "--run", app_setup["calibration"],
                 "--out", str(out), "--no-png"]) == 0
    outside = []
    try:
        for width, height in ((1920, 1080), (1280, 800)):
            browser.set_window_size(width, height)
            browser.get((out / "index.html").as_uri())
            n = browser.execute_script("return document.querySelectorAll('section').length")
            assert n >= 5
            for k in range(n):
                on = browser.find_element(By.CSS_SELECTOR, "section.on")
                assert on.get_attribute("id") == f"slide-{k + 1}"
                outside += [f"slide {k + 1} at {width}x{height}: {box}" for box in browser.execute_script(
                    "return [...document.querySelectorAll('section.on svg')].map(e => e.getBoundingClientRect())"
                    ".filter(r => r.bottom > window.innerHeight + 1 || r.right > window.innerWidth + 1)"
                    ".map(r => [r.right, r.bottom])")]
                SHOTS.mkdir(parents=True, exist_ok=True)
                browser.save_screenshot(str(SHOTS / f"talk-{width}x{height}-{k + 1}.png"))
                browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_RIGHT)
    finally:
        browser.set_window_size(1400, 1000)
    assert not outside, outside
