"""bmaptool's XML block map: which blocks of an image hold data, with a checksum per range.

Formats (bmaptool `BmapCopy._parse_bmap`):
  * 1.0-1.2: ranges may carry a `sha1` attribute, nothing else says which hash.
  * 1.3: ranges carry `sha1`; `<BmapFileSHA1>` is the SHA1 of the file itself.
  * 1.4 and 2.x (identical; 1.4 was a mistaken number for 2.0): `<ChecksumType>` names the hash,
    ranges carry `chksum`, `<BmapFileChecksum>` is the checksum of the file itself.
The file checksum is computed with its own value replaced by ASCII zeros.

The XML is parsed with xml.etree, which does not fetch external entities but does expand
internal ones; bmap files never have a DTD, so any `<!DOCTYPE`/`<!ENTITY` is refused up front.
"""

from __future__ import annotations

import bisect
import hashlib
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bty_live.errors import DigestMismatchError, ImageError
from bty_live.image.formats import SUFFIXES, Compression

BMAP_SUFFIX = ".bmap"
SUPPORTED_MAJOR = 2
MAX_BMAP_BYTES = 64 << 20  # bmaps are KiB to a few MiB; anything bigger is not one
_FIX = "regenerate it with bmaptool create"
_DTD = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)
_VERSION = re.compile(r"^\s*(\d+)\.(\d+)\s*$")
_HEX = re.compile(r"^[0-9a-fA-F]+$")

#: `bad(what)` builds the ImageError for one bmap file; the parsing helpers take it
_Bad = Callable[[str], ImageError]


@dataclass(frozen=True)
class BmapRange:
    first_block: int
    last_block: int  # inclusive, as in the XML
    checksum: str | None  # lower-case hex of the range's bytes; None when the bmap has none


@dataclass(frozen=True)
class Bmap:
    version: str  # "2.0", "1.3", ...
    image_size: int  # bytes of the (decompressed) image the bmap describes
    block_size: int
    blocks_count: int
    mapped_blocks_count: int
    checksum_type: str | None  # "sha256", "sha1", ...; None when no range has a checksum
    ranges: tuple[BmapRange, ...]
    source: str = ""  # the bmap's file name, for messages

    @property
    def mapped_bytes(self) -> int:
        return sum(end - start for start, end in self.byte_ranges())

    def range_bytes(self, r: BmapRange) -> tuple[int, int]:
        """(start, end) byte offsets of a range; the last block is cut at the image's end."""
        return r.first_block * self.block_size, min((r.last_block + 1) * self.block_size, self.image_size)

    def byte_ranges(self) -> list[tuple[int, int]]:
        """(start, end) byte offsets of each mapped range, end exclusive, in order."""
        return [self.range_bytes(r) for r in self.ranges]

    def is_mapped(self, offset: int, length: int) -> bool:
        """Whether any byte of [offset, offset + length) lies in a mapped range."""
        if length <= 0:
            return False
        ranges = self.byte_ranges()
        index = bisect.bisect_right([start for start, _ in ranges], offset + length - 1) - 1
        return index >= 0 and ranges[index][1] > offset


def find_bmap_sidecar(image_path: Path) -> Path | None:
    """IMAGE.bmap, else the name without its compression suffix + .bmap (bmaptool's convention:
    `demo.img.zst` -> `demo.img.bmap`)."""
    candidates = [image_path.with_name(image_path.name + BMAP_SUFFIX)]
    if SUFFIXES.get(image_path.suffix.lower(), Compression.RAW) != Compression.RAW:
        candidates.append(image_path.with_name(image_path.stem + BMAP_SUFFIX))
    return next((c for c in candidates if c.is_file()), None)


def load_bmap(path: Path) -> Bmap:
    """Parse and check a bmap file; ImageError with a one-line reason when it is unusable."""
    data = _read(path)
    return parse_bmap(data, path.name)


def _read(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BMAP_BYTES + 1)
    except FileNotFoundError as exc:
        raise ImageError(f"bmap {path} does not exist; {_FIX}") from exc
    except OSError as exc:
        raise ImageError(f"bmap {path} cannot be read: {exc.strerror}") from exc
    if len(data) > MAX_BMAP_BYTES:
        raise ImageError(f"bmap {path.name} is larger than {MAX_BMAP_BYTES >> 20} MiB, so not a bmap; {_FIX}")
    return data


def parse_bmap(data: bytes, source: str) -> Bmap:
    """Parse bmap XML held in memory; `source` names it in errors."""

    def bad(what: str) -> ImageError:
        return ImageError(f"bmap {source} {what}; {_FIX}")

    if _DTD.search(data):
        raise bad("contains a DTD or entity declaration, which bmap files never have")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise bad(f"is not well-formed XML ({exc})") from exc
    if root.tag != "bmap":
        raise bad(f"is not a bmap file (root element <{root.tag}>)")
    version = _version(root, bad)
    checksum_type = _checksum_type(root, bad)
    _check_file_checksum(root, data, checksum_type, bad)  # first: an edited file explains any oddity
    block_size = _number(root, "BlockSize", bad)
    image_size = _number(root, "ImageSize", bad)
    blocks_count = _number(root, "BlocksCount", bad)
    if block_size <= 0:
        raise bad("has <BlockSize> 0")
    if blocks_count != -(-image_size // block_size):
        raise bad(f"is inconsistent: {blocks_count} blocks of {block_size} bytes "
                  f"do not make {image_size} bytes")
    ranges = _ranges(root, blocks_count, bad)
    summed = sum(r.last_block - r.first_block + 1 for r in ranges)
    mapped = _number(root, "MappedBlocksCount", bad) if root.find("MappedBlocksCount") is not None else summed
    if mapped != summed:
        raise bad(f"is inconsistent: <MappedBlocksCount> says {mapped} but its ranges cover {summed} blocks")
    used = checksum_type if any(r.checksum for r in ranges) else None
    _check_range_checksums(ranges, used, bad)
    return Bmap(version, image_size, block_size, blocks_count, mapped, used, ranges, source)


def _version(root: ET.Element, bad: _Bad) -> str:
    version = root.get("version")
    if version is None:
        raise bad("has no version attribute on <bmap>")
    match = _VERSION.match(version)
    if not match:
        raise bad(f"has version {version!r}, not MAJOR.MINOR")
    if int(match.group(1)) > SUPPORTED_MAJOR:
        raise bad(f"has format version {version}, newer than the 1.x and 2.x this bty reads")
    return version.strip()


def _number(root: ET.Element, tag: str, bad: _Bad) -> int:
    element = root.find(tag)
    if element is None:
        raise bad(f"has no <{tag}>")
    text = (element.text or "").strip()
    if not text.isdigit():
        raise bad(f"has <{tag}> {text!r}, not a number")
    return int(text)


def _checksum_type(root: ET.Element, bad: _Bad) -> str:
    """<ChecksumType> (1.4, 2.x); before it, SHA1 was the only hash."""
    element = root.find("ChecksumType")
    if element is None:
        return "sha1"
    name = (element.text or "").strip().lower()
    if name not in hashlib.algorithms_available:
        raise bad(f"names checksum type {name!r}, which this Python cannot compute")
    return name


def _ranges(root: ET.Element, blocks_count: int, bad: _Bad) -> tuple[BmapRange, ...]:
    block_map = root.find("BlockMap")
    if block_map is None:
        raise bad("has no <BlockMap>")
    ranges: list[BmapRange] = []
    for element in block_map.findall("Range"):
        r = _range(element, bad)
        if r.last_block >= blocks_count:
            raise bad(f"maps block {r.last_block}, beyond its {blocks_count} blocks")
        if ranges and r.first_block <= ranges[-1].last_block:
            raise bad(f"has ranges out of order or overlapping at block {r.first_block}")
        ranges.append(r)
    return tuple(ranges)


def _range(element: ET.Element, bad: _Bad) -> BmapRange:
    text = (element.text or "").strip()
    first_text, _, last_text = (part.strip() for part in text.partition("-"))
    last_text = last_text or first_text
    if not (first_text.isdigit() and last_text.isdigit()):
        raise bad(f"has a range {text!r} that is not FIRST-LAST block numbers")
    first, last = int(first_text), int(last_text)
    if first > last:
        raise bad(f"has a range {text!r} that ends before it starts")
    checksum = element.get("chksum") or element.get("sha1")
    return BmapRange(first, last, checksum.strip().lower() if checksum else None)


def _check_range_checksums(ranges: tuple[BmapRange, ...], checksum_type: str | None, bad: _Bad) -> None:
    if checksum_type is None:
        return
    length = hashlib.new(checksum_type).digest_size * 2
    for r in ranges:
        if r.checksum is not None and (len(r.checksum) != length or not _HEX.match(r.checksum)):
            raise bad(f"has range {r.first_block}-{r.last_block} with a checksum that is not "
                      f"{checksum_type} hex")


def _check_file_checksum(root: ET.Element, data: bytes, checksum_type: str, bad: _Bad) -> None:
    """<BmapFileChecksum> (2.x) or <BmapFileSHA1> (1.3): the file's hash with that value zeroed."""
    element = root.find("BmapFileChecksum")
    if element is None:
        element = root.find("BmapFileSHA1")
    if element is None:
        return
    expected = (element.text or "").strip().lower()
    raw = expected.encode()
    if not raw or raw not in data.lower():
        raise bad(f"has an empty or unreadable <{element.tag}>")
    position = data.lower().find(raw)
    zeroed = data[:position] + b"0" * len(raw) + data[position + len(raw) :]
    actual = hashlib.new(checksum_type, zeroed).hexdigest()
    if actual != expected:
        raise bad(f"fails its own <{element.tag}> check (was it edited or damaged?)")


class BmapRangeVerifier:
    """Check each checksummed bmap range while the decompressed image streams past.

    Call `feed(offset, data)` with consecutive or increasing offsets (gaps are fine between
    ranges, e.g. when only mapped blocks are read); a range's digest is compared as soon as its
    last byte is fed. `finish()` raises if the stream ended before every range was seen.
    """

    def __init__(self, bmap: Bmap, image_name: str = "the image") -> None:
        self.bmap = bmap
        self.image_name = image_name
        self._ranges = [r for r in bmap.ranges if r.checksum is not None]
        self._index = 0
        self._position = 0  # end of the data fed so far
        self.verified = 0  # ranges checked and found good
        self._start_range()

    def _start_range(self) -> None:
        if self._index < len(self._ranges):
            assert self.bmap.checksum_type is not None  # ranges with checksums imply a type
            self._hash = hashlib.new(self.bmap.checksum_type)
            self._covered = self.bmap.range_bytes(self._ranges[self._index])[0]

    def feed(self, offset: int, data: memoryview | bytes) -> None:
        if offset < self._position:
            raise ValueError(f"bmap verifier fed offset {offset} after {self._position}: feed in order")
        end = offset + len(data)
        self._position = end
        while self._index < len(self._ranges):
            r = self._ranges[self._index]
            start, stop = self.bmap.range_bytes(r)
            if start >= end:
                return
            if offset > self._covered:
                raise ValueError(
                    f"bmap range {r.first_block}-{r.last_block}: bytes {self._covered}..{min(offset, stop)} "
                    "were never fed"
                )
            high = min(end, stop)
            if high > self._covered:
                self._hash.update(data[self._covered - offset : high - offset])
                self._covered = high
            if self._covered < stop:
                return
            self._close_range(r)

    def _close_range(self, r: BmapRange) -> None:
        actual = self._hash.hexdigest()
        if actual != r.checksum:
            start, stop = self.bmap.range_bytes(r)
            raise DigestMismatchError(
                f"{self.image_name}: blocks {r.first_block}-{r.last_block} (bytes {start}-{stop}) have "
                f"{self.bmap.checksum_type} {actual[:16]}..., bmap {self.bmap.source or '(bmap)'} says "
                f"{(r.checksum or '')[:16]}...; the image or its bmap is damaged: re-copy the image "
                "or regenerate the bmap with bmaptool create"
            )
        self.verified += 1
        self._index += 1
        self._start_range()

    def finish(self) -> None:
        """Raise ImageError if some checksummed range was not (completely) fed."""
        if self._index < len(self._ranges):
            r = self._ranges[self._index]
            raise ImageError(
                f"{self.image_name} ended at byte {self._position}, before the end of bmap range "
                f"{r.first_block}-{r.last_block} (bmap {self.bmap.source}); the bmap belongs to "
                "a bigger image: regenerate it with bmaptool create"
            )
