"""Who uses block devices: mounts, active swap and processes writing to them, read from /proc.

Read once per discovery (`bty_live.disk.discovery`) and by the boot-medium walk (`bty_live.disk.boot_medium`);
the eligibility rules turn what is found into reasons.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from bty_live.disk.model import Devnum
from bty_live.system.sysfs import devnum_of, listdir, parse_devnum, read_text, unescape_octal

MOUNTINFO = Path("/proc/self/mountinfo")
PROC_SWAPS = Path("/proc/swaps")
PROC = Path("/proc")


@dataclass(frozen=True)
class MountEntry:
    devnum: Devnum
    mountpoint: str
    fstype: str
    source: str
    superopts: str


def read_mountinfo() -> list[MountEntry]:
    entries = []
    for line in (read_text(MOUNTINFO) or "").splitlines():
        head, sep, tail = line.partition(" - ")
        left, right = head.split(), tail.split()
        devnum = parse_devnum(left[2]) if len(left) > 4 else None
        if not sep or devnum is None or len(right) < 2:
            continue
        entries.append(MountEntry(
            devnum=devnum,
            mountpoint=unescape_octal(left[4]),
            fstype=right[0],
            source=unescape_octal(right[1]),
            superopts=right[2] if len(right) > 2 else "",
        ))
    return entries


def block_devnum(path: str) -> Devnum | None:
    """The devnum of a block device node (following links), or None for anything else."""
    if not path.startswith("/"):
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return devnum_of(st.st_rdev) if stat.S_ISBLK(st.st_mode) else None


def mounts_by_devnum(entries: Iterable[MountEntry]) -> dict[Devnum, tuple[str, ...]]:
    """Mount points per devnum. Also matched through the mount source, because btrfs (and other
    multi-device filesystems) report an anonymous 0:N devnum in mountinfo."""
    found: dict[Devnum, list[str]] = {}
    for entry in entries:
        source = block_devnum(entry.source)
        for key in {entry.devnum} if source is None else {entry.devnum, source}:
            points = found.setdefault(key, [])
            if entry.mountpoint not in points:
                points.append(entry.mountpoint)
    return {key: tuple(points) for key, points in found.items()}


def swap_devnums() -> frozenset[Devnum]:
    """Devnums of block devices in active swap. Swap files are left out: their filesystem is
    mounted, which the mount rule already catches."""
    found = set()
    for line in (read_text(PROC_SWAPS) or "").splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 2 and parts[1] == "partition":
            devnum = block_devnum(unescape_octal(parts[0]))
            if devnum is not None:
                found.add(devnum)
    return frozenset(found)


_O_ACCMODE = 0o3


def _fd_writes(fdinfo: Path) -> bool:
    """Whether the fd described by /proc/PID/fdinfo/FD was opened for writing (O_WRONLY or O_RDWR)."""
    for line in (read_text(fdinfo) or "").splitlines():
        key, _, value = line.partition(":")
        if key == "flags":
            try:
                return int(value.strip(), 8) & _O_ACCMODE != os.O_RDONLY
            except ValueError:
                return True  # unreadable flags: assume the worst
    return True


def block_writers() -> dict[Devnum, tuple[tuple[int, str], ...]]:
    """(pid, command) of every other process holding a block device open for writing, per devnum.

    What `fuser` does: readlink/stat each /proc/PID/fd/N (psutil's open_files leaves block
    devices out) and compare st_rdev; the access mode comes from /proc/PID/fdinfo/N. Our own
    process is skipped: the engine holds the target itself when it checks again.
    """
    own = os.getpid()
    found: dict[Devnum, list[tuple[int, str]]] = {}
    for entry in listdir(PROC):
        if not entry.isdigit() or int(entry) == own:
            continue
        pid = int(entry)
        fd_dir = PROC / entry / "fd"
        for fd in listdir(fd_dir):
            try:
                if not os.readlink(fd_dir / fd).startswith("/"):
                    continue  # socket:, pipe:, anon_inode:
                st = os.stat(fd_dir / fd)
            except OSError:
                continue  # closed, or the process exited
            if not stat.S_ISBLK(st.st_mode) or not _fd_writes(PROC / entry / "fdinfo" / fd):
                continue
            holders = found.setdefault(devnum_of(st.st_rdev), [])
            if all(pid != known for known, _ in holders):
                holders.append((pid, read_text(PROC / entry / "comm") or "?"))
    return {devnum: tuple(holders) for devnum, holders in found.items()}
