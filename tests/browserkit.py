"""A real browser for the operator's UI: headless Chromium (Debian's chromium + chromium-driver)
driven by selenium, with the waits and screenshots the browser tests share (the loopback test in
tests/integration and the netboot run in QEMU in tests/e2e)."""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait

from bty_live.server.ui.rows import row_id

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
MISSING = None if CHROMIUM and CHROMEDRIVER else "chromium and chromium-driver are not installed (make setup)"
SCREENSHOTS = Path(__file__).resolve().parents[1] / "build" / "ui-screenshots"
SIZES = {"desktop": (1280, 800), "phone": (390, 844)}
T = TypeVar("T")


@contextlib.contextmanager
def chromium() -> Iterator[WebDriver]:
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
    """Poll `check` until it is true. The event stream swaps rows in whole, so an element read a
    moment ago may be gone (stale): that poll is simply tried again."""
    try:
        WebDriverWait(driver, timeout, poll_frequency=0.1,
                      ignored_exceptions=[StaleElementReferenceException]).until(check)
    except TimeoutException:
        raise AssertionError(f"{what} within {timeout:.0f} s; the page shows: "
                             f"{driver.find_element(By.TAG_NAME, 'body').text[:1500]!r}") from None


def screenshots(driver: WebDriver, name: str, directory: Path = SCREENSHOTS) -> None:
    """The page as it is now, at both sizes (the live view keeps running while resized)."""
    directory.mkdir(parents=True, exist_ok=True)
    for size, (width, height) in SIZES.items():
        driver.set_window_size(width, height)
        driver.save_screenshot(str(directory / f"{name}-{size}.png"))
    driver.set_window_size(*SIZES["desktop"])


def log_in(driver: WebDriver, url: str, token: str) -> None:
    driver.delete_all_cookies()
    driver.get(url + "/ui/")
    wait_until(driver, "the login form", lambda d: "Log in" in d.title)
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    wait_until(driver, "the machines page", lambda d: d.title.startswith("Machines"))


def fresh(read: Callable[[], T]) -> T:
    """`read()`, again when a row was swapped in while it ran (a stale element)."""
    for _ in range(20):
        try:
            return read()
        except StaleElementReferenceException:
            time.sleep(0.05)
    return read()


def tick(driver: WebDriver, mac: str) -> None:
    fresh(lambda: driver.find_element(By.CSS_SELECTOR, f"#{row_id(mac)} input[type=checkbox]").click())


def ticked(driver: WebDriver, mac: str) -> bool:
    return fresh(lambda: driver.find_element(By.CSS_SELECTOR, f"#{row_id(mac)} input[type=checkbox]").is_selected())


def assign(driver: WebDriver, image: str, disk: str, machines: int) -> None:
    """On the machines page: flash `image` onto `disk` on the ticked machines, and see the server
    say it assigned that many."""
    Select(driver.find_element(By.ID, "action")).select_by_value("flash")
    Select(driver.find_element(By.ID, "image")).select_by_value(image)
    driver.find_element(By.ID, "disk").send_keys(disk)
    driver.find_element(By.CSS_SELECTOR, "#assign button[type=submit]").click()
    wait_until(driver, "the assignment notice", lambda d: f"assigned to {machines} machine(s)" in d.page_source)


def row_text(driver: WebDriver, mac: str) -> str:
    def read() -> str:
        rows = driver.find_elements(By.ID, row_id(mac))
        return rows[0].text if rows else ""
    return fresh(read)


def status_of(driver: WebDriver, mac: str) -> str:
    def read() -> str:
        found = driver.find_elements(By.CSS_SELECTOR, f"#{row_id(mac)} .status")
        return found[0].text if found else ""
    return fresh(read)


def progress_of(driver: WebDriver, mac: str) -> int | None:
    """The value of the row's progress bar (percent), None when it has none."""
    bars = driver.find_elements(By.CSS_SELECTOR, f"#{row_id(mac)} progress")
    value = bars[0].get_attribute("value") if bars else None
    return int(float(value)) if value else None


def watch_until(driver: WebDriver, mac: str, statuses: set[str], timeout: float) -> list[int]:
    """Watch the row of `mac` until its status is one of `statuses`; returns every bar value seen
    on the way, in order, without repeats. Rows are swapped in whole by the event stream, so an
    element read may be gone the next moment (stale): it is read again."""
    seen: list[int] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = progress_of(driver, mac)
            status = status_of(driver, mac)
        except StaleElementReferenceException:
            continue
        if value is not None and (not seen or seen[-1] != value):
            seen.append(value)
        if status in statuses:
            return seen
        time.sleep(0.05)
    raise AssertionError(f"the row of {mac} did not reach {sorted(statuses)} within {timeout:.0f} s; it shows "
                         f"{row_text(driver, mac)!r}; bar values seen: {seen}")
