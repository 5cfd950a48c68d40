"""A zip archive that holds one disk image: find the member, then stream it front to back.

The member is chosen from the central directory (read with stdlib `zipfile`, which handles
zip64): directory entries and the junk archivers add (`__MACOSX/`, `.DS_Store`, `._*`,
`Thumbs.db`, `desktop.ini`) are ignored, and exactly one file must remain. Encrypted members
and compression methods other than stored, deflate and bzip2 are refused.

The member's bytes are then read with a sequential stream (`ZipMemberStream`), not with
`ZipFile.open`: the archive is read once from its first byte to its last through the caller's
stream, so the file as shipped is hashed and counted like any other format, and the stream
can refuse a member that yields more than it declares (`ZipFile.open` cuts it off silently).

Zip bomb rule. The size the central directory declares (`file_size`) is the image size: the
plan checks it against the manifest and the disk before anything is written, so the
decompressed stream must be held to it:

* while streaming, the member may never yield more bytes than `file_size` (refused as corrupt,
  before the excess reaches the disk), nor end short of it, and its CRC-32 must match;
* before streaming, a declared size no valid stream can reach is refused: a stored member
  yields exactly its compressed size, deflate at most 1032 bytes per compressed byte (a
  length/distance pair yields at most 258 bytes for at least 2 bits). A disk image full of
  zeros really does deflate about 1000:1, so this bound only catches impossible declarations.
  bzip2 has no useful ceiling (a few dozen bytes can hold a 900 KiB block of zeros' runs), so
  for it the streaming bound alone holds.
"""

from __future__ import annotations

import bz2
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol

from bty_live.errors import ImageError, SourceCorruptError
from bty_live.image.sources import RawStream
from bty_live.units import format_size

#: deflate's largest possible ratio (zlib technical details: 258 bytes out per 2 bits in)
DEFLATE_MAX_RATIO = 1032
HEAD_BYTES = 512
_CHUNK = 1 << 20
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature ... file name length, extra field length
_LOCAL_MAGIC = b"PK\x03\x04"
_JUNK_NAMES = {".ds_store", "thumbs.db", "desktop.ini"}
_READABLE = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate", zipfile.ZIP_BZIP2: "bzip2"}
_OTHER_METHODS = {9: "deflate64", zipfile.ZIP_LZMA: "lzma", 93: "zstd", 95: "xz", 98: "ppmd", 99: "AES encryption"}
_ENCRYPTED = 0x1
_SHOWN_NAMES = 5


class ZipDataError(ValueError):
    """The member's data does not match what the central directory says about it."""


@dataclass(frozen=True)
class ZipMember:
    """The one disk image in a zip archive, as its central directory describes it."""

    archive: str  # the zip's file name, for messages
    name: str
    header_offset: int  # of its local header in the archive
    method: int
    compress_size: int
    file_size: int
    crc: int
    #: its first HEAD_BYTES decompressed bytes (fewer if it is smaller): what the member is
    head: bytes


def is_junk(name: str) -> bool:
    """Files archivers add beside the content: macOS resource forks and Finder/Explorer state."""
    path = PurePosixPath(name)
    return (path.parts[:1] == ("__MACOSX",) or path.name.lower() in _JUNK_NAMES
            or path.name.startswith("._"))


def find_image_member(path: Path) -> ZipMember:
    """The one disk image in the zip at `path`; ImageError when there is not exactly one usable
    member, SourceCorruptError when the archive is truncated or its directory is damaged."""
    archive = path.name
    try:
        with zipfile.ZipFile(path) as zf:
            info = _the_one_member(archive, zf.infolist())
            _check_member(archive, info)
            with zf.open(info) as f:
                head = f.read(HEAD_BYTES)
    except zipfile.BadZipFile as exc:
        if str(exc) == "File is not a zip file":  # no end-of-central-directory record at its end
            raise SourceCorruptError(f"image {archive} is truncated: the zip directory at its end is missing; "
                                     "re-copy it") from exc
        raise SourceCorruptError(f"image {archive} is corrupt (zip: {exc}); re-copy it") from exc
    except (zlib.error, OSError, EOFError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise ImageError(f"image {archive} cannot be read: {exc.strerror}") from exc
        raise SourceCorruptError(f"image {archive} is corrupt (zip: {exc or 'its data ends early'}); "
                                 "re-copy it") from exc
    return ZipMember(archive=archive, name=info.filename, header_offset=info.header_offset,
                     method=info.compress_type, compress_size=info.compress_size, file_size=info.file_size,
                     crc=info.CRC, head=head)


def _the_one_member(archive: str, infos: list[zipfile.ZipInfo]) -> zipfile.ZipInfo:
    files = [i for i in infos if not i.is_dir() and not is_junk(i.filename)]
    if len(files) == 1:
        return files[0]
    if not files:
        raise ImageError(f"image {archive} is a zip that holds no disk image (no files besides folders and "
                         "archiver junk); re-copy it or give the disk image itself")
    names = ", ".join(i.filename for i in files[:_SHOWN_NAMES]) + (", ..." if len(files) > _SHOWN_NAMES else "")
    raise ImageError(f"image {archive} holds {len(files)} files ({names}); a zip must hold exactly one disk "
                     "image: extract the one you want")


def _check_member(archive: str, info: zipfile.ZipInfo) -> None:
    """Refuse what cannot be streamed (encryption, methods stdlib does not decompress) and sizes
    no valid stream can have (see the module docstring)."""
    where = f"image {archive}: its member {info.filename}"
    if info.flag_bits & _ENCRYPTED:
        raise ImageError(f"{where} is encrypted; unzip it with its password and add the disk image inside")
    if info.compress_type not in _READABLE:
        method = _OTHER_METHODS.get(info.compress_type, "an unknown method")
        raise ImageError(f"{where} is compressed with {method} (zip method {info.compress_type}), which bty does "
                         "not read; unzip it and add the disk image inside, or re-zip it with `zip`")
    declared, compressed = info.file_size, info.compress_size
    impossible = ((info.compress_type == zipfile.ZIP_STORED and declared != compressed)
                  or (info.compress_type == zipfile.ZIP_DEFLATED and declared > DEFLATE_MAX_RATIO * max(compressed, 1)))
    if impossible:
        raise SourceCorruptError(
            f"image {archive} is corrupt: its member {info.filename} declares {format_size(declared)} from "
            f"{format_size(compressed)} of {_READABLE[info.compress_type]} data, more than that can hold; "
            "re-copy it"
        )


class _Decoder(Protocol):
    @property
    def eof(self) -> bool: ...

    @property
    def needs_input(self) -> bool: ...

    def decode(self, data: bytes, limit: int) -> bytes: ...


class _Stored:
    """A stored member: its bytes as they are, handed out at most `limit` at a time."""

    def __init__(self, size: int) -> None:
        self._left = size
        self._buffer = b""
        self._pos = 0

    @property
    def eof(self) -> bool:
        return self._left == 0 and self._pos == len(self._buffer)

    @property
    def needs_input(self) -> bool:
        return self._pos == len(self._buffer)

    def decode(self, data: bytes, limit: int) -> bytes:
        if data:
            self._buffer, self._pos = data, 0
            self._left -= len(data)
        out = self._buffer[self._pos : self._pos + limit]
        self._pos += len(out)
        return out


class _Inflate:
    def __init__(self) -> None:
        self._d = zlib.decompressobj(-zlib.MAX_WBITS)  # raw deflate, as zip stores it

    @property
    def eof(self) -> bool:
        return self._d.eof

    @property
    def needs_input(self) -> bool:
        return not self._d.unconsumed_tail

    def decode(self, data: bytes, limit: int) -> bytes:
        return self._d.decompress(data or self._d.unconsumed_tail, limit)


class _Bunzip:
    def __init__(self) -> None:
        self._d = bz2.BZ2Decompressor()

    @property
    def eof(self) -> bool:
        return self._d.eof

    @property
    def needs_input(self) -> bool:
        return self._d.needs_input

    def decode(self, data: bytes, limit: int) -> bytes:
        try:
            return self._d.decompress(data, limit)
        except OSError as exc:  # bz2's "Invalid data stream"
            raise ZipDataError(f"member data: {exc}") from exc


def _decoder(member: ZipMember) -> _Decoder:
    if member.method == zipfile.ZIP_DEFLATED:
        return _Inflate()
    if member.method == zipfile.ZIP_BZIP2:
        return _Bunzip()
    return _Stored(member.compress_size)


class ZipMemberStream:
    """The member's decompressed bytes, read from the archive's stream without seeking.

    The bytes before the member (its local header, other members) and after it (the central
    directory) are read and dropped, so the whole archive passes through `raw`. Raises
    ZipDataError when the member yields more or fewer bytes than declared, or its CRC-32
    differs, and EOFError when the archive ends inside the member.
    """

    def __init__(self, raw: RawStream, member: ZipMember) -> None:
        self.raw = raw
        self.member = member
        self._decoder = _decoder(member)
        self._compressed_left = member.compress_size
        self._produced = 0
        self._crc = 0
        self._started = False
        self._done = False

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            parts = []
            while part := self.read(_CHUNK):
                parts.append(part)
            return b"".join(parts)
        if not self._started:
            self._start()
        while not self._done and size:
            out = self._next(size)
            if out:
                return out
        return b""

    def readinto(self, buffer: memoryview) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self.raw.close()

    def _start(self) -> None:
        self._skip(self.member.header_offset)
        signature, name_length, extra_length = _LOCAL_HEADER.unpack(self._read_exact(_LOCAL_HEADER.size))
        if signature != _LOCAL_MAGIC:
            raise ZipDataError(f"no local header for member {self.member.name} where the zip directory puts it")
        self._skip(name_length + extra_length)
        self._started = True

    def _next(self, size: int) -> bytes:
        """Some decompressed bytes (at most `size`); b"" when the member just ended (checked)."""
        if self._decoder.eof:
            self._finish()
            return b""
        data = b""
        starved = self._decoder.needs_input and self._compressed_left == 0
        if self._decoder.needs_input and not starved:
            data = self._read_some(min(_CHUNK, self._compressed_left))
        remaining = self.member.file_size - self._produced
        # up to the declared end; past it, one byte more shows whether the stream really ends
        out = self._decoder.decode(data, min(size, remaining) or 1)
        if starved and not out and not self._decoder.eof:  # inflate may still hold output without input
            raise ZipDataError(f"member {self.member.name}'s data ends before its end marker")
        if len(out) > remaining:
            raise ZipDataError(
                f"member {self.member.name} yields more than the {format_size(self.member.file_size)} its zip "
                "directory declares (a damaged or forged archive)"
            )
        self._produced += len(out)
        self._crc = zlib.crc32(out, self._crc)
        return out

    def _finish(self) -> None:
        member = self.member
        if self._produced != member.file_size:
            raise ZipDataError(f"member {member.name} yields {format_size(self._produced)}, not the "
                               f"{format_size(member.file_size)} its zip directory declares")
        if self._crc != member.crc:
            raise ZipDataError(f"member {member.name} fails its CRC-32 check ({self._crc:08x} != {member.crc:08x})")
        while self.raw.read(_CHUNK):  # the central directory: read, so the whole file is hashed
            pass
        self._done = True

    def _read_some(self, n: int) -> bytes:
        data = self.raw.read(n)
        if not data:
            raise EOFError("the archive ends inside the member")
        self._compressed_left -= len(data)
        return data

    def _read_exact(self, n: int) -> bytes:
        parts = []
        while n:
            data = self.raw.read(n)
            if not data:
                raise EOFError("the archive ends inside the member")
            parts.append(data)
            n -= len(data)
        return b"".join(parts)

    def _skip(self, n: int) -> None:
        while n:
            n -= len(self._read_exact(min(n, _CHUNK)))
