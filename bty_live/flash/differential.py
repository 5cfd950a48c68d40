"""Differential flash: the target already holds this image, or an older version of it (a machine
reflashed before every CI job). Compare it with the manifest's block index and write only what
differs.

    compare  read each block of the target's image extent with O_DIRECT, blake3 it (a zero
             block: memcmp against zeros) and compare it with the index; a block that differs is
             fetched and checked against the index already, and the blocks that match with the
             image's blocks where they differ are hashed in order: they must make the manifest's
             blake3 of the whole image, before anything is written
    write    for each block that differs, fetch its frame alone (block i is frame i of a packed
             file: one pread, or one Range request for a run of adjacent frames over HTTP, kept
             from the comparison), decompress it and check it against the index, compare it with the
             disk piece by piece (PIECE), and write only the pieces that differ (a zero block:
             zero them); the image's first and last MiB go through the engine's held regions
             (bty_live.flash.deferred) like a full flash's, so a power cut mid-write leaves a disk
             without a partition table
    verify   flush, read back the blocks written with O_DIRECT, compare them with the index

Every block of the image's extent then hashes to the index's digest: the blocks skipped were
compared on the disk itself, the blocks written were read back; and those bytes in order make
the manifest's blake3 of the whole image, so the index itself need not be trusted (an edited or
stale one is refused before the first write). This is the verification of a differential flash,
no weaker than a full flash's stream digest and read-back.

A target that never held this image is found early: the first DECIDE_AFTER data blocks are
compared before anything else, and when most differ the pass stops before fetching or writing
anything (NotThisImage) and the engine runs a full flash; what the look cost is the read of
those blocks (128 MiB), which a differential flash then reads again.

What the last job wrote past the image's end (a grown partition's tail) is left as a full flash
leaves it: the disk's last MiB (an old backup GPT) is wiped before the write, the partition-table
fix-ups then follow their own rules (bty_live.flash.fixups).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import blake3
import zstandard

from bty_live.errors import Cancelled, DigestMismatchError, SourceCorruptError, TargetIOError, VerifyError
from bty_live.flash.copy import WriteTarget
from bty_live.flash.pipeline import BufferPool, Channel, StageRunner
from bty_live.flash.profile import StageTime
from bty_live.flash.target import BlockTarget, aligned_buffer
from bty_live.image.block_index import BlockIndex, block_digest
from bty_live.image.block_reader import COALESCE, BlockSource
from bty_live.units import format_size

#: data blocks compared before judging whether the target holds this image at all
DECIDE_AFTER = 16
#: more than this share of those blocks differing: the target holds something else, flash it whole
FALL_BACK_SHARE = 0.5
#: a differing block is compared with its image bytes in pieces of this size; only differing pieces are written
PIECE = 64 << 10
#: buffers the compare pass reads ahead into
READ_BUFFERS = 4
#: blocks fetched, decompressed and written at once
WORKERS = max(1, min(4, os.cpu_count() or 1))


class NotThisImage(Exception):
    """The target does not hold this image (or a version of it): a full flash costs less."""


@dataclass
class DiffCounters:
    """Live counters, read by the progress ticker."""

    bytes_compared: int = 0
    blocks_compared: int = 0
    bytes_written: int = 0  # data pieces written (the held regions count when committed, by the engine)
    bytes_zeroed: int = 0
    source_bytes_read: int = 0


@dataclass(frozen=True)
class DifferentialResult:
    block_size: int
    blocks: int
    #: the blocks that differed (and were written), in order
    differing: tuple[int, ...]
    bytes_compared: int
    bytes_written: int
    bytes_zeroed: int
    source_bytes_read: int
    seconds: dict[str, float] = field(default_factory=dict)
    stages: tuple[StageTime, ...] = ()

    def to_dict(self, held_bytes: int = 0) -> dict[str, Any]:
        """The receipt's `differential` (`held_bytes`: the first and last MiB, written at the commit)."""
        written = len(self.differing) * self.block_size
        return {
            "mode": "differential", "reason": "", "block_size": self.block_size, "blocks": self.blocks,
            "blocks_written": len(self.differing), "bytes_compared": self.bytes_compared,
            "bytes_skipped": max(0, self.bytes_compared - written),
            "bytes_written": self.bytes_written + held_bytes, "bytes_zeroed": self.bytes_zeroed,
            "source_bytes_read": self.source_bytes_read,
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }


class DifferentialPass:
    """Compare, then write what differs, then read it back. `held` are the engine's held regions
    ((offset, end) of the image's first and last MiB): their blocks are always written through
    `writer` when anything is, since the engine wipes them first."""

    def __init__(self, target: BlockTarget, blocks: BlockSource, index: BlockIndex, image_size: int, *,
                 image_name: str, expected_blake3: str, use_zeroout: bool,
                 cancel: threading.Event | None = None) -> None:
        self.target = target
        self.blocks = blocks
        self.index = index
        self.image_size = image_size
        self.image_name = image_name
        self.expected_blake3 = expected_blake3
        self.use_zeroout = use_zeroout
        self.cancel = cancel or threading.Event()
        self.counters = DiffCounters()
        self.stages: list[StageTime] = []
        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    # -- compare ------------------------------------------------------------------------------

    def compare(self, tick: Callable[[DiffCounters], None]) -> list[int]:
        """The blocks whose bytes on the target differ from the index; NotThisImage when the
        first data blocks say the target holds something else."""
        started = time.monotonic()
        runner = StageRunner(self.cancel)
        pool = BufferPool(READ_BUFFERS, self.index.block_size)
        channel = Channel(runner.abort)
        differing: list[int] = []
        fd = self._open_direct()
        try:
            self._look_first(fd)
        except BaseException:
            os.close(fd)
            raise

        #: block -> whether it matches the index, set by the reader (ahead of the judge)
        verdicts: dict[int, bool] = {}

        def read() -> None:
            for number in range(len(self.index)):
                start, end = self.index.span(number, self.image_size)
                buf = pool.acquire(runner.abort, consumers=1)
                view = buf.view[: end - start]
                self._read_exactly(fd, view, start)
                verdicts[number] = block_digest(view) == self.index.digests[number]
                view.release()
                buf.offset, buf.length = number, end - start
                channel.put(buf)
            channel.put(None)

        def judge() -> None:
            counters = self.counters
            whole = blake3.blake3(max_threads=blake3.blake3.AUTO)
            image = aligned_buffer(self.index.block_size)
            try:
                for buf in channel:
                    number, data = buf.offset, buf.view[: buf.length]
                    expected = self.index.digests[number]
                    same = verdicts[number]
                    if same:
                        whole.update(data)
                    data.release()
                    pool.release(buf)
                    if not same:  # the image's bytes stand in for the disk's in the digest of the whole
                        wanted = memoryview(image)[: buf.length]
                        if expected is None:
                            wanted[:] = bytes(buf.length)
                        else:  # with the blocks read ahead that differ too: one request over HTTP
                            run = [number]
                            while verdicts.get(run[-1] + 1) is False and len(run) < COALESCE:
                                run.append(run[-1] + 1)
                            self.blocks.prefetch([n for n in run if self.index.digests[n] is not None])
                            self._fetch(number, wanted)
                        whole.update(wanted)
                        wanted.release()
                        differing.append(number)
                    with self._lock:
                        counters.bytes_compared += buf.length
                        counters.blocks_compared += 1
            finally:
                with contextlib.suppress(BufferError):
                    image.close()
            self._prove(whole.hexdigest())

        runner.start("compare-read", read)
        runner.start("compare", judge)
        try:
            runner.wait(lambda: tick(self.counters))
        finally:
            runner.join()
            pool.close()
            os.close(fd)
            self.stages.extend(runner.stages)
            self.seconds["compare"] = time.monotonic() - started
        return differing

    def _prove(self, digest: str) -> None:
        """The disk's blocks that match the index, with the image's blocks where they differ, must
        hash to the manifest's digest of the whole image: else the index does not describe that
        image (edited, or left from another version), and nothing is written."""
        if digest != self.expected_blake3:
            raise DigestMismatchError(
                f"the block index in the manifest of {self.image_name} does not describe the image its blake3 "
                f"names ({digest[:16]}... != {self.expected_blake3[:16]}...); nothing was written: rerun "
                "`bty images add` for the image, or flash it with --full")

    def _look_first(self, fd: int) -> None:
        """Compare the first DECIDE_AFTER data blocks (all of a small image's) before anything
        else: NotThisImage when most differ. Nothing is fetched for them yet, so a disk that
        holds something else costs the read of those blocks, not a download."""
        first = [n for n, digest in enumerate(self.index.digests) if digest is not None][:DECIDE_AFTER]
        buf = aligned_buffer(self.index.block_size)
        differ = 0
        try:
            for number in first:
                start, end = self.index.span(number, self.image_size)
                view = memoryview(buf)[: end - start]
                self._read_exactly(fd, view, start)
                differ += block_digest(view) != self.index.digests[number]
                view.release()
        finally:
            buf.close()
        if differ > len(first) * FALL_BACK_SHARE:
            raise NotThisImage(
                f"{differ} of the first {len(first)} data blocks on {self.target.path} differ from "
                f"{self.image_name}: it does not hold this image, so it is written whole")

    # -- write --------------------------------------------------------------------------------

    def write(self, blocks: Sequence[int], writer: WriteTarget, held: Sequence[tuple[int, int]],
              tick: Callable[[DiffCounters], None]) -> None:
        """Write the pieces of `blocks` that differ on the disk (all of the held ranges' pieces).

        The blocks holding a held range are written first, in this thread (the held regions are
        filled in memory, one writer at a time); the rest by WORKERS threads, in any order."""
        started = time.monotonic()
        in_held = blocks_holding(held, self.index.block_size)
        scratch = _Scratch(self.index.block_size)
        try:
            for number in blocks:
                if number in in_held:
                    self._write_block(number, writer, held, scratch)
        finally:
            scratch.close()
        rest = [n for n in blocks if n not in in_held]
        self.blocks.prefetch([n for n in rest if self.index.digests[n] is not None])  # held since the compare
        runner = StageRunner(self.cancel)
        next_block = iter(rest)
        take = threading.Lock()

        def work() -> None:
            own = _Scratch(self.index.block_size)
            try:
                while not runner.abort.is_set():
                    with take:
                        number = next(next_block, None)
                    if number is None:
                        return
                    self._write_block(number, writer, (), own)
            finally:
                own.close()

        for i in range(min(WORKERS, len(rest))):
            runner.start(f"write-{i}", work)
        try:
            runner.wait(lambda: tick(self.counters))
        finally:
            runner.join()
            self.stages.extend(runner.stages)
        writer.flush()
        self.seconds["write"] = time.monotonic() - started

    def _write_block(self, number: int, writer: WriteTarget, held: Sequence[tuple[int, int]],
                     scratch: _Scratch) -> None:
        if self.cancel.is_set():
            raise Cancelled("cancelled by the user")
        start, end = self.index.span(number, self.image_size)
        length = end - start
        expected = self.index.digests[number]
        image = memoryview(scratch.image)[:length]
        disk = memoryview(scratch.disk)[:length]
        try:
            if expected is not None:
                self._fetch(number, image)
            else:
                image[:] = bytes(length)
            self._read_exactly(self.target.fd, disk, start)
            for run_start, run_end in _differing_runs(image, disk, start, held):
                piece = image[run_start - start : run_end - start]
                if expected is None and self.use_zeroout:
                    writer.zeroout(run_start, run_end - run_start)
                    with self._lock:
                        self.counters.bytes_zeroed += run_end - run_start
                else:
                    writer.pwrite(piece, run_start)
                    with self._lock:
                        self.counters.bytes_written += run_end - run_start
                piece.release()
        finally:
            image.release()
            disk.release()

    def _fetch(self, number: int, into: memoryview) -> None:
        """Block `number`'s image bytes into `into`, checked against the index."""
        stored = self.blocks.stored(number)
        self.counters.source_bytes_read = self.blocks.bytes_read
        if self.blocks.layout.frames is None:
            into[:] = stored
        else:
            try:
                reader = zstandard.ZstdDecompressor(max_window_size=1 << 31).stream_reader(stored)
                filled = 0
                while filled < len(into) and (n := reader.readinto(into[filled:])):
                    filled += n
                trailing = reader.read(1)  # reaches the frame's end: checks its content checksum
            except zstandard.ZstdError as exc:
                raise SourceCorruptError(f"image {self.image_name} is corrupt in frame {number} (zstd: {exc}); "
                                         "re-copy it") from exc
            if filled != len(into) or trailing:
                raise SourceCorruptError(f"image {self.image_name} is corrupt: frame {number} holds a different "
                                         "amount of data than its header declares; re-copy it")
        if block_digest(into) != self.index.digests[number]:
            raise DigestMismatchError(
                f"image {self.image_name} does not match its manifest's block index at block {number} "
                f"({format_size(number * self.index.block_size)}): the image is damaged or the manifest is stale: "
                "re-copy the image, or rerun `bty images add` if you changed it on purpose")

    # -- verify -------------------------------------------------------------------------------

    def verify(self, blocks: Sequence[int], overlay: Sequence[tuple[int, memoryview]],
               tick: Callable[[DiffCounters], None]) -> int:
        """Read back `blocks` with O_DIRECT (the held regions' bytes laid over, as the engine
        writes them last) and compare each with the index. Returns the bytes read back."""
        started = time.monotonic()
        self.target.drop_cache()
        fd = self._open_direct()
        buf = aligned_buffer(self.index.block_size)
        done = 0
        try:
            for number in blocks:
                if self.cancel.is_set():
                    raise Cancelled("cancelled by the user")
                start, end = self.index.span(number, self.image_size)
                view = memoryview(buf)[: end - start]
                self._read_exactly(fd, view, start)
                for offset, data in overlay:
                    lo, hi = max(start, offset), min(end, offset + len(data))
                    if lo < hi:
                        view[lo - start : hi - start] = data[lo - offset : hi - offset]
                same = block_digest(view) == self.index.digests[number]
                view.release()
                if not same:
                    raise VerifyError(
                        f"read-back of {self.target.path} at {format_size(start)} does not match what was written "
                        "(block index): the disk returned different bytes; it may be failing or counterfeit: "
                        "try another disk")
                done += end - start
                tick(self.counters)
        finally:
            buf.close()
            os.close(fd)
        self.seconds["verify"] = time.monotonic() - started
        return done

    def result(self, differing: Sequence[int]) -> DifferentialResult:
        c = self.counters
        c.source_bytes_read = self.blocks.bytes_read
        return DifferentialResult(self.index.block_size, len(self.index), tuple(differing), c.bytes_compared,
                                  c.bytes_written, c.bytes_zeroed, c.source_bytes_read, dict(self.seconds),
                                  tuple(self.stages))

    # -- effects ------------------------------------------------------------------------------

    def _open_direct(self) -> int:
        """A second descriptor for reading (O_DIRECT: what the device holds, not the page cache)."""
        try:
            return os.open(self.target.path, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
        except OSError as exc:
            raise self.target.io_error("opening for the comparison", 0, exc) from exc

    def _read_exactly(self, fd: int, view: memoryview, offset: int) -> None:
        done = 0
        while done < len(view):
            try:
                n = os.preadv(fd, [view[done:]], offset + done)
            except OSError as exc:
                raise self.target.io_error("reading", offset + done, exc) from exc
            if n <= 0:
                raise TargetIOError(f"target {self.target.path} ended at {format_size(offset + done)} while it was "
                                    "compared with the image; check the disk's size")
            done += n


def blocks_holding(ranges: Sequence[tuple[int, int]], block_size: int) -> set[int]:
    """The numbers of the blocks that [start, end) ranges touch."""
    return {n for start, end in ranges for n in range(start // block_size, (end - 1) // block_size + 1)}


class _Scratch:
    """A worker's two aligned block buffers: the image's bytes and the disk's."""

    def __init__(self, size: int) -> None:
        self.image = aligned_buffer(size)
        self.disk = aligned_buffer(size)

    def close(self) -> None:
        for buf in (self.image, self.disk):
            with contextlib.suppress(BufferError):  # a view still alive after a failure: the GC frees it
                buf.close()


def _differing_runs(image: memoryview, disk: memoryview, base: int,
                    held: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """[start, end) image offsets of the runs of PIECEs where `disk` differs from `image`,
    merged; every piece inside a held range counts as differing."""
    runs: list[tuple[int, int]] = []
    length = len(disk)
    for at in range(0, length, PIECE):
        stop = min(at + PIECE, length)
        lo, hi = base + at, base + stop
        # bytearray == buffer is a memcmp; memoryview == memoryview compares item by item (20x slower)
        differs = any(lo < end and start < hi for start, end in held) or bytearray(image[at:stop]) != disk[at:stop]
        if differs:
            if runs and runs[-1][1] == lo:
                runs[-1] = (runs[-1][0], hi)
            else:
                runs.append((lo, hi))
    return runs
