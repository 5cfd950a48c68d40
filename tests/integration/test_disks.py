"""Disk discovery, identity, boot-medium detection and `bty disks`, on real loop devices and mounts.

Other processes create loop devices at the same time: these tests only ever unmount, swapoff
or detach what they created themselves, and look their own devices up by name.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from bty_live.commands import disks as disks_command
from bty_live.disk.boot_medium import boot_medium_devnums
from bty_live.disk.contents import describe_contents
from bty_live.disk.discovery import discover_disks, find_disk, read_identity, transport_of
from bty_live.disk.eligibility import EligibilityContext, reasons
from bty_live.disk.model import Disk
from bty_live.errors import SelectorError, TargetVanishedError
from tests.conftest import LoopDevice

MiB = 1 << 20
MakeLoop = Callable[..., LoopDevice]
NO_CONTEXT = EligibilityContext(boot_devnums=frozenset(), image_size=None)


def sh(*argv: str, stdin: str | None = None) -> str:
    return subprocess.run(argv, input=stdin, check=True, capture_output=True, text=True).stdout.strip()


@contextmanager
def mounted(device: str, mountpoint: Path, *options: str) -> Iterator[Path]:
    mountpoint.mkdir(parents=True, exist_ok=True)
    sh("mount", *options, device, str(mountpoint))
    try:
        yield mountpoint
    finally:
        sh("umount", str(mountpoint))


@contextmanager
def own_loop(backing: Path) -> Iterator[str]:
    """A loop device this test attaches and detaches itself, for nesting inside mounts it owns."""
    path = sh("losetup", "-f", "--show", str(backing))
    try:
        yield path
    finally:
        sh("losetup", "-d", path)


def devnum_of(node: str) -> tuple[int, int]:
    rdev = os.stat(node).st_rdev
    return os.major(rdev), os.minor(rdev)


@dataclass
class GptLoop:
    loop: LoopDevice
    part: str  # /dev/loopNp1

    @property
    def disk(self) -> Disk:
        return find_disk(self.loop.path)


@pytest.fixture
def gpt_loop(make_loop: MakeLoop) -> Iterator[GptLoop]:
    """A 64 MiB loop device with a GPT and one 32 MiB partition at 1 MiB holding ext4 'rootfs'."""
    loop = make_loop(64 * MiB)
    subprocess.run(["sfdisk", "-q", loop.path], input="label: gpt\n,32M,L\n", text=True, capture_output=True,
                   check=False)  # it fails to make the kernel re-read the table of a loop device; partx does
    part = f"{loop.path}p1"
    if not Path(part).exists():
        sh("partx", "-a", loop.path)
    deadline = time.monotonic() + 5
    while not Path(part).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    sh("mkfs.ext4", "-q", "-F", "-L", "rootfs", part)
    yield GptLoop(loop, part)
    # partitions added by partx outlive the loop device's detach: remove them while it is ours
    subprocess.run(["partx", "-d", loop.path], capture_output=True, check=False)


# --------------------------------------------------------------------------- discovery


def test_a_fresh_loop_device_is_discovered_with_size_sector_sizes_transport_and_backing_file(
        make_loop: MakeLoop) -> None:
    loop = make_loop(48 * MiB, sector_size=4096)
    disk = next(d for d in discover_disks() if d.name == loop.name)
    assert (disk.path, disk.devnum) == (loop.path, devnum_of(loop.path))
    assert disk.size == 48 * MiB
    assert (disk.logical_sector_size, disk.physical_sector_size) == (4096, 4096)
    assert disk.transport == "loop"
    assert disk.loop_backing_file == str(loop.backing_file)
    assert not disk.read_only
    assert (disk.pttype, disk.fstype, disk.partitions) == (None, None, ())


def test_a_read_only_loop_device_is_reported_read_only_and_refused(make_loop: MakeLoop) -> None:
    disk = find_disk(make_loop(8 * MiB, read_only=True).path)
    assert disk.read_only
    assert reasons(disk, NO_CONTEXT) == ("read-only",)


def test_a_gpt_partition_shows_its_number_extent_filesystem_label_uuid_and_used_bytes(
        gpt_loop: GptLoop) -> None:
    disk = gpt_loop.disk
    assert disk.pttype == "gpt"
    (part,) = disk.partitions
    assert (part.name, part.path, part.devnum) == (f"{disk.name}p1", gpt_loop.part, devnum_of(gpt_loop.part))
    assert (part.number, part.start, part.size) == (1, MiB, 32 * MiB)
    assert (part.fstype, part.label) == ("ext4", "rootfs")
    assert part.uuid is not None and uuid.UUID(part.uuid)
    assert part.used_bytes is not None and 0 < part.used_bytes < 32 * MiB  # from the superblock: unmounted
    assert (part.mountpoints, part.swap, part.holders) == ((), False, ())
    assert reasons(disk, NO_CONTEXT) == ()


def test_mounting_a_partition_lists_its_mount_point_and_makes_the_disk_ineligible(
        gpt_loop: GptLoop, tmp_path: Path) -> None:
    with mounted(gpt_loop.part, tmp_path / "mnt") as mnt:
        (mnt / "payload").write_bytes(os.urandom(4 * MiB))
        os.sync()
        disk = gpt_loop.disk
        st = os.statvfs(mnt)
    (part,) = disk.partitions
    assert part.mountpoints == (str(mnt),)
    assert part.used_bytes == (st.f_blocks - st.f_bfree) * st.f_frsize
    assert part.used_bytes >= 4 * MiB
    assert reasons(disk, NO_CONTEXT) == (f"mounted: {part.name} at {mnt}",)
    assert reasons(gpt_loop.disk, NO_CONTEXT) == ()  # and eligible again once unmounted


def test_active_swap_on_a_partition_makes_the_disk_ineligible(gpt_loop: GptLoop) -> None:
    sh("mkswap", gpt_loop.part)
    sh("swapon", gpt_loop.part)
    try:
        disk = gpt_loop.disk
    finally:
        sh("swapoff", gpt_loop.part)
    assert disk.partitions[0].swap
    assert reasons(disk, NO_CONTEXT) == (f"active swap: {disk.name}p1",)


def test_a_filesystem_on_the_whole_disk_is_reported_on_the_disk(make_loop: MakeLoop) -> None:
    loop = make_loop(32 * MiB)
    sh("mkfs.ext4", "-q", "-F", "-L", "stick", loop.path)
    disk = find_disk(loop.path)
    assert (disk.pttype, disk.partitions) == (None, ())
    assert (disk.fstype, disk.label) == ("ext4", "stick")
    assert disk.used_bytes is not None and 0 < disk.used_bytes < 32 * MiB


def test_virtual_and_unbound_devices_are_hidden_unless_asked(make_loop: MakeLoop) -> None:
    mine = make_loop(8 * MiB).name
    shown = {d.name: d for d in discover_disks()}
    everything = {d.name: d for d in discover_disks(include_virtual=True)}
    assert mine in shown
    assert set(shown) <= set(everything)
    assert not any(d.transport in ("virtual", "loop") and d.size == 0 for d in shown.values())
    assert not any(d.transport == "loop" and d.loop_backing_file is None for d in shown.values())
    if Path("/sys/block/zram0").exists():
        assert "zram0" in everything and "zram0" not in shown


def test_a_disk_without_medium_is_hidden_unless_asked_and_then_refused(make_loop: MakeLoop) -> None:
    empty = make_loop(0)  # bound to an empty file: size 0, like a card reader without a card
    assert empty.name not in {d.name for d in discover_disks()}
    disk = next(d for d in discover_disks(include_virtual=True) if d.name == empty.name)
    assert disk.size == 0
    assert reasons(disk, NO_CONTEXT) == ("empty: no medium (size 0)",)


@pytest.mark.parametrize(("name", "sys_path", "expected"), [
    ("sdc", "/sys/devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0/block/sdc",
     "usb"),
    ("sda", "/sys/devices/pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0/block/sda", "sata"),
    ("nvme0n1", "/sys/devices/pci0000:00/0000:00:1d.0/0000:3d:00.0/nvme/nvme0/nvme0n1", "nvme"),
    ("sdb", "/sys/devices/pci0000:00/0000:00:03.0/virtio2/host2/target2:0:0/2:0:0:0/block/sdb", "scsi"),
    ("vda", "/sys/devices/pci0000:00/0000:00:02.0/virtio1/block/vda", "virtio"),
    ("mmcblk0", "/sys/devices/platform/fe320000.mmc/mmc_host/mmc1/mmc1:aaaa/block/mmcblk0", "mmc"),
    ("loop3", "/sys/devices/virtual/block/loop3", "loop"),
    ("dm-0", "/sys/devices/virtual/block/dm-0", "virtual"),
])
def test_the_transport_is_derived_from_the_sysfs_path_without_udev(
        name: str, sys_path: str, expected: str) -> None:
    assert transport_of(name, Path(sys_path), {}) == expected


def test_udev_id_bus_is_the_fallback_when_the_sysfs_path_says_nothing() -> None:
    assert transport_of("sdx", Path("/sys/devices/platform/odd/block/sdx"), {"ID_BUS": "ata"}) == "sata"
    assert transport_of("sdx", Path("/sys/devices/platform/odd/block/sdx"), {}) == "unknown"


# --------------------------------------------------------------------------- find_disk


def test_find_disk_accepts_a_name_a_node_and_a_symlink(make_loop: MakeLoop, tmp_path: Path) -> None:
    loop = make_loop(8 * MiB)
    link = tmp_path / "usb-Some_Stick-0:0"
    link.symlink_to(loop.path)
    assert {find_disk(loop.name).path, find_disk(loop.path).path, find_disk(str(link)).path} == {loop.path}


def test_find_disk_refuses_a_partition_and_names_its_disk(gpt_loop: GptLoop) -> None:
    with pytest.raises(SelectorError, match=rf"is partition {gpt_loop.loop.name}p1 of {gpt_loop.loop.name};"):
        find_disk(gpt_loop.part)


def test_find_disk_refuses_what_is_not_a_disk(tmp_path: Path) -> None:
    with pytest.raises(SelectorError, match="no such disk: sdzz9"):
        find_disk("sdzz9")
    (tmp_path / "file").touch()
    with pytest.raises(SelectorError, match="not a block device"):
        find_disk(str(tmp_path / "file"))


# --------------------------------------------------------------------------- identity


def test_read_identity_matches_the_identity_captured_at_discovery(make_loop: MakeLoop) -> None:
    loop = make_loop(16 * MiB)
    planned = find_disk(loop.path).identity()
    fresh = read_identity(loop.path)
    assert fresh == planned
    assert (fresh.size, fresh.loop_backing_file) == (16 * MiB, str(loop.backing_file))
    assert fresh.diskseq is not None


def test_read_identity_notices_a_disk_that_changed_size(make_loop: MakeLoop) -> None:
    loop = make_loop(16 * MiB)
    planned = read_identity(loop.path)
    os.truncate(loop.backing_file, 24 * MiB)
    sh("losetup", "-c", loop.path)
    fresh = read_identity(loop.path)
    assert fresh != planned
    assert "size: 16 MiB -> 24 MiB" in planned.differences(fresh)


def test_read_identity_of_a_vanished_node_raises_target_vanished(tmp_path: Path) -> None:
    with pytest.raises(TargetVanishedError, match="is gone"):
        read_identity(tmp_path / "sdq")


# --------------------------------------------------------------------------- boot medium


@pytest.mark.skipif(not Path("/sys/block/vda").exists(), reason="this machine boots from /dev/vda")
def test_vda_holding_the_root_filesystem_is_the_boot_medium() -> None:
    vda = devnum_of("/dev/vda")
    disk = find_disk("vda")
    assert disk.transport == "virtio"
    assert disk.serial == Path("/sys/block/vda/serial").read_text().strip()  # sysfs, not udev
    assert vda in boot_medium_devnums([Path("/")])
    assert reasons(disk, EligibilityContext(boot_medium_devnums([Path("/")]), None))[0] == (
        "boot medium: holds the running system or the images directory")


def disks_below_loop(loop: LoopDevice) -> frozenset[tuple[int, int]]:
    """The loop device and the disk(s) holding its backing file (vda here)."""
    return frozenset({devnum_of(loop.path)}) | boot_medium_devnums([loop.backing_file])


def test_a_directory_on_a_partition_resolves_to_its_whole_disk(gpt_loop: GptLoop, tmp_path: Path) -> None:
    with mounted(gpt_loop.part, tmp_path / "mnt") as mnt:
        (mnt / "images").mkdir()
        found = boot_medium_devnums([mnt / "images", tmp_path / "missing-dir"])
    assert devnum_of(gpt_loop.loop.path) in found
    assert found == disks_below_loop(gpt_loop.loop)


def test_a_loop_device_resolves_to_the_disk_holding_its_backing_file(
        gpt_loop: GptLoop, tmp_path: Path) -> None:
    with mounted(gpt_loop.part, tmp_path / "outer") as outer:
        inner_file = outer / "inner.img"
        inner_file.touch()
        os.truncate(inner_file, 8 * MiB)
        sh("mkfs.ext4", "-q", "-F", str(inner_file))
        with own_loop(inner_file) as inner, mounted(inner, tmp_path / "inner") as inner_mnt:
            found = boot_medium_devnums([inner_mnt])
            inner_devnum = devnum_of(inner)
    assert {inner_devnum, devnum_of(gpt_loop.loop.path)} <= found
    assert found == {inner_devnum} | disks_below_loop(gpt_loop.loop)


@pytest.mark.parametrize("on_disk", ["lower", "upper"])
def test_an_overlay_resolves_to_the_disk_of_its_lower_or_upper_directory(
        gpt_loop: GptLoop, tmp_path: Path, on_disk: str) -> None:
    """One of the overlay's directories is on the loop's filesystem, the other on a tmpfs."""
    with mounted(gpt_loop.part, tmp_path / "mnt") as mnt, \
            mounted("tmpfs", tmp_path / "tmpfs", "-t", "tmpfs") as tmpfs:
        dirs = {name: (mnt if name == on_disk else tmpfs) / name for name in ("lower", "upper")}
        dirs["work"] = dirs["upper"].parent / "work"
        for directory in dirs.values():
            directory.mkdir()
        options = ",".join(f"{name}dir={path}" for name, path in dirs.items())
        with mounted("overlay", tmp_path / "overlay", "-t", "overlay", "-o", options) as overlay:
            assert os.major(os.stat(overlay).st_dev) == 0
            found = boot_medium_devnums([overlay])
    assert devnum_of(gpt_loop.loop.path) in found
    assert found == disks_below_loop(gpt_loop.loop)


def test_a_tmpfs_path_is_on_no_disk() -> None:
    assert boot_medium_devnums([Path("/dev/shm")]) == frozenset()


# --------------------------------------------------------------------------- destroy preview


def test_the_preview_of_a_blank_disk_says_there_is_nothing_on_it(make_loop: MakeLoop) -> None:
    assert describe_contents(find_disk(make_loop(8 * MiB).path)) == ["no partition table, no filesystem"]


def test_the_preview_lists_each_partition_with_filesystem_label_size_and_use(gpt_loop: GptLoop) -> None:
    disk = gpt_loop.disk
    header, line = describe_contents(disk)
    assert header == f"{disk.name}  gpt partition table, 1 partition"
    assert line.startswith(f"{disk.name}p1  ext4  'rootfs'  32 MiB, ")
    assert line.endswith(" used")


# --------------------------------------------------------------------------- `bty disks`


def bty_disks(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    parser = argparse.ArgumentParser()
    disks_command.register(parser.add_subparsers())
    args = parser.parse_args(["disks", *argv])
    assert args.func(args) == 0
    return capsys.readouterr().out


def test_bty_disks_json_lists_every_field_with_eligibility(
        make_loop: MakeLoop, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    loop = make_loop(8 * MiB)
    listed = {d["name"]: d for d in json.loads(bty_disks(capsys, "--json", "--images", str(tmp_path / "images")))}
    mine = listed[loop.name]
    assert (mine["eligible"], mine["reasons"]) == (True, [])
    assert (mine["size"], mine["transport"]) == (8 * MiB, "loop")
    assert mine["loop_backing_file"] == str(loop.backing_file)
    assert {"serial", "wwn", "by_id", "partitions", "holders", "swap", "logical_sector_size"} <= set(mine)
    if "vda" in listed:
        assert not listed["vda"]["eligible"] and listed["vda"]["reasons"][0].startswith("boot medium")


def test_bty_disks_min_size_marks_smaller_disks_too_small(
        make_loop: MakeLoop, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    loop = make_loop(8 * MiB)
    out = bty_disks(capsys, "--json", "--images", str(tmp_path / "images"), "--min-size", "16M")
    mine = next(d for d in json.loads(out) if d["name"] == loop.name)
    assert mine["reasons"] == ["too small: 8 MiB < image 16 MiB"]


def test_bty_disks_table_shows_the_columns_and_the_verdict(
        make_loop: MakeLoop, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    loop = make_loop(8 * MiB, read_only=True)
    out = bty_disks(capsys, "--images", str(tmp_path / "images"))
    assert out.split()[:6] == ["NAME", "SIZE", "TRAN", "MODEL", "SERIAL", "ELIGIBLE"]
    row = next(line for line in out.splitlines() if line.startswith(loop.name + " "))
    assert "8 MiB" in row and "loop" in row and "read-only" in row
