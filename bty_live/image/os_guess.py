"""Which operating system a disk (or image) holds, guessed for a manifest's `os` key.

The best answer is the root filesystem's os-release (`debian-12`, `fedora-40`): for an ext2/3/4
root it is read with `debugfs -c` (read-only, no mount, any offset of a device or file). Else
the filesystems and partition types say the family: `linux`, `windows` or `freebsd`; a disk
with several families (dual boot) or none gets no guess (""). A guess, never a refusal: the
manifest's `os` is only shown to people.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from bty_live.errors import ToolError
from bty_live.image.fsprobe import FsInfo
from bty_live.image.partitions import PartitionTable
from bty_live.system.run import run

_LINUX_FS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "squashfs", "erofs", "f2fs", "jfs", "reiserfs",
                       "swap", "LVM2_member", "crypto_LUKS"})
_EXT = frozenset({"ext2", "ext3", "ext4"})
_WINDOWS_TYPES = frozenset({"e3c9e316-0b5c-4db8-817d-f92df00215ae", "de94bba4-06d1-4d40-a16a-bfd50179d6ac"})
#: where os-release lives (/etc/os-release is usually a symlink to the first, which debugfs does not follow)
OS_RELEASE_PATHS = ("/usr/lib/os-release", "/etc/os-release")
_KEY = re.compile(r"^([A-Z_]+)=(.*)$")


def parse_os_release(text: str) -> str:
    """"debian-12" from ID=debian and VERSION_ID="12"; the ID alone when there is no version
    (rolling releases); "" when there is no ID."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        match = _KEY.match(line.strip())
        if match:
            values[match.group(1)] = match.group(2).strip().strip("\"'")
    name = re.sub(r"[^a-z0-9._-]", "", values.get("ID", "").lower())
    version = re.sub(r"[^A-Za-z0-9._-]", "", values.get("VERSION_ID", ""))
    if not name:
        return ""
    return f"{name}-{version}" if version else name


def os_family(table: PartitionTable | None, filesystems: Mapping[int, FsInfo]) -> str:
    """"linux", "windows", "freebsd", or "" when none or several are found."""
    families: set[str] = set()
    types = {fs.fstype for fs in filesystems.values() if fs.fstype}
    if types & _LINUX_FS:
        families.add("linux")
    if "ntfs" in types:
        families.add("windows")
    if "ufs" in types:
        families.add("freebsd")
    for part in table.partitions if table else ():
        if part.arch is not None or part.type_name.startswith("Linux") or part.type_id == "0x83":
            families.add("linux")
        elif part.type_id in _WINDOWS_TYPES:
            families.add("windows")
        elif part.type_name.startswith("FreeBSD"):
            families.add("freebsd")
    return families.pop() if len(families) == 1 else ""


def root_offset(table: PartitionTable | None, filesystems: Mapping[int, FsInfo]) -> int | None:
    """Byte offset of the ext2/3/4 root filesystem to read os-release from, or None."""
    if table is None:
        whole = filesystems.get(0)
        return 0 if whole is not None and whole.fstype in _EXT else None
    labels = {number: fs.label for number, fs in filesystems.items()}
    root = table.find_root(labels)
    candidates = [root] if root is not None else [p for p in table.partitions
                                                 if (filesystems.get(p.number) or FsInfo(None)).fstype in _EXT]
    if len(candidates) != 1 or candidates[0] is None:
        return None
    fs = filesystems.get(candidates[0].number)
    return candidates[0].start if fs is not None and fs.fstype in _EXT else None


def read_os_release(path: Path | str, offset: int) -> str:
    """The os-release guess of the ext2/3/4 filesystem at `offset` of `path`; "" when unreadable."""
    for name in OS_RELEASE_PATHS:
        try:
            proc = run(["debugfs", "-c", "-R", f"cat {name}", f"{path}?offset={offset}"], check=False, timeout=30)
        except ToolError:
            return ""
        found = parse_os_release(proc.stdout) if proc.returncode == 0 else ""
        if found:
            return found
    return ""


def guess_os(path: Path | str, table: PartitionTable | None, filesystems: Mapping[int, FsInfo]) -> str:
    """os-release of the ext root when there is one, else the family, else ""."""
    offset = root_offset(table, filesystems)
    found = read_os_release(path, offset) if offset is not None else ""
    return found or os_family(table, filesystems)
