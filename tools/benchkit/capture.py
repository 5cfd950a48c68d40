"""The capture scenario: `bty capture` against `dd iflag=direct | zstd -T0 -3` reading the same disk.

The source is a loop device over the bench image (read-only; --direct-io=on, so reads come from
the storage as from a real disk, unless the bench runs with --loop buffered). It runs once per
image size, on the bench's first setup. Each run writes
a fresh output file, removed afterwards; the output is checked by decompressing it: it must
hash (blake3) like the image, and bty's manifest must say that digest.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

import blake3
import zstandard

from tools.benchkit.artifacts import READ_CHUNK, Artifacts
from tools.benchkit.contenders import Contender
from tools.benchkit.output import loud
from tools.benchkit.procs import last_line, run_pipeline
from tools.benchkit.report import Check, fmt, row_by_key
from tools.benchkit.runs import Row, RunResult

SOURCE = "{source}"  # placeholder for the loop device holding the image
OUTPUT = "{output}"  # placeholder for the run's output file
KEYS = ("capture-bty", "capture-dd-zstd")


def capture_contenders(bty: Path) -> list[Contender]:
    return [
        Contender("capture-bty", "bty capture (packed, manifest)",
                  ((str(bty), "capture", SOURCE, "-o", OUTPUT, "--yes", "--force"),), "capture", needs_target=False),
        Contender("capture-dd-zstd", "dd iflag=direct | zstd -T0 -3",
                  (("dd", f"if={SOURCE}", "bs=4M", "iflag=direct", "status=none"),
                   ("zstd", "-T0", "-3", "-q", "-f", "-o", OUTPUT)), "capture", needs_target=False),
    ]


def image_blake3(image: Path) -> str:
    digest = blake3.blake3()
    with open(image, "rb", buffering=0) as f:
        while chunk := f.read(READ_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def output_problem(output: Path, expected: str, *, manifest: bool) -> str | None:
    """None when `output` decompresses to the image (and bty's manifest says so), else what differs."""
    digest = blake3.blake3()
    with open(output, "rb") as f:
        reader = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True)
        while chunk := reader.read(READ_CHUNK):
            digest.update(chunk)
    if digest.hexdigest() != expected:
        return f"decompresses to blake3 {digest.hexdigest()[:16]}..., not the image's {expected[:16]}..."
    if manifest:
        toml = output.with_name(output.name + ".toml")
        if not toml.exists() or f'blake3 = "{expected}"' not in toml.read_text():
            return f"manifest {toml.name} missing or without the image's blake3"
    return None


def run_capture(rows: Sequence[Row], runs: int, art: Artifacts, out_dir: Path, logs: Path, timeout: float,
                direct_io: bool) -> None:
    """Attach the source, run the rows interleaved (rotated each round), check every output."""
    active = [row for row in rows if row.unavailable is None]
    if not active:
        return
    expected = image_blake3(art.image)
    source = subprocess.run(["losetup", "-f", "--show", "-r", f"--direct-io={'on' if direct_io else 'off'}",
                             str(art.image)], check=True, capture_output=True, text=True).stdout.strip()
    try:
        for run in range(1, runs + 1):
            order = active[(run - 1) % len(active):] + active[:(run - 1) % len(active)]
            for row in order:
                print(f"    run {run}/{runs}  {row.contender.label:<38}", end="", flush=True)
                result = _measure(row, run, source, out_dir, logs, timeout, expected)
                row.runs.append(result)
                mbps = art.image_size / result.wall / 1e6 if result.wall else 0.0
                status = "ok" if result.error is None else f"ERROR: {result.error}"
                print(f"{result.wall:7.2f} s {mbps:7.0f} MB/s {result.peak_rss_kib / 1024:7.1f} MiB  {status}",
                      flush=True)
    finally:
        subprocess.run(["losetup", "-d", source], check=False, capture_output=True)


def _measure(row: Row, run: int, source: str, out_dir: Path, logs: Path, timeout: float,
             expected: str) -> RunResult:
    contender = row.contender
    output = out_dir / f"capture-{contender.key}-{run}.img.zst"
    log_path = logs / f"{contender.key}-run{run}.log"
    log_path.unlink(missing_ok=True)
    stages = [tuple(arg.replace(SOURCE, source).replace(OUTPUT, str(output)) for arg in argv)
              for argv in contender.stages]
    try:
        os.sync()
        try:
            ran = run_pipeline(stages, log_path, stdout_to_null=False, timeout=timeout)
        except OSError as exc:
            return RunResult(run=run, wall=0.0, peak_rss_kib=0, exit_codes=[], error=f"cannot run: {exc}")
        result = RunResult(run=run, wall=ran.wall, peak_rss_kib=ran.peak_rss_kib, wait4_rss_kib=ran.wait4_rss_kib,
                           exit_codes=ran.exit_codes)
        if ran.timed_out:
            result.error = f"timed out after {timeout:.0f} s"
        elif any(ran.exit_codes):
            result.error = f"exit codes {ran.exit_codes}: {last_line(log_path)}"
        else:
            problem = output_problem(output, expected, manifest=contender.key == "capture-bty")
            if problem:
                result.error, result.mismatch = f"wrong output: {problem}", True
                loud(f"MISMATCH: {contender.label} (run {run}): {problem}")
            else:
                result.output_size = output.stat().st_size
    finally:
        for leftover in out_dir.glob(f"capture-{contender.key}-{run}.img.zst*"):
            leftover.unlink()
    return result


def print_capture_table(rows: Sequence[Row], image_size: int) -> None:
    base = row_by_key(rows, "capture-dd-zstd")
    header = f"{'capture':<40} {'median s':>9} {'MB/s':>7} {'RSS MiB':>8} {'output MiB':>11} {'/dd|zstd':>9}  status"
    print("\n" + header + "\n" + "-" * len(header))
    for row in rows:
        wall = row.median_wall
        mbps = image_size / wall / 1e6 if wall else None
        sizes = [r.output_size for r in row.good_runs if r.output_size]
        size = sizes[0] / (1 << 20) if sizes else None
        ratio = wall / base.median_wall if wall and base is not None and base.median_wall else None
        print(f"{row.contender.label:<40} {fmt(wall, 9, 2)} {fmt(mbps, 7, 0)} {fmt(row.peak_rss_mib, 8, 1)} "
              f"{fmt(size, 11, 1)} {fmt(ratio, 9, 2)}  {row.status}")
    print("ratio: median time / the dd | zstd median (below 1: bty capture is faster)")


def capture_checks(rows: Sequence[Row]) -> list[Check]:
    bty, peer = row_by_key(rows, "capture-bty"), row_by_key(rows, "capture-dd-zstd")
    name = "bty capture no slower than dd iflag=direct | zstd -T0 -3"
    if bty is None or peer is None:
        return []
    if not (bty.ok and peer.ok) or bty.median_wall is None or peer.median_wall is None:
        return [Check(name, False, "no clean measurement of " + " and ".join(
            r.contender.key for r in (bty, peer) if not r.ok))]
    speedup = peer.median_wall / bty.median_wall
    return [Check(name, speedup >= 1.0, f"{bty.median_wall:.2f} s vs {peer.median_wall:.2f} s: {speedup:.2f}x "
                                        "(want >= 1x)")]
