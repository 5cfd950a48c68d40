"""Unattended mode: the kernel command line names the image and the disk, bty flashes, then
reboots, powers off, or hands over to the TUI. Or it names a disk to capture into the stick's
images partition (`stick/unattended_capture.py`).

    bty.image=NAME|BLAKE3-PREFIX  bty.disk=SELECTOR  bty.verify=readback|stream|off
    bty.tune=TASK|off  bty.after=reboot|poweroff|shell|tui  bty.dry_run=1
    bty.full=1 (write the whole image even when the disk could be compared with its block index)
    bty.capture=SELECTOR  bty.capture_name=NAME  bty.capture_trim=1  (with bty.after=, bty.dry_run=)

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
import re
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


KEYS = ("image", "disk", "verify", "tune", "after", "dry_run", "full", "capture", "capture_name", "capture_trim")
#: the keys of a flash that mean nothing to a capture, and the other way round
FLASH_ONLY = ("image", "disk", "verify", "tune", "full")
CAPTURE_ONLY = ("capture_name", "capture_trim")
#: a capture's name: a safe file name on any filesystem (exFAT included), room left for its suffixes
CAPTURE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,119}")
IMAGE_SUFFIX = ".img.zst"


@dataclass(frozen=True)
class UnattendedRequest:
    image: str
    disk: str
    verify: VerifyMode = VerifyMode.READBACK
    tune: str | None = None  # None: the manifest's task; "off": none; else a task file
    after: After = After.POWEROFF
    dry_run: bool = False
    full: bool = False  # bty.full=1: no differential flash

    def key(self) -> str:
        """What makes two requests the same, for the already-done marker (`full` only when set, so
        the markers of requests made before it existed still match)."""
        data = asdict(self)
        if not self.full:
            del data["full"]
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class CaptureRequest:
    """`bty.capture=SELECTOR`: read that disk into NAME.img.zst on the stick's images partition."""

    disk: str  # the disk to read, as bty.disk= selects one
    name: str | None = None  # None: made from the disk's model and serial and the UTC date
    trim: bool = False
    after: After = After.POWEROFF
    dry_run: bool = False

    def key(self) -> str:
        """What makes two requests the same, for the already-done marker (never a flash's key)."""
        fields = {"capture": asdict(self)}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


Request = UnattendedRequest | CaptureRequest


def parse_cmdline(cmdline: str) -> Request | None:
    """The request on a kernel command line; None when it holds neither `bty.image=` nor `bty.capture=`."""
    values = _bty_values(cmdline)
    if "capture" in values:
        return _capture_request(values)
    stray = [key for key in CAPTURE_ONLY if key in values]
    if stray:
        raise UsageError(f"bty.{stray[0]}= is set but bty.capture= is not: name the disk to capture "
                         "(e.g. bty.capture=serial=ABC123) or remove it at the boot menu; nothing was written")
    if "image" not in values:
        return None
    return _flash_request(values)


def _bty_values(cmdline: str) -> dict[str, str]:
    """Our `bty.` keys and their values; an unknown key or one without a value is refused."""
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
    return values


def _flash_request(values: dict[str, str]) -> UnattendedRequest:
    if not values.get("disk"):
        raise UsageError("bty.image= is set but bty.disk= is not: unattended mode needs a disk selector "
                         "(e.g. bty.disk=serial=ABC123 or bty.disk=tran=nvme,size>=100G); nothing was written")
    try:
        verify = VerifyMode(values.get("verify", VerifyMode.READBACK.value))
        after = After(values.get("after", After.POWEROFF.value))
    except ValueError as exc:
        raise UsageError(f"bad value on the kernel command line: {exc}; fix it at the boot menu") from exc
    return UnattendedRequest(image=values["image"], disk=values["disk"], verify=verify,
                             tune=values.get("tune"), after=after, dry_run=_dry_run(values),
                             full=_flag("full", values.get("full", "0")))


def _capture_request(values: dict[str, str]) -> CaptureRequest:
    if "image" in values:
        raise UsageError("bty.capture= and bty.image= are both set: a boot either captures a disk or flashes "
                         "one; remove one of them at the boot menu; nothing was read or written")
    flash_keys = [key for key in FLASH_ONLY if key in values]
    if flash_keys:
        raise UsageError(f"bty.{flash_keys[0]}= is for flashing, not for bty.capture= (which names the disk to "
                         "read); remove it at the boot menu; nothing was read or written")
    if not values["capture"]:
        raise UsageError("bty.capture= needs a disk selector (e.g. bty.capture=serial=ABC123); "
                         "fix it at the boot menu; nothing was read or written")
    name = values.get("capture_name")
    return CaptureRequest(disk=values["capture"], name=check_capture_name(name) if name is not None else None,
                          trim=_flag("capture_trim", values.get("capture_trim", "0")), after=_after(values),
                          dry_run=_dry_run(values))


def check_capture_name(name: str) -> str:
    """bty.capture_name=, without a trailing .img.zst; refused unless it is a safe file name."""
    stem = name.removesuffix(IMAGE_SUFFIX)
    if not CAPTURE_NAME.fullmatch(stem):
        raise UsageError(f"bty.capture_name={name} is not a usable file name: use up to 120 letters, digits, "
                         "'.', '_', '+' or '-', starting with a letter or digit; fix it at the boot menu")
    return stem


def _after(values: dict[str, str]) -> After:
    try:
        return After(values.get("after", After.POWEROFF.value))
    except ValueError as exc:
        raise UsageError(f"bad value on the kernel command line: {exc}; fix it at the boot menu") from exc


def _flag(key: str, value: str) -> bool:
    """A yes/no key; anything else is refused rather than guessed."""
    if value.lower() in ("1", "yes", "true", "on"):
        return True
    if value.lower() in ("0", "no", "false", "off"):
        return False
    raise UsageError(f"bty.{key}={value} is neither 1 nor 0; fix it at the boot menu")


def _dry_run(values: dict[str, str]) -> bool:
    return values.get("dry_run", "0").lower() in ("1", "yes", "true", "on")


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


def marker_path(images_dir: Path, machine: MachineIdentity, request: Request) -> Path:
    """Where a request that was carried out on this machine is remembered (its already-done marker)."""
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
    options = FlashOptions(verify=request.verify, tune=request.tune, receipts_dir=images_dir / "receipts",
                           differential=not request.full)
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
    remember(marker, {"image": receipt.image_name, "target": receipt.target_path,
                      "finished_at": receipt.finished_at, "receipt": str(saved) if saved else None},
             say, again="flashed again")
    return finish(request.after, actions, say)


def finish(after: After, actions: SystemActions, say: Callable[[str], None]) -> int:
    """Do what bty.after= asks once the run succeeded; SHELL_EXIT_CODE asks the session for a shell."""
    say(f"bty unattended: done; {after}")
    if after == After.REBOOT:
        actions.reboot()
    elif after == After.POWEROFF:
        actions.poweroff()
    elif after == After.SHELL:
        return SHELL_EXIT_CODE
    return 0


def remember(marker: Path, record: dict[str, str | None], say: Callable[[str], None], *, again: str) -> None:
    """Write the already-done marker; a stick that cannot take it is a warning, not a failure."""
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps(record) + "\n")
    except OSError as exc:
        say(f"bty unattended: warning: could not record the run on the stick ({exc}); if this machine boots "
            f"the stick again it will be {again}")


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
