"""Capture, done: the image file, its size, blake3 and manifest; flash it now, or back to the list."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.widgets import Static
from textual.widgets.option_list import Option

from bty_live.tui.capture_text import capture_summary
from bty_live.tui.messages import NextStep
from bty_live.tui.screens.next_steps import NextStepsScreen
from bty_live.tui.widgets import ActionChoices, KeyHints, TitleBar

if TYPE_CHECKING:
    from bty_live.capture.engine import CaptureResult

CAPTURE_DONE_STEPS = (
    (NextStep.FLASH_CAPTURED, "Flash it now: choose the disk to write it to"),
    (NextStep.ANOTHER_IMAGE, "Back to images"),
    (NextStep.SHELL, "Open a shell"),
)


class CaptureDoneScreen(NextStepsScreen):
    TEXT_ID = "receipt"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("f", "step('flash-captured')", "Flash it"),
        Binding("i,escape", "step('another-image')", "Images", key_display="i"),
        Binding("s", "step('shell')", "Shell"),
    ]

    def __init__(self, result: CaptureResult) -> None:
        super().__init__()
        self.result = result

    def compose(self) -> ComposeResult:
        receipt = self.result.receipt
        yield TitleBar("Captured", f"{receipt.disk_path} -> {receipt.image_name}")
        with VerticalScroll(id="receipt"):
            yield Static(capture_summary(receipt, self.result.manifest))
        yield ActionChoices(*(Option(label, id=step) for step, label in CAPTURE_DONE_STEPS), id="steps")
        yield KeyHints()

    def on_mount(self) -> None:
        self.query_one(ActionChoices).focus()
