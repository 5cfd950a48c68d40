"""Where an image's bytes come from: a file, or (for the PXE agent) an HTTP stream.

The engine reads every source front to back exactly once, so a source only has to hand out a
sequential stream. Streams from the network resume after a dropped connection themselves, so
nothing above this layer has to know about networks.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from bty_live.image.http_source import HttpSource


class RawStream(Protocol):
    """A sequential byte stream, as the decompressors read it."""

    def read(self, size: int = -1, /) -> bytes: ...

    def readinto(self, buffer: memoryview, /) -> int | None: ...

    def close(self) -> None: ...


class ByteSource(Protocol):
    #: the image's file name, for messages ("image demo.img.zst is truncated ...")
    name: str
    #: bytes of the file as shipped (compressed), when known
    size: int | None
    #: a local file, when there is one (its disk is then protected from being written)
    path: Path | None

    def open(self) -> RawStream:
        """A new stream from the first byte."""
        ...


class FileSource:
    def __init__(self, path: Path) -> None:
        self.path: Path | None = path
        self.name = path.name
        self.size: int | None = path.stat().st_size

    def open(self) -> RawStream:
        assert self.path is not None
        return open(self.path, "rb", buffering=0)  # noqa: SIM115 - the caller closes it

    def __repr__(self) -> str:
        return f"FileSource({self.path})"


def as_http_source(source: ByteSource) -> HttpSource | None:
    """`source` when it is an HttpSource, else None, without importing the HTTP stack (~30 ms)
    for a local file: while bty_live.image.http_source is not imported, nothing is one."""
    module = sys.modules.get("bty_live.image.http_source")
    return source if module is not None and isinstance(source, module.HttpSource) else None
