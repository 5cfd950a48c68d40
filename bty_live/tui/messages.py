"""Messages that travel up to the app from more than one screen, or from its workers."""

from __future__ import annotations

from enum import StrEnum

from textual.message import Message

from bty_live.disk.hotplug import DiskEvent
from bty_live.events import Event
from bty_live.flash.plan import FlashPlan
from bty_live.flash.receipt import Receipt


class NextStep(StrEnum):
    """What the Done and Error screens offer."""

    ANOTHER_IMAGE = "another-image"
    ANOTHER_DISK = "another-disk"
    DETAILS = "details"
    REBOOT = "reboot"
    POWEROFF = "poweroff"
    SHELL = "shell"


class StepChosen(Message):
    def __init__(self, step: NextStep) -> None:
        super().__init__()
        self.step = step


class FlashEvent(Message):
    """One engine event, posted from the flash worker's thread (already throttled)."""

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
