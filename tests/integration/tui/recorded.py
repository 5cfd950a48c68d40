"""Recorded data for the snapshot apps: a catalog, a machine's disks, a plan, a flash's event
stream, a receipt. Fixed values only, so every snapshot is the same on every machine."""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from pathlib import Path

from bty_live.capture.engine import CaptureResult
from bty_live.capture.plan import CaptureOptions, CapturePlan, Space, worst_case_bytes
from bty_live.capture.receipt import CaptureReceipt
from bty_live.disk.eligibility import Assessed
from bty_live.disk.model import Disk, Partition
from bty_live.errors import Cancelled, DigestMismatchError
from bty_live.events import Event, EventSink, Kind, Phase
from bty_live.flash.plan import FlashOptions, FlashPlan, make_plan
from bty_live.flash.receipt import Receipt
from bty_live.image.catalog import CatalogEntry
from bty_live.image.formats import Compression
from bty_live.image.manifest import Manifest
from bty_live.image.partitions import Partition as ImagePartition
from bty_live.image.partitions import PartitionTable
from bty_live.image.source import ImageSource
from bty_live.image.sources import RawStream
from bty_live.tui.backend import Backend, CaptureDraft, Watcher

GiB = 1 << 30
MiB = 1 << 20
IMAGES_DIR = Path("/run/bty/images")
#: the recorded flash's first event (2026-11-25 12:00:00 UTC); the frozen clock reads 7 s later
T0 = 1_795_608_000.0
NOW = T0 + 7.2
DIGEST = "7180e5f3b2a94c1d" + "5e0f6a7b8c9d0e1f" * 3

DEBIAN = Manifest(name="debian-12-desktop", size=8 * GiB, blake3=DIGEST, os="debian-12", arch="x86_64",
                  description="Debian 12 with GNOME and the lab's tools, for the classroom PCs")
UBUNTU = Manifest(name="ubuntu-24.04-server", size=4 * GiB, blake3="ab" * 32, os="ubuntu-24.04", arch="x86_64",
                  description="Ubuntu 24.04 LTS server, cloud-init enabled")


def _entry(name: str, manifest: Manifest | None, compression: Compression | None, file_size: int,
           size: int | None, format_error: str | None = None) -> CatalogEntry:
    return CatalogEntry(path=IMAGES_DIR / name, name=manifest.name if manifest else name.split(".")[0],
                        manifest=manifest, manifest_error=None, bmap_path=None, compression=compression,
                        format_error=format_error, file_size=file_size, size=size)


ENTRIES = [
    _entry("debian-12-desktop.img.zst", DEBIAN, Compression.ZSTD, 2 * GiB, 8 * GiB),
    _entry("scratch.img", None, Compression.RAW, 2 * GiB, 2 * GiB),
    _entry("ubuntu-24.04-server.img.xz", UBUNTU, Compression.XZ, 900 * MiB, 4 * GiB),
    _entry("win11.img", None, None, 30 * GiB, None,
           format_error="image win11.img is a qcow2 virtual disk, not a disk image; "
                        "convert it: qemu-img convert -O raw IN OUT.img"),
]


def _part(disk: str, n: int, start: int, size: int, fstype: str, label: str | None, used: int | None,
          mounts: tuple[str, ...] = ()) -> Partition:
    name = f"{disk}p{n}" if disk[-1].isdigit() else f"{disk}{n}"
    return Partition(name=name, path=f"/dev/{name}", devnum=(259, n), number=n, start=start, size=size,
                     fstype=fstype, label=label, used_bytes=used, mountpoints=mounts)


NVME = Disk(
    name="nvme0n1", path="/dev/nvme0n1", devnum=(259, 0), size=1000 * 10**9, transport="nvme",
    model="WD Blue SN570 1TB", serial="22413F801234", wwn="eui.e8238fa6bf530001001b448b4a1e8f2c",
    by_id=("/dev/disk/by-id/nvme-WD_Blue_SN570_1TB_22413F801234",),
    by_path=("/dev/disk/by-path/pci-0000:01:00.0-nvme-1",), pttype="gpt",
    partitions=(
        _part("nvme0n1", 1, MiB, 512 * MiB, "vfat", "EFI", 31 * MiB),
        _part("nvme0n1", 2, 513 * MiB, 900 * GiB, "ext4", "root", 118 * GiB),
        _part("nvme0n1", 3, 901 * GiB, 16 * GiB, "swap", None, None),
    ),
)
SDA = Disk(name="sda", path="/dev/sda", devnum=(8, 0), size=500 * 10**9, transport="sata", vendor="ATA",
           model="Samsung SSD 870", serial="S5Y1NX0T123456", wwn="0x5002538e40a1b2c3",
           by_id=("/dev/disk/by-id/ata-Samsung_SSD_870_EVO_500GB_S5Y1NX0T123456",), pttype="gpt",
           partitions=(_part("sda", 1, MiB, 499 * GiB, "ext4", "data", 312 * GiB),))
STICK = Disk(name="sdb", path="/dev/sdb", devnum=(8, 16), size=64 * GiB, transport="usb", vendor="SanDisk",
             model="Extreme", serial="4C530001230607117123", removable=True, pttype="gpt",
             partitions=(_part("sdb", 1, MiB, 2 * GiB, "vfat", "BTY", None, ("/run/bty/live",)),
                         _part("sdb", 2, 2 * GiB, 62 * GiB, "exfat", "BTY_IMAGES", 41 * GiB, ("/run/bty/images",))))
CARD = Disk(name="sdc", path="/dev/sdc", devnum=(8, 32), size=4 * GiB, transport="usb", vendor="Generic",
            model="SD/MMC Reader", serial="000000000819")

ASSESSED = [
    Assessed(NVME, ()),
    Assessed(SDA, ()),
    Assessed(STICK, ("boot medium: holds the running system or the images directory",
                     "mounted: sdb1 at /run/bty/live, sdb2 at /run/bty/images")),
    Assessed(CARD, ("too small: 4 GiB < image 8 GiB",)),
]


@dataclass
class RecordedSource:
    """Stands in for the image file: planning only needs its name and path."""

    name: str
    size: int | None
    path: Path | None

    def open(self) -> RawStream:
        raise OSError("a recorded image has no bytes")


IMAGE = ImageSource(
    source=RecordedSource("debian-12-desktop.img.zst", 2 * GiB, IMAGES_DIR / "debian-12-desktop.img.zst"),
    name="debian-12-desktop", compression=Compression.ZSTD, file_size=2 * GiB, size=8 * GiB,
    size_source="manifest", manifest=DEBIAN, bmap=None, frames=None,
    table=PartitionTable(scheme="gpt", sector_size=512, partitions=(
        ImagePartition(1, MiB, 512 * MiB, "c12a7328-f81f-11d2-ba4b-00a0c93ec93b", "EFI System", name="esp"),
        ImagePartition(2, 513 * MiB, 8 * GiB - 514 * MiB, "4f68bce3-e8cd-4db1-96e7-fbcaf984b709",
                       "Linux root (x86-64)", name="root"),
    )),
)
PLAN = make_plan(IMAGE, NVME, (), FlashOptions())
CONTENTS = [
    "nvme0n1  gpt partition table, 3 partitions",
    "nvme0n1p1  vfat  'EFI'  512 MiB, 31 MiB used",
    "nvme0n1p2  ext4  'root'  900 GiB, 118 GiB used",
    "nvme0n1p3  swap  16 GiB",
]


def flash_events() -> list[Event]:
    """A flash of the Debian image, recorded until 45% of the write. One PROGRESS event: the
    throttle always passes the first one of a phase, so what the screen shows never depends on
    how fast the replay runs."""
    size = 8 * GiB
    return [
        Event(Phase.PLAN, Kind.INFO, message="flashing debian-12-desktop onto /dev/nvme0n1", timestamp=T0),
        Event(Phase.WRITE, Kind.START, total=size, message="writing debian-12-desktop to /dev/nvme0n1",
              timestamp=T0 + 0.1),
        Event(Phase.WRITE, Kind.PROGRESS, bytes_in=1500 * MiB, bytes_out=3686 * MiB, total=size,
              zero_bytes=1240 * MiB, rate=812e6, eta=5.8, elapsed=4.8, timestamp=T0 + 4.9),
    ]


def finished_events() -> list[Event]:
    size = 8 * GiB
    return [
        *flash_events(),
        Event(Phase.WRITE, Kind.END, bytes_in=2 * GiB, bytes_out=size, total=size, zero_bytes=3 * GiB, rate=810e6,
              elapsed=10.6, digest=DIGEST, message="wrote 5 GiB, zero-filled 3 GiB", timestamp=T0 + 10.7),
        Event(Phase.VERIFY, Kind.INFO, message=f"stream blake3 matches the manifest ({DIGEST[:16]}...)",
              timestamp=T0 + 10.7),
        Event(Phase.VERIFY, Kind.START, total=size, message="reading back 8 GiB from /dev/nvme0n1",
              timestamp=T0 + 10.8),
        Event(Phase.VERIFY, Kind.END, bytes_out=size, total=size, rate=2100e6, elapsed=4.1, digest=DIGEST,
              timestamp=T0 + 14.9),
        Event(Phase.FIXUP, Kind.START, message="partition table", timestamp=T0 + 15.0),
        Event(Phase.FIXUP, Kind.INFO, message="moved the backup GPT to the end of the disk", timestamp=T0 + 15.2),
        Event(Phase.FIXUP, Kind.END, elapsed=0.3, timestamp=T0 + 15.3),
    ]


RECEIPT = Receipt(
    result="ok", image_name="debian-12-desktop", image_path=str(IMAGES_DIR / "debian-12-desktop.img.zst"),
    image_size=8 * GiB, image_blake3=DIGEST, manifest_blake3=DIGEST, target_path="/dev/nvme0n1",
    target_model="WD Blue SN570 1TB", target_serial="22413F801234", target_wwn=NVME.wwn, target_size=NVME.size,
    target_transport="nvme", target_by_id=list(NVME.by_id), bytes_written=5 * GiB, bytes_zeroed=3 * GiB,
    verify_mode="readback", stream_check="match", readback_check="match",
    fixups=["moved the backup GPT to the end of the disk", "GPT ok: 2 partitions"],
    phases={"write": 10.6, "verify": 4.1, "fixup": 0.3}, started_at="2026-11-25T12:00:00+00:00",
    finished_at="2026-11-25T12:00:15+00:00", host="lab-pc-17",
)


def digest_error() -> DigestMismatchError:
    error = DigestMismatchError(
        f"image debian-12-desktop.img.zst does not match its manifest: blake3 0d1e2f3a4b5c6d7e... != "
        f"{DIGEST[:16]}...; the image is damaged or the manifest is stale: re-copy the image, or rerun "
        "`bty images add` if you changed it on purpose")
    error.aftermath = "/dev/nvme0n1 wiped: partition tables and signatures at its start and end were zeroed"
    return error


class NoWatcher:
    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


def _no_watcher(callback: object) -> Watcher:
    return NoWatcher()


def _replay(plan: FlashPlan, sink: EventSink, cancel: threading.Event) -> Receipt:
    """The recorded write, then a stall until cancelled: the Progress screen stays at 45%."""
    for event in flash_events():
        sink(event)
    cancel.wait()
    raise DigestMismatchError("not reached in snapshots")


RECEIPT_PATH = IMAGES_DIR / "receipts" / "20261125T120015-debian-12-desktop-nvme0n1.json"


def _no_save(receipt: Receipt) -> Path:
    return RECEIPT_PATH


def recorded_backend() -> Backend:
    return Backend(
        list_images=lambda directory: list(ENTRIES),
        assess_disks=lambda entry, directory: list(ASSESSED),
        plan=lambda entry, disk, options, directory: replace(PLAN, options=options),
        contents=lambda disk: list(CONTENTS),
        flash=_replay,
        save_receipt=_no_save,
        watch_disks=_no_watcher,
        assess_for_capture=lambda directory: list(CAPTURE_ASSESSED),
        plan_capture=lambda disk, output, options: CAPTURE_DRAFT,
        capture=_capture_replay,
    )



# -- a capture of the NVMe disk into the stick's images partition ---------------------------------

CAPTURE_ASSESSED = [
    Assessed(NVME, ()),
    Assessed(SDA, ("has /srv mounted (from sda1); unmount it first, a mounted filesystem changes while it is read",)),
    Assessed(STICK, ("holds the images directory /run/bty/images (its filesystem is on this disk): write the "
                     "capture to another disk",
                     "has /run/bty/live mounted (from sdb1), /run/bty/images mounted (from sdb2); unmount them "
                     "first, a mounted filesystem changes while it is read")),
    Assessed(CARD, ()),
]
CAPTURE_NAME = "WD_Blue_SN570_1TB-22413F801234-2026-11-25"
CAPTURE_OUTPUT = IMAGES_DIR / f"{CAPTURE_NAME}.img.zst"
CAPTURE_LENGTH = 918 * GiB
CAPTURE_TABLE = PartitionTable(scheme="gpt", sector_size=512, partitions=(
    ImagePartition(1, MiB, 512 * MiB, "c12a7328-f81f-11d2-ba4b-00a0c93ec93b", "EFI System"),
    ImagePartition(2, 513 * MiB, 900 * GiB, "4f68bce3-e8cd-4db1-96e7-fbcaf984b709", "Linux root (x86-64)"),
    ImagePartition(3, 901 * GiB, 16 * GiB, "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f", "Linux swap"),
))
CAPTURE_PLAN = CapturePlan(
    disk=NVME, disk_size=NVME.size, output=CAPTURE_OUTPUT, options=CaptureOptions(trim=True), length=CAPTURE_LENGTH,
    head=b"", table=CAPTURE_TABLE, filesystems={}, patches=(), name=CAPTURE_NAME, os="debian-12", arch="x86_64",
    space=Space(free=180 * GiB, worst_case=worst_case_bytes(CAPTURE_LENGTH), in_use=118 * GiB + 31 * MiB),
)
CAPTURE_DRAFT = CaptureDraft(CAPTURE_PLAN, no_room=None)


def capture_events() -> list[Event]:
    """A capture of the NVMe disk, recorded at a third of the way."""
    return [
        Event(Phase.PLAN, Kind.INFO, message=f"capturing /dev/nvme0n1 (918 GiB) into {CAPTURE_OUTPUT}", timestamp=T0),
        Event(Phase.CAPTURE, Kind.START, total=CAPTURE_LENGTH,
              message=f"reading /dev/nvme0n1 into {CAPTURE_OUTPUT.name}.partial", timestamp=T0 + 0.1),
        Event(Phase.CAPTURE, Kind.PROGRESS, bytes_in=41 * GiB, bytes_out=306 * GiB, total=CAPTURE_LENGTH,
              zero_bytes=212 * GiB, rate=1.31e9, eta=502.0, elapsed=251.0, timestamp=T0 + 4.9),
    ]


def _capture_replay(plan: CapturePlan, sink: EventSink, cancel: threading.Event) -> CaptureResult:
    """The recorded capture, then a stall until cancelled: the Progress screen stays at a third."""
    for event in capture_events():
        sink(event)
    cancel.wait()
    raise Cancelled("cancelled by the user")


CAPTURE_RECEIPT = CaptureReceipt(
    result="ok", disk_path="/dev/nvme0n1", disk_model=NVME.model, disk_serial=NVME.serial, disk_wwn=NVME.wwn,
    disk_size=NVME.size, disk_transport="nvme", disk_by_id=list(NVME.by_id), output=str(CAPTURE_OUTPUT),
    manifest=f"{CAPTURE_OUTPUT}.toml", image_name=CAPTURE_NAME, image_size=CAPTURE_LENGTH, trimmed=True,
    partition_table="gpt", bytes_read=CAPTURE_LENGTH, zero_bytes=790 * GiB, compressed_size=52 * GiB,
    frames=117504, blake3=DIGEST, sha256="5d" * 32, level=3, seconds=742.0,
    started_at="2026-11-25T12:00:00+00:00", finished_at="2026-11-25T12:12:22+00:00", host="lab-pc-17",
    saved_to=str(IMAGES_DIR / "receipts" / f"20261125T121222-capture-{CAPTURE_NAME}-nvme0n1.json"),
)
CAPTURE_RESULT = CaptureResult(CAPTURE_RECEIPT, Path(f"{CAPTURE_OUTPUT}.toml"))
