"""Capture, step 2: the image's name (a safe file name, new in the images directory) and whether
to trim it (capture only up to the end of the last partition)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.content import Content
from textual.message import Message
from textual.screen import Screen
from textual.validation import ValidationResult, Validator
from textual.widgets import Checkbox, Input, Static

from bty_live.disk.model import Disk
from bty_live.tui.capture_name import MAX_NAME, name_problem, output_for
from bty_live.tui.widgets import KeyHints, NameEntry, TitleBar
from bty_live.units import format_size


class ImageName(Validator):
    """A name the captured image can take in `images_dir` (`capture_name.name_problem`)."""

    def __init__(self, images_dir: Path) -> None:
        super().__init__()
        self.images_dir = images_dir

    def validate(self, value: str) -> ValidationResult:
        problem = name_problem(value, self.images_dir)
        return self.failure(problem, value) if problem else self.success()


class NameField(NameEntry):
    """The image's name; Enter goes on."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "submit", "Continue", key_display="Enter"),
    ]


class TrimBox(Checkbox, inherit_bindings=False):
    """The --trim switch, drawn "[X]" / "[ ]" (a dimmed X reads as on over a serial line); Space
    toggles it, Enter goes on as from the name field."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("space", "toggle_button", "Toggle", key_display="Space"),
        Binding("enter", "screen.submit", "Continue", key_display="Enter"),
    ]

    @property
    def _button(self) -> Content:
        return Content(f"[{'X' if self.value else ' '}]")


class CaptureFormScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.pop_screen", "Back", key_display="Esc"),
        Binding("tab", "app.focus_next", "Next field", key_display="Tab"),
        # letters belong to the name field here: help and log stay on function keys
        Binding("f1", "app.help", "Help", key_display="F1"),
        Binding("f2", "app.log", "Log", key_display="F2"),
    ]

    class Submitted(Message):
        """Plan capturing `disk` into `output`."""

        def __init__(self, disk: Disk, output: Path, trim: bool) -> None:
            super().__init__()
            self.disk = disk
            self.output = output
            self.trim = trim

    def __init__(self, disk: Disk, images_dir: Path, default_name: str) -> None:
        super().__init__()
        self.disk = disk
        self.images_dir = images_dir
        self.default_name = default_name
        #: set by the app while it plans: further submits are ignored meanwhile
        self.planning = False

    def compose(self) -> ComposeResult:
        disk = self.disk
        model = " ".join(part for part in (disk.vendor, disk.model) if part)
        ids = "  ".join(x for x in (model, f"serial {disk.serial}" if disk.serial else "") if x)
        table = f"{disk.pttype} partition table" if disk.pttype else "no partition table"
        yield TitleBar("Capture", f"{disk.path} -> {self.images_dir}")
        yield Static(f"Disk: {disk.path}  {ids or 'no model or serial'}  {format_size(disk.size)}, {table}",
                     id="disk")
        yield Static("Name of the image (letters, digits, . _ -; ^u clears it):", id="prompt")
        yield NameField(self.default_name, id="name", max_length=MAX_NAME,
                        validators=[ImageName(self.images_dir)], validate_on=["changed", "submitted"])
        yield Static("", id="file")
        yield TrimBox("Trim: capture only up to the end of the last partition", value=bool(disk.pttype),
                      id="trim")
        yield Static("", id="hint")
        yield KeyHints()

    def on_mount(self) -> None:
        self._show_name(self.query_one("#name", Input).value)

    @on(Input.Changed, "#name")
    def _changed(self, event: Input.Changed) -> None:
        self._show_name(event.value)

    def _show_name(self, value: str) -> None:
        problem = name_problem(value, self.images_dir)
        self.query_one("#file", Static).update(
            f"File: {output_for(self.images_dir, value)} (+ .toml manifest)" if value.strip() else "File: -")
        self.query_one("#hint", Static).update(problem or "")

    @on(Input.Submitted, "#name")
    def _submitted(self, event: Input.Submitted) -> None:
        """The name as it was when Enter reached the field (the event's value, not the widget's now)."""
        event.stop()
        self.submit(event.value)

    def action_submit(self) -> None:
        self.submit(self.query_one("#name", Input).value)

    def submit(self, value: str) -> None:
        if self.planning:
            return
        problem = name_problem(value, self.images_dir)
        if problem:
            self.query_one("#hint", Static).update(problem)
            self.query_one("#name", Input).focus()
            return
        trim = self.query_one("#trim", Checkbox).value
        self.post_message(self.Submitted(self.disk, output_for(self.images_dir, value), trim))

    def show_planning(self, planning: bool) -> None:
        self.planning = planning
        self.query_one("#hint", Static).update(
            f"Reading {self.disk.path}: its partition table, filesystems and size..." if planning else "")
