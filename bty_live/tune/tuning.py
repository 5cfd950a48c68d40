"""run_tuning: mount the flashed system, run the CIJOE task on it, keep the report, unmount.

    load the task -> read the disk's partition table (kernel partitions via partx -u) -> choose
    the root -> mount it privately (+ /usr, /proc, /sys, /dev) -> write the config -> run CIJOE
    in a child process, step events as it goes -> keep its output under <images>/reports/ ->
    unmount, whatever happened

The engine calls this after its fix-ups, with the target closed (its O_EXCL hold would keep the
partitions from being mounted). Nothing here knows about the engine: it takes a TuneRequest
and an EventSink and returns a TuneResult or raises TuneError.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
import uuid
from contextlib import nullcontext
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bty_live.errors import TuneError
from bty_live.events import Event, EventSink, Kind, Phase, discard
from bty_live.system.machine import read_machine_identity
from bty_live.system.state_dirs import REPORTS_DIR, default_reports_dir
from bty_live.tune.cijoe_run import LOG_FILE, cijoe_argv, failure_reason, not_run_reason, run_cijoe, step_dir
from bty_live.tune.config import build_config, load_image_config, write_config
from bty_live.tune.model import TuneRequest, TuneResult
from bty_live.tune.rootfs import DiskLayout, MountedTarget, NoRoot, RootChoice, choose_root, mounted_target, read_layout
from bty_live.tune.task import TuneTask, load_task


def _slug(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", value).strip("_") or "unnamed"


def new_report_dir(request: TuneRequest, now: datetime) -> tuple[Path, str]:
    """A fresh (not yet existing) output directory for CIJOE, and a note if it had to fall back.

    CIJOE moves an existing output directory aside into cijoe-archive/, so the name must be new.
    """
    bases = [request.reports_dir] if request.reports_dir else []
    if request.images_dir is not None:
        bases.append(request.images_dir / REPORTS_DIR)
    bases.append(default_reports_dir())
    stem = f"{now.strftime('%Y%m%dT%H%M%SZ')}-{_slug(request.image_name)}-{_slug(os.path.basename(request.disk))}"
    note = ""
    for base in bases:
        try:
            base.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            note = f"reports cannot be kept in {base} ({exc.strerror}); "
            continue
        for n in range(1, 1000):
            candidate = base / (stem if n == 1 else f"{stem}-{n}")
            if not os.path.lexists(candidate):
                return candidate, (note + f"the report went to {base}" if note else "")
    raise TuneError("no directory for the tuning report can be created (images directory and "
                    f"{default_reports_dir()} are not writable)")


def run_tuning(request: TuneRequest, sink: EventSink = discard) -> TuneResult:
    """Tune the flashed disk with the request's task; see the module docstring for the steps."""
    started = time.monotonic()
    task = load_task(request.task)
    sink(Event(Phase.TUNE, Kind.START,
               message=f"tuning {request.image_name} on {request.disk} with {request.task.name} "
                       f"({len(task.steps)} steps)"))
    layout = read_layout(request.disk)
    choice = choose_root(layout, request.root_hint)
    if isinstance(choice, NoRoot) and task.needs_linux_root:
        note = f"{choice.note}; the task needs the target's Linux root, so tuning was skipped"
        sink(Event(Phase.TUNE, Kind.INFO, message=note))
        elapsed = time.monotonic() - started
        sink(Event(Phase.TUNE, Kind.END, elapsed=elapsed, message=f"tuning skipped: {choice.note}"))
        return TuneResult("skipped", str(request.task), task.digest, note=note, seconds=elapsed)
    root_choice = choice if isinstance(choice, RootChoice) else None
    notes: list[str] = []
    if root_choice is not None:
        sink(Event(Phase.TUNE, Kind.INFO, message=f"root filesystem: {root_choice.device} ({root_choice.fstype}, "
                                                  f"found by {root_choice.found_by})"))
    else:
        assert isinstance(choice, NoRoot)
        notes.append(f"{choice.note}; the task runs without a mounted root (needs_linux_root: false)")
        sink(Event(Phase.TUNE, Kind.INFO, message=notes[-1]))
    mounting = mounted_target(root_choice, request.api_mounts) if root_choice else nullcontext(None)
    mounted: MountedTarget | None = None
    try:
        with mounting as mounted:
            result = _run_task(request, task, layout, root_choice, mounted, sink, started, notes)
    finally:
        if mounted is not None and mounted.unmount_problems:
            problem = "; ".join(mounted.unmount_problems)
            sink(Event(Phase.TUNE, Kind.INFO, message=f"unmounting the target: {problem}"))
    if mounted is not None and mounted.unmount_problems:
        raise TuneError(f"the target's filesystems could not be unmounted cleanly ({mounted.unmount_problems[0]}); "
                        "a process started by the task may still use them: reboot before using the disk",
                        report=result.report_dir)
    result = replace(result, seconds=time.monotonic() - started)  # including the unmount
    sink(Event(Phase.TUNE, Kind.END, elapsed=result.seconds, message=result.summary()))
    return result


def _run_task(request: TuneRequest, task: TuneTask, layout: DiskLayout, choice: RootChoice | None,
              mounted: MountedTarget | None, sink: EventSink, started: float, notes: list[str]) -> TuneResult:
    machine = request.machine or read_machine_identity()
    now = datetime.now(UTC)
    run_id = uuid.uuid4().hex
    output, note = new_report_dir(request, now)
    if note:
        notes.append(note)
        sink(Event(Phase.TUNE, Kind.INFO, message=note))
    image_config: dict[str, Any] = load_image_config(request.config) if request.config else {}
    chroot_ready = mounted is not None and any(m.name == "dev" for m in mounted.mounts)
    facts = build_config(request, machine, layout, choice, mounted.root if mounted else None, run_id,
                         now.isoformat(timespec="seconds"), chroot_ready)
    with tempfile.TemporaryDirectory(prefix="bty-cijoe-") as name:  # CIJOE's working directory
        workdir = Path(name)
        config_path = workdir / "bty-config.toml"
        write_config(config_path, image_config, facts)
        outcome = run_cijoe(cijoe_argv(request.task.resolve(), config_path, output, workdir), output, sink,
                            request.timeout, cwd=workdir)
    if output.is_dir():
        (output / LOG_FILE).write_text(outcome.log, encoding="utf-8")
    report = str(output) if output.is_dir() else None
    failed = next((s for s in outcome.steps if s.status == "failed"), None)
    if failed is not None:
        reason = failure_reason(outcome.log, step_dir(output, failed.number, failed.name))
        reason = reason.removeprefix(f"{failed.uses}: ")
        raise TuneError(f"tuning step {failed.name!r} ({failed.uses}) failed: {reason}; report: {output}; "
                        "fix the task and flash again, or flash with --tune off",
                        step=failed.name, uses=failed.uses, report=report)
    if outcome.returncode != 0 or not outcome.state_found:
        fix = "fix the task" if outcome.returncode != 0 else "reinstall bty-live (`make setup`)"
        raise TuneError(f"tuning task {request.task.name} could not run {not_run_reason(outcome, output)}; "
                        f"{fix}" + (f" (CIJOE's log: {output / LOG_FILE})" if report else ""),
                        report=report)
    return TuneResult("passed", str(request.task), task.digest, steps=outcome.steps, report_dir=report,
                      root_device=choice.device if choice else None,
                      root_found_by=choice.found_by if choice else None,
                      seconds=time.monotonic() - started, notes=tuple(notes))
