"""The read-back pass: read the image's extent of the target with O_DIRECT and blake3 it.

O_DIRECT reads bypass the page cache, so the bytes hashed are the bytes the device returns,
not what the kernel remembers having written. A reader thread fills page-aligned buffers while
a hasher thread digests the previous ones.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import blake3

from bty_live.errors import TargetIOError, TargetVanishedError
from bty_live.flash.pipeline import BufferPool, Channel, StageRunner
from bty_live.units import format_size

#: large reads keep a real disk's queue busy; 4 x 16 MiB bounds the memory
CHUNK = 16 << 20
BUFFERS = 4


@dataclass
class ReadCounters:
    bytes_read: int = 0
    bytes_hashed: int = 0


@dataclass(frozen=True)
class ReadbackResult:
    size: int
    digest: str
    seconds: float


def readback_digest(
    path: str,
    size: int,
    *,
    tick: Callable[[ReadCounters], None] = lambda _: None,
    cancel: threading.Event | None = None,
    overlay: Sequence[tuple[int, memoryview]] = (),
) -> ReadbackResult:
    """blake3 of the first `size` bytes of the device at `path`, read with O_DIRECT.

    `overlay` lists (offset, bytes) that replace what the disk holds there: the regions the
    engine writes last (bty_live.flash.deferred), hashed from memory and checked on their own after
    they are written."""
    started = time.monotonic()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise TargetVanishedError(f"target {path} vanished before the read-back; reconnect it and "
                                  "flash again") from exc
    except OSError as exc:
        raise TargetIOError(f"target {path} cannot be opened for the read-back: {exc.strerror}") from exc
    counters = ReadCounters()
    runner = StageRunner(cancel)
    pool = BufferPool(BUFFERS, CHUNK)
    channel = Channel(runner.abort)
    hasher = blake3.blake3()
    block = _logical_block_size(fd)

    def read() -> None:
        offset = 0
        while offset < size:
            buf = pool.acquire(runner.abort, consumers=1)
            want = min(CHUNK, size - offset)
            padded = want + (-want) % block
            try:
                got = os.preadv(fd, [buf.view[:padded]], offset)
            except OSError as exc:
                raise TargetIOError(
                    f"I/O error reading back {path} at {format_size(offset)} ({exc.strerror}); the disk may "
                    "be failing: check `dmesg`, then try again or use another disk"
                ) from exc
            if got < want:
                raise TargetIOError(
                    f"read-back of {path} stopped at {format_size(offset + got)} of {format_size(size)}; "
                    "the disk is smaller than it said or was removed"
                )
            _lay_over(buf.view, offset, want, overlay)
            buf.offset, buf.length = offset, want
            channel.put(buf)
            offset += want
            counters.bytes_read = offset
        channel.put(None)

    def digest() -> None:
        for buf in channel:
            data = buf.view[: buf.length]
            hasher.update(data)
            data.release()
            counters.bytes_hashed = buf.offset + buf.length
            pool.release(buf)

    runner.start("readback-read", read)
    runner.start("readback-hash", digest)
    try:
        runner.wait(lambda: tick(counters))
    finally:
        pool.close()
        os.close(fd)
    return ReadbackResult(size=size, digest=hasher.hexdigest(), seconds=time.monotonic() - started)


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
