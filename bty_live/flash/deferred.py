"""What lands last: the image's first and last MiB are written only after the rest is verified.

A power cut or SIGKILL cannot be caught, so no wipe runs after it. What the disk looks like
then depends only on the order of the writes. The first MiB holds the protective MBR, the
primary GPT and the boot code; the last MiB of the image holds its backup GPT. Before the
write pass those regions of the disk are zeroed (with the disk's own last MiB, where an older
backup GPT may sit), the write pass keeps the image's bytes for them in memory, the read-back
hashes the disk with those bytes laid over it, and only then are they written and read back.
Until that moment the disk has no partition table any tool recognises: a machine that loses
power mid-flash boots nothing from it, instead of a partial image that looks whole
(rpi-imager does the same with the first sector).
"""

from __future__ import annotations

import contextlib
import mmap
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from bty_live.errors import VerifyError
from bty_live.flash.target import BlockTarget, TargetInfo
from bty_live.units import format_size

MiB = 1 << 20
#: the head kept back: MBR / protective MBR, primary GPT header and entries, boot code, the
#: first partition's start on most images
HEAD_SPAN = MiB
#: the tail kept back: at least this much before the image's end (its backup GPT)
TAIL_SPAN = MiB


@dataclass
class DeferredRegion:
    """[offset, offset + length) of the image, held in an aligned buffer until commit."""

    offset: int
    length: int
    data: mmap.mmap = field(repr=False)
    #: how far into the region the image reached (the image may end inside it)
    filled: int = 0

    @property
    def end(self) -> int:
        return self.offset + self.length

    def view(self) -> memoryview:
        return memoryview(self.data)[: self.filled]


def plan_regions(image_size: int | None, block: int) -> list[DeferredRegion]:
    """The head, and (when the image's size is known) the MiB-aligned tail before its end."""
    head_end = HEAD_SPAN if image_size is None else min(HEAD_SPAN, _round_up(image_size, block))
    spans = [(0, head_end)]
    if image_size is not None:
        end = _round_up(image_size, block)
        tail_start = max(head_end, (end - TAIL_SPAN) // MiB * MiB)
        if end > tail_start:
            spans.append((tail_start, end - tail_start))
    return [DeferredRegion(offset, length, mmap.mmap(-1, length)) for offset, length in spans if length > 0]


def _round_up(value: int, block: int) -> int:
    return value + (-value) % block


class DeferringTarget:
    """The write pass's view of the target: writes into the deferred regions go to memory,
    everything else to the disk (with the same alignment the caller used)."""

    def __init__(self, target: BlockTarget, regions: Sequence[DeferredRegion]) -> None:
        self.target = target
        self.regions = list(regions)
        self._lock = threading.Lock()  # a differential flash fills a region from two threads

    @property
    def info(self) -> TargetInfo:
        return self.target.info

    @property
    def name(self) -> str:
        return self.target.name

    def pwrite(self, view: memoryview, offset: int) -> None:
        for start, end, region in self._pieces(offset, len(view)):
            piece = view[start - offset : end - offset]
            if region is None:
                self.target.pwrite(piece, start)
            else:
                with self._lock:
                    at = start - region.offset
                    region.data[at : at + len(piece)] = piece
                    region.filled = max(region.filled, end - region.offset)

    def zeroout(self, offset: int, length: int) -> None:
        for start, end, region in self._pieces(offset, length):
            if region is None:
                self.target.zeroout(start, end - start)
            else:
                with self._lock:
                    at = start - region.offset
                    region.data[at : at + end - start] = bytes(end - start)
                    region.filled = max(region.filled, end - region.offset)

    def flush(self) -> None:
        self.target.flush()

    def _pieces(self, offset: int, length: int) -> list[tuple[int, int, DeferredRegion | None]]:
        """[offset, offset + length) cut at the regions' edges, each piece with its region."""
        pieces: list[tuple[int, int, DeferredRegion | None]] = []
        pos, end = offset, offset + length
        for region in self.regions:
            if region.end <= pos or region.offset >= end:
                continue
            if region.offset > pos:
                pieces.append((pos, region.offset, None))
                pos = region.offset
            stop = min(end, region.end)
            pieces.append((pos, stop, region))
            pos = stop
        if pos < end:
            pieces.append((pos, end, None))
        return pieces


def overlay(regions: Sequence[DeferredRegion]) -> list[tuple[int, memoryview]]:
    """What the read-back lays over the disk: the held bytes at their offsets."""
    return [(region.offset, region.view()) for region in regions if region.filled]


def commit(target: BlockTarget, regions: Sequence[DeferredRegion], *, check: bool = True) -> int:
    """Write the held regions, flush, and (with `check`) read them back with O_DIRECT and compare.
    Returns the bytes written."""
    written = 0
    for region in regions:
        if region.filled:
            target.pwrite(region.view(), region.offset)
            written += region.filled
    target.flush()
    if check:
        for region in regions:
            if region.filled:
                _compare(target, region)
    return written


def _compare(target: BlockTarget, region: DeferredRegion) -> None:
    buf = mmap.mmap(-1, region.length)
    try:
        view = memoryview(buf)[: region.filled]
        got = target.preadinto(view, region.offset)
        same = got == region.filled and view == region.view()
        view.release()
    finally:
        buf.close()
    if not same:
        raise VerifyError(
            f"read-back of {target.path} at {format_size(region.offset)} (the partition table region, written "
            "last) does not match what was written: the disk returned different bytes; it may be failing or "
            "counterfeit: try another disk"
        )


def release(regions: Sequence[DeferredRegion]) -> None:
    for region in regions:
        with contextlib.suppress(BufferError):  # a view still alive: the garbage collector frees it
            region.data.close()
