"""Disk discovery: which block devices exist, what is on them, and what is using them.

pyudev enumerates the block devices. Everything the udev database would add (serials, WWNs,
by-id links) may be missing -- the appliance can run without udevd -- so each attribute is read
from sysfs, /proc and `blkid -p` (which probes the device itself, not the udev database).
Nothing here decides whether a disk may be written: that is `bty_live.disk.eligibility`. The
dataclasses it fills are in `bty_live.disk.model`; what uses a disk (mounts, swap, writers) is
read by `bty_live.disk.users`, which disks hold the running system by `bty_live.disk.boot_medium`.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyudev

from bty_live.disk.boot_medium import backing_chain
from bty_live.disk.file_target import file_disk, file_identity, is_file_target
from bty_live.disk.model import Devnum, Disk, DiskIdentity, Opener, Partition
from bty_live.disk.users import MountEntry, block_devnum, block_writers, mounts_by_devnum, read_mountinfo, swap_devnums
from bty_live.errors import SelectorError, TargetVanishedError
from bty_live.system.blkid import Probe, probe_nodes
from bty_live.system.run import run
from bty_live.system.sysfs import (
    SECTOR,
    block_dir,
    devnum_of,
    listdir,
    loop_backing_file,
    node_path,
    parse_devnum,
    partition_dirs,
    read_flag,
    read_int,
    read_text,
    size_bytes,
)

DEV_DISK = Path("/dev/disk")
_VIRTUAL_NAME = re.compile(r"^(?:zram\d+|ram\d+|dm-\d+|md\d+|md_\w+)$")
_EXT_FAMILY = frozenset({"ext2", "ext3", "ext4"})
#: transport, kernel-name prefix, sysfs path component: the first match wins (USB disks sit below
#: a SCSI host, so usb comes before sata and scsi)
_TRANSPORTS: tuple[tuple[str, str, re.Pattern[str]], ...] = (
    ("nvme", "nvme", re.compile(r"nvme")),
    ("usb", "", re.compile(r"usb\d+")),
    ("sata", "", re.compile(r"ata\d+")),
    ("mmc", "mmcblk", re.compile(r"mmc_host")),
    ("scsi", "", re.compile(r"host\d+")),
    ("virtio", "", re.compile(r"virtio\d+")),
)
#: udev's ID_BUS, when the sysfs path says nothing
_BUS_TRANSPORTS = {"ata": "sata", "usb": "usb", "scsi": "scsi", "nvme": "nvme", "mmc": "mmc"}


def _natural_key(name: str) -> list[str | int]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


# --------------------------------------------------------------------------- system-wide state


def _disk_links() -> dict[tuple[str, str], tuple[str, ...]]:
    """(category, resolved node) -> links, for every symlink in /dev/disk/by-*/."""
    found: dict[tuple[str, str], list[str]] = {}
    for directory in sorted(DEV_DISK.glob("by-*")):
        for link in sorted(directory.glob("*")):
            if link.is_symlink():
                key = (directory.name, os.path.realpath(link))
                found.setdefault(key, []).append(str(link))
    return {key: tuple(links) for key, links in found.items()}


@dataclass(frozen=True)
class _Snapshot:
    """What is read once per discovery and shared by every disk."""

    mounts: Mapping[Devnum, tuple[str, ...]] = field(default_factory=dict)
    swaps: frozenset[Devnum] = frozenset()
    links: Mapping[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    entries: tuple[MountEntry, ...] = ()
    writers: Mapping[Devnum, tuple[tuple[int, str], ...]] = field(default_factory=dict)


def _snapshot() -> _Snapshot:
    entries = tuple(read_mountinfo())
    return _Snapshot(mounts=mounts_by_devnum(entries), swaps=swap_devnums(), links=_disk_links(),
                     entries=entries, writers=block_writers())


# --------------------------------------------------------------------------- identity attributes


def transport_of(name: str, sysdir: Path, props: Mapping[str, str]) -> str:
    """nvme, sata, usb, virtio, scsi, mmc, loop, virtual or unknown.

    The sysfs device path is authoritative (it exists without udev); ID_BUS is the fallback.
    USB is checked before SCSI/ATA because USB disks sit below a SCSI host.
    """
    if name.startswith("loop"):
        return "loop"
    if _VIRTUAL_NAME.match(name):
        return "virtual"
    parts = os.path.realpath(sysdir).split("/")
    for transport, name_prefix, path_part in _TRANSPORTS:
        if (name_prefix and name.startswith(name_prefix)) or any(path_part.fullmatch(p) for p in parts):
            return transport
    return _BUS_TRANSPORTS.get(props.get("ID_BUS", ""), "unknown")


def _vpd_serial(path: Path) -> str | None:
    """The unit serial number from a SCSI VPD page 0x80 (4-byte header, then ASCII)."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if len(data) <= 4:
        return None
    length = int.from_bytes(data[2:4], "big")
    text = data[4 : 4 + length].decode("ascii", "replace").strip(" \x00")
    return text or None


def _usb_serial(device: Path) -> str | None:
    """iSerial of the USB device above a disk: what udev's ID_SERIAL_SHORT holds for USB sticks."""
    node = Path(os.path.realpath(device))
    while str(node).startswith("/sys/devices/") and node != node.parent:
        if (node / "idVendor").exists():
            return read_text(node / "serial")
        node = node.parent
    return None


def _wwn_from_wwid(wwid: str | None) -> str | None:
    """A WWN in udev's form ("0x5000c500...") from a sysfs wwid ("naa.5000c500...", "eui...")."""
    if not wwid:
        return None
    low = wwid.strip().lower()
    for prefix in ("naa.", "eui."):
        if low.startswith(prefix):
            return "0x" + low[len(prefix):]
    return None


@dataclass(frozen=True)
class _Ids:
    vendor: str | None
    model: str | None
    serial: str | None
    wwn: str | None


def _read_ids(sysdir: Path, props: Mapping[str, str], transport: str) -> _Ids:
    """Vendor, model, serial and WWN: udev's values when it has them, else sysfs.

    `discover_disks` and `read_identity` both come through here, so a disk's identity reads the
    same at planning time and right before the first write.
    """
    device = sysdir / "device"
    serial = (
        props.get("ID_SERIAL_SHORT")
        or read_text(sysdir / "serial")  # virtio-blk
        or read_text(device / "serial")  # nvme, mmc
        or (_usb_serial(device) if transport == "usb" else None)
        or _vpd_serial(device / "vpd_pg80")  # scsi, sata
    )
    wwid = read_text(device / "wwid") or read_text(sysdir / "wwid")
    wwn = (props.get("ID_WWN") or "").lower() or _wwn_from_wwid(wwid)
    model = read_text(device / "model") or read_text(device / "name") or _udev_text(props, "ID_MODEL")
    # virtio and nvme "vendor" files hold PCI ids, not names
    vendor = read_text(device / "vendor") if transport in {"sata", "scsi", "usb"} else None
    return _Ids(vendor=vendor or _udev_text(props, "ID_VENDOR"), model=model, serial=serial, wwn=wwn)


def _udev_text(props: Mapping[str, str], key: str) -> str | None:
    value = props.get(key)
    return value.replace("_", " ").strip() if value else None


def _udev_props(devnum: Devnum) -> dict[str, str]:
    """udev/uevent properties of a block device; empty when pyudev cannot find it."""
    try:
        device = pyudev.Devices.from_device_number(pyudev.Context(), "block", os.makedev(*devnum))
        return dict(device.properties)
    except (OSError, LookupError, ValueError):
        return {}


# --------------------------------------------------------------------------- probing contents


def _ext_used_bytes(path: str) -> int | None:
    """Used bytes of an unmounted ext2/3/4 filesystem, from its superblock."""
    proc = run(["dumpe2fs", "-h", path], check=False, timeout=30)
    if proc.returncode != 0:
        return None
    values: dict[str, int] = {}
    for line in proc.stdout.splitlines():
        key, _, value = line.partition(":")
        if key in ("Block count", "Free blocks", "Block size") and value.strip().isdigit():
            values[key] = int(value)
    if len(values) < 3:
        return None
    return (values["Block count"] - values["Free blocks"]) * values["Block size"]


def _used_bytes(path: str, fstype: str | None, mountpoints: Sequence[str]) -> int | None:
    """Used bytes when cheaply known: statvfs when mounted, the superblock for ext*, else None."""
    if mountpoints:
        try:
            st = os.statvfs(mountpoints[0])
        except OSError:
            return None
        return (st.f_blocks - st.f_bfree) * st.f_frsize
    if fstype in _EXT_FAMILY:
        return _ext_used_bytes(path)
    return None


# --------------------------------------------------------------------------- building dataclasses


def _build_partition(pdir: Path, probe: Mapping[str, str], snap: _Snapshot) -> Partition:
    path = node_path(pdir, pdir.name)
    devnum = parse_devnum(read_text(pdir / "dev"))
    if devnum is None:
        raise FileNotFoundError(pdir / "dev")
    mountpoints = snap.mounts.get(devnum, ())
    fstype = probe.get("TYPE")
    return Partition(
        name=pdir.name,
        path=path,
        devnum=devnum,
        number=read_int(pdir / "partition") or 0,
        start=(read_int(pdir / "start") or 0) * SECTOR,
        size=(read_int(pdir / "size") or 0) * SECTOR,
        fstype=fstype,
        label=probe.get("LABEL"),
        uuid=probe.get("UUID"),
        partlabel=probe.get("PART_ENTRY_NAME"),
        mountpoints=mountpoints,
        holders=listdir(pdir / "holders"),
        swap=devnum in snap.swaps,
        used_bytes=_used_bytes(path, fstype, mountpoints),
    )


def _build_disk(name: str, sysdir: Path, props: Mapping[str, str], snap: _Snapshot) -> Disk:
    """Read one disk. Raises OSError when it vanishes halfway (another process detached it)."""
    devnum = parse_devnum(read_text(sysdir / "dev"))
    if devnum is None:
        raise FileNotFoundError(sysdir / "dev")
    path = props.get("DEVNAME") or node_path(sysdir, name)
    size = size_bytes(sysdir)
    transport = transport_of(name, sysdir, props)
    ids = _read_ids(sysdir, props, transport)
    pdirs = partition_dirs(sysdir)
    nodes = [path, *(node_path(d, d.name) for d in pdirs)]
    probe = probe_nodes(nodes) if size > 0 else Probe(values={}, errors={})
    own = probe.values.get(path, {})
    partitions = tuple(_build_partition(pdir, probe.values.get(node, {}), snap)
                       for pdir, node in zip(pdirs, nodes[1:], strict=True))
    mountpoints = snap.mounts.get(devnum, ())
    real = os.path.realpath(path)
    return Disk(
        name=name,
        path=path,
        devnum=devnum,
        size=size,
        transport=transport,
        logical_sector_size=read_int(sysdir / "queue" / "logical_block_size") or 512,
        physical_sector_size=read_int(sysdir / "queue" / "physical_block_size") or 512,
        vendor=ids.vendor,
        model=ids.model,
        serial=ids.serial,
        wwn=ids.wwn,
        by_id=snap.links.get(("by-id", real), ()),
        by_path=snap.links.get(("by-path", real), ()),
        removable=read_flag(sysdir / "removable"),
        rotational=read_flag(sysdir / "queue" / "rotational"),
        read_only=read_flag(sysdir / "ro"),
        pttype=own.get("PTTYPE"),
        partitions=partitions,
        mountpoints=mountpoints,
        holders=listdir(sysdir / "holders"),
        swap=devnum in snap.swaps,
        loop_backing_file=loop_backing_file(sysdir),
        fstype=own.get("TYPE"),
        label=own.get("LABEL"),
        uuid=own.get("UUID"),
        used_bytes=_used_bytes(path, own.get("TYPE"), mountpoints),
        diskseq=read_int(sysdir / "diskseq"),
        backing_chain=backing_chain(devnum, snap.entries),
        writers=_writers(snap, [(name, devnum), *((p.name, p.devnum) for p in partitions)]),
        probe_error=probe.error_text(),
    )


def _writers(snap: _Snapshot, nodes: Iterable[tuple[str, Devnum]]) -> tuple[Opener, ...]:
    return tuple(Opener(pid=pid, command=command, node=node)
                 for node, devnum in nodes for pid, command in snap.writers.get(devnum, ()))


def _is_virtual(name: str, sysdir: Path) -> bool:
    """zram, ram, dm, md, unbound loop devices, hidden and size-0 devices: not flash targets."""
    if _VIRTUAL_NAME.match(name) or read_flag(sysdir / "hidden"):
        return True
    if name.startswith("loop") and loop_backing_file(sysdir) is None:
        return True
    return not read_int(sysdir / "size")


def _enumerate() -> Iterator[tuple[str, Path, dict[str, str]]]:
    """(name, sysfs dir, properties) of every whole disk that pyudev sees."""
    for device in pyudev.Context().list_devices(subsystem="block", DEVTYPE="disk"):
        try:
            props = dict(device.properties)
        except (OSError, LookupError):
            continue  # vanished while we looked
        yield device.sys_name, Path(device.sys_path), props


def discover_disks(include_virtual: bool = False) -> list[Disk]:
    """Every whole disk, sorted by name; virtual ones (see `_is_virtual`) only when asked."""
    snap = _snapshot()
    disks = []
    for name, sysdir, props in _enumerate():
        if not include_virtual and _is_virtual(name, sysdir):
            continue
        try:
            disks.append(_build_disk(name, sysdir, props, snap))
        except OSError:
            continue  # detached or unplugged while we read it
    return sorted(disks, key=lambda d: _natural_key(d.name))


def find_disk(path_or_name: str) -> Disk:
    """One disk by name ("sda"), node ("/dev/sda") or link ("/dev/disk/by-id/..."), virtual or not."""
    text = path_or_name.strip()
    if is_file_target(text):
        return file_disk(text)
    node = text if "/" in text else f"/dev/{text}"
    devnum = block_devnum(node)
    if devnum is None:
        raise SelectorError(f"no such disk: {text} (not a block device node; see `bty disks`)")
    sysdir = block_dir(devnum)
    if (sysdir / "partition").is_file():
        raise SelectorError(f"{text} is partition {sysdir.name} of {sysdir.parent.name}; "
                            f"give the whole disk (/dev/{sysdir.parent.name})")
    try:
        return _build_disk(sysdir.name, sysdir, _udev_props(devnum), _snapshot())
    except OSError as exc:
        raise SelectorError(f"disk {text} vanished while it was being read") from exc


def read_identity(path: str | os.PathLike[str]) -> DiskIdentity:
    """The identity of the disk at `path`, read fresh from sysfs (no blkid: cheap, no side effects).

    Raises TargetVanishedError when the node is gone, is no longer a block device, or has no
    medium (size 0: an emptied card reader or a detached loop device).
    """
    if is_file_target(path):
        return file_identity(path)
    try:
        st = os.stat(path)
    except FileNotFoundError as exc:
        raise TargetVanishedError(f"{path} is gone: the disk was unplugged or detached") from exc
    if not stat.S_ISBLK(st.st_mode):
        raise TargetVanishedError(f"{path} is no longer a block device")
    devnum = devnum_of(st.st_rdev)
    sysdir = block_dir(devnum)
    size = size_bytes(sysdir)
    if not sysdir.is_dir() or size == 0:
        raise TargetVanishedError(f"{path} has no medium (size 0): the disk was unplugged or detached")
    props = _udev_props(devnum)
    ids = _read_ids(sysdir, props, transport_of(sysdir.name, sysdir, props))
    return DiskIdentity(
        path=os.path.realpath(path),
        devnum=devnum,
        size=size,
        serial=ids.serial,
        wwn=ids.wwn,
        model=ids.model,
        loop_backing_file=loop_backing_file(sysdir),
        diskseq=read_int(sysdir / "diskseq"),
    )
