"""Plan, then act: a frozen FlashPlan says what will be written where and what is checked.

`make_plan` is pure: it takes what discovery found (the image source, the disk, the reasons it
may not be written) and either refuses or returns the plan. `--dry-run` prints the plan; the
engine executes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from bty_live.disk.eligibility import refusal
from bty_live.disk.model import Disk, DiskIdentity
from bty_live.errors import TargetRefusedError
from bty_live.image.block_reader import block_layout, random_access
from bty_live.image.remote import NO_DIGEST
from bty_live.image.source import ImageSource
from bty_live.tune.model import TuneRequest
from bty_live.units import format_size

#: the image's size must be a multiple of this for its last block to be read with O_DIRECT
DIRECT_IO_ALIGN = 4096


class VerifyMode(StrEnum):
    READBACK = "readback"  # an O_DIRECT read-back of the target against the manifest's or the stream's blake3
    STREAM = "stream"  # digest of the decompressed stream only
    OFF = "off"  # no digest comparison at all (the stream is still hashed for the receipt)


@dataclass(frozen=True)
class FlashOptions:
    verify: VerifyMode = VerifyMode.READBACK
    #: read back behind the write, a window at a time (bty_live.flash.readback); False: one pass after it
    readback_behind: bool = True
    #: compare the target with the manifest's block index and write only what differs, when the
    #: image allows it (bty_live.flash.differential); False (`--full`): write the whole image
    differential: bool = True
    grow: bool = False
    #: None: BLKZEROOUT where it pays (bty_live.flash.target.zeroout_pays); True/False force it
    zeroout: bool | None = None
    #: post-flash tuning: None = the manifest's task, "off" = none, else a CIJOE task file
    tune: str | None = None
    #: the known-good ledger; None = ledger.jsonl in the images directory (when there is one)
    ledger: Path | None = None
    #: where the engine saves the receipt: a file, or a directory (None = the default directory)
    receipt: Path | None = None
    receipts_dir: Path | None = None
    #: the fake-capacity preflight (bty_live.flash.preflight): None = removable/USB disks only; True/False force it
    preflight: bool | None = None


@dataclass(frozen=True)
class FlashPlan:
    image: ImageSource
    target: DiskIdentity
    disk: Disk
    options: FlashOptions
    #: the image's GPT will end before the disk does: move the backup GPT to the disk's end
    relocate_backup_gpt: bool
    #: grow the image's last partition to the end of the disk
    grow_last_partition: bool
    #: paths whose disks must never be written (/, the images directory, the image itself);
    #: re-resolved right before the first write
    protected_paths: tuple[Path, ...] = ()
    notes: tuple[str, ...] = field(default=())
    #: what is likely wrong with flashing this image, though it may be meant (the image's warnings)
    warnings: tuple[str, ...] = field(default=())
    #: the CIJOE task to run on the written system (disk and digest are filled in by the engine)
    tune: TuneRequest | None = None
    tune_digest: str | None = None
    ledger: Path | None = None
    receipt_path: Path | None = None
    receipts_dir: Path | None = None
    #: why the image is written whole rather than compared block by block (None: differential)
    full_reason: str | None = "not planned"

    @property
    def differential(self) -> bool:
        return self.full_reason is None

    def describe(self) -> list[str]:
        """Human lines for --dry-run and the confirmation prompt."""
        image, disk = self.image, self.disk
        size = format_size(image.size) if image.size is not None else "unknown size"
        lines = [
            f"image:   {image.location} ({image.compression}, "
            f"{format_size(image.file_size) if image.file_size is not None else 'streamed'} file, {size} "
            f"decompressed [{image.size_source}])",
            f"digest:  {digest_line(image)}",
            f"target:  {disk.path} ({format_size(disk.size)}, {disk.transport}, model {disk.model or '-'}, "
            f"serial {disk.serial or '-'})",
            f"verify:  {self.options.verify}",
        ]
        if self.differential:
            index = image.manifest.index if image.manifest else None
            lines.append(f"write:   differential: {len(index) if index else 0} blocks compared, those that differ "
                         "written")
        else:
            lines.append(f"write:   whole image ({self.full_reason})")
        if image.table is not None:
            lines.append(f"table:   {image.table.scheme}, {len(image.table.partitions)} partitions")
        if image.frames is not None and len(image.frames) > 1:
            lines.append(f"zstd:    {len(image.frames)} frames (decompressed in parallel when they declare sizes)")
        fixups = []
        if self.relocate_backup_gpt:
            fixups.append("move the backup GPT to the end of the disk")
        if self.grow_last_partition:
            fixups.append("grow the last partition to the end of the disk")
        lines.append("fix-ups: " + ("; ".join(fixups) if fixups else "none"))
        lines.append(f"tuning:  {self.tune.task} (CIJOE)" if self.tune else "tuning:  none")
        lines.extend(f"note:    {note}" for note in self.notes)
        lines.extend(f"warning: {warning}" for warning in self.warnings)
        return lines


def digest_line(image: ImageSource) -> str:
    """What the stream (and the file as shipped) will be checked against, and where from."""
    expected, shipped = image.expected_blake3, image.file_digest
    of_file = f"{shipped.algorithm} {shipped.hex[:16]}... of the file ({shipped.source})" if shipped else None
    if expected is not None:
        line = f"blake3 {expected[:16]}..." + (" (given with --blake3)" if image.digest_source == "--blake3" else "")
        return line + (f"; {of_file}" if of_file else "")
    if of_file is not None:
        return of_file
    if image.path is None:  # streamed from a URL that has no manifest beside it
        return f"UNVERIFIED: {NO_DIGEST}"
    return "no manifest: unverified"


def make_plan(
    image: ImageSource,
    disk: Disk,
    reasons: tuple[str, ...],
    options: FlashOptions,
    protected_paths: tuple[Path, ...] = (),
) -> FlashPlan:
    """Refuse (TargetRefusedError) or return the plan. `reasons` come from eligibility.reasons()."""
    if reasons:
        raise refusal(disk, reasons)
    if image.size is not None and image.size > disk.size:
        raise TargetRefusedError(
            f"target {disk.path} ({format_size(disk.size)}) is too small for image {image.file_name} "
            f"({format_size(image.size)}); use a larger disk"
        )
    notes: list[str] = []
    if image.size is None:
        notes.append("the image size is only known once decompressed: a too-small disk is detected while "
                     "writing, and the disk is then wiped")
    has_gpt = image.has_gpt
    larger = image.size is not None and disk.size > image.size
    grow = options.grow and image.table is not None and bool(image.table.partitions)
    if options.grow and not grow:
        notes.append("--grow asked, but the image has no partition table to grow")
    if image.table is not None and image.table.problems:
        notes.append("the image's own partition table has problems: " + "; ".join(image.table.problems))
    return FlashPlan(
        image=image,
        target=disk.identity(),
        disk=disk,
        options=options,
        relocate_backup_gpt=has_gpt and larger,
        grow_last_partition=grow,
        protected_paths=protected_paths,
        notes=tuple(notes),
        warnings=image.warnings,
        full_reason=why_not_differential(image, options),
    )


def why_not_differential(image: ImageSource, options: FlashOptions) -> str | None:
    """None when the image can be flashed differentially (bty_live.flash.differential), else why not."""
    if not options.differential:
        return "--full"
    manifest = image.manifest
    if manifest is None:
        return "no manifest"
    index = manifest.index
    if index is None:
        return "no block index: `bty images add` writes one"
    if not random_access(image.source):
        return "streamed: not a file or an HTTP URL"
    if image.given_blake3 is not None or image.file_digest is not None:
        return "a digest of the whole stream is checked"
    if image.size is None or not index.covers(image.size) or image.size % DIRECT_IO_ALIGN:
        return "the block index does not fit the image"
    layout = block_layout(image.compression, image.frames, index, image.size)
    return layout if isinstance(layout, str) else None
