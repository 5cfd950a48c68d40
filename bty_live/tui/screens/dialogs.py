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


class YesNoDialog(ModalScreen[bool]):
    """A question whose safe answer ("no") is highlighted, so a stray Enter changes nothing;
    `y` answers yes, `n` or Esc no."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No", key_display="n"),
    ]

    def __init__(self, heading: str, detail: str, no: str, yes: str) -> None:
        super().__init__()
        self.texts = heading, detail, no, yes

    def compose(self) -> ComposeResult:
        heading, detail, no, yes = self.texts
        with Vertical(classes="dialog"):
            yield Static(heading, classes="heading")
            yield Static(detail)
            yield ActionChoices(Option(no, id="no"), Option(yes, id="yes"), id="answer")
        yield KeyHints()

    def on_mount(self) -> None:
        self.query_one(ActionChoices).focus()

    @on(OptionList.OptionSelected, "#answer")
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.dismiss(event.option.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class CancelDialog(YesNoDialog):
    """Asks before cancelling a flash."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes, cancel"),
        Binding("n,escape", "answer(False)", "No", key_display="n"),
    ]

    def __init__(self, target: str) -> None:
        super().__init__("Cancel the flash?",
                         f"The engine stops, then wipes the partition tables and signatures of {target}: "
                         "what was written so far will not boot.",
                         "No, keep flashing", "Yes, cancel and wipe the disk")
        self.target = target


class CaptureCancelDialog(YesNoDialog):
    """Asks before cancelling a capture (nothing on the disk is at stake, only the image file)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes, cancel"),
        Binding("n,escape", "answer(False)", "No", key_display="n"),
    ]

    def __init__(self, partial: str) -> None:
        super().__init__("Cancel the capture?",
                         f"The capture stops and {partial} is removed: no image is made. The disk is "
                         "not changed.",
                         "No, keep capturing", "Yes, cancel the capture")
        self.partial = partial


class PowerDialog(YesNoDialog):
    """Asks before a reboot or power-off."""

    def __init__(self, verb: str) -> None:
        super().__init__(f"{verb.capitalize()} now? y/n", f"The machine will {verb} at once. Esc or n stays here.",
                         f"No, do not {verb}", f"Yes, {verb} now")
        self.verb = verb  # "reboot" or "power off"


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

  c on the Images screen captures a disk of this machine into the images
  directory: choose the disk, name the image, confirm; the new image is
  listed, ready to flash.

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
