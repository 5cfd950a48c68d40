"""The results: the table, the PASS/FAIL checks against the performance targets, results.json."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from tools.benchkit.artifacts import Artifacts
from tools.benchkit.contenders import VARIANTS
from tools.benchkit.procs import rss_note
from tools.benchkit.runs import Row


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


def row_by_key(rows: Sequence[Row], key: str) -> Row | None:
    return next((row for row in rows if row.contender.key == key), None)


def ratio(row: Row, base: Row | None) -> float | None:
    if base is None or row.median_wall is None or base.median_wall is None:
        return None
    return row.median_wall / base.median_wall


def fmt(value: float | None, width: int, decimals: int) -> str:
    return "-".rjust(width) if value is None else f"{value:{width}.{decimals}f}"


def variant_of(row: Row) -> str:
    return "-packed" if row.contender.key.endswith("-packed") else ""


def print_table(rows: Sequence[Row], image_size: int) -> None:
    header = (f"{'tool':<40} {'median s':>9} {'MB/s':>7} {'RSS MiB':>8} {'/stream':>8} {'/readback':>10}"
              f"  status")
    print("\n" + header + "\n" + "-" * len(header))
    for row in rows:
        suffix = variant_of(row)
        stream, readback = row_by_key(rows, f"bty-stream{suffix}"), row_by_key(rows, f"bty-readback{suffix}")
        wall = row.median_wall
        mbps = image_size / wall / 1e6 if wall else None
        print(f"{row.contender.label:<40} {fmt(wall, 9, 2)} {fmt(mbps, 7, 0)} {fmt(row.peak_rss_mib, 8, 1)} "
              f"{fmt(ratio(row, stream), 8, 2)} {fmt(ratio(row, readback), 10, 2)}  {row.status}")
    print("ratios: median time / bty median time on the same file (above 1: bty is faster)")


def evaluate(rows: Sequence[Row]) -> list[Check]:
    def get(key: str) -> Row | None:
        row = row_by_key(rows, key)
        return row if row is not None and row.ok else None

    def faster(name: str, bty_key: str, peer_key: str, factor: float) -> Check:
        bty, peer = get(bty_key), get(peer_key)
        if bty is None or peer is None or bty.median_wall is None or peer.median_wall is None:
            return Check(name, False, "no clean measurement of " + " and ".join(
                k for k, r in ((bty_key, bty), (peer_key, peer)) if r is None))
        speedup = peer.median_wall / bty.median_wall
        detail = f"{bty.median_wall:.2f} s vs {peer.median_wall:.2f} s: {speedup:.2f}x (want >= {factor}x)"
        return Check(name, speedup >= factor, detail)

    checks = []
    for suffix, variant in VARIANTS:
        if row_by_key(rows, f"bty-stream{suffix}") is None:
            continue
        checks += [
            faster(f"[{variant}] bty --verify stream >= 1.5x faster than zstd|dd", f"bty-stream{suffix}",
                   f"zstd-dd{suffix}", 1.5),
            faster(f"[{variant}] bty --verify stream >= 2x faster than bmaptool copy", f"bty-stream{suffix}",
                   f"bmaptool{suffix}", 2.0),
            faster(f"[{variant}] bty --verify readback no slower than zstd|dd", f"bty-readback{suffix}",
                   f"zstd-dd{suffix}", 1.0),
        ]
        stream, decompress, write = get(f"bty-stream{suffix}"), get(f"py-decompress{suffix}"), get("dd-raw")
        name = f"[{variant}] bty stream within 15% of its slowest stage alone"
        if stream is None or decompress is None or write is None:
            missing = [k for k, r in ((f"bty-stream{suffix}", stream), (f"py-decompress{suffix}", decompress),
                                      ("dd-raw", write)) if r is None]
            checks.append(Check(name, False, "no clean measurement of " + ", ".join(missing)))
        else:
            slowest = max((decompress, write), key=lambda r: r.median_wall or 0.0)
            limit = (slowest.median_wall or 0.0) * 1.15
            wall = stream.median_wall or 0.0
            checks.append(Check(name, wall <= limit, f"{wall:.2f} s vs {slowest.contender.label} "
                                                     f"{slowest.median_wall:.2f} s (limit {limit:.2f} s)"))
    if row_by_key(rows, "bty-readback-qcow2") is not None:
        checks += [
            faster("[qcow2] bty --verify readback no slower than qemu-img convert onto the device",
                   "bty-readback-qcow2", "qemu-img-qcow2", 1.0),
            faster("[qcow2] bty --verify readback no slower than qemu-img convert + dd",
                   "bty-readback-qcow2", "qemu-img-dd-qcow2", 1.0),
        ]
    bty_rows = [r for r in rows if r.contender.kind == "bty"]
    rss = [r.peak_rss_mib for r in bty_rows if r.ok and r.peak_rss_mib is not None]
    if len(rss) == len(bty_rows) and rss:
        checks.append(Check("bty peak RSS <= 200 MiB", max(rss) <= 200, f"max {max(rss):.1f} MiB"))
    else:
        checks.append(Check("bty peak RSS <= 200 MiB", False, "no clean measurement of every bty row"))
    return checks


def print_checks(checks: Sequence[Check], rows: Sequence[Row]) -> None:
    print("\ntargets:")
    for check in checks:
        print(f"  {'PASS' if check.passed else 'FAIL'}  {check.name}: {check.detail}")
    for row in rows:
        if row.unavailable:
            print(f"  NOTE  {row.contender.label}: {row.unavailable}")
        for result in row.runs:
            if result.error:
                print(f"  {'WRONG' if result.mismatch else 'ERROR'} {row.contender.label} run {result.run}: "
                      f"{result.error}")


def write_json(path: Path, art: Artifacts, rows: Sequence[Row], checks: Sequence[Check], runs: int) -> None:
    def ratio_to(row: Row, key: str) -> float | None:
        return ratio(row, row_by_key(rows, f"{key}{variant_of(row)}"))

    data = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": {"kernel": platform.release(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "image": {"path": str(art.image), "size": art.image_size, "zst": str(art.zst),
                  "zst_size": art.zst_size, "bmap": str(art.bmap),
                  "packed": str(art.packed) if art.packed else None, "packed_size": art.packed_size,
                  "manifest": str(art.manifest) if art.manifest.exists() else None,
                  "build_seconds": art.build_seconds},
        "runs": runs,
        "rss_method": rss_note(),
        "tools": [
            {"key": row.contender.key, "label": row.contender.label, "kind": row.contender.kind,
             "commands": [list(argv) for argv in row.contender.stages], "status": row.status,
             "target_check": "equal outside the GPT headers, same entries, sgdisk -v clean"
             if row.contender.gpt_fixups else "first image-size bytes equal",
             "unavailable": row.unavailable, "median_wall_s": row.median_wall,
             "mb_per_s": art.image_size / row.median_wall / 1e6 if row.median_wall else None,
             "peak_rss_mib": row.peak_rss_mib, "ratio_to_bty_stream": ratio_to(row, "bty-stream"),
             "ratio_to_bty_readback": ratio_to(row, "bty-readback"), "runs": [asdict(r) for r in row.runs]}
            for row in rows
        ],
        "checks": [asdict(c) for c in checks],
    }
    path.write_text(json.dumps(data, indent=2) + "\n")
