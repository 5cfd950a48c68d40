"""Messages that travel up to the app from more than one screen, or from its workers."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from textual.message import Message

from bty_live.disk.hotplug import DiskEvent
from bty_live.events import Event
from bty_live.flash.plan import FlashPlan
from bty_live.flash.receipt import Receipt
from bty_live.image.catalog import CatalogEntry

if TYPE_CHECKING:
    from bty_live.capture.engine import CaptureResult
    from bty_live.tui.backend import CaptureDraft


class NextStep(StrEnum):
    """What the Done and Error screens offer."""

    ANOTHER_IMAGE = "another-image"
    ANOTHER_DISK = "another-disk"
    DETAILS = "details"
    REBOOT = "reboot"
    POWEROFF = "poweroff"
    SHELL = "shell"
    #: after a capture: flash the new image (its Disks screen), or choose a disk to capture again
    FLASH_CAPTURED = "flash-captured"
    CAPTURE_DISK = "capture-disk"


class StepChosen(Message):
    def __init__(self, step: NextStep) -> None:
        super().__init__()
        self.step = step


class FlashEvent(Message):
    """One engine event, posted from the flash or capture worker's thread (already throttled)."""

    def __init__(self, event: Event) -> None:
        super().__init__()
        self.event = event


class FlashFinished(Message):
    """The worker's outcome: a receipt (and where it was saved), or the exception that ended it."""

    def __init__(self, receipt: Receipt | None, error: BaseException | None, saved_to: str | None = None,
                 save_error: str | None = None) -> None:
        super().__init__()
        self.receipt = receipt
        self.error = error
        self.saved_to = saved_to
        self.save_error = save_error


class Planned(Message):
    """The plan worker's outcome: the plan and the target's contents, or why there is none."""

    def __init__(self, plan: FlashPlan | None, contents: list[str], error: BaseException | None) -> None:
        super().__init__()
        self.plan = plan
        self.contents = contents
        self.error = error


class DiskHotplug(Message):
    """A disk appeared, vanished or changed (posted from the watcher's thread)."""

    def __init__(self, event: DiskEvent) -> None:
        super().__init__()
        self.event = event


class CapturePlanned(Message):
    """The capture planner's outcome: the draft the confirmation shows, or why there is none."""

    def __init__(self, draft: CaptureDraft | None, error: BaseException | None) -> None:
        super().__init__()
        self.draft = draft
        self.error = error


class CaptureFinished(Message):
    """The capture worker's outcome: the image, its manifest and receipt, or what ended it."""

    def __init__(self, result: CaptureResult | None, error: BaseException | None) -> None:
        super().__init__()
        self.result = result
        self.error = error


class CapturedListed(Message):
    """The image a capture made, as the catalog lists it ("Flash it now"), or why it cannot be flashed."""

    def __init__(self, output: Path, entry: CatalogEntry | None, problem: str | None) -> None:
        super().__init__()
        self.output = output
        self.entry = entry
        self.problem = problem
