"""Differential flash: the target already holds this image, or an older version of it (a machine
reflashed before every CI job). Compare it with the manifest's block index and write only what
differs.

One overlapped pass:

    read     two threads read the target's image extent with O_DIRECT, 8 MiB at a time, and
             blake3 each block (a zero block: memcmp against zeros) against the index
    judge    in order: a block that matches goes into the digest of the whole image as read; a
             block that differs is fetched alone (block i is frame i of a packed file: a pread,
             or one Range request for a run of adjacent differing frames over HTTP),
             decompressed and checked against the index, and its image bytes go into the digest
    write    a block that differs is compared with the disk piece by piece (PIECE), and only the
             pieces that differ are written (a zero block: zeroed); the image's first and last
             MiB go through the engine's held regions (bty_live.flash.deferred) like a full
             flash's, so a power cut mid-write leaves a disk without a partition table

then the digest of the whole image must be the manifest's blake3, and the blocks written are
flushed and read back with O_DIRECT against the index.

Every block of the image's extent then hashes to the index's digest: the blocks skipped were
compared on the disk itself, the blocks written were read back; and those bytes in order make
the manifest's blake3 of the whole image, so the index itself need not be trusted (an edited or
stale one fails that proof, and a disk written to by then is wiped). This is the verification of
a differential flash, no weaker than a full flash's stream digest and read-back.

A target that never held this image is found early: up to DECIDE_AFTER data blocks spread over
the image are compared before anything else, and when most differ the pass stops before fetching
or writing anything (NotThisImage) and the engine runs a full flash. The look stops as soon as
its answer is known: when the first ALL_DIFFER_AFTER blocks all differ (a blank disk, another
system: 16 MiB read, where all 64 took 128 MiB and ~0.1 s before the first byte written), or
once a majority either way is reached.

What the last job wrote past the image's end (a grown partition's tail) is left as a full flash
leaves it: the disk's last MiB (an old backup GPT) is wiped before the write, the partition-table
fix-ups then follow their own rules (bty_live.flash.fixups).
"""

from __future__ import annotations

import functools
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import blake3
import zstandard

from bty_live.errors import Cancelled, DigestMismatchError, SourceCorruptError, TargetIOError, VerifyError
from bty_live.flash.copy import WriteTarget
from bty_live.flash.pipeline import POLL, Aborted, Buffer, BufferPool, Channel, StageRunner
from bty_live.flash.profile import StageTime, waiting
from bty_live.flash.target import BlockTarget, aligned_buffer, close_buffer, pread_exactly
from bty_live.image.block_index import BlockIndex, block_digest
from bty_live.image.block_reader import COALESCE, BlockSource
from bty_live.units import format_size

#: data blocks compared before judging whether the target holds this image at all (128 MiB of
#: 2 MiB blocks, spread over the image)
DECIDE_AFTER = 64
#: more than this share of those blocks differing: the target holds something else, flash it whole
FALL_BACK_SHARE = 0.5
#: the first this many of them all differing is answer enough: the target holds something else
ALL_DIFFER_AFTER = 8
#: a differing block is compared with its image bytes in pieces of this size; only differing pieces are written
PIECE = 64 << 10
#: bytes of the disk read at once (whole blocks)
READ_SPAN = 8 << 20
#: threads reading the disk for the comparison: a queue deeper than one read keeps a disk (and a
#: loop device's file) busier, and each hashes what it read
READERS = 2
#: buffers each reader reads ahead into (a block that differs keeps its buffer until written)
READ_BUFFERS = 3
#: buffers of image blocks fetched and decompressed, waiting to be written
IMAGE_BUFFERS = 3


class NotThisImage(Exception):
    """The target does not hold this image (or a version of it): a full flash costs less."""


@dataclass
class DiffCounters:
    """Live counters, read by the progress ticker."""

    bytes_compared: int = 0
    blocks_compared: int = 0
    bytes_written: int = 0  # pieces written to the disk (the held ranges count when the engine commits them)
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

    def to_dict(self) -> dict[str, Any]:
        """The receipt's `differential` (the engine adds the held ranges to bytes_written when it
        commits them)."""
        written = len(self.differing) * self.block_size
        return {
            "mode": "differential", "reason": "", "block_size": self.block_size, "blocks": self.blocks,
            "blocks_written": len(self.differing), "bytes_compared": self.bytes_compared,
            "bytes_skipped": max(0, self.bytes_compared - written),
            "bytes_written": self.bytes_written, "bytes_zeroed": self.bytes_zeroed,
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

    def run(self, writer: WriteTarget, held: Sequence[tuple[int, int]], begin_writing: Callable[[], object],
            tick: Callable[[DiffCounters], None]) -> list[int]:
        """Compare every block and write the pieces of those that differ; return the blocks written.

        `held` are the engine's held ranges (the image's first and last MiB), which `writer`
        keeps in memory: their bytes are always given to it (from the disk when the block
        matches, else from the image), so they can be written last if anything else is.
        `begin_writing` is called once, before the first write (the engine wipes the old
        partition tables there). NotThisImage before anything is fetched or written when the
        first data blocks differ; DigestMismatchError when the blocks do not make the
        manifest's image (after writes: the engine then wipes the disk)."""
        started = time.monotonic()
        fd = self._open_direct()
        try:
            self._look_first(fd)
        except BaseException:
            os.close(fd)
            raise
        runner = StageRunner(self.cancel)
        block = self.index.block_size
        per_read = max(1, READ_SPAN // block)  # blocks read at once: large reads keep a disk busy
        spans = range(0, len(self.index), per_read)  # the first block of each read
        # reader k reads spans k, k + READERS, ...: each with its own buffers, so that none can
        # take the buffers the next span in order needs; the judge takes them in order
        disk_pools = [BufferPool(READ_BUFFERS, per_read * block) for _ in range(READERS)]
        image_pool = BufferPool(IMAGE_BUFFERS, self.index.block_size)
        to_judge = [Channel(runner.abort) for _ in range(READERS)]

        def pool_of(disk: Buffer) -> BufferPool:
            return disk_pools[disk.offset // per_read % READERS]
        to_write: queue.Queue[tuple[Buffer, int, Buffer] | None] = queue.Queue()
        #: block -> whether it matches the index, set by the reader (ahead of the judge)
        verdicts: dict[int, bool] = {}
        written: list[int] = []
        in_held = blocks_holding(held, self.index.block_size)

        def read(k: int) -> None:
            for first in spans[k::READERS]:
                numbers = range(first, min(first + per_read, len(self.index)))
                start, end = first * block, self.index.span(numbers[-1], self.image_size)[1]
                buf = disk_pools[k].acquire(runner.abort, consumers=1)
                with buf.view[: end - start] as view:
                    self._read_exactly(fd, view, start)
                    for number in numbers:
                        lo, hi = self.index.span(number, self.image_size)
                        verdicts[number] = block_digest(view[lo - start : hi - start]) == self.index.digests[number]
                buf.offset, buf.length = first, end - start  # offset: the first block's number
                to_judge[k].put(buf)
            to_judge[k].put(None)

        def judge() -> None:
            whole = blake3.blake3()
            for index, first in enumerate(spans):
                disk = to_judge[index % READERS].take()
                assert disk is not None and disk.offset == first
                for number in range(first, first + -(-disk.length // block)):
                    self._judge_block(disk, number, verdicts, whole, image_pool, to_write, runner, writer, held,
                                      in_held)
                pool_of(disk).release(disk)  # the judge's hold; a block waiting to be written holds it too
            to_write.put(None)
            self._prove(whole.hexdigest())

        def write() -> None:
            begun = False
            while (job := self._next_job(to_write, runner)) is not None:
                disk, number, image = job
                if not begun:
                    begin_writing()
                    begun = True
                self._write_block(disk, number, image, writer, held)
                written.append(number)
                pool_of(disk).release(disk)
                image_pool.release(image)

        for k in range(READERS):
            runner.start(f"compare-read-{k}", functools.partial(read, k))
        runner.start("compare", judge)
        runner.start("write", write)
        try:
            runner.wait(lambda: tick(self.counters))
        finally:
            runner.join()
            for pool in disk_pools:
                pool.close()
            image_pool.close()
            os.close(fd)
            self.stages.extend(runner.stages)
        if written:
            writer.flush()
        self.seconds["compare+write"] = time.monotonic() - started
        return sorted(written)

    def _judge_block(self, disk: Buffer, number: int, verdicts: dict[int, bool], whole: blake3.blake3,
                     image_pool: BufferPool, to_write: queue.Queue[tuple[Buffer, int, Buffer] | None],
                     runner: StageRunner, writer: WriteTarget, held: Sequence[tuple[int, int]],
                     in_held: set[int]) -> None:
        """Block `number` (in `disk`, a read of several blocks) into the digest of the whole
        image: the disk's bytes when it matches, else the image's, fetched and queued to write."""
        start, end = self.index.span(number, self.image_size)
        at = start - disk.offset * self.index.block_size
        length = end - start
        if verdicts[number]:
            with disk.view[at : at + length] as data:
                whole.update(data)
                if number in in_held:  # the held ranges' bytes, to be written last if anything is
                    self._keep_held(writer, held, data, number)
        else:
            image = image_pool.acquire(runner.abort, consumers=1)
            image.offset, image.length = number, length
            with image.view[:length] as wanted:
                if self.index.digests[number] is None:
                    wanted[:] = bytes(length)
                else:  # with the blocks read ahead that differ too: one request over HTTP
                    run = [number]
                    while verdicts.get(run[-1] + 1) is False and len(run) < COALESCE:
                        run.append(run[-1] + 1)
                    self.blocks.prefetch([n for n in run if self.index.digests[n] is not None])
                    self._fetch(number, wanted)
                whole.update(wanted)
            with disk.lock:  # the write holds the disk's bytes until it has compared them
                disk.pending += 1
            to_write.put((disk, number, image))
        with self._lock:
            self.counters.bytes_compared += length
            self.counters.blocks_compared += 1

    @staticmethod
    def _next_job(jobs: queue.Queue[tuple[Buffer, int, Buffer] | None],
                  runner: StageRunner) -> tuple[Buffer, int, Buffer] | None:
        with waiting("input"):
            while True:
                if runner.abort.is_set():
                    raise Aborted
                try:
                    return jobs.get(timeout=POLL)
                except queue.Empty:
                    continue

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
        """Compare DECIDE_AFTER data blocks spread over the image (all of a small image's) before
        anything else: NotThisImage when most differ. Spread, because an update's changes may
        cluster (a filesystem's metadata at its start). Nothing is fetched for them, so a disk
        that holds something else costs the read of those blocks, not a download."""
        data = [n for n, digest in enumerate(self.index.digests) if digest is not None]
        first = data[:: max(1, len(data) // DECIDE_AFTER)][:DECIDE_AFTER]
        most = len(first) * FALL_BACK_SHARE
        buf = aligned_buffer(self.index.block_size)
        looked = differ = 0
        try:
            for number in first:
                start, end = self.index.span(number, self.image_size)
                with memoryview(buf) as whole, whole[: end - start] as view:  # released even when stopped
                    self._read_exactly(fd, view, start)
                    differ += block_digest(view) != self.index.digests[number]
                looked += 1
                if differ > most or differ == looked == ALL_DIFFER_AFTER:
                    break  # it holds something else
                if looked - differ >= len(first) - most:
                    return  # most of them match, whatever the others hold
        finally:
            close_buffer(buf)
        if differ > most or differ == looked == ALL_DIFFER_AFTER:
            raise NotThisImage(
                f"{differ} of {looked} data blocks compared on {self.target.path} differ from "
                f"{self.image_name}: it does not hold this image, so it is written whole")

    # -- write --------------------------------------------------------------------------------

    def _keep_held(self, writer: WriteTarget, held: Sequence[tuple[int, int]], data: memoryview,
                   number: int) -> None:
        """Give `writer` the held ranges' part of block `number` (it keeps them in memory)."""
        start, end = self.index.span(number, self.image_size)
        for lo, hi in held:
            lo, hi = max(lo, start), min(hi, end)
            if lo < hi:
                writer.pwrite(data[lo - start : hi - start], lo)

    def _write_block(self, disk: Buffer, number: int, image: Buffer, writer: WriteTarget,
                     held: Sequence[tuple[int, int]]) -> None:
        """Write the pieces of the block where the disk differs from the image (held ranges: all)."""
        start = number * self.index.block_size
        at = start - disk.offset * self.index.block_size
        zero = self.index.digests[number] is None
        with disk.view[at : at + image.length] as theirs, image.view[: image.length] as ours:
            for run_start, run_end in _differing_runs(ours, theirs, start, held):
                to_disk = _outside(held, run_start, run_end)  # the held ranges' bytes go to memory
                if zero and self.use_zeroout:
                    writer.zeroout(run_start, run_end - run_start)
                    with self._lock:
                        self.counters.bytes_zeroed += to_disk
                else:
                    with ours[run_start - start : run_end - start] as piece:
                        writer.pwrite(piece, run_start)
                    with self._lock:
                        self.counters.bytes_written += to_disk

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
                with memoryview(buf) as whole, whole[: end - start] as view:  # released even when stopped
                    self._read_exactly(fd, view, start)
                    for offset, data in overlay:
                        lo, hi = max(start, offset), min(end, offset + len(data))
                        if lo < hi:
                            view[lo - start : hi - start] = data[lo - offset : hi - offset]
                    same = block_digest(view) == self.index.digests[number]
                if not same:
                    raise VerifyError(
                        f"read-back of {self.target.path} at {format_size(start)} does not match what was written "
                        "(block index): the disk returned different bytes; it may be failing or counterfeit: "
                        "try another disk")
                done += end - start
                tick(self.counters)
        finally:
            close_buffer(buf)
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
        pread_exactly(fd, view, offset, len(view),
                      lambda at, exc: self.target.io_error("reading", at, exc),
                      lambda at: TargetIOError(f"target {self.target.path} ended at {format_size(at)} while it was "
                                               "compared with the image; check the disk's size"))


def blocks_holding(ranges: Sequence[tuple[int, int]], block_size: int) -> set[int]:
    """The numbers of the blocks that [start, end) ranges touch."""
    return {n for start, end in ranges for n in range(start // block_size, (end - 1) // block_size + 1)}


def _outside(ranges: Sequence[tuple[int, int]], start: int, end: int) -> int:
    """Bytes of [start, end) outside `ranges` (which do not overlap each other)."""
    return (end - start) - sum(max(0, min(end, hi) - max(start, lo)) for lo, hi in ranges)


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
