"""What filesystem each partition of an image holds, without writing the image anywhere.

libblkid already knows every superblock format; rather than re-implement them, the head of
each partition is copied into a sparse temp file of the partition's size and `blkid -p` probes
that. The first 1 MiB of a partition holds the primary superblock of ext2/3/4 (1 KiB), xfs (0),
vfat/exfat (0), btrfs (64 KiB), iso9660 (32 KiB), squashfs and erofs (0/1 KiB), swap (end of
the first page), UFS (8..256 KiB), ZFS labels L0/L1 (0 and 256 KiB), LUKS and LVM (0/512).

Two labels live further in: FAT32 and exFAT keep the volume label in the root directory, after
the FATs (just past 1 MiB for a 64 MiB FAT32 ESP). `_follow_up` finds that one extra window
from the boot sector, so the label is probed without reading the filesystem. (NTFS keeps even
its signature check in the $MFT, often gigabytes in: not followed, an NTFS partition shows as
unknown.)

A compressed image is decompressed once, in order, and only up to the end of the last window:
partitions usually start early, so this costs a fraction of the image.
"""

from __future__ import annotations

import struct
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bty_live.errors import ToolError
from bty_live.image.formats import Compression, ImageReader, detect_compression
from bty_live.image.partitions import PartitionTable
from bty_live.system import blkid

#: bytes captured from the start of each partition
PROBE_WINDOW = 1 << 20
#: bytes captured of a root directory (FAT32/exFAT): the label entry is among the first
FOLLOW_UP_WINDOW = 64 << 10
_CHUNK = 4 << 20


@dataclass(frozen=True)
class FsInfo:
    fstype: str | None  # blkid TYPE: "ext4", "vfat", "swap", "crypto_LUKS", ...; None if nothing found
    label: str | None = None
    uuid: str | None = None
    version: str | None = None  # blkid VERSION: "FAT32", "1.0", ...
    usage: str | None = None  # blkid USAGE: "filesystem", "crypto", "raid", "other"
    ambivalent: bool = False  # several signatures found: libblkid will not say which one wins


@dataclass(frozen=True)
class Region:
    """A stretch of the decompressed image to probe."""

    key: int  # partition number, or 0 for a whole unpartitioned image
    start: int
    size: int | None  # None: unknown (the rest of the image)

    @property
    def window_end(self) -> int:
        return self.start + min(PROBE_WINDOW, self.size if self.size is not None else PROBE_WINDOW)


@dataclass
class _Window:
    """Bytes [start, end) of the image to capture for one region."""

    region: Region
    start: int
    end: int
    is_head: bool
    data: bytearray = field(default_factory=bytearray)


#: region key -> [(offset within the region, bytes)], the head first
Captures = dict[int, list[tuple[int, bytes]]]


def probe_filesystems(
    image_path: Path, table: PartitionTable, compression: Compression | None = None
) -> dict[int, FsInfo]:
    """Partition number -> FsInfo, for every partition that can hold data (not MBR extended ones)."""
    regions = [Region(p.number, p.start, p.size) for p in table.partitions
               if p.size > 0 and not p.is_container]
    return probe_regions(image_path, regions, compression)


def probe_regions(
    image_path: Path, regions: Sequence[Region], compression: Compression | None = None
) -> dict[int, FsInfo]:
    """Region key -> FsInfo. Use Region(0, 0, size) to probe an image without a partition table."""
    if not regions:
        return {}
    compression = compression or detect_compression(image_path)
    captures = _capture(image_path, regions, compression)
    with tempfile.TemporaryDirectory(prefix="bty-fsprobe-") as tmp:
        return {r.key: _blkid_on_copy(Path(tmp) / f"region{r.key}", captures[r.key], r.size) for r in regions}


def _follow_up(head: bytes, size: int | None) -> tuple[int, int] | None:
    """(offset in the partition, length) of the FAT32 or exFAT root directory, when it lies
    beyond the head; None for other filesystems or implausible boot sectors."""
    if len(head) < 512:
        return None
    offset: int | None = None
    if head[0x52:0x5A] == b"FAT32   ":  # FAT32 boot sector (Microsoft FAT spec, BPB)
        bps, spc, reserved, fats = struct.unpack_from("<HBHB", head, 0x0B)
        fat_size, root_cluster = _u32(head, 0x24), _u32(head, 0x2C)
        if bps in (512, 1024, 2048, 4096) and spc and root_cluster >= 2:
            offset = (reserved + fats * fat_size + (root_cluster - 2) * spc) * bps
    elif head[3:11] == b"EXFAT   ":  # exFAT boot sector (Microsoft exFAT spec 3.1)
        heap, root_cluster = _u32(head, 0x58), _u32(head, 0x60)
        bps_shift, spc_shift = head[0x6C], head[0x6D]
        if 9 <= bps_shift <= 12 and bps_shift + spc_shift <= 25 and root_cluster >= 2:
            offset = (heap << bps_shift) + ((root_cluster - 2) << (bps_shift + spc_shift))
    if offset is None or offset < PROBE_WINDOW or (size is not None and offset >= size):
        return None
    length = FOLLOW_UP_WINDOW if size is None else min(FOLLOW_UP_WINDOW, size - offset)
    return offset, length


def _u32(data: bytes, offset: int) -> int:
    value: int = struct.unpack_from("<I", data, offset)[0]
    return value


def _capture(image_path: Path, regions: Sequence[Region], compression: Compression) -> Captures:
    if compression == Compression.RAW:
        return _pread_captures(image_path, regions)
    with ImageReader(image_path, compression) as reader:
        return _stream_captures(reader, regions)


def _pread_captures(image_path: Path, regions: Sequence[Region]) -> Captures:
    """A raw image is seekable: read each window in place instead of everything before it."""
    captures: Captures = {}
    with open(image_path, "rb") as f:
        for r in regions:
            f.seek(r.start)
            head = f.read(r.window_end - r.start)
            captures[r.key] = [(0, head)]
            extra = _follow_up(head, r.size)
            if extra is not None:
                f.seek(r.start + extra[0])
                captures[r.key].append((extra[0], f.read(extra[1])))
    return captures


def _stream_captures(reader: ImageReader, regions: Sequence[Region]) -> Captures:
    """Decompress once, from the start to the end of the last window, copying each window out.

    Reads stop at every window's end, so a follow-up window found in a head that just completed
    still lies ahead. Windows may overlap (a logical partition starts inside an extended one),
    so every chunk is offered to every pending window.
    """
    pending = [_Window(r, r.start, r.window_end, is_head=True) for r in regions]
    captures: Captures = {r.key: [] for r in regions}
    buffer = memoryview(bytearray(_CHUNK))
    position = 0
    while pending:
        limit = min(w.end for w in pending)
        n = reader.readinto(buffer[: min(_CHUNK, limit - position)]) if limit > position else 0
        if limit > position and n == 0:
            break  # the image ends before some window: keep what was captured
        for w in pending:
            low, high = max(w.start, position), min(w.end, position + n)
            if low < high:
                w.data += buffer[low - position : high - position]
        position += n
        for w in [w for w in pending if w.end <= position]:
            pending.remove(w)
            pending += _complete(w, captures)
    for w in pending:
        _complete(w, captures)
    return captures


def _complete(window: _Window, captures: Captures) -> list[_Window]:
    """Store a finished window; return the follow-up window its head asks for, if any."""
    region = window.region
    captures[region.key].append((window.start - region.start, bytes(window.data)))
    if not window.is_head:
        return []
    extra = _follow_up(bytes(window.data), region.size)
    if extra is None:
        return []
    start = region.start + extra[0]
    return [_Window(region, start, start + extra[1], is_head=False)]


class ForwardReader:
    """Reads at any offset of the decompressed image, cheap while the offsets increase.

    A raw image is read in place. A compressed one is decompressed forward from where the last
    read ended, and decompressed again from the start when a read goes backwards.
    """

    def __init__(self, image_path: Path, compression: Compression) -> None:
        self.path = image_path
        self.compression = compression
        self._raw = open(image_path, "rb") if compression == Compression.RAW else None  # noqa: SIM115
        self._reader: ImageReader | None = None

    def read_at(self, offset: int, length: int) -> bytes:
        """Up to `length` bytes at `offset`; fewer where the image ends."""
        if self._raw is not None:
            self._raw.seek(offset)
            return self._raw.read(length)
        reader = self._reader_at_or_before(offset)
        scratch = memoryview(bytearray(min(_CHUNK, max(offset - reader.position, 1))))
        while reader.position < offset:
            if not reader.readinto(scratch[: min(len(scratch), offset - reader.position)]):
                return b""
        data = bytearray(length)
        return bytes(data[: reader.readinto(memoryview(data))])

    def _reader_at_or_before(self, offset: int) -> ImageReader:
        if self._reader is not None and self._reader.position > offset:
            self._reader.close()
            self._reader = None
        if self._reader is None:
            self._reader = ImageReader(self.path, self.compression)
        return self._reader

    def close(self) -> None:
        for f in (self._raw, self._reader):
            if f is not None:
                f.close()

    def __enter__(self) -> ForwardReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _blkid_on_copy(tmp: Path, pieces: list[tuple[int, bytes]], size: int | None) -> FsInfo:
    """Probe the captured pieces as if they sat on a device of `size` bytes (sparse elsewhere)."""
    with open(tmp, "wb") as f:
        for offset, data in pieces:
            f.seek(offset)
            f.write(data)
        f.truncate(max([size or 0] + [offset + len(data) for offset, data in pieces]))
    try:
        return blkid_probe(tmp)
    finally:
        tmp.unlink()


def blkid_probe(path: Path) -> FsInfo:
    """`blkid -p` (low-level superblock probe, no cache) on a file or device."""
    status, values, detail = blkid.probe_one(path)
    if status == blkid.NOTHING:
        return FsInfo(fstype=None)
    if status == blkid.AMBIVALENT:
        return FsInfo(fstype=None, ambivalent=True)
    if status != blkid.FOUND:
        raise ToolError(f"blkid failed on a copy of a partition head: {detail or f'exit status {status}'}")
    return FsInfo(
        fstype=values.get("TYPE"),
        label=values.get("LABEL"),
        uuid=values.get("UUID"),
        version=values.get("VERSION"),
        usage=values.get("USAGE"),
    )
