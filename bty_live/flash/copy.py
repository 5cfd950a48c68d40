"""How to copy: the write pass, read -> decompress -> (hash | zero-scan + write), overlapped.

Stages share a pool of page-aligned buffers:

    source --+--> hash  (blake3 of the image; optional extra checks such as bmap ranges)
             +--> write (zero-scan; data with O_DIRECT pwrite, zero runs with BLKZEROOUT)

The source is either one decompressing reader (any format), or, for zstd images made of many
independent frames that declare their sizes (what `bty images pack` writes), a frame reader
plus one decompressor per core, re-sequenced before hashing and writing. A single zstd frame
cannot be decompressed in parallel; a multi-frame one can, and that is what beats
`zstd -dc | dd` on a small machine.

Hashing and writing read the same buffer at the same time; it goes back to the pool when both
are done. The hash stage is left out when the read-back alone proves the disk against the
manifest's blake3 (bty_live.flash.engine).

Zero runs are found at ZERO_GRANULE granularity with a memcmp against a zero buffer (tens of
GB/s) and merged across buffers into long extents, so a mostly empty disk image costs a few
ioctls instead of gigabytes of writes. The target reads back exactly as the image, holes
included: unlike a sparse copy, nothing stale is left in the gaps.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import blake3
import zstandard

from bty_live.errors import DigestMismatchError, SourceCorruptError, TargetRefusedError
from bty_live.flash.pipeline import FLUSH_WINDOW, POLL, Aborted, Buffer, BufferPool, Channel, StageRunner
from bty_live.flash.profile import StageTime, since_start, waiting
from bty_live.flash.target import ZEROOUT_PIECE, TargetInfo
from bty_live.image.formats import ImageReader
from bty_live.image.sources import RawStream
from bty_live.image.zstd_frames import Frame
from bty_live.units import format_size, format_sizes

#: the size of the copy's buffers; a packed image's frame (2 MiB, or 8 MiB in older ones) fits one
CHUNK = 8 << 20
ZERO_GRANULE = 1 << 20
#: frames a parallel source may decompress at once (bounded by cores)
MAX_WORKERS = 4

_ZEROS = bytearray(ZERO_GRANULE)


@dataclass
class CopyCounters:
    """Live counters, read by the progress ticker while the stages update them."""

    bytes_in: int = 0  # image file bytes read
    bytes_out: int = 0  # decompressed bytes handled by the writer
    written: int = 0  # bytes written as data
    zeroed: int = 0  # bytes made zero with BLKZEROOUT


@dataclass(frozen=True)
class CopyResult:
    bytes_in: int
    size: int  # decompressed image size
    written: int
    zeroed: int
    digest: str  # blake3 of the decompressed image
    seconds: float
    parallel_frames: bool
    #: each stage's busy and waiting time, and when the first image byte was written
    #: (seconds since the process started; bty_live.flash.profile)
    stages: tuple[StageTime, ...] = ()
    first_write: float | None = None


class WriteTarget(Protocol):
    """Where the write pass writes: a BlockTarget, or the engine's DeferringTarget around one."""

    @property
    def info(self) -> TargetInfo: ...

    @property
    def name(self) -> str: ...

    def pwrite(self, view: memoryview, offset: int) -> None: ...

    def zeroout(self, offset: int, length: int) -> None: ...

    def flush(self) -> None: ...


class StreamConsumer:
    """Something else that wants to see the decompressed stream in order (e.g. bmap checks)."""

    def feed(self, offset: int, data: memoryview) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        raise NotImplementedError


def frames_allow_parallel(frames: Sequence[Frame] | None, block: int = 4096) -> bool:
    """Parallel decompression needs several frames, each declaring a size that fits a buffer
    and (but the last) keeps the following frames aligned for O_DIRECT."""
    if not frames or len(frames) < 2:
        return False
    for i, frame in enumerate(frames):
        size = frame.content_size
        if size is None or size > CHUNK or size == 0:
            return False
        if i < len(frames) - 1 and size % block:
            return False
    return True


class WritePass:
    def __init__(
        self,
        reader: ImageReader,
        target: WriteTarget,
        *,
        expected_size: int | None = None,
        frames: Sequence[Frame] | None = None,
        use_zeroout: bool,
        extra_consumer: StreamConsumer | None = None,
        cancel: threading.Event | None = None,
        workers: int | None = None,
        on_written: Callable[[int], None] | None = None,
        flush_behind: bool = False,
        hash_stream: bool = True,
    ) -> None:
        """`on_written(end)` is called by the writer each time every byte of the image before
        `end` has been handed to the target (pwrite or BLKZEROOUT returned): the read-back
        behind the write (bty_live.flash.readback.ReadbackPass.release) follows it.

        `flush_behind`: a thread flushes the target every FLUSH_WINDOW written, so what a
        page-cached target (a loop device over a file) holds is written out while the rest is
        decompressed, not all at the final flush. The read-back behind the write flushes each
        window itself.

        `hash_stream=False`: no blake3 of the stream (CopyResult.digest is ""), when a read-back
        of the disk compared with the manifest's blake3 proves the image and the write at once
        (bty_live.flash.engine): on two cores the second blake3 pass competes with the
        decompressor."""
        if extra_consumer is not None and not hash_stream:
            raise ValueError("an extra consumer of the stream needs the hash stage")
        self.reader = reader
        self.target = target
        self.expected_size = expected_size
        parallel = frames is not None and frames_allow_parallel(frames, target.info.logical_block_size)
        self.frames = list(frames) if frames is not None and parallel else None
        self.workers = workers or max(1, min(MAX_WORKERS, os.cpu_count() or 1))
        self.use_zeroout = use_zeroout  # the caller's choice (bty_live.flash.target.zeroout_pays)
        self.extra_consumer = extra_consumer
        self.counters = CopyCounters()
        self.runner = StageRunner(cancel)
        # one thread: blake3's own thread pool keeps spinning after each update and slows the
        # decompressors more than it speeds the hash (measured: 0.53 s vs 1.00 s for 2 GiB)
        self._hasher = blake3.blake3() if hash_stream else None
        self._consumers = 2 if hash_stream else 1  # the stages that take every buffer
        buffers = 6 if self.frames is None else self.workers * 2 + 4
        self._pool = BufferPool(buffers, CHUNK)
        self._to_hash = Channel(self.runner.abort)
        self._to_write = Channel(self.runner.abort)
        self._zero_start = 0  # pending zero extent [start, start + length)
        self._zero_length = 0
        self._size = 0
        self._on_written = on_written
        self._first_write: float | None = None
        self._flush_behind = flush_behind
        self._written_end = 0  # every image byte before it has been handed to the target
        self._writer_done = False
        self._progress = threading.Condition()

    @property
    def name(self) -> str:
        return self.reader.name

    def run(self, tick: Callable[[CopyCounters], None]) -> CopyResult:
        started = time.monotonic()
        if self.frames is None:
            self.runner.start("decompress", self._decompress_sequential)
        else:
            _ParallelFrames(self).start()
        if self._hasher is not None:
            self.runner.start("hash", self._hash)
        self.runner.start("write", self._write)
        if self._flush_behind:
            self.runner.start("flush", self._flush_windows)
        try:
            self.runner.wait(lambda: tick(self.counters))
        finally:
            self._pool.close()
        return CopyResult(
            bytes_in=self.counters.bytes_in,
            size=self._size,
            written=self.counters.written,
            zeroed=self.counters.zeroed,
            digest=self._hasher.hexdigest() if self._hasher is not None else "",
            seconds=time.monotonic() - started,
            parallel_frames=self.frames is not None,
            stages=tuple(self.runner.stages),
            first_write=self._first_write,
        )

    # -- stage 1: the source ------------------------------------------------------------------

    def _decompress_sequential(self) -> None:
        offset = 0
        while True:
            buf = self._pool.acquire(self.runner.abort, consumers=self._consumers)
            n = self.reader.readinto(buf.view)
            self.counters.bytes_in = self.reader.bytes_in
            if n == 0:
                for _ in range(self._consumers):
                    self._pool.release(buf)
                break
            self._check_size(offset + n)
            buf.offset, buf.length = offset, n
            offset += n
            self._emit(buf)
            if n < len(buf.view):
                break
        self._end_of_stream(offset)

    def _emit(self, buf: Buffer) -> None:
        if self._hasher is not None:
            self._to_hash.put(buf)
        self._to_write.put(buf)

    def _end_of_stream(self, size: int) -> None:
        self._size = size
        if self.expected_size is not None and size < self.expected_size:
            ends, whole = format_sizes(size, self.expected_size)
            raise SourceCorruptError(f"image {self.name} is truncated: it ends at {ends} of {whole}; re-copy it")
        # end markers only after a complete stream: on an error the abort flag stops the others
        if self._hasher is not None:
            self._to_hash.put(None)
        self._to_write.put(None)

    def _check_size(self, end: int) -> None:
        if self.expected_size is not None and end > self.expected_size:
            raise DigestMismatchError(
                f"image {self.name} is larger than its manifest says ({format_size(self.expected_size)}); "
                "the manifest is stale or belongs to another image: rerun `bty images add`"
            )
        block = self.target.info.logical_block_size
        padded = end + (-end) % block
        if padded > self.target.info.size:
            raise TargetRefusedError(
                f"target {self.target.name} ({format_size(self.target.info.size)}) is too small for image "
                f"{self.name} (at least {format_size(end)}); use a larger disk"
            )

    # -- stage 2: hash ------------------------------------------------------------------------

    def _hash(self) -> None:
        extra = self.extra_consumer
        hasher = self._hasher
        assert hasher is not None
        for buf in self._to_hash:
            data = buf.view[: buf.length]
            hasher.update(data)
            if extra is not None:
                extra.feed(buf.offset, data)
            data.release()
            self._pool.release(buf)
        if extra is not None:
            extra.finish()

    # -- stage 3: zero-scan and write --------------------------------------------------------

    def _write(self) -> None:
        block = self.target.info.logical_block_size
        for buf in self._to_write:
            length = buf.length
            padded = length + (-length) % block
            if padded != length:  # the image ends mid-sector: pad the last write with zeroes
                buf.view[length:padded] = bytes(padded - length)
            if self._first_write is None:
                self._first_write = since_start()
            if self.use_zeroout:
                self._write_sparse(buf, padded)
            else:
                self.target.pwrite(buf.view[:padded], buf.offset)
                self.counters.written += padded
            self.counters.bytes_out = buf.offset + length
            self._pool.release(buf)
            written_end = self._zero_start if self._zero_length else buf.offset + length  # pending zeroes: not yet
            if self._on_written is not None:
                self._on_written(written_end)
            if self._flush_behind:
                with self._progress:
                    self._written_end = written_end
                    self._progress.notify_all()
        self._flush_zeroes()
        with self._progress:
            self._writer_done = True
            self._progress.notify_all()
        self.target.flush()

    def _flush_windows(self) -> None:
        flushed = 0
        while True:
            with self._progress, waiting("input"):
                while not self._writer_done and self._written_end - flushed < FLUSH_WINDOW:
                    if self.runner.abort.is_set():
                        raise Aborted
                    self._progress.wait(POLL)
                if self._writer_done:
                    return  # the writer's own final flush covers the rest
                flushed = self._written_end
            self.target.flush()

    def _write_sparse(self, buf: Buffer, length: int) -> None:
        view = buf.view
        run_start = 0  # start of the current data run within the buffer
        pos = 0
        while pos < length:
            step = min(ZERO_GRANULE, length - pos)
            granule = view[pos : pos + step]
            is_zero = (_ZEROS if step == ZERO_GRANULE else bytearray(step)) == granule
            granule.release()
            if is_zero:
                if pos > run_start:
                    self._write_data(view, buf.offset, run_start, pos)
                self._add_zeroes(buf.offset + pos, step)
                run_start = pos + step
            pos += step
        if length > run_start:
            self._write_data(view, buf.offset, run_start, length)

    def _write_data(self, view: memoryview, base: int, start: int, end: int) -> None:
        self.target.pwrite(view[start:end], base + start)
        self.counters.written += end - start

    def _add_zeroes(self, offset: int, length: int) -> None:
        if self._zero_length and self._zero_start + self._zero_length == offset:
            self._zero_length += length
            if self._zero_length >= ZEROOUT_PIECE:
                self._flush_zeroes()
            return
        self._flush_zeroes()
        self._zero_start, self._zero_length = offset, length

    def _flush_zeroes(self) -> None:
        if self._zero_length:
            self.target.zeroout(self._zero_start, self._zero_length)
            self.counters.zeroed += self._zero_length
            self._zero_length = 0


@dataclass
class _FrameJob:
    seq: int
    frame: Frame
    offset: int  # decompressed offset
    data: bytes
    buf: Buffer


class _ParallelFrames:
    """Source stage for multi-frame zstd: one reader, N decompressors, in-order emission."""

    def __init__(self, owner: WritePass) -> None:
        self.owner = owner
        self.frames = owner.frames or []
        self.jobs: list[_FrameJob | None] = []
        self.jobs_lock = threading.Condition()
        self.next_seq = 0  # next frame to emit
        self.emit_lock = threading.Condition()
        self.done_readers = 0

    def start(self) -> None:
        runner = self.owner.runner
        runner.start("read-frames", self._read)
        for i in range(self.owner.workers):
            runner.start(f"decompress-{i}", self._decompress)

    def _read(self) -> None:
        """Read the frames front to back from a fresh stream of the source (a file or the
        network: no seeking), skipping the skippable frames between them."""
        owner = self.owner
        offset = 0  # decompressed
        position = 0  # in the compressed stream
        stream = owner.reader.source.open()
        try:
            for seq, frame in enumerate(self.frames):
                size = frame.content_size or 0
                owner._check_size(offset + size)
                buf = owner._pool.acquire(owner.runner.abort, consumers=owner._consumers)
                if frame.offset > position:
                    _read_exactly(stream, frame.offset - position, owner.name)
                data = _read_exactly(stream, frame.length, owner.name)
                position = frame.offset + frame.length
                owner.counters.bytes_in = position
                self._put(_FrameJob(seq, frame, offset, data, buf))
                offset += size
        finally:
            stream.close()
        for _ in range(owner.workers):
            self._put(None)

    def _put(self, job: _FrameJob | None) -> None:
        with self.jobs_lock, waiting("output"):
            while len(self.jobs) >= self.owner.workers * 2:
                if self.owner.runner.abort.is_set():
                    raise Aborted
                self.jobs_lock.wait(POLL)
            self.jobs.append(job)
            self.jobs_lock.notify_all()

    def _take(self) -> _FrameJob | None:
        with self.jobs_lock, waiting("input"):
            while not self.jobs:
                if self.owner.runner.abort.is_set():
                    raise Aborted
                self.jobs_lock.wait(POLL)
            job = self.jobs.pop(0)
            self.jobs_lock.notify_all()
            return job

    def _decompress(self) -> None:
        owner = self.owner
        dctx = zstandard.ZstdDecompressor(max_window_size=1 << 31)
        while (job := self._take()) is not None:
            size = job.frame.content_size or 0
            view = job.buf.view
            try:
                reader = dctx.stream_reader(job.data)
                filled = 0
                while filled < size:
                    n = reader.readinto(view[filled:size])
                    if not n:
                        break
                    filled += n
                trailing = reader.read(1)  # reaches the frame end: checks the content checksum
            except zstandard.ZstdError as exc:
                raise SourceCorruptError(
                    f"image {owner.name} is corrupt in frame {job.seq} (at {format_size(job.offset)} of the "
                    f"image; zstd: {exc}); re-copy it"
                ) from exc
            if filled != size or trailing:
                raise SourceCorruptError(
                    f"image {owner.name} is corrupt: frame {job.seq} holds a different amount of data than its "
                    "header declares; re-copy it"
                )
            job.buf.offset, job.buf.length = job.offset, size
            job.data = b""
            self._emit_in_order(job)
        self._finish()

    def _emit_in_order(self, job: _FrameJob) -> None:
        with self.emit_lock:
            with waiting("output"):  # a frame before this one is still being decompressed
                while self.next_seq != job.seq:
                    if self.owner.runner.abort.is_set():
                        raise Aborted
                    self.emit_lock.wait(POLL)
            self.owner._emit(job.buf)
            self.next_seq += 1
            self.emit_lock.notify_all()

    def _finish(self) -> None:
        with self.emit_lock:
            self.done_readers += 1
            last = self.done_readers == self.owner.workers
        if last:
            total = sum(frame.content_size or 0 for frame in self.frames)
            self.owner._end_of_stream(total)



def _read_exactly(stream: RawStream, count: int, name: str) -> bytes:
    chunks = []
    left = count
    while left:
        chunk = stream.read(left)
        if not chunk:
            raise SourceCorruptError(f"image {name} is truncated: a zstd frame is cut short; re-copy it")
        chunks.append(chunk)
        left -= len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
