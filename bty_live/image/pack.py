"""`bty images pack`: recompress an image as independent zstd frames for parallel flashing.

A plain `zstd` file is one frame: it can only be decompressed on one core, and decompression is
what limits a flash. `pack` cuts the decompressed image into FRAME_SIZE pieces and compresses
each as its own frame that declares its size and carries a checksum. Any zstd tool still reads
the result (`zstd -dc` concatenates the frames); bty decompresses the frames on all cores.
The cost is a slightly larger file (each frame starts without history).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import blake3
import zstandard

from bty_live.image.formats import ImageReader
from bty_live.image.zstd_frames import PACKED_FRAME_SIZE

FRAME_SIZE = PACKED_FRAME_SIZE
DEFAULT_LEVEL = 3


@dataclass(frozen=True)
class PackResult:
    path: Path
    size: int  # decompressed bytes
    compressed_size: int
    frames: int
    blake3: str  # of the decompressed image
    sha256: str  # of the packed file


def pack_image(
    source: Path,
    output: Path,
    *,
    level: int = DEFAULT_LEVEL,
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> PackResult:
    """Write `output` (atomically) as multi-frame zstd holding the decompressed `source`.

    `progress(bytes_in, bytes_out)` is called after each frame is written.
    """
    workers = threads or max(1, os.cpu_count() or 1)
    tmp = output.with_name(f".{output.name}.partial")
    digest = blake3.blake3()
    file_digest = hashlib.sha256()
    size = written = frames = 0
    local = threading.local()

    def compress(chunk: bytes) -> bytes:
        if not hasattr(local, "cctx"):
            local.cctx = zstandard.ZstdCompressor(level=level, write_content_size=True, write_checksum=True)
        compressed: bytes = local.cctx.compress(chunk)
        return compressed

    try:
        with ImageReader(source) as reader, open(tmp, "wb") as out, ThreadPoolExecutor(workers) as pool:
            pending: list[Future[bytes]] = []

            def drain(limit: int) -> None:
                nonlocal written, frames
                while len(pending) > limit:
                    frame = pending.pop(0).result()
                    out.write(frame)
                    file_digest.update(frame)
                    written += len(frame)
                    frames += 1
                    if progress:
                        progress(reader.bytes_in, size)

            while True:
                chunk = bytearray(FRAME_SIZE)
                n = reader.readinto(memoryview(chunk))
                if n == 0:
                    break
                data = bytes(chunk[:n])
                digest.update(data)
                size += n
                pending.append(pool.submit(compress, data))
                drain(workers * 2)
                if n < FRAME_SIZE:
                    break
            drain(0)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    return PackResult(output, size, written, frames, digest.hexdigest(), file_digest.hexdigest())
