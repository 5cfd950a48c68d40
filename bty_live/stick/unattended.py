"""Unattended mode: the kernel command line names the image and the disk, bty flashes, then
reboots, powers off, or hands over to the TUI.

    bty.image=NAME|BLAKE3-PREFIX  bty.disk=SELECTOR  bty.verify=readback|stream|off
    bty.tune=TASK|off  bty.after=reboot|poweroff|shell|tui  bty.dry_run=1

Fail closed: an unknown `bty.` key (a typo such as `bty.dsik=`), a missing disk selector, a
selector matching zero or several disks, any flash failure: a clear message on every console,
nothing more written, no reboot, and the TUI takes over. A machine flashed successfully is
remembered on the images partition, so a stick left in a machine that reboots into it again
does not flash the disk a second time (no reboot loop).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import TextIO

from bty_live.disk.contents import describe_contents
from bty_live.errors import SHELL_EXIT_CODE, BtyError, UsageError
from bty_live.flash import engine
from bty_live.flash.plan import FlashOptions, VerifyMode
from bty_live.flash.prepare import prepare_plan
from bty_live.flash.receipt import Receipt
from bty_live.render.events import MilestoneLines
from bty_live.system.actions import SystemActions
from bty_live.system.machine import MachineIdentity, read_machine_identity

ACTIVE_CONSOLES = Path("/sys/class/tty/console/active")
MARKERS_DIR = "unattended"
LOGS_DIR = "logs"


class After(StrEnum):
    REBOOT = "reboot"
    POWEROFF = "poweroff"
    SHELL = "shell"
    TUI = "tui"



KEYS = ("image", "disk", "verify", "tune", "after", "dry_run")


@dataclass(frozen=True)
class UnattendedRequest:
    image: str
    disk: str
    verify: VerifyMode = VerifyMode.READBACK
    tune: str | None = None  # None: the manifest's task; "off": none; else a task file
    after: After = After.POWEROFF
    dry_run: bool = False

    def key(self) -> str:
        """What makes two requests the same, for the already-done marker."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def parse_cmdline(cmdline: str) -> UnattendedRequest | None:
    """The request on a kernel command line; None when it holds no `bty.image=`."""
    values: dict[str, str] = {}
    for word in shlex.split(cmdline):
        if not word.startswith("bty."):
            continue
        key, sep, value = word[4:].partition("=")
        if key in ("server", "token", "mac"):  # the PXE agent's keys, not ours
            continue
        if key not in KEYS:
            raise UsageError(f"unknown kernel command-line key bty.{key}= (known: "
                             + ", ".join(f"bty.{k}=" for k in KEYS) + "); fix it at the boot menu")
        if not sep:
            raise UsageError(f"bty.{key} needs a value (bty.{key}=...); fix it at the boot menu")
        values[key] = value
    if "image" not in values:
        return None
    if not values.get("disk"):
        raise UsageError("bty.image= is set but bty.disk= is not: unattended mode needs a disk selector "
                         "(e.g. bty.disk=serial=ABC123 or bty.disk=tran=nvme,size>=100G); nothing was written")
    try:
        verify = VerifyMode(values.get("verify", VerifyMode.READBACK.value))
        after = After(values.get("after", After.POWEROFF.value))
    except ValueError as exc:
        raise UsageError(f"bad value on the kernel command line: {exc}; fix it at the boot menu") from exc
    dry_run = values.get("dry_run", "0").lower() in ("1", "yes", "true", "on")
    return UnattendedRequest(image=values["image"], disk=values["disk"], verify=verify,
                             tune=values.get("tune"), after=after, dry_run=dry_run)


class Consoles:
    """Writes each line to our stdout and to every other active console (serial included)."""

    def __init__(self, primary: TextIO | None = None, devices: Sequence[str] | None = None,
                 log: Path | None = None) -> None:
        self.primary = primary or sys.stdout
        self.streams: list[TextIO] = []
        for device in devices if devices is not None else active_consoles():
            try:
                fd = os.open(device, os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK)
                self.streams.append(os.fdopen(fd, "w", buffering=1))
            except OSError:
                continue  # a console we cannot open is not worth failing the flash over
        self.log: TextIO | None = None
        if log is not None:
            try:
                log.parent.mkdir(parents=True, exist_ok=True)
                self.log = open(log, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - closed in close()
            except OSError:
                self.log = None

    def write(self, text: str) -> int:
        for stream in (self.primary, *self.streams, *([self.log] if self.log else [])):
            try:
                stream.write(text)
                stream.flush()
            except OSError:
                continue
        return len(text)

    def flush(self) -> None:
        pass

    def line(self, text: str) -> None:
        self.write(text.rstrip("\n") + "\n")

    def close(self) -> None:
        for stream in self.streams:
            with contextlib.suppress(OSError):
                stream.close()
        if self.log:
            self.log.close()


def active_consoles(path: Path = ACTIVE_CONSOLES) -> list[str]:
    """/dev nodes of the kernel's active consoles other than the one we already write to."""
    try:
        names = path.read_text().split()
    except OSError:
        return []
    try:
        ours = os.ttyname(sys.stdout.fileno())
    except OSError:
        ours = ""
    devices = []
    for name in names:
        device = "/dev/tty1" if name == "tty0" else f"/dev/{name}"
        if os.path.realpath(device) != os.path.realpath(ours or "/nonexistent"):
            devices.append(device)
    return devices


def marker_path(images_dir: Path, machine: MachineIdentity, request: UnattendedRequest) -> Path:
    who = machine.uuid or machine.serial or machine.primary_mac or "unknown-machine"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in who)
    return images_dir / MARKERS_DIR / f"{safe}-{request.key()}.json"


def run_unattended(
    request: UnattendedRequest,
    *,
    images_dir: Path,
    consoles: Consoles,
    actions: SystemActions,
    machine: MachineIdentity | None = None,
) -> int:
    """Flash per `request`. Returns 0 when done (after asking for reboot/poweroff if wanted),
    SHELL_EXIT_CODE when a shell is wanted, or raises BtyError (the caller maps it)."""
    machine = machine or read_machine_identity()
    say = consoles.line
    say(f"bty unattended: image {request.image} -> disk {request.disk} (verify {request.verify}, "
        f"afterwards {request.after}{', DRY RUN' if request.dry_run else ''})")
    marker = marker_path(images_dir, machine, request)
    if marker.exists() and not request.dry_run:
        done = json.loads(marker.read_text())
        say(f"bty unattended: this machine was already flashed with {done.get('image')} onto "
            f"{done.get('target')} at {done.get('finished_at')}; not flashing again. Remove the stick to boot "
            f"the flashed disk, or delete {marker} on the stick to flash again.")
        return 0  # never reboot or power off again from here: that is how loops start
    options = FlashOptions(verify=request.verify, tune=request.tune, receipts_dir=images_dir / "receipts")
    plan = prepare_plan(request.image, request.disk, options, images_dir)
    for line in plan.describe():
        say(f"bty unattended: {line}")
    if request.dry_run:
        say(f"bty unattended: {plan.disk.path} holds now:")
        for line in describe_contents(plan.disk):
            say(f"bty unattended:   {line}")
        say("bty unattended: dry run (bty.dry_run=1): nothing was written")
        return 0
    renderer = MilestoneLines(out=consoles)
    receipt = engine.flash(plan, renderer).receipt
    saved = Path(receipt.saved_to) if receipt.saved_to else None
    for line in receipt.summary():
        say(line)
    _remember(marker, receipt, saved, say)
    say(f"bty unattended: done; {request.after}")
    if request.after == After.REBOOT:
        actions.reboot()
    elif request.after == After.POWEROFF:
        actions.poweroff()
    elif request.after == After.SHELL:
        return SHELL_EXIT_CODE
    return 0


def _remember(marker: Path, receipt: Receipt, saved: Path | None, say: Callable[[str], None]) -> None:
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"image": receipt.image_name, "target": receipt.target_path,
                                      "finished_at": receipt.finished_at,
                                      "receipt": str(saved) if saved else None}) + "\n")
    except OSError as exc:
        say(f"bty unattended: warning: could not record the run on the stick ({exc}); if this machine boots "
            "the stick again it will be flashed again")


def log_path(images_dir: Path) -> Path:
    return images_dir / LOGS_DIR / f"unattended-{time.strftime('%Y%m%dT%H%M%S')}.log"


def read_cmdline() -> str:
    try:
        return Path("/proc/cmdline").read_text()
    except OSError:
        return ""


def describe_failure(exc: BtyError) -> str:
    return (f"bty unattended: FAILED: {exc.full_message()}\n"
            "bty unattended: nothing more will be written and the machine will not reboot; "
            "the TUI starts next (or fix the boot menu's bty.* keys and reboot)")
