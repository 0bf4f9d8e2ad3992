"""The demo page driven as a person drives it, in a real headless browser (Debian's chromium and chromedriver,
through selenium): it loads, a class is chosen, the preview redraws once per token, the downloaded grid is the PNG
the command line it shows writes, an upload returns variations, bad input (a value out of range, a text file, an
oversized file) shows a message.

Skipped when chromium, chromedriver or selenium is missing (`apt-get install -y chromium chromium-driver` and
`pip install -e ".[demo]"`), unless SPECTRALAR_REQUIRE_BROWSER=1 (CI sets it: there a missing browser fails).
SPECTRALAR_DEMO_SCREENSHOT=PATH also saves the page after sampling to PATH (docs/img/demo.png).
"""

import os
import shutil
import time
from pathlib import Path

import pytest
from demoserver import command_png, serving

from spectralar.demo import DemoApp

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
try:
    import selenium  # noqa: F401
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait
except ImportError:
    webdriver = None
MISSING = [name for name, have in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER),
                                   ("selenium", webdriver)) if not have]
if MISSING:
    if os.environ.get("SPECTRALAR_REQUIRE_BROWSER") == "1":
        raise RuntimeError(f"SPECTRALAR_REQUIRE_BROWSER=1 but {', '.join(MISSING)} missing")
    pytest.skip(f"the browser test needs {', '.join(MISSING)}", allow_module_level=True)

TIMEOUT = 60  # seconds for one sampling run on a loaded 2-core machine
# Headless on a machine with no display, no network and no sandbox support; a fresh profile every run.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1100,900"]
# Records every image the preview shows (each `src` set, even several in one task: a record's new value is the
# next record's old one), whichever code draws it: the page's own bookkeeping is not what is tested.
WATCH = """
window.redraws = [];
const img = document.getElementById("preview");
new MutationObserver((records) => {
  records.forEach((r, i) => window.redraws.push(i + 1 < records.length ? records[i + 1].oldValue : img.src));
}).observe(img, {attributes: true, attributeFilter: ["src"], attributeOldValue: true});
"""


@pytest.fixture(scope="module")
def url():
    with serving(DemoApp("fmnist", "cpu")) as base:
        yield base


@pytest.fixture(scope="module")
def downloads(tmp_path_factory):
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(tmp_path_factory, downloads):
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in FLAGS + [f"--user-data-dir={tmp_path_factory.mktemp('profile')}"]:
        opts.add_argument(flag)
    opts.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                           "download.prompt_for_download": False})
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(TIMEOUT)
    yield driver
    driver.quit()


def open_page(browser, url):
    browser.get(url)
    wait_state(browser, "ready")
    browser.execute_script(WATCH)


def wait_state(browser, *states) -> str:
    """Wait until the page says it is in one of `states` (ready, done, error); return which."""
    WebDriverWait(browser, TIMEOUT).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state")
                                          in states)
    return browser.find_element(By.TAG_NAME, "body").get_attribute("data-state")


def set_value(browser, element_id, value):
    """Type into a field (a slider is set and told, as dragging it would)."""
    el = browser.find_element(By.ID, element_id)
    if el.get_attribute("type") == "range":
        browser.execute_script("arguments[0].value = arguments[1];"
                               "arguments[0].dispatchEvent(new Event('input'));", el, str(value))
    else:
        el.clear()
        el.send_keys(str(value))


def download(browser, downloads, name) -> bytes:
    """Click the download link; the file the browser saved."""
    link = browser.find_element(By.ID, "download")
    assert link.get_attribute("download") == name
    link.click()
    path, deadline = downloads / name, time.monotonic() + TIMEOUT
    while not (path.exists() and path.stat().st_size) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.2)  # the browser renames the partial file into place; let it finish
    return path.read_bytes()


def message(browser) -> str:
    el = browser.find_element(By.ID, "message")
    return el.text if el.is_displayed() else ""


def test_samples_sharpen_token_by_token_and_download_as_generate_writes(browser, url, downloads, tmp_path):
    open_page(browser, url)
    Select(browser.find_element(By.ID, "cls")).select_by_visible_text("Sandal")
    set_value(browser, "num", 6)
    set_value(browser, "seed", 3)
    set_value(browser, "cfg", 2.5)
    assert browser.find_element(By.ID, "tokens-out").text == "16 of 16"
    browser.find_element(By.ID, "sample").click()
    assert wait_state(browser, "done", "error") == "done", message(browser)
    # one new picture per token, then the final grid (the download's)
    redraws = browser.execute_script("return window.redraws")
    assert len(redraws) == 17 and len(set(redraws)) == 17
    assert redraws[-1] == browser.find_element(By.ID, "download").get_attribute("href")
    assert browser.find_element(By.ID, "progress").text == "done: 16 tokens"
    command = browser.find_element(By.ID, "command").text
    assert command.startswith("python -m spectralar.generate --classes 5 --num-per-class 6 --tokens 16 --cfg 2.5 ")
    assert download(browser, downloads, "Sandal_seed3.png") == command_png(command, tmp_path)
    loaded = browser.execute_script("return performance.getEntriesByType('resource').map((e) => e.name)")
    assert loaded and all(name.startswith(url + "/") for name in loaded), loaded  # nothing from elsewhere
    shot = os.environ.get("SPECTRALAR_DEMO_SCREENSHOT")
    if shot:
        browser.save_screenshot(shot)


def test_anytime_budget_and_a_bad_value(browser, url):
    """A budget of k tokens redraws k times; a value out of range is a message, and the page works on after it."""
    open_page(browser, url)
    set_value(browser, "tokens", 5)
    set_value(browser, "num", 2)
    set_value(browser, "temperature", 9)
    browser.find_element(By.ID, "sample").click()
    assert wait_state(browser, "done", "error") == "error"
    assert message(browser) == "temperature must be a number from 0.0 to 5.0, got '9'"
    set_value(browser, "temperature", 1)
    browser.find_element(By.ID, "sample").click()
    assert wait_state(browser, "done", "error") == "done", message(browser)
    assert message(browser) == ""
    assert len(browser.execute_script("return window.redraws")) == 5 + 1
    assert browser.find_element(By.ID, "progress").text == "done: 5 tokens"


def test_upload_returns_variations_and_a_bad_upload_a_message(browser, url, downloads, tmp_path):
    image = ROOT / "docs" / "img" / "vary_inputs" / "class7_test9.png"
    open_page(browser, url)
    set_value(browser, "num", 3)
    set_value(browser, "keep", 2)
    browser.find_element(By.ID, "upload").send_keys(str(image))
    Select(browser.find_element(By.ID, "vary-cls")).select_by_visible_text("Sandal")
    browser.find_element(By.ID, "vary").click()
    assert wait_state(browser, "done", "error") == "done", message(browser)
    assert len(browser.execute_script("return window.redraws")) == 16 - 2 + 1  # tokens 1-2 are the image's
    command = browser.find_element(By.ID, "command").text
    assert command.startswith(f"python -m spectralar.vary {image.name} --keep 2 --num 3 --class 5 ")
    assert download(browser, downloads, "class7_test9_keep2_seed0.png") == command_png(command, tmp_path, image)

    notes = tmp_path / "notes.txt"
    notes.write_text("not an image\n")
    browser.find_element(By.ID, "upload").send_keys(str(notes))
    browser.find_element(By.ID, "vary").click()
    assert wait_state(browser, "done", "error") == "error"
    assert message(browser).startswith("notes.txt: not an image this page can read")
    assert browser.find_element(By.ID, "download").is_displayed() is False

    big = tmp_path / "big.png"
    big.write_bytes(image.read_bytes() + bytes(5 * 2**20))  # over the page's 4 MB
    browser.find_element(By.ID, "upload").send_keys(str(big))
    browser.find_element(By.ID, "vary").click()
    assert message(browser) == "big.png is 5.0 MB; the page takes images up to 4 MB"
