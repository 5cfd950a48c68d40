"""Thread plumbing shared by the write and read-back passes.

A pass is a few stage threads connected by bounded queues of page-aligned buffers. The stages'
heavy calls (zstd decompression, blake3, pread/pwrite, ioctls) release the GIL, so the stages
really overlap. Memory is bounded by the buffer pool. The first exception in any stage stops
every stage (an `abort` event plus sentinels) and is re-raised in the calling thread, which
also turns Ctrl-C into a stop within a fraction of a second.
"""

from __future__ import annotations

import mmap
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from bty_live.errors import Cancelled, stopped_by
from bty_live.flash.profile import StageTime, stage_clock, waiting
from bty_live.signals import interrupt_signal

POLL = 0.05  # seconds a blocked stage waits before re-checking the abort flag
#: how far a write runs ahead of its flushes: the flush thread of a write without a read-back
#: (flash/copy.py) and the read-back behind the write (flash/readback.py) flush the target each
#: time this much more has been written (measured, 1 GiB plain loop: the write-out then overlaps
#: the decompression instead of all coming at the final flush)
FLUSH_WINDOW = 256 << 20


class Aborted(Exception):
    """Raised inside a stage when another stage failed or the run was cancelled."""


@dataclass(eq=False)
class Buffer:
    memory: mmap.mmap
    view: memoryview
    #: consumers still reading this buffer; it returns to the pool at zero
    pending: int = 0
    #: image offset of the first byte and the count of valid bytes
    offset: int = 0
    length: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class BufferPool:
    def __init__(self, count: int, size: int) -> None:
        self.size = size
        self._free: queue.Queue[Buffer] = queue.Queue()
        self._all: list[Buffer] = []
        for _ in range(count):
            memory = mmap.mmap(-1, size)
            buf = Buffer(memory, memoryview(memory))
            self._all.append(buf)
            self._free.put(buf)

    def acquire(self, abort: threading.Event, consumers: int) -> Buffer:
        with waiting("output"):  # every buffer is still downstream: the consumers are slower
            while True:
                if abort.is_set():
                    raise Aborted
                try:
                    buf = self._free.get(timeout=POLL)
                except queue.Empty:
                    continue
                buf.pending = consumers
                return buf

    def release(self, buf: Buffer) -> None:
        with buf.lock:
            buf.pending -= 1
            done = buf.pending == 0
        if done:
            self._free.put(buf)

    def close(self) -> None:
        for buf in self._all:
            try:
                buf.view.release()
                buf.memory.close()
            except BufferError:
                pass  # a failed stage's traceback still holds a slice: the GC frees it later


class Channel:
    """A bounded FIFO of buffers from one stage to another; None marks the end."""

    def __init__(self, abort: threading.Event, maxsize: int = 0) -> None:
        self._queue: queue.Queue[Buffer | None] = queue.Queue(maxsize)
        self._abort = abort

    def put(self, item: Buffer | None) -> None:
        with waiting("output"):
            while True:
                if self._abort.is_set():
                    raise Aborted
                try:
                    self._queue.put(item, timeout=POLL)
                    return
                except queue.Full:
                    continue

    def __iter__(self) -> Iterator[Buffer]:
        while (item := self.take()) is not None:
            yield item

    def take(self) -> Buffer | None:
        """The next buffer, or None at the end."""
        with waiting("input"):
            return self._get()

    def _get(self) -> Buffer | None:
        while True:
            if self._abort.is_set():
                raise Aborted
            try:
                return self._queue.get(timeout=POLL)
            except queue.Empty:
                continue


class StageRunner:
    """Runs stage functions in threads; `wait()` ticks progress and re-raises the first error."""

    def __init__(self, cancel: threading.Event | None = None) -> None:
        self.abort = threading.Event()
        self.cancel = cancel or threading.Event()
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        #: each stage's busy and waiting time (bty_live.flash.profile)
        self.stages: list[StageTime] = []

    def start(self, name: str, target: Callable[[], None]) -> None:
        stage = StageTime(name)
        self.stages.append(stage)
        thread = threading.Thread(target=self._guard, args=(target, stage), name=f"bty-{name}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _guard(self, target: Callable[[], None], stage: StageTime) -> None:
        try:
            with stage_clock(stage):
                target()
        except Aborted:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            self.fail(exc)

    def fail(self, exc: BaseException) -> None:
        with self._lock:
            if self._error is None:
                self._error = exc
        self.abort.set()

    def join(self, timeout: float = 5) -> None:
        """Wait for the stages to end (after an abort, each ends within POLL seconds)."""
        for thread in self._threads:
            thread.join(timeout)

    def wait(self, tick: Callable[[], None], interval: float = 0.1) -> None:
        """Block until every stage ends, calling `tick` every `interval` seconds.

        Ctrl-C (KeyboardInterrupt in this thread) or a set `cancel` event stops the stages and
        raises Cancelled; a stage's exception is re-raised here.
        """
        try:
            for thread in self._threads:
                while thread.is_alive():
                    thread.join(interval)
                    if self.cancel.is_set() and not self.abort.is_set():
                        self.fail(Cancelled("cancelled by the user"))
                    tick()
        except KeyboardInterrupt as exc:
            self.fail(stopped_by(interrupt_signal(exc)))
            for thread in self._threads:
                thread.join(5)
        if self._error is not None:
            raise self._error
