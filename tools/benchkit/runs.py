"""Running the rows, interleaved, each write on a fresh target; and what each run measured."""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from tools.benchkit.artifacts import Artifacts
from tools.benchkit.contenders import TARGET, Contender
from tools.benchkit.loop_targets import LoopTargets, target_matches
from tools.benchkit.output import loud
from tools.benchkit.procs import last_line, run_pipeline


@dataclass
class RunResult:
    run: int
    wall: float
    peak_rss_kib: int
    exit_codes: list[int]
    wait4_rss_kib: int = 0
    error: str | None = None  # the tool failed, timed out, or wrote the wrong bytes
    mismatch: bool = False
    output_size: int | None = None  # bytes of the file a capture run wrote


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
        good = self.good_runs
        return statistics.median(r.wall for r in good) if good else None

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


def measure(row: Row, run: int, art: Artifacts, targets: LoopTargets, logs: Path,
            timeout: float) -> RunResult:
    contender = row.contender
    device = targets.create(f"{contender.key}-{run}") if contender.needs_target else None
    log_path = logs / f"{contender.key}-run{run}.log"
    log_path.unlink(missing_ok=True)
    stages = [tuple(arg.replace(TARGET, device) if device else arg for arg in argv)
              for argv in contender.stages]
    try:
        os.sync()
        try:
            ran = run_pipeline(stages, log_path, stdout_to_null=contender.stdout_to_null, timeout=timeout)
        except OSError as exc:  # a tool of the pipeline could not be started
            return RunResult(run=run, wall=0.0, peak_rss_kib=0, exit_codes=[], error=f"cannot run: {exc}")
        result = RunResult(run=run, wall=ran.wall, peak_rss_kib=ran.peak_rss_kib,
                           wait4_rss_kib=ran.wait4_rss_kib, exit_codes=ran.exit_codes)
        codes, timed_out = ran.exit_codes, ran.timed_out
        if timed_out:
            result.error = f"timed out after {timeout:.0f} s"
        elif any(codes):
            result.error = f"exit codes {codes}: {last_line(log_path)}"
        elif device is not None:
            mismatch = target_matches(art.image, device, art.image_size, gpt_fixups=contender.gpt_fixups)
            if mismatch:
                result.error, result.mismatch = f"target differs from the image: {mismatch}", True
                loud(f"MISMATCH: {contender.label} (run {run}) wrote the wrong bytes: {mismatch}")
    finally:
        if device is not None:
            targets.release(device)
    return result


def run_all(rows: list[Row], runs: int, art: Artifacts, targets: LoopTargets, logs: Path,
            timeout: float) -> None:
    active = [row for row in rows if row.unavailable is None]
    for run in range(1, runs + 1):
        order = active[(run - 1) % len(active):] + active[:(run - 1) % len(active)]  # rotate each round
        for row in order:
            print(f"    run {run}/{runs}  {row.contender.label:<38}", end="", flush=True)
            result = measure(row, run, art, targets, logs, timeout)
            row.runs.append(result)
            mbps = art.image_size / result.wall / 1e6 if result.wall else 0.0
            status = "ok" if result.error is None else f"ERROR: {result.error}"
            print(f"{result.wall:7.2f} s {mbps:7.0f} MB/s {result.peak_rss_kib / 1024:7.1f} MiB  {status}",
                  flush=True)
