"""A GPT rewritten for a shorter disk: what `bty capture --trim` lays over the bytes it reads.

A GPT is kept twice: the primary header at LBA 1 with the entry array after it, and the backup
header at the disk's last LBA with a copy of the entries just before it. An image cut short
after its last partition has lost the backup (it was at the old end) and its primary header
still points there. The patches made here give the shorter image a valid GPT again
(UEFI 2.10 section 5.3.2), as `sgdisk -e` would on a disk of that size:

- the primary header: AlternateLBA = the new last LBA, LastUsableLBA = the LBA before the backup
  entries, header CRC32 again;
- the backup entries: the same array (same CRC32) at new last LBA - entry sectors;
- the backup header: the primary's fields with MyLBA and AlternateLBA swapped and
  PartitionEntryLBA pointing at the backup entries, its own CRC32;
- the protective MBR's 0xEE entry, when it is the only entry, sized to the new disk.

Pure: the head of the disk (protective MBR, primary header, entries) in, patches out.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from bty_live.image.partitions import MBR_PROTECTIVE_TYPE, PartitionTable

_GPT_HEADER = struct.Struct("<8sIIIIQQQQ16sQIII")  # 92 bytes, UEFI 2.10 table 5.21
_MBR_TABLE = 0x1BE
_MBR_ENTRY = struct.Struct("<B3sB3sII")  # boot, CHS first, type, CHS last, first LBA, sectors


@dataclass(frozen=True)
class Patch:
    """Bytes that replace what the disk holds at `offset` in the image."""

    offset: int
    data: bytes

    @property
    def end(self) -> int:
        return self.offset + len(self.data)


def entry_sectors(table: PartitionTable) -> int:
    """Sectors the partition entry array fills (32 for the usual 128 entries of 128 bytes)."""
    if table.entry_count is None or table.entry_size is None:
        raise ValueError("not a GPT")
    return -(-table.entry_count * table.entry_size // table.sector_size)


def backup_gpt_bytes(table: PartitionTable) -> int:
    """Bytes after the last usable LBA: the backup entries and the backup header."""
    return (entry_sectors(table) + 1) * table.sector_size


def resize_gpt(head: bytes, table: PartitionTable, size: int) -> tuple[Patch, ...]:
    """The patches that make a GPT disk image of `size` bytes valid, both copies of its table
    included. `head` holds at least the primary header and its entries; `table` is what
    `parse_partition_table` made of it (valid: CRCs checked). `size` must leave room for every
    partition and the backup GPT after them."""
    if table.scheme != "gpt" or table.entries_lba is None:
        raise ValueError("resize_gpt needs a GPT")
    ss = table.sector_size
    if size % ss:
        raise ValueError(f"size {size} is not a multiple of the {ss}-byte sector")
    tail = entry_sectors(table)
    last_lba = size // ss - 1
    backup_entries_lba = last_lba - tail
    last_usable = backup_entries_lba - 1
    if table.end_of_partitions > (last_usable + 1) * ss:
        raise ValueError(f"size {size} cuts into a partition or leaves no room for the backup GPT")

    sector = head[ss : 2 * ss]
    fields = list(_GPT_HEADER.unpack_from(sector))
    header_size = fields[2]
    entries_start = table.entries_lba * ss
    entries = head[entries_start : entries_start + tail * ss]
    if len(entries) < tail * ss:
        raise ValueError("the head does not hold the whole partition entry array")

    # fields: 0 signature, 1 revision, 2 header size, 3 header CRC, 4 reserved, 5 MyLBA,
    # 6 AlternateLBA, 7 FirstUsableLBA, 8 LastUsableLBA, 9 disk GUID, 10 PartitionEntryLBA,
    # 11 entry count, 12 entry size, 13 entries CRC
    primary = list(fields)
    primary[6], primary[8] = last_lba, last_usable
    backup = list(primary)
    backup[5], backup[6], backup[10] = last_lba, 1, backup_entries_lba
    patches = [
        Patch(ss, _header_sector(sector, primary, header_size)),
        Patch(backup_entries_lba * ss, bytes(entries)),
        Patch(last_lba * ss, _header_sector(sector, backup, header_size)),
    ]
    mbr = _protective_mbr_size(head, last_lba)
    if mbr is not None:
        patches.insert(0, mbr)
    return tuple(patches)


def _header_sector(original: bytes, fields: list[object], header_size: int) -> bytes:
    """A header sector: the original's bytes with `fields` packed in and the CRC32 recomputed
    over `header_size` bytes (its own CRC field zeroed while computing)."""
    raw = bytearray(original)
    fields = list(fields)
    fields[3] = 0
    _GPT_HEADER.pack_into(raw, 0, *fields)
    struct.pack_into("<I", raw, 16, zlib.crc32(raw[:header_size]))
    return bytes(raw)


def _protective_mbr_size(head: bytes, last_lba: int) -> Patch | None:
    """The protective MBR's size field for the new disk, when the MBR is the plain protective
    one (a single 0xEE entry from LBA 1); a hybrid MBR is left as it is."""
    entries = [_MBR_ENTRY.unpack_from(head, _MBR_TABLE + 16 * i) for i in range(4)]
    used = [(i, e) for i, e in enumerate(entries) if e[2] != 0]
    if len(used) != 1 or used[0][1][2] != MBR_PROTECTIVE_TYPE or used[0][1][4] != 1:
        return None
    index = used[0][0]
    return Patch(_MBR_TABLE + 16 * index + 12, struct.pack("<I", min(last_lba, 0xFFFFFFFF)))
