"""What `bty capture` decides before reading a byte: which disks may be read (the eligibility rules
read the other way), how far --trim reads and the GPT it regenerates, the free-space rule, and
the os a manifest gets. Pure code, on tables written by sfdisk into plain files."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bty_live.capture.plan import Space, space_verdict, trim_length, worst_case_bytes
from bty_live.disk.eligibility import EligibilityContext, read_reasons, require_readable
from bty_live.disk.model import BackingFile, Disk, Opener, Partition, Protected
from bty_live.errors import TargetIOError, TargetRefusedError, UsageError
from bty_live.image.fsprobe import FsInfo
from bty_live.image.os_guess import os_family, parse_os_release
from bty_live.image.partition_table import parse_partition_table
from bty_live.image.partitions import PartitionTable

MiB = 1 << 20
GiB = 1 << 30
NOTHING = EligibilityContext()
SFDISK_FILE_OPTIONS = ["-q", "--no-reread", "--no-tell-kernel", "--lock=no", "-w", "never", "-W", "never"]


def make_disk(**fields: Any) -> Disk:
    return Disk(name="sdb", path="/dev/sdb", devnum=(8, 16), size=8 * GiB, transport="usb", **fields)


def make_partition(**fields: Any) -> Partition:
    return Partition(name="sdb1", path="/dev/sdb1", devnum=(8, 17), number=1, start=MiB, size=GiB, **fields)


# -- the read rules -------------------------------------------------------------------------------


def test_a_read_only_disk_may_be_captured_reading_changes_nothing() -> None:
    assert read_reasons(make_disk(read_only=True), NOTHING) == ()


def test_a_mounted_partition_is_named_with_the_fix() -> None:
    disk = make_disk(partitions=(make_partition(mountpoints=("/mnt/data",)),))
    with pytest.raises(TargetRefusedError) as refused:
        require_readable(disk, NOTHING)
    assert str(refused.value) == ("refusing to capture /dev/sdb: has /mnt/data mounted (from sdb1); unmount it "
                                  "first, a mounted filesystem changes while it is read")


def test_swap_holders_and_writers_are_each_refused_by_name() -> None:
    disk = make_disk(partitions=(make_partition(swap=True, holders=("dm-0",)),),
                     writers=(Opener(pid=42, command="dd", node="sdb"),))
    assert read_reasons(disk, NOTHING) == (
        "in use by dm-0 (device-mapper/LVM) on sdb1; release it first (vgchange -an, dmsetup remove, "
        "mdadm --stop), a holder writes to the disk while it is read",
        "open for writing by PID 42 (dd): close it first",
        "has active swap on sdb1; swapoff /dev/sdb1 first, swap changes while it is read",
    )


def test_the_disk_holding_the_output_and_a_loop_backed_by_it_are_refused() -> None:
    output = Protected(path="/srv/out.img.zst", what="the output file", devnums=frozenset({(8, 16)}),
                       files=frozenset({(1, 2)}))
    ctx = EligibilityContext(protected=(output,))
    assert read_reasons(make_disk(), ctx) == (
        "holds the output file /srv/out.img.zst (its filesystem is on this disk): write the capture to another disk",)
    loop = Disk(name="loop3", path="/dev/loop3", devnum=(7, 3), size=GiB, transport="loop",
                backing_chain=(BackingFile(loop="loop3", path="/srv/out.img.zst", inode=(1, 2)),))
    assert read_reasons(loop, ctx) == (
        "holds the output file /srv/out.img.zst (its backing file /srv/out.img.zst is it)",)


# -- --trim ---------------------------------------------------------------------------------------


def table_file(path: Path, script: str, size: int = 64 * MiB) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    subprocess.run(["sfdisk", *SFDISK_FILE_OPTIONS, str(path)], input=script, text=True, check=True,
                   capture_output=True)
    return path


def parse(path: Path) -> tuple[bytes, PartitionTable]:
    """The first MiB, and the table read from the whole file (EBRs beyond the first MiB included)."""
    data = path.read_bytes()
    table = parse_partition_table(data, None)
    assert table is not None
    return data[:MiB], table


def test_trim_of_a_gpt_disk_keeps_both_tables_valid_at_the_new_end(tmp_path: Path) -> None:
    disk = table_file(tmp_path / "gpt.img", "label: gpt\nstart=2048, size=8192, type=uefi\n"
                                            "start=10240, size=30720, type=linux\n")  # ends at 20 MiB of 64
    head, table = parse(disk)

    length, patches = trim_length(table, head, make_disk(), 64 * MiB)

    assert length == 21 * MiB  # 20 MiB of partitions + the backup GPT (33 sectors), to a whole MiB
    image = bytearray(disk.read_bytes()[:length])
    for patch in patches:
        image[patch.offset : patch.end] = patch.data
    trimmed = tmp_path / "trimmed.img"
    trimmed.write_bytes(image)
    sgdisk = subprocess.run(["sgdisk", "-v", str(trimmed)], capture_output=True, text=True)
    assert "No problems found" in sgdisk.stdout, sgdisk.stdout
    assert subprocess.run(["sfdisk", "--verify", str(trimmed)], capture_output=True).returncode == 0
    again = parse_partition_table(bytes(image), length)  # the whole image: both headers checked
    assert again is not None and again.valid and again.backup_lba == length // 512 - 1
    assert again.partitions == table.partitions
    protective_size = struct.unpack_from("<I", image, 0x1BE + 12)[0]
    assert protective_size == length // 512 - 1  # the protective MBR covers the new disk, not the old


def test_trim_of_an_mbr_disk_keeps_the_extended_partition_and_its_logical_ones(tmp_path: Path) -> None:
    disk = table_file(tmp_path / "mbr.img", "label: dos\nstart=2048, size=8192, type=83\n"
                                            "start=20480, size=40960, type=5\n"
                                            "start=22528, size=8192, type=83\nstart=32768, size=8192, type=83\n")
    head, table = parse(disk)
    assert [p.number for p in table.partitions] == [1, 2, 5, 6]

    length, patches = trim_length(table, head, make_disk(), 64 * MiB)

    assert length == 30 * MiB and patches == ()  # the end of the extended partition, after its logical ones


def test_trim_refuses_a_disk_without_a_table_and_a_damaged_one(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--trim needs a partition table"):
        trim_length(None, bytes(MiB), make_disk(), 64 * MiB)
    disk = table_file(tmp_path / "gpt.img", "label: gpt\nstart=2048, size=8192, type=uefi\n")
    data = bytearray(disk.read_bytes()[:MiB])
    data[1024 + 8] ^= 0xFF  # the first partition entry: its CRC32 no longer matches
    table = parse_partition_table(bytes(data), None)
    assert table is not None
    with pytest.raises(UsageError, match="the partition table of /dev/sdb is damaged"):
        trim_length(table, bytes(data), make_disk(), 64 * MiB)


def test_trim_captures_the_whole_disk_when_the_partitions_fill_it(tmp_path: Path) -> None:
    disk = table_file(tmp_path / "full.img", "label: gpt\nstart=2048, type=linux\n")
    head, table = parse(disk)
    assert trim_length(table, head, make_disk(), 64 * MiB) == (64 * MiB, ())


# -- free space -----------------------------------------------------------------------------------


def test_free_space_is_checked_against_the_worst_case_and_the_filesystems_use() -> None:
    worst = worst_case_bytes(GiB)
    assert worst > GiB
    assert space_verdict(Space(free=worst, worst_case=worst, in_use=None), force=False) is None
    warning = space_verdict(Space(free=600 * MiB, worst_case=worst, in_use=500 * MiB), force=False)
    assert warning is not None and "it fits only if the disk compresses" in warning
    with pytest.raises(TargetIOError, match="only 400 MiB free for the output, less than the 500 MiB"):
        space_verdict(Space(free=400 * MiB, worst_case=worst, in_use=500 * MiB), force=False)
    assert space_verdict(Space(free=400 * MiB, worst_case=worst, in_use=500 * MiB), force=True) is not None


# -- the os a manifest gets -------------------------------------------------------------------------


def test_os_release_gives_id_and_version() -> None:
    assert parse_os_release('PRETTY_NAME="Debian GNU/Linux 12"\nID=debian\nVERSION_ID="12"\n') == "debian-12"
    assert parse_os_release("ID=arch\n") == "arch"
    assert parse_os_release("NAME=nothing\n") == ""


def test_the_filesystems_give_the_family_and_a_mix_gives_none(tmp_path: Path) -> None:
    _, table = parse(table_file(tmp_path / "t.img", "label: gpt\nstart=2048, size=8192, type=uefi\n"
                                                    "start=10240, size=8192, type=linux\n"))
    assert os_family(table, {1: FsInfo("vfat"), 2: FsInfo("ext4")}) == "linux"
    assert os_family(None, {0: FsInfo("ntfs")}) == "windows"
    assert os_family(table, {1: FsInfo("vfat"), 2: FsInfo("ntfs")}) == ""  # Linux type, NTFS inside
    assert os_family(None, {0: FsInfo("vfat")}) == ""
