"""The read-back pass: a reader fills chunks with O_DIRECT while a hasher digests them in order.
Whatever the size (less than a chunk, an odd or even count of chunks, a tail that is not a whole
sector), the digest is blake3 of exactly the first `size` bytes of the device."""

from __future__ import annotations

import os
from collections.abc import Callable

import blake3
import pytest

from bty_live.errors import TargetIOError
from bty_live.flash import readback
from tests.conftest import LoopDevice

pytestmark = pytest.mark.root

DEVICE = 5 * readback.CHUNK + (1 << 20)


@pytest.fixture
def patterned(make_loop: Callable[..., LoopDevice]) -> LoopDevice:
    """A loop device whose every MiB differs (random bytes), so chunks out of order would show."""
    loop = make_loop(DEVICE)
    with open(loop.backing_file, "r+b") as f:
        for _ in range(DEVICE >> 20):
            f.write(os.urandom(1 << 20))
    return loop


@pytest.mark.parametrize("size", [
    512,                                   # a single sector
    readback.CHUNK - 512,                  # less than one chunk
    2 * readback.CHUNK,                    # whole chunks
    3 * readback.CHUNK + 1536,             # an odd count, and a tail of three sectors
    5 * readback.CHUNK + (1 << 20),        # the whole device
])
def test_the_digest_is_blake3_of_exactly_the_first_size_bytes_read_in_order(patterned: LoopDevice,
                                                                            size: int) -> None:
    with open(patterned.backing_file, "rb") as f:
        expected = blake3.blake3(f.read(size)).hexdigest()
    seen: list[int] = []
    result = readback.readback_digest(patterned.path, size, tick=lambda c: seen.append(c.bytes_hashed))
    assert result.digest == expected
    assert result.size == size
    assert seen == sorted(seen) and (not seen or seen[-1] <= size)


def test_a_changed_byte_in_the_last_chunk_changes_the_digest(patterned: LoopDevice) -> None:
    size = 4 * readback.CHUNK
    before = readback.readback_digest(patterned.path, size).digest
    with open(patterned.path, "r+b", buffering=0) as dev:
        dev.seek(size - 1)
        old = dev.read(1)
        dev.seek(size - 1)
        dev.write(bytes([old[0] ^ 0xFF]))
        os.fsync(dev.fileno())
    assert readback.readback_digest(patterned.path, size).digest != before


def test_reading_past_the_end_of_the_disk_fails_naming_where_it_stopped(patterned: LoopDevice) -> None:
    with pytest.raises(TargetIOError, match=r"stopped at .* the disk is smaller than it said or was removed"):
        readback.readback_digest(patterned.path, DEVICE + readback.CHUNK)
