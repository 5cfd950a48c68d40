"""What the Done and Error screens share: a text above a list of next steps."""

from __future__ import annotations

from typing import ClassVar

from textual import on
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import OptionList

from bty_live.tui.messages import NextStep, StepChosen


class NextStepsScreen(Screen[None]):
    """PgUp/PgDn scroll the text (the VerticalScroll with id TEXT_ID) while the arrows stay on
    the list of next steps (id "steps"); a chosen step goes to the app as StepChosen."""

    TEXT_ID: ClassVar[str]
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("pageup", "scroll_text(-1)", "Scroll", show=False, priority=True),
        Binding("pagedown", "scroll_text(1)", "Scroll", show=False, priority=True),
    ]

    def action_scroll_text(self, direction: int) -> None:
        text = self.query_one(f"#{self.TEXT_ID}", VerticalScroll)
        (text.scroll_page_down if direction > 0 else text.scroll_page_up)(animate=False)

    def action_step(self, step: str) -> None:
        self.choose(NextStep(step))

    def choose(self, step: NextStep) -> None:
        """What a chosen step does; by default the app decides (a screen may act on some itself)."""
        self.post_message(StepChosen(step))

    @on(OptionList.OptionSelected, "#steps")
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.choose(NextStep(event.option.id or NextStep.ANOTHER_IMAGE))
