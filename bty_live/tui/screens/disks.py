"""Disks: where the chosen image may go. Ineligible disks are shown, dimmed, with the reason,
and cannot be highlighted or chosen. The list follows hot-plug events while it is open."""

from __future__ import annotations

from collections.abc import Callable

from textual.message import Message
from textual.widgets import Static

from bty_live.disk.eligibility import Assessed
from bty_live.disk.model import Disk
from bty_live.image.catalog import CatalogEntry
from bty_live.tui.screens.disk_list import DiskListScreen
from bty_live.units import format_size


class DisksScreen(DiskListScreen):
    class Chosen(Message):
        """The user picked an eligible disk for `entry`."""

        def __init__(self, entry: CatalogEntry, disk: Disk) -> None:
            super().__init__()
            self.entry = entry
            self.disk = disk

    def __init__(self, entry: CatalogEntry, assess: Callable[[], list[Assessed]]) -> None:
        super().__init__(assess)
        self.entry = entry
        #: set by the app while it plans the chosen disk: further choices are ignored meanwhile
        self.planning = False

    def heading(self) -> tuple[str, str]:
        size = format_size(self.entry.size) if self.entry.size is not None else "size unknown"
        return "Disks", f"for {self.entry.name} ({size})"

    def status(self, usable: int, total: int) -> str:
        if not usable:
            return "No disk can take this image (see the reasons). Plug one in: the list updates by itself."
        return f"{usable} of {total} disks can take this image. Plugged disks appear here."

    def show_planning(self, planning: bool) -> None:
        self.planning = planning
        if planning:
            self.query_one("#status", Static).update("Reading the image and the disk...")

    def chosen(self, item: Assessed) -> None:
        if not self.planning:
            self.post_message(self.Chosen(self.entry, item.disk))
