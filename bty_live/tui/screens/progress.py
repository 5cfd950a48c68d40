"""Progress: the running flash or capture. The app owns the worker; these screens only show its events."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.screen import Screen

from bty_live.events import Event
from bty_live.flash.plan import FlashPlan
from bty_live.tui.progress import FlashProgress
from bty_live.tui.screens.dialogs import CancelDialog, CaptureCancelDialog, YesNoDialog
from bty_live.tui.widgets import KeyHints, ProgressPanel, TitleBar

if TYPE_CHECKING:
    from bty_live.capture.plan import CapturePlan


class RunProgressScreen(Screen[None]):
    """What the flash's and the capture's Progress screens share: the panel fed with events, and
    a cancel that asks first."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,c", "cancel", "Cancel", key_display="c"),
    ]

    class CancelRequested(Message):
        """The user confirmed: stop the run (a flash then wipes the target; a capture removes its
        partial image)."""

    def __init__(self, progress: FlashProgress, title: str, route: str, clock: Callable[[], float]) -> None:
        super().__init__()
        self.progress = progress
        self.title_detail = title
        self.route = route
        self.clock = clock

    def compose(self) -> ComposeResult:
        yield TitleBar("Progress", self.title_detail)
        yield ProgressPanel(self.route, clock=self.clock, id="panel")
        yield KeyHints()

    def cancel_dialog(self) -> YesNoDialog:
        """The question asked before cancelling (here, and when the app is told to quit)."""
        raise NotImplementedError

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

        self.app.push_screen(self.cancel_dialog(), answered)


class ProgressScreen(RunProgressScreen):
    """The running flash: write, verify, fix-ups (and tuning)."""

    def __init__(self, plan: FlashPlan, clock: Callable[[], float] = time.time) -> None:
        super().__init__(FlashProgress(tuning=plan.tune is not None), f"{plan.image.name} -> {plan.disk.path}",
                         f"{plan.image.location} -> {plan.disk.path}", clock)
        self.plan = plan

    def cancel_dialog(self) -> YesNoDialog:
        return CancelDialog(self.plan.disk.path)


class CaptureProgressScreen(RunProgressScreen):
    """The running capture: the disk read into the image file (MB/s, ETA)."""

    def __init__(self, plan: CapturePlan, clock: Callable[[], float] = time.time) -> None:
        route = f"{plan.disk.path} -> {plan.output.name}"
        super().__init__(FlashProgress(capture=True), f"capture {route}", route, clock)
        self.plan = plan

    def cancel_dialog(self) -> YesNoDialog:
        return CaptureCancelDialog(self.plan.partial.name)
