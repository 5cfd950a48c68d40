"""Error: the one-line cause, what to do next, and the details on demand."""

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

from bty_live.tui.messages import NextStep, StepChosen
from bty_live.tui.text import error_cause, error_details, error_heading, next_steps
from bty_live.tui.widgets import ActionChoices, KeyHints, TitleBar


class ErrorScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("pageup", "scroll_text(-1)", "Scroll", show=False, priority=True),
        Binding("pagedown", "scroll_text(1)", "Scroll", show=False, priority=True),
        Binding("escape", "app.pop_screen", "Back", key_display="Esc"),
        Binding("d", "details", "Details"),
        Binding("s", "step('shell')", "Shell"),
    ]

    def __init__(self, error: BaseException, log_tail: list[str], *, can_retry_disk: bool) -> None:
        super().__init__()
        self.error = error
        self.log_tail = log_tail
        self.can_retry_disk = can_retry_disk

    def compose(self) -> ComposeResult:
        yield TitleBar("Error")
        with VerticalScroll(id="cause"):
            text = Text(error_heading(self.error) + "\n", style="bold red")
            text.append(error_cause(self.error) + "\n\n")
            text.append("What to do: ", style="bold")
            text.append(next_steps(self.error))
            yield Static(text)
            yield Static(error_details(self.error, self.log_tail), id="details", classes="details")
        steps = [Option("Choose another disk", id=NextStep.ANOTHER_DISK)] if self.can_retry_disk else []
        steps += [
            Option("Start over: choose an image", id=NextStep.ANOTHER_IMAGE),
            Option("Show the details", id=NextStep.DETAILS),
            Option("Open a shell", id=NextStep.SHELL),
            Option("Reboot", id=NextStep.REBOOT),
            Option("Power off", id=NextStep.POWEROFF),
        ]
        yield ActionChoices(*steps, id="steps")
        yield KeyHints()

    def on_mount(self) -> None:
        self.query_one("#details").display = False
        self.query_one(ActionChoices).focus()

    def action_details(self) -> None:
        details = self.query_one("#details")
        details.display = not details.display
        if details.display:
            cause = self.query_one("#cause", VerticalScroll)
            self.call_after_refresh(cause.scroll_to_widget, details, animate=False, top=True)

    def action_scroll_text(self, direction: int) -> None:
        """PgUp/PgDn scroll the text while the arrows stay on the list of next steps."""
        text = self.query_one("#cause", VerticalScroll)
        (text.scroll_page_down if direction > 0 else text.scroll_page_up)(animate=False)

    def action_step(self, step: str) -> None:
        self.post_message(StepChosen(NextStep(step)))

    @on(OptionList.OptionSelected, "#steps")
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        step = NextStep(event.option.id or NextStep.ANOTHER_IMAGE)
        if step == NextStep.DETAILS:
            self.action_details()
        else:
            self.post_message(StepChosen(step))
