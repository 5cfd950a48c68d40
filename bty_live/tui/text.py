"""What the screens say, as plain functions of the data: rows, the progress panel, error advice.

Kept apart from the widgets so each wording is tested without an app. Every glyph used here is
in code page 437 (the Linux console's VGA font): no ellipsis, no heavy box lines, no emoji.
"""

from __future__ import annotations

import textwrap
import time
import traceback
from collections.abc import Sequence
from typing import NamedTuple

from rich.text import Text

from bty_live import errors
from bty_live.disk.eligibility import Assessed
from bty_live.errors import ToolError
from bty_live.events import Event, Kind, Phase
from bty_live.flash.plan import FlashPlan
from bty_live.image.catalog import CatalogEntry, DigestStatus
from bty_live.tui.progress import FlashProgress
from bty_live.units import format_rate, format_size

#: what the option lists' text is laid out for: 80 columns less the screen's margins
ROW_WIDTH = 76
BAR_FULL = "\u2588"  # full block, CP437 0xDB
BAR_EMPTY = "\u2591"  # light shade, CP437 0xB0


def clip(text: str, width: int) -> str:
    """`text` cut to `width` columns, a cut marked with "~", padded with spaces."""
    if len(text) > width:
        return text[: max(0, width - 1)] + "~"
    return text.ljust(width)


def indented(text: str, width: int = ROW_WIDTH, hang: int = 2) -> str:
    """`text` indented by two spaces and wrapped to `width`, later lines indented by `hang`."""
    return textwrap.fill(text, width=width, initial_indent="  ", subsequent_indent=" " * hang,
                         break_on_hyphens=False)


def format_clock(seconds: float | None) -> str:
    """0:07, 12:34, 1:02:03; "--:--" when unknown."""
    if seconds is None:
        return "--:--"
    whole = int(max(0.0, seconds) + 0.5)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


# -- images ---------------------------------------------------------------------------------------

IMAGE_COLUMNS = f"{'IMAGE':<24} {'OS':<12} {'SIZE':>9}  {'DIGEST':<12} {'':<10}"


def digest_label(entry: CatalogEntry) -> tuple[str, str]:
    """(label, style) of an image's digest status."""
    if entry.digest_status == DigestStatus.MANIFEST:
        return "manifest", "green"
    if entry.digest_status == DigestStatus.INVALID:
        return "bad manifest", "red"
    return "unverified", "yellow"


def badge_label(badge: bool | str | None) -> tuple[str, str]:
    """(label, style) of the ledger's badge: True or "known-good"; "unverified" when the manifest's
    digest is known-good here but this file's bytes were never verified (it may be a bad copy)."""
    if badge is True or badge == "known-good":
        return "known-good", "bold green"
    if badge == "unverified":
        return "unverified", "yellow"
    return "", ""


def image_prompt(entry: CatalogEntry, known_good: bool | str | None) -> Text:
    """Two lines: name, OS, size, digest status, badge; then the description or the problem."""
    manifest = entry.manifest
    size = format_size(entry.size) if entry.size is not None else "?"
    label, style = digest_label(entry)
    text = Text(no_wrap=False)
    text.append(clip(entry.name, 24), style="bold")
    text.append(f" {clip(manifest.os if manifest else '', 12)} {size:>9}  ")
    text.append(clip(label, 12), style=style)
    text.append(" ")
    text.append(*badge_label(known_good))
    text.append("\n")
    if entry.problem:
        text.append(indented(f"cannot be flashed: {entry.problem}"), style="red")
    else:
        text.append("  " + clip(manifest.description if manifest and manifest.description else entry.path.name,
                                ROW_WIDTH - 2).rstrip(), style="dim")
    return text


# -- disks ----------------------------------------------------------------------------------------

DISK_COLUMNS = f"{'DISK':<8} {'SIZE':>9}  {'TRAN':<6} {'MODEL':<30} SERIAL"


def disk_ids(item: Assessed) -> str:
    """The ids a person can match against a label: WWN, by-id and by-path names, loop file."""
    disk = item.disk
    parts = []
    if disk.wwn:
        parts.append(f"wwn {disk.wwn}")
    parts += [f"id {link.rsplit('/', 1)[-1]}" for link in disk.by_id[:1]]
    parts += [f"path {link.rsplit('/', 1)[-1]}" for link in disk.by_path[:1]]
    if disk.loop_backing_file:
        parts.append(f"file {disk.loop_backing_file}")
    return "  ".join(parts) or "no ids reported"


def disk_prompt(item: Assessed, refused: str = "not eligible") -> Text:
    """Name, size, transport, model, serial; then the ids, or why the disk must not be written
    (or read, for a capture: `refused` says which)."""
    disk = item.disk
    model = " ".join(part for part in (disk.vendor, disk.model) if part) or "-"
    text = Text()
    text.append(f"{disk.name:<8}", style="bold")
    text.append(f" {format_size(disk.size):>9}  {clip(disk.transport, 6)} {clip(model, 30)} ")
    text.append(clip(disk.serial or "-", ROW_WIDTH - 58).rstrip())
    text.append("\n")
    if item.eligible:
        text.append("  " + clip(disk_ids(item), ROW_WIDTH - 2).rstrip(), style="dim")
    else:
        text.append(indented(f"{refused}: " + "; ".join(item.reasons)), style="red")
    return text


# -- confirm --------------------------------------------------------------------------------------


def destroy_preview(plan: FlashPlan, contents: Sequence[str]) -> Text:
    """What the target holds now (all of it goes), then what will be written and how."""
    text = Text()
    text.append(f"Everything on {plan.disk.path} will be destroyed:\n", style="bold red")
    for line in contents:
        text.append(indented(line, hang=4) + "\n")
    text.append("\nIt will hold instead:\n", style="bold")
    for line in plan.describe():
        text.append(indented(line, hang=11) + "\n")  # under the text after "image:   "
    table = plan.image.table
    if table is not None:
        for part in table.partitions:
            label = f" '{part.name}'" if part.name else ""
            text.append(f"    p{part.number}{label}  {format_size(part.size)}  {part.type_name}\n", style="dim")
    text.rstrip()
    return text


def confirm_prompt(plan: FlashPlan) -> str:
    return f"Type {plan.disk.name} and press Enter to erase it and write {plan.image.name}:"


# -- progress -------------------------------------------------------------------------------------

_HEADINGS = {
    Phase.PLAN: "Starting",
    Phase.WRITE: "Writing",
    Phase.VERIFY: "Verifying: reading the disk back",
    Phase.FIXUP: "Fixing up the partition table",
    Phase.TUNE: "Tuning the written system (CIJOE)",
    Phase.CAPTURE: "Capturing: reading the disk into the image",
    Phase.DONE: "Done",
    Phase.FAILED: "Failed",
}


def bar(fraction: float | None, width: int) -> str:
    """A progress bar of CP437 blocks; all light shade while the fraction is unknown."""
    filled = 0 if fraction is None else round(max(0.0, min(1.0, fraction)) * width)
    return BAR_FULL * filled + BAR_EMPTY * (width - filled)


class ProgressParts(NamedTuple):
    """The Progress screen's lines, apart so that a redraw repaints only the lines that changed."""

    heading: str
    bar: Text
    numbers: str
    steps: str
    message: str


def progress_parts(state: FlashProgress, *, now: float, width: int = ROW_WIDTH) -> ProgressParts:
    heading = _HEADINGS.get(state.phase, str(state.phase))
    if state.cancelling and state.phase not in (Phase.DONE, Phase.FAILED):
        heading = ("Cancelling: stopping, then removing the partial image" if state.capture
                   else "Cancelling: stopping, then wiping the disk")
    fraction = state.fraction
    percent = f"{fraction:4.0%}" if fraction is not None else "    "
    bar_line = Text(bar(fraction, width - 6), style="green")
    bar_line.append(f" {percent}", style="bold")
    total = format_size(state.total) if state.total else "?"
    numbers = (f"{format_size(state.done)} of {total}   {format_rate(state.rate)}   "
               f"ETA {format_clock(state.eta)}   elapsed {format_clock(state.elapsed(now))}\n")
    if state.capture:
        numbers += f"image file {format_size(state.written)}   all-zero MiB {format_size(state.zeroed)}"
    else:
        numbers += f"written {format_size(state.written)}   zero-filled {format_size(state.zeroed)}"
    marks = []
    for step in state.steps:
        if step in state.finished:
            marks.append(f"[x] {step.label} {format_clock(state.finished[step])}")
        elif step == state.phase:
            marks.append(f"[>] {step.label}")
        else:
            marks.append(f"[ ] {step.label}")
    return ProgressParts(heading=heading, bar=bar_line, numbers=numbers,
                         steps=("   " if state.tuning else "    ").join(marks),
                         message=clip(state.last_message, width).rstrip())


# -- log ------------------------------------------------------------------------------------------


def log_line(event: Event) -> str | None:
    """One line of the log view per event worth keeping; PROGRESS events are not kept."""
    if event.kind == Kind.PROGRESS:
        return None
    stamp = time.strftime("%H:%M:%S", time.localtime(event.timestamp))
    detail = event.message
    if event.kind == Kind.END and event.phase in (Phase.WRITE, Phase.VERIFY):
        detail = (f"{format_size(event.bytes_out)} in {event.elapsed:.1f} s ({format_rate(event.rate)})"
                  + (f", blake3 {event.digest[:16]}" if event.digest else "")
                  + (f"; {event.message}" if event.message else ""))
    return f"{stamp} {event.phase:<6} {event.kind:<5} {detail}".rstrip()


# -- errors ---------------------------------------------------------------------------------------

#: (error class, heading, what to do next); the first matching class wins, as in the CLI's table
_ADVICE: tuple[tuple[type[BaseException], str, str], ...] = (
    (errors.Cancelled, "Cancelled",
     "Nothing usable is on the disk now. Flash it again, or choose another image or disk."),
    (errors.SourceCorruptError, "The image is corrupt or truncated",
     "Copy the image onto the stick again, or choose another image."),
    (errors.DigestMismatchError, "The image does not match its manifest",
     "Copy the image again; if it was changed on purpose, rerun `bty images add` from the shell."),
    (errors.ImageError, "The image cannot be used",
     "Fix or replace the image (see the details), or choose another image."),
    (errors.SelectorError, "The disk was not found",
     "Choose the disk again from the list."),
    (errors.TargetRefusedError, "This disk may not be written",
     "Choose another disk, or free this one (unmount it, stop what uses it) from the shell."),
    (errors.TargetVanishedError, "The disk disappeared",
     "Plug the disk back in (check its cable and power), then choose it again."),
    (errors.TargetIOError, "Writing to the disk failed",
     "The disk may be failing or too small: try another disk."),
    (errors.VerifyError, "The disk does not read back what was written",
     "The disk may be failing or counterfeit: try another disk."),
    (errors.FixupError, "The partition table could not be fixed up",
     "The image itself was written and verified; fix the table from the shell (sgdisk -e), or flash again."),
    (ToolError, "A required tool is missing or failed",
     "Open the shell to investigate; the tool's own words are in the details."),
    (errors.UsageError, "The request was not valid",
     "Go back and choose again; the details say what was wrong."),
    (errors.BtyError, "The flash failed",
     "See the details and the log, then try again."),
)


#: the same for a capture (`bty capture`): the disk is only read, the image file is what is at stake
_CAPTURE_ADVICE: tuple[tuple[type[BaseException], str, str], ...] = (
    (errors.Cancelled, "Cancelled",
     "The capture stopped and its partial image was removed; the disk was not changed."),
    (errors.SelectorError, "The disk was not found",
     "Choose the disk again from the list."),
    (errors.TargetRefusedError, "This disk may not be captured",
     "Choose another disk, or free this one (unmount it, stop what uses it) from the shell."),
    (errors.TargetVanishedError, "The disk disappeared",
     "Plug the disk back in (check its cable and power), then capture it again."),
    (errors.TargetIOError, "Reading the disk or writing the image failed",
     "The cause says which: make room in the images directory, or check the disk (dmesg) from the shell."),
    (ToolError, "A required tool is missing or failed",
     "Open the shell to investigate; the tool's own words are in the details."),
    (errors.UsageError, "The capture cannot be done this way",
     "Go back and change the name or the trim option; the cause says what was wrong."),
    (errors.BtyError, "The capture failed",
     "See the details and the log, then try again."),
)


def _advice(capture: bool) -> tuple[tuple[type[BaseException], str, str], ...]:
    return _CAPTURE_ADVICE if capture else _ADVICE


def error_heading(exc: BaseException, *, capture: bool = False) -> str:
    for cls, heading, _ in _advice(capture):
        if isinstance(exc, cls):
            return heading
    return "Internal error"


def next_steps(exc: BaseException, *, capture: bool = False) -> str:
    for cls, _, advice in _advice(capture):
        if isinstance(exc, cls):
            return advice
    return "This is a bug: open the shell, rerun with BTY_DEBUG=1 and report it with the details below."


def error_cause(exc: BaseException) -> str:
    """The one-line cause, with what was done about it (e.g. "/dev/sdb wiped: ...")."""
    if isinstance(exc, errors.BtyError):
        return exc.full_message()
    return f"{type(exc).__name__}: {exc}"


def error_details(exc: BaseException, log_tail: Sequence[str], *, capture: bool = False) -> str:
    from bty_live.errors import exit_code_for

    command = "bty capture" if capture else "bty flash"
    lines = [f"`{command}` exit code: {exit_code_for(exc)} ({type(exc).__name__}, kind {getattr(exc, 'kind', '-')})"]
    if isinstance(exc, errors.BtyError) and exc.aftermath:
        lines.append(f"afterwards: {exc.aftermath}")
    if not isinstance(exc, errors.BtyError):
        lines += ["", *"".join(traceback.format_exception(exc)).rstrip().splitlines()]
    if log_tail:
        lines += ["", "last log lines:", *log_tail]
    return "\n".join(lines)
