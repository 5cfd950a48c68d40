"""The one place bty-live starts subprocesses: no shell, a clean error when a tool is missing; a
tool's output may also be read as a stream (ToolStream)."""

from __future__ import annotations

import contextlib
import fcntl
import io
import shutil
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from bty_live.errors import ToolError


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    input: bytes | None = None,
    timeout: float | None = 120,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run argv (in `cwd`, else bty's own working directory), capture text output, and raise ToolError
    with the tool's own words on failure."""
    if shutil.which(argv[0]) is None:
        raise ToolError(f"{argv[0]} is not installed; run `make setup` (or install it with apt)")
    try:
        proc = subprocess.run(
            list(argv),
            input=input.decode() if input is not None else None,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ToolError(f"{' '.join(argv)} did not finish within {timeout:.0f} s") from exc
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        last = detail[-1] if detail else f"exit status {proc.returncode}"
        raise ToolError(f"{argv[0]} failed: {last}")
    return proc


#: F_SETPIPE_SZ: a pipe of 1 MiB (the unprivileged maximum) instead of 64 KiB, so a fast tool
#: and its reader hand over 16 times fewer pieces
_F_SETPIPE_SZ = 1031
_PIPE_SIZE = 1 << 20


class Readable(Protocol):
    def readinto(self, buffer: memoryview, /) -> int | None: ...


class ToolStream:
    """The standard output of a running tool, read as a stream (e.g. `nbdcopy ... -` writing a
    virtual disk's bytes, or `xz -dc` decompressing what `feed` gives it). Its standard error is
    kept (the last lines) for the message when it fails; `finish()` after the end of the output
    waits for the tool and raises ToolError when it failed. `close()` stops it if it still runs.

    With `feed`, a thread copies that stream to the tool's standard input, so whoever counts or
    hashes the file's bytes as they are read (bty_live.image.formats._CountingFile) still sees
    them; an error reading it is raised by `finish()`, before the tool's own complaint about its
    input ending early. The tool runs in its own session: Ctrl-C reaches bty, which stops the
    flash and then the tool, instead of the tool dying first and its output looking cut short."""

    def __init__(self, argv: Sequence[str], feed: Readable | None = None) -> None:
        if shutil.which(argv[0]) is None:
            raise ToolError(f"{argv[0]} is not installed; run `make setup` (or install it with apt)")
        self.argv = list(argv)
        self._proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE if feed else subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0,
                                      start_new_session=True)
        self._stderr: list[bytes] = []
        self._stderr_reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._stderr_reader.start()
        self._feed_error: BaseException | None = None
        self._feeder: threading.Thread | None = None
        for pipe in (self._proc.stdin, self._proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):  # a lower pipe-max-size: the default pipe, in smaller pieces
                    fcntl.fcntl(pipe.fileno(), _F_SETPIPE_SZ, _PIPE_SIZE)
        if feed is not None:
            self._feeder = threading.Thread(target=self._feed, args=(feed,), name=f"{argv[0]}-feed", daemon=True)
            self._feeder.start()

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        """The tool's exit status once it has ended (negative: the signal that killed it)."""
        return self._proc.returncode

    def _feed(self, feed: Readable) -> None:
        stdin = self._proc.stdin
        assert stdin is not None
        buffer = memoryview(bytearray(_PIPE_SIZE))
        try:
            while n := feed.readinto(buffer):
                piece = buffer[:n]
                while piece:  # a raw pipe may take part of it (a signal in the middle of the write)
                    piece = piece[stdin.write(piece) or 0 :]
        except BrokenPipeError:  # the tool stopped reading: it failed (its words say why) or was closed
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the reader by finish()
            self._feed_error = exc
        finally:
            with contextlib.suppress(BrokenPipeError):
                stdin.close()

    def _read_stderr(self) -> None:
        assert self._proc.stderr is not None
        try:
            for line in self._proc.stderr:
                self._stderr = [*self._stderr[-19:], line]
        except (OSError, ValueError):  # closed by close() while a grandchild still held it open
            return

    def readinto(self, buffer: memoryview, /) -> int:
        """What the pipe holds, up to len(buffer) (a short count is not the end: 0 is)."""
        stdout = self._proc.stdout
        assert isinstance(stdout, io.FileIO)  # bufsize=0: the pipe itself
        return stdout.readinto(buffer) or 0

    def read(self, size: int = -1, /) -> bytes:
        """Up to `size` bytes (all that is left when negative), short only at the end."""
        stdout = self._proc.stdout
        assert isinstance(stdout, io.FileIO)
        if size < 0:
            return stdout.readall()
        pieces: list[bytes] = []
        while size > 0 and (piece := stdout.read(size)):
            pieces.append(piece)
            size -= len(piece)
        return b"".join(pieces)

    def finish(self, timeout: float = 60) -> None:
        """Wait for the tool to exit; ToolError with its last words unless it succeeded."""
        try:
            code = self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            self.close()
            raise ToolError(f"{self.argv[0]} did not exit within {timeout:.0f} s after its output ended") from exc
        self._stderr_reader.join(timeout=5)
        if self._feeder is not None:
            self._feeder.join(timeout)  # ended with the tool's input, or on its broken pipe
            if self._feed_error is not None:
                raise self._feed_error
        if code != 0:
            raise ToolError(f"{self.argv[0]} failed ({self.failure(code)})")

    def failure(self, code: int | None = None) -> str:
        code = self._proc.returncode if code is None else code
        words = [line.decode(errors="replace").strip() for line in self._stderr if line.strip()]
        if code is not None and code < 0:
            return f"killed by signal {-code}" + (f": {words[-1]}" if words else "")
        return words[-1] if words else f"exit status {code}"

    def __enter__(self) -> ToolStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        self._stderr_reader.join(timeout=2)
        if self._feeder is not None:
            self._feeder.join(timeout=2)  # a feed blocked on the network ends with it (a daemon thread)
        for pipe in (self._proc.stdout, self._proc.stderr):
            if pipe is not None:
                pipe.close()
