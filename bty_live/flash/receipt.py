"""The receipt of a flash: what was written where, how it was checked, how long each phase took."""

from __future__ import annotations

import json
import os
import re
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bty_live import __version__
from bty_live.image.remote import NO_DIGEST, UNVERIFIED
from bty_live.system.state_dirs import default_receipts_dir
from bty_live.units import format_duration, format_rate, format_size


@dataclass
class Receipt:
    result: str  # "ok" or "failed"
    image_name: str
    image_path: str
    image_size: int
    image_blake3: str  # of the stream as written
    manifest_blake3: str | None
    target_path: str
    target_model: str | None
    target_serial: str | None
    target_wwn: str | None
    target_size: int
    target_transport: str
    target_by_id: list[str]
    bytes_written: int
    bytes_zeroed: int
    verify_mode: str
    #: the decompressed stream's blake3 against the expected one: "match" (also when the read-back,
    #: compared with the manifest's blake3, proved the image and the write at once and the stream
    #: was not hashed), "no manifest" (a file),
    #: "unverified (no digest)" (a URL), "no blake3 (the file's digest is checked)" (an OCI layer
    #: without bty's manifest: file_check tells), "skipped", "not reached"
    stream_check: str
    #: "match", "skipped"
    readback_check: str
    fixups: list[str]
    phases: dict[str, float]  # seconds per phase
    started_at: str
    finished_at: str
    parallel_frames: bool = False
    host: str = field(default_factory=socket.gethostname)
    bty_version: str = __version__
    error: str | None = None
    saved_to: str | None = None
    #: the tuning run (bty_live.tune.TuneResult.to_dict()), when there was one
    tune: dict[str, Any] | None = None
    #: an image streamed over HTTP: {"url" (without the query string), "resumes", "bytes" of the file}
    download: dict[str, Any] | None = None
    #: the digest the file as shipped must have ("sha256:HEX": an OCI layer's), when it has one
    file_digest: str | None = None
    #: that digest against the file's bytes as they streamed: "match", "mismatch", "skipped",
    #: "not reached"; None without a file digest
    file_check: str | None = None
    #: where the time went (bty_live.flash.profile): {"first_write": seconds from the process start
    #: to the first image byte written, "stages": [{name, start, end, busy, wait_input, wait_output}]}
    profile: dict[str, Any] | None = None
    #: how the image was written (bty_live.flash.differential): {"mode": "differential" | "full" |
    #: "fell back", "reason", "block_size", "blocks", "blocks_written", "bytes_compared",
    #: "bytes_skipped", "bytes_written", "bytes_zeroed", "source_bytes_read", "seconds"}
    differential: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def summary(self) -> list[str]:
        write = self.phases.get("write", 0.0)
        rate = format_rate(self.image_size / write) if write else "-"
        lines = [
            f"flashed {self.image_name} ({format_size(self.image_size)}) onto {self.target_path} "
            f"({self.target_model or 'unknown model'}, serial {self.target_serial or '-'})",
            f"  written {format_size(self.bytes_written)} of data, zero-filled {format_size(self.bytes_zeroed)}; "
            f"write {format_duration(write)} ({rate})",
            f"  blake3 {self.image_blake3}",
            f"  stream digest: {self.stream_check}; read-back: {self.readback_check}"
            + (f" ({format_duration(self.phases['verify'])})" if "verify" in self.phases else ""),
        ]
        diff = self.differential or {}
        if diff.get("mode") == "differential":
            lines.append(f"  differential: compared {format_size(diff.get('bytes_compared') or 0)}, "
                         f"wrote in {diff.get('blocks_written')} of {diff.get('blocks')} blocks, "
                         f"read {format_size(diff.get('source_bytes_read') or 0)} of the image file")
        elif diff.get("mode") == "fell back":
            lines.append(f"  written whole: {diff.get('reason')}")
        if self.file_digest:
            lines.append(f"  file digest {self.file_digest[:23]}...: {self.file_check}")
        if self.fixups:
            lines.append("  fix-ups: " + "; ".join(self.fixups))
        if self.tune:
            steps = len(self.tune.get("steps") or ())
            lines.append(f"  tuning: {self.tune.get('status')} ({self.tune.get('task')}, {steps} steps"
                         + (f"; {self.tune['note']}" if self.tune.get("note") else "")
                         + (f"; report {self.tune['report_dir']}" if self.tune.get("report_dir") else "") + ")")
        if self.download:
            resumes = self.download.get("resumes") or 0
            lines.append(f"  downloaded {format_size(self.download.get('bytes') or 0)} from {self.download.get('url')}"
                         + (f", resumed {resumes} time{'s' if resumes != 1 else ''} after a dropped connection"
                            if resumes else ""))
        if self.saved_to:
            lines.append(f"  receipt: {self.saved_to}")
        if self.stream_check == UNVERIFIED:  # last, where it is read
            lines.append(f"UNVERIFIED: {NO_DIGEST}")
        return lines


def save_receipt(receipt: Receipt, directory: Path | None = None, path: Path | None = None) -> Path:
    """Write the receipt as JSON (atomically) and remember where it went."""
    return write_receipt(receipt, receipt_path(directory, receipt.image_name, receipt.target_path) if path is None
                         else path)


class SavedJson(Protocol):
    """A receipt of any kind (a flash's, a capture's): JSON, and where it was saved."""

    saved_to: str | None

    def to_json(self) -> str: ...


def receipt_path(directory: Path | None, image_name: str, disk_path: str, kind: str = "") -> Path:
    """DIR/STAMP-[KIND-]IMAGE-DISK.json, in `directory` or the default receipts directory."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    disk = re.sub(r"[^A-Za-z0-9_.-]", "_", os.path.basename(disk_path))
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", image_name)
    return (directory or default_receipts_dir()) / f"{stamp}-{kind + '-' if kind else ''}{name}-{disk}.json"


def write_receipt(receipt: SavedJson, path: Path) -> Path:
    """Write `receipt` to `path` atomically (a temporary file renamed) and remember where it went."""
    path.parent.mkdir(parents=True, exist_ok=True)
    receipt.saved_to = str(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(receipt.to_json() + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
