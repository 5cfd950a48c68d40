"""Capture, step 1: the disk to read. Every disk is listed; those the read rules refuse (mounted,
swap, held by dm/md, open for writing, the disk of the images directory) are dimmed, with their
reasons, and cannot be chosen. The list follows hot-plug events while it is open."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.screen import Screen
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from bty_live.disk.eligibility import Assessed
from bty_live.disk.model import Disk
from bty_live.errors import BtyError
from bty_live.tui.text import DISK_COLUMNS, disk_prompt
from bty_live.tui.widgets import Choices, KeyHints, TitleBar


class CaptureDisksScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.pop_screen", "Back", key_display="Esc"),
        Binding("r", "rescan", "Rescan"),
    ]

    class Chosen(Message):
        """The user picked a disk that may be captured."""

        def __init__(self, disk: Disk) -> None:
            super().__init__()
            self.disk = disk

    class Scanned(Message):
        def __init__(self, assessed: list[Assessed], problem: str | None) -> None:
            super().__init__()
            self.assessed = assessed
            self.problem = problem

    def __init__(self, assess: Callable[[], list[Assessed]], where: str) -> None:
        super().__init__()
        self.assess = assess
        self.where = where
        self.disks: dict[str, Assessed] = {}
        #: how many scans have been shown (tests wait on this, not on time)
        self.scans = 0

    def compose(self) -> ComposeResult:
        yield TitleBar("Capture", f"the disk to read into {self.where}")
        yield Static(DISK_COLUMNS, classes="columns")
        yield Choices(id="disks")
        yield Static("Looking for disks...", id="status")
        yield KeyHints()

    def on_mount(self) -> None:
        self.query_one(Choices).focus()
        self.rescan()

    def on_screen_resume(self) -> None:
        if self.scans:  # back from the form or an error: the disks may have changed
            self.rescan()

    def action_rescan(self) -> None:
        self.rescan()

    def rescan(self) -> None:
        """Discover the disks again (the app calls this on every hot-plug event)."""
        self._scan()

    @work(thread=True, exclusive=True, group="capture-disks")
    def _scan(self) -> None:
        try:
            assessed = self.assess()
        except BtyError as exc:
            self.post_message(self.Scanned([], str(exc)))
            return
        self.post_message(self.Scanned(assessed, None))

    @on(Scanned)
    def _show(self, message: Scanned) -> None:
        choices = self.query_one(Choices)
        keep = choices.highlighted_id
        self.disks = {item.disk.name: item for item in message.assessed}
        choices.set_options(
            Option(disk_prompt(item, refused="not capturable"), id=item.disk.name, disabled=not item.eligible)
            for item in message.assessed
        )
        choices.highlight_id(keep)
        self.scans += 1
        readable = sum(1 for item in message.assessed if item.eligible)
        if message.problem:
            status = message.problem
        elif not message.assessed:
            status = "No disks found. Plug one in: the list updates by itself."
        elif not readable:
            status = "No disk can be captured now (see the reasons): unmount or release it from the shell."
        else:
            status = (f"{readable} of {len(message.assessed)} disks can be captured. Reading changes "
                      "nothing on the disk.")
        self.query_one("#status", Static).update(status)

    @on(OptionList.OptionSelected, "#disks")
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        item = self.disks.get(event.option.id or "")
        if item is not None and item.eligible:
            self.post_message(self.Chosen(item.disk))
