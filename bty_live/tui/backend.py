"""What the TUI asks of the rest of bty-live, as one table of functions.

Every entry is the function the CLI uses (or a two-line composition of them), so the TUI makes
the same checks through the same code. Tests replace entries: snapshot apps return recorded
data, pilot tests wrap `flash` to pause the real engine at a chosen moment.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from bty_live.disk.contents import describe_contents
from bty_live.disk.discovery import discover_disks
from bty_live.disk.eligibility import Assessed, assess_all, eligibility_context
from bty_live.disk.hotplug import DiskEvent, DiskWatcher
from bty_live.disk.model import Disk
from bty_live.events import EventSink
from bty_live.flash.plan import FlashOptions, FlashPlan
from bty_live.flash.prepare import prepare_plan_for_entry
from bty_live.flash.receipt import Receipt, save_receipt
from bty_live.image.catalog import CatalogEntry, list_images


class Watcher(Protocol):
    """Something that reports disk events until stopped (a `DiskWatcher`)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


#: the engine's signature: `bty_live.flash.engine.flash`
Flasher = Callable[[FlashPlan, EventSink, threading.Event], Receipt]


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
