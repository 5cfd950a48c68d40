"""Where a flash's time goes: each pipeline stage's busy and waiting time, on the process's clock.

Every stage thread (bty_live.flash.pipeline.StageRunner) gets a StageTime; the blocking calls
between stages (taking a buffer from upstream, handing one downstream, waiting for a free
buffer) add the time they blocked to it. A stage that mostly waits for its input is not the
bottleneck; the one that is busy all along is. Times are seconds since the process started
(CLOCK_BOOTTIME against /proc/self/stat), so start-up shows too: `first_write` is how long the
user waited, from the command to the first byte on the disk. The receipt carries it all
(`profile`), and `tools/bench.py --profile` draws it.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any


def _process_start() -> float:
    """The process's start on CLOCK_BOOTTIME, in seconds (10 ms resolution); now if unknown."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22, counted after the command name
    except (OSError, ValueError, IndexError):
        return time.clock_gettime(time.CLOCK_BOOTTIME)


PROCESS_START = _process_start()


def since_start() -> float:
    """Seconds since this process started."""
    return time.clock_gettime(time.CLOCK_BOOTTIME) - PROCESS_START


@dataclass
class StageTime:
    """One stage thread's life: when it ran, and how long it blocked on either side."""

    name: str
    start: float = field(default_factory=since_start)
    end: float | None = None
    wait_input: float = 0.0  # blocked for data from upstream
    wait_output: float = 0.0  # blocked handing data downstream, or for a free buffer

    @property
    def busy(self) -> float:
        end = since_start() if self.end is None else self.end
        return max(0.0, end - self.start - self.wait_input - self.wait_output)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "start": round(self.start, 4), "end": round(self.end or since_start(), 4),
                "busy": round(self.busy, 4), "wait_input": round(self.wait_input, 4),
                "wait_output": round(self.wait_output, 4)}


_current = threading.local()


def current_stage() -> StageTime | None:
    stage: StageTime | None = getattr(_current, "stage", None)
    return stage


@contextlib.contextmanager
def stage_clock(stage: StageTime) -> Iterator[StageTime]:
    """Run the calling thread's work as `stage`: its waits are counted there."""
    _current.stage = stage
    try:
        yield stage
    finally:
        stage.end = since_start()
        _current.stage = None


@contextlib.contextmanager
def waiting(side: str) -> Iterator[None]:
    """Count the time the block takes as the current stage's wait for "input" or "output"."""
    started = time.monotonic()
    try:
        yield
    finally:
        stage = current_stage()
        if stage is not None:
            if side == "input":
                stage.wait_input += time.monotonic() - started
            else:
                stage.wait_output += time.monotonic() - started


@dataclass
class FlashProfile:
    """What the receipt's `profile` holds."""

    stages: list[StageTime] = field(default_factory=list)
    first_write: float | None = None  # seconds from the process start to the first image byte written

    def add(self, stages: list[StageTime]) -> None:
        self.stages.extend(stages)

    def to_dict(self) -> dict[str, Any]:
        return {"first_write": None if self.first_write is None else round(self.first_write, 4),
                "stages": [stage.to_dict() for stage in self.stages]}
