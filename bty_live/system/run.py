"""The one place bty-live starts subprocesses: no shell, a clean error when a tool is missing."""

from __future__ import annotations

import shutil
import subprocess
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
