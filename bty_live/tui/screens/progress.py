"""Progress: the running flash. The app owns the worker; this screen only shows its events."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.screen import Screen

from bty_live.events import Event
from bty_live.flash.plan import FlashPlan
from bty_live.tui.progress import FlashProgress
from bty_live.tui.screens.dialogs import CancelDialog
from bty_live.tui.widgets import KeyHints, ProgressPanel, TitleBar


class ProgressScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,c", "cancel", "Cancel", key_display="c"),
    ]

    class CancelRequested(Message):
        """The user confirmed: stop the flash (the engine then wipes the target)."""

    def __init__(self, plan: FlashPlan, clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.plan = plan
        self.clock = clock
        self.progress = FlashProgress(tuning=plan.tune is not None)

    def compose(self) -> ComposeResult:
        yield TitleBar("Progress", f"{self.plan.image.name} -> {self.plan.disk.path}")
        yield ProgressPanel(f"{self.plan.image.location} -> {self.plan.disk.path}", clock=self.clock, id="panel")
        yield KeyHints()

    def show_event(self, event: Event) -> None:
        """Fold one engine event into what is shown (the app calls this for each event)."""
        self.progress = self.progress.apply(event)
        self._show()

    def show_cancelling(self) -> None:
        self.progress = replace(self.progress, cancelling=True)
        self._show()

    def on_mount(self) -> None:
        self._show()

    def _show(self) -> None:
        """Hand the state to the panel. The first events can arrive after the screen is mounted
        but before its panel is: the panel then gets the state it missed in on_mount."""
        panels = self.query(ProgressPanel)
        if panels:
            panels.first().state = self.progress

    def action_cancel(self) -> None:
        if self.progress.cancelling:
            return

        def answered(cancel: bool | None) -> None:
            if cancel:
                self.post_message(self.CancelRequested())

        self.app.push_screen(CancelDialog(self.plan.disk.path), answered)
