"""Run one subcommand module on its own (`python -m bty_live.commands.agent ...`), with the same
error handling and exit codes as `bty`: for tests and tools, and until `bty_live.cli` lists it."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

Register = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


def run_standalone(register: Register, argv: Sequence[str] | None = None) -> int:
    from bty_live import errors
    from bty_live.cli import exit_code_for

    parser = argparse.ArgumentParser(prog="bty")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    register(subparsers)
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except KeyboardInterrupt:
        print("bty: cancelled", file=sys.stderr)
        return 130
    except errors.BtyError as exc:
        print(f"bty: {exc.full_message()}", file=sys.stderr)
        return exit_code_for(exc)
