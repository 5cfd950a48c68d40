"""Effects on the target block device: open it exclusively, write, zero, flush, wipe, re-read.

Everything here is a thin wrapper over a syscall or an ioctl, so the copy loop and the engine
stay readable and the error mapping (errno -> which BtyError) lives in one place.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass

from bty_live.disk.file_target import FILE_SECTOR, file_targets_allowed
from bty_live.errors import TargetIOError, TargetRefusedError, TargetVanishedError, ToolError
from bty_live.system import sysfs
from bty_live.system.run import run
from bty_live.units import format_size

# <linux/fs.h>
BLKRRPART = 0x125F
BLKGETSIZE64 = 0x80081272
BLKSSZGET = 0x1268
BLKFLSBUF = 0x1261
BLKDISCARD = 0x1277
BLKZEROOUT = 0x127F

#: how much BLKZEROOUT is asked to zero at once, so a cancel is seen within a second even on
#: devices that zero slowly
ZEROOUT_PIECE = 128 << 20
#: size of the regions wiped at the start and end of a disk after a failure (covers MBR, GPT
#: headers and entry arrays, ISO 9660 volume descriptors, most filesystem superblocks)
WIPE_SPAN = 1 << 20


def aligned_buffer(size: int) -> mmap.mmap:
    """Anonymous memory is page aligned, which O_DIRECT needs. Free it with close_buffer."""
    return mmap.mmap(-1, size)


def pread_exactly(fd: int, view: memoryview, offset: int, length: int,
                  io_error: Callable[[int, OSError], Exception], ended: Callable[[int], Exception]) -> None:
    """preadv into `view` from `offset` until at least `length` bytes have arrived (a device may
    return fewer per call). The caller words the failures: `io_error(at, exc)` for a read that
    fails, `ended(at)` for a device that ends before `length`."""
    done = 0
    while done < length:
        try:
            n = os.preadv(fd, [view[done:]], offset + done)
        except OSError as exc:
            raise io_error(offset + done, exc) from exc
        if n <= 0:
            raise ended(offset + done)
        done += n


def close_buffer(buf: mmap.mmap) -> None:
    """Unmap an aligned buffer. A stop signal (raised in the main thread between any two
    bytecodes) can leave a view of it unreleased, e.g. between a slice's creation and its `with`;
    closing would then raise BufferError and turn the stop into an internal error (seen in the
    agent's SIGHUP test, in the differential look), so the mapping is left to the GC instead."""
    with contextlib.suppress(BufferError):
        buf.close()


@dataclass
class TargetInfo:
    size: int
    logical_block_size: int
    physical_block_size: int
    rdev: int
    #: True when the device zeroes ranges itself (WRITE ZEROES, UNMAP with guaranteed zeroes,
    #: a loop device's fallocate), so BLKZEROOUT beats writing zero buffers
    zeroout_offloaded: bool
    #: a regular file standing in for a disk (tests only: bty_live.disk.file_target)
    regular_file: bool = False
    #: a loop device over a file without direct I/O: what it holds lives in the file's page cache
    page_cached: bool = False


def zeroout_pays(info: TargetInfo, *, read_back: bool) -> bool:
    """Whether zero ranges should be zeroed by the device (BLKZEROOUT) rather than written.

    Yes when the device zeroes by itself, except on a loop device over a page-cached file when
    the disk is read back: there BLKZEROOUT punches holes in the file, and reading them back
    makes the kernel allocate and clear a page-cache page for every 4 KiB of them, after the
    write, where writing the zeroes costs the same allocation while the decompressor runs
    (measured on a 1 GiB image half zeroes: 2.7-2.9 s with BLKZEROOUT, 2.0-2.1 s without).
    """
    if not info.zeroout_offloaded:
        return False
    return not (info.page_cached and read_back)


class BlockTarget:
    """An open block device, held with O_EXCL for the whole run."""

    def __init__(self, path: str, fd: int, info: TargetInfo) -> None:
        self.path = path
        self.fd = fd
        self.info = info
        self.name = os.path.basename(path)
        #: set by the first write or zero-out: from then on a failure must wipe the disk
        self.touched = False

    @classmethod
    def open(cls, path: str, *, direct: bool = True) -> BlockTarget:
        """Open `path` for writing with O_EXCL: the kernel refuses if it is mounted or held."""
        flags = os.O_RDWR | os.O_EXCL | os.O_CLOEXEC
        if direct:
            flags |= os.O_DIRECT
        try:
            fd = os.open(path, flags)
        except FileNotFoundError as exc:
            raise TargetVanishedError(f"target {path} does not exist (any more); check `bty disks`") from exc
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                raise TargetRefusedError(
                    f"target {path} is in use (mounted, or held by md/dm/LVM or another program); "
                    "unmount or release it first"
                ) from exc
            if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise TargetRefusedError(f"target {path} cannot be opened for writing "
                                         f"({exc.strerror}); is it read-only, or are you not root?") from exc
            raise TargetIOError(f"target {path} cannot be opened: {exc.strerror}") from exc
        try:
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode) and file_targets_allowed():
                info = TargetInfo(size=st.st_size, logical_block_size=FILE_SECTOR, physical_block_size=FILE_SECTOR,
                                  rdev=0, zeroout_offloaded=False, regular_file=True)
            elif not stat.S_ISBLK(st.st_mode):
                raise TargetRefusedError(f"target {path} is not a block device; name a disk such as /dev/sdb")
            else:
                info = cls._probe(fd, st.st_rdev)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, info)

    @staticmethod
    def probe(fd: int, rdev: int) -> TargetInfo:
        """Size and block sizes of the open block device `fd` (`bty capture` reads disks with it)."""
        return BlockTarget._probe(fd, rdev)

    @staticmethod
    def _probe(fd: int, rdev: int) -> TargetInfo:
        size = struct.unpack("Q", fcntl.ioctl(fd, BLKGETSIZE64, b"\0" * 8))[0]
        logical = struct.unpack("i", fcntl.ioctl(fd, BLKSSZGET, b"\0" * 4))[0]
        queue = sysfs.block_dir(sysfs.devnum_of(rdev)) / "queue"
        physical = sysfs.read_int(queue / "physical_block_size") or logical
        zeroes = sysfs.read_int(queue / "write_zeroes_max_bytes") or 0
        loop_dio = sysfs.read_int(queue.parent / "loop" / "dio")
        return TargetInfo(size=size, logical_block_size=logical, physical_block_size=physical,
                          rdev=rdev, zeroout_offloaded=zeroes > 0, page_cached=loop_dio == 0)

    # -- writing -----------------------------------------------------------------------------

    def pwrite(self, view: memoryview, offset: int) -> None:
        """Write all of `view` at `offset` (both aligned to the logical block size)."""
        self.touched = True
        done = 0
        while done < len(view):
            try:
                n = os.pwrite(self.fd, view[done:], offset + done)
            except OSError as exc:
                raise self.io_error("writing", offset + done, exc) from exc
            if n <= 0:
                raise self.io_error("writing", offset + done, OSError(errno.EIO, "short write"))
            done += n

    def zeroout(self, offset: int, length: int) -> None:
        """Make [offset, offset+length) read back as zeroes, by the device if it can."""
        self.touched = True
        if self.info.regular_file:
            self._write_zeroes(offset, length)
            return
        arg = struct.pack("QQ", offset, length)
        try:
            fcntl.ioctl(self.fd, BLKZEROOUT, arg)
        except OSError as exc:
            raise self.io_error("zeroing", offset, exc) from exc

    def _write_zeroes(self, offset: int, length: int) -> None:
        """What BLKZEROOUT does, for a file target: write zero buffers."""
        zeroes = aligned_buffer(min(length, ZEROOUT_PIECE))
        try:
            end = offset + length
            while offset < end:
                piece = min(len(zeroes), end - offset)
                self.pwrite(memoryview(zeroes)[:piece], offset)
                offset += piece
        finally:
            close_buffer(zeroes)

    def preadinto(self, view: memoryview, offset: int) -> int:
        try:
            return os.preadv(self.fd, [view], offset)
        except OSError as exc:
            raise self.io_error("reading back", offset, exc) from exc

    def flush(self) -> None:
        try:
            os.fsync(self.fd)
        except OSError as exc:
            raise self.io_error("flushing", 0, exc) from exc

    def drop_cache(self) -> None:
        """Drop the kernel's cached pages of this device (the read-back must not see them)."""
        with contextlib.suppress(OSError):  # O_DIRECT reads bypass the cache anyway
            if self.info.regular_file:
                os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)
            else:
                fcntl.ioctl(self.fd, BLKFLSBUF)

    def reread_partitions(self) -> bool:
        """Make the kernel's partitions (and their /dev nodes) match the table on the disk.

        BLKRRPART re-reads the whole table, but refuses a loop device attached without partscan
        (and leaves no /dev/loopNpM nodes); `partx -u` then adds, resizes and removes them one by
        one (BLKPG), which works on every block device. With no table left (after a wipe) partx
        cannot read one, and the stale partitions are removed (`partx -d`). False when neither
        way got the kernel's view in line (e.g. a partition is mounted)."""
        if self.info.regular_file:
            return True  # a file has no kernel partitions
        try:
            fcntl.ioctl(self.fd, BLKRRPART)
            rescanned = True
        except OSError:
            rescanned = False
        try:
            if run(["partx", "-u", self.path], check=False).returncode == 0:
                return True
            if not self._kernel_partitions():
                return True  # no table and no partitions: in line
            return run(["partx", "-d", self.path], check=False).returncode == 0
        except ToolError:
            return rescanned

    def _kernel_partitions(self) -> list[str]:
        """The partitions the kernel has for this disk (sysfs), e.g. ["loop0p1", "loop0p2"]."""
        return sorted(p.name for p in sysfs.partition_dirs(sysfs.block_dir(sysfs.devnum_of(self.info.rdev))))

    def wipe_signatures(self, extra_offsets: tuple[int, ...] = ()) -> list[tuple[int, int]]:
        """Zero the first and last WIPE_SPAN bytes of the disk (MBR, both GPT copies,
        ISO 9660 descriptors) and WIPE_SPAN before each extra offset (e.g. the image's end,
        where its backup GPT landed). Returns the ranges wiped; best effort per range."""
        size = self.info.size
        block = self.info.logical_block_size
        ranges = {(0, min(WIPE_SPAN, size))}
        for end in (size, *extra_offsets):
            end = min(size, end - end % block)
            start = max(0, end - WIPE_SPAN)
            start -= start % block
            if end > start:
                ranges.add((start, end - start))
        buf = aligned_buffer(WIPE_SPAN)
        wiped = []
        for offset, length in sorted(ranges):
            try:
                self.pwrite(memoryview(buf)[:length], offset)
                wiped.append((offset, length))
            except TargetIOError:
                continue
        with contextlib.suppress(OSError):
            os.fsync(self.fd)
        close_buffer(buf)
        return wiped

    # -- errors ------------------------------------------------------------------------------

    def still_present(self) -> bool:
        if self.info.regular_file:
            return os.path.exists(self.path)
        return sysfs.size_bytes(sysfs.block_dir(sysfs.devnum_of(self.info.rdev))) > 0

    def io_error(self, doing: str, offset: int, exc: OSError) -> TargetIOError:
        where = f"{self.path} at {format_size(offset)}"
        if exc.errno in (errno.ENODEV, errno.ENXIO) or (exc.errno == errno.EIO and not self.still_present()):
            return TargetVanishedError(
                f"target {self.path} vanished while {doing} at {format_size(offset)}; "
                "reconnect it and flash again"
            )
        if exc.errno == errno.ENOSPC:
            return TargetIOError(
                f"no space left on {where} while {doing} (the device, or the storage behind it, is "
                "full); free space or use a larger disk"
            )
        return TargetIOError(
            f"I/O error on {where} while {doing} ({exc.strerror}); the disk or its cable may be failing: "
            "check `dmesg`, then try again or use another disk"
        )

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
