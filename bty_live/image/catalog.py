"""The image catalog: which directory holds the images, what is in it, and finding one by name.

An image is a file with an image suffix (formats.SUFFIXES: .img .raw .iso .zst .xz .gz .bz2 .lz4
.zip, possibly stacked as in demo.img.zst). Beside it may sit a manifest (IMAGE.toml) and a bmap
(IMAGE.bmap or the name without its compression suffix + .bmap). Images without a manifest are
listed as unverified and can still be flashed.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import blake3

from bty_live.errors import ImageError, SourceCorruptError
from bty_live.image import zstd_frames
from bty_live.image.block_index import BlockIndex, BlockIndexer, index_block_size
from bty_live.image.bmap import find_bmap_sidecar
from bty_live.image.formats import (
    SUFFIXES,
    VIRTUAL_DISKS,
    Compression,
    ImageReader,
    check_image_file,
    detect_compression,
    open_zipped_image,
    probe_decompressed_size,
)
from bty_live.image.manifest import MANIFEST_SUFFIX, Manifest, load_manifest
from bty_live.image.virtual_disk import inspect_virtual_disk
from bty_live.system.state_dirs import LIVE_IMAGES_DIR

IMAGES_ENV = "BTY_IMAGES"

_SIDECAR_SUFFIXES = (MANIFEST_SUFFIX, ".bmap", ".yaml", ".yml", ".json", ".partial", ".tmp", ".md", ".txt")


def resolve_images_dir(arg: str | os.PathLike[str] | None = None) -> Path:
    """--images DIR, else $BTY_IMAGES, else the live stick's images partition, else ./images."""
    if arg:
        return Path(arg)
    env = os.environ.get(IMAGES_ENV)
    if env:
        return Path(env)
    if LIVE_IMAGES_DIR.is_dir():
        return LIVE_IMAGES_DIR
    return Path("images")


def is_image_file(path: Path) -> bool:
    name = path.name.lower()
    if name.startswith(".") or name.endswith(_SIDECAR_SUFFIXES):
        return False
    return path.suffix.lower() in SUFFIXES and path.is_file()


def image_stem(path: Path) -> str:
    """demo.img.zst -> demo; win11.iso -> win11."""
    name = path.name
    while True:
        root, ext = os.path.splitext(name)
        if ext.lower() in SUFFIXES and root:
            name = root
        else:
            return name


class DigestStatus:
    MANIFEST = "manifest"  # a manifest gives the digest the image must have
    UNVERIFIED = "unverified"  # no manifest: flashed bytes are hashed, but compared with nothing
    INVALID = "invalid manifest"


@dataclass(frozen=True)
class CatalogEntry:
    path: Path
    name: str
    manifest: Manifest | None
    manifest_error: str | None
    bmap_path: Path | None
    compression: Compression | None  # None when the file is not a usable image
    format_error: str | None
    file_size: int
    size: int | None  # decompressed bytes, when known without decompressing

    @property
    def digest_status(self) -> str:
        if self.manifest_error:
            return DigestStatus.INVALID
        return DigestStatus.MANIFEST if self.manifest else DigestStatus.UNVERIFIED

    @property
    def problem(self) -> str | None:
        return self.format_error or self.manifest_error


def describe_image(path: Path) -> CatalogEntry:
    """Everything cheap to know about one image file (no decompression)."""
    check_image_file(path)
    manifest, manifest_error = None, None
    try:
        manifest = load_manifest(path)
    except ImageError as exc:
        manifest_error = str(exc)
    compression, format_error = None, None
    try:
        compression = detect_compression(path)
        if compression == Compression.ZIP:
            open_zipped_image(path)  # two images, an encrypted one, ...: say so in the listing
        elif compression in VIRTUAL_DISKS:
            inspect_virtual_disk(path, compression.value)  # a backing file, ...: say so in the listing
    except SourceCorruptError:
        pass  # refused when flashed, with its own exit code (like a truncated zstd file)
    except ImageError as exc:
        format_error = str(exc)
    size = manifest.size if manifest else None
    if size is None and compression is not None:
        size = probe_decompressed_size(path, compression)
    return CatalogEntry(
        path=path,
        name=manifest.name if manifest else image_stem(path),
        manifest=manifest,
        manifest_error=manifest_error,
        bmap_path=find_bmap_sidecar(path),
        compression=compression,
        format_error=format_error,
        file_size=path.stat().st_size,
        size=size,
    )


def list_images(directory: Path) -> list[CatalogEntry]:
    if not directory.is_dir():
        raise ImageError(f"images directory {directory} does not exist; create it, or pass --images DIR "
                         f"or set ${IMAGES_ENV}")
    entries = [describe_image(p) for p in sorted(directory.iterdir()) if is_image_file(p)]
    return sorted(entries, key=lambda e: (e.name.lower(), e.path.name))


_HEX_PREFIX = re.compile(r"^[0-9a-fA-F]{8,64}$")


def find_image(spec: str, directory: Path) -> CatalogEntry:
    """An image by path, manifest name, file name, file stem or blake3 prefix (8+ hex digits)."""
    candidate = Path(spec)
    if candidate.is_file():
        return describe_image(candidate)
    if os.sep in spec:
        check_image_file(candidate)  # a directory, FIFO or character device is named as such
        if candidate.is_block_device():
            raise ImageError(f"image {spec} is a block device, not a disk image file; copy the disk into an image "
                             f"file first (dd if={spec} of=disk.img), then `bty images add` it")
        raise ImageError(f"image {spec} does not exist; check the path")
    try:
        entries = list_images(directory)
    except ImageError as exc:
        raise ImageError(f"image {spec!r} not found: {exc}") from exc
    for matcher in (
        lambda e: e.path.name == spec,
        lambda e: e.name == spec,
        lambda e: image_stem(e.path) == spec,
        lambda e: bool(_HEX_PREFIX.match(spec)) and e.manifest is not None
        and e.manifest.blake3.startswith(spec.lower()),
    ):
        found = [e for e in entries if matcher(e)]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            names = ", ".join(e.path.name for e in found)
            raise ImageError(f"image {spec!r} is ambiguous in {directory}: {names}; give the file name")
    check_image_file(candidate)  # `bty flash somedir`: say that it is a directory
    names = ", ".join(e.name for e in entries) or "none"
    raise ImageError(f"image {spec!r} not found in {directory} (images there: {names}); see `bty images`")


@dataclass(frozen=True)
class Digests:
    size: int
    blake3: str  # of the decompressed image
    sha256: str  # of the file as shipped
    index: BlockIndex  # a blake3 per block, for differential flashes


def _frames_of(path: Path) -> list[zstd_frames.Frame] | None:
    """A zstd file's data frames (their sizes decide the block index's), else None."""
    try:
        with open(path, "rb") as f:
            if int.from_bytes(f.read(4), "little") != zstd_frames.ZSTD_MAGIC:
                return None
            f.seek(0)
            return zstd_frames.scan_content_size(f, record=True).index
    except (OSError, zstd_frames.FrameError):
        return None


def compute_digests(path: Path, progress: Callable[[int, int], None] | None = None) -> Digests:
    """Decompress the whole image once: its size, its blake3, its block index and the file's sha256.

    `progress(file_bytes_read, image_bytes)` is called after every buffer.
    """
    file_hash = hashlib.sha256()
    image_hash = blake3.blake3(max_threads=blake3.blake3.AUTO)
    indexer = BlockIndexer(index_block_size(_frames_of(path)))
    buffer = bytearray(16 << 20)
    view = memoryview(buffer)
    size = 0
    check_image_file(path)
    with ImageReader(path, observer=file_hash.update) as reader:
        while n := reader.readinto(view):
            image_hash.update(view[:n])
            indexer.feed(view[:n])
            size += n
            if progress:
                progress(reader.bytes_in, size)
    if reader.compression in VIRTUAL_DISKS:  # QEMU read the file, not us: hash it as shipped
        with open(path, "rb") as f:
            while n := f.readinto(view):
                file_hash.update(view[:n])
    if size == 0:
        raise ImageError(f"image {path.name} decompresses to nothing; re-copy it")
    return Digests(size=size, blake3=image_hash.hexdigest(), sha256=file_hash.hexdigest(), index=indexer.finish())
