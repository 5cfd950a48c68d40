"""Unattended capture: `bty.capture=SELECTOR` on the kernel command line reads that disk into
NAME.img.zst and its manifest on the stick's images partition, then powers off (or as
`bty.after=` says): the golden machine's image, ready to flash elsewhere.

    bty.capture=SELECTOR  bty.capture_name=NAME  bty.capture_trim=1  bty.after=...  bty.dry_run=1

NAME defaults to the disk's model and serial and the UTC date (Samsung_SSD_870-S3Z1NB0K-2026-12-03).
The output goes into the images partition and nowhere else: not into the live system's memory
when the partition is not mounted, never over an image of the same name (a golden image is not
replaced: pick another name), and not when the partition has less room than the disk's
filesystems hold. Otherwise as an unattended flash (`stick/unattended.py`): fail closed with one
line on every console, a log on the partition, the receipt under receipts/ there, and an
already-done marker so a stick left in the machine does not capture again after a reboot.
"""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path

from bty_live.capture import engine
from bty_live.capture.plan import CaptureOptions, CapturePlan
from bty_live.capture.prepare import check_output, choose_disk_to_read, plan_capture
from bty_live.capture.receipt import CaptureReceipt
from bty_live.disk.eligibility import capture_context
from bty_live.disk.model import Disk
from bty_live.errors import UsageError
from bty_live.image.catalog import image_stem, is_image_file
from bty_live.image.manifest import manifest_path_for
from bty_live.render.events import MilestoneLines
from bty_live.stick.unattended import IMAGE_SUFFIX, CaptureRequest, Consoles, finish, marker_path, remember
from bty_live.system.actions import SystemActions
from bty_live.system.machine import MachineIdentity, read_machine_identity
from bty_live.system.state_dirs import LIVE_IMAGES_DIR

#: how much of the model and of the serial goes into a default name
NAME_PART = 40


def run_unattended_capture(
    request: CaptureRequest,
    *,
    images_dir: Path,
    consoles: Consoles,
    actions: SystemActions,
    machine: MachineIdentity | None = None,
    now: datetime | None = None,
) -> int:
    """Capture per `request` into `images_dir`. Returns 0 when done (after asking for reboot or
    poweroff if wanted), SHELL_EXIT_CODE when a shell is wanted, or raises BtyError."""
    machine = machine or read_machine_identity()
    say = consoles.line
    say(f"bty unattended: capture disk {request.disk} into {images_dir} (name {request.name or 'from the disk'}"
        f"{', trimmed' if request.trim else ''}; afterwards {request.after}{', DRY RUN' if request.dry_run else ''})")
    marker = marker_path(images_dir, machine, request)
    if marker.exists() and not request.dry_run:
        say(already_done(marker))
        return 0  # never reboot or power off again from here: that is how loops start
    require_images_partition(images_dir)
    plan = plan_unattended_capture(request, images_dir, now or datetime.now(UTC))
    for line in plan.describe():
        say(f"bty unattended: {line}")
    if request.dry_run:
        say("bty unattended: dry run (bty.dry_run=1): nothing was captured or written")
        return 0
    receipt = engine.capture(plan, MilestoneLines(out=consoles)).receipt
    for line in receipt.summary():
        say(line)
    remember(marker, marker_record(request, receipt), say, again="captured again")
    return finish(request.after, actions, say)


def already_done(marker: Path) -> str:
    done = json.loads(marker.read_text())
    return (f"bty unattended: disk {done.get('disk')} of this machine was already captured into "
            f"{done.get('output')} at {done.get('finished_at')}; not capturing again. Remove the stick to boot "
            f"the machine, or delete {marker} on the stick to capture again.")


def marker_record(request: CaptureRequest, receipt: CaptureReceipt) -> dict[str, str | None]:
    return {"capture": request.disk, "disk": receipt.disk_path, "serial": receipt.disk_serial,
            "output": receipt.output, "finished_at": receipt.finished_at, "receipt": receipt.saved_to}


def require_images_partition(images_dir: Path) -> None:
    """The capture's only destination exists, is the mounted partition on the stick, and takes writes."""
    if not images_dir.is_dir():
        raise UsageError(f"no images partition: {images_dir} is not a directory, and a capture is written to "
                         "the stick's images partition only; boot a bty stick (or pass --images DIR); "
                         "nothing was read or written")
    if images_dir.resolve() == LIVE_IMAGES_DIR and not os.path.ismount(LIVE_IMAGES_DIR):
        raise UsageError(f"the stick's images partition is not mounted at {LIVE_IMAGES_DIR} (see the bty-images "
                         "lines on the console), so the capture would fill the live system's memory; "
                         "nothing was read or written")
    if not os.access(images_dir, os.W_OK):
        raise UsageError(f"the images partition {images_dir} cannot be written (mounted read-only after an "
                         "unclean removal?); repair it (fsck.exfat) and boot again; nothing was read or written")


def plan_unattended_capture(request: CaptureRequest, images_dir: Path, now: datetime) -> CapturePlan:
    """Choose the disk (the read rules), name the output after it, check the name is free, plan."""
    unnamed = images_dir / f"new{IMAGE_SUFFIX}"  # the partition's disk is protected before the output is named
    disk = choose_disk_to_read(request.disk, capture_context(unnamed))
    output = new_output(images_dir, request.name or default_capture_name(disk, now))
    options = CaptureOptions(trim=request.trim, receipts_dir=images_dir / "receipts",
                             space_fix=space_fix(images_dir))
    return plan_capture(disk, output, options, capture_context(output))


def default_capture_name(disk: Disk, now: datetime) -> str:
    """MODEL-SERIAL-YYYY-MM-DD (UTC), each part cut to a safe file name; the kernel's name of the
    disk when it has neither model nor serial."""
    parts = [part for part in (_safe(disk.model), _safe(disk.serial)) if part] or [_safe(disk.name) or "disk"]
    return "-".join([*parts, now.astimezone(UTC).strftime("%Y-%m-%d")])


def _safe(text: str | None) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text or "").strip("._+-")[:NAME_PART].strip("._+-")


def new_output(images_dir: Path, name: str) -> Path:
    """NAME.img.zst in the images partition; refused when an image of that name is there already
    (any suffix, or a manifest left beside it): a golden image is never replaced."""
    output = images_dir / f"{name}{IMAGE_SUFFIX}"
    taken = sorted(path.name for path in images_dir.iterdir() if is_image_file(path) and image_stem(path) == name)
    taken += [path.name for path in (output, manifest_path_for(output)) if path.exists() and path.name not in taken]
    if taken:
        raise UsageError(f"an image named {name} is already on the images partition ({', '.join(taken)}); a capture "
                         "never replaces one: pick another name with bty.capture_name= at the boot menu; "
                         "nothing was read or written")
    return check_output(output, force=False)


def space_fix(images_dir: Path) -> str:
    """The fix the too-little-space refusal names: the partition is what is too small."""
    return (f"the images partition {images_dir} is too small: use a larger stick (its images partition grows to "
            "fill it at the first boot) or delete images from it; nothing was captured")
