"""Done: the receipt, and what to do next."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.widgets import Static
from textual.widgets.option_list import Option

from bty_live.flash.receipt import Receipt
from bty_live.tui.messages import NextStep
from bty_live.tui.screens.next_steps import NextStepsScreen
from bty_live.tui.text import indented
from bty_live.tui.widgets import ActionChoices, KeyHints, TitleBar

DONE_STEPS = (
    (NextStep.ANOTHER_IMAGE, "Flash another image"),
    (NextStep.REBOOT, "Reboot"),
    (NextStep.POWEROFF, "Power off"),
    (NextStep.SHELL, "Open a shell"),
)


class DoneScreen(NextStepsScreen):
    TEXT_ID = "receipt"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("a", "step('another-image')", "Another"),
        # b and o, not r and p: r means reload/rescan on the other screens; both ask first
        Binding("b", "step('reboot')", "Reboot"),
        Binding("o", "step('poweroff')", "Power off"),
        Binding("s", "step('shell')", "Shell"),
    ]

    def __init__(self, receipt: Receipt, save_note: str) -> None:
        super().__init__()
        self.receipt = receipt
        self.save_note = save_note

    def compose(self) -> ComposeResult:
        yield TitleBar("Done", f"{self.receipt.image_name} -> {self.receipt.target_path}")
        with VerticalScroll(id="receipt"):
            text = Text("Flashed and verified.\n", style="bold green")
            for line in self.receipt.summary():
                text.append(indented(line.strip(), hang=4) + "\n")
            text.append(indented(self.save_note, hang=4), style="dim")
            yield Static(text)
        yield ActionChoices(*(Option(label, id=step) for step, label in DONE_STEPS), id="steps")
        yield KeyHints()

    def on_mount(self) -> None:
        self.query_one(ActionChoices).focus()
