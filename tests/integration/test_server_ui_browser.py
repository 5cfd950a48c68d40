"""The operator's web UI in a real browser (headless Chromium driven by selenium) against a real
`bty serve` on 127.0.0.1 and a real `bty agent` flashing a loop device: log in, see the machine
appear when its agent registers, assign an image to two machines at once, watch the bar move
during the agent's flash, see done and the receipt, log out. Every page is kept as a screenshot
at 1280x800 and 390x844 in build/ui-screenshots/ (test artefacts).

The agent's download passes a proxy that holds it to a few MB/s, so the flash lasts long enough
(a few seconds) for the live view to show it on its way, as a real network would."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bty_live import cli
from bty_live.agent.api import ServerApi
from bty_live.agent.runner import Agent, AgentConfig, AgentOutcome, AgentState, Effects
from bty_live.server.runner import ServerThread
from bty_live.server.ui.rows import row_id
from tests.browserkit import (
    MISSING,
    assign,
    chromium,
    log_in,
    row_text,
    screenshots,
    tick,
    ticked,
    wait_until,
    watch_until,
)
from tests.conftest import LoopDevice
from tests.imagekit import MiB, build_gpt_image, compress, device_equals_file
from tests.netkit import MAC, TOKEN, CutProxy, enrol, inventory, make_config, running_server

pytestmark = [pytest.mark.skipif(MISSING is not None, reason=MISSING or ""), pytest.mark.root]

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402

ADMIN = "admin-token-fedcba9876543210"
OTHER = "52:54:00:99:99:99"
IMAGE_SIZE = 128 * MiB
#: random (incompressible) file bytes in the image: the write progresses in 8 MiB buffers, so
#: this spreads the download's time over several of them
FILES = 24 * MiB
#: bytes per second of the image download: the image (about 27 MB compressed) takes ~4.5 s
DOWNLOAD_RATE = 6e6


@pytest.fixture(scope="module")
def raw_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_gpt_image(tmp_path_factory.mktemp("img") / "disk.img", IMAGE_SIZE, files_bytes=FILES)


@pytest.fixture
def server(tmp_path: Path, raw_image: Path) -> Iterator[ServerThread]:
    images = tmp_path / "images"
    images.mkdir()
    served = compress(raw_image, "zst", images / "disk.img.zst")
    assert cli.main(["images", "add", str(served)]) == 0
    config = dataclasses.replace(make_config(tmp_path, images, poll=0.2), admin_token=ADMIN)
    with running_server(config) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    with chromium() as driver:
        yield driver


class AgentThread(threading.Thread):
    """A real `bty agent` (the runner the netboot system starts) in a thread: it registers, waits
    for a plan, flashes, reports; its reboot is only counted."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.reboots = 0
        self.lines: list[str] = []
        self.outcome: AgentOutcome | BaseException | None = None
        config = AgentConfig(mac=MAC, token=TOKEN, wait_limit=60.0, event_interval=0.1)
        self.agent = Agent(ServerApi(url, TOKEN), config,
                           Effects(reboot=self._reboot, say=self.lines.append, sleep=time.sleep))

    def _reboot(self) -> None:
        self.reboots += 1

    def run(self) -> None:
        try:
            self.outcome = self.agent.run()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.outcome = exc


def test_an_operator_assigns_two_machines_watches_a_real_agent_flash_and_sees_the_receipt(
        server: ServerThread, browser: WebDriver, raw_image: Path, make_loop: Callable[..., LoopDevice]) -> None:
    loop = make_loop(IMAGE_SIZE)
    proxy = CutProxy(server.socket.getsockname()[:2], rate=DOWNLOAD_RATE)
    browser.delete_all_cookies()
    browser.get(server.url + "/ui/")
    wait_until(browser, "the login form", lambda d: "Log in" in d.title)
    screenshots(browser, "login")
    log_in(browser, server.url, ADMIN)
    assert "No machine has reported yet" in browser.page_source

    # The agent registers and waits for a plan: its row appears without a reload.
    agent = AgentThread(proxy.url)
    agent.start()
    wait_until(browser, f"{MAC} appearing", lambda d: d.find_elements(By.ID, row_id(MAC)))
    enrol(server.url, inventory(model="Dell R650", mac=OTHER), mac=OTHER)
    wait_until(browser, f"{OTHER} appearing", lambda d: d.find_elements(By.ID, row_id(OTHER)))

    # A tick survives the row's live redraws (the waiting agent's "last seen" changes every second).
    tick(browser, MAC)
    before = row_text(browser, MAC)
    wait_until(browser, "a redraw of the waiting agent's row", lambda d: row_text(d, MAC) != before)
    assert ticked(browser, MAC), "a live redraw of the row dropped the operator's tick"

    # Both ticked, one image, one selector: two plans; the agent takes its own at its next question.
    tick(browser, OTHER)
    assign(browser, "disk.img.zst", f"path={loop.path}", machines=2)
    plans = [server.store.plan(mac) for mac in (MAC, OTHER)]
    assert all(p is not None and p.image == "disk.img.zst" and p.disk == f"path={loop.path}" for p in plans), plans
    browser.execute_script("window.btyNotReloaded = true")  # from here on, every change comes live

    seen = watch_until(browser, MAC, {"done", "failed"}, timeout=120)
    agent.join(timeout=60)
    assert agent.outcome is not None and not isinstance(agent.outcome, BaseException), agent.outcome
    assert agent.outcome.state == AgentState.REBOOT and agent.reboots == 1, (agent.outcome, agent.lines)
    assert browser.find_element(By.CSS_SELECTOR, f"#{row_id(MAC)} .status").text == "done"
    moving = [v for v in seen if 0 < v < 100]
    assert len(moving) >= 2 and moving == sorted(moving), f"the bar did not move in steps: {seen}"
    assert browser.execute_script("return window.btyNotReloaded") is True  # all of it live, in place
    assert device_equals_file(loop.path, raw_image)
    screenshots(browser, "machines")

    # The machine's page: the receipt (stream and read-back checks) and the ledger's record.
    browser.find_element(By.LINK_TEXT, MAC).click()
    wait_until(browser, "the machine page", lambda d: d.title.startswith(MAC))
    receipt = browser.find_element(By.CSS_SELECTOR, "table.receipts tbody tr").text
    assert "ok" in receipt and "match / match" in receipt and loop.path in receipt, receipt
    ledger = browser.find_element(By.CSS_SELECTOR, "ul.ledger").text
    assert "disk: passed (known-good)" in ledger, ledger
    machine = server.store.machine(MAC)
    assert machine is not None and machine.model in browser.page_source  # this host's own DMI
    screenshots(browser, "machine")

    # The images page: the model the agent ran on is now known-good for this image.
    browser.find_element(By.LINK_TEXT, "Images").click()
    wait_until(browser, "the images page", lambda d: d.title.startswith("Images"))
    assert f"{machine.model}: known-good (1 passed)" in browser.find_element(By.TAG_NAME, "main").text
    screenshots(browser, "images")

    browser.find_element(By.CSS_SELECTOR, "form.logout button").click()
    wait_until(browser, "the login form after logging out", lambda d: "Log in" in d.title)
    browser.get(server.url + "/ui/")
    wait_until(browser, "the login form again", lambda d: "Log in" in d.title)
    proxy.close()
