"""Eligibility rules, on plain constructed Disk dataclasses (the rules are pure: no devices needed)."""

from __future__ import annotations

from typing import Any

import pytest

from bty_live.disk.eligibility import EligibilityContext, assess_all, reasons, require_eligible
from bty_live.disk.model import BackingFile, Disk, Opener, Partition, Protected
from bty_live.errors import TargetRefusedError

GiB = 1 << 30
NO_CONTEXT = EligibilityContext(boot_devnums=frozenset(), image_size=None)


def make_disk(name: str = "sdb", size: int = 8 * GiB, devnum: tuple[int, int] = (8, 16),
              **fields: Any) -> Disk:
    return Disk(name=name, path=f"/dev/{name}", devnum=devnum, size=size, transport="usb", **fields)


def make_partition(name: str = "sdb1", number: int = 1, devnum: tuple[int, int] = (8, 17),
                   **fields: Any) -> Partition:
    return Partition(name=name, path=f"/dev/{name}", devnum=devnum, number=number, start=1 << 20,
                     size=GiB, **fields)


def test_an_unused_writable_disk_is_eligible() -> None:
    assert reasons(make_disk(), NO_CONTEXT) == ()


def test_the_disk_holding_the_running_system_is_refused_as_boot_medium() -> None:
    ctx = EligibilityContext(boot_devnums=frozenset({(8, 16)}), image_size=None)
    assert reasons(make_disk(), ctx) == ("boot medium: holds the running system or the images directory",)


def test_a_disk_is_boot_medium_when_one_of_its_partitions_is() -> None:
    disk = make_disk(partitions=(make_partition(devnum=(8, 18)),))
    ctx = EligibilityContext(boot_devnums=frozenset({(8, 18)}), image_size=None)
    assert reasons(disk, ctx)[0].startswith("boot medium")


def test_other_disks_are_not_boot_medium() -> None:
    ctx = EligibilityContext(boot_devnums=frozenset({(254, 0)}), image_size=None)
    assert reasons(make_disk(), ctx) == ()


def test_a_mounted_partition_is_named_with_its_mount_point() -> None:
    disk = make_disk(partitions=(make_partition(mountpoints=("/mnt/usb",)),))
    assert reasons(disk, NO_CONTEXT) == ("mounted: sdb1 at /mnt/usb",)


def test_a_filesystem_mounted_on_the_whole_disk_is_named() -> None:
    disk = make_disk(mountpoints=("/media/stick", "/srv"))
    assert reasons(disk, NO_CONTEXT) == ("mounted: sdb at /media/stick, sdb at /srv",)


def test_device_mapper_holders_are_named_with_the_partition_they_hold() -> None:
    disk = make_disk(partitions=(make_partition(), make_partition("sdb2", 2, (8, 18), holders=("dm-0",))))
    assert reasons(disk, NO_CONTEXT) == ("in use by dm-0 (device-mapper/LVM) on sdb2",)


def test_an_md_array_holding_the_whole_disk_is_named_as_raid() -> None:
    assert reasons(make_disk(holders=("md127",)), NO_CONTEXT) == ("in use by md127 (md RAID)",)


def test_active_swap_on_a_partition_is_refused() -> None:
    disk = make_disk(partitions=(make_partition(swap=True),))
    assert reasons(disk, NO_CONTEXT) == ("active swap: sdb1",)


def test_a_read_only_disk_is_refused() -> None:
    assert reasons(make_disk(read_only=True), NO_CONTEXT) == ("read-only",)


def test_an_empty_drive_is_refused_as_no_medium_not_as_too_small() -> None:
    ctx = EligibilityContext(boot_devnums=frozenset(), image_size=GiB)
    assert reasons(make_disk(size=0), ctx) == ("empty: no medium (size 0)",)


def test_a_disk_smaller_than_the_image_is_too_small_with_both_sizes() -> None:
    ctx = EligibilityContext(boot_devnums=frozenset(), image_size=2 * GiB)
    assert reasons(make_disk(size=GiB), ctx) == ("too small: 1 GiB < image 2 GiB",)


def test_a_disk_exactly_the_image_size_is_big_enough() -> None:
    ctx = EligibilityContext(boot_devnums=frozenset(), image_size=8 * GiB)
    assert reasons(make_disk(size=8 * GiB), ctx) == ()


def test_without_an_image_size_no_disk_is_too_small() -> None:
    assert reasons(make_disk(size=1 << 20), NO_CONTEXT) == ()


def test_every_reason_is_reported_not_just_the_first() -> None:
    partition = make_partition(mountpoints=("/boot",), swap=True)
    disk = make_disk(size=GiB, read_only=True, partitions=(partition,))
    ctx = EligibilityContext(boot_devnums=frozenset({(8, 16)}), image_size=2 * GiB)
    assert [r.split(":")[0] for r in reasons(disk, ctx)] == [
        "boot medium", "read-only", "mounted", "active swap", "too small"]


IMAGES = Protected(path="/srv/images", what="the images directory", devnums=frozenset({(253, 0)}),
                   files=frozenset({(253, 7)}), is_dir=True)
SYSTEM = Protected(path="/", what="the running system", devnums=frozenset({(254, 0)}), is_dir=True)
WITH_IMAGES = EligibilityContext(boot_devnums=frozenset({(253, 0), (254, 0)}), protected=(SYSTEM, IMAGES))


def make_loop_disk(*chain: BackingFile) -> Disk:
    return make_disk("loop3", devnum=(7, 3), backing_chain=chain)


def test_a_loop_over_a_file_in_the_images_directory_is_refused_naming_the_file() -> None:
    disk = make_loop_disk(BackingFile("loop3", "/srv/images/other.img"))
    assert reasons(disk, WITH_IMAGES) == (
        "holds the images directory /srv/images (its backing file /srv/images/other.img is in it)",)


def test_a_loop_over_a_hard_link_to_a_catalog_file_is_refused_by_its_inode() -> None:
    disk = make_loop_disk(BackingFile("loop3", "/elsewhere/link.img", inode=(253, 7)))
    assert reasons(disk, WITH_IMAGES)[0].startswith("holds the images directory /srv/images")


def test_a_nested_loop_names_the_loop_whose_backing_file_is_in_the_images_directory() -> None:
    disk = make_loop_disk(BackingFile("loop3", "/mnt/fs/inner.img"), BackingFile("loop2", "/srv/images/outer.img"))
    assert reasons(disk, WITH_IMAGES) == (
        "holds the images directory /srv/images (through loop2: its backing file /srv/images/outer.img is in it)",)


def test_a_loop_over_a_file_beside_the_images_directory_is_eligible() -> None:
    disk = make_loop_disk(BackingFile("loop3", "/srv/images-old/a.img"), BackingFile("loop0", "/var/x.img"))
    assert reasons(disk, WITH_IMAGES) == ()


def test_the_disk_holding_only_the_images_directory_is_boot_medium_naming_it() -> None:
    disk = make_disk("vdb", devnum=(253, 0))
    assert reasons(disk, WITH_IMAGES) == ("boot medium: holds the images directory /srv/images",)


def test_the_disk_holding_the_running_system_keeps_the_boot_medium_reason() -> None:
    disk = make_disk("vda", devnum=(254, 0))
    assert reasons(disk, WITH_IMAGES) == ("boot medium: holds the running system or the images directory",)


def test_a_writer_on_a_partition_is_named_with_its_pid_command_and_node() -> None:
    disk = make_disk(writers=(Opener(pid=4242, command="dd", node="sdb1"), Opener(pid=7, command="vi", node="sdb")))
    assert reasons(disk, NO_CONTEXT) == ("open for writing by PID 4242 (dd) on sdb1, PID 7 (vi): close it first",)


def test_assess_all_keeps_the_order_and_tells_eligible_from_refused() -> None:
    disks = [make_disk("sdb"), make_disk("sdc", read_only=True), make_disk("sdd")]
    assessed = assess_all(disks, NO_CONTEXT)
    assert [(a.disk.name, a.eligible) for a in assessed] == [("sdb", True), ("sdc", False), ("sdd", True)]
    assert assessed[1].reasons == ("read-only",)


def test_require_eligible_refuses_with_every_reason_in_one_line() -> None:
    disk = make_disk(read_only=True, mountpoints=("/mnt",))
    expected = r"refusing to write /dev/sdb: read-only; mounted: sdb at /mnt"
    with pytest.raises(TargetRefusedError, match=expected):
        require_eligible(disk, NO_CONTEXT)


def test_require_eligible_accepts_an_eligible_disk() -> None:
    require_eligible(make_disk(), NO_CONTEXT)
