"""
bty.grow_rootfs: grow the root partition and its filesystem to fill the disk
============================================================================

An image is usually smaller than the disk it lands on. This step grows the target's root
partition to the end of the disk, when it is the last partition, and then its filesystem to
the end of the partition:

    - name: grow
      uses: bty.grow_rootfs

* The partition: a GPT whose backup header is not at the end of the disk is first relocated
  there (`sfdisk --relocate gpt-bak-std`); the root partition is then extended to the last
  usable sector (`sfdisk -N`), and the kernel told its new size (`partx -u`), which works while
  it is mounted. A root partition that is not the last one keeps its size (noted in the report).
* The filesystem, while bty has it mounted: ext2/3/4 with `resize2fs` (online; the kernel wants
  CAP_SYS_RESOURCE, which containers may lack), xfs with `xfs_growfs`, btrfs with
  `btrfs filesystem resize max`. The tools run on the flasher (e2fsprogs, xfsprogs, btrfs-progs).

`partition: false` or `filesystem: false` leaves out that half.

Idempotent: a partition that already ends at the disk's end is left alone, and the
filesystem tools do nothing when there is nothing to grow.
"""

from __future__ import annotations

import json
import os
from argparse import ArgumentParser, Namespace
from pathlib import Path
from typing import Any

from cijoe.bty.config import config_options, table, text
from cijoe.bty.steps import ActionLog, parse_bool, run_step, shell_join
from cijoe.bty.target_root import TargetError, TargetRoot

#: a partition ending less than this before the end of the usable area is "already full"
#: (the rest is alignment that sfdisk would not use anyway)
SLACK_BYTES = 1 << 20


def add_args(parser: ArgumentParser) -> None:
    parser.add_argument("--partition", default="true",
                        help="grow the partition (default: true); false grows only the filesystem")
    parser.add_argument("--filesystem", default="true",
                        help="grow the filesystem (default: true); false grows only the partition")


class CommandFailed(TargetError):
    def __init__(self, message: str, output: str) -> None:
        super().__init__(message)
        self.output = output


def _run(cijoe: Any, argv: list[str], what: str, stdin: str | None = None) -> str:
    """Run through CIJOE (so the command and its output are in the report); fail with its last line."""
    command = shell_join(argv)
    if stdin is not None:
        command = f"printf '%s\\n' {shell_join([stdin])} | {command}"
    err, state = cijoe.run(command)
    output: str = state.output()
    if err:
        last = [line for line in output.splitlines() if line.strip()][-1:] or [f"exit status {err}"]
        raise CommandFailed(f"{what} failed: {argv[0]}: {last[0]}", output)
    return output


def _sysfs_sectors(device: str) -> int:
    """A block device's size in 512-byte sectors, from sysfs."""
    name = os.path.basename(os.path.realpath(device))
    return int(Path(f"/sys/class/block/{name}/size").read_text())


def grow_partition(cijoe: Any, disk: str, number: int, note: ActionLog) -> None:
    layout = _json_part(_run(cijoe, ["sfdisk", "--json", disk], "reading the partition table"))
    table_ = layout["partitiontable"]
    sector = int(table_.get("sectorsize", 512))
    disk_sectors = _sysfs_sectors(disk) * 512 // sector
    if table_["label"] == "gpt" and int(table_["lastlba"]) < disk_sectors - 34:
        _run(cijoe, ["sfdisk", "--no-reread", "--relocate", "gpt-bak-std", disk], "moving the backup GPT")
        note(f"moved the backup GPT of {disk} to the end of the disk")
        layout = _json_part(_run(cijoe, ["sfdisk", "--json", disk], "reading the partition table"))
        table_ = layout["partitiontable"]
    parts = table_.get("partitions", [])
    root = next((p for p in parts if _number(p["node"]) == number), None)
    if root is None:
        raise TargetError(f"partition {number} is not in the partition table of {disk}")
    end = int(root["start"]) + int(root["size"])
    if any(int(p["start"]) > int(root["start"]) for p in parts):
        note(f"partition {number} is not the last partition of {disk}: it keeps its size")
        return
    usable_end = int(table_["lastlba"]) + 1 if table_["label"] == "gpt" else disk_sectors
    if (usable_end - end) * sector < SLACK_BYTES:
        note(f"partition {number} already reaches the end of {disk}")
        return
    _run(cijoe, ["sfdisk", "--no-reread", "--no-tell-kernel", "-N", str(number), disk],
         f"growing partition {number}", stdin=", +")
    _run(cijoe, ["partx", "-u", "--nr", str(number), disk], f"telling the kernel about partition {number}")
    note(f"grew partition {number} of {disk} from {int(root['size']) * sector} bytes to the end of the disk")


def _json_part(output: str) -> dict[str, Any]:
    """sfdisk's JSON (CIJOE mixes stderr into the output: start at the first brace)."""
    start = output.find("{")
    if start < 0:
        raise TargetError(f"sfdisk printed no partition table: {output.strip()[:200]}")
    data: dict[str, Any] = json.JSONDecoder().raw_decode(output[start:])[0]
    return data


def _number(node: str) -> int:
    digits = ""
    for char in reversed(node):
        if not char.isdigit():
            break
        digits = char + digits
    return int(digits) if digits else -1


def grow_filesystem(cijoe: Any, device: str, fstype: str, mountpoint: Path, note: ActionLog) -> None:
    if fstype in ("ext2", "ext3", "ext4"):
        output = _run_resize2fs(cijoe, device)
        note(f"resize2fs {device}: " + (output.strip().splitlines() or ["done"])[-1])
    elif fstype == "xfs":
        _run(cijoe, ["xfs_growfs", str(mountpoint)], "growing the xfs filesystem")
        note(f"xfs_growfs {mountpoint}: done")
    elif fstype == "btrfs":
        _run(cijoe, ["btrfs", "filesystem", "resize", "max", str(mountpoint)], "growing the btrfs filesystem")
        note(f"btrfs filesystem resize max {mountpoint}: done")
    else:
        raise TargetError(f"cannot grow a {fstype or 'unknown'} root filesystem (ext2/3/4, xfs and btrfs can be)")


def _run_resize2fs(cijoe: Any, device: str) -> str:
    try:
        return _run(cijoe, ["resize2fs", device], "growing the ext4 filesystem")
    except CommandFailed as exc:
        if "Permission denied" in exc.output:
            raise TargetError(f"resize2fs {device} was refused by the kernel: growing a mounted ext4 filesystem "
                              "needs CAP_SYS_RESOURCE, which this flasher lacks (a container?); run bty with "
                              "full root privileges") from exc
        raise


def main(args: Namespace, cijoe: Any) -> int:
    def body() -> None:
        options = config_options(cijoe)
        root = TargetRoot.from_options(options)
        target = table(options, "target")
        note = ActionLog(cijoe, "bty.grow_rootfs")
        disk, device = text(target, "disk"), text(target, "root_partition")
        number = int(text(target, "root_partition_number") or 0)
        if not disk or not device:
            raise TargetError("[bty.target] disk and root_partition are not set: bty sets them when it tunes a "
                              "flashed disk")
        if parse_bool(args.partition) and number and device != disk:
            grow_partition(cijoe, disk, number, note)
        if parse_bool(args.filesystem):
            grow_filesystem(cijoe, device, text(target, "root_fstype"), root.root, note)

    return run_step("bty.grow_rootfs", body)
