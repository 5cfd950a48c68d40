"""Run one subcommand module on its own (`python -m bty_live.commands.agent ...`), with the same
error handling and exit codes as `bty`: for tests and tools, and until `bty_live.cli` lists it."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

Register = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


def run_standalone(register: Register, argv: Sequence[str] | None = None) -> int:
    from bty_live.cli import run_guarded

    parser = argparse.ArgumentParser(prog="bty")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    register(subparsers)
    return run_guarded(parser, list(sys.argv[1:] if argv is None else argv))
