"""Random access to an image's blocks, for a differential flash: block i of the decompressed image
without decompressing the blocks before it.

Two layouts allow it: a packed zstd file (`bty images pack`, `bty capture`), whose frame i holds
exactly block i of the block index, and an uncompressed image, where block i is at i * block_size.
A single-frame zstd, xz or gz file does not: reaching block i means decompressing all before it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bty_live.errors import SourceCorruptError
from bty_live.image.block_index import BlockIndex
from bty_live.image.formats import Compression
from bty_live.image.zstd_frames import Frame


@dataclass(frozen=True)
class BlockLayout:
    """Where block i lives in the file: `frames[i]` of a packed zstd file, or raw bytes."""

    compression: Compression
    frames: tuple[Frame, ...] | None  # packed zstd: one frame per block


def block_layout(compression: Compression, frames: Sequence[Frame] | None, index: BlockIndex,
                 image_size: int) -> BlockLayout | str:
    """The layout, or why the image's blocks cannot be reached one by one (for the plan's note)."""
    if compression == Compression.RAW:
        return BlockLayout(compression, None)
    if compression != Compression.ZSTD:
        return f"a {compression} file is decompressed front to back only (`bty images pack` makes it seekable)"
    if frames is None or len(frames) != len(index):
        return "the zstd file's frames are not the index's blocks (`bty images pack` makes them so)"
    for number, frame in enumerate(frames):
        start, end = index.span(number, image_size)
        if frame.content_size != end - start:
            return "the zstd file's frames are not the index's blocks (`bty images pack` makes them so)"
    return BlockLayout(compression, tuple(frames))


class LocalBlocks:
    """A block's bytes as stored in a local image file (compressed for a packed file), by pread."""

    def __init__(self, path: Path, layout: BlockLayout, index: BlockIndex, image_size: int) -> None:
        self.path = path
        self.layout = layout
        self.index = index
        self.image_size = image_size
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self.bytes_read = 0  # of the file, for the receipt

    def stored(self, block: int) -> bytes:
        """The file's bytes for `block`: its zstd frame, or its raw bytes."""
        if self.layout.frames is not None:
            frame = self.layout.frames[block]
            offset, length = frame.offset, frame.length
        else:
            offset, end = self.index.span(block, self.image_size)
            length = end - offset
        data = os.pread(self.fd, length, offset)
        if len(data) != length:
            raise SourceCorruptError(f"image {self.path.name} is truncated at block {block} "
                                     f"({len(data)} of {length} bytes); re-copy it")
        self.bytes_read += length
        return data

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
