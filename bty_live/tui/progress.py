"""The flash's event stream as the TUI consumes it: throttled at the source, folded into a state.

Both halves are plain Python (no Textual), so they are tested without an app.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from bty_live.events import Event, EventSink, Kind, Phase

#: progress updates per second the TUI accepts; a redraw costs more on a slow console than a
#: progress event costs the engine, so this is low, and messages are never dropped
MAX_PROGRESS_RATE = 5.0


class EventThrottle:
    """An EventSink that forwards every START, END, INFO and ERROR event, and PROGRESS events
    at most `max_rate` times a second (the newest one wins; an END carries the final numbers).

    Called on the engine's thread: it must stay cheap and never block the copy loop.
    """

    def __init__(self, forward: EventSink, max_rate: float = MAX_PROGRESS_RATE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.forward = forward
        self.interval = 1.0 / max_rate
        self.clock = clock
        self._last: float | None = None
        self._lock = threading.Lock()
        #: how many PROGRESS events were dropped (reported in the log when the flash ends)
        self.dropped = 0

    def __call__(self, event: Event) -> None:
        if event.kind == Kind.PROGRESS:
            with self._lock:
                now = self.clock()
                if self._last is not None and now - self._last < self.interval:
                    self.dropped += 1
                    return
                self._last = now
        elif event.kind == Kind.START:
            with self._lock:
                self._last = None  # a new phase shows its first progress at once
        self.forward(event)


#: the phases a flash goes through, in order, as the progress checklist shows them (tuning is
#: added when the plan has a task)
STEPS: tuple[Phase, ...] = (Phase.WRITE, Phase.VERIFY, Phase.FIXUP, Phase.TUNE)
#: the phases whose PROGRESS and END events carry byte counts: a flash's two, a capture's one
_COUNTED = (Phase.WRITE, Phase.VERIFY, Phase.CAPTURE)


@dataclass(frozen=True)
class FlashProgress:
    """What the Progress screen shows, folded from the events seen so far."""

    phase: Phase = Phase.PLAN
    #: bytes handled in the current phase (written or zero-filled; or read back) and its total
    done: int = 0
    total: int | None = None
    rate: float = 0.0
    eta: float | None = None
    #: of the write phase: data bytes written, and bytes zero-filled with BLKZEROOUT; of a
    #: capture: the image file's bytes written, and the disk's bytes in all-zero MiB
    written: int = 0
    zeroed: int = 0
    #: time.time() of the first event: elapsed time counts from here
    started: float | None = None
    last_message: str = ""
    #: phases that ended, with their seconds
    finished: dict[Phase, float] = field(default_factory=dict)
    cancelling: bool = False
    #: the plan runs a tuning task after the fix-ups
    tuning: bool = False
    #: a capture (`bty capture`), not a flash: one step, reading the disk into the image
    capture: bool = False

    @property
    def steps(self) -> tuple[Phase, ...]:
        if self.capture:
            return (Phase.CAPTURE,)
        return STEPS if self.tuning else tuple(p for p in STEPS if p != Phase.TUNE)

    def apply(self, event: Event) -> FlashProgress:
        state = self if self.started is not None else replace(self, started=event.timestamp)
        if event.kind == Kind.START:
            state = replace(state, phase=event.phase, done=0, total=event.total, rate=0.0, eta=None)
        elif event.kind in (Kind.PROGRESS, Kind.END) and event.phase in _COUNTED:
            state = replace(state, phase=event.phase, done=event.bytes_out, total=event.total or state.total,
                            rate=event.rate, eta=event.eta)
            if event.phase == Phase.WRITE:
                state = replace(state, written=event.bytes_out - event.zero_bytes, zeroed=event.zero_bytes)
            elif event.phase == Phase.CAPTURE:
                state = replace(state, written=event.bytes_in, zeroed=event.zero_bytes)
        if event.kind == Kind.END and event.phase in self.steps:
            state = replace(state, finished={**state.finished, event.phase: event.elapsed})
        if event.kind == Kind.END and event.phase == Phase.DONE:
            state = replace(state, phase=Phase.DONE, eta=0.0)
        if event.message and event.kind in (Kind.START, Kind.INFO, Kind.END, Kind.ERROR):
            state = replace(state, last_message=event.message)
        if event.kind == Kind.ERROR:
            state = replace(state, phase=Phase.FAILED)
        return state

    @property
    def fraction(self) -> float | None:
        if self.phase in (Phase.FIXUP, Phase.TUNE, Phase.DONE):
            return 1.0
        if not self.total:
            return None
        return min(1.0, self.done / self.total)

    def elapsed(self, now: float) -> float:
        return max(0.0, now - self.started) if self.started is not None else 0.0
