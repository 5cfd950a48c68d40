"""What to copy: everything known about an image before a single byte is written.

`load_image_source()` takes the catalog's entry (manifest, bmap sidecar, compression: read once,
by `catalog.describe_image`), walks a zstd file's frames (which also proves the file is complete,
before the disk is touched) and parses the partition table from the start of the decompressed
stream. `bty inspect` reads the head and the partition table through the same functions
(`read_head`, `read_partition_table`), so it and `bty flash --dry-run` describe an image alike.

A streamed image (the agent's download, `bty flash URL`) is planned from its first bytes by
`streamed_image_source`: a stream cannot be walked ahead of time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bty_live.errors import DigestMismatchError, ImageError, SourceCorruptError
from bty_live.image import zstd_frames
from bty_live.image.block_reader import remote_frames
from bty_live.image.bmap import Bmap, load_bmap
from bty_live.image.catalog import CatalogEntry
from bty_live.image.formats import (
    VIRTUAL_DISKS,
    Compression,
    ImageReader,
    compression_of,
    probe_decompressed_size,
    zip_image_size,
)
from bty_live.image.fsprobe import ForwardReader
from bty_live.image.manifest import Manifest
from bty_live.image.optical import optical_only_warning
from bty_live.image.partition_table import parse_partition_table
from bty_live.image.partitions import PartitionTable
from bty_live.image.seek_table import SeekTableError, read_seek_table
from bty_live.image.sources import ByteSource, FileSource, as_http_source
from bty_live.image.virtual_disk import inspect_virtual_disk
from bty_live.units import format_size, format_sizes

HEAD_BYTES = 1 << 20
#: the receipt's stream_check when the decompressed stream has no blake3 to match, but the file
#: as shipped has a digest that was checked (an OCI layer without a bty manifest)
FILE_DIGEST_ONLY = "no blake3 (the file's digest is checked)"


@dataclass(frozen=True)
class FileDigest:
    """What the file as shipped (compressed, as it streams in) must hash to: the one mechanism for
    a digest of the file rather than of the image on the disk (an OCI layer's digest; later a URL's
    --sha256). The engine hashes the file's bytes as the reader takes them, the trailing bytes
    after the image's end included, and compares before the run counts as good: a mismatch is a
    DigestMismatchError, and the disk is wiped."""

    #: a hashlib name: "sha256"
    algorithm: str
    #: lower-case hex
    hex: str
    #: where the digest comes from, for messages: "OCI digest"
    source: str
    #: what a mismatch tells the reader to do
    fix: str

    @property
    def text(self) -> str:
        """"sha256:HEX", as OCI writes digests (and the receipt records them)."""
        return f"{self.algorithm}:{self.hex}"


@dataclass(frozen=True)
class ImageSource:
    source: ByteSource
    name: str
    compression: Compression
    file_size: int | None
    #: decompressed size, when known before decompressing, and where it came from
    size: int | None
    size_source: str
    manifest: Manifest | None
    bmap: Bmap | None
    #: zstd frame index (None for other formats)
    frames: tuple[zstd_frames.Frame, ...] | None
    table: PartitionTable | None
    #: what the plan must warn about the image (e.g. an ISO that boots from a DVD drive only)
    warnings: tuple[str, ...] = ()
    #: the digest the user gave for an image without a manifest (`bty flash URL --blake3 HEX`)
    given_blake3: str | None = None
    #: what the file as shipped must hash to (an OCI layer's digest), checked while it streams
    file_digest: FileDigest | None = None
    #: what plans and receipts call the image when neither a path nor a URL says it: an OCI
    #: reference, pinned to the digest of its manifest
    reference: str | None = None

    @property
    def path(self) -> Path | None:
        """The local file, if the image is one (not for images streamed from a server)."""
        return self.source.path

    @property
    def file_name(self) -> str:
        return self.source.name

    @property
    def location(self) -> str:
        """Where the image comes from, for plans and receipts: a path, a URL or an OCI reference."""
        if self.reference is not None:
            return self.reference
        if self.source.path is not None:
            return str(self.source.path)
        if (http := as_http_source(self.source)) is not None:
            return http.shown_url  # never the query string: a presigned URL's credentials
        return self.source.name

    @property
    def expected_blake3(self) -> str | None:
        """What the decompressed stream must hash to; None: nothing to compare with (unverified)."""
        return self.given_blake3 or (self.manifest.blake3 if self.manifest else None)

    @property
    def digest_source(self) -> str | None:
        """Where `expected_blake3` comes from: "--blake3", "manifest", or None."""
        if self.given_blake3:
            return "--blake3"
        return "manifest" if self.manifest else None

    def download(self, file_bytes: int) -> dict[str, Any] | None:
        """For the receipt of an image streamed over HTTP: its URL (without the query string),
        how often a dropped connection was resumed, and the bytes of the file the flash read."""
        if (http := as_http_source(self.source)) is None:
            return None
        return {"url": http.shown_url, "resumes": http.resumes, "bytes": file_bytes}

    @property
    def has_gpt(self) -> bool:
        return self.table is not None and self.table.scheme == "gpt"


def load_image_source(entry: CatalogEntry) -> ImageSource:
    """The image a catalog entry names, ready to plan; refuses (ImageError) an entry with a problem."""
    if entry.problem or entry.compression is None:
        raise ImageError(entry.problem or f"image {entry.path.name} has an unknown format")
    path, compression = entry.path, entry.compression
    size, size_source = None, "unknown until decompressed"
    if entry.manifest:
        size, size_source = entry.manifest.size, "manifest"

    frames = None
    if compression == Compression.ZSTD:
        frames, told_by = _scan_zstd(path)
        declared = sum(f.content_size or 0 for f in frames)
        if all(f.content_size is not None for f in frames):
            _check_manifest_size(path, declared, size, told_by)
            if size is None:
                size, size_source = declared, told_by
    elif compression in _SIZE_METADATA:
        told_by = _SIZE_METADATA[compression]
        metadata_size = _declared_size(path, compression)
        if metadata_size is not None:
            _check_manifest_size(path, metadata_size, size, told_by)
            if size is None:
                size, size_source = metadata_size, told_by
    elif size is None and entry.size is not None:
        size, size_source = entry.size, "file size"

    bmap = None
    bmap_path = entry.bmap_path
    if bmap_path is not None:
        bmap = load_bmap(bmap_path)
        if size is not None and bmap.image_size != size:
            described, real = format_sizes(bmap.image_size, size)
            raise ImageError(
                f"bmap {bmap_path.name} describes a {described} image but {path.name} is "
                f"{real}; regenerate it with bmaptool create or remove it"
            )
        if size is None:
            size, size_source = bmap.image_size, "bmap"

    head = read_head(path, compression, size)
    warning = optical_only_warning(head, path.name)
    return ImageSource(
        source=FileSource(path),
        name=entry.name,
        compression=compression,
        file_size=entry.file_size,
        size=size,
        size_source=size_source,
        manifest=entry.manifest,
        bmap=bmap,
        frames=tuple(frames) if frames is not None else None,
        table=read_partition_table(path, compression, head, size),
        warnings=(warning,) if warning else (),
    )


#: formats whose own metadata gives the decompressed size up front -> what messages call it
_SIZE_METADATA = {Compression.XZ: "xz index", Compression.ZIP: "zip directory",
                  **{virtual: f"{virtual} header" for virtual in VIRTUAL_DISKS}}


def _declared_size(path: Path, compression: Compression) -> int | None:
    """The size the file's metadata declares (xz: the index of every stream; zip: the central
    directory, raw members only; a virtual disk: its header, through qemu-img). A zip or a
    virtual disk is checked here, so an unusable one is refused before the disk is touched (a
    truncated zip with SourceCorruptError, a qcow2 with a backing file with ImageError)."""
    if compression == Compression.ZIP:
        return zip_image_size(path)
    if compression in VIRTUAL_DISKS:
        return inspect_virtual_disk(path, compression.value).virtual_size
    return probe_decompressed_size(path, compression)


def _check_manifest_size(path: Path, actual: int, manifest_size: int | None, told_by: str) -> None:
    """Refuse, before anything is written, an image whose own metadata (`told_by`) gives another
    decompressed size than its manifest."""
    if manifest_size is None or actual == manifest_size:
        return
    real, claimed = format_sizes(actual, manifest_size)
    raise DigestMismatchError(
        f"image {path.name} decompresses to {real} (its {told_by}) but its manifest says {claimed}; "
        "the manifest belongs to another image: rerun `bty images add`"
    )


def _scan_zstd(path: Path) -> tuple[list[zstd_frames.Frame], str]:
    """The data frames of a zstd file, and what told them: the seek table a packed file ends
    with (two preads), else a walk of every frame's and block's header (which also finds a file
    cut short, before the disk is touched). The walk reads 3 bytes of every block (up to 128 KiB
    each): with the file in the page cache 8 ms per GiB of single-frame image, 25 ms per GiB
    packed in 2 MiB frames; without it, readahead makes it read most of the file."""
    with open(path, "rb") as f:
        fd = f.fileno()
        try:
            return read_seek_table(lambda offset, length: os.pread(fd, length, offset),
                                   os.fstat(fd).st_size), "zstd seek table"
        except SeekTableError:
            pass  # not packed by bty (or cut short, which the walk says)
        try:
            summary = zstd_frames.scan_content_size(f, record=True)
        except zstd_frames.FrameError as exc:
            raise SourceCorruptError(f"image {path.name} is not a well-formed zstd stream ({exc}); "
                                     "re-copy it") from exc
    if not summary.complete or not summary.index:
        raise SourceCorruptError(
            f"image {path.name} is truncated: its last zstd frame is cut short after "
            f"{format_size(path.stat().st_size)}; re-copy it"
        )
    return summary.index, "zstd frame headers"


def read_head(source: ByteSource | Path, compression: Compression, size: int | None) -> bytes:
    """The first MiB of the decompressed image (less if the image is smaller)."""
    want = HEAD_BYTES if size is None else min(HEAD_BYTES, size)
    buffer = bytearray(want)
    with ImageReader(source, compression) as reader:
        n = reader.readinto(memoryview(buffer))
    return bytes(buffer[:n])


def read_partition_table(path: Path, compression: Compression, head: bytes,
                         size: int | None) -> PartitionTable | None:
    """The table parsed from `head`; on MBR disks the extended partition's EBRs that lie beyond
    the head are then fetched one by one (decompressing forward, never the whole image)."""
    if not head:
        return None
    table = parse_partition_table(head, size)
    if table is None or table.missing_ebr is None:
        return table
    sectors: dict[int, bytes] = {}
    with ForwardReader(path, compression) as reader:
        while table is not None and table.missing_ebr is not None and table.missing_ebr not in sectors:
            sectors[table.missing_ebr] = reader.read_at(table.missing_ebr, 512)
            table = parse_partition_table(head, size, sectors=sectors)
    return table


def load_streamed_image_source(
    source: ByteSource,
    *,
    name: str,
    size: int | None,
    blake3: str | None,
    manifest: Manifest | None = None,
) -> ImageSource:
    """An image that arrives as a stream from the PXE agent's server: what the server says it is
    (name, decompressed size, blake3), checked against its first bytes. An image on another host
    may come with a digest but no size (`bty serve assign MAC URL --blake3 HEX`). `manifest`,
    the server's manifest of the image (its block index), is used when it names the same image."""
    if manifest is None or manifest.blake3 != blake3 or manifest.size != size:
        manifest = Manifest(name=name, size=size, blake3=blake3) if size and blake3 else None
    return streamed_image_source(source, name=name, manifest=manifest, size=size, size_source="server",
                                 given_blake3=blake3 if manifest is None else None)


def streamed_image_source(
    source: ByteSource,
    *,
    name: str,
    manifest: Manifest | None,
    size: int | None = None,
    size_source: str = "manifest",
    given_blake3: str | None = None,
) -> ImageSource:
    """An image that arrives as a stream, planned from its first bytes. `size` (decompressed)
    defaults to the manifest's; a raw image without one is as large as its file. A stream cannot
    be walked ahead of time, so zstd truncation is caught at its end (and the disk then wiped),
    frames are decompressed one after another, and an image of unknown size that turns out
    larger than the disk is stopped there (and the disk wiped)."""
    http = as_http_source(source)
    stream = (http.head(512) if http else source).open()  # over HTTP, only the bytes asked for travel
    try:
        first = stream.read(512)
    finally:
        stream.close()
    compression = compression_of(first, source.name)
    if size is None and manifest is not None:
        size, size_source = manifest.size, "manifest"
    if size is None and compression == Compression.RAW and source.size is not None:
        size, size_source = source.size, "file size"
    frames = None
    if http is not None and manifest is not None and manifest.index is not None and compression == Compression.ZSTD:
        found = remote_frames(http)  # a differential flash fetches frames by Range requests
        frames = None if isinstance(found, str) else found
    head_end = frames[0].offset + frames[0].length if frames else HEAD_BYTES if compression == Compression.RAW else None
    head = read_head(http.head(head_end) if http else source, compression, size)
    warning = optical_only_warning(head, source.name)
    return ImageSource(
        source=source,
        name=name,
        compression=compression,
        file_size=source.size,
        size=size,
        size_source=size_source if size else "unknown until decompressed",
        manifest=manifest,
        bmap=None,
        frames=frames,
        table=parse_partition_table(head, size) if head else None,
        warnings=(warning,) if warning else (),
        given_blake3=given_blake3,
    )
