"""The operator's web UI in a real browser (headless Chromium driven by selenium) against a real
`bty serve` on 127.0.0.1: log in, see a machine appear when its agent registers, watch its
progress bar move as it reports, assign an image to two machines at once, log out. Every page is
kept as a screenshot at 1280x800 and 390x844 in build/ui-screenshots/ (test artefacts)."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bty_live.events import Event, Kind, Phase
from bty_live.protocol.wire import machine_path
from bty_live.server.runner import ServerThread
from bty_live.server.ui.rows import row_id
from tests.netkit import MAC, api, enrol, inventory, make_config, running_server, served_images

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

ADMIN = "admin-token-fedcba9876543210"
OTHER = "52:54:00:99:99:99"
CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "build" / "ui-screenshots"
SIZES = {"desktop": (1280, 800), "phone": (390, 844)}

pytestmark = pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                                reason="chromium and chromium-driver are not installed (make setup)")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    config = dataclasses.replace(make_config(tmp_path, served_images(tmp_path)), admin_token=ADMIN)
    with running_server(config) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM or ""
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,800", "--force-device-scale-factor=1"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def wait_until(driver: WebDriver, what: str, check: Callable[[WebDriver], object], timeout: float = 15) -> None:
    try:
        WebDriverWait(driver, timeout, poll_frequency=0.1).until(check)
    except TimeoutException:
        raise AssertionError(f"{what} within {timeout:.0f} s; the page shows: "
                             f"{driver.find_element(By.TAG_NAME, 'body').text[:1500]!r}") from None


def screenshots(driver: WebDriver, name: str) -> None:
    """The page as it is now, at both sizes (the live view keeps running while resized)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for size, (width, height) in SIZES.items():
        driver.set_window_size(width, height)
        driver.save_screenshot(str(SCREENSHOTS / f"{name}-{size}.png"))
    driver.set_window_size(*SIZES["desktop"])


def progress_of(driver: WebDriver, mac: str) -> str | None:
    bars = driver.find_elements(By.CSS_SELECTOR, f"#{row_id(mac)} progress")
    return bars[0].get_attribute("value") if bars else None


def report(url: str, credential: str, run_id: str, fraction: float, mac: str = MAC) -> None:
    total = 1 << 30
    event = Event(Phase.WRITE, Kind.PROGRESS, bytes_out=int(total * fraction), total=total, rate=120e6, eta=5.0)
    api(url, "POST", machine_path(mac, "events"), {"run_id": run_id, "events": [event.to_dict()]},
        credential=credential)


def test_an_operator_logs_in_watches_machines_arrive_and_progress_assigns_two_and_logs_out(
        server: ServerThread, browser: WebDriver) -> None:
    browser.delete_all_cookies()
    browser.get(server.url + "/ui/")
    wait_until(browser, "the login form", lambda d: "Log in" in d.title)
    screenshots(browser, "login")
    browser.find_element(By.ID, "token").send_keys(ADMIN)
    browser.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    wait_until(browser, "the machines page", lambda d: d.title.startswith("Machines"))
    assert "No machine has reported yet" in browser.page_source

    # A machine registers: its row appears without a reload (the event stream swaps the table in).
    credential = enrol(server.url)
    wait_until(browser, f"{MAC} appearing", lambda d: d.find_elements(By.ID, row_id(MAC)))
    enrol(server.url, inventory(model="Dell R650", mac=OTHER), mac=OTHER)
    wait_until(browser, f"{OTHER} appearing", lambda d: d.find_elements(By.ID, row_id(OTHER)))

    # Both selected, one image, one selector: two plans.
    for mac in (MAC, OTHER):
        browser.find_element(By.CSS_SELECTOR, f"#{row_id(mac)} input[type=checkbox]").click()
    Select(browser.find_element(By.ID, "action")).select_by_value("flash")
    Select(browser.find_element(By.ID, "image")).select_by_value("demo.img")
    browser.find_element(By.ID, "disk").send_keys("serial=S1")
    browser.find_element(By.CSS_SELECTOR, "#assign button[type=submit]").click()
    wait_until(browser, "the assignment notice", lambda d: "assigned to 2 machine(s)" in d.page_source)
    plans = [server.store.plan(mac) for mac in (MAC, OTHER)]
    assert all(p is not None and p.image == "demo.img" and p.disk == "serial=S1" for p in plans), plans
    run_id = plans[0].run_id if plans[0] else ""

    # The agent reports: the bar moves in place, page not reloaded.
    report(server.url, credential, run_id, 0.25)
    wait_until(browser, "the bar at 25 %", lambda d: progress_of(d, MAC) == "25")
    browser.execute_script("window.btyNotReloaded = true")
    report(server.url, credential, run_id, 0.75)
    wait_until(browser, "the bar at 75 %", lambda d: progress_of(d, MAC) == "75")
    assert browser.execute_script("return window.btyNotReloaded") is True
    assert "120 MB/s" in browser.find_element(By.ID, row_id(MAC)).text
    screenshots(browser, "machines")

    browser.find_element(By.LINK_TEXT, MAC).click()
    wait_until(browser, "the machine page", lambda d: d.title.startswith(MAC))
    assert "QEMU Standard PC" in browser.page_source
    screenshots(browser, "machine")
    browser.find_element(By.LINK_TEXT, "Images").click()
    wait_until(browser, "the images page", lambda d: d.title.startswith("Images"))
    assert "demo.img" in browser.page_source
    screenshots(browser, "images")

    browser.find_element(By.CSS_SELECTOR, "form.logout button").click()
    wait_until(browser, "the login form after logging out", lambda d: "Log in" in d.title)
    browser.get(server.url + "/ui/")
    wait_until(browser, "the login form again", lambda d: "Log in" in d.title)
