"""The receipt of a capture: which disk became which image, its digests, how long it took.

Saved as JSON beside the flash receipts ($BTY_RECEIPTS, the stick's receipts/ directory, or
~/.local/state/bty-live/receipts), failed captures included once the disk was opened. No
ledger record: the ledger says which image passed on which machine model, and a capture is not
a run of an image on a machine; flashing the capture is.
"""

from __future__ import annotations

import json
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bty_live import __version__
from bty_live.flash.receipt import receipt_path, write_receipt
from bty_live.units import format_duration, format_rate, format_size


@dataclass
class CaptureReceipt:
    result: str  # "ok" or "failed"
    disk_path: str
    disk_model: str | None
    disk_serial: str | None
    disk_wwn: str | None
    disk_size: int
    disk_transport: str
    disk_by_id: list[str]
    output: str
    manifest: str | None  # the manifest written beside the image
    image_name: str
    image_size: int  # bytes captured (the disk's size, or less with --trim)
    trimmed: bool
    partition_table: str | None  # "gpt", "mbr" or None
    bytes_read: int
    zero_bytes: int  # of the bytes captured, those in all-zero MiB
    compressed_size: int
    frames: int
    blake3: str  # of the image: what a disk flashed with it reads back as
    sha256: str  # of the image file
    level: int
    seconds: float
    started_at: str
    finished_at: str
    host: str = field(default_factory=socket.gethostname)
    bty_version: str = __version__
    error: str | None = None
    saved_to: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def summary(self) -> list[str]:
        rate = format_rate(self.image_size / self.seconds) if self.seconds else "-"
        ratio = self.compressed_size / self.image_size if self.image_size else 0.0
        lines = [
            f"captured {self.disk_path} ({self.disk_model or 'unknown model'}, serial {self.disk_serial or '-'}) "
            f"into {self.output}",
            f"  {format_size(self.image_size)}" + (" (trimmed)" if self.trimmed else "")
            + f", {format_size(self.zero_bytes)} of it zeros -> {format_size(self.compressed_size)} ({ratio:.1%}), "
            f"{self.frames} frames; {format_duration(self.seconds)} ({rate})",
            f"  blake3 {self.blake3}",
        ]
        if self.manifest:
            lines.append(f"  manifest: {self.manifest}")
        if self.saved_to:
            lines.append(f"  receipt: {self.saved_to}")
        return lines


def save_capture_receipt(receipt: CaptureReceipt, directory: Path | None = None, path: Path | None = None) -> Path:
    """Write the receipt as JSON (atomically) beside the flash receipts, and remember where it went."""
    if path is None:
        path = receipt_path(directory, receipt.image_name, receipt.disk_path, kind="capture")
    return write_receipt(receipt, path)
