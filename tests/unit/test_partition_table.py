"""parse_partition_table against tables written by the real tools (sfdisk, fdisk, sgdisk).

sfdisk's own JSON dump of the same file is the oracle for offsets, types, GUIDs and names.
"""

from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bty_live.image.partition_table import parse_partition_table
from bty_live.image.partitions import Partition, PartitionTable

MiB = 1 << 20
ESP = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
LINUX_FS = "0fc63daf-8483-4772-8e79-3d69d8477de4"
ROOT_X86_64 = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"
ROOT_AARCH64 = "b921b045-1df0-41c3-af44-4c6f280d3fae"
MS_BASIC_DATA = "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7"
BIOS_BOOT = "21686148-6449-6e6f-744e-656564454649"
FREEBSD_ZFS = "516e7cba-6ecf-11d6-8ff8-00022d09712b"


#: a file is no block device: skip the re-read, kernel notification and signature wiping (~0.25 s each)
SFDISK_FILE_OPTIONS = ["-q", "--no-reread", "--no-tell-kernel", "--lock=no", "-w", "never", "-W", "never"]


def sfdisk(image: Path, script: str, size: int = 64 * MiB) -> Path:
    if not image.exists():
        with open(image, "wb") as f:
            f.truncate(size)
    subprocess.run(["sfdisk", *SFDISK_FILE_OPTIONS, str(image)], input=script, text=True, check=True,
                   capture_output=True)
    return image


def sfdisk_json(image: Path) -> dict[str, Any]:
    out = subprocess.run(["sfdisk", "-J", str(image)], check=True, capture_output=True, text=True).stdout
    table: dict[str, Any] = json.loads(out)["partitiontable"]
    return table


def parse_file(image: Path, head_size: int = MiB, **kwargs: Any) -> PartitionTable:
    with open(image, "rb") as f:
        head = f.read(head_size)
    table = parse_partition_table(head, image.stat().st_size, **kwargs)
    assert table is not None
    return table


def flip_byte(image: Path, offset: int) -> None:
    with open(image, "r+b") as f:
        f.seek(offset)
        value = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([value ^ 0xFF]))


GPT_SCRIPT = f"""label: gpt
size=32M, type=U, name="EFI system"
size=4M, type={BIOS_BOOT}
size=8M, type={ROOT_X86_64}, name=root, attrs="GUID:59"
size=4M, type=S
size=4M, type={MS_BASIC_DATA}, name=windata
type=L, name="données"
"""


@pytest.fixture
def gpt_image(tmp_path: Path) -> Path:
    return sfdisk(tmp_path / "gpt.img", GPT_SCRIPT)


# --- GPT ----------------------------------------------------------------------------------


def test_gpt_partitions_match_what_sfdisk_reports(gpt_image: Path) -> None:
    table = parse_file(gpt_image)
    expected = sfdisk_json(gpt_image)
    assert table.scheme == "gpt"
    assert table.sector_size == 512
    assert table.valid, table.problems
    assert len(table.partitions) == len(expected["partitions"])
    for part, want in zip(table.partitions, expected["partitions"], strict=True):
        assert part.number == int(want["node"].removeprefix(str(gpt_image)))
        assert part.start == want["start"] * 512
        assert part.size == want["size"] * 512
        assert part.type_id == want["type"].lower()
        assert part.uuid == want["uuid"].lower()
        assert part.name == want.get("name", "")


def test_gpt_header_fields_match_sfdisk_and_the_backup_header_is_the_last_sector(gpt_image: Path) -> None:
    table = parse_file(gpt_image)
    expected = sfdisk_json(gpt_image)
    assert table.disk_guid == expected["id"].lower()
    assert table.first_usable == expected["firstlba"]
    assert table.last_usable == expected["lastlba"]
    assert table.backup_lba == 64 * MiB // 512 - 1
    assert (table.entries_lba, table.entry_count, table.entry_size) == (2, 128, 128)


def test_gpt_type_guids_get_friendly_names(gpt_image: Path) -> None:
    names = [p.type_name for p in parse_file(gpt_image).partitions]
    assert names == [
        "EFI System",
        "BIOS boot",
        "Linux root (x86-64)",
        "Linux swap",
        "Microsoft basic data",
        "Linux filesystem",
    ]


def test_unknown_gpt_type_is_named_unknown_with_its_guid(tmp_path: Path) -> None:
    image = sfdisk(tmp_path / "odd.img", "label: gpt\nsize=4M, type=01234567-89ab-cdef-0123-456789abcdef\n")
    assert parse_file(image).partitions[0].type_name == "unknown (01234567-89ab-cdef-0123-456789abcdef)"


def test_gpt_partition_names_are_decoded_from_utf16(gpt_image: Path) -> None:
    assert parse_file(gpt_image).partitions[-1].name == "données"


def test_gpt_attribute_bits_are_kept_and_bit_2_means_legacy_bootable(tmp_path: Path) -> None:
    image = sfdisk(tmp_path / "attrs.img", 'label: gpt\nsize=4M, type=L, attrs="LegacyBIOSBootable GUID:60"\n'
                                           "size=4M, type=L\n")
    first, second = parse_file(image).partitions
    assert first.attributes == (1 << 2) | (1 << 60)
    assert first.bootable
    assert second.attributes == 0
    assert not second.bootable


def test_end_of_partitions_is_the_end_of_the_partition_that_ends_last(gpt_image: Path) -> None:
    expected = sfdisk_json(gpt_image)["partitions"]
    last_end = max((p["start"] + p["size"]) * 512 for p in expected)
    assert parse_file(gpt_image).end_of_partitions == last_end


def test_corrupted_gpt_header_byte_is_reported_as_a_header_crc_problem(gpt_image: Path) -> None:
    flip_byte(gpt_image, 512 + 48)  # inside last_usable_lba
    table = parse_file(gpt_image)
    assert not table.valid
    assert any("GPT header CRC32" in p for p in table.problems)
    assert not any("entry array CRC32" in p for p in table.problems)
    assert len(table.partitions) == 6  # still listed, so the user can see what was there


def test_corrupted_partition_entry_is_reported_as_an_entry_array_crc_problem(gpt_image: Path) -> None:
    flip_byte(gpt_image, 1024 + 56)  # first byte of partition 1's name
    table = parse_file(gpt_image)
    assert not table.valid
    assert any("entry array CRC32" in p for p in table.problems)
    assert not any("GPT header CRC32" in p for p in table.problems)


def test_backup_header_is_checked_when_the_whole_image_is_passed(tmp_path: Path) -> None:
    image = sfdisk(tmp_path / "small.img", "label: gpt\ntype=L\n", size=4 * MiB)
    assert parse_file(image, head_size=4 * MiB).valid
    flip_byte(image, 4 * MiB - 512 + 48)
    table = parse_file(image, head_size=4 * MiB)
    assert any("backup GPT header at LBA 8191 fails its CRC32" in p for p in table.problems)


def test_backup_header_not_at_the_end_of_the_image_is_a_problem(gpt_image: Path) -> None:
    with open(gpt_image, "rb") as f:
        head = f.read(MiB)
    grown = parse_partition_table(head, 128 * MiB)
    assert grown is not None
    assert any("backup GPT header is at LBA 131071, before the end" in p for p in grown.problems)
    assert parse_partition_table(head, None) == parse_file(gpt_image)  # size unknown: nothing to check


def test_partitions_beyond_a_truncated_image_are_problems(gpt_image: Path) -> None:
    with open(gpt_image, "rb") as f:
        head = f.read(MiB)
    table = parse_partition_table(head, 40 * MiB)
    assert table is not None
    assert any("partition 6 ends at byte" in p and "beyond the end of the image" in p for p in table.problems)
    assert any("beyond the end of the image (last LBA" in p for p in table.problems)


def test_gpt_with_4096_byte_sectors_is_found_when_the_512_probe_finds_no_header(tmp_path: Path) -> None:
    image = tmp_path / "4k.img"
    with open(image, "wb") as f:
        f.truncate(64 * MiB)
    # sfdisk has no sector-size option for files; fdisk -b does (g: new GPT, n: partition, t: type)
    subprocess.run(["fdisk", "-b", "4096", str(image)], input="g\nn\n\n\n+8M\nt\n1\nn\n\n\n\nw\n",
                   text=True, check=True, capture_output=True)
    table = parse_file(image)
    assert table.scheme == "gpt"
    assert table.sector_size == 4096
    assert table.valid, table.problems
    esp, linux = table.partitions
    assert (esp.start, esp.size, esp.type_name) == (256 * 4096, 8 * MiB, "EFI System")
    assert (linux.start, linux.type_name) == (2304 * 4096, "Linux filesystem")
    assert table.backup_lba == 64 * MiB // 4096 - 1
    assert any("4096-byte sectors" in note for note in table.notes)
    assert parse_file(image, sector_size=4096).notes == ()  # asked for 4096: nothing unexpected


def test_discoverable_root_type_gives_the_architecture_and_the_root(gpt_image: Path) -> None:
    table = parse_file(gpt_image)
    assert table.arch_hint == "x86_64"
    root = table.find_root()
    assert root is not None and root.number == 3


def test_aarch64_root_type_gives_aarch64(tmp_path: Path) -> None:
    image = sfdisk(tmp_path / "arm.img", f"label: gpt\nsize=8M, type=U\nsize=8M, type={ROOT_AARCH64}\n")
    table = parse_file(image)
    assert table.arch_hint == "aarch64"
    assert table.partitions[1].type_name == "Linux root (ARM-64)"


def test_without_a_root_type_the_root_is_found_by_gpt_name(tmp_path: Path) -> None:
    image = sfdisk(tmp_path / "named.img", "label: gpt\nsize=8M, type=U\nsize=8M, type=L, name=rootfs\n")
    table = parse_file(image)
    assert table.arch_hint is None
    root = table.find_root()
    assert root is not None and root.number == 2


def test_without_a_root_type_or_name_there_is_no_root(tmp_path: Path) -> None:
    image = sfdisk(tmp_path / "plain.img", "label: gpt\nsize=8M, type=U\nsize=8M, type=L, name=data\n")
    assert parse_file(image).find_root() is None


def test_freebsd_types_have_names(tmp_path: Path) -> None:
    image = sfdisk(tmp_path / "bsd.img", f"label: gpt\nsize=8M, type={FREEBSD_ZFS}\n")
    assert parse_file(image).partitions[0].type_name == "FreeBSD ZFS"


def test_hybrid_mbr_is_noted(gpt_image: Path) -> None:
    # what `sgdisk -h 1` does (sgdisk sleeps a second per call): list partition 1 in the MBR too
    with open(gpt_image, "r+b") as f:
        f.seek(0x1BE + 16)
        f.write(_mbr_entry(0x80, 0xEF, 2048, 65536))
    table = parse_file(gpt_image)
    assert table.scheme == "gpt"
    assert any("hybrid MBR" in note for note in table.notes)


def test_gpt_without_protective_mbr_is_a_problem(gpt_image: Path) -> None:
    with open(gpt_image, "r+b") as f:
        f.write(bytes(512))
    table = parse_file(gpt_image)
    assert table.scheme == "gpt"
    assert any("no protective MBR" in p for p in table.problems)


def test_protective_mbr_without_gpt_header_is_reported_as_a_damaged_gpt(gpt_image: Path) -> None:
    with open(gpt_image, "r+b") as f:
        f.seek(512)
        f.write(bytes(512))
    table = parse_file(gpt_image)
    assert table.scheme == "mbr"
    assert table.partitions[0].type_name == "GPT protective"
    assert any("no GPT header was found" in p for p in table.problems)


# --- MBR ----------------------------------------------------------------------------------

MBR_SCRIPT = "label: dos\nlabel-id: 0x1234abcd\n,16M,c,*\n,,E\n,8M,83\n,8M,82\n"


def test_mbr_primary_extended_and_logical_partitions_match_sfdisk(tmp_path: Path) -> None:
    image = sfdisk(tmp_path / "mbr.img", MBR_SCRIPT)
    table = parse_file(image, head_size=64 * MiB)  # the EBRs lie at 17 and 26 MiB
    expected = sfdisk_json(image)
    assert table.scheme == "mbr"
    assert table.valid, table.problems
    assert table.disk_guid == "1234abcd"
    assert [p.number for p in table.partitions] == [int(p["node"].removeprefix(str(image)))
                                                    for p in expected["partitions"]]
    for part, want in zip(table.partitions, expected["partitions"], strict=True):
        assert (part.start, part.size) == (want["start"] * 512, want["size"] * 512)
        assert int(part.type_id, 16) == int(want["type"], 16)
        assert part.bootable == want.get("bootable", False)
    assert [p.kind for p in table.partitions] == ["primary", "extended", "logical", "logical"]


def test_mbr_type_bytes_get_friendly_names(tmp_path: Path) -> None:
    table = parse_file(sfdisk(tmp_path / "mbr.img", MBR_SCRIPT), head_size=64 * MiB)
    assert [p.type_name for p in table.partitions] == ["W95 FAT32 (LBA)", "Extended", "Linux",
                                                       "Linux swap / Solaris"]


def test_logical_partitions_whose_ebr_lies_beyond_the_head_are_noted_not_guessed(tmp_path: Path) -> None:
    image = sfdisk(tmp_path / "mbr.img", MBR_SCRIPT)
    table = parse_file(image, head_size=2 * MiB)  # the extended partition starts at 17 MiB
    assert [p.kind for p in table.partitions] == ["primary", "extended"]
    assert any("logical partitions from number 5 on are not listed" in n for n in table.notes)
    assert table.missing_ebr == 17 * MiB
    assert table.valid


def test_ebrs_beyond_the_head_can_be_supplied_as_sectors_one_at_a_time(tmp_path: Path) -> None:
    image = sfdisk(tmp_path / "mbr.img", MBR_SCRIPT)
    data = image.read_bytes()
    head, sectors = data[:MiB], {}
    table = parse_partition_table(head, len(data))
    while table is not None and table.missing_ebr is not None:
        sectors[table.missing_ebr] = data[table.missing_ebr : table.missing_ebr + 512]
        table = parse_partition_table(head, len(data), sectors=sectors)
    assert sorted(sectors) == [17 * MiB, 26 * MiB]  # one EBR before each logical partition
    assert table == parse_file(image, head_size=64 * MiB)
    assert table.notes == ()


def test_mbr_root_is_found_by_filesystem_label(tmp_path: Path) -> None:
    table = parse_file(sfdisk(tmp_path / "mbr.img", MBR_SCRIPT), head_size=64 * MiB)
    assert table.find_root() is None
    root = table.find_root({1: "BOOT", 5: "root"})
    assert root is not None and root.number == 5


def _mbr_entry(boot: int, ptype: int, lba: int, sectors: int) -> bytes:
    return struct.pack("<B3sB3sII", boot, b"\0\0\0", ptype, b"\0\0\0", lba, sectors)


def _hand_made_mbr(*entries: bytes) -> bytes:
    sector = bytearray(512)
    for i, entry in enumerate(entries):
        sector[0x1BE + 16 * i : 0x1BE + 16 * (i + 1)] = entry
    sector[510:512] = b"\x55\xaa"
    return bytes(sector) + bytes(MiB - 512)


def test_overlapping_mbr_partitions_are_a_problem() -> None:
    head = _hand_made_mbr(_mbr_entry(0, 0x83, 2048, 4096), _mbr_entry(0, 0x83, 4000, 4096))
    table = parse_partition_table(head, 64 * MiB)
    assert table is not None
    assert table.problems == ("partitions 1 and 2 overlap",)


def test_mbr_with_a_boot_flag_other_than_0_or_0x80_is_not_a_partition_table() -> None:
    head = _hand_made_mbr(_mbr_entry(0x12, 0x83, 2048, 4096))
    assert parse_partition_table(head, 64 * MiB) is None


def test_a_fat_filesystem_without_partition_table_is_not_mistaken_for_an_mbr(tmp_path: Path) -> None:
    image = tmp_path / "superfloppy.img"
    subprocess.run(["mkfs.vfat", "-C", str(image), str(32 * 1024)], check=True, capture_output=True)
    with open(image, "rb") as f:
        head = f.read(MiB)
    assert head[510:512] == b"\x55\xaa"  # the boot sector carries the MBR signature too
    assert parse_partition_table(head, image.stat().st_size) is None


def test_no_signature_means_no_partition_table() -> None:
    assert parse_partition_table(bytes(MiB), 64 * MiB) is None
    assert parse_partition_table(b"", None) is None


def test_iso9660_descriptor_at_32k_is_noted_as_hybrid(tmp_path: Path) -> None:
    image = sfdisk(tmp_path / "hybrid.img", "label: dos\n,,17,*\n")
    with open(image, "r+b") as f:
        f.seek(0x8000)
        f.write(b"\x01CD001\x01")
    table = parse_file(image)
    assert table.scheme == "mbr"
    assert table.iso9660
    assert any("ISO 9660 hybrid" in n for n in table.notes)
    assert not parse_file(sfdisk(tmp_path / "plain.img", "label: dos\n,,83\n")).iso9660


def test_partitions_are_frozen() -> None:
    part = Partition(number=1, start=0, size=1, type_id="0x83", type_name="Linux")
    with pytest.raises(AttributeError):
        part.size = 2  # type: ignore[misc]
