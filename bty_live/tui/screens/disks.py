"""Disks: where the chosen image may go. Ineligible disks are shown, dimmed, with the reason,
and cannot be highlighted or chosen. The list follows hot-plug events while it is open."""

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
from bty_live.image.catalog import CatalogEntry
from bty_live.tui.text import DISK_COLUMNS, disk_prompt
from bty_live.tui.widgets import Choices, KeyHints, TitleBar
from bty_live.units import format_size


class DisksScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.pop_screen", "Back", key_display="Esc"),
        Binding("r", "rescan", "Rescan"),
    ]

    class Chosen(Message):
        """The user picked an eligible disk for `entry`."""

        def __init__(self, entry: CatalogEntry, disk: Disk) -> None:
            super().__init__()
            self.entry = entry
            self.disk = disk

    class Scanned(Message):
        def __init__(self, assessed: list[Assessed], problem: str | None) -> None:
            super().__init__()
            self.assessed = assessed
            self.problem = problem

    def __init__(self, entry: CatalogEntry, assess: Callable[[], list[Assessed]]) -> None:
        super().__init__()
        self.entry = entry
        self.assess = assess
        self.disks: dict[str, Assessed] = {}
        #: set by the app while it plans the chosen disk: further choices are ignored meanwhile
        self.planning = False
        #: how many scans have been shown (tests wait on this, not on time)
        self.scans = 0

    def compose(self) -> ComposeResult:
        size = format_size(self.entry.size) if self.entry.size is not None else "size unknown"
        yield TitleBar("Disks", f"for {self.entry.name} ({size})")
        yield Static(DISK_COLUMNS, classes="columns")
        yield Choices(id="disks")
        yield Static("Looking for disks...", id="status")
        yield KeyHints()

    def on_mount(self) -> None:
        self.query_one(Choices).focus()  # now, not once scanned: the key hints are right from the first frame
        self.rescan()

    def on_screen_resume(self) -> None:
        if self.scans:  # back from an error or the confirmation: the disks may have changed
            self.rescan()

    def action_rescan(self) -> None:
        self.rescan()

    def rescan(self) -> None:
        """Discover the disks again (the app calls this on every hot-plug event)."""
        self._scan()

    @work(thread=True, exclusive=True, group="disks")
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
            Option(disk_prompt(item), id=item.disk.name, disabled=not item.eligible) for item in message.assessed
        )
        choices.highlight_id(keep)
        self.scans += 1
        eligible = sum(1 for item in message.assessed if item.eligible)
        if message.problem:
            status = message.problem
        elif not message.assessed:
            status = "No disks found. Plug one in: the list updates by itself."
        elif not eligible:
            status = "No disk can take this image (see the reasons). Plug one in: the list updates by itself."
        else:
            status = f"{eligible} of {len(message.assessed)} disks can take this image. Plugged disks appear here."
        self.query_one("#status", Static).update(status)

    def show_planning(self, planning: bool) -> None:
        self.planning = planning
        if planning:
            self.query_one("#status", Static).update("Reading the image and the disk...")

    @on(OptionList.OptionSelected, "#disks")
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        item = self.disks.get(event.option.id or "")
        if item is None or not item.eligible or self.planning:
            return
        self.post_message(self.Chosen(self.entry, item.disk))
