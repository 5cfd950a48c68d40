"""The snapshot app: `make_app` on recorded data (no disks, no images, a frozen clock), and how to
bring each screen up. Shared by the snapshot tests, the glyph checks and the screen tests."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from textual.pilot import Pilot

from bty_live.tui.app import BtyApp, make_app
from bty_live.tui.screens import (
    CancelDialog,
    CaptureCancelDialog,
    CaptureConfirmScreen,
    CaptureDisksScreen,
    CaptureDoneScreen,
    CaptureFormScreen,
    CaptureProgressScreen,
    ConfirmScreen,
    DisksScreen,
    DoneScreen,
    ErrorScreen,
    HelpScreen,
    LogScreen,
    PowerDialog,
    ProgressScreen,
)
from bty_live.tui.text import log_line
from tests.integration.tui import recorded
from tests.integration.tui.tui_helpers import RecordedActions, wait_for, wait_for_screen

Setup = Callable[[Pilot[int]], Awaitable[None]]


def snapshot_app() -> BtyApp:
    return make_app(images_dir=recorded.IMAGES_DIR, backend=recorded.recorded_backend(),
                    actions=RecordedActions().as_system_actions(), clock=lambda: recorded.NOW,
                    known_good=lambda entry: entry.name == "debian-12-desktop")


def app_of(pilot: Pilot[int]) -> BtyApp:
    app = pilot.app
    assert isinstance(app, BtyApp)
    return app


async def images(pilot: Pilot[int]) -> None:
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


async def disks(pilot: Pilot[int]) -> None:
    await images(pilot)
    await pilot.press("enter")  # the first image that can be flashed
    await wait_for_screen(pilot, DisksScreen)
    screen = pilot.app.screen
    assert isinstance(screen, DisksScreen)
    await wait_for(pilot, lambda: screen.scans > 0, "the disks")
    await pilot.pause()


async def confirm(pilot: Pilot[int]) -> None:
    await disks(pilot)
    await pilot.press("enter")  # the first eligible disk
    await wait_for_screen(pilot, ConfirmScreen)
    await pilot.press(*"nvme0n1")
    await pilot.pause()


async def progress(pilot: Pilot[int]) -> None:
    await confirm(pilot)
    await pilot.press("enter")
    await wait_for_screen(pilot, ProgressScreen)
    screen = pilot.app.screen
    assert isinstance(screen, ProgressScreen)
    await wait_for(pilot, lambda: screen.progress.done > 0, "the recorded progress")
    await pilot.pause()


async def cancel_dialog(pilot: Pilot[int]) -> None:
    await progress(pilot)
    await pilot.press("c")
    await wait_for_screen(pilot, CancelDialog)
    await pilot.pause()


async def done(pilot: Pilot[int]) -> None:
    await images(pilot)
    pilot.app.push_screen(DoneScreen(recorded.RECEIPT, f"receipt saved to {recorded.RECEIPT_PATH}"))
    await wait_for_screen(pilot, DoneScreen)
    await pilot.pause()


async def power_dialog(pilot: Pilot[int]) -> None:
    await done(pilot)
    await pilot.press("b")
    await wait_for_screen(pilot, PowerDialog)
    await pilot.pause()


def _recorded_log() -> list[str]:
    return [line for event in recorded.finished_events() if (line := log_line(event)) is not None]


async def error(pilot: Pilot[int]) -> None:
    await images(pilot)
    pilot.app.push_screen(ErrorScreen(recorded.digest_error(), _recorded_log()[-6:], can_retry_disk=True))
    await wait_for_screen(pilot, ErrorScreen)
    await pilot.pause()


async def error_details(pilot: Pilot[int]) -> None:
    await error(pilot)
    await pilot.press("d")
    await pilot.pause()
    await pilot.pause()


async def help_screen(pilot: Pilot[int]) -> None:
    await images(pilot)
    await pilot.press("question_mark")
    await wait_for_screen(pilot, HelpScreen)
    await pilot.pause()


async def log_view(pilot: Pilot[int]) -> None:
    await images(pilot)
    app = app_of(pilot)
    app.log_lines.clear()
    app.log_lines.extend(_recorded_log())
    await pilot.press("l")
    await wait_for_screen(pilot, LogScreen)
    await pilot.pause()


async def capture_disks(pilot: Pilot[int]) -> None:
    await images(pilot)
    await pilot.press("c")
    await wait_for_screen(pilot, CaptureDisksScreen)
    screen = pilot.app.screen
    assert isinstance(screen, CaptureDisksScreen)
    await wait_for(pilot, lambda: screen.scans > 0, "the disks")
    await pilot.pause()


async def capture_form(pilot: Pilot[int]) -> None:
    await capture_disks(pilot)
    await pilot.press("enter")  # the first disk that can be captured
    await wait_for_screen(pilot, CaptureFormScreen)
    await pilot.pause()


async def capture_confirm(pilot: Pilot[int]) -> None:
    await capture_form(pilot)
    await pilot.press("enter")
    await wait_for_screen(pilot, CaptureConfirmScreen)
    await pilot.pause()


async def capture_progress(pilot: Pilot[int]) -> None:
    await capture_confirm(pilot)
    await pilot.press("enter")
    await wait_for_screen(pilot, CaptureProgressScreen)
    screen = pilot.app.screen
    assert isinstance(screen, CaptureProgressScreen)
    await wait_for(pilot, lambda: screen.progress.done > 0, "the recorded progress")
    await pilot.pause()


async def capture_cancel(pilot: Pilot[int]) -> None:
    await capture_progress(pilot)
    await pilot.press("escape")
    await wait_for_screen(pilot, CaptureCancelDialog)
    await pilot.pause()


async def capture_done(pilot: Pilot[int]) -> None:
    await images(pilot)
    pilot.app.push_screen(CaptureDoneScreen(recorded.CAPTURE_RESULT))
    await wait_for_screen(pilot, CaptureDoneScreen)
    await pilot.pause()


SCREENS: dict[str, Setup] = {
    "images": images,
    "disks": disks,
    "confirm": confirm,
    "progress": progress,
    "cancel-dialog": cancel_dialog,
    "done": done,
    "power-dialog": power_dialog,
    "error": error,
    "error-details": error_details,
    "help": help_screen,
    "log": log_view,
    "capture-disks": capture_disks,
    "capture-form": capture_form,
    "capture-confirm": capture_confirm,
    "capture-progress": capture_progress,
    "capture-cancel-dialog": capture_cancel,
    "capture-done": capture_done,
}


#: what the Linux console's built-in VGA font can draw: code page 437 (the kernel maps U+2191
#: and friends to its arrow glyphs), which is also what a serial terminal most likely has
CP437 = set(bytes(range(0x20, 0x7F)).decode("ascii")) | set(bytes(range(0x80, 0x100)).decode("cp437")) | set(
    "\u2191\u2193\u2190\u2192")
