"""The known-good ledger: one JSON line per flash run, appended, never rewritten.

Default file: `ledger.jsonl` in the images directory (`--ledger FILE` elsewhere). Each record
says what was flashed (image name and blake3, tuning task and its blake3), onto what (the
machine's DMI identity and MACs, the disk's model and serial), how each phase went (result and
seconds) and the error, if any.

An image + task is *known-good* for a machine model once one run on that model passed write,
verify (the stream matched a known digest: a manifest's or --blake3's; or the file as shipped
matched its own, an OCI layer's sha256; or, for a local file without a manifest, the read-back
matched the hash of the file's bytes) and tune (or had no task to run). A
download with no digest to compare with is never known-good: its read-back proves that the disk
holds what arrived, not that what arrived is the image.

Crash safety, for an images partition that may lose power at any moment:

* a record is one `write()` of one line with its newline, on a file opened with O_APPEND, then
  fsync (and the directory is fsynced when the file is created): a record is either on disk
  whole, or cut short at the end of the file; records before it are never touched;
* before appending, a file that does not end in a newline (a cut-short record, or the zeros a
  filesystem may leave after a power cut) gets one, so the damage stays on its own line;
* reading skips and reports any line that is not a whole record instead of failing.
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from bty_live import __version__
from bty_live.errors import BtyError, LedgerError
from bty_live.events import Event, EventSink, Kind, discard
from bty_live.flash.receipt import Receipt
from bty_live.system.machine import MachineIdentity
from bty_live.tune.model import TuneResult

LEDGER_FILE = "ledger.jsonl"
SCHEMA = 1
PHASES = ("write", "verify", "fixup", "tune")
Result = Literal["passed", "failed"]
PhaseOutcome = Literal["passed", "failed", "skipped"]

#: the phase an error class belongs to, when the events do not show which phase was running
_PHASE_OF_ERROR = {"io": "write", "vanished": "write", "corrupt": "write", "digest": "verify",
                   "verify": "verify", "fixup": "fixup", "tune": "tune"}
_HEX_PREFIX = re.compile(r"^[0-9a-fA-F]{8,64}$")


@dataclass(frozen=True)
class PhaseResult:
    result: PhaseOutcome
    seconds: float | None = None


@dataclass(frozen=True)
class LedgerRecord:
    result: Result
    image_name: str
    image_blake3: str | None
    recorded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    task: str | None = None  # the task file's name
    task_digest: str | None = None  # blake3 of the task file
    machine_model: str = "unknown model"
    machine_vendor: str | None = None
    machine_product: str | None = None
    machine_serial: str | None = None
    machine_uuid: str | None = None
    macs: tuple[str, ...] = ()
    disk_path: str | None = None
    disk_model: str | None = None
    disk_serial: str | None = None
    phases: Mapping[str, PhaseResult] = field(default_factory=dict)
    error: str | None = None
    error_kind: str | None = None
    receipt: str | None = None  # where the run's receipt was saved
    report: str | None = None  # the tuning report (CIJOE output directory)
    #: the image file whose bytes this passing run hashed (to image_blake3), as it was then: its
    #: resolved path, size and mtime; a file with another size or mtime is not what was verified
    image_file: str | None = None
    image_file_size: int | None = None
    image_file_mtime_ns: int | None = None
    #: a differential flash's bytes (bty_live.flash.differential): compared on the disk, skipped,
    #: written, zeroed, and read from the image file; None for a full write
    differential: Mapping[str, int] | None = None
    bty_version: str = __version__
    schema: int = SCHEMA

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["macs"] = list(self.macs)
        data["phases"] = {name: asdict(phase) for name, phase in self.phases.items()}
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LedgerRecord:
        """Build a record from a JSON object; unknown keys (a newer bty) are ignored."""
        if data.get("result") not in ("passed", "failed") or not isinstance(data.get("image_name"), str):
            raise ValueError("not a ledger record (no result or image_name)")
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in known}
        phases = values.get("phases") or {}
        if not isinstance(phases, Mapping):
            raise ValueError("phases is not an object")
        values["phases"] = {str(name): _phase_result(p) for name, p in phases.items()}
        values["macs"] = tuple(str(m) for m in values.get("macs") or ())
        return cls(**values)

    def phase(self, name: str) -> str:
        """'passed', 'failed', 'skipped', or 'not run'."""
        found = self.phases.get(name)
        return found.result if found else "not run"

    @property
    def known_good(self) -> bool:
        """Passed write, verify and tune (a run without a task needs no tune)."""
        if self.result != "passed" or self.phase("write") != "passed" or self.phase("verify") != "passed":
            return False
        return self.phase("tune") == "passed" or (self.task_digest is None and self.phase("tune") != "failed")


def _phase_result(data: object) -> PhaseResult:
    if not isinstance(data, Mapping):
        raise ValueError("a phase is not an object")
    result, seconds = data.get("result"), data.get("seconds")
    if result == "passed" or result == "failed" or result == "skipped":
        if seconds is not None and not isinstance(seconds, int | float):
            raise ValueError("phase seconds is not a number")
        return PhaseResult(result, seconds)
    raise ValueError(f"unknown phase result {result!r}")


@dataclass(frozen=True)
class SkippedLine:
    number: int  # 1-based line number
    reason: str
    text: str  # the start of the line, for the report


@dataclass(frozen=True)
class Ledger:
    path: Path
    records: tuple[LedgerRecord, ...]
    skipped: tuple[SkippedLine, ...] = ()
    exists: bool = True


def default_ledger_path(images_dir: Path) -> Path:
    return images_dir / LEDGER_FILE


# -- writing --------------------------------------------------------------------------------------


def append_record(path: Path, record: LedgerRecord) -> None:
    """Append one record durably (O_APPEND, one write, fsync); see the module docstring."""
    line = (record.to_json() + "\n").encode()
    created = not path.exists()
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise LedgerError(f"ledger {path} cannot be opened ({exc.strerror}); is the images partition "
                          "read-only? use --ledger FILE elsewhere") from exc
    try:
        with contextlib.suppress(OSError):  # serialise concurrent flashes; some filesystems lack flock
            fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line  # the last record was cut short: keep the damage on its own line
        written = os.write(fd, line)
        while written < len(line):  # a short write (disk full): finish it, or fail with ENOSPC
            written += os.write(fd, line[written:])
        os.fsync(fd)
    except OSError as exc:
        raise LedgerError(f"ledger {path} could not be appended to ({exc.strerror})") from exc
    finally:
        os.close(fd)
    if created:
        with contextlib.suppress(OSError):
            dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


# -- reading --------------------------------------------------------------------------------------


def parse_ledger(data: bytes, path: Path = Path(LEDGER_FILE)) -> Ledger:
    """Records from the file's bytes; lines that are not whole records are skipped and listed."""
    records: list[LedgerRecord] = []
    skipped: list[SkippedLine] = []
    lines = data.split(b"\n")
    unterminated = lines[-1] != b""  # the last line has no newline: its write may have been cut short
    for number, raw in enumerate(lines, 1):
        stripped = raw.replace(b"\0", b"").strip()
        if not stripped:
            continue
        last = number == len(lines)
        preview = raw[:80].decode("utf-8", errors="replace").replace("\0", "\\0")
        try:
            value = json.loads(stripped.decode("utf-8"))
            if not isinstance(value, dict):
                raise ValueError("not a JSON object")
            records.append(LedgerRecord.from_dict(value))
        except (ValueError, TypeError, UnicodeDecodeError) as exc:
            if last and unterminated:
                reason = "cut short (the write was interrupted, e.g. by a power cut)"
            elif b"\0" in raw:
                reason = "holds zero bytes (left by a power cut)"
            else:
                reason = f"not a ledger record ({exc})"
            skipped.append(SkippedLine(number, reason, preview))
    return Ledger(path, tuple(records), tuple(skipped))


def read_ledger(path: Path) -> Ledger:
    """The ledger at `path`; a missing file is an empty ledger (`exists` False)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return Ledger(path, (), (), exists=False)
    except OSError as exc:
        raise LedgerError(f"ledger {path} cannot be read ({exc.strerror})") from exc
    return parse_ledger(data, path)


# -- questions ------------------------------------------------------------------------------------


def known_good(records: Iterable[LedgerRecord], image_blake3: str, task_digest: str | None, model: str) -> bool:
    """Has this image + task passed write, verify and tune on this machine model?"""
    return any(r.known_good and r.image_blake3 == image_blake3 and r.task_digest == task_digest
               and r.machine_model.lower() == model.lower() for r in records)


def known_good_models(records: Iterable[LedgerRecord], image_blake3: str, task_digest: str | None) -> list[str]:
    """The machine models this image + task is known-good on, sorted."""
    return sorted({r.machine_model for r in records
                   if r.known_good and r.image_blake3 == image_blake3 and r.task_digest == task_digest},
                  key=str.lower)


@dataclass
class Combination:
    """Every run of one image + task on one machine model."""

    image_name: str
    image_blake3: str
    task: str | None
    task_digest: str | None
    model: str
    passed: int = 0
    failed: int = 0
    known_good: bool = False
    last_run: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(records: Iterable[LedgerRecord]) -> list[Combination]:
    """Runs grouped by image + task + machine model, in order of first appearance."""
    groups: dict[tuple[str, str | None, str], Combination] = {}
    for r in records:
        if not r.image_blake3:
            continue
        key = (r.image_blake3, r.task_digest, r.machine_model.lower())
        group = groups.setdefault(key, Combination(r.image_name, r.image_blake3, r.task, r.task_digest,
                                                   r.machine_model))
        if r.result == "passed":
            group.passed += 1
        else:
            group.failed += 1
        group.known_good = group.known_good or r.known_good
        group.last_run = r.recorded_at
    return list(groups.values())


def filter_records(records: Sequence[LedgerRecord], *, image: str | None = None, model: str | None = None,
                   failed: bool = False) -> list[LedgerRecord]:
    """`image`: name (case-insensitive) or blake3 prefix (8+ hex digits); `model`: glob (* ?),
    case-insensitive; `failed`: only runs that failed."""
    selected = list(records)
    if image:
        wanted = image.lower()
        selected = [r for r in selected if r.image_name.lower() == wanted
                    or (_HEX_PREFIX.match(image) and (r.image_blake3 or "").startswith(wanted))]
    if model:
        pattern = model.lower()
        selected = [r for r in selected if fnmatch.fnmatchcase(r.machine_model.lower(), pattern)]
    if failed:
        selected = [r for r in selected if r.result == "failed"]
    return selected


# -- records from a run ----------------------------------------------------------------------------


class PhaseTracker:
    """An EventSink that forwards every event and notes which phases started and ended.

    Front-ends wrap their sink in one, so a failed run's record can say which phase failed.
    """

    def __init__(self, sink: EventSink = discard) -> None:
        self.sink = sink
        self.started: dict[str, float] = {}
        self.ended: dict[str, float] = {}

    def __call__(self, event: Event) -> None:
        phase = str(event.phase)
        if event.kind == Kind.START:
            self.started[phase] = event.timestamp
        elif event.kind == Kind.END:
            self.ended[phase] = event.timestamp
            self.started.setdefault(phase, event.timestamp - event.elapsed)
        self.sink(event)

    def phases(self, error: BaseException | None = None) -> dict[str, PhaseResult]:
        found: dict[str, PhaseResult] = {}
        for name in PHASES:
            if name in self.ended:
                found[name] = PhaseResult("passed", round(self.ended[name] - self.started[name], 3))
        if error is not None:
            running = [name for name in PHASES if name in self.started and name not in self.ended]
            kind = getattr(error, "kind", None)
            failed = running[-1] if running else _PHASE_OF_ERROR.get(str(kind)) if kind else None
            if failed is not None:
                found[failed] = PhaseResult("failed", None)
        return found


def phases_from_receipt(receipt: Receipt, tune: TuneResult | None) -> dict[str, PhaseResult]:
    """The phases of a run that finished: the receipt says how verify went. Verify passed against
    a known digest (a manifest's, --blake3's), or for a local file without a manifest when the
    read-back matched what was hashed from the file (the ledger keeps the file's size and mtime,
    so the badge stays with those very bytes). A download without any digest counts as skipped,
    whatever the read-back found: it proves the disk holds what arrived, not that it was the image.
    The file's own digest (an OCI layer's sha256, `file_check`) is a known digest too."""
    local_file_read_back = receipt.stream_check == "no manifest" and receipt.readback_check == "match"
    verified = receipt.stream_check == "match" or receipt.file_check == "match" or local_file_read_back
    phases = {
        "write": PhaseResult("passed", receipt.phases.get("write")),
        "verify": PhaseResult("passed" if verified else "skipped", receipt.phases.get("verify")),
        "fixup": PhaseResult("passed", receipt.phases.get("fixup")),
    }
    if tune is not None:
        phases["tune"] = PhaseResult("passed" if tune.status == "passed" else "skipped", round(tune.seconds, 3))
    return phases


def make_record(
    *,
    image_name: str,
    image_blake3: str | None,
    machine: MachineIdentity,
    disk_path: str | None = None,
    disk_model: str | None = None,
    disk_serial: str | None = None,
    task: Path | None = None,
    task_digest: str | None = None,
    receipt: Receipt | None = None,
    tune: TuneResult | None = None,
    error: BaseException | None = None,
    tracker: PhaseTracker | None = None,
) -> LedgerRecord:
    """The record of one run: pass the receipt (and tune result) of a run that finished, or the
    error and the PhaseTracker of one that failed."""
    if receipt is not None and error is None:
        phases = phases_from_receipt(receipt, tune)
    else:
        phases = tracker.phases(error) if tracker else {}
    report = tune.report_dir if tune else getattr(error, "report", None)
    stamp = _verified_file(receipt) if error is None else None
    return LedgerRecord(
        result="failed" if error is not None else "passed",
        image_name=image_name,
        image_blake3=receipt.image_blake3 if receipt is not None else image_blake3,
        task=task.name if task else None,
        task_digest=task_digest,
        machine_model=machine.model,
        machine_vendor=machine.vendor,
        machine_product=machine.product,
        machine_serial=machine.serial,
        machine_uuid=machine.uuid,
        macs=tuple(nic.mac for nic in machine.nics),
        disk_path=disk_path,
        disk_model=disk_model,
        disk_serial=disk_serial,
        phases=phases,
        error=(error.full_message() if isinstance(error, BtyError) else f"{type(error).__name__}: {error}")
        if error is not None else None,
        error_kind=getattr(error, "kind", type(error).__name__) if error is not None else None,
        receipt=receipt.saved_to if receipt is not None else None,
        report=report if isinstance(report, str) else None,
        image_file=stamp.path if stamp else None,
        image_file_size=stamp.size if stamp else None,
        image_file_mtime_ns=stamp.mtime_ns if stamp else None,
        differential=_differential_bytes(receipt),
    )


def _differential_bytes(receipt: Receipt | None) -> dict[str, int] | None:
    diff = receipt.differential if receipt is not None else None
    if not diff or diff.get("mode") != "differential":
        return None
    return {key: int(diff.get(key) or 0) for key in
            ("bytes_compared", "bytes_skipped", "bytes_written", "bytes_zeroed", "source_bytes_read")}


# -- the file a passing run read ------------------------------------------------------------------


@dataclass(frozen=True)
class FileStamp:
    """A file as a run read it: a later file with another size or mtime holds other bytes."""

    path: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> FileStamp | None:
        try:
            resolved = path.resolve()
            st = resolved.stat()
        except OSError:
            return None
        return cls(str(resolved), st.st_size, st.st_mtime_ns)


def _verified_file(receipt: Receipt | None) -> FileStamp | None:
    """The stamp of the file a passing run streamed and hashed (none for a URL or a skipped check)."""
    if receipt is None or receipt.result != "ok" or receipt.stream_check == "skipped":
        return None
    if (receipt.differential or {}).get("mode") == "differential":  # the disk was proved, not the whole file
        return None
    if "://" in receipt.image_path:
        return None
    return FileStamp.of(Path(receipt.image_path))


__all__ = [
    "LEDGER_FILE",
    "Ledger",
    "LedgerRecord",
    "PhaseResult",
    "PhaseTracker",
    "SkippedLine",
    "Combination",
    "FileStamp",
    "append_record",
    "default_ledger_path",
    "filter_records",
    "known_good",
    "known_good_models",
    "make_record",
    "parse_ledger",
    "phases_from_receipt",
    "read_ledger",
    "summarize",
]

