"""Partition tables (GPT and MBR) parsed from the first bytes of a decompressed image.

Pure: bytes in, frozen dataclasses out, no I/O. The caller passes the head of the image (at
least 1 MiB, or the whole image when it is smaller), which covers the protective MBR, the GPT
header and its 128-entry array for 512- and 4096-byte sectors, and the usual EBR chains.

Damage is reported, not raised: a flasher must be able to show a broken table (bad CRC,
overlapping partitions, backup header not at the end) so the user can decide what to do.
Lists of problems make `PartitionTable.valid` false; `notes` are facts worth showing that are
not errors (hybrid MBR, ISO 9660 hybrid image, 4096-byte sectors).

References: UEFI 2.10 section 5.3 (GPT), the Discoverable Partitions Specification (type
GUIDs for root, /usr, home, ...), util-linux `sfdisk --list-types` for the friendly names.
"""

from __future__ import annotations

import struct
import uuid
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, replace

from bty_live.image.partitions import (
    MBR_EXTENDED_TYPES,
    MBR_PROTECTIVE_TYPE,
    Partition,
    PartitionKind,
    PartitionTable,
    gpt_type_name,
    mbr_type_name,
)

GPT_SIGNATURE = b"EFI PART"
MBR_SIGNATURE = b"\x55\xaa"
ISO9660_OFFSET = 0x8001
ISO9660_MAGIC = b"CD001"
SECTOR_SIZES = (512, 4096)

_GPT_HEADER = struct.Struct("<8sIIIIQQQQ16sQIII")  # 92 bytes, UEFI 2.10 table 5.21
_GPT_ENTRY = struct.Struct("<16s16sQQQ72s")  # 128 bytes, UEFI 2.10 table 5.22
_MBR_ENTRY = struct.Struct("<B3sB3sII")  # 16 bytes
_MBR_TABLE_OFFSET = 0x1BE
_MAX_GPT_ENTRIES = 16384  # sanity bound against garbage headers; real tables have 128
_MAX_LOGICAL = 256  # sanity bound on EBR chains

# --- entry point --------------------------------------------------------------------------


def parse_partition_table(
    head: bytes,
    image_size: int | None,
    sector_size: int = 512,
    sectors: Mapping[int, bytes] | None = None,
) -> PartitionTable | None:
    """The partition table at the start of an image, or None when there is neither GPT nor MBR.

    `head` is the start of the decompressed image; `image_size` its full decompressed size when
    known (to check where the backup GPT header and the partitions end). A GPT header is looked
    for at LBA 1 with `sector_size`, then with the other common sector size.

    MBR logical partitions are chained through EBRs spread over the extended partition. When
    one lies beyond `head`, the table says so in `missing_ebr` (its byte offset); a caller
    that can read it passes it back in `sectors` (byte offset -> bytes) and parses again.
    """
    order = (sector_size,) + tuple(s for s in SECTOR_SIZES if s != sector_size)
    table: PartitionTable | None = None
    for size in order:
        if head[size : size + len(GPT_SIGNATURE)] == GPT_SIGNATURE:
            table = _parse_gpt(head, image_size, size, sector_size)
            break
    if table is None:
        table = _parse_mbr(head, image_size, sector_size, sectors or {})
    if table is None or not is_iso9660(head):
        return table
    note = "ISO 9660 hybrid image: an ISO 9660 volume descriptor follows the partition table"
    return replace(table, notes=table.notes + (note,), iso9660=True)


def is_iso9660(head: bytes) -> bool:
    """An ISO 9660 primary volume descriptor at 32 KiB (with or without a partition table)."""
    return head[ISO9660_OFFSET : ISO9660_OFFSET + len(ISO9660_MAGIC)] == ISO9660_MAGIC


# --- GPT ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _GptHeader:
    revision: int
    header_size: int
    header_crc: int
    my_lba: int
    alternate_lba: int
    first_usable: int
    last_usable: int
    disk_guid: str
    entries_lba: int
    entry_count: int
    entry_size: int
    entries_crc: int


def _read_gpt_header(sector: bytes) -> _GptHeader:
    (_, revision, header_size, header_crc, _, my_lba, alternate, first, last, guid, entries_lba, count,
     entry_size, entries_crc) = _GPT_HEADER.unpack_from(sector)
    return _GptHeader(revision, header_size, header_crc, my_lba, alternate, first, last,
                      str(uuid.UUID(bytes_le=guid)), entries_lba, count, entry_size, entries_crc)


def _header_crc(sector: bytes, header: _GptHeader) -> int:
    """CRC32 of the header with its own CRC field zeroed (UEFI 2.10 5.3.2)."""
    raw = bytearray(sector[: header.header_size])
    raw[16:20] = b"\0\0\0\0"
    return zlib.crc32(raw)


def _parse_gpt(head: bytes, image_size: int | None, ss: int, requested_ss: int) -> PartitionTable:
    problems: list[str] = []
    notes: list[str] = []
    if ss != requested_ss:
        notes.append(f"GPT found with {ss}-byte sectors, not {requested_ss}: the image is for disks with "
                     f"{ss}-byte logical sectors")
    sector = head[ss : ss * 2]
    header = _read_gpt_header(sector)
    problems += _check_gpt_header(sector, header, ss, image_size)
    problems += _check_protective_mbr(head, notes)
    partitions: tuple[Partition, ...] = ()
    entries = _entry_array(head, header, ss, problems)
    if entries is not None:
        crc = zlib.crc32(entries)
        if crc != header.entries_crc:
            problems.append(
                f"GPT partition entry array CRC32 is 0x{crc:08x}, the header says "
                f"0x{header.entries_crc:08x}: the entries are damaged"
            )
        partitions = _gpt_partitions(entries, header, ss)
        problems += _check_gpt_bounds(partitions, header, ss)
        problems += _check_overlaps(partitions)
        problems += _check_image_end(partitions, image_size)
    problems += _check_backup_header(head, header, ss)
    return PartitionTable(
        scheme="gpt",
        sector_size=ss,
        partitions=partitions,
        disk_guid=header.disk_guid,
        first_usable=header.first_usable,
        last_usable=header.last_usable,
        backup_lba=header.alternate_lba,
        entries_lba=header.entries_lba,
        entry_count=header.entry_count,
        entry_size=header.entry_size,
        problems=tuple(problems),
        notes=tuple(notes),
    )


def _check_gpt_header(sector: bytes, header: _GptHeader, ss: int, image_size: int | None) -> list[str]:
    problems: list[str] = []
    if not 92 <= header.header_size <= ss:
        return [f"GPT header size {header.header_size} is outside 92..{ss} bytes: the header is damaged"]
    crc = _header_crc(sector, header)
    if crc != header.header_crc:
        problems.append(
            f"GPT header CRC32 is 0x{crc:08x}, the header says 0x{header.header_crc:08x}: "
            "the primary header is damaged"
        )
    if header.my_lba != 1:
        problems.append(f"GPT header says it is at LBA {header.my_lba}, but it was found at LBA 1")
    if header.first_usable > header.last_usable:
        problems.append(
            f"GPT usable area is empty (first usable LBA {header.first_usable} > last {header.last_usable})"
        )
    if image_size is not None:
        last_lba = image_size // ss - 1
        if header.alternate_lba != last_lba:
            where = "beyond the end" if header.alternate_lba > last_lba else "before the end"
            problems.append(
                f"backup GPT header is at LBA {header.alternate_lba}, {where} of the image "
                f"(last LBA {last_lba}): the image was truncated or resized after partitioning"
            )
    return problems


def _check_protective_mbr(head: bytes, notes: list[str]) -> list[str]:
    if head[510:512] != MBR_SIGNATURE:
        return ["no protective MBR before the GPT (0x55AA signature missing at byte 510)"]
    types = [_MBR_ENTRY.unpack_from(head, _MBR_TABLE_OFFSET + 16 * i)[2] for i in range(4)]
    if MBR_PROTECTIVE_TYPE not in types:
        return ["the MBR before the GPT has no protective 0xEE entry: firmware may ignore the GPT"]
    if any(t not in (0, MBR_PROTECTIVE_TYPE) for t in types):
        notes.append("hybrid MBR: the protective MBR also lists real partitions")
    return []


def _entry_array(head: bytes, header: _GptHeader, ss: int, problems: list[str]) -> bytes | None:
    """The raw partition entry array, or None (with a problem) when it is absurd or not in `head`."""
    size, count = header.entry_size, header.entry_count
    if size < _GPT_ENTRY.size or size % 8 or size > 4096 or count > _MAX_GPT_ENTRIES:
        problems.append(
            f"GPT entry array of {count} entries of {size} bytes is not plausible: the header is damaged"
        )
        return None
    start = header.entries_lba * ss
    end = start + count * size
    if end > len(head):
        problems.append(
            f"GPT entry array (LBA {header.entries_lba}, {count} x {size} bytes) lies beyond the "
            f"first {len(head)} bytes read: partitions not listed"
        )
        return None
    return head[start:end]


def _gpt_partitions(entries: bytes, header: _GptHeader, ss: int) -> tuple[Partition, ...]:
    partitions = []
    for index in range(header.entry_count):
        fields = _GPT_ENTRY.unpack_from(entries, index * header.entry_size)
        type_le, unique_le, first, last, attrs, raw_name = fields
        if type_le == bytes(16):
            continue
        type_guid = str(uuid.UUID(bytes_le=type_le))
        partitions.append(
            Partition(
                number=index + 1,
                start=first * ss,
                size=max(0, last - first + 1) * ss,
                type_id=type_guid,
                type_name=gpt_type_name(type_guid),
                kind="gpt",
                name=raw_name.decode("utf-16-le", errors="replace").split("\0", 1)[0],
                uuid=str(uuid.UUID(bytes_le=unique_le)),
                attributes=attrs,
                bootable=bool(attrs & (1 << 2)),
            )
        )
    return tuple(partitions)


def _check_gpt_bounds(partitions: tuple[Partition, ...], header: _GptHeader, ss: int) -> list[str]:
    problems = []
    low, high = header.first_usable * ss, (header.last_usable + 1) * ss
    for part in partitions:
        first, last = part.start // ss, part.end // ss - 1
        if part.size == 0:
            problems.append(f"partition {part.number} ends before it starts")
        elif part.start < low or part.end > high:
            problems.append(
                f"partition {part.number} (LBA {first}-{last}) lies outside the usable area "
                f"(LBA {header.first_usable}-{header.last_usable})"
            )
    return problems


def _check_backup_header(head: bytes, header: _GptHeader, ss: int) -> list[str]:
    """Check the backup header when `head` holds it (small images, or a whole image passed)."""
    offset = header.alternate_lba * ss
    if header.alternate_lba <= 1 or offset + ss > len(head):
        return []
    sector = head[offset : offset + ss]
    if sector[:8] != GPT_SIGNATURE:
        return [f"no backup GPT header at LBA {header.alternate_lba} where the primary header says it is"]
    backup = _read_gpt_header(sector)
    if not 92 <= backup.header_size <= ss or _header_crc(sector, backup) != backup.header_crc:
        return [f"backup GPT header at LBA {header.alternate_lba} fails its CRC32 check"]
    return []


# --- MBR ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _MbrEntry:
    boot: int
    type: int
    lba: int
    sectors: int


def _mbr_entries(sector: bytes) -> list[_MbrEntry]:
    entries = []
    for i in range(4):
        boot, _, ptype, _, lba, sectors = _MBR_ENTRY.unpack_from(sector, _MBR_TABLE_OFFSET + 16 * i)
        entries.append(_MbrEntry(boot, ptype, lba, sectors))
    return entries


def _looks_like_boot_sector(sector: bytes) -> bool:
    """A filesystem boot sector (FAT, NTFS, exFAT) also ends in 0x55AA: that is no partition table."""
    return (
        sector[3:11] in (b"NTFS    ", b"EXFAT   ")
        or sector[0x36:0x39] == b"FAT"
        or sector[0x52:0x57] == b"FAT32"
    )


def _parse_mbr(head: bytes, image_size: int | None, ss: int,
               sectors: Mapping[int, bytes]) -> PartitionTable | None:
    if len(head) < 512 or head[510:512] != MBR_SIGNATURE:
        return None
    entries = _mbr_entries(head)
    if any(e.boot not in (0x00, 0x80) for e in entries):
        return None  # boot code or a filesystem boot sector where the table would be
    used = [(i + 1, e) for i, e in enumerate(entries) if e.type != 0 and e.sectors != 0]
    if _looks_like_boot_sector(head) and not used:
        return None
    problems: list[str] = []
    notes: list[str] = []
    partitions = [_mbr_partition(number, entry, 0, ss, "extended" if entry.type in MBR_EXTENDED_TYPES
                                 else "primary") for number, entry in used]
    missing: int | None = None
    for _, entry in used:
        if entry.type in MBR_EXTENDED_TYPES:
            chain = _EbrChain(head, sectors, entry.lba, ss)
            partitions += chain.walk()
            problems += chain.problems
            missing = chain.missing
            if missing is not None:
                notes.append(
                    f"logical partitions from number {5 + len(chain.found)} on are not listed: their EBR "
                    f"at byte {missing} lies beyond the first {len(head)} bytes read"
                )
            break  # DOS allows one extended partition; Linux ignores further ones too
    if any(e.type == MBR_PROTECTIVE_TYPE for _, e in used):
        problems.append(
            "the MBR has a GPT protective (0xEE) entry but no GPT header was found at LBA 1 "
            "(tried 512- and 4096-byte sectors): the GPT is damaged"
        )
    result = tuple(partitions)
    problems += _check_overlaps(result)
    problems += _check_image_end(result, image_size)
    return PartitionTable(
        scheme="mbr",
        sector_size=ss,
        partitions=result,
        disk_guid=f"{struct.unpack_from('<I', head, 0x1B8)[0]:08x}",
        problems=tuple(problems),
        notes=tuple(notes),
        missing_ebr=missing,
    )


def _mbr_partition(number: int, entry: _MbrEntry, base_lba: int, ss: int, kind: PartitionKind) -> Partition:
    return Partition(
        number=number,
        start=(base_lba + entry.lba) * ss,
        size=entry.sectors * ss,
        type_id=f"0x{entry.type:02x}",
        type_name=mbr_type_name(entry.type),
        kind=kind,
        bootable=entry.boot == 0x80,
    )


class _EbrChain:
    """Walk the EBR chain: each EBR holds one logical partition (relative to the EBR) and a link
    to the next EBR (relative to the extended partition's start)."""

    def __init__(self, head: bytes, sectors: Mapping[int, bytes], ext_lba: int, ss: int) -> None:
        self.head, self.sectors, self.ext_lba, self.ss = head, sectors, ext_lba, ss
        self.found: list[Partition] = []
        self.problems: list[str] = []
        self.missing: int | None = None  # byte offset of the first EBR we do not have

    def _sector(self, offset: int) -> bytes | None:
        if offset + 512 <= len(self.head):
            return self.head[offset : offset + 512]
        given = self.sectors.get(offset)
        return given[:512] if given is not None and len(given) >= 512 else None

    def walk(self) -> list[Partition]:
        ebr_lba, seen = self.ext_lba, set()
        while len(self.found) < _MAX_LOGICAL:
            if ebr_lba in seen:
                self.problems.append(f"the EBR chain loops back to LBA {ebr_lba}")
                break
            seen.add(ebr_lba)
            sector = self._sector(ebr_lba * self.ss)
            if sector is None:
                self.missing = ebr_lba * self.ss
                break
            if sector[510:512] != MBR_SIGNATURE:
                if self.found or any(sector):
                    self.problems.append(f"the EBR at LBA {ebr_lba} has no 0x55AA signature")
                break
            this, link = _mbr_entries(sector)[:2]
            if this.type != 0 and this.sectors != 0:
                self.found.append(_mbr_partition(5 + len(self.found), this, ebr_lba, self.ss, "logical"))
            if link.type not in MBR_EXTENDED_TYPES or link.lba == 0:
                break
            ebr_lba = self.ext_lba + link.lba
        return self.found


# --- checks shared by both schemes --------------------------------------------------------


def _contains(outer: Partition, inner: Partition) -> bool:
    return outer.is_container and inner.kind == "logical"


def _check_overlaps(partitions: tuple[Partition, ...]) -> list[str]:
    problems = []
    for i, a in enumerate(partitions):
        for b in partitions[i + 1 :]:
            if _contains(a, b) or _contains(b, a) or not a.size or not b.size:
                continue
            if a.start < b.end and b.start < a.end:
                problems.append(f"partitions {a.number} and {b.number} overlap")
    return problems


def _check_image_end(partitions: tuple[Partition, ...], image_size: int | None) -> list[str]:
    if image_size is None:
        return []
    return [
        f"partition {p.number} ends at byte {p.end}, beyond the end of the image ({image_size} bytes)"
        for p in partitions
        if p.end > image_size
    ]
