"""The boot medium: which whole disks hold a path (the running system's /, the images directory,
the image), following everything that stands between a path and a disk.

The rule, shared by every check that a disk may be written: a disk is boot medium when the
filesystem of a protected path lives on it -- through partitions, dm/md slaves, loop devices
(their backing file's disk, nested loops resolved), overlay/tmpfs mounts (their sources and
lower/upper directories) and btrfs's anonymous devnums (the mount source).

Two earlier steps of the stick apply the same rule before Python runs, each documented where
it lives: the initrd's `/init` (busybox sh) picks the root partition on the disk whose ESP the
boot loader names, never a copy of the stick on a target; `bty_live.stick.images_partition`
mounts the BTY_IMAGES partition of the disk that holds the running root (its `root_disk`: the
disk of the root's own partition only, narrower than this walk on purpose, since that disk's
partition table may be rewritten).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path

from bty_live.disk.model import BackingFile, Devnum, Protected
from bty_live.disk.users import MountEntry, block_devnum, read_mountinfo
from bty_live.system.sysfs import (
    SYS_CLASS_BLOCK,
    block_dir,
    devnum_of,
    listdir,
    loop_backing_file,
    parse_devnum,
    read_text,
)


def _overlay_dirs(superopts: str) -> list[str]:
    r"""lowerdir/upperdir paths from an overlay mount's options (":" separates, "\:" escapes)."""
    dirs = []
    for option in re.split(r"(?<!\\),", superopts):
        key, _, value = option.partition("=")
        if key in ("lowerdir", "upperdir", "lowerdir+", "datadir+") and value:
            dirs += [d.replace("\\:", ":").replace("\\,", ",") for d in re.split(r"(?<!\\):", value) if d]
    return dirs


def _walk_to_disks(devnum: Devnum, mounts: Sequence[MountEntry], found: set[Devnum],
                   seen: set[Devnum], files: list[BackingFile] | None = None) -> None:
    """Add to `found` every whole disk that the filesystem or block device `devnum` lives on
    (and to `files`, when given, every loop backing file on the way)."""
    if devnum in seen:
        return
    seen.add(devnum)
    sysdir = block_dir(devnum)
    if devnum[0] == 0 or not (sysdir / "dev").is_file():
        _walk_mount_sources(devnum, mounts, found, seen, files)
        return
    if (sysdir / "partition").is_file():
        sysdir = sysdir.parent
    disk = parse_devnum(read_text(sysdir / "dev"))
    if disk is None:
        return
    found.add(disk)
    seen.add(disk)
    for slave in listdir(sysdir / "slaves"):  # dm, md: the devices below
        slave_devnum = parse_devnum(read_text(SYS_CLASS_BLOCK / slave / "dev"))
        if slave_devnum is not None:
            _walk_to_disks(slave_devnum, mounts, found, seen, files)
    backing = loop_backing_file(sysdir)
    if backing:
        path = backing.removesuffix(" (deleted)")
        if files is not None:
            files.append(BackingFile(loop=sysdir.name, path=path, inode=_inode(path), device=_whole_disk_of(path)))
        _walk_path(path, mounts, found, seen, files)


def _walk_mount_sources(devnum: Devnum, mounts: Sequence[MountEntry], found: set[Devnum],
                        seen: set[Devnum], files: list[BackingFile] | None = None) -> None:
    """A filesystem without a block device of its own (overlay, tmpfs, btrfs's 0:N): follow the
    mount source and, for overlay, the lower and upper directories."""
    for entry in mounts:
        if entry.devnum != devnum:
            continue
        source = block_devnum(entry.source)
        if source is not None:
            _walk_to_disks(source, mounts, found, seen, files)
        if entry.fstype == "overlay":
            for directory in _overlay_dirs(entry.superopts):
                _walk_path(directory, mounts, found, seen, files)


def _walk_path(path: str, mounts: Sequence[MountEntry], found: set[Devnum], seen: set[Devnum],
               files: list[BackingFile] | None = None) -> None:
    try:
        st = os.stat(path)
    except OSError:
        return
    # a block device node (a loop over /dev/sdb1) stands for that device, not for /dev's filesystem
    _walk_to_disks(devnum_of(st.st_rdev if stat.S_ISBLK(st.st_mode) else st.st_dev), mounts, found, seen, files)


def _whole_disk_of(path: str) -> Devnum | None:
    """The whole disk a block device node is (or is a partition of); None for anything else."""
    devnum = block_devnum(path)
    if devnum is None:
        return None
    sysdir = block_dir(devnum)
    if (sysdir / "partition").is_file():
        return parse_devnum(read_text(sysdir.parent / "dev"))
    return devnum


def _inode(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def backing_chain(devnum: Devnum, mounts: Sequence[MountEntry] | None = None) -> tuple[BackingFile, ...]:
    """Every loop backing file that writing the block device `devnum` writes into: its own, then
    (nested) the backing files of the loops below the filesystems those files live on."""
    files: list[BackingFile] = []
    _walk_to_disks(devnum, read_mountinfo() if mounts is None else mounts, set(), set(), files)
    return tuple(files)


def boot_medium_devnums(paths: Iterable[Path | str]) -> frozenset[Devnum]:
    """Whole disks holding the given paths (the running system's / and the images directory).

    Follows partitions to their disk, dm/md to their slaves, loop devices to their backing
    file's disk, and overlay/tmpfs-style mounts to their sources. Missing paths are skipped.
    """
    mounts = read_mountinfo()
    found: set[Devnum] = set()
    seen: set[Devnum] = set()
    for path in paths:
        _walk_path(str(path), mounts, found, seen)
    return frozenset(found)



#: at most this many files of a protected directory are remembered by inode (an images directory
#: holds a few dozen; the path test still covers the rest)
_PROTECTED_FILES_MAX = 10_000


def _files_in(directory: str) -> frozenset[tuple[int, int]]:
    found: set[tuple[int, int]] = set()
    for root, _dirs, names in os.walk(directory):
        for name in names:
            inode = _inode(os.path.join(root, name))
            if inode is not None:
                found.add(inode)
            if len(found) >= _PROTECTED_FILES_MAX:
                return frozenset(found)
    return frozenset(found)


def protect(path: Path | str, what: str) -> Protected:
    """What the eligibility rules need to know about one protected path (a missing path protects nothing
    but its name)."""
    real = os.path.realpath(path)
    is_dir = os.path.isdir(real)
    if real == "/":
        files: frozenset[tuple[int, int]] = frozenset()
    elif is_dir:
        files = _files_in(real)
    else:
        inode = _inode(real)
        files = frozenset({inode}) if inode else frozenset()
    return Protected(path=real, what=what, devnums=boot_medium_devnums([real]), files=files, is_dir=is_dir)
