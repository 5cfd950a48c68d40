"""The progress-event stream every front-end renders.

The engine calls an `EventSink` with `Event`s; the CLI prints a bar or JSON lines, the TUI
forwards them as Textual messages, the PXE agent posts them to its server. One schema for all.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class Phase(StrEnum):
    PLAN = "plan"
    WRITE = "write"  # read -> decompress -> hash -> write
    VERIFY = "verify"  # read-back of the target
    FIXUP = "fixup"  # partition-table fix-ups
    TUNE = "tune"  # post-flash tuning (CIJOE)
    #: `bty capture`: read the disk -> hash + compress -> write the image file; bytes_out counts
    #: the disk's bytes captured, bytes_in the image file's bytes written
    CAPTURE = "capture"
    DONE = "done"
    FAILED = "failed"

    @property
    def label(self) -> str:
        """The phase's short name in every front-end's lines ("write", "fix-ups", ...)."""
        return "fix-ups" if self is Phase.FIXUP else self.value


class Kind(StrEnum):
    START = "start"  # a phase begins
    PROGRESS = "progress"  # bytes moved within a phase
    END = "end"  # a phase finished
    INFO = "info"  # a message worth showing (a decision, a fix-up done)
    ERROR = "error"  # the run failed; `message` is the one-line cause


@dataclass(frozen=True)
class Event:
    phase: Phase
    kind: Kind
    #: bytes of the image file read so far (compressed)
    bytes_in: int = 0
    #: bytes of the decompressed image handled so far (written, or read back)
    bytes_out: int = 0
    #: decompressed image size, when known
    total: int | None = None
    #: of bytes_out, how many were zero ranges written with BLKZEROOUT instead of data
    zero_bytes: int = 0
    #: bytes per second of bytes_out over the phase so far
    rate: float = 0.0
    #: estimated seconds left in the phase, when total is known
    eta: float | None = None
    #: blake3 hex digest, on END of the write and verify phases
    digest: str | None = None
    message: str = ""
    #: seconds since the phase started
    elapsed: float = 0.0
    #: error class name (see bty_live.errors) on ERROR events
    error: str | None = None
    timestamp: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @property
    def fraction(self) -> float | None:
        if not self.total:
            return None
        return min(1.0, self.bytes_out / self.total)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Event:
        values = dict(data)
        values["phase"] = Phase(values["phase"])
        values["kind"] = Kind(values["kind"])
        return cls(**values)


EventSink = Callable[[Event], None]


def discard(_event: Event) -> None:
    """A sink that drops every event."""


class ProgressMeter:
    """Turns byte counts into throttled PROGRESS events with rate and ETA for one phase."""

    def __init__(self, sink: EventSink, phase: Phase, total: int | None, interval: float = 0.1) -> None:
        self.sink = sink
        self.phase = phase
        self.total = total
        self.interval = interval
        self.started = time.monotonic()
        self._last_emit = 0.0

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def start(self, message: str = "") -> None:
        self.started = time.monotonic()
        self.sink(Event(self.phase, Kind.START, total=self.total, message=message))

    def update(self, bytes_in: int, bytes_out: int, zero_bytes: int = 0, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_emit < self.interval:
            return
        self._last_emit = now
        self.sink(self._event(Kind.PROGRESS, bytes_in, bytes_out, zero_bytes))

    def end(self, bytes_in: int, bytes_out: int, zero_bytes: int = 0, digest: str | None = None,
            message: str = "") -> None:
        self.sink(self._event(Kind.END, bytes_in, bytes_out, zero_bytes, digest=digest, message=message))

    def _event(self, kind: Kind, bytes_in: int, bytes_out: int, zero_bytes: int,
               digest: str | None = None, message: str = "") -> Event:
        elapsed = self.elapsed()
        rate = bytes_out / elapsed if elapsed > 0 else 0.0
        eta = None
        if self.total and rate > 0:
            eta = max(0.0, (self.total - bytes_out) / rate)
        return Event(self.phase, kind, bytes_in=bytes_in, bytes_out=bytes_out, total=self.total,
                     zero_bytes=zero_bytes, rate=rate, eta=eta, digest=digest, message=message,
                     elapsed=elapsed)
