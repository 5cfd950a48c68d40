"""Shared fixtures: real loop devices as target disks.

Tests that need loop devices, mounts or raw block I/O need root; CI runs as root.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class LoopDevice:
    path: str  # /dev/loopN
    backing_file: Path

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    def read(self, offset: int, length: int) -> bytes:
        """Read straight from the device node (bypassing nothing; call drop_caches() first if needed)."""
        with open(self.path, "rb", buffering=0) as dev:
            dev.seek(offset)
            return dev.read(length)


def _losetup(*args: str) -> str:
    return subprocess.run(["losetup", *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(autouse=True)
def isolated_state(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test writes receipts, ledgers or reports into the checkout's images/ or the home dir:
    the default images directory and receipts directory point into a temporary directory."""
    base = tmp_path_factory.mktemp("state")
    monkeypatch.setenv("BTY_IMAGES", str(base / "images"))
    monkeypatch.setenv("BTY_RECEIPTS", str(base / "receipts"))


requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for loop devices")


@pytest.fixture
def make_loop(tmp_path: Path) -> Iterator[Callable[..., LoopDevice]]:
    """Factory: make_loop(size, *, read_only=False, sector_size=512, backing_dir=None, fill=None,
    direct_io=False).

    Creates a sparse backing file (or one filled with `fill` bytes repeated) and attaches it.
    Every device is detached at the end of the test, by path: a test must not detach a
    `make_loop` device itself (another process may get that number in between).
    """
    created: list[LoopDevice] = []

    def factory(
        size: int,
        *,
        read_only: bool = False,
        sector_size: int = 512,
        backing_dir: Path | None = None,
        fill: bytes | None = None,
        name: str | None = None,
        direct_io: bool = False,
    ) -> LoopDevice:
        directory = backing_dir or tmp_path
        backing = directory / (name or f"disk{len(created)}.img")
        with open(backing, "wb") as f:
            if fill:
                chunk = (fill * (1 << 20 // len(fill) + 1))[: 1 << 20]
                for _ in range(size // len(chunk)):
                    f.write(chunk)
                f.write(chunk[: size % len(chunk)])
            else:
                f.truncate(size)
        args = ["-f", "--show", "--sector-size", str(sector_size)]
        if read_only:
            args.append("--read-only")
        if direct_io:  # the loop reads and writes its file with O_DIRECT, as a disk would: no page cache
            args.append("--direct-io=on")
        path = _losetup(*args, str(backing))
        loop = LoopDevice(path=path, backing_file=backing)
        created.append(loop)
        return loop

    if os.geteuid() != 0:
        pytest.skip("needs root for loop devices")
    yield factory
    for loop in created:
        subprocess.run(["umount", "-q", "-A", loop.path], check=False, capture_output=True)
        for part in Path("/dev").glob(f"{loop.name}p*"):
            subprocess.run(["umount", "-q", str(part)], check=False, capture_output=True)
        # partitions added by partx/BLKRRPART outlive the detach on loops without partscan
        subprocess.run(["partx", "-d", loop.path], check=False, capture_output=True)
        subprocess.run(["losetup", "-d", loop.path], check=False, capture_output=True)


def drop_caches() -> None:
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


@pytest.fixture
def file_targets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Regular files are accepted as target disks (bty_live.disk.file_target's test-only switch):
    round trips through the whole engine without loop devices or root."""
    monkeypatch.setenv("BTY_TEST_FILE_TARGETS", "1")
