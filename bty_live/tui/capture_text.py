"""What the Capture screens say, as plain functions of the data (tested without an app).

Same glyph rules as `text.py`: code page 437 only.
"""

from __future__ import annotations

from pathlib import Path

from rich.text import Text

from bty_live.capture.plan import CapturePlan, Space, space_verdict
from bty_live.capture.receipt import CaptureReceipt
from bty_live.image.manifest import manifest_path_for
from bty_live.tui.text import ROW_WIDTH, indented
from bty_live.units import format_duration, format_rate, format_size

#: the label column of the preview and the summary ("manifest:  ")
_LABEL = 10


def _row(label: str, value: str) -> str:
    return indented(f"{label + ':':<{_LABEL}}{value}", hang=2 + _LABEL) + "\n"


def _path_row(label: str, path: str) -> str:
    """A path too long for its row goes on the next line, indented less, so it is cut rarely."""
    if 2 + _LABEL + len(path) <= ROW_WIDTH:
        return _row(label, path)
    return f"  {label}:\n" + indented(path, hang=4).replace("  ", "    ", 1) + "\n"


def disk_summary(plan: CapturePlan) -> str:
    disk = plan.disk
    ids = ", ".join(x for x in (disk.model, f"serial {disk.serial}" if disk.serial else None) if x)
    table = (f"{plan.table.scheme}, {len(plan.table.partitions)} partitions" if plan.table is not None
             else "no partition table")
    return f"{disk.path}  {ids or 'no model or serial'}  {format_size(plan.disk_size)}, {table}"


def extent(plan: CapturePlan) -> str:
    if not plan.trimmed:
        return f"the whole disk, {format_size(plan.length)}"
    return (f"the first {format_size(plan.length)}, up to the end of the last partition"
            + (" (the backup GPT regenerated there)" if plan.patches else ""))


def space_line(space: Space, where: Path) -> str:
    held = (f"the disk's filesystems hold {format_size(space.in_use)}" if space.in_use is not None
            else "the disk's filesystems do not say what they hold")
    return f"{format_size(space.free)} free in {where}; {held}; at most {format_size(space.worst_case)}"


def space_verdict_text(space: Space, no_room: str | None, where: Path) -> Text:
    """The capture's space rule, in the TUI's words: refused, may not fit, or fits."""
    if no_room is not None:
        held = format_size(space.in_use) if space.in_use is not None else "what"
        return Text(indented(f"Not enough space: only {format_size(space.free)} free in {where}, less than "
                             f"the {held} the disk's filesystems hold. Delete images there from the shell "
                             "(s on the Images screen), or capture with `bty capture` to another disk."),
                    style="bold red")
    if space_verdict(space, force=False) is not None:
        return Text(indented(f"It may not fit: {format_size(space.free)} free, {format_size(space.worst_case)} "
                             "if nothing compresses. If the space runs out, the partial image is removed."),
                    style="yellow")
    return Text(indented("Enough space, even if nothing compresses."), style="green")


def capture_preview(plan: CapturePlan, no_room: str | None) -> Text:
    """What the capture reads and writes, and whether the images directory has room for it."""
    where = plan.output.parent
    text = Text()
    text.append(f"Read {plan.disk.path} into an image in {where}. Nothing on the disk is changed.\n\n",
                style="bold")
    text.append(_row("disk", disk_summary(plan)))
    text.append(_row("captures", extent(plan)))
    text.append(_row("image", f"{plan.name}" + (f", os {plan.os}" if plan.os else "")
                     + (f", arch {plan.arch}" if plan.arch else "") + f"; zstd level {plan.options.level}"))
    text.append(_path_row("file", str(plan.output)))
    text.append(_path_row("manifest", str(manifest_path_for(plan.output))))
    text.append(_row("space", space_line(plan.space, where)))
    text.append(space_verdict_text(plan.space, no_room, where))
    text.append("\n")
    warning = space_verdict(plan.space, force=True)  # already said above, in the TUI's words
    for note in plan.notes:
        if note != warning:
            text.append(indented(f"note: {note}", hang=8) + "\n", style="dim")
    text.rstrip()
    return text


def capture_summary(receipt: CaptureReceipt, manifest: Path) -> Text:
    """The Done screen of a capture: the file, its size, blake3, the manifest and the receipt."""
    text = Text("Captured: the image and its manifest are in the images directory.\n\n", style="bold green")
    ratio = receipt.compressed_size / receipt.image_size if receipt.image_size else 0.0
    text.append(_path_row("image", receipt.output))
    text.append(_row("size", f"{format_size(receipt.compressed_size)} file, {format_size(receipt.image_size)} "
                     f"image ({ratio:.1%})" + (", trimmed" if receipt.trimmed else "")))
    text.append(_row("blake3", receipt.blake3))
    text.append(_path_row("manifest", str(manifest)))
    rate = format_rate(receipt.image_size / receipt.seconds) if receipt.seconds else "-"
    text.append(_row("from", f"{receipt.disk_path}, {format_duration(receipt.seconds)} ({rate})"))
    if receipt.saved_to:
        text.append(_path_row("receipt", receipt.saved_to), style="dim")
    text.rstrip()
    return text


def capture_route(plan: CapturePlan) -> str:
    """disk -> file name: the title bar's and the progress panel's one line."""
    return f"{plan.disk.path} -> {plan.output.name}"
