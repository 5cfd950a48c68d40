"""Reading sysfs and /proc attributes: the one home of the small readers every disk module needs.

An attribute that is absent, unreadable or empty reads as None (a disk can vanish between two
reads; the callers decide what that means). Sizes in sysfs are counted in 512-byte sectors,
whatever the device's own sector size.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

#: (major, minor) of a block device node
Devnum = tuple[int, int]

SYS_DEV_BLOCK = Path("/sys/dev/block")
SYS_CLASS_BLOCK = Path("/sys/class/block")
#: the unit of sysfs `size` and `start`
SECTOR = 512


def read_text(path: Path) -> str | None:
    """An attribute, stripped; None when absent, unreadable or empty."""
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return None
    return text or None


def read_int(path: Path) -> int | None:
    text = read_text(path)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def read_flag(path: Path) -> bool:
    return read_text(path) == "1"


def listdir(path: Path) -> tuple[str, ...]:
    """Entry names, sorted; empty when the directory is gone."""
    try:
        return tuple(sorted(os.listdir(path)))
    except OSError:
        return ()


def parse_devnum(text: str | None) -> Devnum | None:
    """"8:16" -> (8, 16)."""
    if not text or ":" not in text:
        return None
    major, _, minor = text.partition(":")
    return int(major), int(minor)


def devnum_of(st_dev: int) -> Devnum:
    return os.major(st_dev), os.minor(st_dev)


def block_dir(devnum: Devnum) -> Path:
    """The sysfs directory of a block device (a disk, or a partition below its disk's)."""
    return Path(os.path.realpath(SYS_DEV_BLOCK / f"{devnum[0]}:{devnum[1]}"))


def block_dir_of_node(node: str | os.PathLike[str]) -> Path:
    """The sysfs directory of /dev/NAME by its kernel name (links followed)."""
    return SYS_CLASS_BLOCK / os.path.basename(os.path.realpath(node))


def size_bytes(sysdir: Path) -> int:
    """A block device's size in bytes (0 when unknown or without a medium)."""
    return (read_int(sysdir / "size") or 0) * SECTOR


def loop_backing_file(sysdir: Path) -> str | None:
    return read_text(sysdir / "loop" / "backing_file")


def partition_dirs(sysdir: Path) -> list[Path]:
    """The partitions' sysfs directories below a disk's, in partition-number order."""
    dirs = [sysdir / name for name in listdir(sysdir) if (sysdir / name / "partition").is_file()]
    return sorted(dirs, key=lambda d: read_int(d / "partition") or 0)


def uevent(sysdir: Path) -> dict[str, str]:
    """A device's uevent file as KEY -> value (DEVNAME, PARTNAME, DISKSEQ, ...); empty when gone."""
    pairs = (line.partition("=") for line in (read_text(sysdir / "uevent") or "").splitlines())
    return {key: value for key, sep, value in pairs if sep}


def node_path(sysdir: Path, name: str) -> str:
    """The /dev node of a block device, as its uevent names it."""
    devname = uevent(sysdir).get("DEVNAME")
    return f"/dev/{devname}" if devname else f"/dev/{name}"


def unescape_octal(text: str) -> str:
    r"""Undo the kernel's \040-style escaping in /proc/self/mountinfo and /proc/swaps."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)
