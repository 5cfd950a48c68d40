"""Capture, step 3: what will be read and written, and whether the images directory has room
(the capture's space rule: refused below what the disk's filesystems hold, a warning below the
worst case). Enter starts the capture; nothing on the disk changes, so no name is typed."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Static

from bty_live.capture.plan import CapturePlan
from bty_live.tui.backend import CaptureDraft
from bty_live.tui.capture_text import capture_preview, capture_route
from bty_live.tui.widgets import KeyHints, TitleBar


class CaptureConfirmScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "capture", "Capture", key_display="Enter"),
        Binding("escape", "app.pop_screen", "Back", key_display="Esc"),
    ]

    class Confirmed(Message):
        """Capture per `plan`."""

        def __init__(self, plan: CapturePlan) -> None:
            super().__init__()
            self.plan = plan

    def __init__(self, draft: CaptureDraft) -> None:
        super().__init__()
        self.draft = draft
        #: set when a hot-plug event says the disk changed after it was planned
        self.stale = False

    @property
    def plan(self) -> CapturePlan:
        return self.draft.plan

    def compose(self) -> ComposeResult:
        yield TitleBar("Capture", capture_route(self.plan))
        with VerticalScroll(id="preview"):
            yield Static(capture_preview(self.plan, self.draft.no_room))
        yield Static(self._prompt(), id="prompt")
        yield KeyHints()

    def _prompt(self) -> str:
        if self.draft.no_room is not None:
            return "Nothing can be captured into this directory now: press Esc to go back."
        return f"Press Enter to start reading {self.plan.disk.path}, Esc to go back."

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """No capture while the space rule refuses it or the disk changed: the key is shown dimmed."""
        if action == "capture" and (self.draft.no_room is not None or self.stale):
            return None
        return True

    def disk_changed(self) -> None:
        """The app saw a hot-plug event for this disk: what was planned may be wrong now."""
        self.stale = True
        self.query_one("#prompt", Static).update(
            f"{self.plan.disk.path} changed after it was chosen: press Esc and choose it again.")
        self.refresh_bindings()

    def action_capture(self) -> None:
        if self.draft.no_room is None and not self.stale:
            self.post_message(self.Confirmed(self.plan))
