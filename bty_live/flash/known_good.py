"""The known-good badge of an image file of the catalog, from the ledger's records.

Keyed by the digest a passing run computed from this file's bytes as they are now (path, size
and mtime), never by the manifest's word alone: a corrupt copy beside a good manifest is not
known-good. `bty images` and the TUI show the badge.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from bty_live.flash.ledger import FileStamp, LedgerRecord, known_good_models
from bty_live.image.catalog import CatalogEntry

#: what `bty images` and the TUI show beside an image
BADGE_KNOWN_GOOD = "known-good"
#: the image's manifest digest is known-good on this model, but no passing run hashed this file's
#: bytes as they are now (a copy, or a file changed since): it may be corrupt, flash it to know
BADGE_UNVERIFIED = "unverified"


def verified_digest(records: Iterable[LedgerRecord], entry: CatalogEntry) -> str | None:
    """The blake3 a passing run computed from this file's bytes as they are now (same path, size
    and mtime), if that matches the manifest (when there is one); None when they were never hashed."""
    stamp = FileStamp.of(entry.path)
    if stamp is None:
        return None
    expected = entry.manifest.blake3 if entry.manifest else None
    for r in records:
        read_this_file = (r.image_file, r.image_file_size, r.image_file_mtime_ns) == (stamp.path, stamp.size,
                                                                                      stamp.mtime_ns)
        if r.result == "passed" and r.image_blake3 and read_this_file and expected in (None, r.image_blake3):
            return r.image_blake3
    return None


def _entry_task_digest(entry: CatalogEntry, images_dir: Path) -> str | None:
    manifest = entry.manifest
    if manifest is None or not manifest.tune.task:
        return None
    task = images_dir / manifest.tune.task
    if not task.is_file():
        return None
    from bty_live.tune import task_digest

    return task_digest(task)


def known_good_for_entry(records: Sequence[LedgerRecord], entry: CatalogEntry, images_dir: Path) -> list[str]:
    """Machine models an image file of the catalog (with its manifest's tuning task) is known-good
    on: keyed by the digest a passing run verified from this file's bytes, never by the manifest's
    word alone (a corrupt copy beside a good manifest is not known-good)."""
    digest = verified_digest(records, entry)
    if digest is None:
        return []
    return known_good_models(records, digest, _entry_task_digest(entry, images_dir))


def unverified_models(records: Sequence[LedgerRecord], entry: CatalogEntry, images_dir: Path) -> list[str]:
    """Models the manifest's digest is known-good on while this file's bytes were never verified."""
    if entry.manifest is None or verified_digest(records, entry) is not None:
        return []
    return known_good_models(records, entry.manifest.blake3, _entry_task_digest(entry, images_dir))


def entry_badge(records: Sequence[LedgerRecord], entry: CatalogEntry, images_dir: Path, model: str) -> str:
    """"known-good", "unverified" (the digest is known-good on `model`, this file unverified) or ""."""
    if model.lower() in (m.lower() for m in known_good_for_entry(records, entry, images_dir)):
        return BADGE_KNOWN_GOOD
    if model.lower() in (m.lower() for m in unverified_models(records, entry, images_dir)):
        return BADGE_UNVERIFIED
    return ""
