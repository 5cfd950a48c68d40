"""How to capture: read -> (hash + zero count | compress frames on every core -> write), overlapped.

    read (O_DIRECT) --+--> hash  (blake3 of every byte; all-zero MiB counted)
                      +--> pack  (FramePacker: 2 MiB frames compressed on all cores, written in order)

Both consumers read the same page-aligned buffer; it goes back to the pool when the hash has
seen it and its frame is written. Memory is bounded by the pool (a few frame-sized buffers per core),
never by the disk. The patches of --trim (the regenerated GPT) are laid over each buffer as it is
read, so the hash and the image see the same bytes.

Zero ranges cost little: an all-zero frame is written from the packer's cache instead of being
compressed, and blake3 (which must cover every byte: the manifest's digest is what a flashed
disk reads back as) hashes zeros at several GB/s on one core.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import BinaryIO

import blake3

from bty_live.capture.reader import DiskReader
from bty_live.errors import TargetIOError
from bty_live.flash.pipeline import Buffer, BufferPool, Channel, StageRunner
from bty_live.image.block_index import BlockIndex, BlockIndexer
from bty_live.image.gpt_resize import Patch
from bty_live.image.pack import FRAME_SIZE, FramePacker, PackedStream
from bty_live.units import format_size

#: all-zero stretches are counted in pieces of this size (the flash zeroes in the same pieces)
ZERO_GRANULE = 1 << 20
_ZEROS = bytearray(ZERO_GRANULE)
_ZERO_FRAME = bytearray(FRAME_SIZE)


@dataclass
class CaptureCounters:
    """Live counters, read by the progress ticker while the stages update them."""

    bytes_read: int = 0
    bytes_hashed: int = 0
    bytes_packed: int = 0  # disk bytes whose frames are written
    compressed: int = 0  # bytes of the image file written
    zero_bytes: int = 0  # of the bytes hashed, those in all-zero MiB


@dataclass(frozen=True)
class CaptureCopy:
    size: int  # bytes captured
    compressed_size: int
    frames: int
    zero_frames: int
    zero_bytes: int
    digest: str  # blake3 of the image (the disk's bytes with the patches laid over)
    sha256: str  # of the image file
    seconds: float
    index: BlockIndex  # a blake3 per frame, for differential flashes of the image


class CapturePass:
    def __init__(
        self,
        reader: DiskReader,
        out: BinaryIO,
        *,
        length: int,
        patches: Sequence[Patch] = (),
        level: int,
        output_name: str,
        workers: int | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        self.reader = reader
        self.out = out
        self.length = length
        self.patches = tuple(patches)
        self.level = level
        self.output_name = output_name
        self.workers = workers or max(1, os.cpu_count() or 1)
        self.counters = CaptureCounters()
        self.runner = StageRunner(cancel)
        self._hasher = blake3.blake3()
        self._indexer = BlockIndexer(FRAME_SIZE)  # fed whole frames: one block per frame
        # the packer keeps up to workers * 2 frames in flight; the hash and the reader a few more
        self._pool = BufferPool(self.workers * 2 + 4, FRAME_SIZE)
        self._to_hash = Channel(self.runner.abort)
        self._to_pack = Channel(self.runner.abort)
        self._packed: PackedStream | None = None

    def run(self, tick: Callable[[CaptureCounters], None]) -> CaptureCopy:
        started = time.monotonic()
        self.runner.start("read", self._read)
        self.runner.start("hash", self._hash)
        self.runner.start("pack", self._pack)
        try:
            self.runner.wait(lambda: tick(self.counters))
        finally:
            self._pool.close()
        packed = self._packed
        assert packed is not None
        return CaptureCopy(size=packed.size, compressed_size=packed.compressed_size, frames=packed.frames,
                           zero_frames=packed.zero_frames, zero_bytes=self.counters.zero_bytes,
                           digest=self._hasher.hexdigest(), sha256=packed.sha256,
                           seconds=time.monotonic() - started, index=self._indexer.finish())

    # -- stage 1: read the disk ---------------------------------------------------------------

    def _read(self) -> None:
        block = self.reader.block
        offset = 0
        while offset < self.length:
            buf = self._pool.acquire(self.runner.abort, consumers=2)
            want = min(FRAME_SIZE, self.length - offset)
            padded = want + (-want) % block
            self.reader.read_exactly(buf.view[:padded], offset, want)
            _lay_over(buf.view, offset, want, self.patches)
            buf.offset, buf.length = offset, want
            offset += want
            self.counters.bytes_read = offset
            self._to_hash.put(buf)
            self._to_pack.put(buf)
        self._to_hash.put(None)
        self._to_pack.put(None)

    # -- stage 2: hash and count zeros --------------------------------------------------------

    def _hash(self) -> None:
        counters = self.counters
        for buf in self._to_hash:
            data = buf.view[: buf.length]
            self._hasher.update(data)
            self._indexer.feed(data)
            counters.zero_bytes += _zero_bytes(data)
            data.release()
            counters.bytes_hashed = buf.offset + buf.length
            self._pool.release(buf)

    # -- stage 3: compress and write ----------------------------------------------------------

    def _pack(self) -> None:
        counters = self.counters

        def written(stream: PackedStream) -> None:
            counters.bytes_packed, counters.compressed = stream.size, stream.compressed_size

        try:
            with FramePacker(self.out, level=self.level, workers=self.workers, on_frame=written,
                             abort=self.runner.abort) as packer:
                for buf in self._to_pack:
                    packer.add(buf.view[: buf.length], done=self._releaser(buf))
                self._packed = packer.finish()
        except OSError as exc:
            raise output_error(self.output_name, exc) from exc


    def _releaser(self, buf: Buffer) -> Callable[[], None]:
        return lambda: self._pool.release(buf)


def output_error(name: str, exc: OSError) -> TargetIOError:
    """A failed write of the image file, in one line: what, why, and the fix."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return TargetIOError(f"no space left for {name} ({exc.strerror}); the partial image was removed: free "
                             "space or write the capture elsewhere")
    return TargetIOError(f"cannot write {name} ({exc.strerror}); the partial image was removed")


def _zero_bytes(data: memoryview) -> int:
    """Bytes of `data` in all-zero ZERO_GRANULE pieces (one memcmp for a whole zero frame)."""
    # bytearray on the left: its == is one memcmp; memoryview's compares byte by byte, 40x slower
    if len(data) == FRAME_SIZE and _ZERO_FRAME == data:  # noqa: SIM300
        return FRAME_SIZE
    zero = 0
    for pos in range(0, len(data), ZERO_GRANULE):
        piece = data[pos : pos + ZERO_GRANULE]
        if (_ZEROS if len(piece) == ZERO_GRANULE else bytearray(len(piece))) == piece:
            zero += len(piece)
        piece.release()
    return zero


def _lay_over(view: memoryview, offset: int, length: int, patches: Sequence[Patch]) -> None:
    end = offset + length
    for patch in patches:
        start, stop = max(offset, patch.offset), min(end, patch.end)
        if start < stop:
            view[start - offset : stop - offset] = patch.data[start - patch.offset : stop - patch.offset]


def describe(copy: CaptureCopy) -> str:
    ratio = copy.compressed_size / copy.size if copy.size else 0.0
    return (f"captured {format_size(copy.size)} ({format_size(copy.zero_bytes)} of it zeros) into "
            f"{format_size(copy.compressed_size)} ({ratio:.1%}), {copy.frames} frames")

