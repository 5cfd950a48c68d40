"""The one place bty-live starts subprocesses: no shell, a clean error when a tool is missing; a
tool's output may also be read as a stream (ToolStream)."""

from __future__ import annotations

import io
import shutil
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path

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


class ToolStream:
    """The standard output of a running tool, read as a stream (e.g. `nbdcopy ... -` writing a
    virtual disk's bytes). Its standard error is kept (the last lines) for the message when it
    fails; `finish()` after the end of the output waits for the tool and raises ToolError when it
    failed. `close()` stops it if it still runs."""

    def __init__(self, argv: Sequence[str]) -> None:
        if shutil.which(argv[0]) is None:
            raise ToolError(f"{argv[0]} is not installed; run `make setup` (or install it with apt)")
        self.argv = list(argv)
        self._proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE)
        self._stderr: list[bytes] = []
        self._stderr_reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._stderr_reader.start()

    def _read_stderr(self) -> None:
        assert self._proc.stderr is not None
        try:
            for line in self._proc.stderr:
                self._stderr = [*self._stderr[-19:], line]
        except (OSError, ValueError):  # closed by close() while a grandchild still held it open
            return

    def readinto(self, buffer: memoryview, /) -> int:
        stdout = self._proc.stdout
        assert isinstance(stdout, io.BufferedReader)
        return stdout.readinto(buffer) or 0

    def read(self, size: int = -1, /) -> bytes:
        assert self._proc.stdout is not None
        return self._proc.stdout.read(size)

    def finish(self, timeout: float = 60) -> None:
        """Wait for the tool to exit; ToolError with its last words unless it succeeded."""
        try:
            code = self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            self.close()
            raise ToolError(f"{self.argv[0]} did not exit within {timeout:.0f} s after its output ended") from exc
        self._stderr_reader.join(timeout=5)
        if code != 0:
            raise ToolError(f"{self.argv[0]} failed ({self.failure(code)})")

    def failure(self, code: int | None = None) -> str:
        code = self._proc.returncode if code is None else code
        words = [line.decode(errors="replace").strip() for line in self._stderr if line.strip()]
        if code is not None and code < 0:
            return f"killed by signal {-code}" + (f": {words[-1]}" if words else "")
        return words[-1] if words else f"exit status {code}"

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        self._stderr_reader.join(timeout=2)
        for pipe in (self._proc.stdout, self._proc.stderr):
            if pipe is not None:
                pipe.close()
