"""Random access to an image's blocks, for a differential flash: block i of the decompressed image
without decompressing the blocks before it.

Two layouts allow it: a packed zstd file (`bty images pack`, `bty capture`), whose frame i holds
exactly block i of the block index, and an uncompressed image, where block i is at i * block_size.
A single-frame zstd, xz or gz file does not: reaching block i means decompressing all before it.

A local file is read with pread (`LocalBlocks`); an image on an HTTP server with bounded Range
requests (`HttpBlocks`), a run of adjacent frames in one request, the frames' places taken from
the seek table that ends a packed file (`remote_frames`).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from bty_live.errors import BtyError, SourceCorruptError
from bty_live.image.block_index import BlockIndex
from bty_live.image.formats import Compression
from bty_live.image.seek_table import SeekTableError, read_seek_table
from bty_live.image.sources import ByteSource, as_http_source
from bty_live.image.zstd_frames import Frame

if TYPE_CHECKING:
    from bty_live.image.http_source import HttpSource

#: adjacent frames fetched in one HTTP request, at most
COALESCE = 8
#: frames fetched ahead (a run of adjacent ones) and not used yet: beyond this, the oldest are dropped
CACHE_BYTES = 128 << 20


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
        return f"{compression} is read front to back: `bty images pack` makes it seekable"
    not_blocks = "its zstd frames are not the index's blocks: `bty images pack` makes them so"
    if frames is None or len(frames) != len(index):
        return not_blocks
    for number, frame in enumerate(frames):
        start, end = index.span(number, image_size)
        if frame.content_size != end - start:
            return not_blocks
    return BlockLayout(compression, tuple(frames))


class BlockSource(Protocol):
    """Where a differential flash gets the stored bytes of the blocks it writes."""

    layout: BlockLayout
    bytes_read: int

    def prefetch(self, blocks: Sequence[int]) -> None: ...

    def stored(self, block: int) -> bytes: ...

    def close(self) -> None: ...


class LocalBlocks:
    """A block's bytes as stored in a local image file (compressed for a packed file), by pread."""

    def __init__(self, path: Path, layout: BlockLayout, index: BlockIndex, image_size: int) -> None:
        self.path = path
        self.layout = layout
        self.index = index
        self.image_size = image_size
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self.bytes_read = 0  # of the file, for the receipt

    def prefetch(self, blocks: Sequence[int]) -> None:
        """Nothing to do: a pread costs the same alone."""

    def stored(self, block: int) -> bytes:
        """The file's bytes for `block`: its zstd frame, or its raw bytes."""
        offset, length = stored_span(self.layout, self.index, self.image_size, block)
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


def stored_span(layout: BlockLayout, index: BlockIndex, image_size: int, block: int) -> tuple[int, int]:
    """(offset, length) in the file of what holds `block`."""
    if layout.frames is not None:
        frame = layout.frames[block]
        return frame.offset, frame.length
    start, end = index.span(block, image_size)
    return start, end - start


class HttpBlocks:
    """A block's stored bytes from an HTTP server, by bounded Range requests. `prefetch` fetches
    a run of adjacent blocks in one request and keeps them until `stored` takes them."""

    def __init__(self, source: HttpSource, layout: BlockLayout, index: BlockIndex, image_size: int) -> None:
        self.source = source
        self.layout = layout
        self.index = index
        self.image_size = image_size
        self.bytes_read = 0  # bytes downloaded, for the receipt
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._cached = 0
        self._lock = threading.Lock()  # the write's workers ask at once

    def prefetch(self, blocks: Sequence[int]) -> None:
        """Fetch the blocks not held yet, each run of adjacent ones (at most COALESCE) in one request."""
        with self._lock:
            self._prefetch(blocks)

    def _prefetch(self, blocks: Sequence[int]) -> None:
        wanted = sorted(b for b in set(blocks) if b not in self._cache)
        while wanted:
            run = [wanted.pop(0)]
            while wanted and wanted[0] == run[-1] + 1 and len(run) < COALESCE:
                run.append(wanted.pop(0))
            spans = [stored_span(self.layout, self.index, self.image_size, b) for b in run]
            start, end = spans[0][0], spans[-1][0] + spans[-1][1]
            data = self.source.read_range(start, end - start)
            self.bytes_read += len(data)
            for block, (offset, length) in zip(run, spans, strict=True):
                self._keep(block, data[offset - start : offset - start + length])

    def _keep(self, block: int, data: bytes) -> None:
        self._cache[block] = data
        self._cached += len(data)
        while self._cached > CACHE_BYTES and len(self._cache) > 1:
            _, dropped = self._cache.popitem(last=False)
            self._cached -= len(dropped)

    def stored(self, block: int) -> bytes:
        """The block's frame, fetched now or by an earlier prefetch (and then let go)."""
        with self._lock:
            if block not in self._cache:
                self._prefetch([block])
            data = self._cache.pop(block)
            self._cached -= len(data)
            return data

    def close(self) -> None:
        self._cache.clear()
        self._cached = 0


def remote_frames(source: HttpSource) -> tuple[Frame, ...] | str:
    """The data frames of a packed zstd file on an HTTP server, from the seek table that ends
    it (two small Range requests); or why they cannot be known."""
    if source.size is None:
        return "the server did not say the file's size"
    try:
        return tuple(read_seek_table(source.read_range, source.size))
    except SeekTableError as exc:
        return str(exc)
    except BtyError as exc:  # e.g. a server that ignores Range requests
        return f"its frames cannot be fetched one by one ({exc})"


def block_source(source: ByteSource, layout: BlockLayout, index: BlockIndex, image_size: int) -> BlockSource:
    """Random access to the blocks of the image `source` streams: a local file or an HTTP URL."""
    if source.path is not None:
        return LocalBlocks(source.path, layout, index, image_size)
    if (http := as_http_source(source)) is not None:
        return HttpBlocks(http, layout, index, image_size)
    raise ValueError(f"{source.name} allows no random access")


def random_access(source: ByteSource) -> bool:
    return source.path is not None or as_http_source(source) is not None
