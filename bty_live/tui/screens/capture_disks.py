"""Capture, step 1: the disk to read. Every disk is listed; those the read rules refuse (mounted,
swap, held by dm/md, open for writing, the disk of the images directory) are dimmed, with their
reasons, and cannot be chosen. The list follows hot-plug events while it is open."""

from __future__ import annotations

from collections.abc import Callable

from textual.message import Message

from bty_live.disk.eligibility import Assessed
from bty_live.disk.model import Disk
from bty_live.tui.screens.disk_list import DiskListScreen


class CaptureDisksScreen(DiskListScreen):
    REFUSED = "not capturable"

    class Chosen(Message):
        """The user picked a disk that may be captured."""

        def __init__(self, disk: Disk) -> None:
            super().__init__()
            self.disk = disk

    def __init__(self, assess: Callable[[], list[Assessed]], where: str) -> None:
        super().__init__(assess)
        self.where = where

    def heading(self) -> tuple[str, str]:
        return "Capture", f"the disk to read into {self.where}"

    def status(self, usable: int, total: int) -> str:
        if not usable:
            return "No disk can be captured now (see the reasons): unmount or release it from the shell."
        return f"{usable} of {total} disks can be captured. Reading changes nothing on the disk."

    def chosen(self, item: Assessed) -> None:
        self.post_message(self.Chosen(item.disk))
