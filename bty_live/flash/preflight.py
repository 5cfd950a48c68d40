"""Fake-capacity preflight: does the disk hold as much as it announces?

Counterfeit USB sticks and cards announce, say, 64 GB and hold 8 GB: writes beyond the real
capacity wrap around onto earlier blocks or vanish. Before the image is written, markers (4 KiB,
each naming its offset and a per-run nonce, the rest random) are written at offsets spread over
the announced size, the last block included; then, after a flush and with the cache dropped, they
are read back with O_DIRECT. A marker that is missing, or that reads back as another offset's
marker, refuses the disk. Nothing is restored (the disk is about to be overwritten), and the
markers never look like a partition table or boot sector.

Runs for removable and USB disks unless forced on or off (`FlashOptions.preflight`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass

from bty_live.disk.model import Disk
from bty_live.errors import TargetRefusedError
from bty_live.flash.target import BlockTarget, aligned_buffer, close_buffer
from bty_live.units import format_size

MARKER_SIZE = 4096
MARKER_COUNT = 16
_HEADER = re.compile(rb"^bty-live capacity preflight nonce=([0-9a-f]{32}) offset=(\d+)\n")

#: reads len(view) bytes at offset into view; returns the byte count (BlockTarget.preadinto)
ReadFn = Callable[[memoryview, int], int]


@dataclass(frozen=True)
class Miss:
    """A marker that did not read back: `found` is the offset whose marker came back instead, if any."""

    offset: int
    found: int | None


def wanted(disk: Disk, option: bool | None) -> bool:
    """--no-preflight (False) or forced (True) win; otherwise only removable or USB disks."""
    if option is not None:
        return option
    return disk.removable or disk.transport == "usb"


def marker_offsets(size: int, block: int, count: int = MARKER_COUNT) -> list[int]:
    """`count` offsets at every size/count step from 0, then the last block, aligned to the block size.

    Equal steps make a wrap-around fake (announced size a multiple of the real one) show as one
    marker reading back as another, which tells how much the disk really holds.
    """
    align = max(block, 512)
    last = (size - MARKER_SIZE) // align * align
    if last <= 0:
        return [0]
    step = size // count
    offsets: list[int] = []
    for offset in [*(min(last, step * i // align * align) for i in range(count)), last]:
        if not offsets or offset >= offsets[-1] + MARKER_SIZE:  # markers never overlap
            offsets.append(offset)
    return offsets


def make_marker(nonce: str, offset: int) -> bytes:
    """A 4 KiB marker: a header naming the run and the offset, then random bytes; bytes 510-511
    (the MBR boot signature) stay zero, so the disk never looks bootable."""
    header = f"bty-live capacity preflight nonce={nonce} offset={offset}\n".encode()
    data = bytearray(header + os.urandom(MARKER_SIZE - len(header)))
    data[510:512] = b"\0\0"
    return bytes(data)


def _found_offset(data: bytes, nonce: str) -> int | None:
    match = _HEADER.match(data)
    if match is None or match.group(1).decode() != nonce:
        return None
    return int(match.group(2))


def check_markers(target: BlockTarget, offsets: list[int], read: ReadFn | None = None) -> list[Miss]:
    """Write a marker at each offset, flush, drop the cache, read them all back; the misses."""
    nonce = os.urandom(16).hex()
    markers = {offset: make_marker(nonce, offset) for offset in offsets}
    buf = aligned_buffer(MARKER_SIZE)
    view = memoryview(buf)
    try:
        for offset, marker in markers.items():
            buf[:] = marker
            target.pwrite(view, offset)
        target.flush()
        target.drop_cache()
        reader = read or target.preadinto
        misses = []
        for offset, marker in markers.items():
            buf[:] = bytes(MARKER_SIZE)
            got = reader(view, offset)
            data = bytes(buf[:got])
            if data != marker:
                misses.append(Miss(offset=offset, found=_found_offset(data, nonce)))
        return misses
    finally:
        view.release()
        close_buffer(buf)


def estimated_capacity(misses: list[Miss]) -> int:
    """About how much the disk really holds: the smallest distance between a marker and the one it
    read back as (wrap-around fakes), else the lowest offset whose marker was lost."""
    distances = [abs(m.offset - m.found) for m in misses if m.found is not None and m.found != m.offset]
    return min(distances) if distances else min(m.offset for m in misses)


def refusal(path: str, size: int, misses: list[Miss]) -> str:
    worst = max(misses, key=lambda m: m.offset)
    if worst.found is not None:
        what = f"the marker at {format_size(worst.offset)} read back as the one at {format_size(worst.found)}"
    else:
        what = f"the marker at {format_size(worst.offset)} did not read back"
    capacity = estimated_capacity(misses)
    holds = f"holds only about {format_size(capacity)}" if capacity else "does not keep what is written to it"
    return (f"target {path} announces {format_size(size)} but {holds} ({what}): it is fake-capacity media; "
            "use another disk")


def preflight_capacity(target: BlockTarget, *, read: ReadFn | None = None) -> str:
    """Refuse (TargetRefusedError) a disk that loses or aliases markers; a one-line summary if it holds."""
    size = target.info.size
    offsets = marker_offsets(size, target.info.logical_block_size)
    misses = check_markers(target, offsets, read)
    if misses:
        raise TargetRefusedError(refusal(target.path, size, misses))
    return f"capacity preflight: {len(offsets)} markers up to {format_size(size)} read back intact"


def preflight_if_wanted(target: BlockTarget, disk: Disk, option: bool | None, *,
                        read: ReadFn | None = None) -> str | None:
    """What the engine calls before the first write: the summary line, or None when skipped."""
    if not wanted(disk, option):
        return None
    return preflight_capacity(target, read=read)
