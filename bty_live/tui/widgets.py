"""The few widgets of our own: a title line, option lists for arrows + Enter, the progress panel."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.reactive import var
from textual.scrollbar import ScrollBarRender
from textual.widgets import Input, OptionList, Static

from bty_live.tui.progress import FlashProgress
from bty_live.tui.text import progress_parts


class CellScrollBarRender(ScrollBarRender):
    """Scrollbar thumbs in whole cells: no 1/8-block glyphs, which the Linux console cannot draw."""

    VERTICAL_BARS: ClassVar[list[str]] = [" "]
    HORIZONTAL_BARS: ClassVar[list[str]] = [" "]


class TitleBar(Static):
    """One line: the product, the screen's name, and where the user is (cut at the edge)."""

    def __init__(self, screen_name: str, detail: str = "") -> None:
        text = Text.assemble(("bty-live", "bold"), " \u00b7 ", (screen_name, "bold"))
        if detail:
            text.append(f"   {detail}")  # cut at the screen's edge (.title), never wrapped out of sight
        super().__init__(text, classes="title")


class NameEntry(Input):
    """A name typed on a form (the flash's confirmation, the capture's image name): focused when
    its screen mounts, with a still cursor (no animations: a blinking one repaints forever, over
    a serial console too). Subclasses bind their own Enter to "submit", not a priority binding on
    the screen, so the name is read only once every key typed before Enter has reached the field:
    a paste, expect or a serial console sends "loop1\r" in one burst, and a screen-level Enter
    would run first."""

    def on_mount(self) -> None:
        self.cursor_blink = False
        self.focus()


class Choices(OptionList):
    """An OptionList whose Enter and arrows appear in the footer.

    Disabled options (ineligible disks, unusable images) are skipped by the arrows and cannot
    be selected: OptionList never posts OptionSelected for them.
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("down", "cursor_down", "Move", key_display="\u2191\u2193"),
        Binding("enter", "select", "Choose", key_display="Enter"),
    ]

    def highlight_id(self, option_id: str | None) -> None:
        """Highlight the option with this id if it can be chosen, else the first that can."""
        if option_id is not None:
            try:
                index = self.get_option_index(option_id)
            except LookupError:
                index = None
            if index is not None and not self.get_option_at_index(index).disabled:
                self.highlighted = index
                return
        self.action_first()

    @property
    def highlighted_id(self) -> str | None:
        option = self.highlighted_option
        return option.id if option is not None else None


class ActionChoices(Choices):
    """The list of next steps on the Done and Error screens."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("down", "cursor_down", "Move", key_display="\u2191\u2193"),
        Binding("enter", "select", "Do it", key_display="Enter"),
    ]


class KeyHints(Static):
    """The footer: the keys that work now, as one line of text.

    Textual's Footer composes a widget per key, and only once the screen's bindings signal has
    fired, so its hints arrive a frame after everything else; this is one Static, drawn with the
    first frame and redrawn when the bindings change (focus moves, a screen opens).
    """

    def on_mount(self) -> None:
        self.screen.bindings_updated_signal.subscribe(self, self._bindings_changed)
        self._show()

    def on_unmount(self) -> None:
        self.screen.bindings_updated_signal.unsubscribe(self)

    def _bindings_changed(self, _screen: object) -> None:
        self._show()

    def _show(self) -> None:
        """One hint per description, the nearest binding first (the focused widget's, then the
        screen's, then the app's): a screen can show "F1 Help" instead of the app's "? Help"."""
        text = Text(no_wrap=True, overflow="crop")
        seen: set[str] = set()
        for active in self.screen.active_bindings.values():
            binding = active.binding
            if not binding.show or binding.description in seen:
                continue
            seen.add(binding.description)
            if text:
                text.append("  ")
            text.append(self.app.get_key_display(binding), style="bold")
            text.append(f" {binding.description}", style="" if active.enabled else "dim")
        self.update(text)


class ProgressPanel(Vertical):
    """Phase, bar, numbers and the step checklist of a running flash.

    The screen sets `state` (attributes down); each line is its own Static and is updated only
    when its text changed, so a progress update repaints the bar and the numbers, not the
    panel. `clock` is injectable so that snapshots of a recorded flash show a fixed elapsed time.
    """

    #: a `var`, not a `reactive`: a reactive repaints the whole panel on every change
    state: var[FlashProgress] = var(FlashProgress, always_update=True, init=False)

    def __init__(self, route: str, clock: Callable[[], float] = time.time, id: str | None = None) -> None:
        super().__init__(id=id)
        self.route = route
        self.clock = clock
        self._shown: dict[str, object] = {}

    def compose(self) -> ComposeResult:
        yield Static(classes="heading", id="heading")
        yield Static(self.route, classes="route")
        yield Static(id="bar")
        yield Static(id="numbers")
        yield Static(id="steps")
        yield Static(classes="message", id="message")

    def on_mount(self) -> None:
        self._show()
        # elapsed time keeps moving while a disk stalls and no event arrives; once a second is
        # plenty, and only the numbers line is repainted
        self.set_interval(1.0, self._show)

    def watch_state(self) -> None:
        self._show()

    def _show(self) -> None:
        parts = progress_parts(self.state, now=self.clock())
        for name, value in parts._asdict().items():
            key = value.plain if isinstance(value, Text) else value
            if self._shown.get(name) != key:
                self._shown[name] = key
                # layout=False: every line has a fixed height, so only the changed line is
                # repainted, not the panel (2 lines per update instead of 20)
                self.query_one(f"#{name}", Static).update(value, layout=False)
