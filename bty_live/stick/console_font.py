"""A console font that keeps the TUI readable on the screen it is drawn on.

On a framebuffer console the kernel draws text in its 8x16 font whatever the screen: 1280x800
gives 160x50 cells, but a 1920x1080 monitor gives 240x67 cells of tiny text, and 4K 480x135.
`bty tui` on a virtual terminal picks the font here first: Terminus 16x32 from Debian's console
fonts on screens of 1600x900 and more (1920x1080: 120x33 cells), the same font doubled to 32x64
on 3200x1800 and more (3840x2160: 120x33 cells), and the kernel's own font below that. No choice
ever leaves fewer than 80x24 cells. A serial console, a terminal emulator or a VGA text console
(no framebuffer) is left as it is.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

FONT_DIR = Path("/usr/share/consolefonts")
#: Terminus with Debian's Uni2 character set: Latin, box drawing and block elements, which the
#: TUI's borders and progress bar use
TERMINUS_16X32 = "Uni2-Terminus32x16.psf.gz"
FRAMEBUFFER = Path("/sys/class/graphics/fb0")
MIN_COLUMNS, MIN_ROWS = 80, 24


@dataclass(frozen=True)
class ConsoleFont:
    """A font for the console: `font` is None for the kernel's built-in 8x16 one; `double` is
    setfont's -d (each glyph drawn twice as wide and twice as tall)."""

    font: str | None
    double: bool
    cell_width: int
    cell_height: int

    def grid(self, width: int, height: int) -> tuple[int, int]:
        """(columns, rows) of a width x height pixel screen in this font."""
        return width // self.cell_width, height // self.cell_height

    def describe(self, width: int, height: int) -> str:
        columns, rows = self.grid(width, height)
        name = self.font or "the kernel's 8x16 font"
        return f"{name}{' doubled' if self.double else ''} for {width}x{height}: {columns}x{rows} cells"


KERNEL_8X16 = ConsoleFont(None, False, 8, 16)
#: largest first; the first that fits the screen's size thresholds wins
CHOICES: tuple[tuple[int, int, ConsoleFont], ...] = (
    (3200, 1800, ConsoleFont(TERMINUS_16X32, True, 32, 64)),
    (1600, 900, ConsoleFont(TERMINUS_16X32, False, 16, 32)),
)


def choose_font(width: int, height: int) -> ConsoleFont:
    """The font for a width x height pixel framebuffer."""
    for min_width, min_height, font in CHOICES:
        columns, rows = font.grid(width, height)
        if width >= min_width and height >= min_height and columns >= MIN_COLUMNS and rows >= MIN_ROWS:
            return font
    return KERNEL_8X16


def framebuffer_size(fb: Path = FRAMEBUFFER) -> tuple[int, int] | None:
    """The visible size in pixels of a framebuffer (sysfs `virtual_size` is "W,H"), or None when
    there is none or it cannot be read."""
    try:
        text = (fb / "virtual_size").read_text().strip()
    except OSError:
        return None
    match = re.fullmatch(r"(\d+),(\d+)", text)
    if not match:
        return None
    width, height = int(match.group(1)), int(match.group(2))
    return (width, height) if width > 0 and height > 0 else None


def on_virtual_terminal(fd: int = 0) -> bool:
    """Whether `fd` is a Linux virtual terminal (/dev/ttyN, /dev/console on one), not a serial
    line or a pseudo-terminal."""
    try:
        name = os.ttyname(fd)
    except OSError:
        return False
    return re.fullmatch(r"/dev/tty\d+", name) is not None


def set_console_font(fd: int = 0, fb: Path = FRAMEBUFFER, font_dir: Path = FONT_DIR) -> str | None:
    """Load the font chosen for the framebuffer on the virtual terminal `fd`; a line saying what
    was done (for the log), or None when nothing was to be done. Never raises: a missing setfont
    or font file leaves the kernel's font, which still works."""
    if not on_virtual_terminal(fd):
        return None
    size = framebuffer_size(fb)
    if size is None:
        return None
    choice = choose_font(*size)
    if choice.font is None:
        return f"console font: {choice.describe(*size)}"
    path = font_dir / choice.font
    if not path.is_file():
        return f"console font: {path} is missing; keeping the kernel's font"
    from bty_live.errors import ToolError
    from bty_live.system.run import run

    argv = ["setfont", *(["-d"] if choice.double else []), str(path), "-C", os.ttyname(fd)]
    try:
        run(argv, timeout=10)
    except ToolError as exc:
        return f"console font: {exc}; keeping the kernel's font"
    return f"console font: {choice.describe(*size)}"
