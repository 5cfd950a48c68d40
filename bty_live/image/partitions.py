"""What a partition table says: the partition and table dataclasses, and the names of partition
types (Discoverable Partitions GUIDs, MBR type bytes). Pure data; reading a table from an
image's head is `bty_live.image.partition_table`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Scheme = Literal["gpt", "mbr"]
PartitionKind = Literal["gpt", "primary", "extended", "logical"]

# --- type tables --------------------------------------------------------------------------

#: Discoverable Partitions root types: GUID -> architecture (as `uname -m` spells it)
ROOT_TYPES: dict[str, str] = {
    "4f68bce3-e8cd-4db1-96e7-fbcaf984b709": "x86_64",
    "b921b045-1df0-41c3-af44-4c6f280d3fae": "aarch64",
    "44479540-f297-41b2-9af7-d131d5f0458a": "x86",
    "69dad710-2ce4-4e3c-b16c-21a1d49abed3": "arm",
    "72ec70a6-cf74-40e6-bd49-4bda08e8f224": "riscv64",
}

#: Discoverable Partitions /usr types: GUID -> architecture
USR_TYPES: dict[str, str] = {
    "8484680c-9521-48c6-9c11-b0720656f69e": "x86_64",
    "b0e01050-ee5f-4390-949a-9101b17104e9": "aarch64",
}

GPT_TYPE_NAMES: dict[str, str] = {
    "c12a7328-f81f-11d2-ba4b-00a0c93ec93b": "EFI System",
    "21686148-6449-6e6f-744e-656564454649": "BIOS boot",
    "bc13c2ff-59e6-4262-a352-b275fd6f7172": "Linux extended boot (XBOOTLDR)",
    "0fc63daf-8483-4772-8e79-3d69d8477de4": "Linux filesystem",
    "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f": "Linux swap",
    "e6d6d379-f507-44c2-a23c-238f2a3df928": "Linux LVM",
    "a19d880f-05fc-4d3b-a006-743f0f84911e": "Linux RAID",
    "933ac7e1-2eb4-4f13-b844-0e14e2aef915": "Linux home",
    "3b8f8425-20e0-4f3b-907f-1a25a76f98e8": "Linux server data (/srv)",
    "4d21b016-b534-45c2-a9fb-5c16e091fd2d": "Linux variable data (/var)",
    "7ec6f557-3bc5-4aca-b293-16ef5df639d1": "Linux temporary data (/var/tmp)",
    "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5": "Linux root verity (x86-64)",
    "df3300ce-d69f-4c92-978c-9bfb0f38d820": "Linux root verity (ARM-64)",
    "77ff5f63-e7b6-4633-acf4-1565b864c0e6": "Linux /usr verity (x86-64)",
    "6e11a4e7-fbca-4ded-b9e9-e1a512bb664e": "Linux /usr verity (ARM-64)",
    "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7": "Microsoft basic data",
    "e3c9e316-0b5c-4db8-817d-f92df00215ae": "Microsoft reserved (MSR)",
    "de94bba4-06d1-4d40-a16a-bfd50179d6ac": "Windows recovery environment",
    "83bd6b9d-7f41-11dc-be0b-001560b84f0f": "FreeBSD boot",
    "516e7cb4-6ecf-11d6-8ff8-00022d09712b": "FreeBSD data",
    "516e7cb5-6ecf-11d6-8ff8-00022d09712b": "FreeBSD swap",
    "516e7cb6-6ecf-11d6-8ff8-00022d09712b": "FreeBSD UFS",
    "516e7cba-6ecf-11d6-8ff8-00022d09712b": "FreeBSD ZFS",
}
_ARCH_LABEL = {"x86_64": "x86-64", "aarch64": "ARM-64", "x86": "x86", "arm": "ARM", "riscv64": "RISC-V-64"}
GPT_TYPE_NAMES.update({guid: f"Linux root ({_ARCH_LABEL[arch]})" for guid, arch in ROOT_TYPES.items()})
GPT_TYPE_NAMES.update({guid: f"Linux /usr ({_ARCH_LABEL[arch]})" for guid, arch in USR_TYPES.items()})

MBR_EXTENDED_TYPES = frozenset({0x05, 0x0F, 0x85})
MBR_PROTECTIVE_TYPE = 0xEE

MBR_TYPE_NAMES: dict[int, str] = {
    0x01: "FAT12",
    0x04: "FAT16 <32M",
    0x05: "Extended",
    0x06: "FAT16",
    0x07: "HPFS/NTFS/exFAT",
    0x0B: "W95 FAT32",
    0x0C: "W95 FAT32 (LBA)",
    0x0E: "W95 FAT16 (LBA)",
    0x0F: "W95 Extended (LBA)",
    0x11: "Hidden FAT12",
    0x17: "Hidden HPFS/NTFS",
    0x1B: "Hidden W95 FAT32",
    0x1C: "Hidden W95 FAT32 (LBA)",
    0x27: "Hidden NTFS WinRE",
    0x82: "Linux swap / Solaris",
    0x83: "Linux",
    0x85: "Linux extended",
    0x8E: "Linux LVM",
    0xA5: "FreeBSD",
    0xA6: "OpenBSD",
    0xA9: "NetBSD",
    0xAF: "HFS / HFS+",
    0xDA: "Non-FS data",
    0xEA: "Linux extended boot",
    0xEE: "GPT protective",
    0xEF: "EFI (FAT-12/16/32)",
    0xFD: "Linux raid autodetect",
}

ROOT_NAMES = frozenset({"root", "rootfs"})


def gpt_type_name(type_guid: str) -> str:
    return GPT_TYPE_NAMES.get(type_guid.lower(), f"unknown ({type_guid.lower()})")


def mbr_type_name(type_byte: int) -> str:
    return MBR_TYPE_NAMES.get(type_byte, f"unknown (0x{type_byte:02x})")


# --- results ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Partition:
    number: int  # GPT: entry index + 1; MBR: 1-4 primary, 5.. logical (as Linux numbers them)
    start: int  # bytes from the start of the image
    size: int  # bytes
    type_id: str  # GPT: type GUID in lower case; MBR: the type byte as "0x83"
    type_name: str  # friendly name, or "unknown (<type_id>)"
    kind: PartitionKind = "gpt"
    name: str = ""  # GPT partition name (PARTLABEL); MBR has none
    uuid: str | None = None  # GPT unique partition GUID (PARTUUID)
    attributes: int = 0  # GPT attribute bits (0 required, 2 legacy BIOS bootable, 60 read-only, ...)
    bootable: bool = False  # MBR boot flag 0x80, or GPT attribute bit 2

    @property
    def end(self) -> int:
        """One past the last byte."""
        return self.start + self.size

    @property
    def is_container(self) -> bool:
        """An MBR extended partition: it holds logical partitions, never a filesystem."""
        return self.kind == "extended"

    @property
    def arch(self) -> str | None:
        """The architecture a Discoverable Partitions root or /usr type names, else None."""
        return ROOT_TYPES.get(self.type_id) or USR_TYPES.get(self.type_id)


@dataclass(frozen=True)
class PartitionTable:
    scheme: Scheme
    sector_size: int
    partitions: tuple[Partition, ...]
    #: GPT disk GUID, or the MBR disk signature as 8 hex digits (blkid's PTUUID)
    disk_guid: str | None = None
    first_usable: int | None = None  # LBA, GPT only
    last_usable: int | None = None  # LBA, GPT only
    backup_lba: int | None = None  # LBA of the alternate (backup) GPT header
    entries_lba: int | None = None  # GPT only
    entry_count: int | None = None  # GPT only
    entry_size: int | None = None  # GPT only
    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    iso9660: bool = False  # an ISO 9660 volume descriptor sits at 32 KiB (hybrid ISO)
    #: byte offset of an EBR that lies beyond the bytes given, so its logical partitions are missing
    missing_ebr: int | None = None

    @property
    def valid(self) -> bool:
        """No problems: CRCs match, entries are in bounds and do not overlap."""
        return not self.problems

    @property
    def end_of_partitions(self) -> int:
        """Bytes: one past the last byte of the partition that ends last (0 without partitions)."""
        return max((p.end for p in self.partitions), default=0)

    @property
    def arch_hint(self) -> str | None:
        """The architecture of the first Discoverable Partitions root (or /usr) partition."""
        for types in (ROOT_TYPES, USR_TYPES):
            for part in self.partitions:
                if part.type_id in types:
                    return types[part.type_id]
        return None

    def find_root(self, labels: Mapping[int, str | None] | None = None) -> Partition | None:
        """The root partition: by Discoverable Partitions type, else by name or label.

        `labels` maps partition numbers to filesystem labels (from fsprobe), which MBR tables
        need because they have no partition names.
        """
        for part in self.partitions:
            if part.type_id in ROOT_TYPES:
                return part
        labels = labels or {}
        for part in self.partitions:
            names = {part.name, labels.get(part.number) or ""}
            if any(n.strip().lower() in ROOT_NAMES for n in names):
                return part
        return None

    def partition(self, number: int) -> Partition | None:
        return next((p for p in self.partitions if p.number == number), None)
