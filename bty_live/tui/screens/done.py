"""Done: the receipt, and what to do next."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from bty_live.flash.receipt import Receipt
from bty_live.tui.messages import NextStep, StepChosen
from bty_live.tui.text import indented
from bty_live.tui.widgets import ActionChoices, KeyHints, TitleBar

DONE_STEPS = (
    (NextStep.ANOTHER_IMAGE, "Flash another image"),
    (NextStep.REBOOT, "Reboot"),
    (NextStep.POWEROFF, "Power off"),
    (NextStep.SHELL, "Open a shell"),
)


class DoneScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("pageup", "scroll_text(-1)", "Scroll", show=False, priority=True),
        Binding("pagedown", "scroll_text(1)", "Scroll", show=False, priority=True),
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

    def action_scroll_text(self, direction: int) -> None:
        """PgUp/PgDn scroll the text while the arrows stay on the list of next steps."""
        text = self.query_one("#receipt", VerticalScroll)
        (text.scroll_page_down if direction > 0 else text.scroll_page_up)(animate=False)

    def action_step(self, step: str) -> None:
        self.post_message(StepChosen(NextStep(step)))

    @on(OptionList.OptionSelected, "#steps")
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.post_message(StepChosen(NextStep(event.option.id or NextStep.ANOTHER_IMAGE)))
