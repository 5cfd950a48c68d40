"""Whole flows through the TUI, driven with the keys a person presses, against the real engine
on real loop devices (root). Nothing here waits on time: every wait is for a state."""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
from collections.abc import Callable, Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any

from textual.pilot import Pilot

from bty_live.events import EventSink
from bty_live.flash import engine
from bty_live.flash.plan import FlashPlan
from bty_live.flash.receipt import Receipt
from bty_live.tui.app import BtyApp, make_app
from bty_live.tui.backend import Backend, real_backend
from bty_live.tui.screens import (
    CancelDialog,
    ConfirmScreen,
    DisksScreen,
    DoneScreen,
    ErrorScreen,
    ImagesScreen,
    LogScreen,
    PowerDialog,
    ProgressScreen,
)
from bty_live.tui.widgets import Choices
from tests.conftest import LoopDevice
from tests.imagekit import MiB, compress, device_equals_file, looks_blank, read_device
from tests.integration.tui.conftest import IMAGE_SIZE
from tests.integration.tui.tui_helpers import (
    HeldSource,
    RecordedActions,
    choose,
    move_to,
    screen_text,
    wait_for,
    wait_for_screen,
)

Scenario = Callable[[BtyApp, Pilot[int]], Coroutine[Any, Any, None]]


def drive(app: BtyApp, scenario: Scenario) -> None:
    async def main() -> None:
        async with app.run_test(size=(80, 24)) as pilot:
            await scenario(app, pilot)

    asyncio.run(main())


def fill_with_old_data(loop: LoopDevice) -> None:
    """Make the target look used: random bytes and an old GPT with one partition."""
    subprocess.run(["dd", "if=/dev/urandom", f"of={loop.path}", "bs=1M", "count=4", "oflag=direct", "status=none"],
                   check=True)
    subprocess.run(["sfdisk", "-q", loop.path], input=b"label: gpt\n,,L\n", check=True, capture_output=True)


async def open_disks_for(app: BtyApp, pilot: Pilot[int], image: Path) -> DisksScreen:
    """From the Images screen: highlight `image` with the arrows, Enter, wait for the first scan."""
    images = app.screen
    assert isinstance(images, ImagesScreen)
    choices = images.query_one(Choices)
    await wait_for(pilot, lambda: choices.option_count > 0, "the images list")
    await choose(pilot, choices, str(image))
    await wait_for_screen(pilot, DisksScreen)
    disks = app.screen
    assert isinstance(disks, DisksScreen)
    await wait_for(pilot, lambda: disks.scans > 0, "the first disk scan")
    return disks


async def confirm_target(app: BtyApp, pilot: Pilot[int], disks: DisksScreen, loop: LoopDevice) -> ConfirmScreen:
    await wait_for(pilot, lambda: loop.name in disks.disks, f"{loop.name} in the disks list")
    await choose(pilot, disks.query_one(Choices), loop.name)
    await wait_for_screen(pilot, ConfirmScreen)
    confirm = app.screen
    assert isinstance(confirm, ConfirmScreen)
    return confirm


async def type_and_enter(pilot: Pilot[int], text: str) -> None:
    await pilot.press(*text, "enter")


# -- the happy path --------------------------------------------------------------------------------


def test_arrows_and_enter_flash_an_image_that_verifies_and_the_receipt_is_shown_and_saved(
        images_dir: Path, raw_image: Path, make_loop: Callable[..., LoopDevice], receipts: Path,
        actions: RecordedActions) -> None:
    loop = make_loop(IMAGE_SIZE)  # same size: no GPT fix-up, so the disk must equal the image byte for byte
    fill_with_old_data(loop)

    async def scenario(app: BtyApp, pilot: Pilot[int]) -> None:
        disks = await open_disks_for(app, pilot, images_dir / "demo.img")
        confirm = await confirm_target(app, pilot, disks, loop)
        shown = screen_text(app)
        assert f"Everything on {loop.path} will be destroyed" in shown
        assert f"{loop.name}  gpt partition table" in shown  # the destroy preview: what is there now
        assert "blake3" in shown and "p2 'root'" in shown  # ... and what will be written

        await type_and_enter(pilot, loop.name)
        await wait_for_screen(pilot, DoneScreen, timeout=120)
        assert confirm.plan.disk.path == loop.path
        shown = screen_text(app)
        assert "Flashed and verified" in shown
        assert "stream digest: match; read-back: match" in shown

        await pilot.press("l")  # the log view holds the engine's events
        await wait_for_screen(pilot, LogScreen)
        lines = list(app.log_lines)
        assert any(" write  end " in line for line in lines) and any(" verify end " in line for line in lines)
        await pilot.press("escape")
        await wait_for_screen(pilot, DoneScreen)

        await pilot.press("enter")  # the first next step: flash another image
        await wait_for_screen(pilot, ImagesScreen)
        assert app.return_code is None and actions.calls == []

    drive(make_app(images_dir=images_dir, actions=actions.as_system_actions()), scenario)

    assert device_equals_file(loop.path, raw_image)
    [saved] = receipts.glob("*.json")
    receipt = json.loads(saved.read_text())
    assert receipt["result"] == "ok" and receipt["target_path"] == loop.path
    assert receipt["stream_check"] == "match" and receipt["readback_check"] == "match"


def test_a_wrong_name_at_the_confirmation_writes_nothing_and_esc_goes_back(
        images_dir: Path, make_loop: Callable[..., LoopDevice], actions: RecordedActions) -> None:
    loop = make_loop(IMAGE_SIZE)
    fill_with_old_data(loop)
    before = read_device(loop.path, 0, MiB)

    async def scenario(app: BtyApp, pilot: Pilot[int]) -> None:
        disks = await open_disks_for(app, pilot, images_dir / "demo.img")
        confirm = await confirm_target(app, pilot, disks, loop)
        await type_and_enter(pilot, "sda" if loop.name != "sda" else "sdb")
        await pilot.pause()
        assert app.screen is confirm and not app.flashing
        assert "nothing was written" in screen_text(app)
        await pilot.press("escape")
        await wait_for_screen(pilot, DisksScreen)

    drive(make_app(images_dir=images_dir, actions=actions.as_system_actions()), scenario)
    assert read_device(loop.path, 0, MiB) == before


# -- cancel ----------------------------------------------------------------------------------------


def stalling_backend(held: list[HeldSource]) -> Backend:
    """The real backend, but the image's bytes stop coming after 16 MiB until the flash is
    cancelled: a stick that stalls mid-image, so a test acts "midway" without racing the copy."""

    def flash_from_a_stalling_stick(plan: FlashPlan, sink: EventSink, cancel: threading.Event) -> Receipt:
        source = HeldSource(plan.image.source, hold_after=16 * MiB, release=cancel)
        held.append(source)
        return engine.flash(replace(plan, image=replace(plan.image, source=source)), sink, cancel).receipt

    return replace(real_backend(), flash=flash_from_a_stalling_stick)


async def flash_until_the_stick_stalls(app: BtyApp, pilot: Pilot[int], images_dir: Path, loop: LoopDevice,
                                       held: list[HeldSource]) -> ProgressScreen:
    """Choose demo.img and `loop`, confirm, and wait until data is on the disk and the stick stalls."""
    disks = await open_disks_for(app, pilot, images_dir / "demo.img")
    await confirm_target(app, pilot, disks, loop)
    await type_and_enter(pilot, loop.name)
    await wait_for_screen(pilot, ProgressScreen)
    progress = app.screen
    assert isinstance(progress, ProgressScreen)
    await wait_for(pilot, lambda: bool(held) and held[0].reached.is_set(), "the stalled stick")
    await wait_for(pilot, lambda: progress.progress.written > 0, "bytes written before the stall")
    return progress


def test_cancel_midway_asks_first_and_then_the_engine_stops_and_wipes_the_target(
        images_dir: Path, make_loop: Callable[..., LoopDevice], receipts: Path, actions: RecordedActions) -> None:
    loop = make_loop(IMAGE_SIZE)
    fill_with_old_data(loop)
    held: list[HeldSource] = []

    async def scenario(app: BtyApp, pilot: Pilot[int]) -> None:
        progress = await flash_until_the_stick_stalls(app, pilot, images_dir, loop, held)
        await pilot.press("c")
        await wait_for_screen(pilot, CancelDialog)
        await pilot.press("enter")  # the highlighted answer is "keep flashing"
        await wait_for_screen(pilot, ProgressScreen)
        assert app.flashing and not progress.progress.cancelling

        await pilot.press("ctrl+q")  # quitting mid-flash asks the same question
        await wait_for_screen(pilot, CancelDialog)
        await pilot.press("n")
        await wait_for_screen(pilot, ProgressScreen)
        assert app.flashing and app.return_code is None

        await pilot.press("c")
        await wait_for_screen(pilot, CancelDialog)
        await pilot.press("y")
        await wait_for_screen(pilot, ErrorScreen)
        shown = screen_text(app)
        assert "Cancelled" in shown and f"{loop.path} wiped" in shown
        assert not app.flashing

    drive(make_app(images_dir=images_dir, actions=actions.as_system_actions(), backend=stalling_backend(held)),
          scenario)
    assert looks_blank(loop.path, IMAGE_SIZE)
    [saved] = receipts.glob("*.json")  # a cancelled run leaves a receipt that says so
    receipt = json.loads(saved.read_text())
    assert receipt["result"] == "failed" and "cancelled" in receipt["error"]


def test_quitting_during_a_flash_cancels_it_wipes_the_target_and_exits_with_the_cancelled_code(
        images_dir: Path, make_loop: Callable[..., LoopDevice], actions: RecordedActions) -> None:
    loop = make_loop(IMAGE_SIZE)
    fill_with_old_data(loop)
    held: list[HeldSource] = []

    async def scenario(app: BtyApp, pilot: Pilot[int]) -> None:
        await flash_until_the_stick_stalls(app, pilot, images_dir, loop, held)
        await pilot.press("ctrl+q")
        await wait_for_screen(pilot, CancelDialog)
        await pilot.press("y")
        await wait_for(pilot, lambda: app.return_code is not None, "the app to exit")

    app = make_app(images_dir=images_dir, actions=actions.as_system_actions(), backend=stalling_backend(held))
    drive(app, scenario)
    assert app.return_code == 130
    assert looks_blank(loop.path, IMAGE_SIZE)


# -- failures --------------------------------------------------------------------------------------


def test_a_corrupt_image_lands_on_the_error_screen_and_the_disk_is_never_left_half_written(
        images_dir: Path, make_loop: Callable[..., LoopDevice], actions: RecordedActions) -> None:
    image = compress(images_dir / "demo.img", "zst")
    (images_dir / "demo.img").unlink()
    (images_dir / "demo.img.toml").unlink()
    data = bytearray(image.read_bytes())
    data[len(data) * 3 // 4] ^= 0xFF
    image.write_bytes(bytes(data))
    loop = make_loop(IMAGE_SIZE)
    fill_with_old_data(loop)
    before = read_device(loop.path, 0, MiB)

    async def scenario(app: BtyApp, pilot: Pilot[int]) -> None:
        disks = await open_disks_for(app, pilot, image)
        await wait_for(pilot, lambda: loop.name in disks.disks, f"{loop.name} in the disks list")
        await choose(pilot, disks.query_one(Choices), loop.name)
        # a damaged block header is caught while planning, damaged data while writing
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen | ErrorScreen), "the plan")
        if isinstance(app.screen, ConfirmScreen):
            await type_and_enter(pilot, loop.name)
        await wait_for_screen(pilot, ErrorScreen, timeout=120)
        shown = screen_text(app)
        assert "The image is corrupt or truncated" in shown
        assert "What to do: Copy the image onto the stick again" in shown
        details = app.screen.query_one("#details")
        assert not details.display
        await pilot.press("d")  # details on demand
        await wait_for(pilot, lambda: "`bty flash` exit code: 4" in screen_text(app), "the details")

    drive(make_app(images_dir=images_dir, actions=actions.as_system_actions()), scenario)
    # the stages overlap: the damage is found before or after the first write; never half-written
    assert looks_blank(loop.path, IMAGE_SIZE) or read_device(loop.path, 0, MiB) == before


def test_a_truncated_image_is_refused_when_planned_before_the_confirmation_and_nothing_is_written(
        images_dir: Path, make_loop: Callable[..., LoopDevice], actions: RecordedActions) -> None:
    image = compress(images_dir / "demo.img", "zst")
    image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    loop = make_loop(IMAGE_SIZE)
    fill_with_old_data(loop)
    before = read_device(loop.path, 0, MiB)

    async def scenario(app: BtyApp, pilot: Pilot[int]) -> None:
        disks = await open_disks_for(app, pilot, image)
        await wait_for(pilot, lambda: loop.name in disks.disks, f"{loop.name} in the disks list")
        await choose(pilot, disks.query_one(Choices), loop.name)
        await wait_for_screen(pilot, ErrorScreen)
        assert "truncated" in screen_text(app)
        await pilot.press("enter")  # first next step: choose another disk
        await wait_for_screen(pilot, DisksScreen)

    drive(make_app(images_dir=images_dir, actions=actions.as_system_actions()), scenario)
    assert read_device(loop.path, 0, MiB) == before


# -- the Disks screen ------------------------------------------------------------------------------


def test_ineligible_disks_are_listed_dimmed_with_the_reason_and_cannot_be_chosen(
        images_dir: Path, make_loop: Callable[..., LoopDevice], actions: RecordedActions) -> None:
    read_only = make_loop(IMAGE_SIZE, read_only=True)
    too_small = make_loop(IMAGE_SIZE // 2)

    async def scenario(app: BtyApp, pilot: Pilot[int]) -> None:
        disks = await open_disks_for(app, pilot, images_dir / "demo.img")
        await wait_for(pilot, lambda: {read_only.name, too_small.name} <= disks.disks.keys(), "both loops listed")
        choices = disks.query_one(Choices)
        for loop, reason in ((read_only, "read-only"), (too_small, "too small: 32 MiB < image 64 MiB")):
            option = choices.get_option(loop.name)
            assert option.disabled
            assert f"not eligible: {reason}" in str(option.prompt)
        # the arrows never stop on them...
        for _ in range(choices.option_count + 1):
            assert choices.highlighted_id not in (read_only.name, too_small.name)
            await pilot.press("down")
        # ... and even a highlight forced onto one cannot be chosen
        choices.highlighted = choices.get_option_index(read_only.name)
        await pilot.press("enter")
        await pilot.pause()
        assert app.screen is disks

    drive(make_app(images_dir=images_dir, actions=actions.as_system_actions()), scenario)


def test_a_disk_plugged_in_while_the_disks_screen_is_open_appears_and_can_be_chosen(
        images_dir: Path, make_loop: Callable[..., LoopDevice], actions: RecordedActions) -> None:
    plugged: list[LoopDevice] = []

    async def scenario(app: BtyApp, pilot: Pilot[int]) -> None:
        disks = await open_disks_for(app, pilot, images_dir / "demo.img")
        plugged.append(make_loop(IMAGE_SIZE))  # the hot-plug: nobody presses a key
        loop = plugged[0]
        await wait_for(pilot, lambda: loop.name in disks.disks, f"{loop.name} to appear")
        assert not disks.query_one(Choices).get_option(loop.name).disabled
        confirm = await confirm_target(app, pilot, disks, loop)
        assert confirm.plan.disk.path == loop.path

    drive(make_app(images_dir=images_dir, actions=actions.as_system_actions()), scenario)


# -- what comes after ------------------------------------------------------------------------------


def test_reboot_and_power_off_call_the_injected_actions_and_shell_exits_with_its_own_code(
        images_dir: Path, make_loop: Callable[..., LoopDevice], receipts: Path, actions: RecordedActions) -> None:
    loop = make_loop(IMAGE_SIZE)

    async def scenario(app: BtyApp, pilot: Pilot[int]) -> None:
        disks = await open_disks_for(app, pilot, images_dir / "demo.img")
        await confirm_target(app, pilot, disks, loop)
        await type_and_enter(pilot, loop.name)
        await wait_for_screen(pilot, DoneScreen, timeout=120)
        steps = app.screen.query_one(Choices)
        await move_to(pilot, steps, "reboot")
        await pilot.press("enter")
        await wait_for_screen(pilot, PowerDialog)  # asks first
        await pilot.press("y")
        await wait_for_screen(pilot, DoneScreen)
        await pilot.press("o", "y")
        assert actions.calls == ["reboot", "poweroff"]
        await pilot.press("s")
        await wait_for(pilot, lambda: app.return_code is not None, "the app to exit")

    app = make_app(images_dir=images_dir, actions=actions.as_system_actions())
    drive(app, scenario)
    assert app.return_code == 20  # SHELL_EXIT_CODE: the session wrapper starts a root shell
