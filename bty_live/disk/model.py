"""What a disk is, as the safety rules see it: plain frozen dataclasses, no I/O, no pyudev.

Discovery (`bty_live.disk.discovery`) fills them from sysfs, /proc, udev and blkid; the eligibility rules,
the selector, the plan and every front-end read them. Sizes and offsets are in bytes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

from bty_live.units import format_size

#: (major, minor) of a block device node
Devnum = tuple[int, int]


@dataclass(frozen=True, kw_only=True)
class Partition:
    """One partition of a disk. Sizes and offsets are in bytes."""

    name: str
    path: str
    devnum: Devnum
    number: int
    start: int
    size: int
    fstype: str | None = None
    label: str | None = None
    uuid: str | None = None
    partlabel: str | None = None
    mountpoints: tuple[str, ...] = ()
    holders: tuple[str, ...] = ()
    swap: bool = False
    used_bytes: int | None = None


@dataclass(frozen=True)
class DiskIdentity:
    """What must not change between planning a flash and its first write.

    `diskseq` is the kernel's per-disk sequence number: it changes when a different medium or
    backing file appears under the same device name, which catches swaps that serial-less sticks
    and loop devices would otherwise hide.
    """

    path: str
    devnum: Devnum
    size: int
    serial: str | None
    wwn: str | None
    model: str | None
    loop_backing_file: str | None
    diskseq: int | None = None

    def differences(self, other: DiskIdentity) -> tuple[str, ...]:
        """Human lines naming each field that differs, e.g. "size: 2 GiB -> 1 GiB"."""
        changes = []
        for f in fields(self):
            before, after = getattr(self, f.name), getattr(other, f.name)
            if before != after:
                if f.name == "size":
                    before, after = format_size(before), format_size(after)
                changes.append(f"{f.name}: {before} -> {after}")
        return tuple(changes)


@dataclass(frozen=True)
class BackingFile:
    """A loop device's backing file, with the file's (st_dev, st_ino) when it could be stat'ed."""

    loop: str
    path: str
    inode: tuple[int, int] | None = None
    #: the whole disk, when the backing "file" is a block device node (a loop over /dev/sdb1)
    device: Devnum | None = None


@dataclass(frozen=True)
class Opener:
    """A process holding a disk or one of its partitions open for writing (as `fuser` sees it)."""

    pid: int
    command: str
    node: str


@dataclass(frozen=True, kw_only=True)
class Disk:
    """A whole disk as discovered. Sizes are in bytes.

    `mountpoints`, `holders` and `swap` describe the whole-disk node itself; each partition has
    its own. `mounts()`, `holder_pairs()` and `swap_nodes()` combine the disk and its partitions.
    `fstype`/`label`/`uuid`/`used_bytes` are set for a "superfloppy" (a filesystem on the whole disk).
    """

    name: str
    path: str
    devnum: Devnum
    size: int
    transport: str
    logical_sector_size: int = 512
    physical_sector_size: int = 512
    vendor: str | None = None
    model: str | None = None
    serial: str | None = None
    wwn: str | None = None
    by_id: tuple[str, ...] = ()
    by_path: tuple[str, ...] = ()
    removable: bool = False
    rotational: bool = False
    read_only: bool = False
    pttype: str | None = None
    partitions: tuple[Partition, ...] = ()
    mountpoints: tuple[str, ...] = ()
    holders: tuple[str, ...] = ()
    swap: bool = False
    loop_backing_file: str | None = None
    fstype: str | None = None
    label: str | None = None
    uuid: str | None = None
    used_bytes: int | None = None
    diskseq: int | None = None
    #: every loop backing file that writing this disk writes into, nested loops resolved
    #: (a loop whose backing file lives on a filesystem on another loop, ...), outermost first
    backing_chain: tuple[BackingFile, ...] = ()
    #: other processes holding the disk or a partition open for writing (read-only openers,
    #: such as blkid, are left out)
    writers: tuple[Opener, ...] = ()
    #: why the contents (partition table, filesystems) could not be probed, if they could not
    probe_error: str | None = None

    def identity(self) -> DiskIdentity:
        return DiskIdentity(
            path=self.path,
            devnum=self.devnum,
            size=self.size,
            serial=self.serial,
            wwn=self.wwn,
            model=self.model,
            loop_backing_file=self.loop_backing_file,
            diskseq=self.diskseq,
        )

    def mounts(self) -> tuple[tuple[str, str], ...]:
        """(node name, mount point) for the disk and every partition."""
        pairs = [(self.name, mp) for mp in self.mountpoints]
        pairs += [(p.name, mp) for p in self.partitions for mp in p.mountpoints]
        return tuple(pairs)

    def holder_pairs(self) -> tuple[tuple[str, str], ...]:
        """(node name, holder name) for the disk and every partition."""
        pairs = [(self.name, h) for h in self.holders]
        pairs += [(p.name, h) for p in self.partitions for h in p.holders]
        return tuple(pairs)

    def swap_nodes(self) -> tuple[str, ...]:
        """Names of the disk or partitions that are active swap."""
        nodes = [self.name] if self.swap else []
        return tuple(nodes + [p.name for p in self.partitions if p.swap])


@dataclass(frozen=True)
class Protected:
    """A path whose disks and files must never be written: "/", the images directory, the image.

    devnums: the whole disks it lives on (see `boot_medium_devnums`).
    files: (st_dev, st_ino) of the regular files in it (or of the file itself), so a loop device
        backed by one of them is caught through a bind mount or a hard link too.
    """

    path: str
    what: str
    devnums: frozenset[Devnum] = frozenset()
    files: frozenset[tuple[int, int]] = frozenset()
    is_dir: bool = False

    @property
    def is_system(self) -> bool:
        return self.path == "/"

    def contains(self, backing: BackingFile) -> bool:
        """Whether the backing file is this file, or lies inside this directory."""
        if self.is_system:
            return False  # everything is inside "/": its disks are what count
        if backing.inode is not None and backing.inode in self.files:
            return True
        path = os.path.normpath(backing.path)
        return path.startswith(self.path + "/") if self.is_dir else path == self.path
