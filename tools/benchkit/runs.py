"""Running the rows, interleaved, each write on a fresh target; and what each run measured."""

from __future__ import annotations

import json
import os
import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tools.benchkit.artifacts import Artifacts
from tools.benchkit.contenders import RECEIPT, TARGET, Contender, Format
from tools.benchkit.loop_targets import LoopTargets, Setup, target_matches
from tools.benchkit.output import loud
from tools.benchkit.procs import last_line, run_pipeline

SECONDS_RE = re.compile(r"^seconds=([0-9.]+)\s*$")


@dataclass
class RunResult:
    run: int
    wall: float  # what the run is measured by: the tool's time (or its own, self-timed) + durable_s
    peak_rss_kib: int
    exit_codes: list[int]
    wait4_rss_kib: int = 0
    error: str | None = None  # the tool failed, timed out, or wrote the wrong bytes
    mismatch: bool = False
    output_size: int | None = None  # bytes of the file a capture run wrote
    tool_wall: float | None = None  # the process (pipeline) from start to exit
    self_timed_s: float | None = None  # the stage's own `seconds=` (stages.py), used instead of tool_wall
    durable_s: float | None = None  # the fsync of the target's backing file after the tool exited
    receipt: str | None = None  # bty rows: the run's receipt file
    phases: dict[str, float] | None = None  # bty rows: the receipt's "phases"
    profile: dict[str, Any] | None = None  # bty rows: the receipt's "profile", when bty writes one

    @property
    def first_write(self) -> float | None:
        value = (self.profile or {}).get("first_write")
        return float(value) if isinstance(value, int | float) else None


def median_of(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


@dataclass
class Row:
    contender: Contender
    runs: list[RunResult] = field(default_factory=list)
    unavailable: str | None = None

    @property
    def good_runs(self) -> list[RunResult]:
        return [r for r in self.runs if r.error is None]

    @property
    def ok(self) -> bool:
        return self.unavailable is None and bool(self.runs) and len(self.good_runs) == len(self.runs)

    @property
    def median_wall(self) -> float | None:
        return median_of([r.wall for r in self.good_runs])

    @property
    def median_durable(self) -> float | None:
        return median_of([r.durable_s for r in self.good_runs])

    @property
    def median_first_write(self) -> float | None:
        return median_of([r.first_write for r in self.good_runs])

    def median_phase(self, name: str) -> float | None:
        return median_of([(r.phases or {}).get(name) for r in self.good_runs])

    @property
    def peak_rss_mib(self) -> float | None:
        good = self.good_runs
        return max(r.peak_rss_kib for r in good) / 1024 if good else None

    @property
    def status(self) -> str:
        if self.unavailable:
            return "UNAVAILABLE"
        if any(r.mismatch for r in self.runs):
            return "WRONG OUTPUT"
        if any(r.error for r in self.runs):
            return "FAILED"
        return "ok"


@dataclass
class Cell:
    """One size x setup: its artifacts, formats and rows (the table, the checks)."""

    size_label: str  # "1G"
    setup: Setup
    art: Artifacts
    formats: list[Format]
    rows: list[Row]

    @property
    def tag(self) -> str:  # file names of its logs and receipts
        return f"{self.size_label}-{self.setup.name}"

    @property
    def heading(self) -> str:
        return f"{self.size_label} image ({self.art.image_size >> 20} MiB), {self.setup.label}"


def self_timed(log_path: Path) -> float | None:
    """The last `seconds=X` line a self-timed stage printed."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        match = SECONDS_RE.match(line.strip())
        if match:
            return float(match.group(1))
    return None


def read_receipt(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def receipt_timing(data: dict[str, Any]) -> tuple[dict[str, float] | None, dict[str, Any] | None]:
    """A bty receipt's phases (seconds each) and profile, when it has them."""
    phases = data.get("phases")
    profile = data.get("profile")
    return ({str(k): float(v) for k, v in phases.items() if isinstance(v, int | float)}
            if isinstance(phases, dict) else None,
            profile if isinstance(profile, dict) else None)


def measure(row: Row, run: int, art: Artifacts, targets: LoopTargets, logs: Path, receipts: Path, tag: str,
            timeout: float) -> RunResult:
    contender = row.contender
    device = targets.create(f"{tag}-{contender.key}-{run}") if contender.needs_target else None
    log_path = logs / f"{tag}-{contender.key}-run{run}.log"
    log_path.unlink(missing_ok=True)
    receipt = receipts / f"{tag}-{contender.key}-run{run}.json"
    receipt.unlink(missing_ok=True)
    stages = [tuple(arg.replace(TARGET, device or TARGET).replace(RECEIPT, str(receipt)) for arg in argv)
              for argv in contender.stages]
    try:
        os.sync()
        try:
            ran = run_pipeline(stages, log_path, stdout_to_null=contender.stdout_to_null, timeout=timeout)
        except OSError as exc:  # a tool of the pipeline could not be started
            return RunResult(run=run, wall=0.0, peak_rss_kib=0, exit_codes=[], error=f"cannot run: {exc}")
        durable = targets.make_durable(device) if device is not None else None
        result = RunResult(run=run, wall=ran.wall, peak_rss_kib=ran.peak_rss_kib, tool_wall=ran.wall,
                           wait4_rss_kib=ran.wait4_rss_kib, exit_codes=ran.exit_codes, durable_s=durable)
        codes, timed_out = ran.exit_codes, ran.timed_out
        if contender.self_timed:
            result.self_timed_s = self_timed(log_path)
            if result.self_timed_s is not None:
                result.wall = result.self_timed_s
        result.wall += durable or 0.0
        if contender.kind == "bty":
            result.receipt = str(receipt)
            data = read_receipt(receipt) or {}
            result.phases, result.profile = receipt_timing(data)
        if timed_out:
            result.error = f"timed out after {timeout:.0f} s"
        elif any(codes):
            result.error = f"exit codes {codes}: {last_line(log_path)}"
        elif contender.self_timed and result.self_timed_s is None:
            result.error = f"no seconds= line in {log_path.name}"
        elif device is not None and contender.check_target:
            mismatch = target_matches(art.image, device, art.image_size, gpt_fixups=contender.gpt_fixups)
            if mismatch:
                result.error, result.mismatch = f"target differs from the image: {mismatch}", True
                loud(f"MISMATCH: {contender.label} (run {run}) wrote the wrong bytes: {mismatch}")
    finally:
        if device is not None:
            targets.release(device)
    return result


def run_all(rows: list[Row], runs: int, art: Artifacts, targets: LoopTargets, logs: Path, receipts: Path,
            tag: str, timeout: float, after: Callable[[Row, RunResult], None] | None = None) -> None:
    """Every row `runs` times, interleaved (the order rotated each round); `after` sees each run."""
    active = [row for row in rows if row.unavailable is None]
    receipts.mkdir(parents=True, exist_ok=True)
    for run in range(1, runs + 1):
        order = active[(run - 1) % len(active):] + active[:(run - 1) % len(active)]  # rotate each round
        for row in order:
            print(f"    run {run}/{runs}  {row.contender.label:<52}", end="", flush=True)
            result = measure(row, run, art, targets, logs, receipts, tag, timeout)
            row.runs.append(result)
            mbps = art.image_size / result.wall / 1e6 if result.wall else 0.0
            status = "ok" if result.error is None else f"ERROR: {result.error}"
            durable = f" (fsync {result.durable_s:.2f})" if result.durable_s is not None else ""
            print(f"{result.wall:7.2f} s{durable} {mbps:6.0f} MB/s {result.peak_rss_kib / 1024:6.1f} MiB  {status}",
                  flush=True)
            if after is not None:
                after(row, result)
