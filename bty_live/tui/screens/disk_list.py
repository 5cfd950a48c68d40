"""What the disks screens share: a list of every disk, judged by a set of rules, that follows
hot-plug events. Refused disks are dimmed, with their reasons, and cannot be chosen; the flash's
Disks screen and the capture's disk screen differ only in their rules, words and choice."""

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
from bty_live.errors import BtyError
from bty_live.tui.text import DISK_COLUMNS, disk_prompt
from bty_live.tui.widgets import Choices, KeyHints, TitleBar


class DiskListScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.pop_screen", "Back", key_display="Esc"),
        Binding("r", "rescan", "Rescan"),
    ]
    #: what a dimmed disk's line says before its reasons
    REFUSED: ClassVar[str] = "not eligible"

    class Scanned(Message):
        def __init__(self, assessed: list[Assessed], problem: str | None) -> None:
            super().__init__()
            self.assessed = assessed
            self.problem = problem

    def __init__(self, assess: Callable[[], list[Assessed]]) -> None:
        super().__init__()
        self.assess = assess
        self.disks: dict[str, Assessed] = {}
        #: how many scans have been shown (tests wait on this, not on time)
        self.scans = 0

    def compose(self) -> ComposeResult:
        yield TitleBar(*self.heading())
        yield Static(DISK_COLUMNS, classes="columns")
        yield Choices(id="disks")
        yield Static("Looking for disks...", id="status")
        yield KeyHints()

    def heading(self) -> tuple[str, str]:
        """The title bar: the screen's name and what the disk is for."""
        raise NotImplementedError

    def on_mount(self) -> None:
        self.query_one(Choices).focus()  # now, not once scanned: the key hints are right from the first frame
        self.rescan()

    def on_screen_resume(self) -> None:
        if self.scans:  # back from an error, a form or the confirmation: the disks may have changed
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
            Option(disk_prompt(item, refused=self.REFUSED), id=item.disk.name, disabled=not item.eligible)
            for item in message.assessed
        )
        choices.highlight_id(keep)
        self.scans += 1
        usable = sum(1 for item in message.assessed if item.eligible)
        if message.problem:
            status = message.problem
        elif not message.assessed:
            status = "No disks found. Plug one in: the list updates by itself."
        else:
            status = self.status(usable, len(message.assessed))
        self.query_one("#status", Static).update(status)

    def status(self, usable: int, total: int) -> str:
        """The status line once disks were found, `usable` of them allowed."""
        raise NotImplementedError

    @on(OptionList.OptionSelected, "#disks")
    def _selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        item = self.disks.get(event.option.id or "")
        if item is not None and item.eligible:
            self.chosen(item)

    def chosen(self, item: Assessed) -> None:
        """The user picked an allowed disk."""
        raise NotImplementedError
