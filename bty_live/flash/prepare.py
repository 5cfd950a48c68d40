"""Gather what a plan needs (the image, the disks, what is protected) and make the plan.

The I/O half of planning, shared by every front-end: the CLI, the TUI and unattended mode all
call `prepare_plan` and get the same checks. An image spec that is an http(s) URL is streamed
(`image/remote.py`), and so is an oci:// reference (`image/oci.py`); anything else is a file or
an entry of the images directory.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from bty_live.disk.discovery import discover_disks, find_disk
from bty_live.disk.eligibility import EligibilityContext, assess_all, context_for, protected_paths, reasons
from bty_live.disk.model import Disk
from bty_live.disk.selector import parse_selector, select_disk
from bty_live.errors import ImageError
from bty_live.flash.ledger import default_ledger_path
from bty_live.flash.plan import FlashOptions, FlashPlan, make_plan
from bty_live.image.catalog import CatalogEntry, find_image, resolve_images_dir
from bty_live.image.formats import check_image_file
from bty_live.image.oci import is_oci_reference, load_oci_image_source
from bty_live.image.remote import UrlOptions, is_image_url, load_url_image_source
from bty_live.image.source import ImageSource, load_image_source
from bty_live.system.machine import read_machine_identity
from bty_live.system.state_dirs import default_receipts_dir
from bty_live.tune.model import TuneRequest


def looks_like_selector(text: str) -> bool:
    """Selector terms have an operator or are comma-combined (no disk name holds either), or are
    the bare words largest / smallest; anything else names a disk."""
    return any(c in text for c in "=<>,") or text.strip() in ("largest", "smallest")


def choose_disk(spec: str, ctx: EligibilityContext) -> Disk:
    """A device node, link or name picks that disk; a selector must match exactly one eligible disk."""
    if looks_like_selector(spec):
        return select_disk(parse_selector(spec), assess_all(discover_disks(), ctx))
    return find_disk(spec)


def prepare_plan(
    image_spec: str,
    disk_spec: str,
    options: FlashOptions,
    images_dir: str | Path | None = None,
    url_options: UrlOptions | None = None,
) -> FlashPlan:
    """Plan flashing an image of the catalog (or a path, or a URL) onto a disk (or a selector)."""
    directory = resolve_images_dir(images_dir)
    if is_image_url(image_spec) or is_oci_reference(image_spec):
        load = load_oci_image_source if is_oci_reference(image_spec) else load_url_image_source
        image = load(image_spec, url_options or UrlOptions())
        return prepare_plan_for(image, disk_spec, options, directory if directory.is_dir() else None)
    return prepare_plan_for_entry(find_image(image_spec, directory), disk_spec, options, directory)


def prepare_plan_for_entry(
    entry: CatalogEntry,
    disk_spec: str,
    options: FlashOptions,
    images_dir: Path,
) -> FlashPlan:
    """Plan flashing an image the catalog has already described (the TUI's chosen row): the entry
    is not read again, only what it does not hold (zstd frames, the partition table)."""
    if not entry.path.exists():  # the TUI listed it a while ago
        raise ImageError(f"image {entry.path} does not exist any more; it was removed after it was listed: "
                         "pick it again from the refreshed list")
    check_image_file(entry.path)
    image = load_image_source(entry)
    return prepare_plan_for(image, disk_spec, options, images_dir if images_dir.is_dir() else None)


def prepare_plan_for(
    image: ImageSource,
    disk_spec: str,
    options: FlashOptions,
    images_dir: Path | None = None,
) -> FlashPlan:
    """Plan flashing an image already loaded (a file, or a stream from a server) onto a disk."""
    protected = protected_paths(image.path, images_dir)
    ctx = context_for(protected, image.size)
    disk = choose_disk(disk_spec, ctx)
    plan = make_plan(image, disk, reasons(disk, ctx), options, protected)
    tune, digest = tune_request_for(image, disk, options, images_dir)
    ledger = options.ledger or (default_ledger_path(images_dir) if images_dir is not None else None)
    receipts_dir = options.receipts_dir or (None if options.receipt else default_receipts_dir())
    return replace(plan, tune=tune, tune_digest=digest, ledger=ledger, receipt_path=options.receipt,
                   receipts_dir=receipts_dir)


def tune_request_for(image: ImageSource, disk: Disk, options: FlashOptions,
                     images_dir: Path | None) -> tuple[TuneRequest | None, str | None]:
    """The tuning task for this flash (--tune / bty.tune= over the manifest's), read now so a
    broken task fails before anything is written."""
    # Here, not at the top: the TUI's first screen imports this module, and on the stick every
    # import delays that screen (the task reader loads YAML only when it reads a task).
    from bty_live.tune.task import choose_task, load_task, task_digest

    choice = choose_task(options.tune, image.manifest, images_dir)
    if choice is None:
        return None, None
    load_task(choice.task)
    manifest = image.manifest
    request = TuneRequest(
        task=choice.task,
        config=choice.config,
        disk=disk.path,
        image_name=image.name,
        image_blake3=image.expected_blake3,
        image_file=image.file_name,
        image_os=manifest.os if manifest else "",
        images_dir=images_dir,
        root_hint=manifest.tune.root if manifest else None,
        disk_model=disk.model,
        disk_serial=disk.serial,
        machine=read_machine_identity(),
    )
    return request, task_digest(choice.task)
