"""The block index of an image: a blake3 per aligned block of the decompressed image.

A machine reflashed before every CI job already holds the image, or its previous version, give
or take what the last job changed. The index lets a flash compare what the disk holds with what
the image says, block by block, and write only the blocks that differ (bty_live.flash.differential).

The manifest carries it (`[index]`, written by `bty images add`, `bty images pack` and
`bty capture`), so it is exactly as trusted as the manifest's digest of the whole image:

    [index]
    block_size = 2097152    # the packed image's frame size: block i is frame i
    blocks = [ "9f2c...32 hex", "zero", ... ]   # "zero": the block is all zero bytes

The block size is the packed frame size (2 MiB; images packed with 8 MiB frames get an 8 MiB
index): a block that differs is fetched as its whole frame, so the block size is what a reflash
downloads per scattered change (the measurements are at PACKED_FRAME_SIZE). Writes do not
depend on it: a block that differs is compared piece by piece with its decompressed frame, and
only the pieces that differ are written (bty_live.flash.differential).

A block's digest is the first 128 bits of its blake3 (32 hex digits; 64 are read too): it only
decides which blocks to skip. What proves the disk is the manifest's full blake3 of the whole
image, which a differential flash checks over the blocks in order (a block that matched by its
digest but not by its bytes would fail that proof).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import blake3

from bty_live.image.zstd_frames import PACKED_FRAME_SIZE, Frame

BLOCK_SIZE = PACKED_FRAME_SIZE
#: bytes of blake3 output kept per block
DIGEST_BYTES = 16
ZERO = "zero"
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class BlockIndex:
    block_size: int
    #: per block, in order: its blake3 (hex), or None when the block is all zero
    digests: tuple[str | None, ...]

    def __len__(self) -> int:
        return len(self.digests)

    def span(self, block: int, image_size: int) -> tuple[int, int]:
        """The block's [offset, end) in an image of `image_size` bytes (the last block may be short)."""
        start = block * self.block_size
        return start, min(start + self.block_size, image_size)

    def covers(self, image_size: int) -> bool:
        """Whether the index has exactly the blocks of an image of this size."""
        return len(self.digests) == -(-image_size // self.block_size) and self.block_size > 0

    @property
    def zero_blocks(self) -> int:
        return sum(1 for d in self.digests if d is None)

    def to_toml(self) -> dict[str, Any]:
        return {"block_size": self.block_size, "blocks": [d if d is not None else ZERO for d in self.digests]}


def index_block_size(frames: Sequence[Frame] | None) -> int:
    """The block size an image's index should have: its frame size when it is a packed zstd
    file (every frame but the last of one size, a multiple of 4 KiB), so that block i is frame i;
    else BLOCK_SIZE."""
    if not frames or len(frames) < 2:
        return BLOCK_SIZE
    size = frames[0].content_size
    if not size or size % 4096 or any(f.content_size != size for f in frames[:-1]):
        return BLOCK_SIZE
    last = frames[-1].content_size
    return size if last is not None and 0 < last <= size else BLOCK_SIZE


def parse_index(data: object) -> BlockIndex:
    """The manifest's [index] table; a ValueError says what is wrong (the manifest parser adds
    the file and the fix)."""
    if not isinstance(data, dict):
        raise ValueError("must be a table with block_size and blocks")
    size, blocks = data.get("block_size"), data.get("blocks")
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0 or size % 4096:
        raise ValueError("block_size must be a positive multiple of 4096")
    if not isinstance(blocks, list) or not blocks:
        raise ValueError("blocks must be a list of blake3 digests (or \"zero\")")
    digests: list[str | None] = []
    for number, item in enumerate(blocks):
        if item == ZERO:
            digests.append(None)
        elif isinstance(item, str) and len(item) in (2 * DIGEST_BYTES, 64) and set(item.lower()) <= _HEX:
            digests.append(item.lower()[: 2 * DIGEST_BYTES])
        else:
            raise ValueError(f"block {number} is neither a blake3 (32 hex digits) nor \"zero\"")
    return BlockIndex(size, tuple(digests))


class BlockIndexer:
    """Builds a BlockIndex from the decompressed image fed in order, in any slicing."""

    def __init__(self, block_size: int = BLOCK_SIZE) -> None:
        self.block_size = block_size
        self._digests: list[str | None] = []
        self._hasher = blake3.blake3()
        self._filled = 0
        self._zero = True

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        while len(view):
            take = min(len(view), self.block_size - self._filled)
            piece = view[:take]
            if self._zero:
                self._zero = _all_zero(piece)
            self._hasher.update(piece)
            self._filled += take
            view = view[take:]
            if self._filled == self.block_size:
                self._close_block()

    def _close_block(self) -> None:
        self._digests.append(None if self._zero else self._hasher.hexdigest(DIGEST_BYTES))
        self._hasher = blake3.blake3()
        self._filled = 0
        self._zero = True

    def finish(self) -> BlockIndex:
        if self._filled:
            self._close_block()
        return BlockIndex(self.block_size, tuple(self._digests))


_ZEROS = bytearray(1 << 20)


def _all_zero(view: memoryview) -> bool:
    """A memcmp against zeros (bytearray == buffer compares with memcmp), a MiB at a time."""
    step = len(_ZEROS)
    for start in range(0, len(view), step):
        piece = view[start : start + step]
        if len(piece) < step:
            return bytearray(len(piece)) == piece
        if _ZEROS != piece:  # noqa: SIM300 - the bytearray on the left makes it a memcmp
            return False
    return True


def block_digest(data: bytes | bytearray | memoryview) -> str | None:
    """What the index says for one block's bytes: None when all zero, else its blake3."""
    view = memoryview(data).cast("B")
    if _all_zero(view):
        return None
    return blake3.blake3(view).hexdigest(DIGEST_BYTES)


def iter_blocks(index: BlockIndex, image_size: int) -> Iterator[tuple[int, int, int, str | None]]:
    """(number, offset, end, digest) of every block."""
    for number, digest in enumerate(index.digests):
        start, end = index.span(number, image_size)
        yield number, start, end, digest
