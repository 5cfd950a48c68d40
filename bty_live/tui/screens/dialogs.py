"""Modal screens over the others: cancel confirmation, help, and the event log."""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Log, OptionList, Static
from textual.widgets.option_list import Option

from bty_live.tui.widgets import ActionChoices, KeyHints, TitleBar


class CancelDialog(ModalScreen[bool]):
    """Asks before cancelling; "keep flashing" is highlighted, so a stray Enter changes nothing."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes, cancel"),
        Binding("n,escape", "answer(False)", "No", key_display="n"),
    ]

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static("Cancel the flash?", classes="heading")
            yield Static(f"The engine stops, then wipes the partition tables and signatures of {self.target}: "
                         "what was written so far will not boot.")
            yield ActionChoices(Option("No, keep flashing", id="keep"),
                                Option("Yes, cancel and wipe the disk", id="cancel"), id="answer")
        yield KeyHints()

    def on_mount(self) -> None:
        self.query_one(ActionChoices).focus()

    @on(OptionList.OptionSelected, "#answer")
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.dismiss(event.option.id == "cancel")

    def action_answer(self, cancel: bool) -> None:
        self.dismiss(cancel)


class PowerDialog(ModalScreen[bool]):
    """Asks before a reboot or power-off; "no" is highlighted, so a stray Enter changes nothing."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No", key_display="n"),
    ]

    def __init__(self, verb: str) -> None:
        super().__init__()
        self.verb = verb  # "reboot" or "power off"

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(f"{self.verb.capitalize()} now? y/n", classes="heading")
            yield Static(f"The machine will {self.verb} at once. Esc or n stays here.")
            yield ActionChoices(Option(f"No, do not {self.verb}", id="no"),
                                Option(f"Yes, {self.verb} now", id="yes"), id="answer")
        yield KeyHints()

    def on_mount(self) -> None:
        self.query_one(ActionChoices).focus()

    @on(OptionList.OptionSelected, "#answer")
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.dismiss(event.option.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


HELP = """\
bty-live writes a disk image onto a disk and proves it landed.

  1. Images    choose the image (Enter)
  2. Disks     choose the disk. Dimmed disks cannot take the image: the
               reason is shown under each. Plugged disks appear by themselves.
  3. Confirm   read what will be destroyed, then type the disk's name
               (e.g. sdb) and press Enter. Esc goes back; nothing is written.
  4. Progress  write, verify (the disk is read back and hashed), fix up the
               partition table. c cancels (after a question); a cancelled or
               failed flash wipes the disk so it never looks bootable.
  5. Done      the receipt. a flashes another, b reboots, o powers off (both
               ask first: y/n), s opens a shell.

Keys:  arrows move, Enter chooses, Esc goes back, l (or F2) shows the log of
the engine's events, ? (or F1) shows this help, s opens a shell, ^q quits.
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,question_mark,f1,q", "app.pop_screen", "Close", key_display="Esc"),
    ]

    def compose(self) -> ComposeResult:
        yield TitleBar("Help")
        with VerticalScroll(classes="sheet"):
            yield Static(HELP)
        yield KeyHints()


class LogScreen(ModalScreen[None]):
    """The engine's events (and the app's notes) as lines; new lines appear while it is open."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,l,q", "app.pop_screen", "Close", key_display="Esc"),
    ]

    def __init__(self, lines: Iterable[str]) -> None:
        super().__init__()
        self.lines = list(lines)

    def compose(self) -> ComposeResult:
        yield TitleBar("Log", "the engine's events, newest last")
        yield Log(id="log", max_lines=2000, auto_scroll=True)
        yield KeyHints()

    def on_mount(self) -> None:
        log = self.query_one(Log)
        log.write_lines(self.lines or ["(nothing yet: events appear once a flash starts)"])
        log.focus()

    def append(self, line: str) -> None:
        self.query_one(Log).write_line(line)
