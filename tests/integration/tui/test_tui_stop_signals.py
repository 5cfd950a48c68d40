"""`bty tui` and the stop signals: SIGTERM (systemd at poweroff), SIGHUP (a closed SSH session)
and SIGQUIT during a flash cancel it as the Progress screen's confirmed cancel does (the engine
wipes the disk and records the run), then the app exits with 128+N and one line on stderr. The
real command in a Linux-console pty, on a real loop device (root)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pexpect
import pytest
from textual.pilot import Pilot

from bty_live import cli
from bty_live.tui.app import BtyApp, make_app
from tests.conftest import LoopDevice
from tests.imagekit import MiB, looks_blank
from tests.integration.tui.conftest import IMAGE_SIZE as TUI_IMAGE_SIZE
from tests.integration.tui.test_tui_command import spawn_tui
from tests.integration.tui.test_tui_flows import (
    drive,
    fill_with_old_data,
    flash_until_the_stick_stalls,
    stalling_backend,
)
from tests.integration.tui.tui_helpers import HeldSource, RecordedActions, wait_for

#: random data (nothing the engine can zero-fill instead of writing): long enough a write to stop
IMAGE_SIZE = 1024 * MiB


@pytest.fixture(scope="module")
def random_gpt_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    image = tmp_path_factory.mktemp("tui-stop") / "random.img"
    subprocess.run(["dd", "if=/dev/urandom", f"of={image}", "bs=4M", f"count={IMAGE_SIZE // (4 * MiB)}",
                    "status=none"], check=True)
    subprocess.run(["sfdisk", "-q", str(image)], input=b"label: gpt\n,,L\n", check=True, capture_output=True)
    return image


@pytest.fixture
def stop_images(tmp_path: Path, random_gpt_image: Path) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    (images / "random.img").hardlink_to(random_gpt_image)
    assert cli.main(["images", "add", str(images / "random.img")]) == 0
    return images


def has_partition_table(path: str) -> bool:
    return subprocess.run(["sfdisk", "-d", path], capture_output=True).returncode == 0


def confirm_on(child: pexpect.spawn, loop: LoopDevice) -> None:
    """From the Disks screen: Enter on a disk; if the Confirm screen names another disk (a loop
    device of another test), Esc, Down, and try the next one."""
    for _ in range(64):
        child.send("\r")
        child.expect(r"Type (\S+) and press Enter")
        if child.match.group(1).decode() == loop.name:
            return
        child.send("\x1b")
        child.expect("disks can take this image")
        child.send("\x1b[B")  # Down
    raise AssertionError(f"{loop.name} was never offered")


def start_flash(child: pexpect.spawn, loop: LoopDevice) -> None:
    child.expect("random")  # the images list
    child.expect(" Help")
    child.send("\r")
    child.expect("disks can take this image")
    confirm_on(child, loop)
    child.send(loop.name + "\r")  # the name and Enter in one write, as expect or a paste sends them
    try:
        child.expect("Writing")
    except pexpect.TIMEOUT:  # say what the screen showed instead (seen once in CI, never here)
        shown = re.sub(rb"\x1b\[[0-9;?]*[A-Za-z]", b" ", child.before or b"").decode(errors="replace")
        raise AssertionError(f"no 'Writing' after confirming {loop.name}; the screen's last output: "
                             f"{' '.join(shown.split())[-1500:]}") from None


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT], ids=lambda s: s.name)
def test_a_stop_signal_mid_write_cancels_the_flash_wipes_the_disk_records_the_run_and_exits_128_plus_n(
        stop_images: Path, make_loop: Callable[..., LoopDevice], sig: signal.Signals) -> None:
    loop = make_loop(IMAGE_SIZE)
    subprocess.run(["sfdisk", "-q", loop.path], input=b"label: gpt\n,,L\n", check=True, capture_output=True)
    child = spawn_tui(stop_images)
    start_flash(child, loop)
    child.kill(sig)
    child.expect(pexpect.EOF, timeout=120)
    child.close()
    tail = re.sub(r"\x1b\[[0-9;?]*[ -/]*[@-~]", "", child.before.decode(errors="replace"))
    assert child.exitstatus == 128 + sig, tail[-2000:]
    assert re.search(rf"bty tui: stopped by {sig.name}: the flash was cancelled; {loop.path} wiped", tail), tail[-2000:]
    assert not has_partition_table(loop.path)
    [line] = (stop_images / "ledger.jsonl").read_text().splitlines()
    record = json.loads(line)
    assert record["result"] == "failed" and record["disk_path"] == loop.path
    assert record["error_kind"] == "cancelled" and "cancelled" in record["error"]


def test_a_stop_signal_with_no_flash_running_exits_with_128_plus_n_at_once(stop_images: Path) -> None:
    child = spawn_tui(stop_images)
    child.expect(" Help")
    child.kill(signal.SIGTERM)
    child.expect(pexpect.EOF, timeout=30)
    child.close()
    assert child.exitstatus == 143
    assert b"stopped by SIGTERM; no flash was running" in child.before


def test_the_stop_handler_cancels_a_stalled_flash_through_the_engine_and_names_the_signal(
        images_dir: Path, make_loop: Callable[..., LoopDevice], actions: RecordedActions) -> None:
    """The same handler under a pilot, on a flash held mid-image: the run is cancelled (not cut
    short), the disk wiped, and the exit code and the stderr line name the signal."""
    loop = make_loop(TUI_IMAGE_SIZE)
    fill_with_old_data(loop)
    held: list[HeldSource] = []

    async def scenario(app: BtyApp, pilot: Pilot[int]) -> None:
        await flash_until_the_stick_stalls(app, pilot, images_dir, loop, held)
        app.stop_for_signal(signal.SIGHUP)
        app.stop_for_signal(signal.SIGTERM)  # a second signal changes nothing
        await wait_for(pilot, lambda: app.return_code is not None, "the app to exit")

    app = make_app(images_dir=images_dir, actions=actions.as_system_actions(), backend=stalling_backend(held))
    drive(app, scenario)
    assert app.return_code == 129
    assert app.stop_note is not None and app.stop_note.startswith(
        f"bty tui: stopped by SIGHUP: the flash was cancelled; {loop.path} wiped")
    assert looks_blank(loop.path, TUI_IMAGE_SIZE)
