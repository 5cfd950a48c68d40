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
from bty_live.run import ToolError

#: exit code per error class; the first matching class (most specific first) wins
EXIT_CODES: list[tuple[type[BaseException], int, str]] = [
    (errors.UsageError, 2, "bad arguments"),
    (errors.SourceCorruptError, 4, "image corrupt or truncated"),
    (errors.DigestMismatchError, 5, "image digest does not match its manifest"),
    (errors.ImageError, 3, "image missing, unreadable or of an unknown format"),
    (errors.SelectorError, 6, "disk selector matched no eligible disk, or several"),
    (errors.TargetRefusedError, 7, "target refused: boot medium, mounted, in use, read-only or too small"),
    (errors.TargetVanishedError, 9, "target disk vanished during the run"),
    (errors.TargetIOError, 8, "I/O error or no space on the target"),
    (errors.VerifyError, 10, "read-back verification failed"),
    (errors.FixupError, 11, "partition-table fix-up failed"),
    (errors.TuneError, 13, "post-flash tuning failed (the step is named; the disk is wiped)"),
    (errors.NetworkError, 14, "the bty server is unreachable, or refused the token"),
    (ToolError, 12, "a required tool is missing or failed"),
    (errors.Cancelled, 130, "cancelled (Ctrl-C, or the confirmation was not given)"),
    (errors.BtyError, 1, "other error"),
]
INTERNAL_ERROR = 70


def exit_code_for(exc: BaseException) -> int:
    for cls, code, _ in EXIT_CODES:
        if isinstance(exc, cls):
            return code
    return INTERNAL_ERROR


def exit_codes_help() -> str:
    lines = ["exit codes:", "  0    success"]
    for _, code, text in sorted(EXIT_CODES, key=lambda item: item[1]):
        lines.append(f"  {code:<4} {text}")
    lines.append(f"  {INTERNAL_ERROR:<4} internal error (a bug: rerun with BTY_DEBUG=1 and report it)")
    return "\n".join(lines)


#: the subcommands, in `bty --help` order; each is a module of bty_live.commands
COMMANDS = ("images", "inspect", "disks", "flash", "tui", "unattended", "ledger", "agent", "serve")


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
    args = parser.parse_args(words)
    try:
        code: int = args.func(args)
        return code
    except KeyboardInterrupt:
        print("bty: cancelled", file=sys.stderr)
        return 130
    except errors.BtyError as exc:
        print(f"bty: {exc.full_message()}", file=sys.stderr)
        return exit_code_for(exc)
    except BrokenPipeError:
        return 0
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, no traceback
        if os.environ.get("BTY_DEBUG"):
            traceback.print_exc()
        print(f"bty: internal error: {type(exc).__name__}: {exc} (rerun with BTY_DEBUG=1 for details)",
              file=sys.stderr)
        return INTERNAL_ERROR


if __name__ == "__main__":
    sys.exit(main())
