"""Images: what can be flashed, from the images directory. The first screen."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.screen import Screen
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from bty_live.errors import BtyError
from bty_live.image.catalog import CatalogEntry
from bty_live.tui.text import IMAGE_COLUMNS, image_prompt
from bty_live.tui.widgets import Choices, KeyHints, TitleBar

#: the badge of an image: True or "known-good", "unverified" (the file's bytes were never verified), or ""
KnownGood = Callable[[CatalogEntry], bool | str]


class ImagesScreen(Screen[None]):
    """The catalog, one option per image; unusable images are listed but cannot be chosen."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("r", "reload", "Reload"),
        Binding("c", "app.capture", "Capture"),
        Binding("s", "app.shell", "Shell"),
        Binding("q", "app.quit", "Quit"),
    ]

    class Chosen(Message):
        """The user picked an image."""

        def __init__(self, entry: CatalogEntry) -> None:
            super().__init__()
            self.entry = entry

    class Loaded(Message):
        def __init__(self, rows: list[tuple[CatalogEntry, bool | str]], problem: str | None) -> None:
            super().__init__()
            self.rows = rows
            self.problem = problem

    def __init__(self, load: Callable[[], list[CatalogEntry]], known_good: KnownGood | None,
                 where: str) -> None:
        super().__init__()
        self.load = load
        self.known_good = known_good
        self.where = where
        self.entries: dict[str, CatalogEntry] = {}
        #: the image to highlight once the list is read again (a capture just made it)
        self.prefer: str | None = None
        #: how many times the list has been shown (tests wait on this, not on time)
        self.loads = 0

    def compose(self) -> ComposeResult:
        yield TitleBar("Images", self.where)
        yield Static(IMAGE_COLUMNS, classes="columns")
        yield Choices(id="images")
        yield Static("Reading the images directory...", id="status")
        yield KeyHints()

    def on_mount(self) -> None:
        self.query_one(Choices).focus()  # now, not once loaded: the key hints are right from the first frame
        self.action_reload()

    def action_reload(self) -> None:
        self._read()

    def reload(self, highlight: str | None = None) -> None:
        """Read the images directory again, then highlight `highlight` (a path) if it is listed."""
        self.prefer = highlight
        self._read()

    @work(thread=True, exclusive=True, group="images")
    def _read(self) -> None:
        """List the images (and ask the ledger about each) off the event loop: a slow stick must
        not delay the first paint."""
        try:
            entries = self.load()
        except BtyError as exc:
            self.post_message(self.Loaded([], str(exc)))
            return
        known_good = self.known_good
        rows: list[tuple[CatalogEntry, bool | str]] = [
            (entry, (known_good(entry) if known_good and not entry.problem else "")) for entry in entries]
        self.post_message(self.Loaded(rows, None))

    @on(Loaded)
    def _show(self, message: Loaded) -> None:
        choices = self.query_one(Choices)
        keep, self.prefer = self.prefer or choices.highlighted_id, None
        self.entries = {str(entry.path): entry for entry, _ in message.rows}
        choices.set_options(
            Option(image_prompt(entry, good), id=str(entry.path), disabled=entry.problem is not None)
            for entry, good in message.rows
        )
        choices.highlight_id(keep)
        self.loads += 1
        status = self.query_one("#status", Static)
        if message.problem:
            status.update(message.problem)
        elif not message.rows:
            status.update(f"No images in {self.where}: copy some there (`bty images add FILE` writes "
                          "their manifests) and press r, or press c to capture a disk.")
        else:
            usable = sum(1 for entry, _ in message.rows if entry.problem is None)
            status.update(f"{usable} of {len(message.rows)} images can be flashed. "
                          "Choose one, then the disk to write it to.")

    @on(OptionList.OptionSelected, "#images")
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        entry = self.entries.get(event.option.id or "")
        if entry is not None:
            self.post_message(self.Chosen(entry))
