"""The stick's BTY_IMAGES partition: found on the stick only, grown to the end of a larger stick
without ever losing an image, resumed after a power cut, mounted at /run/bty/images.

The decisions (bty_live.stick.images_growth) are plain unit tests. The effects
(bty_live.stick.images_partition) run on real loop devices holding what a raw writer leaves on a
stick larger than the image: the image's GPT, its backup where the image ended, and an exFAT
BTY_IMAGES partition with files on it.

Mounting exFAT: the module mounts with `mount -t exfat` (the stick's kernel driver). Where the
kernel running the tests has no exFAT driver, the `exfat` fixture routes exactly those mounts to
exfat-fuse (`mount -t exfat-fuse`, the same options): the same on-disk format, real writes and
reads; only the driver differs. With neither driver the tests that mount are skipped, saying so.

The kernel's own names of partitions (sysfs PARTNAME, read when it scans a table) are not
covered here: partitions of loop devices attached without partscan are added by partx (BLKPG),
which gives them no name, and a kernel without a GPT parser (CONFIG_EFI_PARTITION) has none
either. So the boot-time branch "the partition is named bty-grow:..., resume it" is driven
here by calling `resume` with the journal read from the disk, as that branch does; the
QEMU tests (tests/e2e/test_live_stick.py) cut the power for real.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from bty_live.stick import images_partition as ip
from bty_live.stick.images_growth import (
    GPT_TAIL,
    LABEL,
    META_ALLOWANCE,
    MIB,
    MIN_GAIN,
    GrowthPlan,
    Journal,
    Partition,
    Refused,
    backup_gpt_misplaced,
    edit_dump,
    exfat_dirty,
    growing_disabled,
    is_journal_name,
    parse_journal,
    parse_table,
    plan_growth,
    refuse_unless_files_fit,
    refuse_unless_last,
    worth_growing,
)
from bty_live.system.run import run
from tests.conftest import LoopDevice

MakeLoop = Callable[..., LoopDevice]
SECTORS_PER_MIB = MIB // 512
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
BASIC_DATA = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"


def part(start_mib: float, size_mib: float, number: int = 3, name: str = LABEL) -> Partition:
    return Partition(node=f"/dev/sda{number}", number=number, name=name,
                     start=int(start_mib * SECTORS_PER_MIB), size=int(size_mib * SECTORS_PER_MIB))


# =========================================================================== the growth plan


class TestGrowthPlan:
    def test_a_partition_grows_to_the_last_usable_sector_rounded_down_to_a_mib(self) -> None:
        images = part(300, 200)
        end = 4000 * SECTORS_PER_MIB - 33  # one past the last usable LBA of a 4000 MiB stick
        plan = plan_growth(images, end, 512)
        assert plan is not None
        assert plan.new_size == (end - images.start) // SECTORS_PER_MIB * SECTORS_PER_MIB
        assert images.start + plan.new_size <= end

    def test_the_block_copy_goes_to_the_end_of_the_stick_mib_aligned_and_as_long_as_the_partition(self) -> None:
        images = part(300, 200)
        end = 4000 * SECTORS_PER_MIB - 33
        plan = plan_growth(images, end, 512)
        assert plan is not None
        assert plan.copy_size == images.size
        assert plan.copy_start % SECTORS_PER_MIB == 0
        assert plan.copy_start + plan.copy_size <= end  # inside the grown partition
        assert end - (plan.copy_start + plan.copy_size) < SECTORS_PER_MIB  # as far back as alignment allows
        assert plan.copy_start >= images.end  # never over the partition it copies

    def test_with_4096_byte_sectors_mib_alignment_is_256_sectors(self) -> None:
        images = Partition(node="/dev/sda3", number=3, name=LABEL, start=300 * 256, size=200 * 256)
        end = 4000 * 256 - 5
        plan = plan_growth(images, end, 4096)
        assert plan is not None
        assert plan.copy_start % 256 == 0 and plan.new_size % 256 == 0
        assert plan.copy_start + plan.copy_size <= end

    def test_less_than_64_mib_to_gain_is_not_worth_a_rebuild(self) -> None:
        images = part(300, 200)
        assert plan_growth(images, images.end + 63 * SECTORS_PER_MIB, 512) is None
        assert MIN_GAIN == 64 * MIB

    def test_without_room_for_a_full_copy_after_the_partition_growing_is_refused_and_the_user_told_what_to_do(
            self) -> None:
        images = part(300, 200)
        end = images.end + 100 * SECTORS_PER_MIB  # worth growing, but a copy of 200 MiB does not fit in 100
        with pytest.raises(Refused) as refused:
            plan_growth(images, end, 512)
        message = str(refused.value)
        assert "growing it safely needs room for a full copy" in message
        assert "100 MiB unused after BTY_IMAGES (200 MiB)" in message
        assert "The images stay as they are" in message

    def test_a_copy_that_just_fits_after_the_partition_is_planned(self) -> None:
        images = part(300, 200)
        plan = plan_growth(images, images.end + 200 * SECTORS_PER_MIB, 512)
        assert plan == GrowthPlan(new_size=400 * SECTORS_PER_MIB, copy_start=images.end, copy_size=images.size)

    def test_only_the_last_partition_is_grown(self) -> None:
        images, after = part(300, 200, number=3), part(500, 10, number=4, name="other")
        with pytest.raises(Refused, match="/dev/sda3 is not the last partition of /dev/sda; not grown"):
            refuse_unless_last([part(1, 299, number=1, name="root"), images, after], images, "sda")
        refuse_unless_last([part(1, 299, number=1, name="root"), images], images, "sda")

    def test_the_files_written_back_must_stay_clear_of_the_copy(self) -> None:
        images = part(300, 200)
        plan = plan_growth(images, 4000 * SECTORS_PER_MIB - 33, 512)
        assert plan is not None
        room = (plan.copy_start - images.start) * 512
        # each file takes its size rounded up to a MiB, plus a MiB; the new exFAT META_ALLOWANCE
        fits = room - META_ALLOWANCE - 2 * MIB
        refuse_unless_files_fit(plan, images, 512, [fits - MIB, MIB])
        with pytest.raises(Refused, match="would not leave the copy at the end of the stick untouched"):
            refuse_unless_files_fit(plan, images, 512, [fits - MIB, MIB + 1])


class TestCheapTest:
    """images-mount (bash) and `start` decide from sysfs alone whether to try: 512-byte units."""

    def test_the_last_partition_with_64_mib_after_it_is_worth_trying(self) -> None:
        parts = [part(1, 99, number=1, name="root"), part(100, 200, number=2)]
        disk = parts[1].end + GPT_TAIL + 64 * SECTORS_PER_MIB
        assert worth_growing(parts, "/dev/sda2", disk)
        assert not worth_growing(parts, "/dev/sda2", disk - 1)

    def test_a_partition_that_is_not_the_last_is_not(self) -> None:
        parts = [part(100, 200, number=2), part(1, 99, number=1, name="root")]
        assert not worth_growing(parts, "/dev/sda1", 10_000 * SECTORS_PER_MIB)
        assert not worth_growing([], "/dev/sda1", 10_000 * SECTORS_PER_MIB)

    def test_a_backup_gpt_short_of_the_end_means_the_image_was_written_to_a_larger_stick(self) -> None:
        assert not backup_gpt_misplaced(lastlba=1000 - 34, disk_sectors=1000)
        assert backup_gpt_misplaced(lastlba=1000 - 35, disk_sectors=1000)

    def test_bty_live_grow_0_on_the_kernel_command_line_turns_growing_off(self) -> None:
        for value in ("0", "no", "off", "false"):
            assert growing_disabled(f"quiet bty-live.grow={value} console=ttyS0")
        assert not growing_disabled("quiet bty-live.grow=1")
        assert not growing_disabled("quiet bty-live.grow")
        assert not growing_disabled("quiet bty-live.growing=0")


# =========================================================================== the journal


class TestJournal:
    def test_the_journal_is_the_partition_name_naming_where_the_copy_is(self) -> None:
        journal = Journal(copy_start=7_340_032, copy_size=409_600)
        assert journal.name == "bty-grow:7340032:409600"
        assert parse_journal(journal.name) == journal
        assert GrowthPlan(new_size=1, copy_start=7_340_032, copy_size=409_600).journal == journal

    def test_a_partition_named_otherwise_holds_no_journal(self) -> None:
        assert parse_journal(LABEL) is None
        assert parse_journal("") is None
        assert not is_journal_name(LABEL)

    def test_a_damaged_journal_is_still_a_growth_in_progress_but_nothing_is_resumed_from_it(self) -> None:
        for name in ("bty-grow:", "bty-grow:12", "bty-grow:12:x", "bty-grow:1:2:3"):
            assert is_journal_name(name)
            with pytest.raises(ValueError, match="bty-grow:<copy start>:<copy sectors>"):
                parse_journal(name)


# =========================================================================== the table


DUMP = """label: gpt
label-id: 0D6C8D5E-0000-4000-8000-000000000001
device: /dev/sda
unit: sectors
first-lba: 34
last-lba: 614366
sector-size: 512

/dev/sda1 : start=        2048, size=      131072, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid=1, name="esp"
/dev/sda2 : start=      133120, size=      286720, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, uuid=2, name="root"
/dev/sda3 : start=      419840, size=      194527, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7, uuid=3, name="BTY_IMAGES"
"""


class TestPartitionTableWrite:
    def test_one_write_changes_the_partitions_size_and_name_and_nothing_else(self) -> None:
        out = edit_dump(DUMP, 3, size=8_000_000, name="bty-grow:7000000:194527")
        old, new = DUMP.splitlines(), out.splitlines()
        assert [line for line in old if not line.startswith("last-lba:")][:-1] == new[:-1]
        assert new[-1] == ('/dev/sda3 : start=      419840, size=8000000, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7, '
                           'uuid=3, name="bty-grow:7000000:194527"')

    def test_the_last_usable_lba_is_left_to_sfdisk_so_the_table_spans_the_stick(self) -> None:
        assert "last-lba" not in edit_dump(DUMP, 3, size=1, name=LABEL)

    def test_a_partition_without_a_name_gets_one(self) -> None:
        dump = DUMP.replace(', name="BTY_IMAGES"', "")
        assert edit_dump(dump, 3, size=5, name=LABEL).splitlines()[-1].endswith(', name="BTY_IMAGES"')

    def test_sfdisk_json_reads_as_partitions_and_the_last_usable_lba(self) -> None:
        text = json.dumps({"partitiontable": {
            "label": "gpt", "lastlba": 614366, "sectorsize": 512,
            "partitions": [{"node": "/dev/loop7p1", "start": 2048, "size": 8192, "type": ESP_TYPE, "name": "esp"},
                           {"node": "/dev/loop7p2", "start": 10240, "size": 4096, "type": BASIC_DATA}]}})
        table = parse_table(text)
        assert table.lastlba == 614366
        assert table.entry(2) == Partition(node="/dev/loop7p2", number=2, name="", start=10240, size=4096)
        assert table.entry(3) is None
        mbr = parse_table(json.dumps({"partitiontable": {"label": "dos", "partitions": []}}))
        assert mbr.lastlba is None and mbr.partitions == ()


def test_a_dirty_exfat_is_one_that_was_not_unmounted_cleanly() -> None:
    boot = bytearray(512)
    boot[3:11] = b"EXFAT   "
    assert not exfat_dirty(bytes(boot))
    boot[106] = 0x2
    assert exfat_dirty(bytes(boot))
    boot[3:11] = b"MSDOS5.0"
    assert not exfat_dirty(bytes(boot))


# =========================================================================== on loop devices


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()


def exfat_mount_type() -> str | None:
    """"exfat" when the kernel mounts exFAT, "exfat-fuse" when only exfat-fuse does, else None."""
    if "exfat" in Path("/proc/filesystems").read_text().split():
        return "exfat"
    if list(Path(f"/lib/modules/{os.uname().release}/kernel/fs/exfat").glob("exfat.ko*")):
        return "exfat"  # loaded by the first mount
    if shutil.which("mount.exfat-fuse") and Path("/dev/fuse").exists():
        return "exfat-fuse"
    return None


@pytest.fixture
def exfat(monkeypatch: pytest.MonkeyPatch) -> str:
    """The `mount -t` type that mounts exFAT here; routes the module's exFAT mounts to it."""
    missing = [t for t in ("mkfs.exfat", "fsck.exfat", "sfdisk", "partx") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (exfatprogs, util-linux)")
    kind = exfat_mount_type()
    if kind is None:
        pytest.skip("cannot mount exFAT here: the kernel has no exfat driver (CONFIG_EXFAT_FS, no exfat.ko) "
                    "and exfat-fuse (mount.exfat-fuse with /dev/fuse) is not available")
    if kind == "exfat-fuse":
        def through_fuse(argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
            argv = list(argv)
            if argv[:3] == ["mount", "-t", "exfat"]:
                argv[2] = "exfat-fuse"
            return run(argv, **kwargs)

        monkeypatch.setattr(ip, "run", through_fuse)
    return kind


@contextmanager
def mounted(node: str, where: Path, kind: str, *options: str) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    sh("mount", "-t", kind, *options, node, str(where))
    try:
        yield where
    finally:
        sh("umount", str(where))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Stick:
    """A loop device holding what a raw writer leaves when the stick image is smaller than the
    stick: partition 1 an ESP (random bytes), partition 2 BTY_IMAGES (exFAT, label BTY_IMAGES),
    the image's backup GPT where the image ended."""

    def __init__(self, loop: LoopDevice, tmp: Path, *, image_mib: int, images_mib: int,
                 name: str = LABEL) -> None:
        self.loop, self.disk = loop, loop.name
        self.esp, self.images = f"{loop.path}p1", f"{loop.path}p2"
        image = tmp / f"{self.disk}-image.raw"
        with open(image, "wb") as f:
            f.truncate(image_mib * MIB)
        table = (f"label: gpt\nstart=2048, size={8 * SECTORS_PER_MIB}, type={ESP_TYPE}, name=esp\n"
                 f"start={9 * SECTORS_PER_MIB}, size={images_mib * SECTORS_PER_MIB}, type={BASIC_DATA}, "
                 f'name="{name}"\n')
        subprocess.run(["sfdisk", "-q", str(image)], input=table.encode(), check=True, capture_output=True)
        data = image.read_bytes()
        with open(loop.path, "r+b") as dev:  # the image's GPT at both its ends; the rest is zeros
            dev.write(data[:MIB])
            dev.seek(len(data) - MIB)
            dev.write(data[-MIB:])
            dev.seek(MIB)
            self.esp_bytes = random.Random(1).randbytes(2 * MIB)
            dev.write(self.esp_bytes)
        image.unlink()
        sh("partx", "-a", loop.path)
        sh("mkfs.exfat", "-L", LABEL, self.images)

    def fill(self, kind: str, where: Path, files: dict[str, bytes], dirs: Sequence[str] = ()) -> None:
        with mounted(self.images, where, kind) as root:
            for rel, data in files.items():
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                (root / rel).write_bytes(data)
            for rel in dirs:
                (root / rel).mkdir(parents=True, exist_ok=True)
        sh("blockdev", "--flushbufs", self.images)
        sh("blockdev", "--flushbufs", self.loop.path)

    def entry(self) -> Partition:
        return ip.table_entry(self.disk, 2)

    def sectors(self) -> int:
        return int(Path(f"/sys/class/block/{self.disk}/size").read_text())

    def lastlba(self) -> int | None:
        return ip.read_table(self.disk).lastlba

    def esp_untouched(self) -> bool:
        return self.loop.read(MIB, 2 * MIB) == self.esp_bytes


def images_files() -> dict[str, bytes]:
    rng = random.Random(7)
    return {
        "demo.img.zst": rng.randbytes(5 * MIB + 123),
        "more/nested/other.img": rng.randbytes(3 * MIB),
        "receipts/2024-01-01.json": b'{"ok": true}\n',
        "empty": b"",
    }


def assert_files(root: Path, files: dict[str, bytes]) -> None:
    found = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    assert found >= set(files), found
    for rel, data in files.items():
        assert sha256((root / rel).read_bytes()) == sha256(data), rel


def logged(capsys: pytest.CaptureFixture[str]) -> str:
    return capsys.readouterr().out


class TestFindingIt:
    def test_the_images_partition_is_the_one_on_the_given_disk_whose_file_system_is_labelled_BTY_IMAGES(
            self, make_loop: MakeLoop, tmp_path: Path) -> None:
        if shutil.which("mkfs.exfat") is None:
            pytest.skip("mkfs.exfat (exfatprogs) not installed")
        stick = Stick(make_loop(64 * MIB), tmp_path, image_mib=64, images_mib=40, name="renamed elsewhere")
        other = Stick(make_loop(64 * MIB), tmp_path, image_mib=64, images_mib=40)
        found = ip.find_partition(stick.disk)
        assert found is not None
        partition, info = found
        assert partition.node == stick.images and partition.number == 2
        assert info["TYPE"] == "exfat" and info["LABEL"] == LABEL
        assert partition.start == 9 * SECTORS_PER_MIB and partition.size == 40 * SECTORS_PER_MIB
        found_other = ip.find_partition(other.disk)
        assert found_other is not None and found_other[0].node == other.images  # each disk its own

    def test_a_disk_without_one_has_none(self, make_loop: MakeLoop, tmp_path: Path) -> None:
        loop = make_loop(64 * MIB)
        subprocess.run(["sfdisk", "-q", loop.path], input=b"label: gpt\n,16M\n,\n", check=True, capture_output=True)
        sh("partx", "-a", loop.path)
        sh("mkfs.ext4", "-q", "-L", LABEL.lower(), f"{loop.path}p2")
        assert ip.find_partition(loop.name) is None
        ip.start(loop.name, mountpoint=tmp_path / "images", work=tmp_path / "grow", cmdline="")
        assert not (tmp_path / "images").exists()

    def test_the_boot_disk_is_the_whole_disk_of_the_roots_partition(
            self, make_loop: MakeLoop, tmp_path: Path) -> None:
        loop = make_loop(64 * MIB)
        subprocess.run(["sfdisk", "-q", loop.path], input=b"label: gpt\n,16M\n,\n", check=True, capture_output=True)
        sh("partx", "-a", loop.path)
        sh("mkfs.ext4", "-q", f"{loop.path}p2")
        with mounted(f"{loop.path}p2", tmp_path / "root", "ext4") as root:
            assert ip.root_disk(str(root)) == loop.name
        assert ip.root_disk("/proc") is None  # not on a block device


class TestGrowing:
    def test_a_stick_image_written_to_a_larger_stick_grows_to_its_end_and_keeps_every_file_byte_for_byte(
            self, make_loop: MakeLoop, tmp_path: Path, exfat: str, capsys: pytest.CaptureFixture[str]) -> None:
        stick = Stick(make_loop(400 * MIB), tmp_path, image_mib=100, images_mib=80)
        files = images_files()
        stick.fill(exfat, tmp_path / "fill", files, dirs=["logs"])
        before = stick.entry()
        mountpoint = tmp_path / "images"

        assert ip.start(stick.disk, mountpoint=mountpoint, work=tmp_path / "grow", cmdline="") == 0
        try:
            out = logged(capsys)
            assert "bty-images: growing BTY_IMAGES" in out and "from 80 MiB" in out and "(4 files;" in out
            assert "block copy verified" in out and "bty-images: formatting" in out
            assert "BTY_IMAGES now spans the stick" in out and "4 files kept" in out
            assert f"mounted at {mountpoint}" in out
            assert_files(mountpoint, files)
            assert (mountpoint / "logs").is_dir() and (mountpoint / "receipts").is_dir()
        finally:
            ip.stop(mountpoint)
        after = stick.entry()
        disk_sectors = stick.sectors()
        assert after.name == LABEL and after.start == before.start
        assert stick.lastlba() == disk_sectors - 34  # the backup GPT moved to the end of the stick
        assert after.size == (disk_sectors - 33 - after.start) // SECTORS_PER_MIB * SECTORS_PER_MIB
        assert int(Path(f"/sys/class/block/{stick.disk}p2/size").read_text()) == after.size  # the kernel knows
        assert stick.esp_untouched()
        assert subprocess.run(["fsck.exfat", "-n", stick.images], capture_output=True).returncode == 0

    def test_without_room_for_a_full_copy_nothing_changes_and_the_images_are_mounted(
            self, make_loop: MakeLoop, tmp_path: Path, exfat: str, capsys: pytest.CaptureFixture[str]) -> None:
        stick = Stick(make_loop(260 * MIB), tmp_path, image_mib=160, images_mib=150)  # 100 MiB more
        files = images_files()
        stick.fill(exfat, tmp_path / "fill", files)
        mountpoint = tmp_path / "images"
        assert ip.start(stick.disk, mountpoint=mountpoint, work=tmp_path / "grow", cmdline="") == 0
        try:
            out = logged(capsys)
            assert "growing it safely needs room for a full copy" in out and "growing BTY_IMAGES" not in out
            assert f"mounted at {mountpoint}" in out
            assert_files(mountpoint, files)
        finally:
            ip.stop(mountpoint)
        assert stick.entry().size == 150 * SECTORS_PER_MIB and stick.entry().name == LABEL

    def test_bty_live_grow_0_mounts_without_growing(
            self, make_loop: MakeLoop, tmp_path: Path, exfat: str, capsys: pytest.CaptureFixture[str]) -> None:
        stick = Stick(make_loop(400 * MIB), tmp_path, image_mib=100, images_mib=80)
        mountpoint = tmp_path / "images"
        assert ip.start(stick.disk, mountpoint=mountpoint, work=tmp_path / "grow", cmdline="bty-live.grow=0") == 0
        ip.stop(mountpoint)
        out = logged(capsys)
        assert "bty-live.grow=0: not growing" in out and f"mounted at {mountpoint}" in out
        assert stick.entry().size == 80 * SECTORS_PER_MIB
        assert stick.lastlba() == 100 * SECTORS_PER_MIB - 34  # not even the backup GPT moved

    def test_status_tells_what_start_would_do_and_changes_nothing(
            self, make_loop: MakeLoop, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        if shutil.which("mkfs.exfat") is None:
            pytest.skip("mkfs.exfat (exfatprogs) not installed")
        stick = Stick(make_loop(400 * MIB), tmp_path, image_mib=100, images_mib=80)
        assert ip.status(stick.disk) == 0
        out = logged(capsys)
        assert f"boot disk /dev/{stick.disk}; BTY_IMAGES: {stick.images} (exfat)" in out
        assert "growth: to " in out and " sectors, copy at " in out
        assert stick.entry().size == 80 * SECTORS_PER_MIB
        assert stick.lastlba() == 100 * SECTORS_PER_MIB - 34


class TestPowerCut:
    def test_after_the_journal_is_written_the_partition_is_never_mounted_half_rebuilt_and_resume_restores_every_file(
            self, make_loop: MakeLoop, tmp_path: Path, exfat: str, capsys: pytest.CaptureFixture[str]) -> None:
        stick = Stick(make_loop(300 * MIB), tmp_path, image_mib=100, images_mib=80)
        files = images_files()
        stick.fill(exfat, tmp_path / "fill", files)
        before = stick.entry()
        old_digest = ip.range_digest(stick.loop.path, before.start * 512, before.size * 512)
        work, mountpoint = tmp_path / "grow", tmp_path / "images"

        # Steps 1-3: the block copy at the end, verified; the journal written.
        journal = ip.copy_to_end(stick.disk, before, ip.probe(stick.images), work=work)
        assert journal is not None
        entry = stick.entry()
        assert entry.name == journal.name and parse_journal(entry.name) == journal
        assert entry.start == before.start and journal.copy_start + journal.copy_size <= entry.end
        assert journal.copy_start >= before.end and journal.copy_size == before.size
        assert ip.range_digest(stick.loop.path, journal.copy_start * 512, journal.copy_size * 512) == old_digest

        # The power fails while the files are being written back: a new, half-filled file system.
        sh("mkfs.exfat", "-L", LABEL, stick.images)
        with mounted(stick.images, tmp_path / "half", exfat) as half:
            (half / "demo.img.zst").write_bytes(files["demo.img.zst"][: MIB])

        # A boot that does not resume (here: the kernel reports no partition names) mounts nothing.
        assert ip.start(stick.disk, mountpoint=mountpoint, work=work, cmdline="") == 1
        assert "BTY_IMAGES is mid-growth and was not mounted (its images are safe in the copy)" in logged(capsys)
        assert not os.path.ismount(mountpoint)

        # Resuming from the journal on the disk (what the next boot does with the name it reads).
        found = parse_journal(stick.entry().name)
        assert found == journal
        ip.resume(stick.disk, stick.entry(), found, work=work)
        out = logged(capsys)
        assert "bty-images: formatting" in out and "BTY_IMAGES now spans the stick" in out
        assert "copied back demo.img.zst" in out
        assert stick.entry().name == LABEL

        assert ip.start(stick.disk, mountpoint=mountpoint, work=work, cmdline="") == 0
        try:
            out = logged(capsys)
            assert "growing" not in out and f"mounted at {mountpoint}" in out
            assert_files(mountpoint, files)
        finally:
            ip.stop(mountpoint)
        assert stick.esp_untouched()

    def test_a_block_copy_that_is_not_a_clean_exfat_is_never_formatted_over(
            self, make_loop: MakeLoop, tmp_path: Path, exfat: str) -> None:
        stick = Stick(make_loop(300 * MIB), tmp_path, image_mib=100, images_mib=80)
        stick.fill(exfat, tmp_path / "fill", images_files())
        journal = ip.copy_to_end(stick.disk, stick.entry(), ip.probe(stick.images), work=tmp_path / "grow")
        assert journal is not None
        with open(stick.loop.path, "r+b") as dev:  # the copy's boot sector is lost
            dev.seek(journal.copy_start * 512)
            dev.write(bytes(512))
        sh("blockdev", "--flushbufs", stick.loop.path)
        with pytest.raises(Refused, match=f"the block copy at sector {journal.copy_start} is not a clean exFAT"):
            ip.resume(stick.disk, stick.entry(), journal, work=tmp_path / "grow")
        assert stick.entry().name == journal.name  # the journal stays: nothing was changed further
        assert ip.probe(stick.images).get("LABEL") == LABEL  # the old file system was not formatted over
