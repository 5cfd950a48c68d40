"""Confirm: the destroy preview, then the user types the disk's short name to go on."""

from __future__ import annotations

from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Input, Static

from bty_live.flash.plan import FlashPlan
from bty_live.tui.text import confirm_prompt, destroy_preview
from bty_live.tui.widgets import KeyHints, NameEntry, TitleBar


class NameInput(NameEntry):
    """The disk's name, typed to confirm; Enter erases and writes."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "submit", "Erase and write", key_display="Enter"),
    ]


class ConfirmScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.pop_screen", "Back", key_display="Esc"),
        # ? and l are letters of the name field here: help and log stay on function keys
        Binding("f1", "app.help", "Help", key_display="F1"),
        Binding("f2", "app.log", "Log", key_display="F2"),
    ]

    class Confirmed(Message):
        """The user typed the disk's name: flash `plan`."""

        def __init__(self, plan: FlashPlan) -> None:
            super().__init__()
            self.plan = plan

    def __init__(self, plan: FlashPlan, contents: list[str]) -> None:
        super().__init__()
        self.plan = plan
        self.contents = contents
        #: set when a hot-plug event says the disk changed after it was planned
        self.stale = False

    def compose(self) -> ComposeResult:
        yield TitleBar("Confirm", f"{self.plan.image.name} -> {self.plan.disk.path}")
        with VerticalScroll(id="preview"):
            yield Static(destroy_preview(self.plan, self.contents))
        yield Static(confirm_prompt(self.plan), id="prompt")
        yield NameInput(id="name", max_length=64)
        yield Static("", id="hint")
        yield KeyHints()

    def disk_changed(self) -> None:
        """The app saw a hot-plug event for this disk: what was previewed may be wrong now."""
        self.stale = True
        self.query_one("#hint", Static).update(
            f"{self.plan.disk.path} changed after it was chosen: press Esc and choose it again.")

    @on(Input.Submitted, "#name")
    def _submitted(self, event: Input.Submitted) -> None:
        """The name as it was when Enter reached the field (the event's value, not the widget's now)."""
        event.stop()
        self.check_name(event.value)

    def check_name(self, value: str) -> None:
        name_input = self.query_one("#name", Input)
        typed = value.strip()
        hint = self.query_one("#hint", Static)
        if self.stale:
            return
        if typed != self.plan.disk.name:
            hint.update(f"That is not {self.plan.disk.name!r}: nothing was written. Type {self.plan.disk.name} "
                        "exactly, or press Esc to go back.")
            name_input.value = ""
            return
        hint.update("")
        self.post_message(self.Confirmed(self.plan))
