"""The capture engine: executes a CapturePlan and reports through the event stream.

    open the disk (O_RDONLY | O_EXCL | O_DIRECT) -> same disk, same head, read rules again
    -> capture pass into OUT.partial (copy.py) -> fsync -> rename to OUT -> manifest
    -> receipt (saved)

The image is written to OUT.partial and renamed only once complete and on disk, so nothing
that looks like an image is ever half written. Any failure (an I/O error, no space left,
Ctrl-C, SIGTERM) removes the partial file, and a run that fails after the rename (its last
steps) removes the image and manifest it made too: a capture that did not finish leaves no
image. Like the flash engine this never prints and never exits; front-ends pass a sink.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bty_live.capture.copy import CaptureCopy, CapturePass, describe, output_error
from bty_live.capture.plan import CapturePlan, capture_manifest
from bty_live.capture.prepare import read_head
from bty_live.capture.reader import DiskReader
from bty_live.capture.receipt import CaptureReceipt, save_capture_receipt
from bty_live.disk.discovery import find_disk, read_identity
from bty_live.disk.eligibility import capture_context, require_readable
from bty_live.errors import BtyError, TargetRefusedError, stopped_by
from bty_live.events import Event, EventSink, Kind, Phase, ProgressMeter, discard
from bty_live.image.manifest import manifest_path_for, write_manifest
from bty_live.signals import interrupt_signal, stop_signals_blocked
from bty_live.units import format_size


@dataclass(frozen=True)
class CaptureResult:
    receipt: CaptureReceipt
    manifest: Path


def capture(plan: CapturePlan, sink: EventSink = discard, cancel: threading.Event | None = None) -> CaptureResult:
    """Capture per `plan`; raise a BtyError (the partial image removed) on failure, carrying the
    failed run's receipt once the disk was opened."""
    return _Run(plan, sink, cancel).execute()


class _Run:
    def __init__(self, plan: CapturePlan, sink: EventSink, cancel: threading.Event | None) -> None:
        self.plan = plan
        self.sink = sink
        self.cancel = cancel or threading.Event()
        self.reader: DiskReader | None = None
        self.copy: CaptureCopy | None = None
        self.owns_partial = False  # OUT.partial is this run's (created or taken over, locked)
        self.renamed = False  # OUT (and maybe its manifest) were made by this run
        self.started_at = datetime.now(UTC)
        self.started = time.monotonic()

    def info(self, message: str, phase: Phase = Phase.PLAN) -> None:
        self.sink(Event(phase, Kind.INFO, message=message))

    def execute(self) -> CaptureResult:
        plan = self.plan
        try:
            self.info(f"capturing {plan.disk.path} ({format_size(plan.length)}) into {plan.output}")
            for note in plan.notes:
                self.info(note)
            self.reader = DiskReader.open(plan.disk.path)
            self._recheck(self.reader)
            copy = self._capture(self.reader)
            manifest = self._finish(copy)
            self.reader.close()
            receipt = self._receipt(copy, manifest)
            self._save(receipt)
            self.sink(Event(Phase.DONE, Kind.END, bytes_in=copy.compressed_size, bytes_out=copy.size,
                            total=copy.size, zero_bytes=copy.zero_bytes, digest=copy.digest,
                            message=receipt.summary()[0]))
            return CaptureResult(receipt, manifest)
        except BaseException as exc:
            error = _as_error(exc)
            with stop_signals_blocked():  # a second signal must not cut the clean-up short
                self._fail(exc, error)
            if error is not None and error is not exc:
                raise error from exc
            raise
        finally:
            if self.reader is not None:
                self.reader.close()

    def _fail(self, exc: BaseException, error: BtyError | None) -> None:
        removed = self._remove_outputs()
        if error is not None and removed:
            error.aftermath = removed
        message = error.full_message() if error else f"{type(exc).__name__}: {exc}"
        self.sink(Event(Phase.FAILED, Kind.ERROR, message=message, error=error.kind if error else type(exc).__name__))
        if self.reader is not None:  # the disk was opened: the run leaves a receipt
            receipt = self._receipt(self.copy, None, error=message)
            self._save(receipt)
            if error is not None:
                error.receipt = receipt

    def _remove_outputs(self) -> str:
        """Remove what this run wrote; say what was removed (for the one-line error)."""
        plan = self.plan
        gone = []
        paths = ([plan.partial] if self.owns_partial else []) + (
            [plan.output, manifest_path_for(plan.output)] if self.renamed else [])
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                gone.append(path.name)
        return f"removed {', '.join(gone)}" if gone else ""

    # -- safety -------------------------------------------------------------------------------

    def _recheck(self, reader: DiskReader) -> None:
        """Now that the disk is held: the same disk as planned, not in use, holding the same head."""
        plan = self.plan
        now = read_identity(plan.disk.path)
        changes = plan.disk.identity().differences(now)
        if changes:
            raise TargetRefusedError(f"disk {plan.disk.path} is not the disk that was chosen ({'; '.join(changes)}); "
                                     "nothing was captured: choose the disk again")
        if (os.major(reader.info.rdev), os.minor(reader.info.rdev)) != now.devnum or reader.size != plan.disk_size:
            raise TargetRefusedError(f"disk {plan.disk.path} changed while it was opened; nothing was captured")
        require_readable(find_disk(plan.disk.path), capture_context(plan.output))
        if read_head(reader) != plan.head:
            raise TargetRefusedError(f"the first MiB of {plan.disk.path} (its partition table) changed since the "
                                     "capture was planned; nothing was captured: run it again")

    # -- the capture --------------------------------------------------------------------------

    def _capture(self, reader: DiskReader) -> CaptureCopy:
        plan = self.plan
        meter = ProgressMeter(self.sink, Phase.CAPTURE, plan.length)
        meter.start(f"reading {plan.disk.path} into {plan.partial.name}")
        fd = _create_partial(plan.partial)
        self.owns_partial = True
        with os.fdopen(fd, "wb") as out:
            copy = CapturePass(reader, out, length=plan.length, patches=plan.patches, level=plan.options.level,
                               output_name=plan.partial.name, cancel=self.cancel)
            self.copy = copy.run(lambda c: meter.update(c.compressed, c.bytes_packed, c.zero_bytes))
            try:
                os.fsync(out.fileno())
            except OSError as exc:
                raise output_error(plan.partial.name, exc) from exc
        result = self.copy
        meter.end(result.compressed_size, result.size, result.zero_bytes, digest=result.digest,
                  message=describe(result))
        return result

    def _finish(self, copy: CaptureCopy) -> Path:
        """OUT.partial becomes OUT, then the manifest beside it; stop signals wait until both are done."""
        plan = self.plan
        manifest = capture_manifest(plan, blake3=copy.digest, sha256=copy.sha256, index=copy.index,
                                    captured_at=self.started_at.isoformat(timespec="seconds"))
        with stop_signals_blocked():
            try:
                os.replace(plan.partial, plan.output)
                self.renamed = True
                path = write_manifest(plan.output, manifest)
                _fsync_dir(plan.output.parent)
            except OSError as exc:
                raise output_error(plan.output.name, exc) from exc
        self.info(f"wrote {plan.output.name} and its manifest {path.name}", Phase.DONE)
        return path

    # -- receipt ------------------------------------------------------------------------------

    def _receipt(self, copy: CaptureCopy | None, manifest: Path | None, *, error: str | None = None
                 ) -> CaptureReceipt:
        plan = self.plan
        disk = plan.disk
        return CaptureReceipt(
            result="ok" if error is None else "failed",
            disk_path=disk.path,
            disk_model=disk.model,
            disk_serial=disk.serial,
            disk_wwn=disk.wwn,
            disk_size=plan.disk_size,
            disk_transport=disk.transport,
            disk_by_id=list(disk.by_id),
            output=str(plan.output),
            manifest=str(manifest) if manifest else None,
            image_name=plan.name,
            image_size=plan.length,
            trimmed=plan.trimmed,
            partition_table=plan.table.scheme if plan.table else None,
            bytes_read=copy.size if copy else 0,
            zero_bytes=copy.zero_bytes if copy else 0,
            compressed_size=copy.compressed_size if copy else 0,
            frames=copy.frames if copy else 0,
            blake3=copy.digest if copy else "",
            sha256=copy.sha256 if copy else "",
            level=plan.options.level,
            seconds=copy.seconds if copy else time.monotonic() - self.started,
            started_at=self.started_at.isoformat(timespec="seconds"),
            finished_at=datetime.now(UTC).isoformat(timespec="seconds"),
            error=error,
        )

    def _save(self, receipt: CaptureReceipt) -> None:
        options = self.plan.options
        try:
            save_capture_receipt(receipt, directory=options.receipts_dir, path=options.receipt)
        except OSError as exc:
            self.info(f"warning: the receipt could not be saved ({exc})", Phase.DONE)


def _as_error(exc: BaseException) -> BtyError | None:
    """The BtyError a failure is reported as: Ctrl-C or a stop signal outside the stages becomes
    the Cancelled the stages raise."""
    if isinstance(exc, BtyError):
        return exc
    if isinstance(exc, KeyboardInterrupt):
        return stopped_by(interrupt_signal(exc))
    return None


def _create_partial(path: Path) -> int:
    """OUT.partial, created or taken over from a capture that was killed; refused while another
    capture is writing it (it holds a lock on it)."""
    import fcntl

    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise output_error(path.name, exc) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        raise TargetRefusedError(f"{path} is being written by another capture; wait for it or choose another "
                                 "output") from exc
    os.ftruncate(fd, 0)
    return fd


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
