"""EventUplink: the engine's event sink that sends events to the server without slowing the flash.

The engine calls the sink from its copy loop, so the sink only queues and returns. A sender
thread posts what has queued, one batch at a time, at most every `interval` seconds. The queue
is bounded by construction: PROGRESS events of a phase replace each other (only the newest is
worth sending), INFO events beyond `max_info` are dropped, and START, END and ERROR events are
never dropped or merged. Batches keep the order the engine emitted. When the server is slow or
away the batch is retried with backoff while newer progress keeps merging behind it; `close()`
flushes what is left, giving up after its timeout.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bty_live.errors import NetworkError, ServerUnavailableError
from bty_live.events import Event, Kind, Phase
from bty_live.protocol.httpconn import Backoff

Post = Callable[[list[dict[str, Any]]], None]


@dataclass
class UplinkStats:
    sent: int = 0  # events the server accepted
    batches: int = 0  # successful posts
    merged: int = 0  # progress events replaced by a newer one before they were sent
    dropped_info: int = 0  # INFO events dropped because too many were waiting
    lost: int = 0  # events given up on (server refused them, or close() timed out)
    retries: int = 0  # failed posts that were tried again
    last_error: str = ""


class EventUplink:
    """An EventSink (callable with an Event) that posts batches from a background thread."""

    def __init__(self, post: Post, *, interval: float = 0.5, max_info: int = 500,
                 backoff: Backoff | None = None, clock: Callable[[], float] = time.monotonic,
                 on_refused: Callable[[NetworkError], None] | None = None) -> None:
        """`on_refused` hears of a batch the server refused for good (e.g. the agent stops a
        flash whose run the server withdrew)."""
        self._post = post
        self._on_refused = on_refused
        self.interval = interval
        self.max_info = max_info
        self.backoff = backoff or Backoff(attempts=1_000_000, first=0.5, cap=5.0)
        self._clock = clock
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._essential: list[tuple[int, Event]] = []
        self._progress: dict[Phase, tuple[int, Event]] = {}
        self._info_waiting = 0
        self._closing = False
        self._deadline: float | None = None
        self.stats = UplinkStats()
        self._thread = threading.Thread(target=self._run, name="bty-uplink", daemon=True)
        self._thread.start()

    # -- the sink: called by the engine, never blocks on the network ---------------------------

    def __call__(self, event: Event) -> None:
        with self._cond:
            seq = next(self._seq)
            if event.kind == Kind.PROGRESS:
                if event.phase in self._progress:
                    self.stats.merged += 1
                self._progress[event.phase] = (seq, event)
            elif event.kind == Kind.INFO and self._info_waiting >= self.max_info:
                self.stats.dropped_info += 1
            else:
                if event.kind == Kind.INFO:
                    self._info_waiting += 1
                self._essential.append((seq, event))
            self._cond.notify()

    def close(self, timeout: float = 30.0) -> UplinkStats:
        """Send what is queued (for at most `timeout` seconds) and stop the sender."""
        with self._cond:
            self._closing = True
            self._deadline = self._clock() + timeout
            self._cond.notify()
        self._thread.join()
        return self.stats

    # -- the sender thread ---------------------------------------------------------------------

    def _take(self) -> list[Event]:
        batch = sorted(self._essential + list(self._progress.values()), key=lambda item: item[0])
        self._essential, self._progress, self._info_waiting = [], {}, 0
        return [event for _, event in batch]

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._essential or self._progress or self._closing):
                    self._cond.wait()
                batch = self._take()
                closing = self._closing
            if batch:
                self._deliver(batch)
            elif closing:
                return
            if not closing:
                self._pause(self.interval)

    def _deliver(self, batch: list[Event]) -> None:
        payload = [event.to_dict() for event in batch]
        retry = 0
        while True:
            try:
                self._post(payload)
            except ServerUnavailableError as exc:
                self.stats.last_error = str(exc)
                if self._past_deadline():
                    self.stats.lost += len(batch)
                    return
                retry += 1
                self.stats.retries += 1
                self._pause(self.backoff.delay(retry), until_close=False)
                continue
            except NetworkError as exc:  # refused token, rejected batch: sending it again will not help
                self.stats.last_error = str(exc)
                self.stats.lost += len(batch)
                if self._on_refused is not None:
                    self._on_refused(exc)
                return
            self.stats.sent += len(batch)
            self.stats.batches += 1
            return

    def _past_deadline(self) -> bool:
        with self._cond:
            return self._deadline is not None and self._clock() >= self._deadline

    def _pause(self, seconds: float, *, until_close: bool = True) -> None:
        """Sleep `seconds`. `until_close`: wake up at once when close() is called; otherwise
        (a retry's backoff) sleep on while closing, but not past close()'s deadline."""
        with self._cond:
            if self._closing:
                if until_close or self._deadline is None:
                    return
                seconds = min(seconds, max(0.0, self._deadline - self._clock()))
            self._cond.wait(seconds)
