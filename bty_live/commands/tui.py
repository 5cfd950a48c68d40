"""`bty tui [--images DIR]`: the full-screen front-end a person sees after booting the stick."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from bty_live.errors import BtyError

if TYPE_CHECKING:
    from bty_live.image.catalog import CatalogEntry

DESCRIPTION = """\
Choose an image and a disk with the keyboard, see what will be destroyed, flash, verify and
fix up the partition table, read the receipt: the same engine and checks as `bty flash`.

screens:
  Images    name, OS, size, digest status and badge of each image: known-good when a passing
            run on this machine model hashed this very file, unverified when only the manifest's
            digest is known-good here (the file may be a bad copy: flash it to know)
  Disks     model, size, transport, serial and ids; disks that may not be written are dimmed,
            with the reason, and cannot be chosen; the list follows disks being plugged in
  Confirm   what the disk holds now and what will be written; type the disk's name to go on
  Progress  phase, bar, MB/s, ETA, bytes written and zero-filled, elapsed; c cancels (asks
            first), and a cancelled flash wipes the disk
  Done      the receipt; keys: a another image, b reboot, o power off (both ask y/n), s shell
  Error     the cause in one line, what to do next, the details on demand

keys: arrows and Enter; Esc goes back; ? or F1 help; l the log of the engine's events; s shell;
ctrl+q quits (asking first during a flash). No mouse and no more than 16 colours are needed: it
works on the Linux console, over a serial console and in any terminal of 80x24 or more.

console font: on a Linux virtual terminal with a framebuffer, the font is first chosen by the
screen's size, so the text stays readable (--console-font keep leaves it): Terminus 16x32 from
1600x900 up (1920x1080: 120x33 cells), doubled to 32x64 from 3200x1800 up (4K: 120x33), the
kernel's 8x16 below (1280x800: 160x50). Serial consoles and terminal emulators are left as they are.

exit status: 0 when the user quits (or reboots/powers off), 20 when the user asks for a shell (the
live stick's session wrapper then starts a login shell), 130 when the user quit during a flash
(it was cancelled and the disk wiped), 128+N when stopped by signal N (143 SIGTERM, 129 SIGHUP,
131 SIGQUIT: a running flash is cancelled and the disk wiped first), 70 on an internal error.
"""

#: refresh at most this often (the screen only redraws what changed, and progress arrives at
#: most 5 times a second); a slow framebuffer or serial console is never flooded
DEFAULT_FPS = "10"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "tui",
        help="full-screen interface: choose an image and a disk, flash, verify",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", metavar="DIR",
                        help="images directory (default: $BTY_IMAGES, the stick's images partition, else ./images)")
    parser.add_argument("--console-font", choices=("auto", "keep"), default="auto",
                        help="on a virtual terminal: pick a font by screen size (auto, the default) "
                             "or keep the current one")


def run(args: argparse.Namespace) -> int:
    # Textual reads these when it is first imported: bound the refresh rate, no animations
    os.environ.setdefault("TEXTUAL_FPS", DEFAULT_FPS)
    os.environ.setdefault("TEXTUAL_ANIMATIONS", "none")
    os.environ.setdefault("TEXTUAL_THEME", "ansi-dark")
    from bty_live.errors import INTERNAL_ERROR
    from bty_live.stick.console_font import set_console_font
    from bty_live.tui.app import make_app

    if args.console_font == "auto" and (note := set_console_font()):
        print(f"bty tui: {note}", file=sys.stderr)

    app = make_app(images_dir=args.images, known_good=_known_good_badge(args.images), handle_stop_signals=True)
    app.run(mouse=False)
    code = app.return_code or 0
    if app.stop_note:  # stopped by SIGTERM, SIGHUP or SIGQUIT: one line, once the screen is restored
        print(app.stop_note, file=sys.stderr)
    # Textual ends with 1 after an unhandled exception (it has printed the traceback): a bug
    return INTERNAL_ERROR if code == 1 else code


def _known_good_badge(images: str | None) -> Callable[[CatalogEntry], str]:
    """The ledger's verdict for this machine's model, read once per call (the list reloads):
    "known-good" for a file a passing run verified, "unverified" when only the manifest's digest
    is known-good here (the file's bytes were never hashed), else ""."""
    from bty_live.flash.known_good import entry_badge
    from bty_live.flash.ledger import default_ledger_path, read_ledger
    from bty_live.image.catalog import resolve_images_dir
    from bty_live.system.machine import read_machine_identity

    directory = resolve_images_dir(images)
    model = read_machine_identity().model

    def badge(entry: CatalogEntry) -> str:
        try:
            records = read_ledger(default_ledger_path(directory)).records
        except BtyError:
            return ""
        return entry_badge(records, entry, directory, model)

    return badge


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m bty_live.tui`: the same command without the `bty` front door, under the same
    error handling, stop signals and exit codes (`bty_live.cli.run_guarded`)."""
    from bty_live.cli import run_guarded

    parser = argparse.ArgumentParser(prog="bty tui", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(func=run)
    return run_guarded(parser, list(sys.argv[1:] if argv is None else argv))
