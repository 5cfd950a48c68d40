"""The stages bty is made of, each alone: run as a script by the bench, one stage per process.

    python tools/benchkit/stages.py decompress {zst,zst-frames,xz,gz} FILE EXPECTED_SIZE
    python tools/benchkit/stages.py hash IMAGE
    python tools/benchkit/stages.py write-data IMAGE DEVICE
    python tools/benchkit/stages.py zeroout IMAGE DEVICE

Each stage times only its own section (after imports, and after any untimed preparation such as
the zero scan) and prints `seconds=X` as the last line of its stdout; the bench takes that
number as the run's time instead of the process's wall time (interpreter start-up and imports
are not part of the stage). The stages do what bty does, the way it does it:

* decompress: the in-process decompressor bty uses, into 8 MiB buffers, output dropped: zstd
  through `zstandard` (one stream reader across frames), `zst-frames` the frames of a packed
  file decompressed in parallel (one decompressor per core, at most bty's MAX_WORKERS), gzip
  through `gzip.GzipFile` (one thread, as in bty). bty decodes xz with `xz -dc -T0`, whose stage
  is the bench's `xz -dc -T0 >/dev/null` row.
* hash: one blake3 hasher in one thread (`blake3.blake3()`), updated with 8 MiB chunks of the
  raw image (the bench warms the page cache first).
* write-data: untimed, find the ZERO_GRANULE (1 MiB) granules of the raw image that are not all
  zero; timed, O_DIRECT pwrite them from page-aligned (mmap) buffers onto DEVICE, in writes of
  up to 8 MiB that, like bty's buffers, never cross an 8 MiB boundary of the image; then fsync.
  Reading the data into the buffer (page cache) is outside the timed section.
* zeroout: untimed, the same scan; timed, BLKZEROOUT over the merged zero runs (in pieces of
  bty's ZEROOUT_PIECE), then fsync.
"""

from __future__ import annotations

import fcntl
import gzip
import mmap
import os
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import blake3
import zstandard

from bty_live.flash.copy import CHUNK, MAX_WORKERS, ZERO_GRANULE  # the bty being measured: its own sizes
from bty_live.flash.target import BLKZEROOUT, ZEROOUT_PIECE

Runs = list[tuple[int, int]]  # (offset, length)


def report(seconds: float) -> None:
    print(f"seconds={seconds:.6f}", flush=True)


def drain(read_into: Callable[[memoryview], int | None]) -> int:
    buf = memoryview(bytearray(CHUNK))
    total = 0
    while n := read_into(buf):
        total += n
    return total


def decompress(kind: str, path: str, expected: int) -> float:
    started = time.perf_counter()
    if kind == "zst-frames":
        total = decompress_frames(path)
    else:
        with open(path, "rb", buffering=0) as raw:
            if kind == "zst":
                reader = zstandard.ZstdDecompressor(max_window_size=1 << 31).stream_reader(
                    raw, read_size=CHUNK, read_across_frames=True)
                total = drain(reader.readinto)
            elif kind == "gz":
                with gzip.GzipFile(fileobj=raw) as gz:
                    total = drain(gz.readinto)
            else:
                raise SystemExit(f"unknown format {kind}")
    seconds = time.perf_counter() - started
    if total != expected:
        raise SystemExit(f"decompressed {total} bytes, expected {expected}")
    return seconds


def decompress_frames(path: str) -> int:
    """A packed file's frames, decompressed in parallel as bty does (the frame walk is part of
    bty's plan, not of its write pass, but it takes milliseconds and is timed here too)."""
    from bty_live.image.zstd_frames import scan_content_size

    workers = max(1, min(MAX_WORKERS, os.cpu_count() or 1))
    with open(path, "rb", buffering=0) as f:
        frames = scan_content_size(f, record=True).index or []
        fd = f.fileno()
        local: dict[int, tuple[zstandard.ZstdDecompressor, memoryview]] = {}  # per thread

        def one(offset: int, length: int, size: int) -> int:
            ident = threading.get_ident()
            if ident not in local:
                local[ident] = (zstandard.ZstdDecompressor(max_window_size=1 << 31), memoryview(bytearray(CHUNK)))
            dctx, view = local[ident]
            data = os.pread(fd, length, offset)
            reader = dctx.stream_reader(data)
            filled = 0
            while filled < size and (n := reader.readinto(view[filled:size])):
                filled += n
            return filled

        total = 0
        with ThreadPoolExecutor(workers) as pool:
            window = workers * 2  # bounded, like bty's job queue
            for start in range(0, len(frames), window):
                batch = frames[start:start + window]
                total += sum(pool.map(lambda fr: one(fr.offset, fr.length, fr.content_size or 0), batch))
    return total


def hash_image(image: str) -> float:
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    hasher = blake3.blake3()
    started = time.perf_counter()
    with open(image, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            hasher.update(view[:n])
    seconds = time.perf_counter() - started
    print(f"blake3={hasher.hexdigest()}")
    return seconds


def scan(image: str) -> tuple[int, Runs, Runs]:
    """The image's size, its data runs and its zero runs, at ZERO_GRANULE granularity (merged)."""
    zeros = bytes(ZERO_GRANULE)
    data: Runs = []
    zero: Runs = []
    size = 0
    with open(image, "rb", buffering=0) as f:
        buf = bytearray(CHUNK)
        offset = 0
        while n := f.readinto(buf):
            for pos in range(0, n, ZERO_GRANULE):
                piece = memoryview(buf)[pos:min(n, pos + ZERO_GRANULE)]
                is_zero = piece == (zeros if len(piece) == ZERO_GRANULE else bytes(len(piece)))
                runs = zero if is_zero else data
                start = offset + pos
                if runs and runs[-1][0] + runs[-1][1] == start:
                    runs[-1] = (runs[-1][0], runs[-1][1] + len(piece))
                else:
                    runs.append((start, len(piece)))
            offset += n
        size = offset
    return size, data, zero


def pieces(runs: Runs, limit: int, boundary: int | None = None) -> Iterator[tuple[int, int]]:
    """The runs cut into pieces of at most `limit` bytes that do not cross a `boundary` multiple."""
    for start, length in runs:
        end = start + length
        while start < end:
            stop = min(end, start + limit)
            if boundary:
                stop = min(stop, (start // boundary + 1) * boundary)
            yield start, stop - start
            start = stop


def write_data(image: str, device: str) -> float:
    _, data, _ = scan(image)
    buf = mmap.mmap(-1, CHUNK)  # page aligned, as O_DIRECT needs
    view = memoryview(buf)
    spent = 0.0
    src = os.open(image, os.O_RDONLY)
    dst = os.open(device, os.O_WRONLY | os.O_DIRECT | os.O_EXCL)
    written = 0
    try:
        for offset, length in pieces(data, CHUNK, CHUNK):
            padded = length + (-length) % 4096
            got = os.preadv(src, [view[:length]], offset)
            if got != length:
                raise SystemExit(f"short read of the image at {offset}")
            if padded != length:
                view[length:padded] = bytes(padded - length)
            started = time.perf_counter()
            done = 0
            while done < padded:
                done += os.pwrite(dst, view[done:padded], offset + done)
            spent += time.perf_counter() - started
            written += padded
        started = time.perf_counter()
        os.fsync(dst)
        spent += time.perf_counter() - started
    finally:
        os.close(dst)
        os.close(src)
        view.release()
        buf.close()
    print(f"written={written} runs={len(data)}")
    return spent


def zeroout(image: str, device: str) -> float:
    _, _, zero = scan(image)
    fd = os.open(device, os.O_WRONLY | os.O_EXCL)
    zeroed = 0
    try:
        started = time.perf_counter()
        for offset, length in pieces(zero, ZEROOUT_PIECE):
            fcntl.ioctl(fd, BLKZEROOUT, struct.pack("QQ", offset, length))
            zeroed += length
        os.fsync(fd)
        seconds = time.perf_counter() - started
    finally:
        os.close(fd)
    print(f"zeroed={zeroed} runs={len(zero)}")
    return seconds


def main(argv: Sequence[str]) -> int:
    if len(argv) >= 4 and argv[0] == "decompress":
        report(decompress(argv[1], argv[2], int(argv[3])))
    elif len(argv) == 2 and argv[0] == "hash":
        report(hash_image(argv[1]))
    elif len(argv) == 3 and argv[0] == "write-data":
        report(write_data(argv[1], argv[2]))
    elif len(argv) == 3 and argv[0] == "zeroout":
        report(zeroout(argv[1], argv[2]))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
