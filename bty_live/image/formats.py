"""Image file formats: detect the compression from magic bytes, stream the decompressed bytes.

Supported: raw (.img, .raw, .iso), zstd (.zst, multi-frame), xz (.xz), gzip (.gz), bzip2 (.bz2,
multi-stream), lz4 (.lz4, frame format, concatenated frames) and a zip (.zip) holding one disk
image, raw or compressed with one of the above (bty_live.image.zipped); virtual disks (.qcow2,
.vmdk, .vhdx, .vdi, .vhd), read through QEMU (bty_live.image.virtual_disk). Formats bty does not
read (7z, tar, legacy lz4, VMDK descriptors, ...) are recognised so the error can say how to
convert them instead of writing their headers onto a disk.
"""

from __future__ import annotations

import bz2
import gzip
import os
import stat
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO, Protocol, cast

import lz4.frame
import zstandard

from bty_live.errors import ImageError, SourceCorruptError, ToolError
from bty_live.image import zstd_frames
from bty_live.image.sources import ByteSource, FileSource, RawStream
from bty_live.image.virtual_disk import inspect_virtual_disk, open_virtual_disk
from bty_live.image.zipped import ZipDataError, ZipMember, ZipMemberStream, find_image_member
from bty_live.system.run import ToolStream, run
from bty_live.units import format_size


class Compression(StrEnum):
    RAW = "raw"
    ZSTD = "zstd"
    XZ = "xz"
    GZIP = "gzip"
    BZIP2 = "bzip2"
    LZ4 = "lz4"
    ZIP = "zip"
    # virtual disks, read through QEMU (bty_live.image.virtual_disk); the values are bty's names
    QCOW2 = "qcow2"
    VMDK = "vmdk"
    VHDX = "vhdx"
    VDI = "vdi"
    VHD = "vhd"


#: formats that are virtual disks, not byte streams: read from a local file through QEMU
VIRTUAL_DISKS = frozenset({Compression.QCOW2, Compression.VMDK, Compression.VHDX, Compression.VDI, Compression.VHD})


#: file name suffix -> what the name claims; magic bytes have the last word. The one list of
#: image suffixes: the catalog lists files with these, help texts name them (`suffix_list`).
SUFFIXES: dict[str, Compression] = {
    ".img": Compression.RAW,
    ".raw": Compression.RAW,
    ".iso": Compression.RAW,
    ".zst": Compression.ZSTD,
    ".zstd": Compression.ZSTD,
    ".xz": Compression.XZ,
    ".gz": Compression.GZIP,
    ".bz2": Compression.BZIP2,
    ".lz4": Compression.LZ4,
    ".zip": Compression.ZIP,
    ".qcow2": Compression.QCOW2,
    ".vmdk": Compression.VMDK,
    ".vhdx": Compression.VHDX,
    ".vdi": Compression.VDI,
    ".vhd": Compression.VHD,
}
RAW_SUFFIXES = tuple(suffix for suffix, compression in SUFFIXES.items() if compression == Compression.RAW)

_MAGIC: list[tuple[bytes, Compression]] = [
    (b"\x28\xb5\x2f\xfd", Compression.ZSTD),
    (b"\xfd7zXZ\x00", Compression.XZ),
    (b"\x1f\x8b", Compression.GZIP),
    (b"BZh", Compression.BZIP2),
    (b"\x04\x22\x4d\x18", Compression.LZ4),
    (b"PK\x03\x04", Compression.ZIP),
    (b"PK\x05\x06", Compression.ZIP),  # an empty archive: only the end of its directory
    (b"QFI\xfb", Compression.QCOW2),
    (b"KDMV", Compression.VMDK),  # a sparse extent (monolithicSparse, streamOptimized)
    (b"vhdxfile", Compression.VHDX),
    (b"conectix", Compression.VHD),  # a dynamic VHD starts with a copy of its footer
]
#: (offset, magic, format) for signatures not at the start
_MAGIC_AT: list[tuple[int, bytes, Compression]] = [
    (64, b"\x7f\x10\xda\xbe", Compression.VDI),
]
#: a fixed-size VHD is the raw disk followed by a 512-byte footer starting with this
_VHD_FOOTER = b"conectix"

# (offset, magic, what it is, how to fix)
_UNSUPPORTED: list[tuple[int, bytes, str, str]] = [
    (0, b"\x02\x21\x4c\x18", "a legacy-format lz4 stream (lz4 -l)",
     "recompress it with zstd (lz4 -dc IN | zstd -o OUT.img.zst)"),
    (0, b"7z\xbc\xaf\x27\x1c", "a 7-zip archive", "extract it and add the disk image inside"),
    (0, b"# Disk DescriptorFile", "a VMDK descriptor (its data is in other files)",
     "convert it to one file: qemu-img convert -O vmdk -o subformat=streamOptimized IN OUT.vmdk"),
    (257, b"ustar", "a tar archive", "extract it and add the disk image inside"),
]

_ZSTD_SKIPPABLE = range(0x184D2A50, 0x184D2A60)


def suffix_list() -> str:
    """The image file suffixes, for help texts: ".img, .raw, ..., .zip"."""
    return ", ".join(SUFFIXES)


def claimed_compression(path: Path) -> Compression | None:
    """What the file name says, from its last suffix; None if the suffix means nothing to us."""
    return SUFFIXES.get(path.suffix.lower())


#: what a path is when it is not a file bty can read an image from (test, name), in test order
_NOT_IMAGE_FILES: tuple[tuple[Callable[[int], bool], str], ...] = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISSOCK, "a socket"),
)


def not_an_image_file(path: Path) -> str | None:
    """What `path` is when it exists but is neither a regular file nor a block device (reading
    a FIFO or /dev/zero would block or never end); None for files, block devices, missing paths."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    for test, what in _NOT_IMAGE_FILES:
        if test(mode):
            return what
    return None


def check_image_file(path: Path) -> None:
    """Raise ImageError when `path` exists but is no file to read an image from (see not_an_image_file)."""
    what = not_an_image_file(path)
    if what is not None:
        raise ImageError(f"image {path} is {what}, not a disk image file; give the path of an image file "
                         f"({suffix_list()})")


def detect_compression(path: Path) -> Compression:
    """The compression of `path` from its first bytes, cross-checked with its name."""
    check_image_file(path)
    try:
        with open(path, "rb") as f:
            head = f.read(512)
            if _fixed_vhd_footer(f, head):
                return Compression.VHD
    except FileNotFoundError as exc:
        raise ImageError(f"image {path} does not exist; check the name with `bty images`") from exc
    except OSError as exc:
        raise ImageError(f"image {path} cannot be read: {exc.strerror}") from exc
    return compression_of(head, path.name)


def _fixed_vhd_footer(f: BinaryIO, head: bytes) -> bool:
    """A fixed-size VHD: raw bytes, then a footer in the file's last 512 bytes (a dynamic VHD,
    which starts with its footer, is found by its first bytes)."""
    if any(head.startswith(magic) for magic, _ in _MAGIC):
        return False
    size = f.seek(0, os.SEEK_END)
    if size < 1024 or size % 512:
        return False
    f.seek(size - 512)
    return f.read(len(_VHD_FOOTER)) == _VHD_FOOTER


def compression_of(head: bytes, name: str, shown: str | None = None) -> Compression:
    """The compression an image's first bytes (at least 512 when the file has them) show,
    cross-checked with what its file name claims. Messages name the image `shown` (default:
    `name`), e.g. "disk.img.xz in disk.zip" for a zip's member."""
    shown = shown or name
    if not head:
        raise ImageError(f"image {shown} is empty (0 bytes); re-copy it")
    for offset, magic, what, fix in _UNSUPPORTED:
        if head[offset : offset + len(magic)] == magic:
            raise ImageError(f"image {shown} is {what}, not a disk image; {fix}")
    found = Compression.RAW
    for magic, compression in _MAGIC:
        if head.startswith(magic):
            found = compression
    for offset, magic, compression in _MAGIC_AT:
        if head[offset : offset + len(magic)] == magic:
            found = compression
    if len(head) >= 4 and int.from_bytes(head[:4], "little") in _ZSTD_SKIPPABLE:
        found = Compression.ZSTD
    claimed = claimed_compression(Path(name))
    if claimed not in (None, Compression.RAW) and found != claimed:
        raise ImageError(
            f"image {shown} is named like {claimed} but does not start like one "
            f"(first bytes {head[:6].hex()}); it is damaged or misnamed: re-copy or rename it"
        )
    return found


def probe_decompressed_size(path: Path, compression: Compression) -> int | None:
    """The decompressed size when the file says it without being decompressed; else None."""
    if compression == Compression.RAW:
        return path.stat().st_size
    if compression == Compression.ZSTD:
        with open(path, "rb") as f:
            try:
                summary = zstd_frames.scan_content_size(f)
            except zstd_frames.FrameError:
                return None
        return summary.content_size if summary.complete else None
    if compression == Compression.XZ:
        try:
            out = run(["xz", "--robot", "--list", str(path)]).stdout
        except ToolError:
            return None
        for line in out.splitlines():
            fields = line.split("\t")
            if fields[0] == "totals" and len(fields) > 4:
                return int(fields[4])
        return None
    if compression == Compression.ZIP:
        try:
            return zip_image_size(path)
        except ImageError:
            return None
    if compression in VIRTUAL_DISKS:
        try:
            return inspect_virtual_disk(path, compression.value).virtual_size
        except ImageError:
            return None
    return None  # gzip keeps only the size modulo 4 GiB, per member; bzip2 and lz4 frames (mostly) none


@dataclass(frozen=True)
class ZippedImage:
    """A zip's one disk image and the format of its bytes (raw, or compressed inside the zip)."""

    member: ZipMember
    compression: Compression


def open_zipped_image(path: Path) -> ZippedImage:
    """The disk image inside the zip at `path`, one level deep: a zip in a zip is refused."""
    member = find_image_member(path)
    inner = compression_of(member.head, member.name, shown=f"{member.name} in {path.name}")
    if inner == Compression.ZIP:
        raise ImageError(f"image {path.name} holds another zip ({member.name}); unzip it and add the disk image "
                         "inside")
    return ZippedImage(member, inner)


def zip_image_size(path: Path) -> int | None:
    """The decompressed size of a zipped image from the zip's directory, when the member is raw
    (a compressed member's size is not the image's); raises ImageError for an unusable zip."""
    zipped = open_zipped_image(path)
    return zipped.member.file_size if zipped.compression == Compression.RAW else None


class _Stream(Protocol):
    def readinto(self, buffer: memoryview, /) -> int | None: ...

    def close(self) -> None: ...


class _CountingFile:
    """A raw file wrapper that counts the compressed bytes read and walks zstd frames."""

    def __init__(self, raw: RawStream, tracker: zstd_frames.FrameTracker | None,
                 observer: Callable[[bytes | memoryview], None] | None = None) -> None:
        self.raw = raw
        self.count = 0
        self.tracker = tracker
        self.observer = observer
        self._closed = False

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self._saw(data)
        return data

    def readinto(self, buffer: memoryview) -> int:
        n = self.raw.readinto(buffer) or 0
        if n:
            self._saw(buffer[:n])
        return n

    def _saw(self, data: bytes | memoryview) -> None:
        if not data:
            return
        self.count += len(data)
        if self.tracker is not None:
            self.tracker.feed(data)
        if self.observer is not None:
            self.observer(data)

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._closed = True
        self.raw.close()

    @property
    def closed(self) -> bool:
        return self._closed


class StreamDataError(ValueError):
    """A decompressor found bad data; raised in place of the library's own, too broad, type."""


class _DataErrors:
    """A decompressed stream whose bad-data exceptions become StreamDataError: bz2 raises a bare
    OSError ("Invalid data stream", no errno) and lz4 a RuntimeError, types that must not be
    caught around every stream (a failing disk raises OSError too, with an errno)."""

    def __init__(self, stream: _Stream, errors: tuple[type[Exception], ...]) -> None:
        self.stream = stream
        self.errors = errors

    def readinto(self, buffer: memoryview) -> int | None:
        try:
            return self.stream.readinto(buffer)
        except self.errors as exc:
            if isinstance(exc, OSError) and exc.errno is not None:
                raise
            raise StreamDataError(str(exc)) from exc

    def close(self) -> None:
        self.stream.close()


def _decompressing(compression: Compression, wrapped: _CountingFile, read_size: int) -> _Stream:
    """The decompressed stream of `wrapped`, a file holding `compression` (not zip)."""
    fileobj = cast(BinaryIO, wrapped)  # duck-typed: read, readinto, close
    if compression == Compression.ZSTD:
        decompressor = zstandard.ZstdDecompressor(max_window_size=1 << 31)
        return decompressor.stream_reader(fileobj, read_size=read_size, read_across_frames=True, closefd=False)
    if compression == Compression.XZ:
        return _XzDecoder(wrapped)
    if compression == Compression.GZIP:
        return gzip.GzipFile(fileobj=fileobj)
    if compression == Compression.BZIP2:
        return _DataErrors(bz2.BZ2File(fileobj), (OSError,))  # multi-stream (pbzip2, lbzip2) reads on
    if compression == Compression.LZ4:
        return _DataErrors(lz4.frame.LZ4FrameFile(fileobj), (RuntimeError,))  # concatenated frames read on
    return wrapped


class _XzDecoder:
    """An xz stream decoded by `xz -dc -T0`, fed the file's bytes through a pipe.

    xz (5.4 on) decodes the blocks of a multi-block file, what `xz -T0` writes, on every core;
    Python's lzma decodes on one. Measured on 2 cores, a 1 GiB image `xz -T0` made in 86 blocks
    decodes in 4.1 s, against 8.4 s with lzma. xz's complaints come back as ImageReader expects
    them: EOFError when the input ended early, StreamDataError for bad data."""

    #: what xz says when its input ends before the stream does
    TRUNCATED = "Unexpected end of input"

    def __init__(self, wrapped: _CountingFile) -> None:
        self._tool = ToolStream(["xz", "--decompress", "--stdout", "--threads=0"], feed=wrapped)

    def readinto(self, buffer: memoryview) -> int:
        n = self._tool.readinto(buffer)
        if n == 0:
            try:
                self._tool.finish()
            except ToolError as exc:
                words = self._tool.failure()
                if self.TRUNCATED in words:
                    raise EOFError(words) from exc
                raise StreamDataError(words.removeprefix("xz: (stdin): ")) from exc
        return n

    def close(self) -> None:
        self._tool.close()


class _OpenedOnFirstRead:
    """A source's stream, opened on the first read: an ImageReader whose bytes another stage
    reads itself (the parallel frames of a packed image over HTTP) starts no download it would
    drop (the server would have sent megabytes by then)."""

    def __init__(self, source: ByteSource) -> None:
        self._source = source
        self._stream: RawStream | None = None

    def _opened(self) -> RawStream:
        if self._stream is None:
            self._stream = self._source.open()
        return self._stream

    def read(self, size: int = -1, /) -> bytes:
        return self._opened().read(size)

    def readinto(self, buffer: memoryview, /) -> int | None:
        return self._opened().readinto(buffer)

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()


class ImageReader:
    """The decompressed byte stream of an image file, read into buffers the caller owns.

    `readinto(view)` fills the whole view unless the stream ends; at the end it checks the
    stream was complete (zstd: ended on a frame boundary; xz/gzip/bzip2/lz4: their own end
    markers; zip: the member's declared size and CRC-32) and raises SourceCorruptError otherwise.
    `bytes_in` counts compressed bytes consumed (for a zip: of the whole archive).
    """

    READ_SIZE = 4 << 20

    def __init__(self, source: ByteSource | Path, compression: Compression | None = None,
                 expected_size: int | None = None,
                 observer: Callable[[bytes | memoryview], None] | None = None) -> None:
        """`source` is a ByteSource or a file path; `observer` sees every byte of the file as
        read (e.g. to hash the file as shipped)."""
        if isinstance(source, Path):
            source = FileSource(source)
        self.source = source
        self.name = source.name
        self.compression = compression or (detect_compression(source.path) if source.path else None)
        if self.compression is None:
            raise ValueError("the compression of a streamed image must be given")
        zipped = self._zipped_image(source)
        self.expected_size = expected_size
        self.file_size = source.size
        self.position = 0  # decompressed bytes returned so far
        self._tool: ToolStream | None = None
        raw: RawStream
        if self.compression in VIRTUAL_DISKS:
            if source.path is None:
                raise ImageError(f"image {self.name} is a {self.compression} virtual disk, which bty reads from a "
                                 "local file only; download it first, or serve a raw or compressed image")
            disk = inspect_virtual_disk(source.path, self.compression.value)
            self.expected_size = expected_size or disk.virtual_size
            raw = self._tool = open_virtual_disk(disk)
        elif source.path is None:  # a download starts with the first read, not before
            raw = _OpenedOnFirstRead(source)
        else:
            raw = source.open()
        inner = zipped.compression if zipped else self.compression
        self._tracker = zstd_frames.FrameTracker() if inner == Compression.ZSTD else None
        # a virtual disk's stream is not the file's bytes: the observer would see the wrong ones
        self._source = _CountingFile(raw, None if zipped else self._tracker, None if self._tool else observer)
        wrapped = self._source
        if zipped is not None:  # the member's bytes, as if they were the file
            wrapped = _CountingFile(ZipMemberStream(self._source, zipped.member), self._tracker)
        self._stream = _decompressing(inner, wrapped, self.READ_SIZE)

    def _zipped_image(self, source: ByteSource) -> ZippedImage | None:
        if self.compression != Compression.ZIP:
            return None
        if source.path is None:
            raise ImageError(f"image {self.name} is a zip archive, which bty reads from a local file only (its "
                             "directory is at its end); download it first, or serve the disk image unzipped")
        return open_zipped_image(source.path)

    @property
    def bytes_in(self) -> int:
        return self._source.count

    def drain(self) -> int:
        """Read what is left of the file after the image's end (bytes a decompressor did not
        need), so the observer has seen the whole file; the count of those bytes."""
        if self._tool is not None:
            return 0
        buffer = memoryview(bytearray(1 << 20))
        drained = 0
        while n := self._source.readinto(buffer):
            drained += n
        return drained

    def readinto(self, view: memoryview) -> int:
        """Fill `view`; return the byte count, short only at the end of the image."""
        filled = 0
        total = len(view)
        while filled < total:
            try:
                n = self._stream.readinto(view[filled:])
            except (zstandard.ZstdError, zlib.error, gzip.BadGzipFile, zstd_frames.FrameError,
                    StreamDataError, ZipDataError) as exc:
                raise self._corrupt(str(exc)) from exc
            except EOFError as exc:
                raise self._truncated() from exc
            if not n:
                self._check_complete()
                break
            filled += n
            self.position += n
        return filled

    def _check_complete(self) -> None:
        if self._tracker is not None and not self._tracker.summary().complete:
            raise self._truncated()
        if self._tool is not None:
            try:
                self._tool.finish()
            except ToolError as exc:
                raise self._corrupt(f"QEMU: {self._tool.failure()}") from exc
            if self.expected_size is not None and self.position != self.expected_size:
                raise self._truncated()

    def _where(self) -> str:
        if self.expected_size:
            return f"at {format_size(self.position)} of {format_size(self.expected_size)}"
        return f"after {format_size(self.position)} ({format_size(self.bytes_in)} of the file read)"

    def _truncated(self) -> SourceCorruptError:
        return SourceCorruptError(
            f"image {self.name} is truncated: its {self.compression} stream ends {self._where()}; "
            "re-copy it"
        )

    def _corrupt(self, detail: str) -> SourceCorruptError:
        return SourceCorruptError(
            f"image {self.name} is corrupt {self._where()} ({self.compression}: {detail}); re-copy it"
        )

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            self._source.close()

    def __enter__(self) -> ImageReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
