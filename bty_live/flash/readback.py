"""The read-back pass: read the image's extent of the target with O_DIRECT and blake3 it.

O_DIRECT reads bypass the page cache, so the bytes hashed are the bytes the device returns,
not what the kernel remembers having written. A reader thread fills page-aligned buffers while
a hasher thread digests the previous ones.

The pass can run behind the write (the default for a flash): the writer releases each range it
has written, and every FLUSH_WINDOW the reader flushes the device (so what it reads is what the disk
keeps, not what its volatile cache holds) and reads that window back while the next one is
being written. On a device that reads and writes at once, the verified flash then costs little
more than the unverified one. The last window is read when the engine says the write is over
(`finish`), after its own flush.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import blake3

from bty_live.errors import TargetIOError, TargetVanishedError
from bty_live.flash.pipeline import FLUSH_WINDOW, POLL, Aborted, BufferPool, Channel, StageRunner
from bty_live.flash.profile import StageTime, waiting
from bty_live.units import format_size

#: large reads keep a real disk's queue busy; 4 x 16 MiB bounds the memory
CHUNK = 16 << 20
BUFFERS = 4

#: the regions laid over what the disk holds, as (offset, bytes): asked again for every chunk
#: read, because behind a write the engine's held regions fill up as the write goes
Overlay = Callable[[], Sequence[tuple[int, memoryview]]]


@dataclass
class ReadCounters:
    bytes_read: int = 0
    bytes_hashed: int = 0


@dataclass(frozen=True)
class ReadbackResult:
    size: int
    digest: str
    seconds: float
    stages: tuple[StageTime, ...] = ()


class ReadbackPass:
    """blake3 of the first `size` bytes of the device at `path`, read with O_DIRECT, as the
    writer releases them (`release`) and at the latest once the size is known (`finish`)."""

    def __init__(self, path: str, *, cancel: threading.Event | None = None, overlay: Overlay = lambda: (),
                 window: int | None = None) -> None:
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise TargetVanishedError(f"target {path} vanished before the read-back; reconnect it and "
                                      "flash again") from exc
        except OSError as exc:
            raise TargetIOError(f"target {path} cannot be opened for the read-back: {exc.strerror}") from exc
        self.path = path
        self.counters = ReadCounters()
        self.runner = StageRunner(cancel)
        self._overlay = overlay
        self._window = FLUSH_WINDOW if window is None else window
        self._pool = BufferPool(BUFFERS, CHUNK)
        self._channel = Channel(self.runner.abort)
        self._hasher = blake3.blake3()
        self._block = _logical_block_size(self.fd)
        self._lock = threading.Condition()
        self._released = 0  # every byte before this one has been written
        self._size: int | None = None  # known once the write is over
        self._started = time.monotonic()
        self._closed = False

    def start(self) -> ReadbackPass:
        self._started = time.monotonic()
        self.runner.start("readback-read", self._read)
        self.runner.start("readback-hash", self._digest)
        return self

    def release(self, end: int) -> None:
        """The writer's word: the image's bytes before `end` have been written."""
        with self._lock:
            if end > self._released:
                self._released = end
                self._lock.notify_all()

    def finish(self, size: int) -> None:
        """The write is over and the image is `size` bytes: read the rest."""
        with self._lock:
            self._size = size
            self._lock.notify_all()

    def wait(self, tick: Callable[[ReadCounters], None] = lambda _: None) -> ReadbackResult:
        try:
            self.runner.wait(lambda: tick(self.counters))
        finally:
            self.close()
        return ReadbackResult(size=self._size or 0, digest=self._hasher.hexdigest(),
                              seconds=time.monotonic() - self._started, stages=tuple(self.runner.stages))

    def stop(self) -> None:
        """Stop the stages (the write failed, or the run is cancelled) and let go of the device."""
        self.runner.abort.set()
        self.runner.join()
        self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._pool.close()
            os.close(self.fd)

    # -- the stages -------------------------------------------------------------------------------

    def _next_end(self, offset: int) -> int | None:
        """Block until there is something to read from `offset`: the end to read up to, or None
        at the end of the image."""
        with self._lock, waiting("input"):
            while True:
                if self.runner.abort.is_set():
                    raise Aborted
                if self._size is not None:
                    return self._size if offset < self._size else None
                if self._released - offset >= self._window:
                    return self._released
                self._lock.wait(POLL)

    def _read(self) -> None:
        offset = 0
        while (end := self._next_end(offset)) is not None:
            self._flush()
            while offset < end:
                buf = self._pool.acquire(self.runner.abort, consumers=1)
                want = min(CHUNK, end - offset)
                padded = want + (-want) % self._block
                try:
                    got = os.preadv(self.fd, [buf.view[:padded]], offset)
                except OSError as exc:
                    raise TargetIOError(
                        f"I/O error reading back {self.path} at {format_size(offset)} ({exc.strerror}); the disk "
                        "may be failing: check `dmesg`, then try again or use another disk"
                    ) from exc
                if got < want:
                    raise TargetIOError(
                        f"read-back of {self.path} stopped at {format_size(offset + got)} of "
                        f"{format_size(self._size or end)}; the disk is smaller than it said or was removed"
                    )
                _lay_over(buf.view, offset, want, self._overlay())
                buf.offset, buf.length = offset, want
                self._channel.put(buf)
                offset += want
                self.counters.bytes_read = offset
        self._channel.put(None)

    def _flush(self) -> None:
        """What is read back must be on the disk, not only in its volatile cache: a flush covers
        every write that returned before it (the writer's, through its own descriptor)."""
        try:
            os.fsync(self.fd)
        except OSError as exc:
            raise TargetIOError(f"flushing {self.path} before reading it back failed ({exc.strerror}); the "
                                "disk may be failing: check `dmesg`, then try again or use another disk") from exc

    def _digest(self) -> None:
        for buf in self._channel:
            data = buf.view[: buf.length]
            self._hasher.update(data)
            data.release()
            self.counters.bytes_hashed = buf.offset + buf.length
            self._pool.release(buf)


def readback_digest(
    path: str,
    size: int,
    *,
    tick: Callable[[ReadCounters], None] = lambda _: None,
    cancel: threading.Event | None = None,
    overlay: Sequence[tuple[int, memoryview]] = (),
) -> ReadbackResult:
    """blake3 of the first `size` bytes of the device at `path`, read with O_DIRECT, after the
    write (a pass of its own).

    `overlay` lists (offset, bytes) that replace what the disk holds there: the regions the
    engine writes last (bty_live.flash.deferred), hashed from memory and checked on their own after
    they are written."""
    readback = ReadbackPass(path, cancel=cancel, overlay=lambda: overlay)
    readback.finish(size)
    return readback.start().wait(tick)


def _lay_over(view: memoryview, offset: int, length: int, overlay: Sequence[tuple[int, memoryview]]) -> None:
    end = offset + length
    for at, data in overlay:
        start, stop = max(offset, at), min(end, at + len(data))
        if start < stop:
            view[start - offset : stop - offset] = data[start - at : stop - at]


def _logical_block_size(fd: int) -> int:
    import fcntl
    import struct

    from bty_live.flash.target import BLKSSZGET

    try:
        return int(struct.unpack("i", fcntl.ioctl(fd, BLKSSZGET, b"\0" * 4))[0])
    except OSError:
        return 4096  # not a block device (a file in tests): any multiple of the page size works
