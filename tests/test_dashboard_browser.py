"""The dashboard as a person sees it: a real headless Chromium opens a finished demo study.

Debian's `chromium` and `chromium-driver` (scripts/test.sh and .ci/run install them where
missing), driven by selenium. The screenshots land in pytest's temporary folder; with
SEARCH_SCREENSHOTS_DIR set (scripts/refresh_screenshots.sh sets it to docs/screenshots) they are
copied there too, so an ordinary test run leaves the documentation's tracked pictures alone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request

import pytest
from postgres_cluster import free_port
from run_cli import DEMO, ROOT, SEARCH, search

SCREENSHOT_NAMES = ("study.png", "trials.png", "trial_artifacts.png", "study_note.png")
CHROMEDRIVER = shutil.which("chromedriver")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def browser():
    if CHROMEDRIVER is None or CHROMIUM is None:
        pytest.skip("no chromium/chromedriver (Debian packages chromium, chromium-driver; "
                    "scripts/test.sh installs them when run as root)")
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--window-size=1600,1000"):
        options.add_argument(flag)
    return webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER),
                            options=options)


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    folder = tmp_path_factory.mktemp("browser")
    search("grid", "--spec", DEMO, "--epochs", "2", "--ranks", "2", "8", "--alphas", "8",
           "--workers", "1", cwd=folder)
    yield from served(folder)


def served(folder, *args: str):
    """`search dashboard` on a free port in `folder` (with `args`); its address."""
    port = free_port()
    server = subprocess.Popen([*SEARCH, "dashboard", "--port", str(port), *args], cwd=folder,
                              stderr=subprocess.DEVNULL,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{base}/api/studies", timeout=5).close()
            break
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, "no dashboard"
            time.sleep(0.5)
    yield base
    server.terminate()
    server.wait(timeout=30)


def wait_for_text(driver, text: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while text not in driver.find_element("tag name", "body").text:
        assert time.monotonic() < deadline, f"{text!r} never appeared"
        time.sleep(0.25)


def test_a_browser_finds_every_trial_and_the_best_trials_artifacts(dashboard, tmp_path):
    with urllib.request.urlopen(f"{dashboard}/api/studies/1", timeout=10) as response:
        study = json.loads(response.read())
    best = study["best_trials"][0]["number"]
    driver = browser()
    screenshots = tmp_path / "screenshots"
    screenshots.mkdir()
    try:
        # The study page: validation accuracy of every trial, and what matters most.
        driver.get(f"{dashboard}/dashboard/studies/1")
        wait_for_text(driver, "val_acc")
        time.sleep(2)  # the plots draw after the text
        driver.save_screenshot(str(screenshots / "study.png"))

        # The trials page with the best trial open: every trial listed, its value, metrics
        # (user attributes) and, further down, its artifacts.
        driver.get(f"{dashboard}/dashboard/studies/1/trials?numbers={best}")
        for number in range(len(study["trials"])):
            wait_for_text(driver, f"Trial {number}")
        wait_for_text(driver, "test_acc")
        driver.save_screenshot(str(screenshots / "trials.png"))
        for name in ("confusion_matrix.png", "roc_curves.png", "learning_curves.png",
                     "classification_report.csv"):
            wait_for_text(driver, name)
        images = [image for image in driver.find_elements("css selector", "img")
                  if f"/artifacts/1/{study['best_trials'][0]['trial_id']}/"
                  in (image.get_attribute("src") or "")]
        assert images, "no artifact image of the best trial on its page"
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", images[0])
        time.sleep(1)
        driver.save_screenshot(str(screenshots / "trial_artifacts.png"))

        # The baseline's note says what it is; its standing is on the study's note.
        driver.get(f"{dashboard}/dashboard/studies/1/trials?numbers=0")
        wait_for_text(driver, "Baseline")
        wait_for_text(driver, "is on the study's Note page")

        # The study's Note page is the leaderboard: a row per trial, the best first, and the
        # chart of accuracy against trainable parameters (a study artifact).
        driver.get(f"{dashboard}/dashboard/studies/1/note")
        wait_for_text(driver, "Leaderboard of study demo")
        wait_for_text(driver, "LoRA configurations are tied with the best")
        wait_for_text(driver, "baseline")
        assert "pp below the best" in driver.find_element("tag name", "body").text
        rows = driver.find_elements("css selector", "table tbody tr")
        assert len(rows) == len(study["trials"])
        assert rows[0].find_elements("tag name", "td")[0].text == str(best)
        chart = [image for image in driver.find_elements("css selector", "img")
                 if "/artifacts/1/" in (image.get_attribute("src") or "")]
        assert chart, "no chart on the study's note"
        deadline = time.monotonic() + 30
        while not driver.execute_script("return arguments[0].naturalWidth", chart[0]):
            assert time.monotonic() < deadline, "the chart never loaded"
            time.sleep(0.25)
        driver.save_screenshot(str(screenshots / "study_note.png"))
    finally:
        driver.quit()
    for name in SCREENSHOT_NAMES:
        assert (screenshots / name).stat().st_size > 20_000
    if target := os.environ.get("SEARCH_SCREENSHOTS_DIR"):
        target_dir = ROOT / target  # a relative path is taken from the repository root
        target_dir.mkdir(parents=True, exist_ok=True)
        for name in SCREENSHOT_NAMES:
            shutil.copyfile(screenshots / name, target_dir / name)


@pytest.fixture(scope="module")
def large_dashboard(tmp_path_factory):
    """A generated study of 1,000 trials stored as workers store them, its notes written as
    `search leaderboard --note` writes them, served by `search dashboard`."""
    import sys

    sys.path.insert(0, str(ROOT))
    from benchmarks.synthetic_study import make_study

    folder = tmp_path_factory.mktemp("large")
    make_study(f"sqlite:///{folder / 'search.db'}", "large", trials=1000, val_images=216,
               artifacts_dir=folder / "search-artifacts")
    search("leaderboard", "--study", "large", "--note", cwd=folder)
    yield from served(folder)


def test_the_note_page_of_a_1000_trial_study_renders_within_10_s(large_dashboard, tmp_path):
    """The study's note (the verdict, the best 50 rows, the link to the full leaderboard,
    the chart) renders in Chromium within 10 s of asking for the page (the browser already
    started, as a person's is)."""
    driver = browser()
    try:
        driver.get(f"{large_dashboard}/dashboard")
        wait_for_text(driver, "large")
        started = time.monotonic()
        driver.get(f"{large_dashboard}/dashboard/studies/1/note")
        wait_for_text(driver, "Leaderboard of study large", seconds=10)
        wait_for_text(driver, "more trials: full leaderboard as CSV", seconds=10)
        rows = driver.find_elements("css selector", "table tbody tr")
        rendered = time.monotonic() - started
        print(f"the note page of 1,000 trials rendered in {rendered:.1f} s")
        assert 50 <= len(rows) <= 52 and rendered <= 10
        driver.save_screenshot(str(tmp_path / "large_note.png"))
        links = {a.text: a.get_attribute("href") for a in driver.find_elements("tag name", "a")}
        with urllib.request.urlopen(links["full leaderboard as CSV"], timeout=10) as response:
            assert response.headers["Content-Type"] == "text/csv"
            assert len(response.read().decode().splitlines()) == 1000 + 1
        chart = [image for image in driver.find_elements("css selector", "img")
                 if "/artifacts/1/" in (image.get_attribute("src") or "")]
        assert chart and "?v=" in chart[0].get_attribute("src")
        deadline = time.monotonic() + 30
        while not driver.execute_script("return arguments[0].naturalWidth", chart[0]):
            assert time.monotonic() < deadline, "the chart never loaded"
            time.sleep(0.25)
    finally:
        driver.quit()
