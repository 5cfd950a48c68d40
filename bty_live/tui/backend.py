"""What the TUI asks of the rest of bty-live, as one table of functions.

Every entry is the function the CLI uses (or a two-line composition of them), so the TUI makes
the same checks through the same code. Tests replace entries: snapshot apps return recorded
data, pilot tests wrap `flash` to pause the real engine at a chosen moment.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from bty_live.capture.plan import CaptureOptions, CapturePlan, space_verdict
from bty_live.capture.prepare import check_output, prepare_capture
from bty_live.disk.contents import describe_contents
from bty_live.disk.discovery import discover_disks
from bty_live.disk.eligibility import Assessed, assess_all, capture_into_context, eligibility_context, read_reasons
from bty_live.disk.hotplug import DiskEvent, DiskWatcher
from bty_live.disk.model import Disk
from bty_live.errors import TargetIOError
from bty_live.events import EventSink
from bty_live.flash.plan import FlashOptions, FlashPlan
from bty_live.flash.prepare import prepare_plan_for_entry
from bty_live.flash.receipt import Receipt, save_receipt
from bty_live.image.catalog import CatalogEntry, list_images

if TYPE_CHECKING:
    from bty_live.capture.engine import CaptureResult


class Watcher(Protocol):
    """Something that reports disk events until stopped (a `DiskWatcher`)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


#: the engine's signature: `bty_live.flash.engine.flash`
Flasher = Callable[[FlashPlan, EventSink, threading.Event], Receipt]


@dataclass(frozen=True)
class CaptureDraft:
    """A capture's plan as the confirmation shows it, with the space rule's verdict apart: the
    screen shows a refusal (and offers no capture) instead of the plan vanishing into an error."""

    plan: CapturePlan
    #: the capture's space rule refuses it: less free space than the disk's filesystems hold
    no_room: str | None


def assess_for_capture(images_dir: Path) -> list[Assessed]:
    """Every disk with the reasons it must not be read into an image in `images_dir` (the read
    rules of `bty capture`: mounted, swap, holders, writers, the disk of the images directory)."""
    ctx = capture_into_context(images_dir)
    return [Assessed(disk, read_reasons(disk, ctx)) for disk in discover_disks()]


def plan_capture(disk: Disk, output: Path, options: CaptureOptions) -> CaptureDraft:
    """`bty capture DISK -o OUTPUT` planned as the CLI plans it, the space rule judged apart."""
    check_output(output, force=False)  # never replace an image: the form refused existing names already
    plan = prepare_capture(disk.path, output, replace(options, force=True))
    try:
        space_verdict(plan.space, force=False)
        no_room = None
    except TargetIOError as exc:
        no_room = str(exc)
    return CaptureDraft(replace(plan, options=replace(plan.options, force=False)), no_room)


def capture(plan: CapturePlan, sink: EventSink, cancel: threading.Event) -> CaptureResult:
    from bty_live.capture import engine  # imported when first needed: not on the first-paint path

    return engine.capture(plan, sink, cancel)


@dataclass(frozen=True)
class Backend:
    #: the images directory's catalog (raises ImageError when the directory is missing)
    list_images: Callable[[Path], list[CatalogEntry]]
    #: every disk with the reasons it must not receive this image (same rules as the plan's)
    assess_disks: Callable[[CatalogEntry, Path], list[Assessed]]
    #: the plan, exactly as `bty flash IMAGE DISK` makes it; raises BtyError to refuse
    plan: Callable[[CatalogEntry, Disk, FlashOptions, Path], FlashPlan]
    #: destroy preview: what the disk holds now, one line per item
    contents: Callable[[Disk], list[str]]
    flash: Flasher
    #: saves the receipt as JSON and returns where
    save_receipt: Callable[[Receipt], Path]
    #: a watcher calling back (from its own thread) on every disk event
    watch_disks: Callable[[Callable[[DiskEvent], None]], Watcher]
    #: every disk with the reasons it must not be captured into the images directory
    assess_for_capture: Callable[[Path], list[Assessed]] = field(default=assess_for_capture)
    #: the capture's plan, exactly as `bty capture DISK -o OUT` makes it (the space rule apart)
    plan_capture: Callable[[Disk, Path, CaptureOptions], CaptureDraft] = field(default=plan_capture)
    #: the capture engine: `bty_live.capture.engine.capture`
    capture: Callable[[CapturePlan, EventSink, threading.Event], CaptureResult] = field(default=capture)


def assess_disks(entry: CatalogEntry, images_dir: Path) -> list[Assessed]:
    """The disks as `prepare_plan` would judge them for this image: the same protected paths,
    the same boot-medium walk, the same rules. The plan checks again when a disk is chosen."""
    return assess_all(discover_disks(), eligibility_context(entry.path, images_dir, entry.size))


def plan_flash(entry: CatalogEntry, disk: Disk, options: FlashOptions, images_dir: Path) -> FlashPlan:
    """`bty flash PATH DISK` for the image the catalog listed (not described again) and the disk by its node."""
    return prepare_plan_for_entry(entry, disk.path, options, images_dir)


def flash(plan: FlashPlan, sink: EventSink, cancel: threading.Event) -> Receipt:
    from bty_live.flash import engine  # imported when first needed: not on the first-paint path

    return engine.flash(plan, sink, cancel).receipt


def _save_receipt(receipt: Receipt) -> Path:
    if receipt.saved_to:  # the engine saved it where the plan said
        return Path(receipt.saved_to)
    return save_receipt(receipt)


def real_backend() -> Backend:
    return Backend(
        list_images=list_images,
        assess_disks=assess_disks,
        plan=plan_flash,
        contents=describe_contents,
        flash=flash,
        save_receipt=_save_receipt,
        watch_disks=DiskWatcher,
    )
