"""The image hashed alone, with nothing written: the second opinion of a failed read-back.

When the read-back is compared with the manifest's blake3 directly (the write pass did not
hash the stream: bty_live.flash.engine), a mismatch says that the disk does not hold the image
the manifest describes, not whose fault it is. Hashing the image once more tells a damaged
image or stale manifest (re-copy the image) from a disk that returned other bytes (try another
disk). It costs a decompression, and only when a flash has failed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import blake3

from bty_live.errors import Cancelled
from bty_live.image.formats import Compression, ImageReader
from bty_live.image.sources import ByteSource

CHUNK = 8 << 20


def image_blake3(source: ByteSource, compression: Compression, *, expected_size: int | None,
                 cancel: threading.Event, tick: Callable[[int, int], None] = lambda _in, _out: None) -> str:
    """blake3 of the decompressed image; `tick(file_bytes_read, image_bytes)` after every buffer."""
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)  # nothing else runs: every core may hash
    view = memoryview(bytearray(CHUNK))
    with ImageReader(source, compression, expected_size=expected_size) as reader:
        while n := reader.readinto(view):
            if cancel.is_set():
                raise Cancelled("cancelled by the user")
            hasher.update(view[:n])
            tick(reader.bytes_in, reader.position)
    return hasher.hexdigest()
