"""zstd's seekable format: a seek table at the end of a packed image, so any tool can find frame i
without reading the frames before it.

The table is a skippable frame (every zstd decoder passes over it: `zstd -dc` output is
unchanged) after the last data frame:

    magic 0x184D2A5E | frame size (u32) | per frame: compressed size (u32), decompressed size (u32)
    | footer: number of frames (u32), descriptor (u8: bit 7 = entries carry checksums), 0x8F92EAB1

Reference: zstd's contrib/seekable_format/zstd_seekable_compression_format.md. bty writes no
per-frame checksums (its block index in the manifest holds a blake3 per frame) and reads tables
with or without them. A differential flash over HTTP reads the table with two Range requests
(footer, then entries) to know which bytes hold the frames it needs.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence

from bty_live.image.zstd_frames import Frame

SEEK_TABLE_MAGIC = 0x184D2A5E
SEEKABLE_MAGIC = 0x8F92EAB1
FOOTER_SIZE = 9
_CHECKSUM_FLAG = 0x80
_RESERVED_BITS = 0x7C
#: frames a table may list (2^28 frames of 2 MiB: 512 TiB): a bound for a forged footer
MAX_FRAMES = 1 << 28


class SeekTableError(ValueError):
    """No seek table, or a malformed one."""


def encode_seek_table(frames: Sequence[tuple[int, int]]) -> bytes:
    """The skippable frame listing (compressed size, decompressed size) of each data frame."""
    entries = b"".join(struct.pack("<II", compressed, decompressed) for compressed, decompressed in frames)
    footer = struct.pack("<IBI", len(frames), 0, SEEKABLE_MAGIC)
    body = entries + footer
    return struct.pack("<II", SEEK_TABLE_MAGIC, len(body)) + body


def table_size(footer: bytes) -> tuple[int, int]:
    """From the file's last FOOTER_SIZE bytes: (number of frames, bytes of the whole skippable
    frame, header included), to fetch the rest."""
    if len(footer) != FOOTER_SIZE:
        raise SeekTableError("the file is too short to end with a seek table")
    count, descriptor, magic = struct.unpack("<IBI", footer)
    if magic != SEEKABLE_MAGIC:
        raise SeekTableError("the file does not end with a zstd seek table (`bty images pack` writes one)")
    if descriptor & _RESERVED_BITS or count > MAX_FRAMES:
        raise SeekTableError("the zstd seek table's footer is malformed")
    entry = 12 if descriptor & _CHECKSUM_FLAG else 8
    return count, 8 + count * entry + FOOTER_SIZE


def parse_seek_table(table: bytes) -> list[Frame]:
    """The data frames a whole seek table (skippable frame header to footer) lists, with their
    offsets in the file (the frames are contiguous from its start, the table after them)."""
    if len(table) < 8 + FOOTER_SIZE:
        raise SeekTableError("the zstd seek table is cut short")
    magic, body = struct.unpack_from("<II", table)
    count, size = table_size(table[-FOOTER_SIZE:])
    if magic != SEEK_TABLE_MAGIC or body != len(table) - 8 or size != len(table):
        raise SeekTableError("the zstd seek table's frame header does not match its footer")
    entry = (len(table) - 8 - FOOTER_SIZE) // max(count, 1)
    frames, offset = [], 0
    for i in range(count):
        compressed, decompressed = struct.unpack_from("<II", table, 8 + i * entry)
        frames.append(Frame(offset, compressed, decompressed))
        offset += compressed
    return frames


def read_seek_table(read_range: Callable[[int, int], bytes], size: int) -> list[Frame]:
    """The data frames of a file of `size` bytes that ends with a seek table, read with two
    calls of `read_range(offset, length)` (footer, then the table): a pread for a local file,
    a Range request over HTTP. SeekTableError when there is none, or it does not describe the
    file (its frames must fill the file up to the table)."""
    if size < FOOTER_SIZE:
        raise SeekTableError("the file is too short to end with a seek table")
    _, table = table_size(read_range(size - FOOTER_SIZE, FOOTER_SIZE))
    if table > size:
        raise SeekTableError("the zstd seek table is larger than the file")
    frames = parse_seek_table(read_range(size - table, table))
    if sum(frame.length for frame in frames) != size - table:
        raise SeekTableError("the zstd seek table does not describe the file")
    return frames
