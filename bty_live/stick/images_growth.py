"""Growing the stick's BTY_IMAGES partition, the decisions: pure, no I/O.

What `bty_live.stick.images_partition` reads (sysfs, `sfdisk --json`, the file sizes, the kernel
command line, a boot sector) comes in as values, and out come the decisions: is growing worth it,
is it safe (or why not: `Refused`), where the block copy goes, what the partition table becomes,
and the journal kept in the partition's name while the partition is rebuilt.

The journal: from the partition-table write that makes the partition span the stick until the
files are back on the new file system, the partition is named "bty-grow:<copy start>:<copy
sectors>" (in the disk's logical sectors): where the verified block copy of the old file system
sits at the end of the stick. The next boot resumes from it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

LABEL = "BTY_IMAGES"
#: the partition name's prefix while a growth is in progress (the journal)
MARK = "bty-grow:"
MIB = 1 << 20
#: less unused space than this after the partition: not worth a rebuild
MIN_GAIN = 64 * MIB
#: new exFAT metadata and cluster slack, beyond the files themselves
META_ALLOWANCE = 64 * MIB
#: 512-byte sectors the backup GPT takes at the end of a disk (entries, header, and the one after)
GPT_TAIL = 34
#: values of bty-live.grow= on the kernel command line that turn growing off
GROW_OFF = ("0", "no", "off", "false")


class Refused(Exception):
    """Growing is not safe or not possible: log why, keep the images where they are."""


@dataclass(frozen=True)
class Partition:
    """One partition, as sysfs or `sfdisk --json` has it.

    `start` and `size` count sectors in the units of the source: sysfs counts 512-byte units,
    sfdisk the disk's logical sectors (the same on a 512-byte-sector stick).
    """

    node: str  # /dev/sda3
    number: int
    name: str  # the GPT partition name ("" when the source has none)
    start: int
    size: int

    @property
    def end(self) -> int:
        return self.start + self.size


@dataclass(frozen=True)
class Table:
    """A disk's partition table as `sfdisk --json` reports it."""

    partitions: tuple[Partition, ...]
    #: the last usable LBA (GPT only; None for an MBR table)
    lastlba: int | None

    def entry(self, number: int) -> Partition | None:
        return next((p for p in self.partitions if p.number == number), None)


@dataclass(frozen=True)
class Journal:
    """Where the verified block copy of the old file system sits, in the disk's logical sectors."""

    copy_start: int
    copy_size: int

    @property
    def name(self) -> str:
        """The partition name that records it."""
        return f"{MARK}{self.copy_start}:{self.copy_size}"


@dataclass(frozen=True)
class GrowthPlan:
    """A growth that is worth it and fits, in the disk's logical sectors."""

    new_size: int  # the partition's size once it spans the stick
    copy_start: int  # where the block copy of the old file system goes
    copy_size: int  # its length: the old partition's size

    @property
    def journal(self) -> Journal:
        return Journal(self.copy_start, self.copy_size)


def part_number(node: str) -> int:
    """/dev/sda3 -> 3, /dev/loop0p2 -> 2."""
    match = re.search(r"(\d+)$", node)
    if match is None:
        raise ValueError(f"{node} does not end in a partition number")
    return int(match.group(1))


def parse_table(text: str) -> Table:
    """`sfdisk --json DISK`'s output."""
    table = json.loads(text)["partitiontable"]
    partitions = tuple(
        Partition(node=p["node"], number=part_number(p["node"]), name=str(p.get("name", "")),
                  start=int(p["start"]), size=int(p["size"]))
        for p in table.get("partitions", ())
    )
    lastlba = table.get("lastlba")
    return Table(partitions=partitions, lastlba=int(lastlba) if lastlba is not None else None)


def is_journal_name(name: str) -> bool:
    """A growth is in progress on a partition of this name (well formed or not)."""
    return name.startswith(MARK)


def parse_journal(name: str) -> Journal | None:
    """The journal a partition name holds; None when it is not one. Raises ValueError for a name
    that starts like a journal but does not read as one (nothing is resumed from it)."""
    if not is_journal_name(name):
        return None
    start, sep, size = name[len(MARK):].partition(":")
    if not (sep and start.isdigit() and size.isdigit()):
        raise ValueError(f"partition name {name!r} is not {MARK}<copy start>:<copy sectors>")
    return Journal(int(start), int(size))


def cmdline_value(cmdline: str, key: str) -> str | None:
    """The value of `key=` on a kernel command line (the first one), None when absent."""
    for word in cmdline.split():
        name, _, value = word.partition("=")
        if name == key:
            return value
    return None


def growing_disabled(cmdline: str) -> bool:
    """bty-live.grow=0 (or no, off, false) on the kernel command line."""
    return cmdline_value(cmdline, "bty-live.grow") in GROW_OFF


def exfat_dirty(boot_sector: bytes) -> bool:
    """The exFAT VolumeDirty flag (boot sector offset 106, bit 1): set while mounted, or after an
    unclean removal. False for anything that is not an exFAT boot sector."""
    return boot_sector[3:11] == b"EXFAT   " and bool(int.from_bytes(boot_sector[106:108], "little") & 0x2)


def worth_growing(partitions: Sequence[Partition], node: str, disk_size: int) -> bool:
    """The cheap test, on sysfs's view (512-byte units; `disk_size` too): is `node` the last
    partition, with at least MIN_GAIN unused after it?"""
    if not partitions:
        return False
    last = max(partitions, key=lambda p: p.start)
    gap = disk_size - GPT_TAIL - last.end
    return last.node == node and gap * 512 >= MIN_GAIN


def refuse_unless_last(partitions: Sequence[Partition], part: Partition, disk: str) -> None:
    """Only the last partition can grow into the space after it."""
    last = max(partitions, key=lambda p: p.start)
    if last.node != part.node:
        raise Refused(f"{part.node} is not the last partition of /dev/{disk}; not grown")


def backup_gpt_misplaced(lastlba: int, disk_sectors: int) -> bool:
    """The image was written to a larger stick: the backup GPT sits where the image ended, not at
    the end of the stick."""
    return lastlba < disk_sectors - GPT_TAIL


def plan_growth(part: Partition, end: int, sector_size: int) -> GrowthPlan | None:
    """Grow `part` (its start and size in logical sectors) up to `end` (one past the last usable
    sector): None when that gains less than MIN_GAIN. The block copy goes as far to the end as
    MiB alignment allows; Refused when it would overlap the partition it copies."""
    align = MIB // sector_size
    new_size = (end - part.start) // align * align
    if (new_size - part.size) * sector_size < MIN_GAIN:
        return None
    copy_start = (end - part.size) // align * align
    if copy_start < part.end:
        raise Refused(
            f"the stick has {(new_size - part.size) * sector_size // MIB} MiB unused after {LABEL} "
            f"({part.size * sector_size // MIB} MiB); growing it safely needs room for a full copy of it. "
            f"The images stay as they are. To use the whole stick, copy the images elsewhere, "
            f"re-create the partition up to the end of the stick and format it exFAT, label {LABEL}")
    return GrowthPlan(new_size=new_size, copy_start=copy_start, copy_size=part.size)


def refuse_unless_files_fit(plan: GrowthPlan, part: Partition, sector_size: int, file_sizes: Sequence[int]) -> None:
    """The files are written back from the front of the new file system while the copy sits at the
    end: they, a MiB each of slack and META_ALLOWANCE must fit before the copy."""
    need = sum((size + MIB - 1) // MIB * MIB for size in file_sizes)
    if (plan.copy_start - part.start) * sector_size < need + len(file_sizes) * MIB + META_ALLOWANCE:
        raise Refused(f"the files on {LABEL} ({need // MIB} MiB) would not leave the copy at the end of "
                      f"the stick untouched while they are written back; not grown")


def edit_dump(dump: str, number: int, *, size: int, name: str) -> str:
    """`sfdisk --dump` output with partition `number` given `size` sectors and `name`, and no
    last-lba (so that sfdisk uses the whole device): the input of one partition-table write."""
    lines = []
    for line in dump.splitlines():
        if line.startswith("last-lba:"):
            continue
        node, sep, fields = line.partition(" : ")
        if sep and part_number(node.strip()) == number:
            fields = re.sub(r"size=\s*\d+", lambda _: f"size={size}", fields)
            if "name=" in fields:
                fields = re.sub(r'name="[^"]*"', lambda _: f'name="{name}"', fields)
            else:
                fields = f'{fields}, name="{name}"'
            line = f"{node}{sep}{fields}"
        lines.append(line)
    return "\n".join(lines) + "\n"
