"""Where the tools write: fresh loop devices, and the check that they hold the image afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tools.mkdiskimage import MIB

TARGET_SLACK = 64 * MIB  # the target is this much larger than the image


@dataclass(frozen=True)
class Setup:
    """How the targets are attached: what a run writes through."""

    name: str  # for --loop, keys and file names
    direct_io: bool
    label: str  # spelled out, for table headings
    markdown: str  # the same, short, for the Markdown table


SETUPS = {
    "direct": Setup("direct", True, "loop --direct-io=on (writes reach the backing file's storage)",
                    "loop device with `--direct-io=on`"),
    "buffered": Setup("buffered", False, "plain loop (losetup -f --show FILE: writes land in the page cache)",
                      "plain loop device (`losetup -f --show FILE`)"),
}


class LoopTargets:
    """Fresh sparse backing files attached as loop devices; remembers only what it attached itself."""

    def __init__(self, directory: Path, size: int, direct_io: bool = True) -> None:
        self.directory = directory
        self.size = size
        self.direct_io = direct_io
        self.attached: dict[str, Path] = {}

    def create(self, name: str) -> str:
        backing = self.directory / f"target-{name}.img"
        backing.unlink(missing_ok=True)
        with open(backing, "wb") as f:
            f.truncate(self.size)
        return self.attach(backing)

    def attach(self, backing: Path) -> str:
        """Attach `backing` as a loop device of this setup and own both (the file is removed if
        the attach fails)."""
        try:
            device = subprocess.run(["losetup", "-f", "--show", f"--direct-io={'on' if self.direct_io else 'off'}",
                                     str(backing)], check=True, capture_output=True, text=True).stdout.strip()
        except BaseException:
            backing.unlink(missing_ok=True)
            raise
        self.attached[device] = backing
        return device

    def make_durable(self, device: str) -> float:
        """fsync the device's backing file (what `sync FILE` does); the seconds it took.

        Every run that writes ends with this, whatever the tool did: on a plain loop device the
        written data sits in the backing file's page cache until then; with --direct-io=on it
        costs next to nothing, and both setups are measured alike."""
        started = time.perf_counter()
        fd = os.open(self.attached[device], os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return time.perf_counter() - started

    def release(self, device: str) -> None:
        backing = self.attached.pop(device, None)
        subprocess.run(["losetup", "-d", device], check=False, capture_output=True)
        if backing is not None:
            backing.unlink(missing_ok=True)

    def release_all(self) -> None:
        for device in list(self.attached):
            self.release(device)


SECTOR = 512
GPT_TAIL = 33 * SECTOR  # backup partition entries + backup header at the end of a GPT disk


def target_matches(image: Path, device: str, size: int, *, gpt_fixups: bool) -> str | None:
    """None when the device holds the image, else what differs.

    Exact tools must leave the first `size` bytes equal to the image. A tool that fixes up the
    GPT for a larger disk (bty moves the backup GPT to the disk's end) legitimately changes the
    protective MBR's partition entry, the primary GPT header and the image's old backup GPT;
    everything else must be equal, the partition entries must be unchanged and sgdisk -v clean.
    """
    subprocess.run(["blockdev", "--flushbufs", device], check=False, capture_output=True)
    if not gpt_fixups:
        return cmp_range(image, device, 0, size)
    for start, end in ((0, 446), (2 * SECTOR, size - GPT_TAIL)):  # skip MBR entries+LBA 1, the old tail
        differs = cmp_range(image, device, start, end - start)
        if differs:
            return differs
    if partition_entries(str(image)) != partition_entries(device):
        return "the partition entries differ from the image's"
    verify = subprocess.run(["sgdisk", "-v", device], capture_output=True, text=True, check=False)
    if verify.returncode != 0 or "No problems found" not in verify.stdout:
        return "sgdisk -v: " + " ".join(verify.stdout.split())
    return None


def cmp_range(image: Path, device: str, start: int, length: int) -> str | None:
    proc = subprocess.run(["cmp", "-n", str(length), "-i", f"{start}:{start}", str(image), device],
                          capture_output=True, text=True, check=False)
    if proc.returncode == 0:
        return None
    return (proc.stdout + proc.stderr).strip() or f"cmp exit {proc.returncode}"


def partition_entries(disk: str) -> list[tuple[object, ...]]:
    proc = subprocess.run(["sfdisk", "--json", disk], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return []
    parts = json.loads(proc.stdout)["partitiontable"].get("partitions", [])
    return [(p["start"], p["size"], p["type"], p.get("uuid"), p.get("name")) for p in parts]
