"""Terminal output that can fail without failing the flash.

`bty flash --json | head -3` closes the pipe after three lines; a hung-up SSH session or a
vanished serial console turns every write into EIO. None of that may stop a flash halfway (the
disk would be wiped for nothing) or turn its result into a silent exit 0. While a command runs,
`sys.stdout` and `sys.stderr` are wrapped in DroppingOutput: the first failed write marks the
stream broken, points its file descriptor at /dev/null (so the interpreter's last flush cannot
fail either), and everything after is dropped. The flash goes on; its exit code, its receipt and
its ledger record still say how it ended.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any, TextIO


class DroppingOutput:
    """A text stream that swallows its own write errors, and everything after the first one."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.broken = False

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                self.stream.write(text)
            except (OSError, ValueError):
                self._break()
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self.stream.flush()
            except (OSError, ValueError):
                self._break()

    def isatty(self) -> bool:
        if self.broken:
            return False
        try:
            return self.stream.isatty()
        except (OSError, ValueError):
            return False

    def _break(self) -> None:
        self.broken = True
        with contextlib.suppress(OSError, ValueError, AttributeError):
            fd = self.stream.fileno()
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, fd)
            os.close(devnull)

    def __getattr__(self, name: str) -> Any:  # encoding, fileno, buffer, ... of the real stream
        return getattr(self.stream, name)


@contextlib.contextmanager
def dropping_std_streams() -> Iterator[None]:
    """sys.stdout and sys.stderr as DroppingOutput for the duration of a command."""
    saved = sys.stdout, sys.stderr
    sys.stdout = DroppingOutput(saved[0])
    sys.stderr = DroppingOutput(saved[1])
    try:
        yield
    finally:
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()
        sys.stdout, sys.stderr = saved
