"""The flash engine: executes a FlashPlan and reports through the event stream.

    open target (O_EXCL) -> re-check identity and eligibility -> write pass (stream digest)
    -> compare with manifest -> read-back pass -> partition-table fix-ups -> tuning (CIJOE)
    -> receipt (saved) -> known-good ledger record

Front-ends (CLI, TUI, unattended, PXE agent) build the plan, pass a sink for events and an
optional cancel event, and get a Receipt back or a BtyError. The engine never prints and never
exits. Once the first byte is written, any failure wipes the partition-table signatures at the
start and end of the target, so a half-written disk never looks like a good one. Every run,
passed or failed, appends one record to the plan's ledger.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from bty_live.disk.discovery import find_disk, read_identity
from bty_live.disk.eligibility import context_for, require_eligible
from bty_live.errors import (
    BtyError,
    DigestMismatchError,
    FixupError,
    LedgerError,
    TargetRefusedError,
    VerifyError,
    stopped_by,
)
from bty_live.events import Event, EventSink, Kind, Phase, ProgressMeter, discard
from bty_live.flash.copy import CopyResult, StreamConsumer, WritePass
from bty_live.flash.deferred import DeferredRegion, DeferringTarget, commit, overlay, plan_regions, release
from bty_live.flash.differential import DiffCounters, DifferentialPass, NotThisImage
from bty_live.flash.ledger import LedgerRecord, PhaseTracker, append_record, make_record
from bty_live.flash.plan import FlashPlan, VerifyMode
from bty_live.flash.preflight import preflight_if_wanted
from bty_live.flash.profile import FlashProfile
from bty_live.flash.readback import ReadbackPass, readback_digest
from bty_live.flash.receipt import Receipt, save_receipt
from bty_live.flash.target import BlockTarget, zeroout_pays
from bty_live.image.block_reader import block_layout, block_source
from bty_live.image.bmap import BmapRangeVerifier
from bty_live.image.formats import ImageReader
from bty_live.image.remote import NO_DIGEST, UNVERIFIED
from bty_live.image.source import FILE_DIGEST_ONLY
from bty_live.signals import interrupt_signal, stop_signals_blocked
from bty_live.system.machine import read_machine_identity
from bty_live.units import format_size

if TYPE_CHECKING:
    from bty_live.tune import TuneResult

# the fix-ups (pyparted) and tuning (CIJOE, yaml) are imported when they run, after the write:
# not before the first byte is written (start-up is part of a flash's time)


class _BmapConsumer(StreamConsumer):
    def __init__(self, verifier: BmapRangeVerifier) -> None:
        self.verifier = verifier

    def feed(self, offset: int, data: memoryview) -> None:
        self.verifier.feed(offset, data)

    def finish(self) -> None:
        self.verifier.finish()


@dataclass(frozen=True)
class FlashResult:
    """What a run that succeeded leaves: its receipt (saved) and its known-good ledger record
    (appended to the plan's ledger when it names one; the PXE agent forwards it to the server)."""

    receipt: Receipt
    record: LedgerRecord


def flash(plan: FlashPlan, sink: EventSink = discard, cancel: threading.Event | None = None) -> FlashResult:
    """Write, verify and fix up per `plan`; raise a BtyError (after wiping, if needed) on failure,
    carrying the failed run's receipt and ledger record when it got that far."""
    return _Run(plan, sink, cancel).execute()


class _Run:
    def __init__(self, plan: FlashPlan, sink: EventSink, cancel: threading.Event | None) -> None:
        self.plan = plan
        self.tracker = PhaseTracker(sink)  # for the ledger: which phase a failure stopped
        self.sink: EventSink = self.tracker
        self.cancel = cancel or threading.Event()
        self.phases: dict[str, float] = {}
        self.target: BlockTarget | None = None
        #: the image's first and last MiB, held until everything else is written and verified
        self.deferred: list[DeferredRegion] = []
        self.copy: CopyResult | None = None  # the write pass's result, once it is done
        #: the read-back running behind the write (verify readback, unless the plan says after)
        self.readback: ReadbackPass | None = None
        self.profile = FlashProfile()
        #: a differential flash (bty_live.flash.differential): the pass, the blocks it wrote, and
        #: the receipt's `differential` (also when it fell back to a full write)
        self.diff: DifferentialPass | None = None
        self.diff_written: list[int] = []
        self.diff_info: dict[str, Any] | None = None
        #: the file's digest as computed while it streamed (when the image has one to match)
        self.file_hash: str | None = None
        #: the receipt's file_check: None without a file digest, else "not reached" until checked
        self.file_check: str | None = "not reached" if plan.image.file_digest is not None else None
        self.started_at = datetime.now(UTC)

    def info(self, phase: Phase, message: str) -> None:
        self.sink(Event(phase, Kind.INFO, message=message))

    def execute(self) -> FlashResult:
        plan = self.plan
        try:
            self.info(Phase.PLAN, f"flashing {plan.image.name} onto {plan.target.path}")
            for warning in plan.warnings:
                self.info(Phase.PLAN, f"warning: {warning}")
            self.target = BlockTarget.open(plan.target.path)
            self._recheck_target(self.target)
            copy = self._write_differential(self.target) if plan.differential else None
            if copy is None:
                copy = self._write(self.target)
            self._check_file()
            if copy.digest:
                stream_check = self._check_stream(copy)
                readback_check = self._readback(copy)
            else:  # the stream was not hashed: the read-back is compared with the manifest
                copy = self._prove_by_readback(copy)
                stream_check = readback_check = "match"
            self._commit_deferred(self.target)
            copy = self.copy or copy  # a differential flash counts the held regions once committed
            fixups = self._fixups(self.target)
            tune = self._tune(copy)
            receipt = self._receipt(copy, stream_check, readback_check, fixups, tune)
            self._save(receipt)
            record = self._record(receipt=receipt, tune=tune)
            self.sink(Event(Phase.DONE, Kind.END, bytes_out=copy.size, total=copy.size, digest=copy.digest,
                            message="; ".join(receipt.summary()[:1])))
            return FlashResult(receipt, record)
        except BaseException as exc:
            error = self._as_error(exc)
            with stop_signals_blocked():  # a second signal must not cut the wipe or the record short
                self._fail(exc, error)
            if error is not None and error is not exc:
                raise error from exc
            raise
        finally:
            if self.readback is not None:  # before the regions it lays over are released
                self.readback.stop()
            release(self.deferred)
            if self.target is not None:
                self.target.close()

    @staticmethod
    def _as_error(exc: BaseException) -> BtyError | None:
        """The BtyError a failure is reported as: a Ctrl-C or stop signal outside the copy stages
        (fix-ups, tuning) becomes the same Cancelled the stages raise."""
        if isinstance(exc, BtyError):
            return exc
        if isinstance(exc, KeyboardInterrupt):
            return stopped_by(interrupt_signal(exc))
        return None

    def _fail(self, exc: BaseException, error: BtyError | None) -> None:
        """Wipe (when the disk was touched), report, save a failed receipt, record the run."""
        wiped = self._wipe_if_touched(exc)
        if error is not None and wiped:
            error.aftermath = wiped
        message = error.full_message() if error else f"{type(exc).__name__}: {exc}"
        self.sink(Event(Phase.FAILED, Kind.ERROR, message=message,
                        error=error.kind if error else type(exc).__name__))
        if self.target is not None:  # the disk was opened: the run leaves a receipt, failed or not
            receipt = self._failed_receipt(message)
            self._save(receipt)
            if error is not None:
                error.receipt = receipt
        record = self._record(error=error or exc)
        if error is not None:
            error.record = record

    # -- safety -------------------------------------------------------------------------------

    def _recheck_target(self, target: BlockTarget) -> None:
        """Right before the first write: same disk as planned, still not in use or protected."""
        plan = self.plan
        now = read_identity(plan.target.path)
        changes = plan.target.differences(now)
        if changes:
            raise TargetRefusedError(
                f"target {plan.target.path} is not the disk that was chosen ({'; '.join(changes)}); "
                "nothing was written: choose the disk again"
            )
        if (os.major(target.info.rdev), os.minor(target.info.rdev)) != now.devnum:
            raise TargetRefusedError(f"target {plan.target.path} changed while it was opened; nothing was written")
        require_eligible(find_disk(plan.target.path), context_for(plan.protected_paths, plan.image.size))

    def _wipe_if_touched(self, exc: BaseException) -> str | None:
        target = self.target
        if target is None or not target.touched or isinstance(exc, FixupError):
            return None
        if target.fd < 0:  # closed for tuning (the kernel must mount its partitions): reopen it
            try:
                target = self.target = BlockTarget.open(target.path)
                target.touched = True
            except BtyError as reopen:
                return f"could not reopen {self.plan.target.path} to wipe it ({reopen}): treat it as damaged"
        image_end = self.plan.image.size or 0
        wiped = target.wipe_signatures((image_end,) if image_end else ())
        target.reread_partitions()
        if not wiped:
            return f"could not wipe {target.path}: treat it as damaged"
        return f"{target.path} wiped: partition tables and signatures at its start and end were zeroed"

    # -- phases -------------------------------------------------------------------------------

    def _write(self, target: BlockTarget) -> CopyResult:
        plan = self.plan
        image = plan.image
        extra: StreamConsumer | None = None
        if image.bmap is not None and image.manifest is None and image.bmap.checksum_type:
            extra = _BmapConsumer(BmapRangeVerifier(image.bmap, f"image {image.file_name}"))
            self.info(Phase.WRITE, f"no manifest: checking the image against bmap "
                                   f"{image.bmap.source or 'sidecar'} range checksums")
        if (preflight := preflight_if_wanted(target, plan.disk, plan.options.preflight)) is not None:
            self.info(Phase.WRITE, preflight)
        meter = ProgressMeter(self.sink, Phase.WRITE, image.size)
        meter.start(f"writing {image.name} to {target.path}")
        # the old partition tables go first and the image's come last (bty_live.flash.deferred): from
        # here until the commit, a power cut leaves a disk that no firmware or tool takes as whole
        target.wipe_signatures((image.size,) if image.size else ())
        self.deferred = plan_regions(image.size, target.info.logical_block_size)
        self.readback = self._readback_behind(target)
        # the file's own digest is taken from the bytes the reader reads: one sequential reader
        file_hasher = None
        if image.file_digest is not None and plan.options.verify != VerifyMode.OFF:
            file_hasher = hashlib.new(image.file_digest.algorithm)
        zeroout = plan.options.zeroout  # --no-zeroout, else what pays on this target
        if zeroout is None:
            zeroout = zeroout_pays(target.info, read_back=plan.options.verify == VerifyMode.READBACK)
        hash_stream = extra is not None or not self._readback_proves_image()
        with ImageReader(image.source, image.compression, expected_size=image.size,
                         observer=file_hasher.update if file_hasher else None) as reader:
            copy = WritePass(
                reader,
                DeferringTarget(target, self.deferred),
                expected_size=image.size,
                frames=None if file_hasher else image.frames,
                use_zeroout=zeroout,
                extra_consumer=extra,
                cancel=self.cancel,
                on_written=self.readback.release if self.readback is not None else None,
                flush_behind=self.readback is None,
                hash_stream=hash_stream,
            )
            result = copy.run(lambda c: meter.update(c.bytes_in, c.bytes_out, c.zeroed))
            if file_hasher is not None:
                reader.drain()
                self.file_hash = file_hasher.hexdigest()
        self.phases["write"] = result.seconds
        self.copy = result
        self.profile.first_write = result.first_write
        self.profile.add(list(result.stages))
        meter.end(result.bytes_in, result.size, result.zeroed, digest=result.digest or None,
                  message=f"wrote {format_size(result.written)}, zero-filled {format_size(result.zeroed)}")
        return result

    def _write_differential(self, target: BlockTarget) -> CopyResult | None:
        """Compare the disk with the block index and write what differs; None (nothing written)
        when the disk holds something else and the image is to be written whole."""
        plan = self.plan
        image = plan.image
        manifest, size = image.manifest, image.size
        assert manifest is not None and manifest.index is not None and size is not None
        layout = block_layout(image.compression, image.frames, manifest.index, size)
        assert not isinstance(layout, str)
        if size % target.info.logical_block_size:
            self.diff_info = {"mode": "full", "reason": "the image's size is not a multiple of the disk's sectors"}
            return None
        zeroout = plan.options.zeroout
        if zeroout is None:
            zeroout = zeroout_pays(target.info, read_back=plan.options.verify == VerifyMode.READBACK)
        blocks = block_source(image.source, layout, manifest.index, size)
        diff = DifferentialPass(target, blocks, manifest.index, size, image_name=image.file_name,
                                expected_blake3=manifest.blake3, use_zeroout=zeroout, cancel=self.cancel)
        meter = ProgressMeter(self.sink, Phase.WRITE, size)
        meter.start(f"comparing {target.path} with the block index of {image.name} (--full: write it whole)")

        def tick(c: DiffCounters) -> None:
            meter.update(c.source_bytes_read, c.bytes_compared, c.bytes_zeroed)

        # as for a full write: the old partition tables go first (once something is to be written),
        # the image's come last; their bytes are held from the start (from the disk where it matches)
        self.deferred = plan_regions(size, target.info.logical_block_size)
        held = [(r.offset, min(r.end, size)) for r in self.deferred]
        self.diff_info = {"mode": "differential", "reason": ""}  # what a failed run's receipt says
        try:
            written = diff.run(DeferringTarget(target, self.deferred), held,
                               lambda: target.wipe_signatures((size,)), tick)
        except NotThisImage as exc:
            self.diff_info = {**diff.result([]).to_dict(), "mode": "fell back", "reason": str(exc)}
            self.info(Phase.WRITE, str(exc))
            release(self.deferred)
            self.deferred = []
            return None
        finally:
            blocks.close()
        if not written:  # the disk holds the image: nothing to write last either
            release(self.deferred)
            self.deferred = []
        self.diff, self.diff_written = diff, written
        result = diff.result(written)
        self.diff_info = result.to_dict()
        seconds = sum(result.seconds.values())
        self.phases["write"] = seconds
        self.profile.add(list(result.stages))
        copy = CopyResult(bytes_in=result.source_bytes_read, size=size, written=result.bytes_written,
                          zeroed=result.bytes_zeroed, digest=manifest.blake3, seconds=seconds, parallel_frames=False,
                          stages=result.stages)
        self.copy = copy
        meter.end(result.source_bytes_read, size, result.bytes_zeroed, digest=copy.digest,
                  message=f"compared {format_size(result.bytes_compared)}: {len(written)} of {len(manifest.index)} "
                          f"blocks differed; wrote {format_size(result.bytes_written)}, "
                          f"zero-filled {format_size(result.bytes_zeroed)}")
        return copy

    def _check_file(self) -> None:
        """The file as shipped against its own digest (an OCI layer's), hashed while it streamed."""
        expected = self.plan.image.file_digest
        if expected is None:
            return
        if self.file_hash is None:  # --verify off
            self.file_check = "skipped"
            return
        name = self.plan.image.file_name
        if self.file_hash != expected.hex:
            self.file_check = "mismatch"
            raise DigestMismatchError(
                f"image file {name} does not match its {expected.source}: {expected.algorithm} "
                f"{self.file_hash[:16]}... != {expected.hex[:16]}...; {expected.fix}"
            )
        self.file_check = "match"
        self.info(Phase.VERIFY, f"file {name} matches its {expected.source} "
                                f"({expected.algorithm} {expected.hex[:16]}...)")

    def _check_stream(self, copy: CopyResult) -> str:
        plan = self.plan
        expected = plan.image.expected_blake3
        if plan.options.verify == VerifyMode.OFF:
            return "skipped"
        if expected is None and self.file_check == "match":
            self.info(Phase.VERIFY, "no blake3 to compare the stream with: the file's own digest was checked")
            return FILE_DIGEST_ONLY
        if expected is None and plan.image.path is None:  # a URL with no manifest and no --blake3
            self.info(Phase.VERIFY, f"UNVERIFIED: {NO_DIGEST}")
            return UNVERIFIED
        if expected is None:
            self.info(Phase.VERIFY, "no manifest: the stream digest is recorded but compared with nothing")
            return "no manifest"
        if self.diff is not None:  # every block compared on the disk, or fetched, checked and read back
            self.info(Phase.VERIFY, f"every block of the image's extent on {plan.target.path} is compared with the "
                                    f"manifest's block index (blake3 {expected[:16]}... of the whole image)")
            return "match"
        if copy.digest != expected:
            raise self._image_mismatch(copy.digest, expected)
        self.info(Phase.VERIFY, f"stream blake3 matches the {self._expected_from()} ({expected[:16]}...)")
        return "match"

    def _expected_from(self) -> str:
        return "digest given with --blake3" if self.plan.image.digest_source == "--blake3" else "manifest"

    def _image_mismatch(self, digest: str, expected: str) -> DigestMismatchError:
        image = self.plan.image
        if image.digest_source == "--blake3":
            return DigestMismatchError(
                f"image {image.file_name} does not match the digest given with --blake3: blake3 "
                f"{digest[:16]}... != {expected[:16]}...; check the digest, or whether "
                f"{image.location} serves another image"
            )
        return DigestMismatchError(
            f"image {image.file_name} does not match its manifest: blake3 {digest[:16]}... "
            f"!= {expected[:16]}...; the image is damaged or the manifest is stale: re-copy the image, "
            "or rerun `bty images add` if you changed it on purpose"
        )

    def _readback_proves_image(self) -> bool:
        """Whether the write pass may leave the stream unhashed: a read-back of the disk compared
        with the manifest's blake3 (or --blake3) proves the image and the write at once, and on
        two cores the second blake3 pass slows the decompressor. A download keeps its stream
        hash: the network, not the CPU, sets its pace, and telling a bad download from a bad disk
        afterwards would mean fetching it again."""
        plan = self.plan
        return (plan.options.verify == VerifyMode.READBACK and plan.image.expected_blake3 is not None
                and plan.image.path is not None)

    def _readback_behind(self, target: BlockTarget) -> ReadbackPass | None:
        """The read-back that follows the write window by window, when the plan wants one."""
        options = self.plan.options
        if options.verify != VerifyMode.READBACK or not options.readback_behind:
            return None
        target.drop_cache()
        return ReadbackPass(target.path, cancel=self.cancel, overlay=lambda: overlay(self.deferred)).start()

    def _readback(self, copy: CopyResult) -> str:
        if self.plan.options.verify != VerifyMode.READBACK:
            return "skipped"
        assert self.target is not None
        if self.diff is not None:
            started = time.monotonic()
            total = len(self.diff_written) * self.diff.index.block_size
            meter = ProgressMeter(self.sink, Phase.VERIFY, total)
            meter.start(f"reading back the {len(self.diff_written)} blocks written to {self.target.path}"
                        if self.diff_written else f"nothing differed on {self.target.path}: nothing to read back")
            done = self.diff.verify(self.diff_written, overlay(self.deferred), lambda c: None)
            self.phases["verify"] = time.monotonic() - started
            meter.end(0, done)
            if self.diff_info is not None:
                self.diff_info["seconds"]["verify"] = round(self.phases["verify"], 3)
            return "match"
        digest = self._read_back_whole(copy.size)
        if digest != copy.digest:
            raise self._disk_mismatch(digest, copy.digest)
        return "match"

    def _read_back_whole(self, size: int) -> str:
        """blake3 of the image's extent of the target, as the disk returns it (the held regions
        from memory); the rest of it read now when the read-back ran behind the write."""
        assert self.target is not None
        started = time.monotonic()
        meter = ProgressMeter(self.sink, Phase.VERIFY, size)
        if self.readback is not None:
            done = self.readback.counters.bytes_hashed
            meter.start(f"reading back {format_size(size)} from {self.target.path} "
                        f"({format_size(done)} already, behind the write)")
            self.readback.finish(size)
            result = self.readback.wait(lambda c: meter.update(0, c.bytes_hashed))
        else:
            self.target.drop_cache()
            meter.start(f"reading back {format_size(size)} from {self.target.path}")
            result = readback_digest(
                self.target.path,
                size,
                tick=lambda c: meter.update(0, c.bytes_hashed),
                cancel=self.cancel,
                overlay=overlay(self.deferred),
            )
        self.phases["verify"] = time.monotonic() - started  # behind the write: what it added after it
        self.profile.add(list(result.stages))
        meter.end(0, result.size, digest=result.digest)
        return result.digest

    def _disk_mismatch(self, digest: str, written: str) -> VerifyError:
        assert self.target is not None
        return VerifyError(
            f"read-back of {self.target.path} does not match what was written (blake3 {digest[:16]}... "
            f"!= {written[:16]}...): the disk returned different bytes; it may be failing or "
            "counterfeit: try another disk"
        )

    def _prove_by_readback(self, copy: CopyResult) -> CopyResult:
        """The write pass did not hash the stream (_readback_proves_image): the disk's blake3
        against the manifest's proves the image and the write at once. When they differ, the
        image is hashed again alone (bty_live.flash.image_check) to say which of the two is wrong."""
        image = self.plan.image
        expected = image.expected_blake3
        assert expected is not None and self.plan.options.verify == VerifyMode.READBACK
        digest = self._read_back_whole(copy.size)
        if digest != expected:
            image_digest = self._hash_image_again()
            self.copy = replace(copy, digest=image_digest)  # what the failed receipt names
            if image_digest != expected:
                raise self._image_mismatch(image_digest, expected)
            raise self._disk_mismatch(digest, expected)
        self.info(Phase.VERIFY, f"read-back blake3 matches the {self._expected_from()} ({expected[:16]}...): the "
                                "image and the write are proven at once")
        self.copy = replace(copy, digest=expected)
        return self.copy

    def _hash_image_again(self) -> str:
        from bty_live.flash.image_check import image_blake3

        image = self.plan.image
        meter = ProgressMeter(self.sink, Phase.VERIFY, image.size)
        meter.start(f"the read-back of {self.plan.target.path} differs from the {self._expected_from()}: reading "
                    f"{image.file_name} again to tell whether the image or the disk is wrong")
        digest = image_blake3(image.source, image.compression, expected_size=image.size, cancel=self.cancel,
                              tick=meter.update)
        meter.end(0, image.size or 0, digest=digest)
        return digest

    def _commit_deferred(self, target: BlockTarget) -> None:
        """Everything else has landed (and is verified, as the plan asks): now the first and last
        MiB, the partition tables and boot code, are written and read back."""
        check = self.plan.options.verify != VerifyMode.OFF
        if not any(region.filled for region in self.deferred):  # a differential flash that wrote nothing
            return
        written = commit(target, self.deferred, check=check)
        if self.diff is not None and self.copy is not None and self.diff_info is not None:
            self.copy = replace(self.copy, written=self.copy.written + written)
            self.diff_info["bytes_written"] += written
        self.info(Phase.VERIFY, f"wrote the partition-table regions last ({format_size(written)})"
                                + (" and read them back: they match" if check else ""))

    def _fixups(self, target: BlockTarget) -> list[str]:
        from bty_live.flash.fixups import check_partition_table, fix_partition_table

        plan = self.plan
        started = time.monotonic()
        self.sink(Event(Phase.FIXUP, Kind.START, message="partition table"))
        target.reread_partitions()
        done = fix_partition_table(
            target.path,
            relocate_backup_gpt=plan.relocate_backup_gpt,
            grow_last_partition=plan.grow_last_partition,
        )
        for line in done:
            self.info(Phase.FIXUP, line)
        if plan.image.has_gpt:
            verdict = check_partition_table(target.path)
            self.info(Phase.FIXUP, verdict)
            done.append(verdict)
        target.reread_partitions()
        self.phases["fixup"] = time.monotonic() - started
        self.sink(Event(Phase.FIXUP, Kind.END, elapsed=self.phases["fixup"]))
        return done

    def _tune(self, copy: CopyResult) -> TuneResult | None:
        """Run the CIJOE task on the written system. The target is closed first: holding it
        with O_EXCL would stop the kernel from mounting its partitions."""
        request = self.plan.tune
        if request is None:
            return None
        from bty_live.tune import run_tuning

        assert self.target is not None
        self.target.close()
        result = run_tuning(replace(request, disk=self.plan.target.path, image_blake3=copy.digest), self.sink)
        self.phases["tune"] = result.seconds
        return result

    def _save(self, receipt: Receipt) -> None:
        plan = self.plan
        if plan.receipt_path is None and plan.receipts_dir is None:
            return
        try:
            save_receipt(receipt, directory=plan.receipts_dir, path=plan.receipt_path)
        except OSError as exc:
            self.info(Phase.DONE, f"warning: the receipt could not be saved ({exc})")

    def _record(self, *, receipt: Receipt | None = None, tune: TuneResult | None = None,
                error: BaseException | None = None) -> LedgerRecord:
        """One ledger record per run, appended to the plan's ledger when it names one; a ledger
        that cannot be written is a warning, not a failure."""
        plan = self.plan
        request = plan.tune
        record = make_record(
            image_name=plan.image.name, image_blake3=plan.image.expected_blake3,
            machine=request.machine if request and request.machine else read_machine_identity(),
            disk_path=plan.target.path, disk_model=plan.disk.model, disk_serial=plan.disk.serial,
            task=request.task if request else None, task_digest=plan.tune_digest,
            receipt=receipt, tune=tune, error=error, tracker=self.tracker,
        )
        if plan.ledger is None:
            return record
        try:
            append_record(plan.ledger, record)
        except (LedgerError, OSError) as exc:
            self.info(Phase.DONE, f"warning: the ledger {plan.ledger} could not be written ({exc})")
        return record

    def _failed_receipt(self, message: str) -> Receipt:
        """The receipt of a run that failed after the disk was opened: what was done, and why it stopped."""
        return self._receipt(self.copy, "not reached", "not reached", [], error=message)

    def _receipt(self, copy: CopyResult | None, stream_check: str, readback_check: str, fixups: list[str],
                 tune: TuneResult | None = None, *, error: str | None = None) -> Receipt:
        plan = self.plan
        disk = plan.disk
        return Receipt(
            result="ok" if error is None else "failed",
            image_name=plan.image.name,
            image_path=plan.image.location,
            image_size=copy.size if copy else plan.image.size or 0,
            image_blake3=copy.digest if copy else "",
            manifest_blake3=plan.image.expected_blake3,
            target_path=disk.path,
            target_model=disk.model,
            target_serial=disk.serial,
            target_wwn=disk.wwn,
            target_size=disk.size,
            target_transport=disk.transport,
            target_by_id=list(disk.by_id),
            bytes_written=copy.written if copy else 0,
            bytes_zeroed=copy.zeroed if copy else 0,
            verify_mode=str(plan.options.verify),
            stream_check=stream_check,
            readback_check=readback_check,
            fixups=fixups,
            phases=dict(self.phases),
            started_at=self.started_at.isoformat(timespec="seconds"),
            finished_at=datetime.now(UTC).isoformat(timespec="seconds"),
            parallel_frames=copy.parallel_frames if copy else False,
            tune=tune.to_dict() if tune is not None else None,
            error=error,
            download=plan.image.download(copy.bytes_in if copy else 0),
            file_digest=plan.image.file_digest.text if plan.image.file_digest else None,
            file_check=self.file_check,
            profile=self.profile.to_dict(),
            differential=self.diff_info or {"mode": "full", "reason": plan.full_reason},
        )
