"""Running the tools: preparation commands, and timed pipelines with their peak RSS."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

GNU_TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None  # the `time` package


def run_quiet(argv: Sequence[str], *, stdout: Path | None = None, timeout: float = 1800) -> None:
    """Run a preparation tool; raise RuntimeError with its stderr on failure."""
    with open(stdout, "wb") if stdout else open(os.devnull, "wb") as out:
        proc = subprocess.run(list(argv), stdout=out, stderr=subprocess.PIPE, timeout=timeout, check=False)
    if proc.returncode != 0:
        lines = proc.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(f"{' '.join(argv)} failed (exit {proc.returncode}): {' / '.join(lines[-3:])}")


@dataclass(frozen=True)
class PipelineResult:
    wall: float
    peak_rss_kib: int  # max over the pipeline's processes (GNU time's %M when available)
    wait4_rss_kib: int  # max ru_maxrss os.wait4 gave the bench itself (see rss_note())
    exit_codes: list[int]
    timed_out: bool


def rss_note() -> str:
    if GNU_TIME:
        return ("peak RSS: ru_maxrss from wait4, taken by GNU time around each process; the bench's own "
                "os.wait4 figure is kept as wait4_rss_kib but includes the bench's RSS inherited at fork")
    return "peak RSS: os.wait4 ru_maxrss in the bench (floor: the bench's own RSS, inherited at fork)"


def run_pipeline(stages: Sequence[Sequence[str]], log_path: Path, *, stdout_to_null: bool,
                 timeout: float) -> PipelineResult:
    """Start the pipeline, reap every process with os.wait4, time it all with perf_counter.

    A process execed straight from the bench starts with the bench's own RSS as its ru_maxrss
    (Linux carries the pre-exec high-water mark over), so each process runs under GNU time, a
    small parent whose wait4 sees only the tool. Each process gets its own session so a timeout
    (or Ctrl-C) can kill it with all its children.
    """
    procs: list[subprocess.Popen[bytes]] = []
    rss_files = [log_path.with_name(f"{log_path.stem}.rss{i}") for i in range(len(stages))]
    timed_out = threading.Event()

    def kill_all() -> None:
        timed_out.set()
        kill_groups(procs)

    watchdog = threading.Timer(timeout, kill_all)
    with open(log_path, "ab") as log, open(os.devnull, "wb") as null:
        started = time.perf_counter()
        try:
            previous = None
            for i, argv in enumerate(stages):
                last = i == len(stages) - 1
                stdout = (null if stdout_to_null else log) if last else subprocess.PIPE
                wrapped = [GNU_TIME, "-f", "%M", "-o", str(rss_files[i]), *argv] if GNU_TIME else list(argv)
                proc = subprocess.Popen(wrapped, stdin=previous if previous else subprocess.DEVNULL,
                                        stdout=stdout, stderr=log, start_new_session=True)
                if previous is not None:
                    previous.close()  # the next process holds the read end now
                previous = proc.stdout
                procs.append(proc)
            watchdog.start()
            wait4_peak, codes = 0, []
            for proc in procs:
                _, status, usage = os.wait4(proc.pid, 0)
                proc.returncode = os.waitstatus_to_exitcode(status)  # reaped: Popen must not wait again
                codes.append(proc.returncode)
                wait4_peak = max(wait4_peak, usage.ru_maxrss)
            wall = time.perf_counter() - started
        finally:
            watchdog.cancel()
            kill_groups([p for p in procs if p.returncode is None])
    measured = [read_rss(path) for path in rss_files] if GNU_TIME else []
    known = [m for m in measured if m is not None]
    peak = max(known) if known and len(known) == len(measured) else None
    for path in rss_files:
        path.unlink(missing_ok=True)
    return PipelineResult(wall=wall, peak_rss_kib=peak if peak is not None else wait4_peak,
                          wait4_rss_kib=wait4_peak, exit_codes=codes, timed_out=timed_out.is_set())


def read_rss(path: Path) -> int | None:
    """GNU time's -o file: maybe "Command exited with non-zero status N", then %M (KiB)."""
    try:
        lines = path.read_text().split()
        return int(lines[-1])
    except (OSError, ValueError, IndexError):
        return None


def kill_groups(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)


def last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""
