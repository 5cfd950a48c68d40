"""The disk being captured: opened read-only with O_EXCL and O_DIRECT, read in aligned pieces.

O_EXCL on a block device claims it whatever the access mode: while bty holds it the kernel
refuses to mount it or any of its partitions, and to let md/dm take it, so the disk cannot start
changing under the capture. O_DIRECT keeps gigabytes of disk out of the page cache; the buffers
come from mmap, page aligned, as O_DIRECT needs.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

from bty_live.errors import TargetIOError, TargetRefusedError, TargetVanishedError
from bty_live.flash.target import BlockTarget, TargetInfo, pread_exactly
from bty_live.system import sysfs
from bty_live.units import format_size


@dataclass
class DiskReader:
    path: str
    fd: int
    info: TargetInfo

    @classmethod
    def open(cls, path: str, *, exclusive: bool = True) -> DiskReader:
        """Open the whole disk at `path` for reading; `exclusive` claims it (O_EXCL)."""
        flags = os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC | (os.O_EXCL if exclusive else 0)
        try:
            fd = os.open(path, flags)
        except FileNotFoundError as exc:
            raise TargetVanishedError(f"disk {path} does not exist (any more); check `bty disks`") from exc
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                raise TargetRefusedError(
                    f"disk {path} is in use (mounted, or held by md/dm/LVM or another program's exclusive "
                    "open); unmount or release it first"
                ) from exc
            raise TargetIOError(f"disk {path} cannot be opened for reading: {exc.strerror}") from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISBLK(st.st_mode):
                raise TargetRefusedError(f"{path} is not a block device; name a disk such as /dev/sdb")
            info = BlockTarget.probe(fd, st.st_rdev)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, info)

    @property
    def size(self) -> int:
        return self.info.size

    @property
    def block(self) -> int:
        return self.info.logical_block_size

    def read_exactly(self, view: memoryview, offset: int, length: int) -> None:
        """Fill `view` (aligned, a whole number of blocks) from `offset`; at least `length`
        bytes must arrive, or the disk is smaller than it said or went away."""
        pread_exactly(self.fd, view, offset, length, self._io_error, lambda at: TargetIOError(
            f"disk {self.path} ended at {format_size(at)} while it said it holds {format_size(self.size)}; "
            "it was removed or resized: capture it again"))

    def _io_error(self, offset: int, exc: OSError) -> TargetIOError:
        gone = exc.errno in (errno.ENODEV, errno.ENXIO) or (
            exc.errno == errno.EIO and sysfs.size_bytes(sysfs.block_dir(sysfs.devnum_of(self.info.rdev))) == 0)
        if gone:
            return TargetVanishedError(f"disk {self.path} vanished while it was read at {format_size(offset)}; "
                                       "reconnect it and capture it again")
        return TargetIOError(
            f"I/O error reading disk {self.path} at {format_size(offset)} ({exc.strerror}); the disk may be "
            "failing: check `dmesg`, then try again (ddrescue can rescue what is readable)"
        )

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> DiskReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
