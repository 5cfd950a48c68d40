"""Error: the one-line cause, what to do next, and the details on demand."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.widgets import Static
from textual.widgets.option_list import Option

from bty_live.tui.messages import NextStep
from bty_live.tui.screens.next_steps import NextStepsScreen
from bty_live.tui.text import error_cause, error_details, error_heading, next_steps
from bty_live.tui.widgets import ActionChoices, KeyHints, TitleBar


class ErrorScreen(NextStepsScreen):
    TEXT_ID = "cause"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.pop_screen", "Back", key_display="Esc"),
        Binding("d", "details", "Details"),
        Binding("s", "step('shell')", "Shell"),
    ]

    def __init__(self, error: BaseException, log_tail: list[str], *, can_retry_disk: bool,
                 capture: bool = False) -> None:
        super().__init__()
        self.error = error
        self.log_tail = log_tail
        self.can_retry_disk = can_retry_disk
        #: a capture failed, not a flash: its advice, and "choose another disk" means one to read
        self.capture = capture

    def compose(self) -> ComposeResult:
        capture = self.capture
        yield TitleBar("Error", "capture" if capture else "")
        with VerticalScroll(id="cause"):
            text = Text(error_heading(self.error, capture=capture) + "\n", style="bold red")
            text.append(error_cause(self.error) + "\n\n")
            text.append("What to do: ", style="bold")
            text.append(next_steps(self.error, capture=capture))
            yield Static(text)
            yield Static(error_details(self.error, self.log_tail, capture=capture), id="details",
                         classes="details")
        retry = NextStep.CAPTURE_DISK if capture else NextStep.ANOTHER_DISK
        steps = [Option("Choose another disk", id=retry)] if self.can_retry_disk else []
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

    def choose(self, step: NextStep) -> None:
        if step == NextStep.DETAILS:
            self.action_details()
        else:
            super().choose(step)
