"""`bty`: the command-line front-end. Parses arguments, runs a subcommand, maps errors to exit codes.

Subcommands live in `bty_live.commands`; this module only wires them together and owns the
one rule every front-end shares: a failure is one line on stderr and a distinct exit code.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Sequence

from bty_live import __version__, errors
from bty_live.errors import INTERNAL_ERROR, exit_code_for, exit_codes_help
from bty_live.render.streams import dropping_std_streams
from bty_live.signals import exit_code_for_signal, interrupt_signal, stop_signals_raise

#: the subcommands, in `bty --help` order; each is a module of bty_live.commands
COMMANDS = ("images", "inspect", "disks", "flash", "capture", "tui", "unattended", "ledger", "agent", "serve")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with `only`, just that subcommand's module is imported and registered, so
    `bty tui` on a slow console does not pay for the server's and the engine's imports."""
    parser = argparse.ArgumentParser(
        prog="bty",
        description="Stream disk images onto disks, verified end to end, never onto the wrong disk.",
        epilog=exit_codes_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"bty-live {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMANDS if only is None else (only,):
        importlib.import_module(f"bty_live.commands.{name}").register(subparsers)
    return parser


def _command_word(argv: Sequence[str]) -> str | None:
    """The subcommand named on the command line, when it is one we know."""
    for word in argv:
        if not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(only=_command_word(words))
    if not words:  # a bare `bty`: what it can do, not an error
        parser.print_help()
        return 0
    return run_guarded(parser, words)


def run_guarded(parser: argparse.ArgumentParser, words: Sequence[str]) -> int:
    """Parse `words` and run the chosen subcommand under the rule every front-end shares: a
    failure is one line on stderr and a distinct exit code; Ctrl-C, SIGTERM, SIGHUP and SIGQUIT
    stop it the same way (the engine wipes a touched disk); output that cannot be written (a
    closed pipe, a hung-up terminal) is dropped and changes nothing else."""
    args = parser.parse_args(words)
    with dropping_std_streams(), stop_signals_raise():
        try:
            code: int = args.func(args)
            return code
        except KeyboardInterrupt as exc:
            signum = interrupt_signal(exc)
            print(f"bty: {errors.stopped_by(signum)}", file=sys.stderr)
            return exit_code_for_signal(signum)
        except errors.BtyError as exc:
            print(f"bty: {exc.full_message()}", file=sys.stderr)
            return exit_code_for(exc)
        except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, no traceback
            if os.environ.get("BTY_DEBUG"):
                traceback.print_exc()
            print(f"bty: internal error: {type(exc).__name__}: {exc} (rerun with BTY_DEBUG=1 for details)",
                  file=sys.stderr)
            return INTERNAL_ERROR

if __name__ == "__main__":
    sys.exit(main())
